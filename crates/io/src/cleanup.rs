//! Temporary paths removed on SIGINT, SIGTERM and SIGHUP, and stale ones from killed runs reported.
//!
//! The CLI blocks the three signals in every thread and waits for them on one watcher thread
//! ([`install_signal_cleanup`]), so no code runs inside a signal handler: the watcher takes the registry's lock,
//! deletes every registered path, prints one line and ends the process with `_exit` (128 + the signal), which
//! skips atexit handlers (HDF5's) that would race the threads still running. Deleting files other threads
//! still have open is fine on Unix. A path's owner deregisters it under the same lock before it moves the
//! finished output into place ([`Registered::finish_with`]), so a signal can never delete a complete output.
//!
//! Inputs read in place (memory-mapped, `source::MappedVolume`) add SIGBUS, which the kernel raises in
//! the thread that touches a mapped page whose file was truncated meanwhile: the handler only records
//! the address and sends SIGTERM to the process, then waits; the watcher names the file that was
//! mapped there, removes the temporary paths and exits 2 with that error instead of the interrupt's.
//!
//! SIGKILL, a crash or a power cut run nothing: they leave a `.gpuprep-XXXXXX` directory beside the output,
//! which [`stale_entries`] finds for the next run's warning. gpuprep never deletes those itself: one may
//! belong to a run still in progress.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

/// Prefix of the private temporary directory each output is written in.
pub const TEMP_PREFIX: &str = ".gpuprep-";

/// (id, path, named in the interrupt message).
type Entries = Vec<(u64, PathBuf, bool)>;

static REGISTRY: Mutex<Entries> = Mutex::new(Vec::new());

/// Shared by every write that names its file by path into a registered directory (Zarr chunks and
/// metadata: the store recreates missing parent directories, so a chunk written just after the
/// interrupt deleted the directory would bring it back); taken exclusively by the interrupt before it
/// deletes, and never released (the process ends).
static WRITE_GATE: RwLock<()> = RwLock::new(());

/// Runs `f`, a path-based write into a registered directory, unless an interrupt is deleting them
/// (then it waits for the end of the process).
pub fn gated<T>(f: impl FnOnce() -> T) -> T {
    let _shared = WRITE_GATE.read().unwrap_or_else(|p| p.into_inner());
    f()
}
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn registry() -> MutexGuard<'static, Entries> {
    // A panic while holding the lock leaves the list itself intact.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A directory (or file) deleted if the process is interrupted while this handle is alive.
#[derive(Debug)]
pub struct Registered {
    id: u64,
}

impl Registered {
    pub fn new(path: &Path) -> Registered {
        Self::push(path, true)
    }

    /// Like `new`, for a path of no interest to the user (not named when it is removed).
    pub fn new_unnamed(path: &Path) -> Registered {
        Self::push(path, false)
    }

    fn push(path: &Path, named: bool) -> Registered {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        registry().push((id, path.to_path_buf(), named));
        Registered { id }
    }

    /// Deregisters the path and runs `f` while holding the registry's lock: a signal arriving meanwhile
    /// waits for `f` (a rename into place) to finish and then finds nothing of this run to delete.
    pub fn finish_with<T>(self, f: impl FnOnce() -> T) -> T {
        let mut reg = registry();
        reg.retain(|(id, ..)| *id != self.id);
        std::mem::forget(self);
        f()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        registry().retain(|(id, ..)| *id != self.id);
    }
}

/// Deletes every registered path; returns those deleted, for the message.
fn remove_registered(reg: &mut Entries) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for (_, path, named) in reg.drain(..) {
        let gone = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path).is_ok(),
            Ok(_) => std::fs::remove_file(&path).is_ok(),
            Err(_) => false,
        };
        if gone && named {
            removed.push(path);
        }
    }
    removed
}

/// Memory-mapped input regions (start, end, file), for the SIGBUS message.
static MAPPINGS: Mutex<Vec<(usize, usize, PathBuf)>> = Mutex::new(Vec::new());
/// The address a SIGBUS was raised at (0: none yet).
static BUS_ADDRESS: AtomicUsize = AtomicUsize::new(0);
/// Whether the SIGBUS handler and the watcher are installed: inputs are mapped only then.
static BUS_HANDLED: AtomicBool = AtomicBool::new(false);

/// Whether a mapped input that shrinks under the run ends it with an error naming the file, the
/// temporary paths removed ([`install_signal_cleanup`] ran): without that, SIGBUS would kill the
/// process, so inputs are read into memory instead of mapped.
pub fn bus_errors_handled() -> bool {
    BUS_HANDLED.load(Ordering::Acquire)
}

/// A mapped region of an input file, named if a SIGBUS is raised in it while this handle lives.
#[derive(Debug)]
pub struct MappedRegion {
    start: usize,
}

impl MappedRegion {
    pub fn new(start: usize, len: usize, file: &Path) -> MappedRegion {
        mappings().push((start, start + len, file.to_path_buf()));
        MappedRegion { start }
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        let mut m = mappings();
        if let Some(i) = m.iter().position(|(s, ..)| *s == self.start) {
            m.swap_remove(i);
        }
    }
}

fn mappings() -> MutexGuard<'static, Vec<(usize, usize, PathBuf)>> {
    MAPPINGS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The exit status of a process ended by `signal`: the shell's 128 + n.
#[cfg(unix)]
pub fn signal_exit_code(signal: i32) -> i32 {
    128 + signal
}

/// Blocks SIGINT, SIGTERM and SIGHUP and starts the thread that waits for them. Must be called before any
/// other thread is started: the signal mask is inherited by threads created later, and a thread that does
/// not block the signals would take them with their default action (the process dies, files stay).
#[cfg(unix)]
pub fn install_signal_cleanup() -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls only read and write it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    let spawned = std::thread::Builder::new()
        .name("gpuprep-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` and `sig` are valid for the call.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            on_signal(sig);
        });
    if let Err(e) = spawned {
        // Nobody would take the signals: unblocked, they at least end the process as before.
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        return Err(e);
    }
    // SAFETY: a zeroed sigaction is valid; the handler only does async-signal-safe things (an atomic
    // store, kill, pause).
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_bus_error as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0
    };
    BUS_HANDLED.store(installed, Ordering::Release);
    Ok(())
}

/// SIGBUS: a mapped input's page is gone (its file shrank). Returning would fault again, and almost
/// nothing is safe here: record where, have the watcher end the process, and wait for it.
#[cfg(unix)]
extern "C" fn on_bus_error(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO; kill and pause are
    // async-signal-safe.
    unsafe {
        let addr = (*info).si_addr() as usize;
        BUS_ADDRESS.store(addr.max(1), Ordering::SeqCst);
        libc::kill(libc::getpid(), libc::SIGTERM);
        loop {
            libc::pause();
        }
    }
}

#[cfg(unix)]
fn on_signal(sig: i32) -> ! {
    use std::io::Write;
    let name = match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    };
    // Taken first and held until the process ends: a run whose writer fails because its temporary
    // files vanish under it prints its error (and exits 2) through stderr, so it waits here and the
    // interrupt's exit status and message win.
    let mut err = std::io::stderr().lock();
    // Held until the process ends, so no run can register a new path or finish a rename halfway.
    let mut reg = registry();
    // Waits for the path-based writes under way (none of them takes the locks above), and holds
    // back the rest.
    let _writes = WRITE_GATE.write().unwrap_or_else(|p| p.into_inner());
    let removed = remove_registered(&mut reg);
    let removed: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
    // A progress bar may own the line: start a fresh one on a terminal.
    let lead = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        "\r\x1b[2K"
    } else {
        ""
    };
    let bus = BUS_ADDRESS.load(Ordering::SeqCst);
    if bus != 0 {
        // The faulting thread holds no lock (it was reading mapped memory); still, never wait here.
        let file = MAPPINGS.try_lock().ok().and_then(|m| {
            m.iter()
                .find(|(start, end, _)| (*start..*end).contains(&bus))
                .map(|(.., f)| f.display().to_string())
        });
        let what = match file {
            Some(f) => format!(
                "{f}: the input shrank while it was being read (truncated or rewritten during the run)"
            ),
            None => format!("bus error at address {bus:#x} (outside any input read in place)"),
        };
        let cleaned = if removed.is_empty() {
            String::new()
        } else {
            format!("; removed the temporary files in {}", removed.join(", "))
        };
        let _ = writeln!(err, "{lead}gpuprep: {what}{cleaned}");
        let _ = err.flush();
        // SAFETY: ends the process at once, as below.
        unsafe { libc::_exit(2) }
    }
    let _ = if removed.is_empty() {
        writeln!(err, "{lead}gpuprep: interrupted ({name})")
    } else {
        writeln!(
            err,
            "{lead}gpuprep: interrupted ({name}); removed the temporary files in {}",
            removed.join(", ")
        )
    };
    let _ = err.flush();
    // SAFETY: ends the process at once; nothing after this runs.
    unsafe { libc::_exit(signal_exit_code(sig)) }
}

#[cfg(not(unix))]
pub fn install_signal_cleanup() -> std::io::Result<()> {
    Ok(())
}

/// Leftovers of earlier runs in `dir`: `.gpuprep-*` entries (and the `.NAME.partial-PID` files earlier versions
/// wrote), each with its size in bytes (a directory's: the sum of the files in it).
pub fn stale_entries(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, u64)> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(TEMP_PREFIX) || is_old_partial(&name)
        })
        .map(|e| {
            let p = e.path();
            let size = size_of_tree(&p);
            (p, size)
        })
        .collect();
    found.sort();
    found
}

fn is_old_partial(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".partial-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Bytes of the regular files under `path`, links not followed.
fn size_of_tree(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| size_of_tree(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_paths_are_removed_and_finished_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join(".gpuprep-a");
        let b = dir.path().join(".gpuprep-b");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("out.h5"), b"x").unwrap();
        std::fs::create_dir(&b).unwrap();
        let ra = Registered::new(&a);
        let rb = Registered::new(&b);
        let kept = rb.finish_with(|| 7);
        assert_eq!(kept, 7);
        let mut reg = registry();
        let mine: Vec<_> = reg
            .iter()
            .filter(|(_, p, _)| p.starts_with(dir.path()))
            .cloned()
            .collect();
        assert_eq!(mine.len(), 1);
        let mut only_mine = mine;
        reg.retain(|(_, p, _)| !p.starts_with(dir.path()));
        drop(reg);
        assert_eq!(remove_registered(&mut only_mine), vec![a.clone()]);
        assert!(!a.exists() && b.exists());
        drop(ra);
    }

    #[test]
    fn stale_entries_name_ours_and_old_partials_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join(".gpuprep-x1Yz9q")).unwrap();
        std::fs::write(d.join(".gpuprep-x1Yz9q/out.h5"), vec![0u8; 3000]).unwrap();
        std::fs::write(d.join(".out.h5.partial-1234"), vec![0u8; 10]).unwrap();
        std::fs::write(d.join("out.h5"), b"x").unwrap();
        std::fs::write(d.join(".hidden.partial-x"), b"x").unwrap();
        let found = stale_entries(d);
        assert_eq!(
            found,
            vec![
                (d.join(".gpuprep-x1Yz9q"), 3000),
                (d.join(".out.h5.partial-1234"), 10)
            ]
        );
    }
}
