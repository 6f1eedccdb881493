//! The library's error type: every variant names the file, dataset, shape or parameter at fault.
//!
//! Each variant's message is complete on one line, its cause included: print it alone, not followed by
//! its `source()` chain (anyhow's `{:#}` would repeat the cause).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name}: {message}")]
    InvalidParameter { name: String, message: String },

    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },

    /// A storage library (HDF5) failed; `what` reads "writing /data at timepoint 37". Shown as "PATH:
    /// CAUSE while WHAT", `cause` being the one-line cause the io crate found in the library's error
    /// (the system's error text where HDF5 recorded one, such as a full disk).
    #[error("{path}: {cause} while {what}")]
    Storage {
        path: PathBuf,
        what: String,
        cause: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
