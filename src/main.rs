//! The `gpuprep` command: parse flags, run, print the error in one line and exit 2 on failure.

mod app;
mod cli;

use std::io::Write;

use clap::Parser;

fn main() {
    // gpuprep only reads its inputs and writes its output under a temporary name, so HDF5's file
    // locks protect nothing here, and on network and VM file systems they fail spuriously ("unable
    // to lock file, errno = 11"). Set before any HDF5 call; a user's own setting wins.
    if std::env::var_os("HDF5_USE_FILE_LOCKING").is_none() {
        std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE");
    }
    let cli = match crate::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    // `demo` prints before it works in a temporary directory, which only unwinding removes.
    if !matches!(cli.command, crate::cli::Command::Demo(_)) {
        restore_sigpipe();
    }
    // Both before any other thread starts: the environment is only safe to change while one thread runs,
    // and threads inherit the signal mask that keeps SIGINT/SIGTERM/SIGHUP for the cleanup thread.
    let runtime_dir = quiet_wayland_probe();
    if let Err(e) = gpuprep_io::cleanup::install_signal_cleanup() {
        let _ = writeln!(
            std::io::stderr(),
            "gpuprep: warning: cannot watch for interrupts ({e}); an interrupted run leaves its \
             temporary directory behind"
        );
    }
    let result = crate::app::run_command(cli.command).map_err(|e| match e.downcast() {
        Ok(e) => anyhow::Error::new(cli::under_its_flag(e)),
        Err(e) => e,
    });
    // `exit` skips destructors.
    drop(runtime_dir);
    if let Err(e) = result {
        let _ = writeln!(std::io::stderr(), "gpuprep: {}", message(&e));
        std::process::exit(2);
    }
}

/// The error and the causes it does not already state. gpuprep's own errors carry their cause in their
/// message, so the chain stops there; anyhow's `{:#}` would print the cause a second time.
fn message(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        parts.push(cause.to_string());
        if cause.is::<gpuprep_core::Error>() {
            break;
        }
    }
    parts.join(": ")
}

/// wgpu's OpenGL probe asks libwayland-client for a display; without `XDG_RUNTIME_DIR` (cron, ssh, a
/// container) libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." on
/// each probe, though nothing failed and no Wayland display was reachable anyway. With the variable
/// unset or not absolute, and `WAYLAND_DISPLAY` not an absolute socket path (which libwayland would use
/// without it), point it at an empty private directory: the probe then finds no display, silently, as
/// it would have. The directory is removed on exit (and by the interrupt cleanup).
fn quiet_wayland_probe() -> Option<(tempfile::TempDir, gpuprep_io::cleanup::Registered)> {
    let absolute =
        |v: Option<std::ffi::OsString>| v.is_some_and(|v| std::path::Path::new(&v).is_absolute());
    if absolute(std::env::var_os("XDG_RUNTIME_DIR"))
        || absolute(std::env::var_os("WAYLAND_DISPLAY"))
    {
        return None;
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix("gpuprep-runtime-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let dir = builder.tempdir().ok()?;
    std::env::set_var("XDG_RUNTIME_DIR", dir.path());
    let registered = gpuprep_io::cleanup::Registered::new_unnamed(dir.path());
    Some((dir, registered))
}

/// Rust starts with SIGPIPE ignored, so `gpuprep info FILE | head -1` would end in an error once
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

/// clap's help and version go out as clap prints them; its usage errors (bad values, unknown flags) are
/// told in one line like every other gpuprep error, with the same exit status 2.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut line = String::new();
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with("Usage:") || l.starts_with("For more information") {
            continue;
        }
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(l.strip_prefix("error: ").unwrap_or(l));
    }
    let _ = writeln!(std::io::stderr(), "gpuprep: {line}");
    std::process::exit(2);
}
