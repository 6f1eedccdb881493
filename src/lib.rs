//! gpuprep: preprocess 4-D (t, z, y, x) imaging data on the GPU or the CPU, with scipy's numbers.

pub mod app;
pub mod backend;
pub mod cli;
pub mod cpu;
pub mod error;
pub mod gpu;
pub mod io;
pub mod memory;
pub mod params;
pub mod pipeline;
pub mod synth;

pub use error::{Error, Result};
