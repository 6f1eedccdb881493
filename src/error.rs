//! The library's error type: every variant names the file, dataset, shape or flag at fault.

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

    #[error("HDF5 error in {path} ({what}): {source}")]
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
