//! The file-system store the Zarr output is written through: zarrs' `FilesystemStore` for everything
//! but whole-value writes, which skip its `fsync` per chunk.
//!
//! `FilesystemStore::set` syncs every chunk file to the device before returning: for an output of a
//! thousand 1 MiB chunks that is a thousand waits on the disk, which made the Zarr output several
//! times slower than the same bytes written to HDF5 (which never syncs). The output is a private
//! temporary directory until it is complete and renamed, as the HDF5 output is a temporary file;
//! like it (and like `cp`), its chunks reach the device when the kernel writes them back. What a
//! sync would surface besides is the file system running out of space, which a buffered write on
//! Linux already reports when its blocks are reserved (ext4, xfs and btrfs reserve them at `write`).

use std::io::Write;

use zarrs::filesystem::FilesystemStore;
use zarrs::storage::byte_range::ByteRangeIterator;
use zarrs::storage::{
    Bytes, MaybeBytesIterator, OffsetBytesIterator, ReadableStorageTraits, StorageError, StoreKey,
    StorePrefix, WritableStorageTraits,
};

/// A `FilesystemStore` whose whole-value writes are plain buffered writes (see the module's note).
#[derive(Debug)]
pub(super) struct OutputStore {
    inner: FilesystemStore,
}

impl OutputStore {
    pub(super) fn new(inner: FilesystemStore) -> OutputStore {
        OutputStore { inner }
    }

    pub(super) fn prefix_to_fs_path(&self, prefix: &StorePrefix) -> std::path::PathBuf {
        self.inner.prefix_to_fs_path(prefix)
    }
}

impl ReadableStorageTraits for OutputStore {
    fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> Result<MaybeBytesIterator<'a>, StorageError> {
        self.inner.get_partial_many(key, byte_ranges)
    }

    fn size_key(&self, key: &StoreKey) -> Result<Option<u64>, StorageError> {
        self.inner.size_key(key)
    }

    fn supports_get_partial(&self) -> bool {
        self.inner.supports_get_partial()
    }
}

impl WritableStorageTraits for OutputStore {
    /// Each key has one writer (the sink writes a chunk or shard once, from one thread), so no lock
    /// is taken; `FilesystemStore`'s per-key locks guard only its own operations.
    fn set(&self, key: &StoreKey, value: Bytes) -> Result<(), StorageError> {
        let path = self.inner.key_to_fspath(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&value)?;
        Ok(())
    }

    fn set_partial_many(
        &self,
        key: &StoreKey,
        offset_values: OffsetBytesIterator,
    ) -> Result<(), StorageError> {
        self.inner.set_partial_many(key, offset_values)
    }

    fn erase(&self, key: &StoreKey) -> Result<(), StorageError> {
        self.inner.erase(key)
    }

    fn erase_prefix(&self, prefix: &StorePrefix) -> Result<(), StorageError> {
        self.inner.erase_prefix(prefix)
    }

    fn supports_set_partial(&self) -> bool {
        self.inner.supports_set_partial()
    }
}
