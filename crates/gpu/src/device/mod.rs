//! The wgpu device layer: graphics APIs and adapters (`api`), the device context with its buffers
//! and tile limit (`context`), kernels built from the table in `shaders.rs` (`kernels`), and the
//! command recorder (`recorder`). The paths below are the crate's public ones.

pub mod api;
pub mod context;
pub mod kernels;
pub mod recorder;

pub use crate::shaders::Bind;
pub use api::{list_adapters, AdapterSummary, Api};
pub use context::{GpuContext, TileStats, TILE_BYTES_ENV};
pub use kernels::Kernel;
pub use recorder::{split_groups, Recorder, WORKGROUP};
