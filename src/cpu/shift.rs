//! Sub-voxel translation by spline interpolation on the CPU; CPU twin of `shaders/shift.wgsl`.
//!
//! Reproduces `scipy.ndimage.shift(vol, s, order, mode, cval)` (prefilter on): the cubic B-spline
//! prefilter of `ni_splines.c` and the sampling of `NI_ZoomShift` in `ni_interpolation.c`. A
//! translation samples every line along an axis at the same fractional offset, so the 3-D tensor-product
//! interpolation factors into three 1-D passes (prefilter + interpolate per axis), done in f64 as scipy
//! does and rounded to f32 once at the end. Tolerance against scipy: 1e-5 relative to the input's range
//! (the passes sum in a different order than scipy's 64-tap loop).

use super::boundary::map_coordinate;
use crate::params::{BoundaryMode, ShiftParams};
use ndarray::{Array3, ArrayView3, Axis, Zip};
use rayon::prelude::*;

/// Cubic B-spline pole, `sqrt(3) - 2`.
const POLE: f64 = -0.267_949_192_431_122_7;
/// scipy pre-pads `nearest` (and `grid-constant`) by 12 samples before the spline prefilter.
const NEAREST_PAD: usize = 12;

/// How one output line samples one input line along an axis: identical for every line.
#[derive(Debug, Clone)]
pub struct AxisPlan {
    pub order: usize,
    /// Samples of padding added to each side of the input line before the prefilter.
    pub pad: usize,
    /// Per output index: `None` when scipy writes `cval` (constant mode, outside the input).
    pub taps: Vec<Option<([usize; 4], [f64; 4])>>,
}

/// scipy's `get_spline_interpolation_weights` for orders 1 and 3 (order 0 takes the nearest sample).
fn spline_weights(x: f64, order: usize) -> [f64; 4] {
    let mut w = [0.0; 4];
    let x = x - if order & 1 == 1 {
        x.floor()
    } else {
        (x + 0.5).floor()
    };
    match order {
        0 => w[0] = 1.0,
        1 => {
            w[0] = 1.0 - x;
            w[1] = x;
            w[1] = 1.0 - w[0];
        }
        3 => {
            let y = x;
            let z = 1.0 - x;
            w[1] = (y * y * (y - 2.0) * 3.0 + 4.0) / 6.0;
            w[2] = (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0;
            w[0] = z * z * z / 6.0;
            w[3] = 1.0 - w[0] - w[1] - w[2];
        }
        _ => unreachable!("order validated by ShiftParams"),
    }
    w
}

impl AxisPlan {
    /// Mirrors the per-axis set-up loop of `NI_ZoomShift` for output length `n`, shift `s`.
    pub fn new(n: usize, s: f64, p: &ShiftParams) -> Self {
        let order = p.order as usize;
        let prefilter = order > 1;
        let pad = if prefilter && p.mode == BoundaryMode::Nearest {
            NEAREST_PAD
        } else {
            0
        };
        let len = n + 2 * pad;
        // `_get_spline_boundary_mode`: constant and wrap read spline taps with mirror extension.
        let spline_mode = match p.mode {
            BoundaryMode::Constant | BoundaryMode::Wrap => BoundaryMode::Mirror,
            m => m,
        };
        let taps = (0..n)
            .map(|k| {
                let mut cc = k as f64 - s + pad as f64;
                if p.mode != BoundaryMode::Nearest {
                    cc = map_coordinate(cc, len, p.mode);
                }
                if !(cc > -1.0 || p.mode == BoundaryMode::Nearest) {
                    return None;
                }
                let start = if order & 1 == 1 {
                    cc.floor() as i64 - order as i64 / 2
                } else {
                    (cc + 0.5).floor() as i64 - order as i64 / 2
                };
                let mut idx = [0usize; 4];
                for (h, slot) in idx.iter_mut().enumerate().take(order + 1) {
                    let i = start + h as i64;
                    *slot = if i < 0 || i >= len as i64 {
                        map_coordinate(i as f64, len, spline_mode) as i64 as usize
                    } else {
                        i as usize
                    };
                }
                Some((idx, spline_weights(cc, order)))
            })
            .collect();
        AxisPlan { order, pad, taps }
    }
}

/// In-place cubic B-spline prefilter of one line (`apply_filter` in ni_splines.c, one pole).
pub fn prefilter_line(c: &mut [f64], mode: BoundaryMode) {
    prefilter_rows(c, 1, mode);
}

/// `prefilter_line` applied to `c.len() / w` lines at once, stored as rows of width `w`: row `i`
/// holds sample `i` of every line. Lines along the slow axes are filtered this way, so each step of
/// the recursion is a contiguous (vectorisable) row operation instead of a strided walk.
pub fn prefilter_rows(c: &mut [f64], w: usize, mode: BoundaryMode) {
    let n = c.len() / w;
    if n <= 1 {
        return;
    }
    let z = POLE;
    let gain = (1.0 - z) * (1.0 - 1.0 / z);
    c.iter_mut().for_each(|v| *v *= gain);
    let reflect_init = matches!(mode, BoundaryMode::Nearest | BoundaryMode::Reflect);
    let (first, rest) = c.split_at_mut(w);
    // Causal initialisation of row 0, accumulated in place as ni_splines.c does.
    if reflect_init {
        let z_n = z.powi(n as i32);
        let c0 = first.to_vec();
        let last = &rest[(n - 2) * w..];
        first.iter_mut().zip(last).for_each(|(a, &l)| *a += z_n * l);
        let mut z_i = z;
        for i in 1..n {
            let row = &rest[(i - 1) * w..i * w];
            if i == n - 1 {
                // c[n - 1 - i] is c[0] itself, already updated: the C code reads the running sum.
                first
                    .iter_mut()
                    .zip(row)
                    .for_each(|(a, &r)| *a += z_i * (r + z_n * *a));
            } else {
                let mirror = &rest[(n - 2 - i) * w..(n - 1 - i) * w];
                first
                    .iter_mut()
                    .zip(row)
                    .zip(mirror)
                    .for_each(|((a, &r), &m)| *a += z_i * (r + z_n * m));
            }
            z_i *= z;
        }
        let f = z / (1.0 - z_n * z_n);
        first.iter_mut().zip(&c0).for_each(|(a, &o)| {
            *a *= f;
            *a += o;
        });
    } else {
        let z_n_1 = z.powi(n as i32 - 1);
        let last = &rest[(n - 2) * w..];
        first
            .iter_mut()
            .zip(last)
            .for_each(|(a, &l)| *a += z_n_1 * l);
        let mut z_i = z;
        for i in 1..n - 1 {
            let row = &rest[(i - 1) * w..i * w];
            let mirror = &rest[(n - 2 - i) * w..(n - 1 - i) * w];
            first
                .iter_mut()
                .zip(row)
                .zip(mirror)
                .for_each(|((a, &r), &m)| *a += z_i * (r + z_n_1 * m));
            z_i *= z;
        }
        let d = 1.0 - z_n_1 * z_n_1;
        first.iter_mut().for_each(|a| *a /= d);
    }
    for i in 1..n {
        let (done, todo) = c.split_at_mut(i * w);
        let prev = &done[(i - 1) * w..];
        todo[..w]
            .iter_mut()
            .zip(prev)
            .for_each(|(a, &p)| *a += z * p);
    }
    // Anticausal initialisation.
    let (head, last) = c.split_at_mut((n - 1) * w);
    if reflect_init {
        last.iter_mut().for_each(|a| *a *= z / (z - 1.0));
    } else {
        let before = &head[(n - 2) * w..];
        last.iter_mut()
            .zip(before)
            .for_each(|(a, &b)| *a = (z * b + *a) * z / (z * z - 1.0));
    }
    for i in (0..n - 1).rev() {
        let (todo, done) = c.split_at_mut((i + 1) * w);
        let next = &done[..w];
        todo[i * w..]
            .iter_mut()
            .zip(next)
            .for_each(|(a, &nx)| *a = z * (nx - *a));
    }
}

/// Lines along a slow axis are processed this many at a time (one row of `prefilter_rows`).
const ROW_BLOCK: usize = 256;

/// One axis pass: prefilter (order 3) and resample every line along `axis`. Values are masked to
/// cval after all passes where scipy writes it; the value computed for those samples is unused.
fn shift_axis(data: &Array3<f64>, axis: usize, plan: &AxisPlan, mode: BoundaryMode) -> Array3<f64> {
    let dims = data.shape().to_vec();
    let n = dims[axis];
    let len = n + 2 * plan.pad;
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let src = data.as_slice().expect("standard layout");
    let mut out = Array3::<f64>::zeros(data.raw_dim());
    // Rows of width w: row i is sample i (of the padded line) of w neighbouring lines.
    let filter_and_sample = |buf: &mut Vec<f64>, w: usize, fill: &dyn Fn(usize, &mut [f64])| {
        buf.resize(len * w, 0.0);
        for i in 0..len {
            let j = i.saturating_sub(plan.pad).min(n - 1);
            fill(j, &mut buf[i * w..(i + 1) * w]);
        }
        if plan.order > 1 {
            prefilter_rows(buf, w, mode);
        }
    };
    let sample = |buf: &[f64], w: usize, k: usize, dst: &mut [f64]| {
        dst.fill(0.0);
        if let Some((idx, wt)) = &plan.taps[k] {
            for h in 0..=plan.order {
                let row = &buf[idx[h] * w..(idx[h] + 1) * w];
                dst.iter_mut().zip(row).for_each(|(d, &r)| *d += r * wt[h]);
            }
        }
    };
    if inner == 1 {
        // Contiguous lines: ROW_BLOCK lines at a time, transposed into rows on the way in and out.
        out.as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(ROW_BLOCK * n)
            .zip(src.par_chunks(ROW_BLOCK * n))
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(buf, row), (dst, lines)| {
                    let w = lines.len() / n;
                    filter_and_sample(buf, w, &|j, r| {
                        r.iter_mut()
                            .zip(lines[j..].iter().step_by(n))
                            .for_each(|(a, &b)| *a = b)
                    });
                    row.resize(w, 0.0);
                    for k in 0..n {
                        sample(buf, w, k, row);
                        dst[k..]
                            .iter_mut()
                            .step_by(n)
                            .zip(row.iter())
                            .for_each(|(d, &v)| *d = v);
                    }
                },
            );
        return out;
    }
    let mut out3 = out
        .view_mut()
        .into_shape_with_order((outer, n, inner))
        .expect("contiguous");
    out3.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(o, mut plane)| {
            let base = o * n * inner;
            plane
                .axis_chunks_iter_mut(Axis(1), ROW_BLOCK)
                .into_par_iter()
                .enumerate()
                .for_each_init(Vec::new, |buf, (c, mut dst)| {
                    let x0 = c * ROW_BLOCK;
                    let w = dst.shape()[1];
                    filter_and_sample(buf, w, &|j, row| {
                        let s = base + j * inner + x0;
                        row.copy_from_slice(&src[s..s + w]);
                    });
                    for k in 0..n {
                        let mut drow = dst.row_mut(k);
                        sample(buf, w, k, drow.as_slice_mut().expect("rows are contiguous"));
                    }
                });
        });
    out
}

pub fn shift3d(input: ArrayView3<f32>, shift: [f64; 3], p: &ShiftParams) -> Array3<f32> {
    let dims = [input.dim().0, input.dim().1, input.dim().2];
    let plans: Vec<AxisPlan> = (0..3)
        .map(|a| AxisPlan::new(dims[a], shift[a], p))
        .collect();
    let mut data = Array3::<f64>::zeros(input.raw_dim());
    Zip::from(&mut data)
        .and(&input)
        .par_for_each(|d, &v| *d = v as f64);
    for (axis, plan) in plans.iter().enumerate() {
        data = shift_axis(&data, axis, plan, p.mode);
    }
    let mut out = Array3::<f32>::zeros(data.raw_dim());
    Zip::from(&mut out)
        .and(&data)
        .par_for_each(|o, &v| *o = v as f32);
    if p.mode == BoundaryMode::Constant {
        let outside = |a: usize, i: usize| plans[a].taps[i].is_none();
        Zip::indexed(&mut out).par_for_each(|(z, y, x), v| {
            if outside(0, z) || outside(1, y) || outside(2, x) {
                *v = p.cval;
            }
        });
    }
    out
}
