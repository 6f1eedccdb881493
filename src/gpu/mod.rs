//! The GPU backend: wgpu device, cached pipelines, host side of each WGSL kernel.
//!
//! Each kernel's WGSL lives in `shaders/<name>.wgsl` (prefixed by `shaders/common.wgsl` at load
//! time), its host side in `src/gpu/<name>.rs`, its CPU twin in `src/cpu/<name>.rs`.
//! `GpuBackend::process_frame` uploads a volume once, keeps it resident through median → register →
//! shift → accumulate and reads back only the result.

pub mod backend;
pub mod device;
pub mod median3d;
pub mod shaders;
pub mod zscore;

pub use backend::GpuBackend;
pub use device::{list_adapters, AdapterSummary, Api, GpuContext};
