//! gpuprep-pipeline: the whole job over the library crates. The streaming driver (reader, backend and
//! writer threads), the memory check made before any data is read, the output's provenance, and
//! synthetic data; progress is reported through a callback, never drawn here.

pub mod channels;
pub mod driver;
pub mod memory;
pub mod options;
pub mod qc;
pub mod shifts;
pub mod synth;

pub use driver::{
    run, run_with_progress, NonFinite, Progress, ReferenceSpec, RunConfig, RunReport,
};
pub use options::RunOptions;
