//! CPU kernels against golden outputs of scipy 1.17 / scikit-image 0.26 (tests/fixtures/golden.h5,
//! made by scripts/make_fixtures.py).

use crate::support::*;
use gpuprep_core::backend::{Backend, FramePlan};
use gpuprep_core::params::*;
use gpuprep_cpu::{
    median3d::median3d, reference::median3d_sorted, register::phase_cross_correlation,
    shift::shift3d, zscore, CpuBackend,
};
use ndarray::{s, Axis};

/// The fast kernel, the CPU backend (which the pipeline calls) and the naive sorting reference, each
/// bit for bit against scipy, windows longer than the axis included (issue 8, item 14).
#[test]
fn median_matches_scipy_exactly() {
    let golden = Golden::open();
    let cases = golden.cases("median");
    assert!(cases.len() >= 20);
    let mut backend = CpuBackend::new();
    let mut short = std::collections::HashSet::new();
    for (name, g) in cases {
        let size = attr_vec_i64(&g, "size");
        let p = MedianParams::new(
            [size[0] as usize, size[1] as usize, size[2] as usize],
            attr_str(&g, "mode").parse().unwrap(),
            attr_f64(&g, "cval") as f32,
        )
        .unwrap();
        let input = ds3(&g, "input");
        if (0..3).any(|a| input.shape()[a] < p.size[a]) {
            short.insert(p.mode);
        }
        let want = ds3(&g, "output");
        let routes = [
            ("fast kernel", median3d(input.view(), &p)),
            (
                "CPU backend",
                backend
                    .median3d(input.view(), &p)
                    .unwrap_or_else(|e| panic!("{name} ({p:?}): {e}")),
            ),
            ("sorting reference", median3d_sorted(input.view(), &p)),
        ];
        for (route, ours) in routes {
            let (d, at) = max_abs_diff(ours.view(), want.view());
            assert!(
                d == 0.0,
                "{name} ({p:?}), {route}: differs from scipy by {d} at {at:?}"
            );
        }
    }
    assert_eq!(short.len(), 5, "windows longer than an axis in every mode");
}

/// Tolerance of the CPU shift against scipy: both sum in f64 but in a different order (three 1-D passes
/// against scipy's 64-tap loop), then round to f32: a few f32 ulps of the data's magnitude.
const SHIFT_TOL: f32 = 4e-6;

/// Sub-pixel shifts against scikit-image: it computes in float32, so its upsampled shifts carry f32
/// rounding (~1e-7); integer shifts (u = 1) are exact.
const SUBPIXEL_SHIFT_TOL: f64 = 1e-5;
/// Registration error and phase difference against scikit-image: its float32 sums against our f64 ones.
const ERROR_TOL: f64 = 1e-3;
/// The whole-pipeline cases: the registered volume against scipy's (the shift's tolerance, at the
/// magnitudes of those cases), and the z-score against scipy's float64 z-score.
const PIPELINE_SHIFTED_TOL: f32 = 1e-4;
const PIPELINE_ZSCORE_TOL: f32 = 1e-3;

#[test]
fn shift_matches_scipy_every_order_and_mode() {
    let golden = Golden::open();
    let cases = golden.cases("shift");
    assert!(cases.len() >= 15);
    let mut seen = std::collections::HashSet::new();
    for (name, g) in cases {
        let s = attr_vec_f64(&g, "shift");
        let p = ShiftParams::new(
            attr_i64(&g, "order") as u32,
            attr_str(&g, "mode").parse().unwrap(),
            attr_f64(&g, "cval") as f32,
        )
        .unwrap();
        seen.insert((p.order, p.mode));
        let input = ds3(&g, "input");
        let scale = input.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let ours = shift3d(input.view(), [s[0], s[1], s[2]], &p);
        let want = ds3(&g, "output");
        let (d, at) = max_abs_diff(ours.view(), want.view());
        assert!(
            d <= SHIFT_TOL * scale,
            "{name} shift {s:?} {p:?}: differs from scipy by {d} at {at:?}"
        );
    }
    assert_eq!(seen.len(), 15, "every (order, mode) pair is covered");
}

#[test]
fn registration_matches_scikit_image() {
    let golden = Golden::open();
    for (name, g) in golden.cases("register") {
        let u = attr_i64(&g, "upsample_factor") as u32;
        let p = RegisterParams::new(u, attr_str(&g, "normalization").parse().unwrap()).unwrap();
        let r = phase_cross_correlation(ds3(&g, "reference").view(), ds3(&g, "moving").view(), &p);
        let want = ds_f64(&g, "shifts");
        for a in 0..3 {
            let d = (r.shift[a] - want[a]).abs();
            let tol = if u == 1 { 0.0 } else { SUBPIXEL_SHIFT_TOL };
            assert!(
                d <= tol,
                "{name} (u={u}): shift {:?} vs scikit-image {want}",
                r.shift
            );
        }
        let err = ds_f64(&g, "error").first().copied().unwrap();
        let ph = ds_f64(&g, "phasediff").first().copied().unwrap();
        assert!(
            (r.error - err).abs() < ERROR_TOL,
            "{name}: error {} vs {err}",
            r.error
        );
        assert!(
            (r.phasediff - ph).abs() < ERROR_TOL,
            "{name}: phasediff {} vs {ph}",
            r.phasediff
        );
    }
}

/// Tolerance of the z-score against scipy computed in float64 (`output_f64`): f32 rounding of the result,
/// plus the rounding of the per-voxel mean to f32, which costs `eps_f32 · |mean| / std` in z (data with a
/// large offset). scipy's own float32 result is ~7x further from the f64 answer in those cases.
fn zscore_tol(z: f32, mean: f32, std: f32) -> f32 {
    2e-6 * z.abs().max(1.0) + 2.0 * f32::EPSILON * (mean / std).abs()
}

#[test]
fn zscore_matches_scipy() {
    let golden = Golden::open();
    for (name, g) in golden.cases("zscore") {
        let p = ZscoreParams {
            ddof: attr_i64(&g, "ddof") as u32,
            constant: ConstantVoxels::Nan,
        };
        let input = ds4(&g, "input");
        let shape = [input.shape()[1], input.shape()[2], input.shape()[3]];
        let mut acc = zscore::Accumulator::new(shape);
        for v in input.axis_iter(Axis(0)) {
            acc.add(v);
        }
        let m = acc.moments(&p);
        let exact = ds4(&g, "output_f64");
        let scipy32 = ds4(&g, "output");
        for (t, v) in input.axis_iter(Axis(0)).enumerate() {
            let ours = zscore::normalize(v, &m, &p);
            let want = exact.slice(s![t, .., .., ..]);
            for (((i, &o), &w), (&mean, &std)) in ours
                .indexed_iter()
                .zip(want.iter())
                .zip(m.mean().iter().zip(m.std().iter()))
            {
                if w.is_nan() {
                    continue;
                }
                let tol = zscore_tol(w, mean, std);
                assert!(
                    (o - w).abs() <= tol,
                    "{name} t={t} at {i:?}: {o} vs scipy (f64) {w}, tolerance {tol}"
                );
            }
            // NaN exactly where scipy puts NaN for constant voxels. Compared with the f64 run: scipy's
            // float32 run misses a constant voxel of value 1000.3 (its f32 mean is inexact, so its std
            // is not zero) and returns noise there; ours, like scipy in f64, returns NaN.
            for (o, w) in ours.iter().zip(want.iter()) {
                assert_eq!(
                    o.is_nan(),
                    w.is_nan(),
                    "{name} t={t}: NaN pattern differs from scipy (f64)"
                );
            }
            let nan32 = scipy32
                .slice(s![t, .., .., ..])
                .iter()
                .filter(|v| v.is_nan())
                .count();
            assert!(ours.iter().filter(|v| v.is_nan()).count() >= nan32);
        }
    }
}

#[test]
fn whole_pipeline_matches_the_scipy_pipeline() {
    let golden = Golden::open();
    for (name, g) in golden.cases("pipeline") {
        let u = attr_i64(&g, "upsample_factor") as u32;
        let input = ds4(&g, "input");
        let filtered = ds4(&g, "filtered");
        let registered = ds4(&g, "registered");
        let want_shifts = ds_f64(&g, "shifts");
        let mut cpu = CpuBackend::new();
        let reg = RegisterParams::new(u, Normalization::Phase).unwrap();
        let reference = cpu
            .median3d(input.index_axis(Axis(0), 0), &MedianParams::default())
            .unwrap();
        let cpu_ref = cpu.set_reference(reference.view(), &reg).unwrap();
        let shape = [input.shape()[1], input.shape()[2], input.shape()[3]];
        let cpu_acc = cpu.reset_moments(shape).unwrap();
        let plan = FramePlan {
            median: Some(MedianParams::default()),
            register: Some(cpu_ref),
            register_on_raw: false,
            shift: ShiftParams::default(),
            accumulate: Some(cpu_acc),
            keep_filtered: true,
        };
        let mut outs = Vec::new();
        for (t, raw) in input.axis_iter(Axis(0)).enumerate() {
            let out = cpu.process_frame(raw, &plan).unwrap();
            let f = out.filtered.as_ref().unwrap();
            assert_eq!(
                max_abs_diff(f.view(), filtered.index_axis(Axis(0), t)).0,
                0.0,
                "{name} t={t} filtered"
            );
            let r = out.registration.unwrap();
            for a in 0..3 {
                let d = (r.shift[a] - want_shifts[[t, a]]).abs();
                assert!(
                    d <= SUBPIXEL_SHIFT_TOL,
                    "{name} t={t}: shift {:?} vs scikit-image {:?}",
                    r.shift,
                    want_shifts
                );
            }
            let (d, at) = max_abs_diff(out.volume.view(), registered.index_axis(Axis(0), t));
            assert!(
                d <= PIPELINE_SHIFTED_TOL,
                "{name} t={t}: registered differs by {d} at {at:?}"
            );
            outs.push(out.volume);
        }
        let zp = ZscoreParams::default();
        let m = cpu.moments(&cpu_acc, &zp).unwrap();
        let want = ds4(&g, "output_f64");
        for (t, v) in outs.iter().enumerate() {
            let z = cpu.normalize(v.view(), &m, &zp).unwrap();
            let (d, at) = max_abs_diff(z.view(), want.index_axis(Axis(0), t));
            assert!(
                d <= PIPELINE_ZSCORE_TOL,
                "{name} t={t}: z-score differs by {d} at {at:?}"
            );
        }
    }
}
