//! scipy's spline interpolation set-up for a translation, shared by both backends' shift kernels.
//!
//! `NI_ZoomShift` (scipy's `ni_interpolation.c`) decides, per axis and once per shift, which input
//! samples and weights each output sample takes; a translation samples every line of an axis alike, so
//! one `AxisPlan` per axis serves the whole volume. The CPU twin and the GPU's host side both build
//! their taps from it, in f64.

use crate::boundary::map_coordinate;
use crate::params::{BoundaryMode, ShiftParams};

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
