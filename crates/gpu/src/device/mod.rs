//! The wgpu device layer: graphics APIs and adapters (`api`), the device context with its buffers
//! and tile limit (`context`), kernels built from the table in `shaders.rs` (`kernels`), and the
//! command recorder (`recorder`) and its opt-in per-kernel timestamps (`timing`). The paths below are the crate's public ones.

pub mod api;
pub mod context;
pub mod kernels;
pub mod recorder;
pub mod timing;

pub use crate::shaders::Bind;
pub use api::{list_adapters, AdapterSummary, Api};
pub use context::{
    typed, GpuContext, GpuCounters, PendingRead, TileStats, ADAPTER_ENV, TILE_BYTES_ENV,
    UNCHECKED_ENV,
};
pub use kernels::Kernel;
pub use recorder::{split_groups, Recorder, WORKGROUP};
pub use timing::KernelTime;

/// A Vulkan context for the crate's unit tests: `None` (with a loud SKIPPED line) on a machine without
/// an adapter, a failure when `GPUPREP_REQUIRE_GPU=1` (CI, on lavapipe).
#[cfg(test)]
pub(crate) fn test_context() -> Option<GpuContext> {
    match GpuContext::new(Api::Vulkan) {
        Ok(c) => Some(c),
        Err(e) if std::env::var("GPUPREP_REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("SKIPPED: no Vulkan adapter ({e})");
            None
        }
        Err(e) => panic!("GPUPREP_REQUIRE_GPU=1 but no Vulkan adapter: {e}"),
    }
}
