//! Per-frame quality control of a registration: framewise displacement, the correlation with the
//! reference before and after the shift, and the flag for suspicious frames; written beside
//! `/shifts` as `/framewise_displacement` (voxels; `/framewise_displacement_um` when the input's
//! voxel size is in micrometres), `/correlation_before`, `/correlation_after` and `/suspicious`
//! (1.0 for a flagged frame, else 0.0).

use gpuprep_core::params::Registration;
use gpuprep_io::VoxelSize;
use ndarray::ArrayView3;

/// Pearson's correlation of two volumes (f64 sums); NaN when either is constant.
pub fn correlation(a: ArrayView3<f32>, b: ArrayView3<f32>) -> f64 {
    let n = a.len() as f64;
    let (mut sa, mut sb) = (0.0f64, 0.0f64);
    ndarray::Zip::from(&a).and(&b).for_each(|&x, &y| {
        sa += x as f64;
        sb += y as f64;
    });
    let (ma, mb) = (sa / n, sb / n);
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    ndarray::Zip::from(&a).and(&b).for_each(|&x, &y| {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        ab += dx * dy;
        aa += dx * dx;
        bb += dy * dy;
    });
    ab / (aa * bb).sqrt()
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
}
