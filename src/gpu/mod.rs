//! The GPU backend: wgpu device, cached pipelines, host side of each WGSL kernel.
//!
//! Each kernel's WGSL lives in `shaders/<name>.wgsl` (prefixed by `shaders/common.wgsl` at load
//! time), its host side in `src/gpu/<name>.rs`, its CPU twin in `src/cpu/<name>.rs`.
//! `GpuBackend::process_frame` uploads a volume once, keeps it resident through median → register →
//! shift → accumulate and reads back only the result.
//!
//! | kernel (shaders/) | what runs on the device | tolerance vs the CPU twin (tests/gpu.rs) |
//! |---|---|---|
//! | `median3d` | window gather + Wirth selection on `f32::total_cmp` keys | bit-identical |
//! | `fft` | mixed-radix (2, 3, 4, 5, 7) Stockham stages; Bluestein for other primes | 1e-5·sqrt(N)·max\|x\| |
//! | `cross_power` | F·conj(G) (+ phase normalization), argmax \|cc\|, Σ\|F\|², upsampled DFT | integer shifts identical; sub-pixel within 1/u |
//! | `shift` | B-spline prefilter (IIR per line) + 4-tap gathers, per axis; taps from `cpu::shift::AxisPlan` | 1e-5·(1+max\|x\|) order 3, 2e-6 orders 0/1 |
//! | `zscore` | f64 Welford accumulate, finalize, normalize | mean/std 1 ulp, z 2e-6 |
//!
//! Limits, all reported as `Error`s rather than panics: each buffer must fit one storage binding
//! (`max_storage_buffer_binding_size`, 128 MiB on lavapipe: registration needs 8 bytes a voxel, so
//! about 16.7 M voxels there); volumes beyond that are not tiled yet. Median windows hold at most
//! 1331 elements (11×11×11). Without SHADER_F64 (e.g. the GL backend) the z-score runs on the CPU
//! twin and `describe()` says so. Uploads do not overlap compute yet (`process_frame` is synchronous).

pub mod backend;
pub mod device;
pub mod fft;
pub mod median3d;
pub mod register;
pub mod shaders;
pub mod shift;
pub mod zscore;

pub use backend::GpuBackend;
pub use device::{list_adapters, AdapterSummary, Api, GpuContext};
