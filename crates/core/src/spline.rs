//! scipy's spline interpolation set-up for a translation, shared by both backends' shift kernels.
//!
//! `NI_ZoomShift` (scipy's `ni_interpolation.c`) decides, per axis and once per shift, which input
//! samples and weights each output sample takes; a translation samples every line of an axis alike, so
//! one `AxisPlan` per axis serves the whole volume. The CPU twin and the GPU's host side both build
//! their taps from it, in f64.
//!
//! The cubic B-spline prefilter (`prefilter_rows`) lives here too: the CPU twin runs it, and the GPU's
//! host side turns it and an `AxisPlan` into one linear operator per axis (`FilterRows`,
//! `AxisOperator`), which its shader applies in a single fully parallel pass.
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

/// The causal initialisation sums `z^i c[i]` over the whole line as scipy does; terms past
/// `|z|^i < INIT_CUTOFF` (i ≈ 31) move the sum by less than 1e-18 of the line's largest value, far
/// below the f32 output's precision, so the sum stops there: long lines cost ~31 rows, not n.
const INIT_CUTOFF: f64 = 1e-18;
/// In-place cubic B-spline prefilter of one line (`apply_filter` in ni_splines.c, one pole).
pub fn prefilter_line(c: &mut [f64], mode: BoundaryMode) {
    prefilter_rows(c, 1, mode);
}

/// `prefilter_line` applied to `c.len() / w` lines at once, stored as rows of width `w`: row `i`
/// holds sample `i` of every line. Lines along the slow axes are filtered this way, so each step of
/// the recursion is a contiguous (vectorisable) row operation instead of a strided walk.
#[inline(always)]
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
            if z_i.abs() < INIT_CUTOFF {
                break;
            }
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
            if z_i.abs() < INIT_CUTOFF {
                break;
            }
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

/// Operator entries at most this large are dropped from the ends of a row: the prefilter's impulse
/// response decays as |POLE|^k (0.268^18 ≈ 2e-10), so a row keeps about 18 entries each side, and
/// what is dropped moves an output by under 1e-9 of the line's largest value, far below f32 precision.
pub const OPERATOR_CUTOFF: f64 = 1e-10;

/// The edge padding and cubic B-spline prefilter of one line as a matrix, row by row: padded,
/// prefiltered sample `i` is `Σ_k w[k] · input[lo + k]` for row `i` = `(lo, w)`, the rows' negligible
/// ends (`OPERATOR_CUTOFF`) dropped. Built from the prefilter's own responses to unit impulses, so
/// every boundary mode's initialisation (and scipy's padding for `nearest`) is what `prefilter_rows`
/// does. Depends on the line's length, padding, order and mode, not on the shift.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterRows {
    rows: Vec<(usize, Vec<f64>)>,
}

impl FilterRows {
    /// The rows for input lines of length `n` padded by `pad` a side (`AxisPlan::pad`); orders 0 and 1
    /// take the padded samples as they are.
    pub fn new(n: usize, pad: usize, order: usize, mode: BoundaryMode) -> Self {
        assert!(n > 0, "lines are not empty");
        let len = n + 2 * pad;
        // The padding of the CPU twin's `load_and_prefilter`: edge samples repeated.
        let edge = |i: usize| i.saturating_sub(pad).min(n - 1);
        if order <= 1 {
            let rows = (0..len).map(|i| (edge(i), vec![1.0])).collect();
            return FilterRows { rows };
        }
        // Column j of the (len, n) matrix is the padded, prefiltered unit impulse at input j; only its
        // entries above the cutoff are kept, row by row (about 38 a row: memory linear in n, where
        // the dense matrix of a 2048-sample line would take 34 MB). Each row's kept entries form one
        // run of inputs (the response decays away from the sample and folds back at the edges), so
        // a row is stored from its first to its last.
        let mut sparse: Vec<Vec<(usize, f64)>> = vec![Vec::new(); len];
        let mut line = vec![0.0f64; len];
        for j in 0..n {
            line.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = if edge(i) == j { 1.0 } else { 0.0 });
            prefilter_line(&mut line, mode);
            for (i, &v) in line.iter().enumerate() {
                if v.abs() > OPERATOR_CUTOFF {
                    sparse[i].push((j, v));
                }
            }
        }
        let rows = sparse
            .into_iter()
            .map(|r| match (r.first(), r.last()) {
                (Some(&(lo, _)), Some(&(hi, _))) => {
                    let mut w = vec![0.0; hi - lo + 1];
                    for (j, v) in r {
                        w[j - lo] = v;
                    }
                    (lo, w)
                }
                _ => (0, Vec::new()),
            })
            .collect();
        FilterRows { rows }
    }

    /// `new`'s rows from a small cache kept by the process: a 256-sample line's rows take about half a
    /// millisecond to build, against some 50 µs for an operator from them, and every volume of a run
    /// reuses the same three.
    pub fn cached(n: usize, pad: usize, order: usize, mode: BoundaryMode) -> std::sync::Arc<Self> {
        use std::sync::{Arc, Mutex};
        type Key = (usize, usize, usize, BoundaryMode);
        static CACHE: Mutex<Vec<(Key, Arc<FilterRows>)>> = Mutex::new(Vec::new());
        const KEEP: usize = 8;
        let key = (n, pad, order, mode);
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, f)) = cache.iter().find(|(k, _)| *k == key) {
            return f.clone();
        }
        let f = Arc::new(FilterRows::new(n, pad, order, mode));
        if cache.len() == KEEP {
            cache.remove(0);
        }
        cache.push((key, f.clone()));
        f
    }
}

/// One axis of a translation as a linear operator on its input lines: output sample `k` of a line is
/// `Σ w · input[idx]` over the `width` pairs `taps[k * width ..]` (rows shorter than `width` padded
/// with zero weights at index 0). Samples scipy writes as cval (`outside`) have no taps; the last
/// pass masks them.
#[derive(Debug, Clone)]
pub struct AxisOperator {
    pub width: usize,
    pub taps: Vec<(u32, f64)>,
    pub outside: Vec<bool>,
}

impl AxisPlan {
    /// This plan's taps composed with the prefilter `f` (`FilterRows::new(n, self.pad, self.order,
    /// mode)` for the same line length `n`): each output's 1-4 taps on the padded, prefiltered line
    /// become a short row of weights on the input line itself.
    pub fn operator(&self, f: &FilterRows) -> AxisOperator {
        assert_eq!(
            f.rows.len(),
            self.taps.len() + 2 * self.pad,
            "prefilter rows for another line length"
        );
        let mut rows: Vec<Vec<(u32, f64)>> = Vec::with_capacity(self.taps.len());
        let mut dense = Vec::new();
        for t in &self.taps {
            let Some((idx, w)) = t else {
                rows.push(Vec::new());
                continue;
            };
            // The taps' filter rows, grouped into clusters of overlapping index ranges (one cluster,
            // except where `wrap` sends taps to both ends of a line), each summed densely.
            let mut segs: Vec<(usize, &[f64], f64)> = (0..=self.order)
                .map(|h| {
                    let (lo, r) = &f.rows[idx[h]];
                    (*lo, r.as_slice(), w[h])
                })
                .filter(|s| !s.1.is_empty())
                .collect();
            segs.sort_by_key(|s| s.0);
            let mut row = Vec::new();
            let mut at = 0;
            while at < segs.len() {
                let lo = segs[at].0;
                let mut hi = lo + segs[at].1.len();
                let mut end = at + 1;
                while end < segs.len() && segs[end].0 <= hi {
                    hi = hi.max(segs[end].0 + segs[end].1.len());
                    end += 1;
                }
                dense.clear();
                dense.resize(hi - lo, 0.0);
                for &(s_lo, r, wh) in &segs[at..end] {
                    for (d, &v) in dense[s_lo - lo..].iter_mut().zip(r) {
                        *d += v * wh;
                    }
                }
                row.extend(dense.iter().enumerate().map(|(k, &v)| ((lo + k) as u32, v)));
                at = end;
            }
            rows.push(row);
        }
        let width = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut taps = Vec::with_capacity(rows.len() * width);
        for r in &rows {
            taps.extend_from_slice(r);
            taps.extend(std::iter::repeat_n((0, 0.0), width - r.len()));
        }
        let outside = self.taps.iter().map(Option::is_none).collect();
        AxisOperator {
            width,
            taps,
            outside,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One line shifted as the CPU twin does it: edge padding, the prefilter in place, the taps.
    fn shift_line(line: &[f64], plan: &AxisPlan, mode: BoundaryMode) -> Vec<Option<f64>> {
        let n = line.len();
        let mut padded: Vec<f64> = (0..n + 2 * plan.pad)
            .map(|i| line[i.saturating_sub(plan.pad).min(n - 1)])
            .collect();
        if plan.order > 1 {
            prefilter_line(&mut padded, mode);
        }
        plan.taps
            .iter()
            .map(|t| t.map(|(idx, w)| (0..=plan.order).map(|h| padded[idx[h]] * w[h]).sum()))
            .collect()
    }

    #[test]
    fn axis_operators_equal_prefilter_then_taps_for_every_mode_order_and_length() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for n in [1, 2, 3, 4, 5, 7, 16, 31, 64, 257] {
            for mode in BoundaryMode::ALL {
                for order in [0u32, 1, 3] {
                    let p = ShiftParams::new(order, mode, 0.5).unwrap();
                    let filter =
                        FilterRows::new(n, AxisPlan::new(n, 0.0, &p).pad, order as usize, mode);
                    for _ in 0..4 {
                        let s = (next() - 0.5) * 2.5 * n as f64;
                        let plan = AxisPlan::new(n, s, &p);
                        let op = plan.operator(&filter);
                        let line: Vec<f64> = (0..n).map(|_| next() * 200.0 - 100.0).collect();
                        let want = shift_line(&line, &plan, mode);
                        assert_eq!(op.taps.len(), n * op.width);
                        for (k, w) in want.iter().enumerate() {
                            assert_eq!(
                                op.outside[k],
                                w.is_none(),
                                "n {n} {mode:?} order {order} shift {s} k {k}"
                            );
                            let row = &op.taps[k * op.width..(k + 1) * op.width];
                            let got: f64 = row.iter().map(|&(j, w)| line[j as usize] * w).sum();
                            let want = w.unwrap_or(0.0);
                            // Entries under OPERATOR_CUTOFF dropped: a few 1e-9 of max |line| (100).
                            assert!(
                                (got - want).abs() <= 1e-7,
                                "n {n} {mode:?} order {order} shift {s} k {k}: {got} against {want}"
                            );
                        }
                        // Rows stay short: the prefilter's band, not the line.
                        if n >= 64 && mode != BoundaryMode::Wrap {
                            assert!(
                                op.width <= 48,
                                "n {n} {mode:?} order {order}: width {}",
                                op.width
                            );
                        }
                    }
                }
            }
        }
    }
}
