//! Sub-voxel translation by spline interpolation on the CPU; CPU twin of `shaders/shift.wgsl`.
//!
//! Reproduces `scipy.ndimage.shift(vol, s, order, mode, cval)` (prefilter on): the cubic B-spline
//! prefilter of `ni_splines.c` and the sampling of `NI_ZoomShift` in `ni_interpolation.c`. A
//! translation samples every line along an axis at the same fractional offset, so the 3-D tensor-product
//! interpolation factors into three 1-D passes (prefilter + interpolate per axis), done in f64 as scipy
//! does and rounded to f32 once at the end. Tolerance against scipy: 1e-5 relative to the input's range
//! (the passes sum in a different order than scipy's 64-tap loop).

use crate::simd::{self, Level};
use gpuprep_core::params::{BoundaryMode, ShiftParams};
use gpuprep_core::spline::AxisPlan;
/// The cubic B-spline prefilter lives with the spline set-up, shared with the GPU's host side.
pub use gpuprep_core::spline::{prefilter_line, prefilter_rows};
use ndarray::{Array2, Array3, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

/// Lines along z are processed this many at a time (one row of `prefilter_rows`).
const ROW_BLOCK: usize = 256;
/// Lines along y and x, within a plane, this many at a time: 32 lines of 256 f64 are 64 KiB.
const PLANE_BLOCK: usize = 32;

/// Padded copy of the lines an axis pass filters, prefiltered: row `i` of `buf` (width `w`) is sample
/// `i` of the padded lines, `fill(j, row)` writes input sample `j` of the `w` lines into `row`.
#[inline(always)]
fn load_and_prefilter(
    buf: &mut Vec<f64>,
    plan: &AxisPlan,
    n: usize,
    w: usize,
    mode: BoundaryMode,
    fill: impl Fn(usize, &mut [f64]),
) {
    let len = n + 2 * plan.pad;
    buf.resize(len * w, 0.0);
    for i in 0..len {
        let j = i.saturating_sub(plan.pad).min(n - 1);
        fill(j, &mut buf[i * w..(i + 1) * w]);
    }
    if plan.order > 1 {
        prefilter_rows(buf, w, mode);
    }
}

/// Output sample `k` of the `w` lines held in `buf`: the 1-4 taps of `plan`, as rows. Values are
/// masked to cval after all passes where scipy writes it; the value computed for those samples is unused.
#[inline(always)]
fn sample_row(buf: &[f64], plan: &AxisPlan, w: usize, k: usize, dst: &mut [f64]) {
    let row = |i: usize| &buf[i * w..(i + 1) * w];
    match (&plan.taps[k], plan.order) {
        (None, _) => dst.fill(0.0),
        // One sweep per output row; the sums associate left to right as scipy's tap loop does.
        (Some((idx, wt)), 3) => {
            let (r0, r1, r2, r3) = (row(idx[0]), row(idx[1]), row(idx[2]), row(idx[3]));
            for i in 0..w {
                dst[i] = r0[i] * wt[0] + r1[i] * wt[1] + r2[i] * wt[2] + r3[i] * wt[3];
            }
        }
        (Some((idx, wt)), 1) => {
            let (r0, r1) = (row(idx[0]), row(idx[1]));
            for i in 0..w {
                dst[i] = r0[i] * wt[0] + r1[i] * wt[1];
            }
        }
        (Some((idx, wt)), _) => {
            dst.iter_mut()
                .zip(row(idx[0]))
                .for_each(|(d, &r)| *d = r * wt[0]);
        }
    }
}

/// The three separable passes, prefilter then resample along each axis, in f64 as scipy: z over
/// the whole volume (lines along z, `ROW_BLOCK` at a time), then y and x one z-plane at a time, while
/// the plane is in cache, rounding to f32 only on the way out.
pub fn shift3d(input: ArrayView3<f32>, shift: [f64; 3], p: &ShiftParams) -> Array3<f32> {
    shift3d_at(simd::level(), input, shift, p)
}

/// `shift3d` written into `out`, which must have `input`'s shape and rows along x contiguous
/// (checked: a panic names both, as a caller's bug; `CpuBackend::shift_into` checks them first).
pub fn shift3d_into(
    input: ArrayView3<f32>,
    shift: [f64; 3],
    p: &ShiftParams,
    out: ArrayViewMut3<f32>,
) {
    shift3d_into_at(simd::level(), input, shift, p, out)
}

/// `shift3d` with its row loops at `level`.
pub(crate) fn shift3d_at(
    level: Level,
    input: ArrayView3<f32>,
    shift: [f64; 3],
    p: &ShiftParams,
) -> Array3<f32> {
    let mut out = Array3::<f32>::zeros(input.dim());
    shift3d_into_at(level, input, shift, p, out.view_mut());
    out
}

/// Whether `shift3d_into` can write into `out`: `input`'s shape, each z-plane contiguous.
pub fn writable_in_place(input: &ArrayView3<f32>, out: &ArrayViewMut3<f32>) -> bool {
    input.dim() == out.dim() && (out.is_empty() || out.index_axis(Axis(0), 0).as_slice().is_some())
}

fn shift3d_into_at(
    level: Level,
    input: ArrayView3<f32>,
    shift: [f64; 3],
    p: &ShiftParams,
    mut out: ArrayViewMut3<f32>,
) {
    assert!(
        writable_in_place(&input, &out),
        "shift3d_into: an output of shape {:?} (strides {:?}) for a volume of shape {:?}",
        out.dim(),
        out.strides(),
        input.dim()
    );
    let (nz, ny, nx) = input.dim();
    let plans: [AxisPlan; 3] = std::array::from_fn(|a| AxisPlan::new([nz, ny, nx][a], shift[a], p));
    let input = input.as_standard_layout();
    let src = input.as_slice().expect("standard layout");
    let plane_len = ny * nx;

    // Pass 1, z: columns of the (nz, ny * nx) matrix, into a buffer kept for the next volume (the pages
    // of a fresh 8-bytes-per-voxel allocation cost more to fault in than the pass itself).
    let mut after_z = AFTER_Z.with(|b| b.take());
    after_z.resize(nz * plane_len, 0.0);
    let mut after_z = Array2::from_shape_vec((nz, plane_len), after_z).expect("sized above");
    after_z
        .axis_chunks_iter_mut(Axis(1), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each_init(Vec::new, |buf, (c, dst)| {
            let (c0, plan, mode) = (c * ROW_BLOCK, &plans[0], p.mode);
            simd::dispatch!(level, z_pass, (buf: &mut Vec<f64>, src: &[f32], c0: usize, plane_len: usize, plan: &AxisPlan, mode: BoundaryMode, dst: ArrayViewMut2<f64>))
        });

    // Passes 2 and 3, y then x, per plane, in blocks of lines small enough for L2.
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(after_z.axis_iter(Axis(0)).into_par_iter())
        .enumerate()
        .for_each_init(
            || {
                let (buf, after_y, col) =
                    (Vec::new(), vec![0.0; plane_len], vec![0.0; PLANE_BLOCK]);
                (buf, after_y, col, Vec::new(), Vec::new())
            },
            |(buf, after_y, col, tile_in, tile_out), (z, (mut dst, plane))| {
                let plane = plane.as_slice().expect("rows are contiguous");
                let dst = dst.as_slice_mut().expect("planes are contiguous (checked above)");
                let (work, plans, mode) = ((buf, after_y, col, tile_in, tile_out), &plans, p.mode);
                simd::dispatch!(level, yx_pass, (work: PlaneWork<'_>, plane: &[f64], dst: &mut [f32], plans: &[AxisPlan; 3], mode: BoundaryMode));
                if p.mode == BoundaryMode::Constant {
                    mask_constant(dst, z, plans, nx, p.cval);
                }
            },
        );
    AFTER_Z.with(|b| b.replace(after_z.into_raw_vec_and_offset().0));
}

/// Per-thread buffers of the y and x passes: the prefiltered lines, the plane after y, one
/// output column, the x pass's tiles in and out.
type PlaneWork<'a> = (
    &'a mut Vec<f64>,
    &'a mut Vec<f64>,
    &'a mut Vec<f64>,
    &'a mut Vec<f64>,
    &'a mut Vec<f32>,
);

/// Pass 1 on one block of lines along z: the columns `c0..` of the (nz, ny·nx) input into `dst`.
#[inline(always)]
fn z_pass(
    buf: &mut Vec<f64>,
    src: &[f32],
    c0: usize,
    plane_len: usize,
    plan: &AxisPlan,
    mode: BoundaryMode,
    mut dst: ArrayViewMut2<f64>,
) {
    let (nz, w) = dst.dim();
    load_and_prefilter(buf, plan, nz, w, mode, |j, r| {
        let s = j * plane_len + c0;
        r.iter_mut()
            .zip(&src[s..s + w])
            .for_each(|(a, &b)| *a = b as f64)
    });
    for k in 0..nz {
        let mut row = dst.row_mut(k);
        sample_row(
            buf,
            plan,
            w,
            k,
            row.as_slice_mut().expect("rows are contiguous"),
        );
    }
}

/// Passes 2 and 3 on one plane after pass 1, into `dst` (f32).
#[inline(always)]
fn yx_pass(
    (buf, after_y, col, tile_in, tile_out): PlaneWork<'_>,
    plane: &[f64],
    dst: &mut [f32],
    plans: &[AxisPlan; 3],
    mode: BoundaryMode,
) {
    let (ny, nx) = (plans[1].taps.len(), plans[2].taps.len());
    // y: the plane's rows are the rows of its lines along y; PLANE_BLOCK columns at a time.
    for x0 in (0..nx).step_by(PLANE_BLOCK) {
        let w = PLANE_BLOCK.min(nx - x0);
        load_and_prefilter(buf, &plans[1], ny, w, mode, |j, r| {
            r.copy_from_slice(&plane[j * nx + x0..j * nx + x0 + w])
        });
        for k in 0..ny {
            let s = k * nx + x0;
            sample_row(buf, &plans[1], w, k, &mut after_y[s..s + w]);
        }
    }
    // x: PLANE_BLOCK lines at a time, transposed into rows and back on the way out,
    // through tiles whose padded row stride keeps power-of-two widths off one cache set.
    let stride = nx + 8;
    for y0 in (0..ny).step_by(PLANE_BLOCK) {
        let w = PLANE_BLOCK.min(ny - y0);
        tile_in.resize(w * stride, 0.0);
        tile_out.resize(w * stride, 0.0);
        for c in 0..w {
            let s = (y0 + c) * nx;
            tile_in[c * stride..c * stride + nx].copy_from_slice(&after_y[s..s + nx]);
        }
        load_and_prefilter(buf, &plans[2], nx, w, mode, |j, r| {
            for (c, v) in r.iter_mut().enumerate() {
                *v = tile_in[c * stride + j];
            }
        });
        for k in 0..nx {
            sample_row(buf, &plans[2], w, k, &mut col[..w]);
            for (c, &v) in col[..w].iter().enumerate() {
                tile_out[c * stride + k] = v as f32;
            }
        }
        for c in 0..w {
            let s = (y0 + c) * nx;
            dst[s..s + nx].copy_from_slice(&tile_out[c * stride..c * stride + nx]);
        }
    }
}

thread_local! {
    /// `shift3d`'s f64 intermediate, reused across calls on the same thread.
    static AFTER_Z: std::cell::Cell<Vec<f64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Where scipy writes cval (constant mode, a sample outside the input along any axis), on one plane.
fn mask_constant(dst: &mut [f32], z: usize, plans: &[AxisPlan; 3], nx: usize, cval: f32) {
    if plans[0].taps[z].is_none() {
        dst.fill(cval);
        return;
    }
    for (y, row) in dst.chunks_mut(nx).enumerate() {
        if plans[1].taps[y].is_none() {
            row.fill(cval);
            continue;
        }
        for (v, tap) in row.iter_mut().zip(&plans[2].taps) {
            if tap.is_none() {
                *v = cval;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vector_level_gives_the_scalar_bits() {
        let v = Array3::from_shape_fn((5, 9, 37), |(z, y, x)| {
            ((z * 31 + y * 17 + x * 7) % 23) as f32 * 0.41 - 3.0
        });
        for order in [0, 1, 3] {
            for mode in [
                BoundaryMode::Constant,
                BoundaryMode::Nearest,
                BoundaryMode::Reflect,
                BoundaryMode::Mirror,
                BoundaryMode::Wrap,
            ] {
                let p = ShiftParams {
                    order,
                    mode,
                    cval: 0.25,
                };
                let want = shift3d_at(Level::Scalar, v.view(), [0.4, -1.3, 2.7], &p);
                for level in simd::available() {
                    let got = shift3d_at(level, v.view(), [0.4, -1.3, 2.7], &p);
                    assert!(
                        got.iter()
                            .zip(want.iter())
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "order {order} {mode:?} {level:?}"
                    );
                }
            }
        }
    }
}
