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
//!
//! Whole values large enough (the output's 1 MiB chunks) are written with `O_DIRECT` where the file
//! system takes it (`crate::direct`): no copy into the page cache and no write-back later.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::direct;
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
    /// Whether whole chunks are still written with `O_DIRECT` (false once the file system refused it).
    direct: AtomicBool,
    /// Values written with `O_DIRECT` so far.
    written_directly: AtomicUsize,
}

impl OutputStore {
    pub(super) fn new(inner: FilesystemStore) -> OutputStore {
        OutputStore::with_direct(inner, direct::enabled())
    }

    fn with_direct(inner: FilesystemStore, direct: bool) -> OutputStore {
        OutputStore {
            inner,
            direct: AtomicBool::new(direct),
            written_directly: AtomicUsize::new(0),
        }
    }

    /// Values written with `O_DIRECT` so far.
    pub(super) fn written_directly(&self) -> usize {
        self.written_directly.load(Ordering::Relaxed)
    }

    pub(super) fn prefix_to_fs_path(&self, prefix: &StorePrefix) -> std::path::PathBuf {
        self.inner.prefix_to_fs_path(prefix)
    }

    /// Writes `value` as the whole value of `key` (its file created or replaced): directly when its
    /// size allows (see the module's note), else buffered. Each key has one writer (the sink writes a
    /// chunk or shard once, from one thread), so no lock is taken.
    pub(super) fn write_whole(&self, key: &StoreKey, value: &[u8]) -> std::io::Result<()> {
        let path = self.inner.key_to_fspath(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if direct::suits(value.len()) && self.direct.load(Ordering::Relaxed) {
            match write_direct(&path, value) {
                Ok(true) => {
                    self.written_directly.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // Refused: buffered from now on (the file, if created, is truncated below).
                Ok(false) => self.direct.store(false, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        let mut file = std::fs::File::create(&path)?;
        file.write_all(value)
    }
}

/// Writes `value` as the whole file at `path` with `O_DIRECT`. `Ok(false)` when the file system
/// refuses direct I/O: the caller writes the file buffered instead, truncating what was written.
fn write_direct(path: &std::path::Path, value: &[u8]) -> std::io::Result<bool> {
    match direct::open(path, true)? {
        Some(file) => direct::write_at(&file, value, 0),
        None => Ok(false),
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
    /// `write_whole`; `FilesystemStore`'s per-key locks guard only its own operations.
    fn set(&self, key: &StoreKey, value: Bytes) -> Result<(), StorageError> {
        Ok(self.write_whole(key, &value)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole values come back as written whichever way they went: direct (aligned in memory or
    /// not), buffered (too small, not a multiple of 4 KiB, or direct writes off), replacing a
    /// longer file, on the disk and on tmpfs (which may refuse `O_DIRECT`: then buffered).
    #[test]
    fn whole_values_read_back_as_written() {
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if std::path::Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        let bytes: Vec<u8> = (0..(1usize << 20) + 4096 + 1)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for dir in &dirs {
            for direct in [true, false] {
                let store =
                    OutputStore::with_direct(FilesystemStore::new(dir.path()).unwrap(), direct);
                let cases: [(&str, &[u8]); 5] = [
                    ("c/0/0", &bytes[..1 << 20]),
                    ("c/0/1", &bytes[1..(1 << 20) + 1]),
                    ("c/1/0", &bytes[..(64 << 10) + 4]),
                    ("c/1/1", &bytes[..4096]),
                    ("zarr.json", b"{}"),
                ];
                for (key, value) in cases {
                    let key = StoreKey::new(key).unwrap();
                    // A longer file there before: replaced, not overwritten in part.
                    std::fs::create_dir_all(store.inner.key_to_fspath(&key).parent().unwrap())
                        .unwrap();
                    std::fs::write(store.inner.key_to_fspath(&key), &bytes).unwrap();
                    store.write_whole(&key, value).unwrap();
                    let back = std::fs::read(store.inner.key_to_fspath(&key)).unwrap();
                    assert!(back == value, "{key} in {:?}, direct {direct}", dir.path());
                }
            }
        }
    }
}
