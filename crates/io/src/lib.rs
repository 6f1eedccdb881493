//! Input sources (HDF5, Zarr) and the output sink (HDF5, OME-Zarr): every file the pipeline reads or writes
//! goes through here.

pub mod arrays;
pub mod cleanup;
pub mod direct;
pub mod sink;
pub mod source;
pub mod writer;

pub use sink::{Compression, Sink, SinkOptions};
pub use source::{Axes, Dtype, Source};

/// Scale and unit of each (t, z, y, x) axis, as OME-NGFF writes them (e.g. `(0.5, Some("micrometer"))`).
pub type VoxelSize = [(f64, Option<String>); 4];

use gpuprep_core::error::Error;
pub use gpuprep_core::fmt::fmt_shape;
use std::path::PathBuf;

/// An HDF5 failure at `path` while doing `what` ("writing /data at timepoint 37"), its cause in one line.
pub fn hdf5_error(path: impl Into<PathBuf>, what: impl Into<String>, source: hdf5::Error) -> Error {
    Error::Storage {
        path: path.into(),
        what: what.into(),
        cause: hdf5_cause(&source),
        source: Box::new(source),
    }
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

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error's message followed by those of its sources that it does not already include ("cannot
/// store chunk: No space left on device (os error 28)").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let m = s.to_string();
        if !text.contains(&m) {
            text = format!("{text}: {m}");
        }
        next = s.source();
    }
    text
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
