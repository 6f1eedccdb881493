//! Issue 8, items 5 and 7: registration on large values (correct shifts or a clear error naming the
//! timepoint, never a silent zero shift with a NaN error) and the z-score normalized with the f64
//! moments (equal to `scipy.stats.zscore` of the float32 data computed in float64, to float32
//! rounding, with scipy's NaN set), on the CPU and the GPU (lavapipe in CI; with GPUPREP_TEST_GL=1
//! also wgpu's GL backend, which has no f64; see tests/gpu.rs for the skip rule without a Vulkan
//! adapter).

use crate::support::{attr_i64, ds4, fixture};
use gpuprep_core::backend::Backend;
use gpuprep_core::params::*;
use gpuprep_cpu::CpuBackend;
use gpuprep_gpu::{Api, GpuBackend};
use gpuprep_pipeline::driver::{run, RunConfig};
use ndarray::{Array3, Array4, Axis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The GPU backend on Vulkan, or `None` (skipped) when there is none and CI does not require one.
fn gpu() -> Option<GpuBackend> {
    match GpuBackend::new(Api::Vulkan) {
        Ok(g) => {
            assert_eq!(g.adapter_backend(), wgpu::Backend::Vulkan);
            Some(g)
        }
        Err(e) => {
            assert!(
                std::env::var("GPUPREP_REQUIRE_GPU").as_deref() != Ok("1"),
                "GPUPREP_REQUIRE_GPU=1 but no Vulkan adapter: {e}"
            );
            eprintln!("SKIPPED: no Vulkan adapter ({e})");
            None
        }
    }
}

/// Every backend under test: the CPU, the GPU (resident), and the GPU with a tile limit of
/// `tile_bytes`, small enough that the stage under test runs tiled.
fn backends(tile_bytes: u64) -> Vec<(&'static str, Box<dyn Backend>)> {
    let mut v: Vec<(&'static str, Box<dyn Backend>)> = vec![("cpu", Box::new(CpuBackend::new()))];
    if let Some(g) = gpu() {
        v.push(("gpu", Box::new(g)));
    }
    if let Some(mut g) = gpu() {
        g.set_max_tile_bytes(tile_bytes);
        v.push(("gpu tiled", Box::new(g)));
    }
    // wgpu's GL backend (no SHADER_F64: the z-score runs on the CPU twin), by hand as in tests/gpu.rs.
    if std::env::var("GPUPREP_TEST_GL").as_deref() == Ok("1") {
        let g = GpuBackend::new(Api::Gl).expect("GL adapter");
        assert_eq!(g.adapter_backend(), wgpu::Backend::Gl);
        v.push(("gl", Box::new(g)));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Item 5: registration on large values.

/// A smooth volume in [0, 1] (a few Gaussian blobs) that phase correlation locks on to.
fn blobs(seed: u64, shape: [usize; 3]) -> Array3<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centers: Vec<[f32; 3]> = (0..5)
        .map(|_| [0, 1, 2].map(|a| rng.random::<f32>() * shape[a] as f32))
        .collect();
    let v = Array3::from_shape_fn(shape, |(z, y, x)| {
        centers
            .iter()
            .map(|c| {
                let d2 = (z as f32 - c[0]).powi(2)
                    + (y as f32 - c[1]).powi(2)
                    + (x as f32 - c[2]).powi(2);
                (-d2 / 8.0).exp()
            })
            .sum::<f32>()
    });
    let max = v.iter().fold(0.0f32, |m, &x| m.max(x));
    v / max
}

/// `v` rolled by `s` voxels (periodic), so phase correlation finds exactly `-s`.
fn roll(v: &Array3<f32>, s: [isize; 3]) -> Array3<f32> {
    let (nz, ny, nx) = v.dim();
    Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
        let src = |i: usize, n: usize, k: isize| (i as isize - k).rem_euclid(n as isize) as usize;
        v[[src(z, nz, s[0]), src(y, ny, s[1]), src(x, nx, s[2])]]
    })
}

#[test]
fn large_values_register_as_the_unscaled_volumes_or_fail_clearly() {
    let shape = [10, 16, 18];
    let reference = blobs(5, shape);
    let moving = roll(&reference, [2, -3, 4]);
    // 4 KiB: planes (16·18·8 bytes) fit, the spectrum does not.
    for (name, mut b) in backends(4096) {
        for normalization in [Normalization::Phase, Normalization::None] {
            for upsample_factor in [1, 4] {
                let p = RegisterParams {
                    upsample_factor,
                    normalization,
                    ..Default::default()
                };
                let b_ref = b.set_reference(reference.view(), &p).unwrap();
                let base = b.register(&b_ref, moving.view()).unwrap();
                assert_eq!(base.shift, [-2.0, 3.0, -4.0], "{name} {p:?}");
                // 1e18: |F·G*| ~ 1e44 and Σ|F|² pass f32's range (scikit-image 0.26 raises from
                // ~1e17 on this volume); 1e25 and 1e30 still have f32 spectra (N · 1e30 < 3.4e38).
                // Unnormalized, the stored spectrum is scaled by a power of two on both backends.
                for scale in [1e18f32, 1e25, 1e30] {
                    let ctx = format!("{name} {p:?} scale {scale:e}");
                    let b_ref = b.set_reference((&reference * scale).view(), &p).unwrap();
                    let r = b.register(&b_ref, (&moving * scale).view()).unwrap();
                    assert_eq!(r.shift, base.shift, "{ctx}");
                    assert!(r.error.is_finite() && r.phasediff.is_finite(), "{ctx}");
                    // The error is a ratio of powers: scale-free up to f32 spectrum rounding.
                    assert!(
                        (r.error - base.error).abs() <= 1e-3,
                        "{ctx}: {r:?} vs {base:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn spectra_past_f32_range_are_an_error_never_a_zero_shift() {
    let shape = [6, 8, 10];
    let reference = blobs(6, shape);
    let moving = roll(&reference, [1, 2, -1]);
    for (name, mut b) in backends(1024) {
        let p = RegisterParams::default();
        // N · 3e37 passes 3.4e38: the float32 FFT of the moving volume overflows.
        let b_ref = b.set_reference(reference.view(), &p).unwrap();
        let e = b
            .register(&b_ref, (&moving * 3e37).view())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not finite"), "{name}: {e}");
        // The same as reference: refused when it is set.
        let e = b
            .set_reference((&reference * 3e37).view(), &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reference") && e.contains("not finite"),
            "{name}: {e}"
        );
    }
}

/// A 4-D float32 input file `default` (t, z, y, x) in `dir`.
fn write_series(dir: &std::path::Path, series: &Array4<f32>) -> String {
    let path = dir.join("in.h5");
    let f = hdf5::File::create(&path).unwrap();
    f.new_dataset_builder()
        .with_data(series)
        .create("default")
        .unwrap();
    path.display().to_string()
}

#[test]
fn a_run_whose_registration_overflows_names_the_timepoint_and_leaves_nothing() {
    let shape = [6, 8, 10];
    let reference = blobs(7, shape);
    let mut series = Array4::<f32>::zeros((3, shape[0], shape[1], shape[2]));
    series.index_axis_mut(Axis(0), 0).assign(&reference);
    series
        .index_axis_mut(Axis(0), 1)
        .assign(&roll(&reference, [1, 0, 1]));
    series
        .index_axis_mut(Axis(0), 2)
        .assign(&(roll(&reference, [0, 1, 0]) * 3e37));
    let mut cases: Vec<(&str, Box<dyn Backend>)> = vec![("cpu", Box::new(CpuBackend::new()))];
    if let Some(g) = gpu() {
        cases.push(("gpu", Box::new(g)));
    }
    for (name, mut b) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let input = write_series(tmp.path(), &series);
        let out_dir = tmp.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let cfg = RunConfig::new(vec![input], out_dir.join("out.h5"));
        let e = run(&cfg, b.as_mut()).unwrap_err().to_string();
        assert!(
            e.contains("timepoint 2") && e.contains("registration") && e.contains("not finite"),
            "{name}: {e}"
        );
        assert!(!e.contains('\n'), "{name}: one line: {e}");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "{name}");
    }
}

/// A reference with exactly-zero bins (constant along an axis of 4: its FFT twiddles are exact) against a
/// moving volume past 1e30: the GPU's large-value branch must give the CPU's R / max(|R|, floor) = 0 there,
/// not 0/0. (A guard: lavapipe did not show the NaN before the fix either.)
#[test]
fn zero_bins_against_large_values_register_as_on_the_cpu() {
    let shape = [6, 8, 4];
    // A(z, y) + B(z, y)·[1, 0, -1, 0][x]: the bins at kx = 2 are exactly zero, kx = 1, 3 fix the x shift.
    let (a, b) = (blobs(9, [6, 8, 1]), blobs(10, [6, 8, 1]));
    let c = [1.0, 0.0, -1.0, 0.0];
    let reference = Array3::from_shape_fn(shape, |(z, y, x)| a[[z, y, 0]] + b[[z, y, 0]] * c[x]);
    let texture = Array3::from_shape_fn(shape, |(z, y, x)| {
        ((z * 5 + y * 3 + x * 7) % 11) as f32 / 11.0
    });
    let moving = (roll(&reference, [1, 2, 0]) + &texture * 0.1) * 1e30;
    let p = RegisterParams::default();
    let mut cpu = CpuBackend::new();
    let cpu_ref = cpu.set_reference(reference.view(), &p).unwrap();
    let want = cpu.register(&cpu_ref, moving.view()).unwrap();
    assert!(want.error.is_finite(), "{want:?}");
    for (name, mut b) in backends(512) {
        let b_ref = b.set_reference(reference.view(), &p).unwrap();
        let got = b
            .register(&b_ref, moving.view())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.shift, want.shift, "{name}");
        assert!(
            (got.error - want.error).abs() < 1e-3,
            "{name}: {got:?} vs {want:?}"
        );
    }
}

/// A blank (all-zero) frame or reference has nothing to register: shift 0 and error NaN (scikit-image
/// warns and gives NaN too), not a failed run and not a silent result: the report names the timepoints.
#[test]
fn empty_volumes_register_as_shift_zero_error_nan_and_are_reported() {
    let shape = [5, 8, 9];
    let reference = blobs(8, shape);
    let zeros = Array3::<f32>::zeros(shape);
    for u in [1, 10] {
        let p = RegisterParams::new(u, Normalization::Phase).unwrap();
        for (name, mut b) in backends(2048) {
            let b_ref = b.set_reference(reference.view(), &p).unwrap();
            let r = b.register(&b_ref, zeros.view()).unwrap();
            assert_eq!(r.shift, [0.0; 3], "{name} u={u}");
            assert!(r.error.is_nan(), "{name} u={u}: {r:?}");
            // A regular frame still registers against the same reference.
            let r = b
                .register(&b_ref, roll(&reference, [1, -2, 0]).view())
                .unwrap();
            assert!(r.error.is_finite(), "{name} u={u}: {r:?}");
            let b_ref = b.set_reference(zeros.view(), &p).unwrap();
            let r = b.register(&b_ref, reference.view()).unwrap();
            assert!(
                r.shift == [0.0; 3] && r.error.is_nan(),
                "{name} u={u}: {r:?}"
            );
        }
    }
    let mut series = Array4::<f32>::zeros((4, shape[0], shape[1], shape[2]));
    for t in [0, 1, 3] {
        series
            .index_axis_mut(Axis(0), t)
            .assign(&roll(&reference, [t as isize, 0, 1]));
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = write_series(tmp.path(), &series);
    let cfg = RunConfig::new(vec![input.clone()], tmp.path().join("out.h5"));
    let report = run(&cfg, &mut CpuBackend::new()).unwrap();
    assert_eq!(report.empty_registrations(), vec![2]);
    // The CLI says so on stderr, even with -q.
    let out = crate::support::gpuprep_command()
        .args(["run", &input, "-o"])
        .arg(tmp.path().join("cli.h5"))
        .args(["--backend", "cpu", "-q"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: 1 timepoint(s) (2)") && err.contains("empty"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 7: the z-score with the f64 moments.

/// Distance of one float32 ulp at `x`.
fn ulp(x: f32) -> f64 {
    let a = x.abs();
    (f32::from_bits(a.to_bits() + 1) as f64) - a as f64
}

/// `ours` is `want` (an f64 z-score) to float32 rounding: within 1 ulp of `ours`, or relative 2^-23;
/// NaN exactly where `want` is NaN.
fn check_z(ctx: &str, ours: &Array3<f32>, want: ndarray::ArrayView3<f64>) {
    for ((i, &o), &w) in ours.indexed_iter().zip(want.iter()) {
        assert_eq!(o.is_nan(), w.is_nan(), "{ctx} at {i:?}: {o} vs {w}");
        if w.is_nan() {
            continue;
        }
        let d = (o as f64 - w).abs();
        let tol = ulp(o).max(w.abs() * 2f64.powi(-23));
        assert!(
            d <= tol,
            "{ctx} at {i:?}: {o} vs {w} (diff {d:e}, tolerance {tol:e})"
        );
    }
}

/// Runs the backend's two z-score passes over `series` and returns the z-scores.
fn zscore_with(b: &mut dyn Backend, series: &Array4<f32>, p: &ZscoreParams) -> Vec<Array3<f32>> {
    let (_, nz, ny, nx) = series.dim();
    let b_acc = b.reset_moments([nz, ny, nx]).unwrap();
    for v in series.outer_iter() {
        b.accumulate(&b_acc, v).unwrap();
    }
    let m = b.moments(&b_acc, p).unwrap();
    series
        .outer_iter()
        .map(|v| b.normalize(v, &m, p).unwrap())
        .collect()
}

#[test]
fn zscore_equals_scipy_in_float64_on_the_edge_fixture() {
    let file = hdf5::File::open(fixture("zscore_edge.h5"))
        .expect("tests/fixtures/zscore_edge.h5 (run scripts/make_zscore_fixture.py)");
    let mut names = file.member_names().unwrap();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    for (backend, mut b) in backends(256) {
        for name in &names {
            let g = file.group(name).unwrap();
            let p = ZscoreParams {
                ddof: attr_i64(&g, "ddof") as u32,
                constant: ConstantVoxels::Nan,
            };
            let input = ds4(&g, "input");
            let want = g
                .dataset("zscore")
                .unwrap()
                .read::<f64, ndarray::Ix4>()
                .unwrap();
            for (t, z) in zscore_with(b.as_mut(), &input, &p).iter().enumerate() {
                check_z(
                    &format!("{backend} {name} t={t}"),
                    z,
                    want.index_axis(Axis(0), t),
                );
            }
        }
    }
}

/// scipy 1.17's `zscore(x.astype(float64), axis=0, ddof)` written out: two-pass f64 mean and
/// standard deviation, then NaN where `std <= |eps_f64 · mean|` (`_stats_py.zmap`).
fn zscore_reference(series: &Array4<f32>, ddof: u32) -> Array4<f64> {
    let n = series.dim().0 as f64;
    let x = series.mapv(f64::from);
    let mean = x.mean_axis(Axis(0)).unwrap();
    let var = (&x - &mean).mapv(|d| d * d).sum_axis(Axis(0)) / (n - ddof as f64);
    let std = var.mapv(f64::sqrt);
    let mut z = (&x - &mean) / &std;
    for mut v in z.outer_iter_mut() {
        ndarray::Zip::from(&mut v)
            .and(&mean)
            .and(&std)
            .for_each(|z, &m, &s| {
                if s <= (f64::EPSILON * m).abs() {
                    *z = f64::NAN;
                }
            });
    }
    z
}

#[test]
fn zscore_equals_the_float64_reference_on_two_timepoints_and_large_means() {
    let seed = crate::support::fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let shape = (7, 9, 11);
    // (timepoints, mean, noise in float32 ulps of the mean, ddof)
    for (t, mean, ulps, ddof) in [
        (2, 500.0f32, 3.0f32, 0),
        (2, 1000.0, 40.0, 0),
        (3, 1e4, 1.5, 0),
        (5, 1000.0, 4.0, 1),
        (6, 0.0, 1e6, 0),
    ] {
        let step = ulp(mean.max(1e-30)) as f32 * ulps;
        let mut series = Array4::from_shape_fn((t, shape.0, shape.1, shape.2), |_| {
            mean + step * rng.random_range(-1.0f32..1.0)
        });
        // Exactly constant voxels, one of them where mean / std is largest.
        series.slice_mut(ndarray::s![.., 0, 0, ..3]).fill(mean);
        series.slice_mut(ndarray::s![.., 1, 2, 3]).fill(-7.25);
        let want = zscore_reference(&series, ddof);
        let p = ZscoreParams {
            ddof,
            constant: ConstantVoxels::Nan,
        };
        for (backend, mut b) in backends(256) {
            for (i, z) in zscore_with(b.as_mut(), &series, &p).iter().enumerate() {
                check_z(
                    &format!("{backend}: {t} timepoints at {mean} ± {ulps} ulp, ddof {ddof}, t={i}; seed {seed}"),
                    z,
                    want.index_axis(Axis(0), i),
                );
            }
        }
    }
}

#[test]
fn two_timepoints_give_exactly_plus_minus_one() {
    // Mean 1000.5 ulp-odd: its float32 rounding made these 0.5 and 1.5 (issue 8, item 7).
    let a = Array3::from_elem((2, 3, 4), 1000.0f32);
    let b = Array3::from_elem((2, 3, 4), 1000.0f32 + 3.0 * ulp(1000.0) as f32);
    let mut series = Array4::zeros((2, 2, 3, 4));
    series.index_axis_mut(Axis(0), 0).assign(&a);
    series.index_axis_mut(Axis(0), 1).assign(&b);
    for (backend, mut b) in backends(256) {
        let z = zscore_with(b.as_mut(), &series, &ZscoreParams::default());
        assert!(z[0].iter().all(|&v| v == -1.0), "{backend}: {:?}", z[0]);
        assert!(z[1].iter().all(|&v| v == 1.0), "{backend}: {:?}", z[1]);
    }
}
