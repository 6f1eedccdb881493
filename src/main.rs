//! The `gpuprep` command: parse flags, run, print the error chain and exit 2 on failure.

use clap::Parser;

fn main() {
    // gpuprep only reads its inputs and writes its output under a temporary name, so HDF5's file
    // locks protect nothing here, and on network and VM file systems they fail spuriously ("unable
    // to lock file, errno = 11"). Set before any HDF5 call; a user's own setting wins.
    if std::env::var_os("HDF5_USE_FILE_LOCKING").is_none() {
        std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE");
    }
    let cli = gpuprep::cli::Cli::parse();
    // `demo` prints before it works in a temporary directory, which only unwinding removes.
    if !matches!(cli.command, gpuprep::cli::Command::Demo(_)) {
        restore_sigpipe();
    }
    if let Err(e) = gpuprep::app::run_command(cli.command) {
        eprintln!("gpuprep: {e:#}");
        std::process::exit(2);
    }
}

/// Rust starts with SIGPIPE ignored, so `gpuprep info FILE | head -1` would panic in `println!` once
/// `head` exits; Unix tools end quietly instead. `run` prints only after its output is renamed into
/// place and `info`/`synth` hold nothing to clean up, so ending there loses nothing.
#[cfg(unix)]
fn restore_sigpipe() {
    // SAFETY: called in main before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_sigpipe() {}
