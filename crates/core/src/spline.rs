//! scipy's spline interpolation set-up for a translation, shared by both backends' shift kernels.
//!
//! `NI_ZoomShift` (scipy's `ni_interpolation.c`) decides, per axis and once per shift, which input
//! samples and weights each output sample takes; a translation samples every line of an axis alike, so
//! one `AxisPlan` per axis serves the whole volume. The CPU twin and the GPU's host side both build
//! their taps from it, in f64.
//!
//! Also scipy's `grid-wrap` mode, which the shift stage does not offer: its taps, its periodic
//! prefilter and a host shift (`shift_grid_wrap`) for scikit-image's disambiguation
//! (`register::disambiguate`), run on the host for both backends.

use crate::boundary::{map_coordinate, map_coordinate_grid_wrap};
use crate::params::{BoundaryMode, ShiftParams};
use ndarray::{Array3, ArrayView3, Axis, Zip};

/// Cubic B-spline pole, `sqrt(3) - 2`.
pub const POLE: f64 = -0.267_949_192_431_122_7;
/// scipy pre-pads `nearest` (and `grid-constant`) by 12 samples before the spline prefilter.
pub const NEAREST_PAD: usize = 12;

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

impl AxisPlan {
    /// `NI_ZoomShift`'s set-up for scipy's `grid-wrap` mode (order 0, 1 or 3), which the shift stage
    /// does not offer: the coordinate wraps with period `n` (`map_coordinate_grid_wrap`), no padding,
    /// and taps past either end read the line periodically, as `grid-wrap` is also the spline mode.
    pub fn grid_wrap(n: usize, s: f64, order: usize) -> Self {
        assert!(
            matches!(order, 0 | 1 | 3),
            "grid-wrap plans take order 0, 1 or 3"
        );
        let taps = (0..n)
            .map(|k| {
                let cc = map_coordinate_grid_wrap(k as f64 - s, n);
                let start = if order & 1 == 1 {
                    cc.floor() as i64 - order as i64 / 2
                } else {
                    (cc + 0.5).floor() as i64 - order as i64 / 2
                };
                let mut idx = [0usize; 4];
                for (h, slot) in idx.iter_mut().enumerate().take(order + 1) {
                    let i = start + h as i64;
                    *slot = if i < 0 || i >= n as i64 {
                        map_coordinate_grid_wrap(i as f64, n) as i64 as usize
                    } else {
                        i as usize
                    };
                }
                Some((idx, spline_weights(cc, order)))
            })
            .collect();
        AxisPlan {
            order,
            pad: 0,
            taps,
        }
    }
}

/// The cubic B-spline prefilter of one line for `grid-wrap` (`apply_filter` in ni_splines.c with
/// `_init_causal_wrap` / `_init_anticausal_wrap`): the line is one period of a periodic signal, and
/// both initialisations sum over the whole line as the C code does.
pub fn prefilter_grid_wrap(c: &mut [f64]) {
    let n = c.len();
    if n <= 1 {
        return;
    }
    let z = POLE;
    let gain = (1.0 - z) * (1.0 - 1.0 / z);
    c.iter_mut().for_each(|v| *v *= gain);
    let mut z_i = z;
    for i in 1..n {
        c[0] += z_i * c[n - i];
        z_i *= z;
    }
    c[0] /= 1.0 - z_i;
    for i in 1..n {
        c[i] += z * c[i - 1];
    }
    let mut z_i = z;
    for i in 0..n - 1 {
        c[n - 1] += z_i * c[i];
        z_i *= z;
    }
    c[n - 1] *= z / (z_i - 1.0);
    for i in (0..n - 1).rev() {
        c[i] = z * (c[i + 1] - c[i]);
    }
}

/// `scipy.ndimage.shift(vol, shift, order=order, mode='grid-wrap')` (prefilter on), as scikit-image's
/// disambiguation calls it: the separable passes (prefilter, then the taps) along z, y and x in f64,
/// rounded to f32 once at the end. Both backends' runs call this one function on the host, so their
/// disambiguated shifts cannot differ.
pub fn shift_grid_wrap(vol: ArrayView3<f32>, shift: [f64; 3], order: usize) -> Array3<f32> {
    let dim = vol.dim();
    let n = [dim.0, dim.1, dim.2];
    let mut work = vol.mapv(f64::from);
    for a in 0..3 {
        let plan = AxisPlan::grid_wrap(n[a], shift[a], order);
        Zip::from(work.lanes_mut(Axis(a))).par_for_each(|mut lane| {
            let mut line: Vec<f64> = lane.iter().copied().collect();
            if order > 1 {
                prefilter_grid_wrap(&mut line);
            }
            for (k, out) in lane.iter_mut().enumerate() {
                let (idx, w) = plan.taps[k].expect("grid-wrap samples every output");
                *out = match order {
                    3 => {
                        line[idx[0]] * w[0]
                            + line[idx[1]] * w[1]
                            + line[idx[2]] * w[2]
                            + line[idx[3]] * w[3]
                    }
                    1 => line[idx[0]] * w[0] + line[idx[1]] * w[1],
                    _ => line[idx[0]],
                };
            }
        });
    }
    work.mapv(|v| v as f32)
}
