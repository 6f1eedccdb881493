//! Host side of `shaders/shift.wgsl` (CPU twin: `crates/cpu/src/shift.rs`). Each axis's pass is a
//! linear operator on its lines, built in f64 from `gpuprep_core::spline`: the taps of `AxisPlan`
//! (NI_ZoomShift's set-up loop) composed with the CPU twin's prefilter (`FilterRows`, cached per line
//! length and mode); the GPU applies its rows of weights, one dispatch per axis.
//! Volumes over the tile limit are shifted in slabs: the translation is separable, and each pass
//! needs only whole lines along its own axis (`run_tiled`).

use super::device::{GpuContext, Recorder};
use super::shaders::SHIFT_AXIS;
use bytemuck::{Pod, Zeroable};
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::{BoundaryMode, ShiftParams};
use gpuprep_core::spline::{AxisOperator, AxisPlan, FilterRows};
use ndarray::{s, Array3, ArrayView3};
use std::cell::RefCell;

/// Uniforms of `shift.wgsl`: the layout of its `struct Params` (checked by `tests/shaders.rs`,
/// `uniform_structs_match_wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ShiftUniform {
    pub n: u32,
    pub stride: u32,
    pub width: u32,
    pub total: u32,
    pub tap_offset: u32,
    pub final_pass: u32,
    pub use_mask: u32,
    pub nz: u32,
    pub ny: u32,
    pub nx: u32,
    pub cval: f32,
    pub _pad0: u32,
}
const _: () = assert!(std::mem::size_of::<ShiftUniform>() == 48);

/// One weight of an axis operator's row: the layout of `struct Tap` in shaders/shift.wgsl (checked
/// by `tests/shaders.rs`, `uniform_structs_match_wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Tap {
    pub idx: u32,
    pub w: f32,
}
const _: () = assert!(std::mem::size_of::<Tap>() == 8);

/// Device buffers a shift needs besides its input and output; reused across timepoints.
pub struct ShiftBuffers {
    pub shape: [usize; 3],
    pub tmp: [wgpu::Buffer; 2],
    /// The three axes' operator rows (`Tap`s), grown on demand: their width depends on the mode and
    /// order (about 38 for order 3).
    taps: RefCell<Option<wgpu::Buffer>>,
    /// Buffers of the tiled route: the taps come from the context's tile pool (reused across calls
    /// and timepoints) instead of this struct.
    tiled: bool,
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
            taps: RefCell::new(None),
            tiled: false,
            outside: ctx.storage("shift.outside", ntaps * 4)?,
        })
    }

    /// Buffers for tiles of up to `elems` voxels and `ntaps` samples along the three axes together
    /// (`shape` is then unused).
    fn for_tiles(ctx: &GpuContext, elems: usize, ntaps: usize) -> Result<Self> {
        Ok(ShiftBuffers {
            shape: [0; 3],
            tmp: [
                ctx.tile_buffer("shift.tile_tmp0", elems as u64 * 4)?,
                ctx.tile_buffer("shift.tile_tmp1", elems as u64 * 4)?,
            ],
            taps: RefCell::new(None),
            tiled: true,
            outside: ctx.pooled("shift.tile_outside", ntaps as u64 * 4)?,
        })
    }

    /// A buffer of at least `n` taps.
    fn taps(&self, ctx: &GpuContext, n: usize) -> Result<wgpu::Buffer> {
        let bytes = (n * std::mem::size_of::<Tap>()) as u64;
        if self.tiled {
            return ctx.pooled("shift.tile_taps", bytes);
        }
        let mut t = self.taps.borrow_mut();
        if let Some(b) = t.as_ref() {
            if b.size() >= bytes {
                return Ok(b.clone());
            }
        }
        let b = ctx.storage("shift.taps", bytes)?;
        *t = Some(b.clone());
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

/// Largest buffer (bytes) the resident route needs for `shape`: the volume (the operator rows are
/// a few hundred KiB at most).
pub fn resident_bytes(shape: [usize; 3]) -> u64 {
    shape.iter().product::<usize>() as u64 * 4
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
    let mut outside = Vec::with_capacity(shape.iter().sum());
    let mut ops: [Option<AxisOperator>; 3] = [None, None, None];
    for (a, plan) in plans.iter().enumerate() {
        let block = origin[a]..origin[a] + shape[a];
        // The mask reads every axis's outside flags at the block's global position.
        outside.extend(plan.taps[block.clone()].iter().map(|t| t.is_none() as u32));
        if axes.contains(&a) {
            debug_assert_eq!(
                block,
                0..plan.taps.len(),
                "axis {a} must be whole in the block"
            );
            let filter = FilterRows::cached(shape[a], plan.pad, plan.order, p.mode);
            ops[a] = Some(plan.operator(&filter));
        }
    }
    let mut taps = Vec::new();
    let mut offsets = [0usize; 3];
    for (a, op) in ops.iter().enumerate() {
        offsets[a] = taps.len();
        if let Some(op) = op {
            // Weight-major (all outputs' first weights, then their second, ...): along x the
            // invocations of a warp are neighbouring outputs, which then read neighbouring taps;
            // along z and y they share one output and read one tap.
            let n = op.outside.len();
            taps.extend((0..op.width).flat_map(|k| {
                (0..n).map(move |o| {
                    let (idx, w) = op.taps[o * op.width + k];
                    Tap { idx, w: w as f32 }
                })
            }));
        }
    }
    let taps_buf = bufs.taps(ctx, taps.len())?;
    ctx.write(&taps_buf, 0, bytemuck::cast_slice(&taps));
    ctx.write(&bufs.outside, 0, bytemuck::cast_slice(&outside));
    let kernel = ctx.pipeline(&SHIFT_AXIS)?;
    let strides = [shape[1] * shape[2], shape[2], 1];
    let mut cur = src;
    for (i, &axis) in axes.iter().enumerate() {
        let op = ops[axis]
            .as_ref()
            .expect("built above for every axis passed");
        let u = ShiftUniform {
            n: shape[axis] as u32,
            stride: strides[axis] as u32,
            width: op.width as u32,
            total: total as u32,
            tap_offset: offsets[axis] as u32,
            final_pass: (axis == 2) as u32,
            use_mask: (p.mode == BoundaryMode::Constant) as u32,
            nz: shape[0] as u32,
            ny: shape[1] as u32,
            nx: shape[2] as u32,
            cval: p.cval,
            _pad0: 0,
        };
        let out = if i + 1 == axes.len() {
            dst
        } else {
            &bufs.tmp[i % 2]
        };
        rec.dispatch(
            &kernel,
            &u,
            &[cur, &taps_buf, &bufs.outside, out],
            total as u64,
        );
        cur = out;
    }
    Ok(())
}

/// `record` for a volume over the tile limit: the z pass on y-slabs (whole z lines), then the y and
/// x passes on z-slabs, each slab uploaded, shifted and read back; the intermediate volume stays on
/// the host. Slabs are as thick as the tile limit allows. Same arithmetic as the resident route, so the
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
    let (row, plane) = (nx * nz * 4, ny * nx * 4);
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
