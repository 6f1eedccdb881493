//! Host side of `shaders/shift.wgsl` (CPU twin: `src/cpu/shift.rs`). The per-axis taps come from the
//! CPU twin's `AxisPlan` (NI_ZoomShift's set-up loop, in f64); the GPU does the prefilter and the sums.

use super::device::{Bind, GpuContext, Recorder};
use crate::cpu::shift::AxisPlan;
use crate::error::Result;
use crate::params::{BoundaryMode, ShiftParams};
use bytemuck::{Pod, Zeroable};
use std::cell::RefCell;

/// Uniforms of `shift.wgsl`; keep in sync with `struct Params` in shaders/shift.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ShiftUniform {
    pub n: u32,
    pub stride: u32,
    pub lines: u32,
    pub len: u32,
    pub pad: u32,
    pub reflect_init: u32,
    pub order: u32,
    pub from_scratch: u32,
    pub total: u32,
    pub tap_offset: u32,
    pub final_pass: u32,
    pub use_mask: u32,
    pub nz: u32,
    pub ny: u32,
    pub nx: u32,
    pub cval: f32,
    pub z_len: f32,
    pub z_len1: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}
const _: () = assert!(std::mem::size_of::<ShiftUniform>() == 80);

/// One tap set; keep in sync with `struct Tap` in shaders/shift.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Tap {
    pub idx: [u32; 4],
    pub w: [f32; 4],
}
const _: () = assert!(std::mem::size_of::<Tap>() == 32);

const POLE: f64 = -0.267_949_192_431_122_7;

/// Device buffers a shift needs besides its input and output; reused across timepoints.
pub struct ShiftBuffers {
    pub shape: [usize; 3],
    pub tmp: [wgpu::Buffer; 2],
    /// Prefiltered lines (order 3), sized on first use for the mode's padding.
    scratch: RefCell<Option<wgpu::Buffer>>,
    pub taps: wgpu::Buffer,
    pub outside: wgpu::Buffer,
}

impl ShiftBuffers {
    pub fn new(ctx: &GpuContext, shape: [usize; 3]) -> Result<Self> {
        let total = shape.iter().product::<usize>() as u64;
        let ntaps = shape.iter().sum::<usize>() as u64;
        Ok(ShiftBuffers {
            shape,
            tmp: [
                ctx.storage("shift.tmp0", total * 4)?,
                ctx.storage("shift.tmp1", total * 4)?,
            ],
            scratch: RefCell::new(None),
            taps: ctx.storage("shift.taps", ntaps * 32)?,
            outside: ctx.storage("shift.outside", ntaps * 4)?,
        })
    }

    fn scratch(&self, ctx: &GpuContext, elems: u64) -> Result<wgpu::Buffer> {
        let mut s = self.scratch.borrow_mut();
        if let Some(b) = s.as_ref() {
            if b.size() >= elems * 4 {
                return Ok(b.clone());
            }
        }
        let b = ctx.storage("shift.scratch", elems * 4)?;
        *s = Some(b.clone());
        Ok(b)
    }
}

/// Record `scipy.ndimage.shift(src, shift, order, mode, cval)` into `dst` (`dst` must differ from `src`).
pub fn record(
    ctx: &GpuContext,
    rec: &mut Recorder<'_>,
    bufs: &ShiftBuffers,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    shift: [f64; 3],
    p: &ShiftParams,
) -> Result<()> {
    let shape = bufs.shape;
    let total = shape.iter().product::<usize>();
    let plans: Vec<AxisPlan> = (0..3)
        .map(|a| AxisPlan::new(shape[a], shift[a], p))
        .collect();
    let mut taps = Vec::with_capacity(shape.iter().sum());
    let mut outside = Vec::with_capacity(shape.iter().sum());
    for plan in &plans {
        // An axis of length 1 holds one value per line; its (padded, prefiltered) line is that value
        // again, so the pass reads the volume directly at index 0 (no scratch lines of 25 samples).
        let single = plan.taps.len() == 1;
        for t in &plan.taps {
            match t {
                Some((idx, w)) => {
                    taps.push(Tap {
                        idx: if single {
                            [0; 4]
                        } else {
                            idx.map(|i| i as u32)
                        },
                        w: if plan.order == 0 {
                            [1.0, 0.0, 0.0, 0.0]
                        } else {
                            w.map(|v| v as f32)
                        },
                    });
                    outside.push(0u32);
                }
                None => {
                    taps.push(Tap::default());
                    outside.push(1u32);
                }
            }
        }
    }
    ctx.queue
        .write_buffer(&bufs.taps, 0, bytemuck::cast_slice(&taps));
    ctx.queue
        .write_buffer(&bufs.outside, 0, bytemuck::cast_slice(&outside));
    let prefilter = ctx.kernel(
        "shift",
        "prefilter",
        &[],
        &[Bind::Uniform, Bind::Read, Bind::ReadWrite],
    )?;
    let gather = ctx.kernel(
        "shift",
        "gather",
        &[],
        &[
            Bind::Uniform,
            Bind::Read,
            Bind::Read,
            Bind::Read,
            Bind::ReadWrite,
        ],
    )?;
    let strides = [shape[1] * shape[2], shape[2], 1];
    let mut tap_offset = 0;
    let mut cur = src;
    for axis in 0..3 {
        let n = shape[axis];
        let plan = &plans[axis];
        let len = n + 2 * plan.pad;
        let from_scratch = plan.order > 1 && n > 1;
        let u = ShiftUniform {
            n: n as u32,
            stride: strides[axis] as u32,
            lines: (total / n) as u32,
            len: len as u32,
            pad: plan.pad as u32,
            reflect_init: matches!(p.mode, BoundaryMode::Reflect | BoundaryMode::Nearest) as u32,
            order: plan.order as u32,
            from_scratch: from_scratch as u32,
            total: total as u32,
            tap_offset: tap_offset as u32,
            final_pass: (axis == 2) as u32,
            use_mask: (p.mode == BoundaryMode::Constant) as u32,
            nz: shape[0] as u32,
            ny: shape[1] as u32,
            nx: shape[2] as u32,
            cval: p.cval,
            z_len: POLE.powi(len as i32) as f32,
            z_len1: POLE.powi(len as i32 - 1) as f32,
            _pad0: 0,
            _pad1: 0,
        };
        let out = if axis == 2 { dst } else { &bufs.tmp[axis] };
        if from_scratch {
            let scratch = bufs.scratch(ctx, ((total / n) * len) as u64)?;
            rec.dispatch(&prefilter, &u, &[cur, &scratch], (total / n) as u64);
            rec.dispatch(
                &gather,
                &u,
                &[&scratch, &bufs.taps, &bufs.outside, out],
                total as u64,
            );
        } else {
            rec.dispatch(
                &gather,
                &u,
                &[cur, &bufs.taps, &bufs.outside, out],
                total as u64,
            );
        }
        cur = out;
        tap_offset += n;
    }
    Ok(())
}
