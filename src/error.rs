//! The library's error type: every variant names the file, dataset, shape or flag at fault.
//!
//! Each variant's message is complete on one line, its cause included: print it alone, not followed by
//! its `source()` chain (anyhow's `{:#}` would repeat the cause).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{flag}: {message}")]
    InvalidParameter { flag: String, message: String },

    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },

    /// HDF5 failed; `what` reads "writing /data at timepoint 37". Shown as "PATH: CAUSE while WHAT", the
    /// cause being the system's error text where HDF5 recorded one (disk full), else its innermost message.
    #[error("{path}: {} while {what}", hdf5_cause(.source))]
    Hdf5 {
        path: PathBuf,
        what: String,
        #[source]
        source: hdf5::Error,
    },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("data: {0}")]
    Data(String),

    #[error("GPU: {0}")]
    Gpu(String),
}

/// The most specific, one-line cause in an HDF5 error stack.
///
/// HDF5's own message for a failed write spans three lines (its timestamp ends in a newline) and lists
/// internal counters ("bytes actually written = 18446744073709551615", i.e. -1); its `errno` text
/// ("No space left on device") is what the user needs. Other stacks are best summed up by their innermost
/// frame, which says what actually went wrong where the outer frames only say "can't write data".
pub fn hdf5_cause(e: &hdf5::Error) -> String {
    let frames = match e.stack() {
        Some(stack) if !stack.is_empty() => stack,
        _ => return one_line(&e.to_string()),
    };
    // Innermost first: the system call's failure is at the bottom of the stack.
    if let Some(msg) = frames.iter().rev().find_map(|f| errno_text(f.desc())) {
        return msg;
    }
    let inner = frames.last().expect("nonempty");
    one_line(inner.desc())
}

/// The text of `error message = '...'` in an HDF5 file-driver message.
fn errno_text(desc: &str) -> Option<String> {
    let start = desc.find("error message = '")? + "error message = '".len();
    let len = desc[start..].find('\'')?;
    let text = one_line(&desc[start..start + len]);
    (!text.is_empty()).then_some(text)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::errno_text;

    #[test]
    fn errno_text_is_taken_from_hdf5_driver_messages() {
        let desc = "file write failed: time = Tue Dec  1 15:14:03 2026\n, filename = '/x/out.h5', file \
                    descriptor = 5, errno = 28, error message = 'No space left on device', buf = 0x55d, \
                    total write size = 1048576, bytes this sub-write = 1048576, bytes actually written = \
                    18446744073709551615, offset = 0";
        assert_eq!(errno_text(desc).as_deref(), Some("No space left on device"));
        assert_eq!(errno_text("can't write data"), None);
    }
}
