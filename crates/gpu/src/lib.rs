//! gpuprep-gpu: the GPU backend. wgpu device, cached pipelines, host side of each WGSL kernel.
//!
//! Each kernel's WGSL lives in `shaders/<name>.wgsl` (prefixed by `shaders/common.wgsl` at load
//! time), its host side in `crates/gpu/src/<name>.rs` (registration: `register/`, split into the
//! resident, tiled and upsampling routes), its CPU twin in `crates/cpu/src/<name>.rs`.
//! `GpuBackend::process_frame` uploads a volume once, keeps it resident through median → register →
//! shift → accumulate and reads back only the result.
//!
//! | kernel (shaders/) | what runs on the device | tolerance vs the CPU twin (tests/gpu.rs) |
//! |---|---|---|
//! | `median3d` | window gather + Wirth selection on `f32::total_cmp` keys | bit-identical |
//! | `fft` | mixed-radix (2, 3, 4, 5, 7) Stockham stages; Bluestein for other primes | 1e-5·sqrt(N)·max\|x\| |
//! | `cross_power` | F·conj(G) from factors scaled to components ≤ 1 (+ phase normalization), argmax \|cc\|, Σ\|F\|² as (scale, Σ(\|c\|/scale)²), upsampled DFT | integer shifts identical; sub-pixel within 1/u; error/phasediff 1e-3; phase-normalized values to ~1e30 register as unscaled ones; unnormalized spectra stored times a power of two from the reference's power (the CPU: from both volumes); a non-finite spectrum, peak or error is an `Error` |
//! | `shift` | B-spline prefilter (IIR per line) + 4-tap gathers, per axis; taps from `gpuprep_core::spline::AxisPlan` | 1e-5·(1+max\|x\|) order 3, 2e-6 orders 0/1 |
//! | `zscore` | f64 Welford accumulate, finalize (f64 mean, std), normalize with the f64 moments and scipy's f64 constant rule | f32 mean/std 1 ulp; z within 1 ulp of the f32 result, NaN set identical (also vs scipy in f64: tests/reliability_numeric.rs) |
//! | `zscore_f32` | the same in float32 only (no SHADER_F64): shifted double-float sums by TwoSum/Dekker, finalize and normalize in double-float; used where f64 is missing, after a start-up self-test (`GPUPREP_GPU_ZSCORE=f64\|f32\|cpu` forces a path) | moments within 2^-40 relative; z within 2 ulp + 2^-36·(\|x\|+\|mean\|)/std of the twin and of the f64 path (tests/zscore_f32.rs) |
//!
//! Tiling (issue 3). The device is opened with the adapter's own limits. A stage whose largest
//! buffer exceeds the tile limit (`GpuContext::max_tile_bytes`: one storage binding,
//! `max_storage_buffer_binding_size` capped by `max_buffer_size`, 128 MiB on lavapipe; lower with
//! `GPUPREP_GPU_TILE_BYTES`, since wgpu cannot tell how much memory a device has) runs tiled, the
//! volume on the host between tiles, each tile's buffers under the limit:
//!
//! | stage | resident when | tiles |
//! |---|---|---|
//! | median | f32 volume fits | z-slabs with `size_z/2` halo planes a side, built by the host through the boundary mode in global z |
//! | shift | f32 volume and the order-3 padded lines fit | z pass on y-slabs (whole z lines), y and x passes on z-slabs |
//! | registration | complex spectrum (8 B/voxel) fits | x/y FFTs on z-slabs, z FFT + power + cross-power + inverse z on y-slabs, inverse x/y + argmax on z-slabs; upsampling contracts x/y per z-slab |
//! | z-score | f64 accumulators (8 B/voxel each) fit | element ranges; the accumulators stay on the host (16 B/voxel) |
//!
//! Tiled results are the resident kernels' arithmetic (the median bit-identical; the tiled
//! inverse FFT is unscaled and the host applies 1/N to the peak), so the tolerances above hold.
//! Each stage holds its own route (an enum per stage in `backend.rs`); `process_frame` takes the
//! fused resident route only when every stage of the plan is resident, else the stages one by one. Slabs split z and y only: a plane (ny·nx) and a z-row (nz·nx) of a stage's widest
//! buffer must fit, else a clear `Error` (use the CPU backend). `tile_stats()` counts the tiles.
//!
//! Other limits, all reported as `Error`s rather than panics: median windows hold at most 1331
//! elements (11×11×11). Without SHADER_F64 (e.g. the GL backend) the z-score runs in float32
//! double-float on the device (`zscore_f32`), or on the CPU twin when the device fails the f32 path's
//! self-test or its sums exceed the tile limit (the f32 path has no tiled route); `describe()` says
//! which.
//!
//! Upload overlap (issue 3) and overlapped frames (issue 13). The pipeline hands the backend the
//! whole stream of volumes (`Backend::process_stream`). On the fused resident route `GpuBackend`
//! takes the next volume from the stream before computing the current one and, while the GPU
//! computes, copies it into a reused host-visible staging buffer and submits its copy into a second
//! input buffer (`ahead`); the next frame swaps the inputs instead of uploading. Frame t + 1's median
//! and registration are submitted right after frame t's shift, accumulation and readback copies, so
//! the GPU computes them while the host waits for frame t's volume, copies it out and emits it
//! (`Fused::stream`); volume t + 2 is taken and staged after that. With wgpu's single queue the
//! device-side copies are serialized with the compute; what overlaps GPU work is the host side (the
//! staging copy, the readback's copy out, the emit, and the pipeline's reads on its reader thread).
//! It costs one more volume of host memory (the volume taken early), one of device memory and one of
//! host-visible staging, and applies to the fused resident route only: on the tiled route volumes
//! are taken from the stream one at a time.

pub mod ahead;
pub mod backend;
pub mod device;
pub mod fft;
pub mod median3d;
pub mod register;
pub mod shaders;
pub mod shift;
pub mod zscore;
pub mod zscore_f32;

pub use backend::{AheadStats, GpuBackend};
pub use device::{
    list_adapters, AdapterSummary, Api, GpuContext, GpuCounters, KernelTime, TileStats,
};
