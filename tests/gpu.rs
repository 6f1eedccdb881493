//! Integration tests: gpu. Each kernel and the whole `process_frame` chain on the GPU against the CPU
//! path, on fresh random inputs (the seed is printed in every failure message; set GPUPREP_SEED to
//! replay one), odd and non-power-of-two shapes, every mode and order.
//!
//! The tests ask for the Vulkan backend and assert they got it (wgpu silently falls back to GL). With
//! no Vulkan adapter they fail when GPUPREP_REQUIRE_GPU=1 (CI, with lavapipe) and otherwise print
//! `SKIPPED: no Vulkan adapter` and pass.

use crate::support::same_shifts_worst_data_diff;
use gpuprep_core::backend::{Backend, FramePlan};
use gpuprep_core::params::*;
use gpuprep_cpu::{self as cpu, CpuBackend};
use gpuprep_gpu::{Api, GpuBackend};
use ndarray::{Array3, ArrayView3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seed() -> u64 {
    crate::support::fresh_seed()
}

/// The API under test: Vulkan, unless GPUPREP_TEST_API names another (e.g. `gl`, to run this
/// suite on wgpu's OpenGL backend by hand).
fn api() -> (Api, wgpu::Backend) {
    match std::env::var("GPUPREP_TEST_API").as_deref() {
        Ok("gl") => (Api::Gl, wgpu::Backend::Gl),
        Ok("metal") => (Api::Metal, wgpu::Backend::Metal),
        Ok("dx12") => (Api::Dx12, wgpu::Backend::Dx12),
        _ => (Api::Vulkan, wgpu::Backend::Vulkan),
    }
}

/// The GPU backend on Vulkan (see `api`), or `None` (test skipped) when there is none and CI does
/// not require one.
pub(crate) fn gpu() -> Option<GpuBackend> {
    let (api, backend) = api();
    match GpuBackend::new(api) {
        Ok(g) => {
            assert_eq!(
                g.adapter_backend(),
                backend,
                "asked for {api}, got {}",
                g.describe()
            );
            Some(g)
        }
        Err(e) => {
            if std::env::var("GPUPREP_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("GPUPREP_REQUIRE_GPU=1 but no Vulkan adapter: {e}");
            }
            eprintln!("SKIPPED: no Vulkan adapter ({e})");
            None
        }
    }
}

fn random(rng: &mut StdRng, shape: [usize; 3]) -> Array3<f32> {
    Array3::from_shape_simple_fn(shape, || rng.random::<f32>())
}

/// A smooth random volume (sum of a few blobs + noise) that registration can lock on to.
fn blobs(rng: &mut StdRng, shape: [usize; 3]) -> Array3<f32> {
    let centers: Vec<([f32; 3], f32)> = (0..6)
        .map(|_| {
            (
                [0, 1, 2].map(|a| rng.random::<f32>() * shape[a] as f32),
                1.0 + rng.random::<f32>() * 2.0,
            )
        })
        .collect();
    let mut v = Array3::from_shape_fn(shape, |(z, y, x)| {
        centers
            .iter()
            .map(|(c, s)| {
                let d2 = (z as f32 - c[0]).powi(2)
                    + (y as f32 - c[1]).powi(2)
                    + (x as f32 - c[2]).powi(2);
                (-d2 / (2.0 * s * s)).exp()
            })
            .sum::<f32>()
    });
    v.mapv_inplace(|x| x + 0.05 * rng.random::<f32>());
    v
}

/// `np.roll(v, s)`.
fn roll(v: ArrayView3<f32>, s: [i64; 3]) -> Array3<f32> {
    let (nz, ny, nx) = v.dim();
    let n = [nz as i64, ny as i64, nx as i64];
    Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
        let src = [z as i64 - s[0], y as i64 - s[1], x as i64 - s[2]];
        let i = [0, 1, 2].map(|a| src[a].rem_euclid(n[a]) as usize);
        v[i]
    })
}

/// Largest |a - b| (NaN where exactly one is NaN counts as infinite).
/// A realistic uint16 series with integer shifts in a fresh temporary directory, and the input
/// argument naming it, for whole-pipeline runs.
pub(crate) fn synth_u16_input(shape: [usize; 4], seed: u64) -> (tempfile::TempDir, Vec<String>) {
    use gpuprep_io::Dtype;
    use gpuprep_pipeline::synth::{synth, SynthLayout, SynthMode, SynthSpec};
    let tmp = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        shape,
        mode: SynthMode::Realistic,
        layout: SynthLayout::Files,
        max_shift: 2.0,
        subpixel: false,
        noise: 0.02,
        seed,
        dtype: Dtype::U16,
    };
    synth(&tmp.path().join("in"), &spec, false).unwrap();
    let input = vec![tmp.path().join("in").display().to_string()];
    (tmp, input)
}

fn max_diff(a: &Array3<f32>, b: &Array3<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| match (x.is_nan(), y.is_nan()) {
            (true, true) => 0.0,
            (false, false) => (x - y).abs(),
            _ => f32::INFINITY,
        })
        .fold(0.0, f32::max)
}

const SHAPES: [[usize; 3]; 4] = [[7, 9, 11], [5, 13, 6], [1, 9, 10], [12, 10, 8]];

#[test]
fn median_matches_cpu_exactly() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for shape in SHAPES {
        for mode in BoundaryMode::ALL {
            // Each route: 3x3x3, 1x3x3, the selection network of windows up to 27 elements
            // (1x3x5 ... 1x1x1), Wirth's selection (5x5x5).
            let sizes = [
                [3, 3, 3],
                [1, 3, 3],
                [1, 3, 5],
                [1, 1, 3],
                [3, 1, 1],
                [3, 3, 1],
                [1, 5, 5],
                [1, 3, 9],
                [1, 1, 1],
                [5, 5, 5],
            ];
            for size in sizes {
                let size = [0, 1, 2].map(|a| if shape[a] < size[a] { 1 } else { size[a] });
                let p = MedianParams::new(size, mode, rng.random::<f32>()).unwrap();
                let mut v = random(&mut rng, shape);
                // Ties, both zeros and NaNs of both signs (the negative one with every bit set,
                // the lowest key of the total order), to exercise the total order.
                v[[0, 0, 0]] = -0.0;
                v[[0, 0, 1]] = 0.0;
                v[[0, 1, 0]] = v[[0, 0, 2]];
                v[[0, 1, 1]] = f32::from_bits(u32::MAX);
                v[[0, 2, 2]] = f32::NAN;
                let want = cpu::median3d::median3d(v.view(), &p);
                let got = g.median3d(v.view(), &p).unwrap();
                let same = want
                    .iter()
                    .zip(got.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "median differs: shape {shape:?} size {size:?} mode {mode}; seed {seed}"
                );
            }
        }
    }
    // The 3x3x3 entry point (16x4 output tiles per workgroup: shapes of several tiles, partial ones
    // and exact multiples) and the 1x3x3 one, on tie-heavy input (values from a set of 4, both zeros
    // among them) and on random values.
    for shape in [
        [3, 3, 3],
        [4, 5, 67],
        [9, 3, 5],
        [2, 9, 33],
        [3, 8, 16],
        [1, 1, 2],
    ] {
        for (mode, ties, size) in BoundaryMode::ALL.into_iter().flat_map(|m| {
            [
                (m, true, [3, 3, 3]),
                (m, false, [3, 3, 3]),
                (m, true, [1, 3, 3]),
                (m, false, [1, 3, 3]),
            ]
        }) {
            let p = MedianParams::new(size, mode, -0.0).unwrap();
            let v = random(&mut rng, shape);
            let v = if ties {
                v.mapv(|x| [-0.0, 0.0, 1.5, -2.0][(x * 4.0) as usize % 4])
            } else {
                v
            };
            let want = cpu::median3d::median3d(v.view(), &p);
            let got = g.median3d(v.view(), &p).unwrap();
            assert!(
                want.iter()
                    .zip(got.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{size:?} median differs (ties: {ties}): shape {shape:?} mode {mode}; seed {seed}"
            );
        }
    }
    // Largest window class (7x7x7 = 343 elements).
    let v = random(&mut rng, [8, 9, 10]);
    let p = MedianParams::new([7, 7, 7], BoundaryMode::Reflect, 0.0).unwrap();
    assert_eq!(
        g.median3d(v.view(), &p).unwrap(),
        cpu::median3d::median3d(v.view(), &p),
        "7x7x7; seed {seed}"
    );
    // Too large a window is a clear error, not a crash.
    let p = MedianParams::new([13, 13, 13], BoundaryMode::Reflect, 0.0).unwrap();
    let big = random(&mut rng, [13, 13, 13]);
    let err = g.median3d(big.view(), &p).unwrap_err().to_string();
    assert!(err.contains("at most"), "{err}");
}

fn same_bits(a: &Array3<f32>, b: &Array3<f32>) -> bool {
    a.shape() == b.shape()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Issue 8, item 14: windows longer than the axis (scipy extends periodically), on short and prime
/// shapes, every mode, bit for bit with the CPU; the 3x3x3 entry point included (z = 1).
#[test]
fn median_windows_longer_than_the_axis_match_cpu() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = CpuBackend::new();
    for shape in [[1, 7, 5], [2, 3, 11], [1, 1, 13], [3, 2, 1], [1, 12, 13]] {
        let sizes = [
            [3, 3, 3],
            [5, 5, 5],
            [1, 5, 15],
            [15, 5, 15],
            [5, 15, 3],
            [1, 1, 27],
            [27, 1, 1],
            [3, 9, 1],
        ];
        for size in sizes {
            for mode in BoundaryMode::ALL {
                let p = MedianParams::new(size, mode, rng.random::<f32>() - 0.5).unwrap();
                let mut v = random(&mut rng, shape);
                v[[0, 0, 0]] = -0.0;
                let want = c.median3d(v.view(), &p).unwrap();
                let got = g.median3d(v.view(), &p).unwrap();
                assert!(
                    same_bits(&got, &want),
                    "median differs: shape {shape:?} size {size:?} mode {mode}; seed {seed}"
                );
            }
        }
    }
}

/// The GPU against scipy's own outputs (tests/fixtures/golden.h5), windows longer than an axis
/// included.
#[test]
fn median_matches_scipy_fixtures() {
    use crate::support::*;
    let Some(mut g) = gpu() else { return };
    for (name, case) in Golden::open().cases("median") {
        let size = attr_vec_i64(&case, "size")
            .iter()
            .map(|&s| s as usize)
            .collect::<Vec<_>>();
        let p = MedianParams::new(
            [size[0], size[1], size[2]],
            attr_str(&case, "mode").parse().unwrap(),
            attr_f64(&case, "cval") as f32,
        )
        .unwrap();
        let got = g
            .median3d(ds3(&case, "input").view(), &p)
            .unwrap_or_else(|e| panic!("{name} ({p:?}): {e}"));
        assert!(same_bits(&got, &ds3(&case, "output")), "{name} ({p:?})");
    }
}

#[test]
fn fft_matches_cpu() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // Stockham radices 2, 3, 4, 5, 7, 8 (64 = 8·8, 16 = 8·2); Bluestein for 11, 13, 101, 37, 53, 61,
    // 601 (padded to 1215: longer than one pass holds) and 7 lines per workgroup's share that
    // leave a partial last group (lines of 11 padded to 21). Lines of 2048 are too long for one
    // pass; 512 take two lines a workgroup.
    let shapes = [
        [3, 64, 16],
        [7, 9, 11],
        [5, 13, 6],
        [1, 9, 10],
        [12, 10, 8],
        [1, 1, 101],
        [4, 49, 25],
        [37, 53, 61],
        [1, 2, 601],
        [1, 3, 2048],
        [3, 512, 2],
    ];
    for one_pass in [true, false] {
        g.context().set_fft_one_pass(one_pass);
        for shape in shapes {
            let route = g.fft3_route(shape).unwrap();
            // Every axis that one pass holds takes it, and only when asked.
            let fits =
                |n: usize| n > 1 && gpuprep_gpu::fft::line_work(n) <= gpuprep_gpu::fft::WG_HALF;
            let want_one_pass = one_pass && shape.iter().any(|&n| fits(n));
            assert_eq!(
                route.contains("one pass"),
                want_one_pass,
                "{shape:?} one pass {one_pass}: {route}"
            );
            assert_eq!(
                route.matches("one pass").count(),
                if one_pass {
                    shape.iter().filter(|&&n| fits(n)).count()
                } else {
                    0
                },
                "{shape:?}: {route}"
            );
            let data = Array3::from_shape_simple_fn(shape, || {
                cpu::fft::C32::new(rng.random::<f32>() - 0.5, rng.random::<f32>() - 0.5)
            });
            let fft = cpu::fft::Fft3::new(shape);
            for inverse in [false, true] {
                let mut want = data.clone();
                if inverse {
                    fft.inverse(&mut want);
                } else {
                    fft.forward(&mut want);
                }
                let got = g.fft3(&data, inverse).unwrap();
                let n = data.len() as f32;
                // Tolerance of fft.wgsl: 1e-5 * sqrt(N) * max|x| (forward; the inverse is 1/N of that).
                let tol = 1e-5 * n.sqrt() * 0.71 * if inverse { 1.0 / n } else { 1.0 };
                let err = want
                    .iter()
                    .zip(got.iter())
                    .map(|(a, b)| (a - b).norm())
                    .fold(0.0, f32::max);
                eprintln!("fft {shape:?} {route} inverse {inverse}: max error {err:.3e} (tolerance {tol:.3e})");
                assert!(
                    err <= tol,
                    "fft shape {shape:?} ({route}) inverse {inverse}: max error {err} > {tol}; seed {seed}"
                );
            }
        }
    }
    g.context().set_fft_one_pass(true);
}

#[test]
fn shift_matches_cpu() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // Lines long enough (41, 53, 67, 97: primes) that the operator rows are the prefilter's
    // truncated band (about 38 weights), not the whole line.
    for shape in SHAPES.into_iter().chain([[41, 3, 97], [2, 53, 67]]) {
        for mode in BoundaryMode::ALL {
            for order in [0, 1, 3] {
                let v = random(&mut rng, shape);
                let s = [0, 1, 2].map(|_| (rng.random::<f64>() - 0.5) * 6.0);
                let p = ShiftParams::new(order, mode, rng.random::<f32>()).unwrap();
                let want = cpu::shift::shift3d(v.view(), s, &p);
                let got = g.shift(v.view(), s, &p).unwrap();
                // Tolerance of shift.wgsl: 1e-5 * (1 + max|x|) for order 3, 2e-6 for orders 0, 1.
                let tol = if order == 3 { 1e-5 * 2.0 } else { 2e-6 };
                let err = max_diff(&want, &got);
                eprintln!("shift {shape:?} order {order} {mode}: max error {err:.3e}");
                assert!(
                    err <= tol,
                    "shift {s:?} shape {shape:?} order {order} mode {mode}: max error {err} > {tol}; seed {seed}"
                );
            }
        }
    }
}

#[test]
fn zscore_matches_cpu() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = CpuBackend::new();
    for shape in [[7, 9, 11], [1, 9, 10]] {
        for (ddof, constant) in [(0, ConstantVoxels::Nan), (1, ConstantVoxels::Zero)] {
            let p = ZscoreParams { ddof, constant };
            let vols: Vec<Array3<f32>> = (0..6)
                .map(|_| {
                    let mut v = random(&mut rng, shape) * 10.0 + 100.0;
                    v[[0, 0, 0]] = 5.0; // a constant voxel
                    v
                })
                .collect();
            let g_acc = g.reset_moments(shape).unwrap();
            let c_acc = c.reset_moments(shape).unwrap();
            for v in &vols {
                g.accumulate(&g_acc, v.view()).unwrap();
                c.accumulate(&c_acc, v.view()).unwrap();
            }
            let mg = g.moments(&g_acc, &p).unwrap();
            let mc = c.moments(&c_acc, &p).unwrap();
            // Tolerance of zscore.wgsl: mean and std within 1 ulp (relative 2.4e-7), z within 2 ulp.
            let rel = |a: &Array3<f32>, b: &Array3<f32>| {
                a.iter()
                    .zip(b.iter())
                    .map(|(x, y)| {
                        if x.is_nan() && y.is_nan() {
                            0.0
                        } else {
                            (x - y).abs() / y.abs().max(1e-30)
                        }
                    })
                    .fold(0.0, f32::max)
            };
            assert!(rel(mg.mean(), mc.mean()) <= 2.4e-7, "mean; seed {seed}");
            assert!(rel(mg.std(), mc.std()) <= 2.4e-7, "std; seed {seed}");
            assert_eq!(
                mg.constant_voxels(),
                mc.constant_voxels(),
                "constant voxels; seed {seed}"
            );
            for v in &vols {
                let zg = g.normalize(v.view(), &mc, &p).unwrap();
                let zc = c.normalize(v.view(), &mc, &p).unwrap();
                let err = max_diff(&zg, &zc);
                assert!(
                    err <= 5e-7 * 4.0,
                    "zscore shape {shape:?} ddof {ddof}: error {err}; seed {seed}"
                );
                let nan_g = zg.iter().filter(|x| x.is_nan()).count();
                let nan_c = zc.iter().filter(|x| x.is_nan()).count();
                assert_eq!(nan_g, nan_c, "NaN count; seed {seed}");
                // The GPU's own moments stay on the device (`MomentsKey`): same result as
                // the CPU normalizing with those moments.
                let zr = g.normalize(v.view(), &mg, &p).unwrap();
                let zw = c.normalize(v.view(), &mg, &p).unwrap();
                let err = max_diff(&zr, &zw);
                assert!(
                    err <= 5e-7 * 4.0,
                    "resident moments: error {err}; seed {seed}"
                );
            }
        }
    }
}

#[test]
fn registration_matches_cpu() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = CpuBackend::new();
    // One pass per FFT axis (z, cross-power and inverse z fused where z is a Stockham length:
    // not 1, not 11; the first pass reading the real volume where its axis is a Stockham length:
    // odd volumes [5, 9, 7] and [9, 7, 1] included) and one pass per stage (the fused route off).
    let shapes = [
        [7, 9, 11],
        [5, 13, 6],
        [1, 9, 10],
        [12, 10, 8],
        [11, 16, 17],
        [5, 9, 7],
        [9, 7, 1],
    ];
    for (one_pass, shape) in [true, false]
        .into_iter()
        .flat_map(|o| shapes.map(|s| (o, s)))
    {
        g.context().set_fft_one_pass(one_pass);
        for normalization in [Normalization::Phase, Normalization::None] {
            let reference = blobs(&mut rng, shape);
            let s = [0, 1, 2].map(|a| {
                if shape[a] == 1 {
                    0
                } else {
                    rng.random_range(-2i64..=2)
                }
            });
            let mut moving = roll(reference.view(), s);
            moving.mapv_inplace(|x| x + 0.01 * rng.random::<f32>());
            // Integer registration: identical shifts.
            let p = RegisterParams::new(1, normalization).unwrap();
            let g_ref = g.set_reference(reference.view(), &p).unwrap();
            let c_ref = c.set_reference(reference.view(), &p).unwrap();
            let rg = g.register(&g_ref, moving.view()).unwrap();
            let rc = c.register(&c_ref, moving.view()).unwrap();
            assert_eq!(
                rg.shift, rc.shift,
                "integer shift, shape {shape:?} {normalization} one pass {one_pass}; seed {seed}"
            );
            assert!(
                (rg.error - rc.error).abs() <= 1e-3,
                "error {} vs {}; seed {seed}",
                rg.error,
                rc.error
            );
            let dphase = (rg.phasediff - rc.phasediff).abs();
            assert!(
                dphase <= 1e-3 || (dphase - 2.0 * std::f64::consts::PI).abs() <= 1e-3,
                "phasediff; seed {seed}"
            );
            // Sub-pixel: within 1/u of the CPU.
            let p = RegisterParams::new(10, normalization).unwrap();
            let sub = cpu::shift::shift3d(
                reference.view(),
                [0, 1, 2].map(|a| {
                    if shape[a] == 1 {
                        0.0
                    } else {
                        rng.random::<f64>() * 3.0 - 1.5
                    }
                }),
                &ShiftParams::new(3, BoundaryMode::Wrap, 0.0).unwrap(),
            );
            let g_ref = g.set_reference(reference.view(), &p).unwrap();
            let c_ref = c.set_reference(reference.view(), &p).unwrap();
            let rg = g.register(&g_ref, sub.view()).unwrap();
            let rc = c.register(&c_ref, sub.view()).unwrap();
            eprintln!(
                "register {shape:?} {normalization} u=10: gpu {:?} cpu {:?}",
                rg.shift, rc.shift
            );
            for a in 0..3 {
                assert!(
                    (rg.shift[a] - rc.shift[a]).abs() <= 1.0 / 10.0 + 1e-9,
                    "sub-pixel shift {:?} vs {:?}, shape {shape:?} {normalization} one pass {one_pass}; seed {seed}",
                    rg.shift,
                    rc.shift
                );
            }
        }
    }
    g.context().set_fft_one_pass(true);
}

#[test]
fn process_frame_matches_cpu() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = CpuBackend::new();
    for shape in [[7, 9, 11], [12, 10, 8]] {
        for (median, register_on_raw, order, mode) in [
            (Some([3, 3, 3]), false, 3, BoundaryMode::Constant),
            (Some([1, 3, 3]), true, 1, BoundaryMode::Nearest),
            (None, false, 0, BoundaryMode::Wrap),
        ] {
            let plan = FramePlan {
                median: median.map(|s| MedianParams::new(s, BoundaryMode::Reflect, 0.0).unwrap()),
                register: None,
                register_on_raw,
                shift: ShiftParams::new(order, mode, 0.0).unwrap(),
                accumulate: None,
                keep_filtered: true,
            };
            let reference = blobs(&mut rng, shape);
            let rp = RegisterParams::default();
            let g_ref = g.set_reference(reference.view(), &rp).unwrap();
            let c_ref = c.set_reference(reference.view(), &rp).unwrap();
            let g_acc = g.reset_moments(shape).unwrap();
            let c_acc = c.reset_moments(shape).unwrap();
            let with = |r, a| FramePlan {
                register: Some(r),
                accumulate: Some(a),
                ..plan
            };
            let (gplan, cplan) = (with(g_ref, g_acc), with(c_ref, c_acc));
            for t in 0..3 {
                let s = [
                    rng.random_range(-2i64..=2),
                    rng.random_range(-2i64..=2),
                    rng.random_range(-2i64..=2),
                ];
                let mut raw = roll(reference.view(), s);
                raw.mapv_inplace(|x| x + 0.01 * rng.random::<f32>());
                let og = g.process_frame(raw.view(), &gplan).unwrap();
                let oc = c.process_frame(raw.view(), &cplan).unwrap();
                let ctx = format!("shape {shape:?} t {t} plan {plan:?}; seed {seed}");
                assert_eq!(
                    og.registration.unwrap().shift,
                    oc.registration.unwrap().shift,
                    "{ctx}"
                );
                assert_eq!(og.filtered.is_some(), oc.filtered.is_some(), "{ctx}");
                if let (Some(a), Some(b)) = (&og.filtered, &oc.filtered) {
                    assert_eq!(a, b, "filtered volume: {ctx}");
                }
                let err = max_diff(&og.volume, &oc.volume);
                assert!(err <= 2e-5 * 3.0, "volume error {err}: {ctx}");
            }
            let p = ZscoreParams::default();
            let mg = g.moments(&g_acc, &p).unwrap();
            let mc = c.moments(&c_acc, &p).unwrap();
            assert!(max_diff(mg.mean(), mc.mean()) <= 1e-5, "mean; seed {seed}");
            assert!(max_diff(mg.std(), mc.std()) <= 1e-5, "std; seed {seed}");
        }
    }
}

#[test]
fn backend_describes_device_and_errors_cleanly() {
    let Some(mut g) = gpu() else { return };
    let d = g.describe();
    // lavapipe / llvmpipe are software adapters.
    assert_eq!(g.is_software(), d.contains("llvmpipe"), "{d}");
    assert!(
        d.starts_with("gpu: ") && d.contains(&format!("{:?}", api().1)),
        "{d}"
    );
    // A handle this backend did not issue (here the CPU backend's) is an error, not a panic.
    let v = Array3::<f32>::zeros((3, 4, 5));
    let mut c = CpuBackend::new();
    let c_ref = c
        .set_reference(v.view(), &RegisterParams::default())
        .unwrap();
    let c_acc = c.reset_moments([3, 4, 5]).unwrap();
    assert!(g.register(&c_ref, v.view()).is_err());
    assert!(g.accumulate(&c_acc, v.view()).is_err());
    // Adapters are listed for `gpuprep info`.
    let list = gpuprep_gpu::list_adapters(api().0);
    let want = format!("{:?}", api().1);
    assert!(
        !list.is_empty() && list.iter().all(|a| a.backend == want),
        "{list:?}"
    );
    assert!("vulkan".parse::<Api>().unwrap() == Api::Vulkan && "bogus".parse::<Api>().is_err());
}

#[test]
fn dispatches_over_65535_workgroups_are_split() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // 1 x 2049 x 2048 voxels = 65,568 workgroups of 64 along one dimension before splitting.
    let shape = [1, 2049, 2048];
    assert!(gpuprep_gpu::device::split_groups(65_568) == (32_784, 2));
    let v = random(&mut rng, shape);
    let p = ShiftParams::new(1, BoundaryMode::Nearest, 0.0).unwrap();
    let s = [0.0, 0.25, -0.5];
    let err = max_diff(
        &g.shift(v.view(), s, &p).unwrap(),
        &cpu::shift::shift3d(v.view(), s, &p),
    );
    assert!(err <= 2e-6, "split dispatch: error {err}; seed {seed}");
    // The 3x3x3 median's workgroups are 16x4 output tiles: 513 x 128 = 65,664 of them here.
    let p = MedianParams::default();
    assert!(
        same_bits(
            &g.median3d(v.view(), &p).unwrap(),
            &cpu::median3d::median3d(v.view(), &p)
        ),
        "split median dispatch differs; seed {seed}"
    );
}

#[test]
fn tile_limit_defaults_to_one_binding_and_unfittable_slabs_are_clear_errors() {
    let Some(mut g) = gpu() else { return };
    let l = &g.context().limits;
    let binding = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
    if std::env::var(gpuprep_gpu::device::TILE_BYTES_ENV).is_err() {
        assert_eq!(g.context().max_tile_bytes(), binding);
    }
    // Tiles split z and y only: a limit below one plane (with its halo) cannot be met.
    g.set_max_tile_bytes(256);
    let v = Array3::<f32>::zeros((4, 20, 20));
    for err in [
        g.median3d(v.view(), &MedianParams::default()).unwrap_err(),
        g.set_reference(v.view(), &RegisterParams::default())
            .unwrap_err(),
        g.shift(v.view(), [0.5; 3], &ShiftParams::default())
            .unwrap_err(),
    ] {
        let err = err.to_string();
        assert!(err.contains("tile limit of 256 bytes"), "{err}");
    }
}

#[test]
fn process_frame_without_registration_matches_cpu() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = CpuBackend::new();
    let shape = [5, 13, 6];
    let plan = |acc| FramePlan {
        median: Some(MedianParams::new([3, 3, 1], BoundaryMode::Mirror, 0.0).unwrap()),
        register: None,
        register_on_raw: false,
        shift: ShiftParams::default(),
        accumulate: Some(acc),
        keep_filtered: true,
    };
    let g_acc = g.reset_moments(shape).unwrap();
    let c_acc = c.reset_moments(shape).unwrap();
    let (gplan, cplan) = (plan(g_acc), plan(c_acc));
    for _ in 0..3 {
        let raw = random(&mut rng, shape);
        let og = g.process_frame(raw.view(), &gplan).unwrap();
        let oc = c.process_frame(raw.view(), &cplan).unwrap();
        assert_eq!(og.volume, oc.volume, "seed {seed}");
        assert_eq!(og.filtered, oc.filtered, "seed {seed}");
        assert!(og.registration.is_none());
    }
    let p = ZscoreParams::default();
    let (mg, mc) = (
        g.moments(&g_acc, &p).unwrap(),
        c.moments(&c_acc, &p).unwrap(),
    );
    assert!(
        max_diff(mg.mean(), mc.mean()) <= 1e-6 && max_diff(mg.std(), mc.std()) <= 1e-6,
        "seed {seed}"
    );
}

/// The OpenGL backend (no f64: z-score accumulation falls back to the CPU twin and `describe` says
/// so). Opt-in with GPUPREP_TEST_GL=1, since CI's lavapipe is Vulkan only.
#[test]
fn gl_backend_runs_the_chain_when_asked() {
    if std::env::var("GPUPREP_TEST_GL").as_deref() != Ok("1") {
        return;
    }
    let mut g = GpuBackend::new(Api::Gl).expect("GL adapter");
    assert_eq!(g.adapter_backend(), wgpu::Backend::Gl);
    eprintln!("{}", g.describe());
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = CpuBackend::new();
    let shape = [7, 9, 11];
    let reference = blobs(&mut rng, shape);
    let plan = |b: &mut dyn Backend| FramePlan {
        median: Some(MedianParams::default()),
        register: Some(
            b.set_reference(reference.view(), &RegisterParams::default())
                .unwrap(),
        ),
        register_on_raw: false,
        shift: ShiftParams::default(),
        accumulate: Some(b.reset_moments(shape).unwrap()),
        keep_filtered: false,
    };
    let (gplan, cplan) = (plan(&mut g), plan(&mut c));
    let raw = roll(reference.view(), [1, -2, 0]);
    let og = g.process_frame(raw.view(), &gplan).unwrap();
    let oc = c.process_frame(raw.view(), &cplan).unwrap();
    assert_eq!(
        og.registration.unwrap().shift,
        oc.registration.unwrap().shift,
        "seed {seed}"
    );
    assert!(max_diff(&og.volume, &oc.volume) <= 2e-5, "seed {seed}");
}

#[test]
fn tiny_shapes_match_cpu() {
    let Some(mut g) = gpu() else { return };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = CpuBackend::new();
    for shape in [[1, 1, 1], [2, 1, 3], [1, 2, 2], [3, 2, 1]] {
        let v = random(&mut rng, shape);
        for mode in BoundaryMode::ALL {
            for order in [0, 1, 3] {
                let p = ShiftParams::new(order, mode, 0.5).unwrap();
                let s = [0.3, -0.7, 1.2];
                let err = max_diff(
                    &g.shift(v.view(), s, &p).unwrap(),
                    &c.shift(v.view(), s, &p).unwrap(),
                );
                assert!(
                    err <= 2e-5,
                    "shift {shape:?} order {order} {mode}: {err}; seed {seed}"
                );
            }
            let m = MedianParams::new([1, 1, 1], mode, 0.0).unwrap();
            assert_eq!(
                g.median3d(v.view(), &m).unwrap(),
                c.median3d(v.view(), &m).unwrap()
            );
        }
        let p = RegisterParams::new(4, Normalization::Phase).unwrap();
        let g_ref = g.set_reference(v.view(), &p).unwrap();
        let c_ref = c.set_reference(v.view(), &p).unwrap();
        let w = random(&mut rng, shape);
        let (rg, rc) = (
            g.register(&g_ref, w.view()).unwrap(),
            c.register(&c_ref, w.view()).unwrap(),
        );
        for a in 0..3 {
            assert!(
                (rg.shift[a] - rc.shift[a]).abs() <= 0.25 + 1e-9,
                "{shape:?}: {rg:?} vs {rc:?}; seed {seed}"
            );
        }
    }
}

/// Tiny tile limits (issue 3): volumes over the limit run in slabs or chunks, and each test checks
/// that the tiled route really ran (`tile_stats`) and matches the CPU as the resident route does.
mod tiled {
    use super::*;
    use gpuprep_gpu::device::TileStats;

    /// 13x17x19 (Bluestein along y and x) and 9x5x31, with limits of a few planes.
    const CASES: [([usize; 3], u64); 2] = [([13, 17, 19], 8192), ([9, 5, 31], 4096)];

    fn tiles(g: &GpuBackend, before: TileStats, f: fn(&TileStats) -> usize) -> usize {
        f(&g.tile_stats()) - f(&before)
    }

    /// The spectrum fits the limit but Bluestein's padded lines along a prime axis do not (127 pads
    /// to 256): registration must take the tiled route rather than fail or pass the limit.
    #[test]
    fn registration_tiles_when_only_bluestein_lines_pass_the_limit() {
        let Some(mut g) = gpu() else { return };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        let shape = [4, 5, 127];
        let spectrum = 8 * 4 * 5 * 127;
        let padded = 8 * 4 * 5 * 256;
        g.set_max_tile_bytes((spectrum + padded) / 2);
        let reference = blobs(&mut rng, shape);
        let moving = roll(reference.view(), [1, -2, 5]);
        let p = RegisterParams::new(1, Normalization::Phase).unwrap();
        let before = g.tile_stats();
        let g_ref = g.set_reference(reference.view(), &p).unwrap();
        let rg = g.register(&g_ref, moving.view()).unwrap();
        assert!(tiles(&g, before, |s| s.register) > 0, "tiled route taken");
        let mut c = CpuBackend::new();
        let c_ref = c.set_reference(reference.view(), &p).unwrap();
        assert_eq!(
            rg.shift,
            c.register(&c_ref, moving.view()).unwrap().shift,
            "seed {seed}"
        );
    }

    #[test]
    fn median_is_bit_identical_to_cpu() {
        let Some(mut g) = gpu() else { return };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        for (shape, limit) in CASES {
            g.set_max_tile_bytes(limit);
            for mode in BoundaryMode::ALL {
                for size in [[3, 3, 3], [1, 3, 3], [5, 3, 1], [3, 5, 5]] {
                    let p = MedianParams::new(size, mode, rng.random::<f32>()).unwrap();
                    let mut v = random(&mut rng, shape);
                    v[[0, 0, 0]] = -0.0;
                    v[[0, 0, 1]] = 0.0;
                    let before = g.tile_stats();
                    let got = g.median3d(v.view(), &p).unwrap();
                    let n = tiles(&g, before, |s| s.median);
                    assert!(n > 1, "{shape:?} {size:?}: {n} tiles");
                    let want = cpu::median3d::median3d(v.view(), &p);
                    assert!(
                        want.iter()
                            .zip(got.iter())
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "tiled median differs: shape {shape:?} size {size:?} mode {mode}; seed {seed}"
                    );
                }
            }
        }
    }

    /// Slabs of one output plane (a limit of three planes) whose y and x windows are longer than
    /// the axes, and a z axis of 4 whose halos wrap, reflect and mirror across both ends; and a z
    /// window longer than a volume over the limit, which z-slabs cannot hold: a clear error.
    #[test]
    fn median_short_axes_are_bit_identical_to_cpu() {
        let Some(mut g) = gpu() else { return };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut c = CpuBackend::new();
        for shape in [[4, 3, 11], [5, 2, 7]] {
            g.set_max_tile_bytes(3 * 4 * (shape[1] * shape[2]) as u64);
            for size in [[3, 3, 3], [3, 5, 15], [3, 15, 1], [3, 1, 9]] {
                for mode in BoundaryMode::ALL {
                    let p = MedianParams::new(size, mode, rng.random::<f32>()).unwrap();
                    let v = random(&mut rng, shape);
                    let before = g.tile_stats();
                    let got = g.median3d(v.view(), &p).unwrap();
                    let n = tiles(&g, before, |s| s.median);
                    assert_eq!(n, shape[0], "{shape:?} {size:?}: one output plane per slab");
                    assert!(
                        same_bits(&got, &c.median3d(v.view(), &p).unwrap()),
                        "tiled median differs: shape {shape:?} size {size:?} mode {mode}; seed {seed}"
                    );
                }
            }
        }
        let v = random(&mut rng, [2, 8, 8]);
        g.set_max_tile_bytes(4 * 64);
        let p = MedianParams::new([5, 1, 1], BoundaryMode::Reflect, 0.0).unwrap();
        let err = g.median3d(v.view(), &p).unwrap_err().to_string();
        assert!(err.contains("--backend cpu"), "{err}");
    }

    #[test]
    fn shift_matches_cpu() {
        let Some(mut g) = gpu() else { return };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        for (shape, limit) in CASES {
            g.set_max_tile_bytes(limit);
            for mode in BoundaryMode::ALL {
                for order in [0, 1, 3] {
                    let v = random(&mut rng, shape);
                    let s = [0, 1, 2].map(|_| (rng.random::<f64>() - 0.5) * 6.0);
                    let p = ShiftParams::new(order, mode, rng.random::<f32>()).unwrap();
                    let before = g.tile_stats();
                    let got = g.shift(v.view(), s, &p).unwrap();
                    let n = tiles(&g, before, |s| s.shift);
                    assert!(n > 2, "{shape:?} order {order} {mode}: {n} tiles");
                    let want = cpu::shift::shift3d(v.view(), s, &p);
                    // The resident route's tolerance (shift_matches_cpu).
                    let tol = if order == 3 { 1e-5 * 2.0 } else { 2e-6 };
                    let err = max_diff(&want, &got);
                    assert!(
                        err <= tol,
                        "tiled shift {s:?} shape {shape:?} order {order} {mode}: {err} > {tol}; seed {seed}"
                    );
                }
            }
        }
    }

    #[test]
    fn zscore_matches_cpu() {
        let Some(mut g) = gpu() else { return };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut c = CpuBackend::new();
        let (shape, limit) = CASES[1];
        g.set_max_tile_bytes(limit);
        let p = ZscoreParams {
            ddof: 1,
            constant: ConstantVoxels::Nan,
        };
        let vols: Vec<Array3<f32>> = (0..5)
            .map(|_| {
                let mut v = random(&mut rng, shape) * 10.0 + 100.0;
                v[[0, 0, 0]] = 5.0;
                v
            })
            .collect();
        let before = g.tile_stats();
        let g_acc = g.reset_moments(shape).unwrap();
        let c_acc = c.reset_moments(shape).unwrap();
        for v in &vols {
            g.accumulate(&g_acc, v.view()).unwrap();
            c.accumulate(&c_acc, v.view()).unwrap();
        }
        let (mg, mc) = (
            g.moments(&g_acc, &p).unwrap(),
            c.moments(&c_acc, &p).unwrap(),
        );
        assert!(max_diff(mg.mean(), mc.mean()) <= 1e-4, "mean; seed {seed}");
        let rel = mg
            .std()
            .iter()
            .zip(mc.std().iter())
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-30))
            .fold(0.0, f32::max);
        assert!(rel <= 2.4e-7, "std {rel}; seed {seed}");
        assert_eq!(mg.constant_voxels(), mc.constant_voxels(), "seed {seed}");
        for v in &vols {
            let err = max_diff(
                &g.normalize(v.view(), &mc, &p).unwrap(),
                &c.normalize(v.view(), &mc, &p).unwrap(),
            );
            assert!(err <= 5e-7 * 4.0, "z error {err}; seed {seed}");
        }
        // 1395 voxels in chunks of 512 (f64) or 1024 (f32): 3 per accumulate.
        let n = tiles(&g, before, |s| s.zscore);
        assert!(n >= 5 * 3, "{n} chunks");
    }

    #[test]
    fn registration_matches_cpu() {
        let Some(mut g) = gpu() else { return };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut c = CpuBackend::new();
        for (shape, limit) in [([13, 17, 19], 32768), ([9, 5, 31], 8192)] {
            g.set_max_tile_bytes(limit);
            for normalization in [Normalization::Phase, Normalization::None] {
                let reference = blobs(&mut rng, shape);
                let s = [0, 1, 2].map(|_| rng.random_range(-2i64..=2));
                let mut moving = roll(reference.view(), s);
                moving.mapv_inplace(|x| x + 0.01 * rng.random::<f32>());
                let p = RegisterParams::new(1, normalization).unwrap();
                let before = g.tile_stats();
                let g_ref = g.set_reference(reference.view(), &p).unwrap();
                let c_ref = c.set_reference(reference.view(), &p).unwrap();
                let (rg, rc) = (
                    g.register(&g_ref, moving.view()).unwrap(),
                    c.register(&c_ref, moving.view()).unwrap(),
                );
                let n = tiles(&g, before, |s| s.register);
                assert!(n > 4, "{shape:?}: {n} tiles");
                let ctx = format!("shape {shape:?} {normalization}; seed {seed}");
                assert_eq!(rg.shift, rc.shift, "integer shift, {ctx}");
                assert!(
                    (rg.error - rc.error).abs() <= 1e-3,
                    "error {rg:?} {rc:?}, {ctx}"
                );
                let dphase = (rg.phasediff - rc.phasediff).abs();
                assert!(
                    dphase <= 1e-3 || (dphase - 2.0 * std::f64::consts::PI).abs() <= 1e-3,
                    "phasediff {rg:?} {rc:?}, {ctx}"
                );
                // Sub-pixel: within 1/u of the CPU.
                let p = RegisterParams::new(10, normalization).unwrap();
                let sub = cpu::shift::shift3d(
                    reference.view(),
                    [0, 1, 2].map(|_| rng.random::<f64>() * 3.0 - 1.5),
                    &ShiftParams::new(3, BoundaryMode::Wrap, 0.0).unwrap(),
                );
                let g_ref = g.set_reference(reference.view(), &p).unwrap();
                let c_ref = c.set_reference(reference.view(), &p).unwrap();
                let (rg, rc) = (
                    g.register(&g_ref, sub.view()).unwrap(),
                    c.register(&c_ref, sub.view()).unwrap(),
                );
                for a in 0..3 {
                    assert!(
                        (rg.shift[a] - rc.shift[a]).abs() <= 0.1 + 1e-9,
                        "sub-pixel {rg:?} vs {rc:?}, {ctx}"
                    );
                }
            }
        }
    }

    /// Thin axes through every tiled route (slabs of one plane or row). Tiles split z and y, so a
    /// z-row (nz·nx) and a plane (ny·nx) must each fit the limit: no shape with ny = 1 or nz = 1 here.
    #[test]
    fn thin_shapes_match_cpu() {
        let Some(mut g) = gpu() else { return };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut c = CpuBackend::new();
        for (shape, limit, register_limit) in [
            ([2, 9, 40], 2048, 4096),
            ([6, 2, 50], 1500, 3000),
            ([40, 2, 1], 200, 400),
        ] {
            g.set_max_tile_bytes(limit);
            let before = g.tile_stats();
            let v = blobs(&mut rng, shape);
            for mode in [
                BoundaryMode::Reflect,
                BoundaryMode::Constant,
                BoundaryMode::Wrap,
            ] {
                let m = MedianParams::new([1, 1, 1], mode, 0.5).unwrap();
                let m = if shape[0] >= 3 {
                    MedianParams::new([3, 1, 1], mode, 0.5).unwrap()
                } else {
                    m
                };
                assert_eq!(
                    g.median3d(v.view(), &m).unwrap(),
                    c.median3d(v.view(), &m).unwrap(),
                    "median {shape:?} {mode}; seed {seed}"
                );
                for order in [1, 3] {
                    let p = ShiftParams::new(order, mode, 0.5).unwrap();
                    let s = [0.3, -0.7, 1.2];
                    let err = max_diff(
                        &g.shift(v.view(), s, &p).unwrap(),
                        &c.shift(v.view(), s, &p).unwrap(),
                    );
                    assert!(
                        err <= 2e-5,
                        "shift {shape:?} {order} {mode}: {err}; seed {seed}"
                    );
                }
            }
            let p = RegisterParams::new(4, Normalization::None).unwrap();
            g.set_max_tile_bytes(register_limit);
            let g_ref = g.set_reference(v.view(), &p).unwrap();
            let c_ref = c.set_reference(v.view(), &p).unwrap();
            let w = roll(
                v.view(),
                [1, 0, -1].map(|s: i64| if shape[0] > 1 { s } else { 0 }),
            );
            let (rg, rc) = (
                g.register(&g_ref, w.view()).unwrap(),
                c.register(&c_ref, w.view()).unwrap(),
            );
            for a in 0..3 {
                assert!(
                    (rg.shift[a] - rc.shift[a]).abs() <= 0.25 + 1e-9,
                    "{shape:?}: {rg:?} vs {rc:?}; seed {seed}"
                );
            }
            let after = g.tile_stats();
            assert!(
                after.median > before.median
                    && after.shift > before.shift
                    && after.register > before.register,
                "{shape:?}: {before:?} -> {after:?}"
            );
        }
    }

    /// `pipeline::run` on the GPU backend with every stage tiled, against the CPU backend, with
    /// the tolerance of `cli::gpu_and_cpu_backends_write_the_same_file`.
    #[test]
    fn whole_pipeline_matches_cpu() {
        use gpuprep_pipeline::driver::{run, RunConfig};
        let Some(mut g) = gpu() else { return };
        let (tmp, input) = synth_u16_input([4, 9, 12, 31], 5);
        // Pass 1's results through the scratch file: kept in memory, they would be z-scored on the host.
        let cfg_gpu = RunConfig {
            memory_budget: Some(0),
            ..RunConfig::new(input.clone(), tmp.path().join("gpu.h5"))
        };
        let cfg_cpu = RunConfig {
            memory_budget: Some(0),
            ..RunConfig::new(input, tmp.path().join("cpu.h5"))
        };
        g.set_max_tile_bytes(8192);
        let before = g.tile_stats();
        run(&cfg_gpu, &mut g).unwrap();
        run(&cfg_cpu, &mut CpuBackend::new()).unwrap();
        let after = g.tile_stats();
        assert!(
            after.median > before.median
                && after.register > before.register
                && after.shift > before.shift
                && after.zscore > before.zscore,
            "every stage tiled: {before:?} -> {after:?}"
        );
        let worst =
            same_shifts_worst_data_diff(&tmp.path().join("cpu.h5"), &tmp.path().join("gpu.h5"));
        assert!(worst < 1e-3, "tiled GPU and CPU outputs differ by {worst}");
    }
}

/// Issue 3: `process_stream` takes the next volume from the stream and stages its upload while the
/// current one computes. Its results must be those of `process_frame` bit for bit, whatever the
/// stream holds.
mod ahead {
    use super::*;
    use gpuprep_core::backend::FrameOutput;
    use gpuprep_core::error::{Error, Result};
    use gpuprep_gpu::AheadStats;
    use std::cell::Cell;

    /// `g.process_stream` of `items`; per result, how many items had been taken from the stream
    /// when it was emitted.
    fn stream(
        g: &mut GpuBackend,
        plan: &FramePlan,
        items: Vec<Result<Array3<f32>>>,
    ) -> (Result<()>, Vec<(FrameOutput, usize)>) {
        let taken = Cell::new(0);
        let mut frames = items.into_iter().inspect(|_| taken.set(taken.get() + 1));
        let mut outs = Vec::new();
        let r = g.process_stream(plan, &mut frames, &mut |out| {
            outs.push((out, taken.get()));
            Ok(())
        });
        (r, outs)
    }

    fn ok_stream(g: &mut GpuBackend, plan: &FramePlan, vols: &[Array3<f32>]) -> Vec<FrameOutput> {
        let (r, outs) = stream(g, plan, vols.iter().cloned().map(Ok).collect());
        r.unwrap();
        outs.into_iter().map(|(o, _)| o).collect()
    }

    /// Odd, non-power-of-two and not a multiple of the workgroup size.
    const SHAPE: [usize; 3] = [9, 13, 17];

    /// A plan before a backend's handles: its stages, and whether it registers (every plan here
    /// accumulates).
    #[derive(Clone, Copy, Debug)]
    struct Steps {
        plan: FramePlan,
        register: bool,
    }

    /// Every route through the fused frame: registration (staging between the registration's
    /// submission and its peak readback), median only and nothing but the z-score (staging after
    /// the single submission; the output read from the swapped-in input buffer itself).
    fn plans() -> Vec<Steps> {
        let median = MedianParams::new([3, 3, 3], BoundaryMode::Reflect, 0.0).unwrap();
        let full = FramePlan {
            median: Some(median),
            register: None,
            register_on_raw: false,
            shift: ShiftParams::new(3, BoundaryMode::Constant, 0.0).unwrap(),
            accumulate: None,
            keep_filtered: true,
        };
        let steps = |plan, register| Steps { plan, register };
        vec![
            steps(full, true),
            steps(
                FramePlan {
                    register_on_raw: true,
                    keep_filtered: false,
                    ..full
                },
                true,
            ),
            steps(full, false),
            steps(
                FramePlan {
                    median: None,
                    ..full
                },
                false,
            ),
        ]
    }

    /// Reference and `n` shifted, noisy copies of it.
    fn frames(rng: &mut StdRng, n: usize) -> (Array3<f32>, Vec<Array3<f32>>) {
        let reference = blobs(rng, SHAPE);
        let vols = (0..n)
            .map(|_| {
                let s = [0, 1, 2].map(|_| rng.random_range(-2i64..=2));
                let mut v = roll(reference.view(), s);
                v.mapv_inplace(|x| x + 0.01 * rng.random::<f32>());
                v
            })
            .collect();
        (reference, vols)
    }

    /// Sets `g`'s reference (when `steps` registers) and starts its accumulation: `steps`'s plan
    /// with `g`'s handles.
    fn start(g: &mut GpuBackend, reference: &Array3<f32>, steps: &Steps) -> FramePlan {
        let register = steps.register.then(|| {
            g.set_reference(reference.view(), &RegisterParams::default())
                .unwrap()
        });
        FramePlan {
            register,
            accumulate: Some(g.reset_moments(SHAPE).unwrap()),
            ..steps.plan
        }
    }

    fn same_bits(a: &Array3<f32>, b: &Array3<f32>) -> bool {
        a.shape() == b.shape()
            && a.iter()
                .zip(b.iter())
                .all(|(x, y)| x.to_bits() == y.to_bits())
    }

    fn assert_same(a: &FrameOutput, b: &FrameOutput, ctx: &str) {
        assert_eq!(a.registration, b.registration, "registration: {ctx}");
        assert!(same_bits(&a.volume, &b.volume), "volume: {ctx}");
        assert_eq!(a.filtered.is_some(), b.filtered.is_some(), "{ctx}");
        if let (Some(x), Some(y)) = (&a.filtered, &b.filtered) {
            assert!(same_bits(x, y), "filtered: {ctx}");
        }
    }

    fn assert_same_moments(
        (a, pa): (&mut GpuBackend, &FramePlan),
        (b, pb): (&mut GpuBackend, &FramePlan),
        ctx: &str,
    ) {
        let p = ZscoreParams::default();
        let moments = |g: &mut GpuBackend, plan: &FramePlan| {
            g.moments(plan.accumulate.as_ref().unwrap(), &p).unwrap()
        };
        let (ma, mb) = (moments(a, pa), moments(b, pb));
        assert!(same_bits(ma.mean(), mb.mean()), "mean: {ctx}");
        assert!(same_bits(ma.std(), mb.std()), "std: {ctx}");
    }

    /// Staged, prestaged, uploaded, overlapped (submitted before the previous frame's readback
    /// was waited for).
    fn delta(before: AheadStats, after: AheadStats) -> [usize; 4] {
        [
            after.staged - before.staged,
            after.frames_prestaged - before.frames_prestaged,
            after.frames_uploaded - before.frames_uploaded,
            after.frames_overlapped - before.frames_overlapped,
        ]
    }

    #[test]
    fn overlapped_frames_are_bit_identical_to_synchronous_ones() {
        let (Some(mut sync), Some(mut ahead)) = (gpu(), gpu()) else {
            return;
        };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        for steps in plans() {
            let (reference, vols) = frames(&mut rng, 7);
            let sync_plan = start(&mut sync, &reference, &steps);
            let plan = start(&mut ahead, &reference, &steps);
            let before = ahead.ahead_stats();
            let (r, got) = stream(&mut ahead, &plan, vols.iter().cloned().map(Ok).collect());
            r.unwrap();
            assert_eq!(got.len(), vols.len());
            for (t, (got, taken)) in got.iter().enumerate() {
                let want = sync.process_frame(vols[t].view(), &sync_plan).unwrap();
                assert_same(got, &want, &format!("t {t} plan {plan:?}; seed {seed}"));
                // Volume t + 1 was taken before t was computed (none after the last).
                assert_eq!(*taken, (t + 2).min(vols.len()), "t {t}");
            }
            assert_same_moments(
                (&mut ahead, &plan),
                (&mut sync, &sync_plan),
                &format!("{steps:?}; seed {seed}"),
            );
            // Every volume but the first was staged, every staged one was used, and every frame
            // but the first was submitted before the previous one's readback was waited for.
            assert_eq!(
                delta(before, ahead.ahead_stats()),
                [6, 6, 1, 6],
                "staged, prestaged, uploaded, overlapped: {plan:?}"
            );
        }
    }

    #[test]
    fn only_the_next_volume_of_the_same_shape_is_staged() {
        let (Some(mut sync), Some(mut g)) = (gpu(), gpu()) else {
            return;
        };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        let st = |g: &GpuBackend| g.ahead_stats();
        let (reference, v) = frames(&mut rng, 6);
        let small = random(&mut rng, [3, 5, 7]);
        let check = |sync: &mut GpuBackend,
                     plan: &FramePlan,
                     got: &[FrameOutput],
                     want: &[&Array3<f32>],
                     what: &str| {
            assert_eq!(got.len(), want.len(), "{what}");
            for (i, (o, w)) in got.iter().zip(want).enumerate() {
                let expected = sync.process_frame(w.view(), plan).unwrap();
                assert_same(o, &expected, &format!("{what}, frame {i}; seed {seed}"));
            }
        };

        // A volume of another shape in the stream is not staged; it and the one after it upload.
        let filter_only = plans()[0].plan;
        let b = st(&g);
        let vols = [&v[0], &v[1], &small, &v[2]];
        let got = ok_stream(&mut g, &filter_only, &vols.map(|x| x.clone()));
        check(&mut sync, &filter_only, &got, &vols, "mixed shapes");
        assert_eq!(delta(b, st(&g)), [1, 1, 3, 1]);

        // A new stream starts by uploading, whatever kernel calls came between two streams.
        let sync_plan = start(&mut sync, &reference, &plans()[0]);
        let plan = start(&mut g, &reference, &plans()[0]);
        let b = st(&g);
        let got = ok_stream(&mut g, &plan, &v[3..5]);
        check(&mut sync, &sync_plan, &got, &[&v[3], &v[4]], "first stream");
        let other = random(&mut rng, SHAPE);
        g.median3d(other.view(), plan.median.as_ref().unwrap())
            .unwrap();
        g.shift(other.view(), [0.5, -1.0, 0.25], &plan.shift)
            .unwrap();
        let got = ok_stream(&mut g, &plan, &v[5..6]);
        check(&mut sync, &sync_plan, &got, &[&v[5]], "second stream");
        assert_eq!(delta(b, st(&g)), [1, 1, 2, 1]);

        // A plain `process_frame` uploads.
        let b = st(&g);
        let out = g.process_frame(v[0].view(), &plan).unwrap();
        check(
            &mut sync,
            &sync_plan,
            &[out],
            &[&v[0]],
            "plain process_frame",
        );
        assert_eq!(delta(b, st(&g)), [0, 0, 1, 0]);
        assert_same_moments(
            (&mut g, &plan),
            (&mut sync, &sync_plan),
            &format!("seed {seed}"),
        );
    }

    /// The next volume is taken before the current one computes, so a failure to read it stops the
    /// stream with that error, unchanged, before the current volume's result is emitted.
    #[test]
    fn a_failing_lookahead_stops_the_stream_with_its_error() {
        let Some(mut g) = gpu() else { return };
        let mut rng = StdRng::seed_from_u64(seed());
        let (reference, v) = frames(&mut rng, 2);
        let plan = start(&mut g, &reference, &plans()[0]);
        let items = vec![
            Ok(v[0].clone()),
            Ok(v[1].clone()),
            Err(Error::Data("unreadable volume 2".into())),
        ];
        let (r, outs) = stream(&mut g, &plan, items);
        let want = Error::Data("unreadable volume 2".into()).to_string();
        assert_eq!(r.unwrap_err().to_string(), want);
        assert_eq!(outs.len(), 1, "volume 1 waits for its lookahead");
    }

    #[test]
    fn tiled_volumes_take_the_stream_one_at_a_time() {
        let (Some(mut sync), Some(mut g)) = (gpu(), gpu()) else {
            return;
        };
        let seed = seed();
        let mut rng = StdRng::seed_from_u64(seed);
        let (reference, v) = frames(&mut rng, 3);
        // The f32 volume (7956 bytes) is over the limit, a one-voxel registration slab (6656) under.
        sync.set_max_tile_bytes(7168);
        g.set_max_tile_bytes(7168);
        let sync_plan = start(&mut sync, &reference, &plans()[0]);
        let plan = start(&mut g, &reference, &plans()[0]);
        let (b, tiles) = (g.ahead_stats(), g.tile_stats());
        let (r, got) = stream(&mut g, &plan, v.iter().cloned().map(Ok).collect());
        r.unwrap();
        assert_eq!(got.len(), v.len());
        for (t, (got, taken)) in got.iter().enumerate() {
            let want = sync.process_frame(v[t].view(), &sync_plan).unwrap();
            assert_same(got, &want, &format!("tiled t {t}; seed {seed}"));
            assert_eq!(*taken, t + 1, "no lookahead on the tiled route");
        }
        assert_eq!(
            g.ahead_stats(),
            b,
            "nothing staged or counted on the tiled route"
        );
        assert!(g.tile_stats().median > tiles.median);
        assert_same_moments(
            (&mut g, &plan),
            (&mut sync, &sync_plan),
            &format!("tiled; seed {seed}"),
        );
    }

    /// `pipeline::run` hands the GPU backend each next volume: all but the first are staged and
    /// used, and the result still matches the CPU backend.
    #[test]
    fn the_pipeline_stages_every_volume_but_the_first() {
        use gpuprep_pipeline::driver::{run, RunConfig};
        let Some(mut g) = gpu() else { return };
        let (tmp, input) = synth_u16_input([5, 9, 13, 17], 7);
        let before = g.ahead_stats();
        run(
            &RunConfig::new(input.clone(), tmp.path().join("gpu.h5")),
            &mut g,
        )
        .unwrap();
        run(
            &RunConfig::new(input, tmp.path().join("cpu.h5")),
            &mut CpuBackend::new(),
        )
        .unwrap();
        assert_eq!(delta(before, g.ahead_stats()), [4, 4, 1, 4]);
        let worst =
            same_shifts_worst_data_diff(&tmp.path().join("cpu.h5"), &tmp.path().join("gpu.h5"));
        assert!(worst < 1e-3, "GPU and CPU outputs differ by {worst}");
    }
}

/// `GPUPREP_GPU` picks the adapter (one per worker process on a multi-GPU node): a name matching none
/// is one line naming the variable and listing the adapters there are; the name of the one the
/// backend opens by default opens it. Through the binary, so the variable never reaches other tests.
#[test]
fn gpuprep_gpu_chooses_the_adapter() {
    let Some(g) = gpu() else { return };
    let name = g.context().info.name.clone();
    let (api, _) = api();
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("demo.html");
    let run = |choice: &str| {
        let out = crate::support::gpuprep_command()
            .env("GPUPREP_GPU", choice)
            .args([
                "demo",
                "--shape",
                "3,4,8,8",
                "--backend",
                "gpu",
                "--gpu-api",
                api.name(),
            ])
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("no-such-adapter-xyz");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("GPUPREP_GPU") && err.contains("no-such-adapter-xyz") && err.contains(&name),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, err) = run(&name.to_uppercase());
    assert_eq!(code, Some(0), "{err}");
}

/// Issue 13, "measure first": what one resident frame of the standard pipeline (CLI defaults: 3×3×3
/// median, phase registration without upsampling, order-3 shift, f64 z-score accumulation) costs today
/// in host–device traffic on a 16×32×32 volume (the FFT's dispatch count depends on the shape), and
/// pass 2's moments and one normalization. Pinned exactly: a rewrite that changes them must change
/// these numbers on purpose. Warm-up frames first, so pipelines, buffers and bind groups already
/// exist.
#[test]
fn one_resident_frame_costs_what_it_costs_today() {
    use gpuprep_gpu::zscore_f32::{ZscoreChoice, ZscorePath};
    use gpuprep_gpu::GpuCounters;
    let Some(mut g) = gpu() else { return };
    g.set_zscore_path(ZscoreChoice::Forced(ZscorePath::F64))
        .unwrap();
    let shape = [16, 32, 32];
    let voxels = 16 * 32 * 32u64;
    let mut rng = StdRng::seed_from_u64(13);
    let reference = blobs(&mut rng, shape);
    let plan = FramePlan {
        median: Some(MedianParams::default()),
        register: Some(
            g.set_reference(reference.view(), &RegisterParams::default())
                .unwrap(),
        ),
        register_on_raw: false,
        shift: ShiftParams::default(),
        accumulate: Some(g.reset_moments(shape).unwrap()),
        keep_filtered: false,
    };
    let raw = roll(reference.view(), [1, -2, 0]);
    // Two warm-up frames: the first makes the shift's operator buffer after the registration's
    // bind groups, and a new buffer empties the bind-group cache (`GpuContext::bind_group`).
    g.process_frame(raw.view(), &plan).unwrap();
    g.process_frame(raw.view(), &plan).unwrap();
    let before = g.counters();
    g.process_frame(raw.view(), &plan).unwrap();
    let frame = g.counters() - before;
    eprintln!("one resident frame: {frame:?}");
    assert_eq!(
        frame,
        GpuCounters {
            // Median 1, registration 5 (x from the real volume, y with the power sums, z with the
            // cross-power and the inverse z between, inverse y, inverse x with the peak search:
            // one pass per FFT axis), shift 3 (one operator pass per axis), accumulate 1.
            dispatches: 10,
            // Median + registration; the power and the peak partials read back together; shift +
            // accumulate + the volume's copy to the readback buffer.
            submits: 3,
            blocking_reads: 2,
            waits: 0,
            // The volume, the shift's taps and outside flags, the two batches' uniforms.
            writes: 5,
            // The volume (65,536 bytes); the power sums and the peak partials of the y and x
            // passes' 16 workgroups each (8 and 16 bytes a workgroup).
            read_bytes: 65536 + 16 * 8 + 16 * 16,
            // The volume (65,536 bytes), the shift's operator rows (8 bytes a weight, 16–38 weights
            // a sample here) and outside flags, the uniforms (one aligned slot a dispatch).
            written_bytes: 85040,
            // Every buffer was bound by the warm-up frame: its bind groups are reused.
            bind_groups: 0,
        }
    );
    // Of the bytes read back, one volume is the frame's result; the rest is the registration's.
    assert!(frame.read_bytes >= voxels * 4);
    let p = ZscoreParams::default();
    let acc = plan.accumulate.unwrap();
    let before = g.counters();
    let m = g.moments(&acc, &p).unwrap();
    let moments = g.counters() - before;
    let before = g.counters();
    g.normalize(raw.view(), &m, &p).unwrap();
    let normalize = g.counters() - before;
    eprintln!("moments: {moments:?}; one normalization: {normalize:?}");
    // Finalize (1 dispatch), then the f64 mean and std read back together.
    assert_eq!(
        (moments.dispatches, moments.submits, moments.blocking_reads),
        (1, 2, 1)
    );
    assert_eq!(moments.read_bytes, voxels * 16);
    // The volume uploaded, 1 dispatch, the z-scores read back.
    assert_eq!(
        (
            normalize.dispatches,
            normalize.submits,
            normalize.blocking_reads,
            normalize.read_bytes
        ),
        (1, 2, 1, voxels * 4)
    );
}

/// Per-kernel timestamps (`GpuContext::time_kernels`, issue 13's "measure first"): one timed resident
/// frame accounts for every dispatch the counters count, under the kernels' labels, with a GPU time
/// each, and gives the same bits as an untimed frame. An adapter without timestamp queries refuses
/// timing with a one-line error naming it (and the test says which case ran).
#[test]
fn timed_frame_times_every_dispatch_and_changes_nothing() {
    let Some(mut g) = gpu() else { return };
    let shape = [16, 32, 32];
    let mut rng = StdRng::seed_from_u64(29);
    let reference = blobs(&mut rng, shape);
    let plan = FramePlan {
        median: Some(MedianParams::default()),
        register: Some(
            g.set_reference(reference.view(), &RegisterParams::default())
                .unwrap(),
        ),
        register_on_raw: false,
        shift: ShiftParams::default(),
        accumulate: None,
        keep_filtered: false,
    };
    let raw = roll(reference.view(), [2, -1, 3]);
    let untimed = g.process_frame(raw.view(), &plan).unwrap();
    if !g.context().has_timestamps() {
        let e = g.context().time_kernels(true).unwrap_err().to_string();
        eprintln!("NOT TIMED: {e}");
        assert!(
            e.contains("no timestamp queries") && e.contains(&g.context().info.name),
            "{e}"
        );
        return;
    }
    g.context().time_kernels(true).unwrap();
    let before = g.counters();
    let timed = g.process_frame(raw.view(), &plan).unwrap();
    let frame = g.counters() - before;
    let times = g.context().kernel_times();
    for t in &times {
        eprintln!(
            "{:>40} {:>3} × {:>10.1} µs",
            t.label,
            t.dispatches,
            t.nanos / 1e3
        );
    }
    assert_eq!(
        times.iter().map(|t| t.dispatches).sum::<usize>(),
        frame.dispatches
    );
    assert!(times
        .iter()
        .all(|t| !t.label.is_empty() && t.nanos.is_finite() && t.nanos >= 0.0));
    assert!(
        times.iter().map(|t| t.nanos).sum::<f64>() > 0.0,
        "{times:?}"
    );
    assert!(
        times.windows(2).all(|w| w[0].nanos >= w[1].nanos),
        "most time first"
    );
    for stage in ["median", "shift"] {
        assert!(
            times.iter().any(|t| t.label.contains(stage)),
            "{stage} timed: {times:?}"
        );
    }
    assert_eq!(timed.volume, untimed.volume);
    assert_eq!(timed.registration, untimed.registration);
    // Off again: nothing more is summed, and the sums are gone.
    g.context().time_kernels(false).unwrap();
    g.process_frame(raw.view(), &plan).unwrap();
    assert!(g.context().kernel_times().is_empty());
}

/// The unchecked-kernels experiment (`GPUPREP_GPU_UNCHECKED=1`, issue 13): a frame through kernels
/// built without wgpu's runtime checks gives the checked build's bits, on a shape whose lines need
/// every guard (odd and prime sizes, Bluestein FFT lengths, an upsampled registration), and the
/// backend's description says so. (The variable itself: `cli::a_bad_unchecked_variable_stops_the_run`.)
#[test]
fn unchecked_kernels_give_the_checked_bits() {
    let shape = [7, 13, 11];
    let mut rng = StdRng::seed_from_u64(31);
    let reference = blobs(&mut rng, shape);
    let raw = roll(reference.view(), [1, -3, 2]);
    let frame = |g: &mut GpuBackend| {
        let register = RegisterParams {
            upsample_factor: 4,
            ..Default::default()
        };
        let plan = FramePlan {
            median: Some(MedianParams::default()),
            register: Some(g.set_reference(reference.view(), &register).unwrap()),
            register_on_raw: false,
            shift: ShiftParams::default(),
            accumulate: None,
            keep_filtered: false,
        };
        g.process_frame(raw.view(), &plan).unwrap()
    };
    let Some(mut g) = gpu() else { return };
    assert!(!g.context().unchecked_shaders());
    let want = frame(&mut g);
    g.context().set_unchecked_shaders(true);
    assert!(
        g.describe().contains("without runtime checks"),
        "{}",
        g.describe()
    );
    let got = frame(&mut g);
    assert_eq!(got.volume, want.volume);
    assert_eq!(got.registration, want.registration);
    g.context().set_unchecked_shaders(false);
    assert!(!g.describe().contains("without runtime checks"));
    assert_eq!(frame(&mut g).volume, want.volume);
}
