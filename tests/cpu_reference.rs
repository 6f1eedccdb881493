//! Fast CPU kernels against the plain references in `gpuprep_cpu::reference`, and the references
//! against answers known in closed form.

use crate::support::*;
use gpuprep_core::params::*;
use gpuprep_core::zscore::{normalize, Accumulator};
use gpuprep_cpu::fft::{Fft3, RealFft3, C32};
use gpuprep_cpu::median3d::median3d;
use gpuprep_cpu::reference::{dft3, median3d_sorted, shift_integer_constant, zscore_in_memory};
use gpuprep_cpu::register::phase_cross_correlation;
use gpuprep_cpu::shift::shift3d;
use ndarray::Array3;
use proptest::prelude::*;
use rand::Rng;

/// The FFTs against the naive f64 DFT of f32 data, per bin: f32 rounding grows as sqrt(N) over the
/// transform's log N stages, times |x| <= 1 (the inputs' range); the factor 4 covers the mixed radices.
fn fft_tol(n: f32) -> f32 {
    2e-5 * n.sqrt() * 4.0
}
/// A forward and inverse round trip of data in [-1, 1]: a few f32 ulps.
const ROUND_TRIP_TOL: f32 = 1e-5;

#[test]
fn reference_median_known_answers() {
    // A single bright voxel vanishes under a 3x3x3 median; a constant volume is unchanged.
    let mut v = Array3::<f32>::zeros((5, 5, 5));
    v[[2, 2, 2]] = 100.0;
    let p = MedianParams::default();
    assert!(median3d_sorted(v.view(), &p).iter().all(|&x| x == 0.0));
    let c = Array3::<f32>::from_elem((3, 4, 5), 7.5);
    assert_eq!(median3d_sorted(c.view(), &p), c);
    // 1-D along x: [1, 5, 2, 8, 3] with reflect → medians of (1,1,5) (1,5,2) (5,2,8) (2,8,3) (8,3,3).
    let line = Array3::from_shape_vec((1, 1, 5), vec![1.0f32, 5.0, 2.0, 8.0, 3.0]).unwrap();
    let p1 = MedianParams::new([1, 1, 3], BoundaryMode::Reflect, 0.0).unwrap();
    assert_eq!(
        median3d_sorted(line.view(), &p1)
            .into_raw_vec_and_offset()
            .0,
        vec![1.0, 2.0, 5.0, 3.0, 3.0]
    );
    // constant mode with cval 9: ends see (9,1,5) → 5 and (8,3,9) → 8.
    let p2 = MedianParams::new([1, 1, 3], BoundaryMode::Constant, 9.0).unwrap();
    assert_eq!(
        median3d_sorted(line.view(), &p2)
            .into_raw_vec_and_offset()
            .0,
        vec![5.0, 2.0, 5.0, 3.0, 8.0]
    );
}

/// Windows much longer than the volume (scipy allows any): the selection path then gathers each
/// window straight from the source instead of through padded rows far larger than the volume;
/// windows past `MedianParams::MAX_ELEMENTS`, or whose element count overflows, are refused.
#[test]
fn windows_far_longer_than_the_volume() {
    let mut r = rng(fresh_seed());
    for (shape, size) in [([1, 2, 3], [1, 1025, 1025]), ([3, 1, 2], [1025, 1, 1023])] {
        for mode in BoundaryMode::ALL {
            let v = Array3::from_shape_fn(shape, |_| r.random_range(-1.0f32..1.0));
            let p = MedianParams::new(size, mode, 0.5).unwrap();
            assert_eq!(
                median3d(v.view(), &p),
                median3d_sorted(v.view(), &p),
                "{shape:?} {size:?} {mode}"
            );
        }
    }
    for size in [[163, 161, 161], [3_000_001; 3], [1, 1, usize::MAX]] {
        let err = MedianParams::new(size, BoundaryMode::Reflect, 0.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("median size: ") && err.contains("at most 4194304"),
            "{err}"
        );
    }
    assert!(MedianParams::new([161, 161, 161], BoundaryMode::Reflect, 0.0).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn fast_median_equals_sorting_median(
        nz in 1usize..7, ny in 1usize..8, nx in 1usize..9,
        rz in 0usize..8, ry in 0usize..8, rx in 0usize..8,
        mode in 0usize..5, seed in any::<u64>(), levels in prop_oneof![Just(0u32), Just(3u32)],
    ) {
        // Windows up to 15 on axes down to 1 sample: scipy's extension repeats past the edges.
        let size = [2 * rz + 1, 2 * ry + 1, 2 * rx + 1];
        let p = MedianParams::new(size, BoundaryMode::ALL[mode], 0.25).unwrap();
        let mut r = rng(seed);
        // levels > 0 makes many ties.
        let v = Array3::from_shape_fn((nz, ny, nx), |_| {
            let x: f32 = r.random_range(-1.0..1.0);
            if levels > 0 { (x * levels as f32).round() } else { x }
        });
        prop_assert_eq!(median3d(v.view(), &p), median3d_sorted(v.view(), &p));
    }
}

/// The 3x3x3 fast path, and the other paths on a few other sizes, against the sorting median, bit for
/// bit: every mode, shapes smaller than the window, a nonzero cval, many ties, and values where float
/// order is not total order (-0.0 beside +0.0, NaN), which take the integer-key path.
#[test]
fn fast_median_equals_sorting_median_bit_for_bit() {
    let seed = fresh_seed();
    let mut r = rng(seed);
    let shapes = [
        [1, 1, 1],
        [1, 5, 7],
        [2, 3, 4],
        [3, 1, 2],
        [4, 4, 1],
        [5, 17, 33],
        [13, 9, 64],
    ];
    let kinds = ["uniform", "ties", "signed zero ties", "special values"];
    for size in [[3, 3, 3], [1, 3, 3], [3, 1, 5], [5, 5, 5], [3, 7, 7]] {
        for shape in shapes {
            for mode in BoundaryMode::ALL {
                for kind in kinds {
                    let v = Array3::from_shape_fn(shape, |_| {
                        let x: f32 = r.random_range(-1.0..1.0);
                        match kind {
                            "uniform" => x,
                            "ties" => [0.0, 0.5, 1.0][r.random_range(0..3)],
                            "signed zero ties" => [-1.0, -0.0, 0.0, 2.0][r.random_range(0..4)],
                            _ => match r.random_range(0..12) {
                                0 => f32::INFINITY,
                                1 => f32::NEG_INFINITY,
                                2 => -0.0,
                                3 => 0.0,
                                4 => f32::NAN,
                                _ => x,
                            },
                        }
                    });
                    // In constant mode, a cval among the values (a tie), outside them, or -0.0.
                    let cval = [0.5, -0.75, -0.0][r.random_range(0..3)];
                    let p = MedianParams::new(size, mode, cval).unwrap();
                    let ours = median3d(v.view(), &p);
                    let want = median3d_sorted(v.view(), &p);
                    let diff = ours
                        .indexed_iter()
                        .zip(want.iter())
                        .find(|((_, a), b)| a.to_bits() != b.to_bits());
                    if let Some(((at, a), b)) = diff {
                        panic!(
                            "size {size:?} shape {shape:?} {mode} cval {cval} {kind}: at {at:?} \
                             {a:?}, sorting median {b:?}; seed {seed}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn naive_dft_known_answers() {
    // The DFT of a unit impulse at the origin is all ones; of a constant c it is c·N at 0 and 0 elsewhere.
    let mut imp = Array3::<C32>::zeros((3, 4, 5));
    imp[[0, 0, 0]] = C32::new(1.0, 0.0);
    for v in dft3(&imp, false).iter() {
        assert!((v - C32::new(1.0, 0.0)).norm() < 1e-6);
    }
    let c = Array3::from_elem((3, 4, 5), C32::new(2.0, 0.0));
    let f = dft3(&c, false);
    assert!((f[[0, 0, 0]] - C32::new(120.0, 0.0)).norm() < 1e-4);
    assert!(f.iter().skip(1).all(|v| v.norm() < 1e-4));
    // A single frequency along x: exp(2πi·2x/5) puts everything at kx = 2.
    let w = Array3::from_shape_fn((1, 1, 5), |(_, _, x)| {
        C32::from_polar(1.0, 2.0 * std::f32::consts::PI * 2.0 * x as f32 / 5.0)
    });
    let f = dft3(&w, false);
    assert!((f[[0, 0, 2]] - C32::new(5.0, 0.0)).norm() < 1e-4);
}

#[test]
fn fft_matches_naive_dft_on_awkward_shapes() {
    let seed = fresh_seed();
    let mut r = rng(seed);
    for shape in [
        [1, 1, 7],
        [3, 5, 7],
        [8, 12, 10],
        [2, 13, 11],
        [4, 1, 9],
        [6, 17, 4],
    ] {
        let x = Array3::from_shape_fn(shape, |_| {
            C32::new(r.random_range(-1.0..1.0), r.random_range(-1.0..1.0))
        });
        let fft = Fft3::new(shape);
        let mut f = x.clone();
        fft.forward(&mut f);
        let want = dft3(&x, false);
        let n = x.len() as f32;
        for (i, (a, b)) in f.iter().zip(want.iter()).enumerate() {
            assert!(
                (a - b).norm() <= fft_tol(n),
                "forward, shape {shape:?}, index {i}: {a} vs {b}"
            );
        }
        fft.inverse(&mut f);
        for (a, b) in f.iter().zip(x.iter()) {
            assert!(
                (a - b).norm() < ROUND_TRIP_TOL,
                "round trip, shape {shape:?}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn real_fft_is_the_half_of_the_naive_dft_and_inverts() {
    let seed = fresh_seed();
    let mut r = rng(seed);
    // Even and odd x extents (the Nyquist column exists only for even ones), singleton axes, primes.
    for shape in [
        [1, 1, 8],
        [3, 5, 7],
        [8, 12, 10],
        [2, 13, 11],
        [4, 1, 9],
        [6, 17, 4],
        [5, 3, 1],
    ] {
        let x = Array3::from_shape_fn(shape, |_| r.random_range(-1.0f32..1.0));
        let fft = RealFft3::new(shape);
        let half = fft.forward(x.view());
        let nh = shape[2] / 2 + 1;
        assert_eq!(half.shape(), &[shape[0], shape[1], nh]);
        let want = dft3(&x.mapv(|v| C32::new(v, 0.0)), false);
        let n = x.len() as f32;
        for ((z, y, k), a) in half.indexed_iter() {
            let b = want[[z, y, k]];
            assert!(
                (a - b).norm() <= fft_tol(n),
                "seed {seed}, forward, shape {shape:?}, bin {:?}: {a} vs {b}",
                (z, y, k)
            );
        }
        let back = fft.inverse(half);
        for (a, b) in back.iter().zip(x.iter()) {
            assert!(
                (a - b).abs() < ROUND_TRIP_TOL,
                "seed {seed}, round trip, shape {shape:?}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn integer_shift_is_index_arithmetic_for_every_order() {
    let seed = fresh_seed();
    let mut r = rng(seed);
    let v = random_volume(&mut r, [6, 9, 11]);
    for order in [0, 1, 3] {
        let p = ShiftParams::new(order, BoundaryMode::Constant, -3.0).unwrap();
        for s in [[1i64, -2, 3], [0, 0, 0], [-5, 4, -10], [2, 0, 0]] {
            let ours = shift3d(v.view(), s.map(|x| x as f64), &p);
            let want = shift_integer_constant(v.view(), s, -3.0);
            let (d, at) = max_abs_diff(ours.view(), want.view());
            // Order 3 interpolates through the prefiltered spline: exact up to f64 → f32 rounding.
            assert!(d <= 2e-6, "order {order}, shift {s:?}: {d} at {at:?}");
        }
    }
}

#[test]
fn registration_recovers_a_known_circular_shift() {
    let seed = fresh_seed();
    let mut r = rng(seed);
    let shape = [10, 13, 16];
    let v = random_volume(&mut r, shape);
    let s = [3i64, -4, 7];
    // moving[i] = v[i - s] (circularly); registering moving onto v needs -s.
    let moving = Array3::from_shape_fn(shape, |(z, y, x)| {
        let src = |i: usize, a: usize| ((i as i64 - s[a]).rem_euclid(shape[a] as i64)) as usize;
        v[[src(z, 0), src(y, 1), src(x, 2)]]
    });
    for u in [1, 10] {
        for norm in [Normalization::Phase, Normalization::None] {
            let reg = phase_cross_correlation(
                v.view(),
                moving.view(),
                &RegisterParams::new(u, norm).unwrap(),
            );
            assert_eq!(reg.shift, [-3.0, 4.0, -7.0], "upsample {u}, {norm}");
            // scikit-image's error is only meaningful without normalization (with it, it is ~1).
            if norm == Normalization::None && u == 1 {
                assert!(reg.error < 1e-3, "error {}", reg.error);
            }
        }
    }
}

#[test]
fn streaming_zscore_equals_in_memory_zscore() {
    let seed = fresh_seed();
    let mut r = rng(seed);
    let series: Vec<Array3<f32>> = (0..23)
        .map(|_| random_volume(&mut r, [3, 4, 5]).mapv(|x| 50.0 + 3.0 * x))
        .collect();
    for ddof in [0, 1] {
        let p = ZscoreParams {
            ddof,
            constant: ConstantVoxels::Nan,
        };
        let mut acc = Accumulator::new([3, 4, 5]);
        series.iter().for_each(|v| acc.add(v.view()));
        let m = acc.moments(&p);
        for (v, want) in series.iter().zip(zscore_in_memory(&series, ddof)) {
            let (d, _) = max_abs_diff(normalize(v.view(), &m, &p).view(), want.view());
            assert!(d < 2e-5, "ddof {ddof}: {d}");
        }
    }
    // Constant voxels: NaN by default, 0 on request.
    let flat: Vec<Array3<f32>> = (0..4).map(|_| Array3::from_elem((1, 2, 2), 3.5)).collect();
    let mut acc = Accumulator::new([1, 2, 2]);
    flat.iter().for_each(|v| acc.add(v.view()));
    let nan = ZscoreParams {
        ddof: 0,
        constant: ConstantVoxels::Nan,
    };
    let m = acc.moments(&nan);
    assert_eq!(m.constant_voxels(), 4);
    assert!(normalize(flat[0].view(), &m, &nan)
        .iter()
        .all(|v| v.is_nan()));
    let zero = ZscoreParams {
        ddof: 0,
        constant: ConstantVoxels::Zero,
    };
    assert!(normalize(flat[0].view(), &m, &zero)
        .iter()
        .all(|&v| v == 0.0));
}
