//! Direct I/O (`O_DIRECT`) for the outputs' large raw writes: from the caller's memory straight to
//! the device, with no copy into the page cache and no write-back afterwards.
//!
//! On this project's 2-core VM 800 files of 1 MiB took 0.4–0.7 s written directly against 1.5–2.9 s
//! buffered with their `sync`: the kernel's copy into fresh page-cache memory was 64% of a z-score-only
//! run's samples. Only writes whose length is a multiple of 4 KiB and at least 64 KiB qualify (whole
//! chunks; metadata, side arrays and small chunks stay buffered), at offsets that are multiples of
//! 4 KiB, from memory aligned to 4 KiB (a copy into a page-aligned buffer kept by each thread when the
//! caller's is not). A file system that refuses `O_DIRECT` (`EINVAL`: tmpfs, some FUSE mounts) is
//! written buffered instead; `GPUPREP_DIRECT_WRITES=0` turns direct writes off. Off Linux, never used.

use std::fs::File;
use std::path::Path;

/// The environment variable that turns off direct writes (`0`), for comparisons.
pub const DIRECT_ENV: &str = "GPUPREP_DIRECT_WRITES";

/// The alignment of direct writes' offsets, lengths and memory: 4 KiB serves 512-byte and 4 KiB
/// sector devices alike.
pub(crate) const ALIGN: usize = 4096;

/// Smaller writes stay buffered.
const MIN: usize = 64 << 10;

/// Whether direct writes are on (Linux, and not turned off by `GPUPREP_DIRECT_WRITES=0`).
pub(crate) fn enabled() -> bool {
    cfg!(target_os = "linux") && std::env::var_os(DIRECT_ENV).is_none_or(|v| v != "0")
}

/// Whether a write of `len` bytes qualifies.
pub(crate) fn suits(len: usize) -> bool {
    len >= MIN && len.is_multiple_of(ALIGN)
}

/// `path` opened for direct writes (created; emptied when `truncate`); `None` when the file system
/// refuses direct I/O.
#[cfg(target_os = "linux")]
pub(crate) fn open(path: &Path, truncate: bool) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match file {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn open(_: &Path, _: bool) -> std::io::Result<Option<File>> {
    Ok(None)
}

/// Writes `value` at `offset` (a multiple of `ALIGN`) of a file opened by `open`, from an aligned
/// copy when `value` is not aligned itself. `Ok(false)` when the file system refuses the write
/// (`EINVAL`): the caller writes it buffered instead.
#[cfg(target_os = "linux")]
pub(crate) fn write_at(file: &File, value: &[u8], offset: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let written = if (value.as_ptr() as usize).is_multiple_of(ALIGN) {
        file.write_all_at(value, offset)
    } else {
        ALIGNED.with_borrow_mut(|buf| {
            let buf = buf.get(value.len());
            buf.copy_from_slice(value);
            file.write_all_at(buf, offset)
        })
    };
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn write_at(_: &File, _: &[u8], _: u64) -> std::io::Result<bool> {
    Ok(false)
}

/// A page-aligned buffer kept by each writing thread for direct writes from unaligned memory (zarrs
/// hands over each encoded chunk in a fresh allocation, 16-byte aligned): a page more than the largest
/// write so far, used from its first page boundary.
#[cfg(target_os = "linux")]
struct AlignedBuf(Vec<u8>);

#[cfg(target_os = "linux")]
impl AlignedBuf {
    /// `len` bytes starting on a page.
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.0.len() < len + ALIGN {
            self.0 = vec![0; len + ALIGN];
        }
        let at = self.0.as_ptr().align_offset(ALIGN);
        &mut self.0[at..at + len]
    }
}

#[cfg(target_os = "linux")]
thread_local! {
    static ALIGNED: std::cell::RefCell<AlignedBuf> = const { std::cell::RefCell::new(AlignedBuf(Vec::new())) };
}

/// Threads writing a block's chunks directly: requests in flight at once.
pub(crate) const WRITE_THREADS: usize = 4;

/// Runs `put` on every item on `WRITE_THREADS` threads of their own (direct writes wait on the
/// device, not the CPU: rayon's threads stay free for the computation going on meanwhile). After a
/// failure no further item is started; the first error is returned.
pub(crate) fn on_write_threads<T: Sync, E: Send>(
    items: &[T],
    put: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..WRITE_THREADS.min(items.len()) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(k) else { break };
                if let Err(e) = put(item) {
                    next.store(items.len(), Ordering::Relaxed);
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    failed.map_or(Ok(()), Err)
}
