//! Host side of `shaders/shift.wgsl` (CPU twin: `crates/cpu/src/shift.rs`). The per-axis taps come
//! from `gpuprep_core::spline::AxisPlan` (NI_ZoomShift's set-up loop, in f64); the GPU does the
//! prefilter and the sums.
//! Volumes over the tile limit are shifted in slabs: the translation is separable, and each pass
//! needs only whole lines along its own axis (`run_tiled`).

use super::device::{GpuContext, Recorder};
use super::shaders::{SHIFT_GATHER, SHIFT_PREFILTER};
use bytemuck::{Pod, Zeroable};
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::{BoundaryMode, ShiftParams};
use gpuprep_core::spline::{AxisPlan, POLE};
use ndarray::{s, Array3, ArrayView3};
use std::cell::RefCell;

/// Uniforms of `shift.wgsl`: the layout of its `struct Params` (checked by `tests/shaders.rs`,
/// `uniform_structs_match_wgsl`).
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

/// One tap set: the layout of `struct Tap` in shaders/shift.wgsl (checked by `tests/shaders.rs`,
/// `uniform_structs_match_wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Tap {
    pub idx: [u32; 4],
    pub w: [f32; 4],
}
const _: () = assert!(std::mem::size_of::<Tap>() == 32);

/// Device buffers a shift needs besides its input and output; reused across timepoints.
pub struct ShiftBuffers {
    pub shape: [usize; 3],
    pub tmp: [wgpu::Buffer; 2],
    /// Prefiltered lines (order 3), sized on first use for the mode's padding.
    scratch: RefCell<Option<wgpu::Buffer>>,
    /// Buffers of the tiled route: the scratch comes from the context's tile pool (reused across
    /// calls and timepoints) instead of this struct.
    tiled: bool,
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
            tiled: false,
            taps: ctx.storage("shift.taps", ntaps * 32)?,
            outside: ctx.storage("shift.outside", ntaps * 4)?,
        })
    }

    /// Buffers for tiles of up to `elems` voxels and `ntaps` taps (`shape` is then unused).
    fn for_tiles(ctx: &GpuContext, elems: usize, ntaps: usize) -> Result<Self> {
        Ok(ShiftBuffers {
            shape: [0; 3],
            tmp: [
                ctx.tile_buffer("shift.tile_tmp0", elems as u64 * 4)?,
                ctx.tile_buffer("shift.tile_tmp1", elems as u64 * 4)?,
            ],
            scratch: RefCell::new(None),
            tiled: true,
            taps: ctx.pooled("shift.tile_taps", ntaps as u64 * 32)?,
            outside: ctx.pooled("shift.tile_outside", ntaps as u64 * 4)?,
        })
    }

    fn scratch(&self, ctx: &GpuContext, elems: u64) -> Result<wgpu::Buffer> {
        if self.tiled {
            return ctx.tile_buffer("shift.tile_scratch", elems * 4);
        }
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
    let plans = axis_plans(shape, shift, p);
    record_passes(
        ctx,
        rec,
        bufs,
        src,
        dst,
        shape,
        [0; 3],
        &[0, 1, 2],
        &plans,
        p,
    )
}

/// Largest buffer (bytes) the resident route needs for `shape`: the volume, or the order-3
/// prefilter's padded lines.
pub fn resident_bytes(shape: [usize; 3], p: &ShiftParams) -> u64 {
    let total = shape.iter().product::<usize>();
    let pad = AxisPlan::new(1, 0.0, p).pad;
    let lines = if p.order > 1 {
        (0..3)
            .map(|a| total / shape[a] * (shape[a] + 2 * pad))
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    total.max(lines) as u64 * 4
}

fn axis_plans(shape: [usize; 3], shift: [f64; 3], p: &ShiftParams) -> [AxisPlan; 3] {
    std::array::from_fn(|a| AxisPlan::new(shape[a], shift[a], p))
}

/// Record the passes along `axes` (increasing) of the shift planned by `plans` (for the whole
/// volume) on the block of `shape` at `origin` of the volume, from `src` into `dst`. Every axis in
/// `axes` must be whole in the block (`shape[a]` = the plan's length); the constant-mode mask of
/// the last pass (axis 2) reads the other axes' outside flags at the block's global position.
#[allow(clippy::too_many_arguments)]
fn record_passes(
    ctx: &GpuContext,
    rec: &mut Recorder<'_>,
    bufs: &ShiftBuffers,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    shape: [usize; 3],
    origin: [usize; 3],
    axes: &[usize],
    plans: &[AxisPlan; 3],
    p: &ShiftParams,
) -> Result<()> {
    let total = shape.iter().product::<usize>();
    let mut taps = Vec::with_capacity(shape.iter().sum());
    let mut outside = Vec::with_capacity(shape.iter().sum());
    for (a, plan) in plans.iter().enumerate() {
        let block = origin[a]..origin[a] + shape[a];
        if !axes.contains(&a) {
            // Not interpolated here: only the outside flags (for the mask) matter.
            taps.extend(std::iter::repeat_n(Tap::default(), shape[a]));
            outside.extend(plan.taps[block].iter().map(|t| t.is_none() as u32));
            continue;
        }
        debug_assert_eq!(
            block,
            0..plan.taps.len(),
            "axis {a} must be whole in the block"
        );
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
    ctx.write(&bufs.taps, 0, bytemuck::cast_slice(&taps));
    ctx.write(&bufs.outside, 0, bytemuck::cast_slice(&outside));
    let prefilter = ctx.pipeline(&SHIFT_PREFILTER)?;
    let gather = ctx.pipeline(&SHIFT_GATHER)?;
    let strides = [shape[1] * shape[2], shape[2], 1];
    let mut cur = src;
    for (i, &axis) in axes.iter().enumerate() {
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
            tap_offset: shape[..axis].iter().sum::<usize>() as u32,
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
        let out = if i + 1 == axes.len() {
            dst
        } else {
            &bufs.tmp[i % 2]
        };
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
    }
    Ok(())
}

/// `record` for a volume over the tile limit: the z pass on y-slabs (whole z lines), then the y and
/// x passes on z-slabs, each slab uploaded, shifted and read back; the intermediate volume stays on
/// the host. Slabs are as thick as the tile limit allows for every buffer of a pass (the order-3
/// scratch lines carry `pad` extra samples a side). Same arithmetic as the resident route, so the
/// same tolerance against the CPU. Returns the number of slabs.
pub fn run_tiled(
    ctx: &GpuContext,
    vol: ArrayView3<f32>,
    shift: [f64; 3],
    p: &ShiftParams,
) -> Result<(Array3<f32>, usize)> {
    let (nz, ny, nx) = vol.dim();
    let shape = [nz, ny, nx];
    let plans = axis_plans(shape, shift, p);
    let limit = ctx.max_tile_bytes() as usize;
    // Bytes of the largest buffer per unit of slab thickness (a y row of z lines; a z plane).
    let pad = plans[0].pad;
    let row = nx * (nz + 2 * pad).max(nz) * 4;
    let plane = (nx * (ny + 2 * pad)).max(ny * (nx + 2 * pad)) * 4;
    let (ys, zs) = (limit / row, limit / plane);
    if ys == 0 || zs == 0 {
        return Err(Error::Gpu(format!(
            "shift: a slab one voxel thick of the {nz}x{ny}x{nx} volume needs {} bytes, over the \
             GPU tile limit of {limit} bytes (tiles are z- and y-slabs): use --backend cpu",
            row.max(plane)
        )));
    }
    let (ys, zs) = (ys.min(ny), zs.min(nz));
    let elems = (nz * ys * nx).max(zs * ny * nx);
    let bufs = ShiftBuffers::for_tiles(ctx, elems, shape.iter().sum())?;
    let src = ctx.tile_buffer("shift.tile_in", elems as u64 * 4)?;
    let dst = ctx.tile_buffer("shift.tile_out", elems as u64 * 4)?;
    let mut tiles = 0;
    let mut mid = Array3::<f32>::zeros((nz, ny, nx));
    let mut run = |block: ndarray::ArrayView3<f32>,
                   origin: [usize; 3],
                   axes: &[usize],
                   out: ndarray::ArrayViewMut3<f32>|
     -> Result<()> {
        let (a, b, c) = block.dim();
        let data: Vec<f32> = block.iter().copied().collect();
        ctx.upload(&src, &data);
        let mut rec = ctx.recorder();
        record_passes(
            ctx,
            &mut rec,
            &bufs,
            &src,
            &dst,
            [a, b, c],
            origin,
            axes,
            &plans,
            p,
        )?;
        rec.submit()?;
        let v = ctx.read::<f32>(&dst, data.len())?;
        let v = ArrayView3::from_shape((a, b, c), &v)
            .map_err(|e| Error::Gpu(format!("shift tile shape: {e}")))?;
        let mut out = out;
        out.assign(&v);
        tiles += 1;
        Ok(())
    };
    for y0 in (0..ny).step_by(ys) {
        let y1 = (y0 + ys).min(ny);
        run(
            vol.slice(s![.., y0..y1, ..]),
            [0, y0, 0],
            &[0],
            mid.slice_mut(s![.., y0..y1, ..]),
        )?;
    }
    let mut out = Array3::<f32>::zeros((nz, ny, nx));
    for z0 in (0..nz).step_by(zs) {
        let z1 = (z0 + zs).min(nz);
        run(
            mid.slice(s![z0..z1, .., ..]),
            [z0, 0, 0],
            &[1, 2],
            out.slice_mut(s![z0..z1, .., ..]),
        )?;
    }
    ctx.count_tiles(tiles, |s| &mut s.shift);
    Ok((out, tiles))
}
