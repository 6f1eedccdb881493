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
    let n = c.len();
    if n <= 1 {
        return;
    }
    let z = POLE;
    let gain = (1.0 - z) * (1.0 - 1.0 / z);
    c.iter_mut().for_each(|v| *v *= gain);
    let reflect_init = matches!(mode, BoundaryMode::Nearest | BoundaryMode::Reflect);
    // Causal initialisation.
    if reflect_init {
        let z_n = z.powi(n as i32);
        let c0 = c[0];
        let mut z_i = z;
        c[0] += z_n * c[n - 1];
        for i in 1..n {
            c[0] += z_i * (c[i] + z_n * c[n - 1 - i]);
            z_i *= z;
        }
        c[0] *= z / (1.0 - z_n * z_n);
        c[0] += c0;
    } else {
        let z_n_1 = z.powi(n as i32 - 1);
        let mut z_i = z;
        c[0] += z_n_1 * c[n - 1];
        for i in 1..n - 1 {
            c[0] += z_i * (c[i] + z_n_1 * c[n - 1 - i]);
            z_i *= z;
        }
        c[0] /= 1.0 - z_n_1 * z_n_1;
    }
    for i in 1..n {
        c[i] += z * c[i - 1];
    }
    // Anticausal initialisation.
    if reflect_init {
        c[n - 1] *= z / (z - 1.0);
    } else {
        c[n - 1] = (z * c[n - 2] + c[n - 1]) * z / (z * z - 1.0);
    }
    for i in (0..n - 1).rev() {
        c[i] = z * (c[i + 1] - c[i]);
    }
}

/// One axis pass: prefilter (order 3) and resample every line along `axis`.
fn shift_axis(data: &Array3<f64>, axis: usize, plan: &AxisPlan, mode: BoundaryMode) -> Array3<f64> {
    let n = data.shape()[axis];
    let mut out = Array3::<f64>::zeros(data.raw_dim());
    let len = n + 2 * plan.pad;
    Zip::from(data.lanes(Axis(axis)))
        .and(out.lanes_mut(Axis(axis)))
        .par_for_each(|src, mut dst| {
            // Small per-line buffer: lines are at most a few thousand samples.
            let mut line = Vec::with_capacity(len);
            let first = src[0];
            let last = src[n - 1];
            line.extend(std::iter::repeat_n(first, plan.pad));
            line.extend(src.iter().copied());
            line.extend(std::iter::repeat_n(last, plan.pad));
            if plan.order > 1 {
                prefilter_line(&mut line, mode);
            }
            for (d, tap) in dst.iter_mut().zip(&plan.taps) {
                *d = match tap {
                    Some((idx, w)) => (0..=plan.order).map(|h| line[idx[h]] * w[h]).sum(),
                    // Masked to cval after all passes; the value here is never used.
                    None => 0.0,
                };
            }
        });
    out
}

pub fn shift3d(input: ArrayView3<f32>, shift: [f64; 3], p: &ShiftParams) -> Array3<f32> {
    let dims = [input.dim().0, input.dim().1, input.dim().2];
    let plans: Vec<AxisPlan> = (0..3)
        .map(|a| AxisPlan::new(dims[a], shift[a], p))
        .collect();
    let mut data = input.mapv(|v| v as f64);
    for axis in 0..3 {
        data = shift_axis(&data, axis, &plans[axis], p.mode);
    }
    let mut out = data.mapv(|v| v as f32);
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
