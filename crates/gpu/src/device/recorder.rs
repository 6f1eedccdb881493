//! The command recorder: packs every dispatch's uniforms into one buffer, binds them at dynamic
//! offsets with the bind groups cached on the context, and splits dispatches larger than 65,535
//! workgroups over two dimensions.

use super::context::GpuContext;
use super::kernels::Kernel;
use gpuprep_core::error::{Error, Result};
use std::sync::Arc;

/// Workgroup size of every 1-D kernel; equal to `WG` in `shaders/common.wgsl` and to every entry
/// point's `@workgroup_size` (checked by `tests/shaders.rs`, `workgroup_size_matches_wgsl`).
pub const WORKGROUP: u32 = 64;

/// Most workgroups a dispatch may have along one dimension (WebGPU's minimum limit).
const MAX_GROUPS_PER_DIM: u32 = 65535;

impl GpuContext {
    /// Start recording a batch of dispatches.
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            ctx: self,
            uniforms: Vec::new(),
            ops: Vec::new(),
        }
    }

    /// The uniform buffer every batch writes its uniforms to, grown to at least `bytes`.
    fn uniform_buffer(&self, bytes: u64) -> wgpu::Buffer {
        let mut pool = self.uniform_pool.borrow_mut();
        if let Some(b) = pool.as_ref() {
            if b.size() >= bytes {
                return b.clone();
            }
        }
        let size = bytes.next_power_of_two().max(4096);
        // Bind groups of the old buffer are of no more use (and would keep it alive).
        self.bind_groups.borrow_mut().clear();
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gpuprep.uniforms"),
            size,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        *pool = Some(b.clone());
        b
    }
}

/// `(x, y)` workgroup counts covering `groups` workgroups with at most 65,535 along each dimension;
/// kernels rebuild the linear index with `linear_index` in `common.wgsl` and bound-check it.
pub fn split_groups(groups: u32) -> (u32, u32) {
    if groups <= MAX_GROUPS_PER_DIM {
        (groups.max(1), 1)
    } else {
        let y = groups.div_ceil(MAX_GROUPS_PER_DIM);
        (groups.div_ceil(y), y)
    }
}

enum Op {
    Dispatch {
        kernel: Arc<Kernel>,
        uniform: Option<(u64, u64)>,
        buffers: Vec<wgpu::Buffer>,
        groups: u32,
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    },
}

/// Records dispatches; `submit` writes all uniforms at once, builds the bind groups and submits.
pub struct Recorder<'a> {
    ctx: &'a GpuContext,
    uniforms: Vec<u8>,
    ops: Vec<Op>,
}

impl Recorder<'_> {
    /// Dispatch `kernel` over `items` invocations (`WORKGROUP` per workgroup) with uniform `params`
    /// and the storage `buffers` in binding order after the uniform.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        buffers: &[&wgpu::Buffer],
        items: u64,
    ) {
        self.dispatch_groups(kernel, params, buffers, items.div_ceil(WORKGROUP as u64));
    }

    /// As `dispatch`, with an explicit workgroup count.
    pub fn dispatch_groups<P: bytemuck::Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: u64,
    ) {
        let align = self.ctx.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        let off = self.uniforms.len().div_ceil(align) * align;
        self.uniforms.resize(off, 0);
        let bytes = bytemuck::bytes_of(params);
        self.uniforms.extend_from_slice(bytes);
        debug_assert_eq!(
            kernel.binds.len(),
            buffers.len() + 1,
            "{}: binding count",
            kernel.label
        );
        self.ops.push(Op::Dispatch {
            kernel: kernel.clone(),
            uniform: Some((off as u64, bytes.len() as u64)),
            buffers: buffers.iter().map(|b| (*b).clone()).collect(),
            groups: groups.min(u32::MAX as u64) as u32,
        });
    }

    pub fn copy(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        self.copy_at(src, 0, dst, 0, bytes);
    }

    /// `bytes` from `src_offset` of `src` to `dst_offset` of `dst`, after the work recorded before.
    pub fn copy_at(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        self.ops.push(Op::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            bytes,
        });
    }

    /// Submit everything recorded; returns the submission index.
    pub fn submit(self) -> Result<wgpu::SubmissionIndex> {
        let ctx = self.ctx;
        let ubuf = if self.uniforms.is_empty() {
            None
        } else {
            Some(ctx.uniform_buffer(self.uniforms.len() as u64))
        };
        if let Some(u) = &ubuf {
            ctx.write(u, 0, &self.uniforms);
        }
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("gpuprep.batch"),
            });
        let dispatches = self
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Dispatch { .. }))
            .count();
        // Timed (`GpuContext::time_kernels`): a pass per dispatch, stamped at both ends.
        let mut stamps = ctx
            .timing_kernels()
            .then(|| super::timing::BatchStamps::new(ctx, dispatches));
        let mut i = 0;
        while i < self.ops.len() {
            match &self.ops[i] {
                Op::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    bytes,
                } => {
                    enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *bytes);
                    i += 1;
                }
                Op::Dispatch { kernel, .. } => {
                    let timestamp_writes = stamps.as_mut().map(|s| s.next(&kernel.label));
                    let timed = timestamp_writes.is_some();
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("gpuprep.pass"),
                        timestamp_writes,
                    });
                    let first = i;
                    while i < self.ops.len() && !(timed && i > first) {
                        let Op::Dispatch {
                            kernel,
                            uniform,
                            buffers,
                            groups,
                        } = &self.ops[i]
                        else {
                            break;
                        };
                        let bound = ubuf.as_ref().zip(*uniform);
                        let bg =
                            ctx.bind_group(kernel, bound.map(|(u, (_, size))| (u, size)), buffers);
                        let offsets: &[u32] = match bound {
                            Some((_, (off, _))) => &[off as u32],
                            None => &[],
                        };
                        pass.set_pipeline(&kernel.pipeline);
                        pass.set_bind_group(0, &bg, offsets);
                        let (x, y) = split_groups(*groups);
                        pass.dispatch_workgroups(x, y, 1);
                        i += 1;
                    }
                }
            }
        }
        if let Some(s) = &stamps {
            s.resolve(&mut enc);
        }
        let idx = ctx.queue.submit([enc.finish()]);
        ctx.count(|c| {
            c.submits += 1;
            c.dispatches += dispatches;
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("submitting GPU work: {err}")));
        }
        if let Some(s) = stamps {
            s.collect(ctx, idx.clone())?;
        }
        Ok(idx)
    }
}
