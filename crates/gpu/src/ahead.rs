//! Uploading the next volume while the current one computes (`GpuBackend::process_stream`).
//!
//! What overlaps, on wgpu's one queue per device: the host side of the upload (copying the volume
//! into a host-visible staging buffer, like the HDF5 reads on the pipeline's reader thread) runs
//! while the GPU executes the frame already submitted. The device side (the copy from staging into
//! the device-local input buffer) is a command on the same queue, so it runs after that frame's
//! compute and before later submissions, never beside compute: wgpu exposes no separate transfer
//! queue. What is saved per frame is the host copy, not the bus transfer.
//!
//! The staging buffer is ours rather than `Queue::write_buffer`'s: wgpu 30 makes a fresh staging
//! allocation for every `write_buffer` call (its docs say so and point to buffers one maps and
//! unmaps oneself), and this one is made once per volume shape and reused. Its cycle: mapped →
//! host copy → unmap → copy to the device input submitted at once → `map_async` again, which
//! completes when that copy has (in practice during the same frame's readback wait).

use super::device::GpuContext;
use gpuprep_core::error::{Error, Result};
use std::cell::RefCell;
use std::sync::mpsc;

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

enum MapState {
    /// The host may write the staging buffer.
    Mapped,
    /// The copy out of staging was submitted as `idx`; `rx` reports the mapping that follows it.
    Pending {
        idx: wgpu::SubmissionIndex,
        rx: mpsc::Receiver<MapResult>,
    },
    /// A mapping failed; every later `stage` reports it rather than touch the buffer.
    Failed(String),
}

/// The device buffer the next volume is staged into, and the host-visible buffer it passes
/// through. The backend swaps `input` with its current input buffer when a frame finds its volume here.
pub struct AheadUpload {
    /// Device-local; holds the staged volume once the copy submitted by `stage` has run.
    pub input: wgpu::Buffer,
    staging: wgpu::Buffer,
    bytes: u64,
    map: RefCell<MapState>,
}

impl AheadUpload {
    /// Buffers for volumes of `voxels` f32 values: a second device input and a staging buffer
    /// created mapped, so the first `stage` writes without waiting.
    pub fn new(ctx: &GpuContext, voxels: usize) -> Result<AheadUpload> {
        let bytes = voxels as u64 * 4;
        let input = ctx.storage("input.volume_b", bytes)?;
        ctx.check_binding("frame.upload_staging", bytes)?;
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gpuprep.frame.upload_staging"),
            size: bytes.max(16),
            usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        Ok(AheadUpload {
            input,
            staging,
            bytes,
            map: RefCell::new(MapState::Mapped),
        })
    }

    /// Copies `vol` into the staging buffer now and submits its copy into `input`, queued behind
    /// everything submitted before (the current frame's compute) and ahead of everything after
    /// (the next frame, which may then read `input`). Returns once the host copy is done; the
    /// device copy runs when the queue reaches it.
    pub fn stage(&self, ctx: &GpuContext, vol: &[f32]) -> Result<()> {
        let data: &[u8] = bytemuck::cast_slice(vol);
        if data.len() as u64 != self.bytes {
            return Err(Error::Gpu(format!(
                "staging a {}-byte volume into a {}-byte buffer",
                data.len(),
                self.bytes
            )));
        }
        self.wait_mapped(ctx)?;
        {
            let mut view = self
                .staging
                .get_mapped_range_mut(..self.bytes)
                .map_err(|e| Error::Gpu(format!("upload staging buffer: {e}")))?;
            view.copy_from_slice(data);
        }
        self.staging.unmap();
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("gpuprep.frame.upload_ahead"),
            });
        enc.copy_buffer_to_buffer(&self.staging, 0, &self.input, 0, self.bytes);
        let idx = ctx.queue.submit([enc.finish()]);
        ctx.count(|c| c.submits += 1);
        // Mapping waits for the copy just submitted; asking now means it is usually complete by
        // the next `stage`, found by the poll that waits for the current frame's readback.
        let (tx, rx) = mpsc::channel();
        self.staging
            .map_async(wgpu::MapMode::Write, ..self.bytes, move |r| {
                let _ = tx.send(r);
            });
        *self.map.borrow_mut() = MapState::Pending { idx, rx };
        Ok(())
    }

    fn wait_mapped(&self, ctx: &GpuContext) -> Result<()> {
        let mut map = self.map.borrow_mut();
        let result = match &*map {
            MapState::Mapped => return Ok(()),
            MapState::Failed(e) => return Err(Error::Gpu(e.clone())),
            MapState::Pending { idx, rx } => match rx.try_recv() {
                Ok(r) => r,
                Err(_) => {
                    ctx.count(|c| c.waits += 1);
                    ctx.device
                        .poll(wgpu::PollType::Wait {
                            submission_index: Some(idx.clone()),
                            timeout: None,
                        })
                        .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
                    rx.recv()
                        .map_err(|_| Error::Gpu("upload staging: map callback dropped".into()))?
                }
            },
        };
        *map = match result {
            Ok(()) => MapState::Mapped,
            Err(e) => MapState::Failed(format!("mapping the upload staging buffer: {e}")),
        };
        match &*map {
            MapState::Failed(e) => Err(Error::Gpu(e.clone())),
            _ => Ok(()),
        }
    }
}
