//! gpuprep-core: what both backends share. Errors, validated parameters, scipy's and scikit-image's
//! semantics (boundary modes, spline taps, registration's tail, moments and the constant-voxel rule),
//! the complex type, the CPU vector level (`simd`), and the `Backend` trait the pipeline drives.

pub mod backend;
pub mod boundary;
pub mod chunked;
pub mod complex;
pub mod error;
pub mod fmt;
pub mod host;
pub mod params;
pub mod register;
pub mod simd;
pub mod spline;
pub mod zscore;

pub use error::{Error, Result};
