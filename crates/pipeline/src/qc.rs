//! Per-frame quality control of a registration: framewise displacement, the correlation with the
//! reference before and after the shift, and the flag for suspicious frames; written beside
//! `/shifts` as `/framewise_displacement` (voxels; `/framewise_displacement_um` when the input's
//! voxel size is in micrometres), `/correlation_before`, `/correlation_after` and `/suspicious`
//! (1.0 for a flagged frame, else 0.0); and the mean and max projections of the data before and
//! after the shift, along z, y and x, as `/projection_z` (4, y, x), `/projection_y` (4, z, x) and
//! `/projection_x` (4, z, y), for `gpuprep report`.

use gpuprep_core::params::Registration;
use gpuprep_core::simd::{self, Level};
use gpuprep_io::VoxelSize;
use ndarray::{Array2, Array3, ArrayView3, Axis};

/// Pearson's correlation of two volumes (f64 sums: the means first, then the centred products); NaN
/// when either is constant.
pub fn correlation(a: ArrayView3<f32>, b: ArrayView3<f32>) -> f64 {
    match (a.as_slice(), b.as_slice()) {
        (Some(a), Some(b)) => correlation_slices(a, b),
        _ => correlation_slices(
            &a.iter().copied().collect::<Vec<_>>(),
            &b.iter().copied().collect::<Vec<_>>(),
        ),
    }
}

/// Lanes of independent partial sums: the additions of one lane do not wait on another's, so the
/// loops vectorize (one f64 chain per sum ran at a quarter of the speed).
const LANES: usize = 8;

/// The sum (f64) and maximum (NaN for none) of `v`, in `LANES` independent lanes.
#[inline(always)]
fn laned_sum_max(v: &[f32]) -> (f64, f32) {
    let (chunks, rest) = v.as_chunks::<LANES>();
    let (mut s, mut m) = ([0.0f64; LANES], [f32::NAN; LANES]);
    for c in chunks {
        for l in 0..LANES {
            s[l] += c[l] as f64;
            m[l] = m[l].max(c[l]);
        }
    }
    // Once per row: std's reductions may stay out-of-line here.
    let sum = s.iter().sum::<f64>() + rest.iter().map(|&x| x as f64).sum::<f64>();
    let max = m.iter().chain(rest).fold(f32::NAN, |a, &b| a.max(b));
    (sum, max)
}

/// Pearson's correlation in one pass over both volumes (it runs twice per frame, on the writer's
/// thread beside the kernels): the five sums of the samples shifted by each volume's first sample,
/// in `LANES` independent f64 lanes. 2.2 ms on 64 × 256 × 256 here against 5.9 ms for the two-pass
/// version it replaced; compiled for AVX2 or AVX-512 (`simd::dispatch!`) LLVM shuffled the lanes
/// and took 5.3 ms, so it stays at the baseline. (Again on 2026-12-03 with plain loops, which stay
/// inline in the wide copies: the same time as the baseline, 1.3 / 5.6 ms on 100³ / 64 × 256 × 256,
/// criterion `qc_correlation`: it streams two volumes at one core's memory bandwidth.) The shift keeps the one-pass
/// formulas' cancellation small: the centred sums lose about (spread / std)² · 1e-16, 1e-12 for
/// data whose values spread over a hundred standard deviations.
fn correlation_slices(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let [sa, sb, saa, sbb, sab] = shifted_sums(a, b);
    let ab = sab - sa * sb / n;
    let aa = saa - sa * sa / n;
    let bb = sbb - sb * sb / n;
    ab / (aa * bb).sqrt()
}

/// Σ(a−a₀), Σ(b−b₀), Σ(a−a₀)², Σ(b−b₀)², Σ(a−a₀)(b−b₀) in f64 (a₀, b₀ the first samples).
fn shifted_sums(a: &[f32], b: &[f32]) -> [f64; 5] {
    let (Some(&a0), Some(&b0)) = (a.first(), b.first()) else {
        return [0.0; 5];
    };
    let (a0, b0) = (a0 as f64, b0 as f64);
    let mut acc = [[0.0f64; LANES]; 5];
    // Whole arrays of LANES samples (`as_chunks`), so that each step is one vector operation.
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    for (x, y) in ca.iter().zip(cb) {
        let dx: [f64; LANES] = std::array::from_fn(|l| x[l] as f64 - a0);
        let dy: [f64; LANES] = std::array::from_fn(|l| y[l] as f64 - b0);
        for l in 0..LANES {
            acc[0][l] += dx[l];
            acc[1][l] += dy[l];
            acc[2][l] += dx[l] * dx[l];
            acc[3][l] += dy[l] * dy[l];
            acc[4][l] += dx[l] * dy[l];
        }
    }
    let mut out = acc.map(|lanes| lanes.iter().sum::<f64>());
    for (&x, &y) in ra.iter().zip(rb) {
        let (dx, dy) = (x as f64 - a0, y as f64 - b0);
        out[0] += dx;
        out[1] += dy;
        out[2] += dx * dx;
        out[3] += dy * dy;
        out[4] += dx * dy;
    }
    out
}

/// The change of each frame's shift from the previous frame's (Euclidean, in the units `scale`
/// gives each axis; 0 for the first frame).
pub fn framewise_displacement(shifts: &[[f64; 3]], scale: [f64; 3]) -> Vec<f64> {
    (0..shifts.len())
        .map(|t| match t {
            0 => 0.0,
            _ => (0..3)
                .map(|a| ((shifts[t][a] - shifts[t - 1][a]) * scale[a]).powi(2))
                .sum::<f64>()
                .sqrt(),
        })
        .collect()
}

/// The z, y, x voxel size in micrometres, when the input states it in micrometres.
pub fn micrometres(v: &VoxelSize) -> Option<[f64; 3]> {
    let um = |(s, unit): &(f64, Option<String>)| match unit.as_deref() {
        Some("micrometer" | "micrometre" | "micron" | "um" | "µm") => Some(*s),
        _ => None,
    };
    Some([um(&v[1])?, um(&v[2])?, um(&v[3])?])
}

/// How far below the median a frame's correlation after registration must be to be flagged, in
/// robust standard deviations (1.4826 · the median absolute deviation), at least `FLOOR`.
pub const ROBUST_SDS: f64 = 5.0;
pub const FLOOR: f64 = 0.02;

/// The suspicious frames: a registration that found nothing (error NaN: an empty frame), a shift
/// at the `--max-shift` bound along an axis that may move, or a correlation after registration far
/// below the median (`ROBUST_SDS`).
pub fn suspicious(
    regs: &[Registration],
    max_shift: Option<[f64; 3]>,
    correlation_after: &[f64],
) -> Vec<bool> {
    let finite: Vec<f64> = correlation_after
        .iter()
        .copied()
        .filter(|c| c.is_finite())
        .collect();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let m = median(&mut finite.clone());
    let mad = median(&mut finite.iter().map(|c| (c - m).abs()).collect());
    let threshold = m - (ROBUST_SDS * 1.4826 * mad).max(FLOOR);
    regs.iter()
        .zip(correlation_after)
        .map(|(r, &c)| {
            let at_bound = max_shift
                .is_some_and(|b| (0..3).any(|a| b[a] > 0.0 && r.shift[a].abs() >= b[a] - 1e-9));
            r.error.is_nan() || at_bound || !c.is_finite() || c < threshold
        })
        .collect()
}

/// What the four planes of each `/projection_<axis>` array hold, in order: the time-and-axis mean
/// and maximum of the volumes entering the shift (filtered, or raw without a median) and of the
/// shifted volumes (before the z-score). Recorded as the arrays' `planes` attribute in outputs.
pub const PROJECTION_PLANES: [&str; 4] = ["mean_before", "mean_after", "max_before", "max_after"];

/// Running projections of a registration's volumes before and after their shift, along each axis:
/// sums (f64) for the means and maxima for the max projections, so a run keeps three planes per
/// kind whatever its length. The order of `add` calls does not matter.
#[derive(Clone, Debug)]
pub struct Projections {
    shape: [usize; 3],
    frames: usize,
    /// [before, after] × axis (z, y, x): the sums and maxima over time of each projection.
    sums: [[Array2<f64>; 3]; 2],
    maxima: [[Array2<f32>; 3]; 2],
}

/// The plane a projection along `axis` of a (z, y, x) volume lands in.
fn plane_shape(shape: [usize; 3], axis: usize) -> (usize, usize) {
    match axis {
        0 => (shape[1], shape[2]),
        1 => (shape[0], shape[2]),
        _ => (shape[0], shape[1]),
    }
}

impl Projections {
    pub fn new(shape: [usize; 3]) -> Self {
        let sums = || std::array::from_fn(|a| Array2::zeros(plane_shape(shape, a)));
        let maxima = || std::array::from_fn(|a| Array2::from_elem(plane_shape(shape, a), f32::NAN));
        Projections {
            shape,
            frames: 0,
            sums: [sums(), sums()],
            maxima: [maxima(), maxima()],
        }
    }

    /// Adds one frame: the volume entering the shift and the shifted one.
    pub fn add(&mut self, before: ArrayView3<f32>, after: ArrayView3<f32>) {
        self.add_at(simd::level(), before, after)
    }

    /// `add` at vector level `level`.
    fn add_at(&mut self, level: Level, before: ArrayView3<f32>, after: ArrayView3<f32>) {
        let nx = self.shape[2];
        for (k, v) in [before, after].into_iter().enumerate() {
            debug_assert_eq!(v.shape(), &self.shape[..]);
            let v = v.as_standard_layout();
            let [sz, sy, sx] = &mut self.sums[k];
            let [mz, my, mx] = &mut self.maxima[k];
            let (sz, mz) = (slice_of(sz), slice_of(mz));
            // One pass in storage order: rows of x feed the z and y planes element-wise and the x
            // plane by their sum and maximum, a plane at a time at the machine's vector level.
            for (z, plane) in v.axis_iter(Axis(0)).enumerate() {
                let plane = plane.to_slice().expect("standard layout");
                let z_plane = (&mut *sz, &mut *mz);
                let y_row = (slice_of_row(sy, z), slice_of_row(my, z));
                let x_row = (slice_of_row(sx, z), slice_of_row(mx, z));
                let args = (plane, nx, z_plane, y_row, x_row);
                simd::dispatch!(level, add_plane, (args: PlaneArgs<'_>));
            }
        }
        self.frames += 1;
    }

    /// Frames added so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The running sums (f64) and maxima along `axis` of the volumes before (`after` false) or
    /// after their shift, for a front end that merges runs over blocks of frames (sums add, maxima
    /// take the larger; NaN marks a maximum over no frame).
    pub fn parts(&self, after: bool, axis: usize) -> (&Array2<f64>, &Array2<f32>) {
        let k = after as usize;
        (&self.sums[k][axis], &self.maxima[k][axis])
    }

    /// The (4, a, b) array of projections along `axis` (0 = z, 1 = y, 2 = x), planes in
    /// `PROJECTION_PLANES` order; means of an empty run are NaN.
    pub fn planes(&self, axis: usize) -> Array3<f32> {
        let (a, b) = plane_shape(self.shape, axis);
        let count = (self.frames * self.shape[axis]) as f64;
        let mut out = Array3::zeros((4, a, b));
        for k in 0..2 {
            out.index_axis_mut(Axis(0), k)
                .assign(&self.sums[k][axis].mapv(|s| (s / count) as f32));
            out.index_axis_mut(Axis(0), 2 + k)
                .assign(&self.maxima[k][axis]);
        }
        out
    }
}

/// A standard-layout plane as a slice.
fn slice_of<T>(a: &mut Array2<T>) -> &mut [T] {
    a.as_slice_mut().expect("standard layout")
}

/// Row `i` of a standard-layout plane as a slice.
fn slice_of_row<T>(a: &mut Array2<T>, i: usize) -> &mut [T] {
    a.row_mut(i).into_slice().expect("standard layout")
}

type PlaneArgs<'a> = (
    &'a [f32],
    usize,
    (&'a mut [f64], &'a mut [f32]),
    (&'a mut [f64], &'a mut [f32]),
    (&'a mut [f64], &'a mut [f32]),
);

/// One z-plane (rows `nx` long) into the z projection's sums and maxima (whole planes), the y
/// projection's (the plane's row of them) and the x projection's (one value per row): plain loops,
/// so that each vector level's copy keeps them (see `correlation_slices`).
#[inline(always)]
fn add_plane((plane, nx, (sz, mz), (sy, my), (sx, mx)): PlaneArgs<'_>) {
    for (y, row) in plane.chunks_exact(nx).enumerate() {
        let (szr, mzr) = (&mut sz[y * nx..][..nx], &mut mz[y * nx..][..nx]);
        for x in 0..nx {
            let v = row[x];
            szr[x] += v as f64;
            mzr[x] = mzr[x].max(v);
            sy[x] += v as f64;
            my[x] = my[x].max(v);
        }
        // The row's own sum and maximum apart, in lanes: inside the loop above their single
        // chains kept it from vectorizing.
        let (row_sum, row_max) = laned_sum_max(row);
        sx[y] += row_sum;
        mx[y] = mx[y].max(row_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn measures() {
        let a = Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 12 + y * 4 + x) as f32);
        assert!((correlation(a.view(), a.view()) - 1.0).abs() < 1e-12);
        assert!((correlation(a.view(), (-&a).view()) + 1.0).abs() < 1e-12);
        assert!(correlation(a.view(), Array3::zeros((2, 3, 4)).view()).is_nan());
        let fd = framewise_displacement(&[[0.0; 3], [0.0, 3.0, 4.0], [0.0, 3.0, 4.0]], [1.0; 3]);
        assert_eq!(fd, vec![0.0, 5.0, 0.0]);
        let fd = framewise_displacement(&[[0.0; 3], [1.0, 0.0, 0.0]], [2.5, 1.0, 1.0]);
        assert_eq!(fd, vec![0.0, 2.5]);
        let reg = |s: [f64; 3], e: f64| Registration {
            shift: s,
            error: e,
            phasediff: 0.0,
        };
        let regs = [
            reg([0.0, 1.0, 0.0], 0.1),
            reg([0.0, 2.0, 0.0], 0.1),
            reg([0.0, 0.0, 0.0], f64::NAN),
            reg([0.0, 0.5, 0.5], 0.1),
            reg([0.0, 0.5, 0.5], 0.1),
        ];
        let corr = [0.9, 0.91, 0.9, 0.5, 0.92];
        let flags = suspicious(&regs, Some([0.0, 2.0, 2.0]), &corr);
        assert_eq!(flags, vec![false, true, true, true, false]);
    }

    /// The one-pass laned sums against the plain two-pass definition, on a length that leaves a
    /// remainder, and on a non-contiguous view.
    #[test]
    fn correlation_equals_the_plain_definition() {
        let a = Array3::from_shape_fn((3, 5, 7), |(z, y, x)| {
            ((z * 31 + y * 7 + x * 3) % 17) as f32 + 100.0
        });
        let b = Array3::from_shape_fn((3, 5, 7), |(z, y, x)| {
            ((z * 5 + y * 11 + x) % 13) as f32 * 0.5 + 100.0
        });
        let plain = |a: &[f32], b: &[f32]| {
            let n = a.len() as f64;
            let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
            let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
            let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
            for (&x, &y) in a.iter().zip(b) {
                let (dx, dy) = (x as f64 - ma, y as f64 - mb);
                ab += dx * dy;
                aa += dx * dx;
                bb += dy * dy;
            }
            ab / (aa * bb).sqrt()
        };
        let want = plain(a.as_slice().unwrap(), b.as_slice().unwrap());
        assert!((correlation(a.view(), b.view()) - want).abs() < 1e-12);
        let (va, vb) = (
            a.slice(ndarray::s![.., 1.., ..;2]),
            b.slice(ndarray::s![.., 1.., ..;2]),
        );
        let want = plain(
            &va.iter().copied().collect::<Vec<_>>(),
            &vb.iter().copied().collect::<Vec<_>>(),
        );
        assert!((correlation(va, vb) - want).abs() < 1e-12);
        // Values far from zero with a small spread (the one-pass formulas' hard case).
        let a = Array3::from_shape_fn((4, 9, 11), |(z, y, x)| {
            1e4 + ((z * 7 + y * 3 + x) % 5) as f32
        });
        let b = a.mapv(|v| v * 0.5 + ((v as usize * 13) % 3) as f32);
        let want = plain(a.as_slice().unwrap(), b.as_slice().unwrap());
        assert!((correlation(a.view(), b.view()) - want).abs() < 1e-12);
    }

    /// Every vector level gives the baseline's bits for the projections (NaN samples, a row length
    /// that leaves a remainder of the lanes).
    #[test]
    fn every_vector_level_gives_the_scalar_bits() {
        let shape = [4usize, 6, 13];
        let vol = |k: usize| {
            Array3::from_shape_fn((4, 6, 13), |(z, y, x)| {
                let v = (((z * 31 + y * 7 + x * 3 + k * 5) % 17) as f32) * 0.37 - 3.0;
                if (z + y + x + k).is_multiple_of(23) {
                    f32::NAN
                } else {
                    v
                }
            })
        };
        let (a, b) = (vol(0), vol(1));
        let mut want = Projections::new(shape);
        want.add_at(Level::Scalar, a.view(), b.view());
        want.add_at(Level::Scalar, b.view(), a.view());
        for level in simd::available() {
            let mut got = Projections::new(shape);
            got.add_at(level, a.view(), b.view());
            got.add_at(level, b.view(), a.view());
            for k in 0..2 {
                for axis in 0..3 {
                    let (gs, gm) = (&got.sums[k][axis], &got.maxima[k][axis]);
                    let (ws, wm) = (&want.sums[k][axis], &want.maxima[k][axis]);
                    assert!(gs.iter().zip(ws).all(|(g, w)| g.to_bits() == w.to_bits()));
                    assert!(gm.iter().zip(wm).all(|(g, w)| g.to_bits() == w.to_bits()));
                }
            }
        }
    }

    /// The running projections against ndarray's own mean and max over time and axis.
    #[test]
    fn projections_equal_direct_reductions() {
        let shape = [3usize, 5, 7];
        let frames: Vec<(Array3<f32>, Array3<f32>)> = (0..4)
            .map(|t| {
                let f = |k: usize| {
                    Array3::from_shape_fn((3, 5, 7), |(z, y, x)| {
                        (((z * 31 + y * 7 + x * 3 + t * 11 + k * 5) % 17) as f32) - 8.0
                    })
                };
                // A NaN cval of the shift marks samples outside the input in the last shifted volume:
                // the maxima skip it (`f32::max`), the means are NaN there.
                let mut after = f(1);
                if t == 3 {
                    after.slice_mut(ndarray::s![.., .., 6]).fill(f32::NAN);
                }
                (f(0), after)
            })
            .collect();
        let mut p = Projections::new(shape);
        for (b, a) in &frames {
            p.add(b.view(), a.view());
        }
        for (axis, &len) in shape.iter().enumerate() {
            let got = p.planes(axis);
            for (k, which) in [0usize, 1].into_iter().enumerate() {
                let stack: Vec<Array3<f32>> = frames
                    .iter()
                    .map(|f| if which == 0 { f.0.clone() } else { f.1.clone() })
                    .collect();
                let sum: Array3<f64> = stack.iter().fold(Array3::zeros((3, 5, 7)), |acc, v| {
                    acc + v.mapv(|x| x as f64)
                });
                let mean = sum.sum_axis(Axis(axis)) / (4 * len) as f64;
                let max = stack
                    .iter()
                    .map(|v| v.fold_axis(Axis(axis), f32::NEG_INFINITY, |m, &x| m.max(x)))
                    .reduce(|a, b| ndarray::Zip::from(&a).and(&b).map_collect(|x, y| x.max(*y)))
                    .unwrap();
                let got_mean = got.index_axis(Axis(0), k);
                let got_max = got.index_axis(Axis(0), 2 + k);
                assert_eq!(got_mean.dim(), mean.dim());
                for (g, w) in got_mean.iter().zip(mean.iter()) {
                    assert!(
                        (g.is_nan() && w.is_nan()) || (*g as f64 - w).abs() < 1e-6,
                        "axis {axis} kind {k}: {g} vs {w}"
                    );
                }
                assert_eq!(got_max, max, "axis {axis} kind {k}");
            }
        }
    }
}
