//! Integration tests: the float32 z-score path (`shaders/zscore_f32.wgsl`, its CPU twin
//! `gpuprep_cpu::zscore_f32`). The twin against the f64 path (`gpuprep_core::zscore`) on the CPU,
//! where a naive float32 computation fails the same tolerance; the GPU kernel against the twin on
//! lavapipe (forced with `GpuBackend::set_zscore_path`, as lavapipe has f64); the whole pipeline with
//! the f32 path against the CPU backend; `GPUPREP_GPU_ZSCORE` through the CLI.

use crate::gpu::{gpu, synth_u16_input};
use crate::support::same_shifts_worst_data_diff;
use gpuprep_core::backend::Backend;
use gpuprep_core::params::{ConstantVoxels, ZscoreParams};
use gpuprep_core::zscore as z64;
use gpuprep_cpu::zscore_f32::{self as twin, Df};
use gpuprep_gpu::zscore_f32::{ZscoreChoice, ZscorePath};
use ndarray::Array3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The tolerance written in `zscore_f32.wgsl`: 2 ulp of the f32 result, plus 2^-36 of the
/// magnitudes that cancel in `x − mean`, relative to the std.
fn tol(x: f32, mean: f64, std: f64, z: f32) -> f64 {
    let a = z.abs();
    2.0 * (a.next_up() - a) as f64 + 2f64.powi(-36) * (x.abs() as f64 + mean.abs()) / std
}

/// The largest error of `got` against `want` in units of `tol` (> 1 fails); NaN in exactly one
/// of them is infinite.
fn worst(
    vols: &[Array3<f32>],
    got: &[Array3<f32>],
    want: &[Array3<f32>],
    mean: &Array3<f64>,
    std: &Array3<f64>,
) -> f64 {
    let mut w = 0.0f64;
    for ((v, g), r) in vols.iter().zip(got).zip(want) {
        for ((((&x, &a), &b), &m), &s) in v.iter().zip(g).zip(r).zip(mean).zip(std) {
            let e = match (a.is_nan(), b.is_nan()) {
                (true, true) => 0.0,
                (false, false) => (a as f64 - b as f64).abs() / tol(x, m, s, b),
                _ => f64::INFINITY,
            };
            w = w.max(e);
        }
    }
    w
}

/// A series of `t` volumes around `offset` with noise of `scale`, voxel 0 constant and, when
/// `nan`, voxel 1 NaN at the last timepoint.
fn series(
    rng: &mut StdRng,
    shape: [usize; 3],
    t: usize,
    offset: f32,
    scale: f32,
    nan: bool,
) -> Vec<Array3<f32>> {
    (0..t)
        .map(|k| {
            let mut v = Array3::from_shape_simple_fn(shape, || {
                offset + scale * rng.random_range(-1.0f32..1.0)
            });
            v[[0, 0, 0]] = offset + 0.5;
            if nan && k + 1 == t && v.len() > 1 {
                v.as_slice_mut().unwrap()[1] = f32::NAN;
            }
            v
        })
        .collect()
}

/// The f64 path: moments and z-scores.
fn f64_path(
    vols: &[Array3<f32>],
    p: &ZscoreParams,
) -> (gpuprep_core::backend::Moments, Vec<Array3<f32>>) {
    let mut acc = z64::Accumulator::new(dims(&vols[0]));
    vols.iter().for_each(|v| acc.add(v.view()));
    let m = acc.moments(p);
    let z = vols
        .iter()
        .map(|v| z64::normalize(v.view(), &m, p))
        .collect();
    (m, z)
}

/// The twin: double-float moments and z-scores.
fn twin_path(vols: &[Array3<f32>], p: &ZscoreParams) -> (Array3<Df>, Array3<Df>, Vec<Array3<f32>>) {
    let mut acc = twin::Accumulator::new(dims(&vols[0]));
    vols.iter().for_each(|v| acc.add(v.view()));
    let (mean, std) = acc.moments(p);
    let z = vols
        .iter()
        .map(|v| twin::normalize(v.view(), &mean, &std, p))
        .collect();
    (mean, std, z)
}

fn dims(v: &Array3<f32>) -> [usize; 3] {
    let (a, b, c) = v.dim();
    [a, b, c]
}

/// A naive float32 z-score: Σx and Σx² in f32, mean = Σx/n, var = Σx²/n − mean² (clamped at 0).
fn naive_f32(vols: &[Array3<f32>], p: &ZscoreParams) -> Vec<Array3<f32>> {
    let n = vols.len() as f32;
    let mut s = Array3::<f32>::zeros(vols[0].raw_dim());
    let mut q = s.clone();
    for v in vols {
        s += v;
        q += &(v * v);
    }
    let mean = &s / n;
    let var = (&q / n - &mean * &mean).mapv(|v| v.max(0.0)) * (n / (n - p.ddof as f32));
    let std = var.mapv(f32::sqrt);
    vols.iter().map(|v| (v - &mean) / &std).collect()
}

/// Welford in float32.
fn welford_f32(vols: &[Array3<f32>], p: &ZscoreParams) -> Vec<Array3<f32>> {
    let mut mean = Array3::<f32>::zeros(vols[0].raw_dim());
    let mut m2 = mean.clone();
    for (i, v) in vols.iter().enumerate() {
        let n = (i + 1) as f32;
        ndarray::Zip::from(&mut mean)
            .and(&mut m2)
            .and(v)
            .for_each(|m, m2, &x| {
                let d = x - *m;
                *m += d / n;
                *m2 += d * (x - *m);
            });
    }
    let dof = vols.len() as f32 - p.ddof as f32;
    let std = m2.mapv(|v| (v / dof).sqrt());
    vols.iter().map(|v| (v - &mean) / &std).collect()
}

fn to_f64(a: &Array3<Df>) -> Array3<f64> {
    a.mapv(twin::df_to_f64)
}

/// The moments' tolerance: mean and std `got` within 2^-40 of (|mean| + std) of `want`, NaN where
/// and only where `want` has NaN.
fn assert_moments_close(got: (f64, f64), want: (f64, f64), ctx: &str) {
    let ((a, s), (b, r)) = (got, want);
    assert!(
        a.is_nan() == b.is_nan() && s.is_nan() == r.is_nan(),
        "NaN moments: {ctx}"
    );
    if !b.is_nan() && !r.is_nan() {
        let scale = b.abs() + r;
        assert!(
            (a - b).abs() <= 2f64.powi(-40) * scale,
            "mean {a} vs {b}: {ctx}"
        );
        assert!(
            (s - r).abs() <= 2f64.powi(-40) * scale,
            "std {s} vs {r}: {ctx}"
        );
    }
}

/// TwoSum and TwoProduct of the twin are exact (checked in f64, where sums of operands at most 2^28
/// apart and all f32 products are exact): what the device self-test checks on the GPU.
#[test]
fn twin_primitives_are_exact() {
    let seed = crate::support::fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..200_000 {
        let e = rng.random_range(-20i32..20);
        let a = rng.random_range(-1.0f32..1.0) * 2f32.powi(e);
        let b = rng.random_range(-1.0f32..1.0) * 2f32.powi(e + rng.random_range(-26i32..=0));
        let [s, es] = twin::two_sum(a, b);
        assert_eq!(
            s as f64 + es as f64,
            a as f64 + b as f64,
            "TwoSum({a:e}, {b:e}); seed {seed}"
        );
        let [pr, ep] = twin::two_prod(a, b);
        assert_eq!(
            pr as f64 + ep as f64,
            a as f64 * b as f64,
            "TwoProduct({a:e}, {b:e}); seed {seed}"
        );
        assert_eq!(
            twin::df_to_f64(twin::df_from_f64(a as f64 * b as f64)),
            a as f64 * b as f64
        );
    }
}

/// The twin of the f32 path against the f64 path, within `tol`, on data where naive float32 fails
/// it: values 1e4 + noise of 0.05 and 1e6 + noise of 1 (the offset is ~2^18 times the noise), and
/// plain noise around 0. Constant voxels, NaN voxels and n <= ddof give the f64 path's values.
#[test]
fn twin_matches_the_f64_path_where_naive_float32_fails() {
    let seed = crate::support::fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let shape = [3, 5, 7];
    let (mut max_twin, mut min_naive) = (0.0f64, f64::INFINITY);
    for (offset, scale) in [(0.0f32, 1.0f32), (1e4, 0.05), (1e6, 1.0), (-3e3, 1e-3)] {
        for t in [1usize, 2, 37, 300] {
            for (ddof, constant) in [(0, ConstantVoxels::Nan), (1, ConstantVoxels::Zero)] {
                let p = ZscoreParams { ddof, constant };
                let ctx = format!("offset {offset} noise {scale} t {t} ddof {ddof}; seed {seed}");
                let vols = series(&mut rng, shape, t, offset, scale, true);
                let (m, want) = f64_path(&vols, &p);
                let (mean, std, got) = twin_path(&vols, &p);
                let (mean, std) = (to_f64(&mean), to_f64(&std));
                // The moments: 2^-40 of the mean's magnitude plus the std, relative.
                for ((a, b), (s, r)) in mean.iter().zip(m.mean64()).zip(std.iter().zip(m.std64())) {
                    assert_moments_close((*a, *s), (*b, *r), &ctx);
                }
                let m2 = gpuprep_core::backend::Moments::from_f64(mean.clone(), std.clone());
                assert_eq!(
                    m2.constant_voxels(),
                    m.constant_voxels(),
                    "constant voxels: {ctx}"
                );
                if t > ddof as usize {
                    assert!(m.constant_voxels() >= 1, "{ctx}");
                }
                let w = worst(&vols, &got, &want, m.mean64(), m.std64());
                assert!(w <= 1.0, "twin vs f64: {w} x tolerance: {ctx}");
                max_twin = max_twin.max(w);
                // A naive float32 z-score fails the tolerance by orders of magnitude once the offset
                // dwarfs the noise (and for t = 1, 2 every path is exact or constant).
                if offset.abs() >= 1e3 && t >= 37 {
                    let nv = worst(&vols, &naive_f32(&vols, &p), &want, m.mean64(), m.std64());
                    let wv = worst(&vols, &welford_f32(&vols, &p), &want, m.mean64(), m.std64());
                    assert!(
                        nv > 100.0 && wv > 100.0,
                        "naive {nv}, Welford {wv} x tolerance: {ctx}"
                    );
                    min_naive = min_naive.min(nv.min(wv));
                }
            }
        }
    }
    eprintln!("twin vs f64: worst {max_twin:.3} x tolerance; naive f32 at best {min_naive:.3e} x");
}

/// The GPU's f32 path (forced on lavapipe) against the twin: moments, z-scores, constant and NaN
/// voxels, odd and prime shapes, t = 1, 2, 37, ddof 0 and 1, large offsets.
#[test]
fn gpu_f32_path_matches_its_twin() {
    let Some(mut g) = gpu() else { return };
    g.set_zscore_path(ZscoreChoice::Forced(ZscorePath::F32))
        .unwrap();
    assert_eq!(g.zscore_path(), ZscorePath::F32);
    // The self-test passed (else forcing f32 fails). Without the guard against reassociation it
    // fails on lavapipe (Mesa rewrites (a + b) - a to b): the test can tell the difference.
    let unguarded = gpuprep_gpu::zscore_f32::self_test_unguarded(g.context()).unwrap();
    eprintln!("self-test without the guard: {unguarded:?}");
    if g.describe().contains("llvmpipe") {
        assert!(
            unguarded.is_some(),
            "lavapipe kept TwoSum exact without the guard"
        );
    }
    assert!(g.describe().contains("z-score float32"), "{}", g.describe());
    let seed = crate::support::fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut identical = (0usize, 0usize);
    let mut max_gpu = 0.0f64;
    for shape in [[7, 9, 11], [1, 13, 17], [5, 3, 2]] {
        for t in [1usize, 2, 37] {
            for (offset, scale) in [(0.0f32, 1.0f32), (1e4, 0.05)] {
                for (ddof, constant) in [(0, ConstantVoxels::Nan), (1, ConstantVoxels::Zero)] {
                    let p = ZscoreParams { ddof, constant };
                    let ctx =
                        format!("shape {shape:?} t {t} offset {offset} ddof {ddof}; seed {seed}");
                    let vols = series(&mut rng, shape, t, offset, scale, true);
                    let acc = g.reset_moments(shape).unwrap();
                    vols.iter()
                        .for_each(|v| g.accumulate(&acc, v.view()).unwrap());
                    let mg = g.moments(&acc, &p).unwrap();
                    let (mean, std, want) = twin_path(&vols, &p);
                    let (mean, std) = (to_f64(&mean), to_f64(&std));
                    let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
                    for ((a, b), (s, r)) in mg
                        .mean64()
                        .iter()
                        .zip(&mean)
                        .zip(mg.std64().iter().zip(&std))
                    {
                        assert_moments_close((*a, *s), (*b, *r), &ctx);
                        identical.0 += (same(*a, *b) && same(*s, *r)) as usize;
                        identical.1 += 1;
                    }
                    let (m64, _) = f64_path(&vols, &p);
                    assert_eq!(
                        mg.constant_voxels(),
                        m64.constant_voxels(),
                        "constant voxels: {ctx}"
                    );
                    // With the GPU's own moments (kept on the device) and with moments given as f64
                    // (uploaded as double-floats).
                    let got: Vec<_> = vols
                        .iter()
                        .map(|v| g.normalize(v.view(), &mg, &p).unwrap())
                        .collect();
                    let w = worst(&vols, &got, &want, &mean, &std);
                    assert!(w <= 1.0, "GPU vs twin z: {w} x tolerance: {ctx}");
                    max_gpu = max_gpu.max(w);
                    let given = gpuprep_core::backend::Moments::from_f64(mean.clone(), std.clone());
                    let got: Vec<_> = vols
                        .iter()
                        .map(|v| g.normalize(v.view(), &given, &p).unwrap())
                        .collect();
                    let w = worst(&vols, &got, &want, &mean, &std);
                    assert!(
                        w <= 1.0,
                        "GPU (given moments) vs twin z: {w} x tolerance: {ctx}"
                    );
                }
            }
        }
    }
    eprintln!(
        "moments bit-identical to the twin: {} of {}; z worst {max_gpu:.3} x tolerance",
        identical.0, identical.1
    );
}

/// The whole pipeline on the GPU with the f32 z-score (pass 2 through the scratch file, so the
/// backend normalizes) against the CPU backend, with `cli::gpu_and_cpu_backends_write_the_same_file`'s
/// tolerance; the output's `backend` attribute names the path.
#[test]
fn whole_pipeline_with_the_f32_zscore_matches_cpu() {
    use gpuprep_cpu::CpuBackend;
    use gpuprep_pipeline::driver::{run, RunConfig};
    let Some(mut g) = gpu() else { return };
    g.set_zscore_path(ZscoreChoice::Forced(ZscorePath::F32))
        .unwrap();
    let (tmp, input) = synth_u16_input([6, 9, 12, 31], 7);
    let cfg = |name: &str| RunConfig {
        memory_budget: Some(0),
        ..RunConfig::new(input.clone(), tmp.path().join(name))
    };
    run(&cfg("gpu.h5"), &mut g).unwrap();
    run(&cfg("cpu.h5"), &mut CpuBackend::new()).unwrap();
    let worst = same_shifts_worst_data_diff(&tmp.path().join("cpu.h5"), &tmp.path().join("gpu.h5"));
    assert!(
        worst < 1e-3,
        "GPU (f32 z-score) and CPU outputs differ by {worst}"
    );
    let f = hdf5::File::open(tmp.path().join("gpu.h5")).unwrap();
    let backend = crate::support::attr_str(&f, "backend");
    assert!(backend.contains("z-score float32"), "{backend}");
}

/// `GPUPREP_GPU_ZSCORE` through the CLI: `f32` runs (and says so in the output), a bad value is one
/// clear error line naming the variable.
#[test]
fn the_environment_variable_forces_the_path() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data").display().to_string();
    let out = tmp.path().join("out.h5").display().to_string();
    let (code, _, err) = crate::support::gpuprep_output(&["synth", &data, "--shape", "3,4,6,5"]);
    assert_eq!(code, 0, "{err}");
    let run = |v: &str| {
        let o = crate::support::gpuprep_command()
            .env("GPUPREP_GPU_ZSCORE", v)
            .args([
                "run",
                &data,
                "-o",
                &out,
                "--backend",
                "gpu",
                "--gpu-api",
                "vulkan",
                "-q",
                "--force",
            ])
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run("f32");
    assert_eq!(code, 0, "{err}");
    let f = hdf5::File::open(&out).unwrap();
    let backend = crate::support::attr_str(&f, "backend");
    assert!(
        backend.contains("z-score float32") && backend.contains("GPUPREP_GPU_ZSCORE"),
        "{backend}"
    );
    drop(f);
    let (code, err) = run("f16");
    assert_ne!(code, 0);
    assert!(
        err.contains("GPUPREP_GPU_ZSCORE") && err.contains("\"f16\""),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A bad `GPUPREP_GPU_ZSCORE` is the user's mistake, not a missing GPU: under `--backend auto` too it
/// stops the run with one line naming the variable, rather than falling back to the CPU as if no
/// adapter were there (no GPU needed: the variable is read before any adapter is opened).
#[test]
fn a_bad_zscore_variable_stops_an_auto_run_too() {
    crate::support::assert_bad_env_stops_an_auto_run("GPUPREP_GPU_ZSCORE", "f16");
}

/// The f32 path has no tiled route: a volume whose double-float sums exceed the tile limit takes the
/// CPU twin (f64), whose results are the CPU backend's bit for bit.
#[test]
fn f32_path_over_the_tile_limit_takes_the_cpu_twin() {
    use gpuprep_cpu::CpuBackend;
    let Some(mut g) = gpu() else { return };
    g.set_zscore_path(ZscoreChoice::Forced(ZscorePath::F32))
        .unwrap();
    let shape = [5, 7, 9];
    g.set_max_tile_bytes(256);
    let seed = crate::support::fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let vols = series(&mut rng, shape, 4, 1e4, 0.05, true);
    let p = ZscoreParams::default();
    let mut c = CpuBackend::new();
    let (ga, ca) = (
        g.reset_moments(shape).unwrap(),
        c.reset_moments(shape).unwrap(),
    );
    let before = g.counters();
    for v in &vols {
        g.accumulate(&ga, v.view()).unwrap();
        c.accumulate(&ca, v.view()).unwrap();
    }
    let (mg, mc) = (g.moments(&ga, &p).unwrap(), c.moments(&ca, &p).unwrap());
    for v in &vols {
        let (zg, zc) = (
            g.normalize(v.view(), &mg, &p).unwrap(),
            c.normalize(v.view(), &mc, &p).unwrap(),
        );
        assert!(
            zg.iter()
                .zip(zc.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "seed {seed}"
        );
    }
    assert_eq!(
        g.counters().dispatches,
        before.dispatches,
        "nothing ran on the device"
    );
}

/// `GPUPREP_GPU_ZSCORE`'s values.
#[test]
fn zscore_choices_parse() {
    for (v, want) in [
        ("", ZscoreChoice::Auto),
        ("auto", ZscoreChoice::Auto),
        ("F32", ZscoreChoice::Forced(ZscorePath::F32)),
        (" f64 ", ZscoreChoice::Forced(ZscorePath::F64)),
        ("cpu", ZscoreChoice::Forced(ZscorePath::Cpu)),
    ] {
        assert_eq!(ZscoreChoice::parse(v).unwrap(), want, "{v:?}");
    }
    let e = ZscoreChoice::parse("fp32").unwrap_err().to_string();
    assert!(
        e.contains("GPUPREP_GPU_ZSCORE") && e.contains("fp32"),
        "{e}"
    );
}
