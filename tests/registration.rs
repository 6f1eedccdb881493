//! Integration tests: registration options (issue 12). `--max-shift` and `--smooth-sigma` on
//! synthetic recordings with a known drift, noise at several levels and outlier frames (a burst of
//! noise, a partly blanked frame): scikit-image's default (phase correlation, unbounded) fails where
//! the options hold every frame within 0.5 voxel; the GPU (resident and tiled) gives the CPU's
//! numbers (integer shifts identical, sub-voxel ones within 1/upsample).

use gpuprep_core::backend::Backend;
use gpuprep_core::params::*;
use gpuprep_cpu::CpuBackend;
use gpuprep_gpu::{Api, GpuBackend};
use ndarray::Array3;
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

/// A synthetic recording: a field of cells (small Gaussian blobs of random brightness on a dim
/// gradient), drifting by a known sub-voxel amount each frame, with Gaussian noise.
pub struct Movie {
    /// The template (drift 0) with the noise of an average of 20 frames.
    pub reference: Array3<f32>,
    pub frames: Vec<Array3<f32>>,
    /// Per frame, the shift that registers it onto the reference (minus its drift).
    pub truth: Vec<[f64; 3]>,
}

/// The movie's frames as one (t, z, y, x) float32 dataset `data` in DIR/movie.h5.
fn write_movie(dir: &std::path::Path, m: &Movie) -> std::path::PathBuf {
    let views: Vec<_> = m.frames.iter().map(|f| f.view()).collect();
    let all = ndarray::stack(ndarray::Axis(0), &views).unwrap();
    let input = dir.join("movie.h5");
    let f = hdf5::File::create(&input).unwrap();
    f.new_dataset_builder()
        .with_data(&all)
        .create("data")
        .unwrap();
    input
}

/// Outlier frames mixed into a `Movie`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outlier {
    /// Four times the noise.
    NoiseBurst,
    /// The last 40% of the rows read nothing (zero signal, the noise stays).
    PartlyBlanked,
}

pub fn movie(
    shape: [usize; 3],
    n: usize,
    noise: f32,
    outliers: &[(usize, Outlier)],
    seed: u64,
) -> Movie {
    let mut rng = StdRng::seed_from_u64(seed);
    let cells: Vec<([f64; 3], f64)> = (0..shape[0].div_ceil(4) * shape[1] * shape[2] / 80)
        .map(|_| {
            let mut c = [0, 1, 2].map(|a| rng.random::<f64>() * shape[a] as f64);
            // Deep stacks: cells away from the first and last planes, as in a stack that covers
            // the tissue (a cut-off cell at the edge would pin the z peak at 0).
            if shape[0] > 5 {
                c[0] = 3.0 + rng.random::<f64>() * (shape[0] - 6) as f64;
            }
            (c, 0.4 + 0.6 * rng.random::<f64>())
        })
        .collect();
    let render = |d: [f64; 3]| {
        Array3::from_shape_fn(shape, |(z, y, x)| {
            let p = [z as f64 - d[0], y as f64 - d[1], x as f64 - d[2]];
            let background = 0.2 + 0.1 * p[2] / shape[2] as f64;
            let cells: f64 = cells
                .iter()
                .map(|(c, a)| {
                    let r2 =
                        (p[0] - c[0]).powi(2) / 1.0 + (p[1] - c[1]).powi(2) + (p[2] - c[2]).powi(2);
                    a * (-r2 / (2.0 * 1.5f64.powi(2))).exp()
                })
                .sum();
            (background + cells) as f32
        })
    };
    let noisy = |v: Array3<f32>, sigma: f32, rng: &mut StdRng| v.mapv(|x| x + sigma * gauss(rng));
    let reference = noisy(render([0.0; 3]), noise / 20f32.sqrt(), &mut rng);
    let mut frames = Vec::new();
    let mut truth = Vec::new();
    for t in 0..n {
        let tt = t as f64;
        // A slow drift of up to 3 voxels in y and x plus a jitter, sub-voxel; a step of one plane in z.
        let mut d = [
            if t >= n / 2 { 1.0 } else { 0.0 },
            3.0 * (tt / 4.0).sin() + 0.3 * (tt * 1.7).cos(),
            -2.5 * (tt / 6.0).cos() + 1.0,
        ];
        if shape[0] == 1 {
            d[0] = 0.0;
        }
        let clean = render(d);
        let frame = match outliers.iter().find(|(at, _)| *at == t).map(|o| o.1) {
            None => noisy(clean, noise, &mut rng),
            Some(Outlier::NoiseBurst) => noisy(clean, 4.0 * noise, &mut rng),
            Some(Outlier::PartlyBlanked) => {
                let mut c = clean;
                let from = shape[1] * 6 / 10;
                c.slice_mut(ndarray::s![.., from.., ..]).fill(0.0);
                noisy(c, noise, &mut rng)
            }
        };
        frames.push(frame);
        truth.push(d.map(|v| -v));
    }
    Movie {
        reference,
        frames,
        truth,
    }
}

/// A standard normal sample (Box-Muller).
fn gauss(rng: &mut StdRng) -> f32 {
    let (u, v) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
}

/// Each frame's registration onto the movie's reference with `p` on backend `b`.
pub fn register_all(b: &mut dyn Backend, m: &Movie, p: &RegisterParams) -> Vec<Registration> {
    let r = b.set_reference(m.reference.view(), p).unwrap();
    m.frames
        .iter()
        .map(|f| b.register(&r, f.view()).unwrap())
        .collect()
}

/// Per frame, the largest |shift - truth| over the axes.
pub fn errors(regs: &[Registration], truth: &[[f64; 3]]) -> Vec<f64> {
    regs.iter()
        .zip(truth)
        .map(|(r, t)| {
            (0..3)
                .map(|a| (r.shift[a] - t[a]).abs())
                .fold(0.0, f64::max)
        })
        .collect()
}

fn worst(e: &[f64]) -> f64 {
    e.iter().copied().fold(0.0, f64::max)
}

fn options(u: u32) -> RegisterParams {
    RegisterParams::new(u, Normalization::Phase)
        .unwrap()
        .with_max_shift([2.0, 5.0, 5.0])
        .unwrap()
        .with_smooth_sigma([1.0, 2.0, 2.0])
        .unwrap()
}

/// The cases of the proof: (shape, noise); each movie has a noise burst at frame 7 and a partly
/// blanked frame at 13.
const CASES: [([usize; 3], f32); 4] = [
    ([1, 64, 64], 0.1),
    ([1, 64, 64], 0.25),
    ([16, 32, 32], 0.1),
    ([16, 32, 32], 0.2),
];
const OUTLIERS: [(usize, Outlier); 2] = [(7, Outlier::NoiseBurst), (13, Outlier::PartlyBlanked)];

#[test]
fn bounded_smoothed_phase_correlation_holds_where_the_default_fails() {
    let mut cpu = CpuBackend::new();
    for (shape, noise) in CASES {
        let m = movie(shape, 20, noise, &OUTLIERS, 12);
        let default = RegisterParams::new(10, Normalization::Phase).unwrap();
        let e_default = errors(&register_all(&mut cpu, &m, &default), &m.truth);
        let e_options = errors(&register_all(&mut cpu, &m, &options(10)), &m.truth);
        let round = |e: &[f64]| {
            e.iter()
                .map(|e| (e * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        };
        eprintln!(
            "{shape:?} noise {noise}: default worst {:.2} ({} frames > 0.5), options worst {:.2}",
            worst(&e_default),
            e_default.iter().filter(|&&e| e > 0.5).count(),
            worst(&e_options)
        );
        assert!(
            worst(&e_default) > 0.5,
            "{shape:?} noise {noise}: the default should fail: {:?}",
            round(&e_default)
        );
        assert!(
            worst(&e_options) <= 0.5,
            "{shape:?} noise {noise}: {:?}",
            round(&e_options)
        );
    }
}

#[test]
fn every_shift_stays_within_max_shift_at_integer_and_upsampled_precision() {
    let mut cpu = CpuBackend::new();
    let m = movie([1, 64, 64], 12, 1.0, &OUTLIERS, 3);
    for u in [1, 10] {
        for max in [[0.0, 1.0, 1.5], [0.0, 0.0, 2.0], [0.0, 3.3, 0.7]] {
            let p = RegisterParams::new(u, Normalization::Phase)
                .unwrap()
                .with_max_shift(max)
                .unwrap();
            for r in register_all(&mut cpu, &m, &p) {
                for a in 0..3 {
                    assert!(
                        r.shift[a].abs() <= max[a] + 1e-9,
                        "u {u} max {max:?}: {r:?}"
                    );
                }
            }
        }
    }
    // A bound wider than the volume is no bound: scikit-image's shifts exactly.
    let m = movie([1, 32, 32], 6, 0.5, &[], 4);
    for u in [1, 10] {
        let plain = RegisterParams::new(u, Normalization::Phase).unwrap();
        let wide = plain.with_max_shift([100.0; 3]).unwrap();
        assert_eq!(
            register_all(&mut cpu, &m, &plain),
            register_all(&mut cpu, &m, &wide)
        );
    }
}

/// Each option alone and together, on the GPU (resident, and tiled with a tile limit that holds
/// planes but not the spectrum) against the CPU: integer shifts identical, sub-voxel ones within
/// 1/upsample.
#[test]
fn the_gpu_registers_with_the_options_as_the_cpu() {
    let Some(_) = gpu() else { return };
    let mut cpu = CpuBackend::new();
    let bound = [1.0, 4.0, 4.0];
    for (shape, noise) in [([1, 48, 40], 0.3f32), ([12, 24, 20], 0.2)] {
        let m = movie(shape, 10, noise, &OUTLIERS, 5);
        for u in [1u32, 10] {
            let plain = RegisterParams::new(u, Normalization::Phase).unwrap();
            for p in [
                plain.with_max_shift(bound).unwrap(),
                plain.with_smooth_sigma([0.5, 1.15, 2.0]).unwrap(),
                options(u),
                RegisterParams::new(u, Normalization::None)
                    .unwrap()
                    .with_max_shift(bound)
                    .unwrap()
                    .with_smooth_sigma([1.0; 3])
                    .unwrap(),
            ] {
                let want = register_all(&mut cpu, &m, &p);
                // Planes of the tiled route are 8·ny·nx bytes (x/y transforms) and at most
                // 8·nz·nx per y-row of the z transform: four planes fit, the spectrum does not.
                for tile in [None, Some(4 * 8 * shape[1] as u64 * shape[2] as u64)] {
                    let mut g = gpu().unwrap();
                    if let Some(t) = tile {
                        g.set_max_tile_bytes(t);
                    }
                    let got = register_all(&mut g, &m, &p);
                    for (t, (w, g)) in want.iter().zip(&got).enumerate() {
                        for a in 0..3 {
                            let d = (w.shift[a] - g.shift[a]).abs();
                            let tol = if u == 1 { 0.0 } else { 1.0 / u as f64 + 1e-9 };
                            assert!(
                                d <= tol,
                                "{shape:?} {p:?} tile {tile:?} frame {t}: cpu {w:?} gpu {g:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A two-channel OME-Zarr 0.4 image (t, c, z, y, x): channel 0 a drifting blob, channel 1 other
/// values of the same drift.
fn two_channel_store(dir: &std::path::Path) -> std::path::PathBuf {
    use ndarray::s;
    use serde_json::json;
    let data = crate::formats::series(crate::support::fresh_seed(), [5, 3, 10, 12]);
    let ome = dir.join("two.zarr");
    let mut five = ndarray::Array5::<u16>::zeros([5, 2, 3, 10, 12]);
    five.slice_mut(s![.., 0, .., .., ..]).assign(&data);
    five.slice_mut(s![.., 1, .., .., ..])
        .assign(&data.mapv(|v| v / 3 + 7));
    std::fs::create_dir_all(&ome).unwrap();
    std::fs::write(ome.join(".zgroup"), r#"{"zarr_format": 2}"#).unwrap();
    let ms = json!({"multiscales": [{"version": "0.4", "axes": [
        {"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0"}]}]});
    std::fs::write(ome.join(".zattrs"), ms.to_string()).unwrap();
    crate::formats::write_zarr_v2(
        &ome.join("0"),
        &five.into_dyn(),
        &[2, 2, 3, 10, 12],
        json!({}),
    );
    ome
}

/// The same on the GPU backend (lavapipe in CI): a registered run with `--apply-to-channels`, then
/// its shifts given back with `--shifts`, on each channel, bit for bit.
#[test]
fn given_shifts_on_the_gpu_are_applied_bit_for_bit_as_registering_with_them() {
    use crate::formats::{h5_f32, h5_f64};
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ome = two_channel_store(tmp.path());
    let args = [
        "--format",
        "zarr",
        "--upsample-factor",
        "4",
        "--backend",
        "gpu",
        "-q",
    ];
    // `formats::run` chooses the CPU: these runs name the GPU.
    let run_ok = |input: &std::path::Path, out: &std::path::Path, extra: &[&str]| {
        let mut a = vec!["run".to_string(), input.display().to_string(), "-o".into()];
        a.push(out.display().to_string());
        a.extend(extra.iter().map(|s| s.to_string()));
        let (code, _, err) = crate::support::gpuprep_output(&a);
        assert_eq!(code, 0, "{a:?}: {err}");
    };
    let out = tmp.path().join("out.h5");
    run_ok(
        &ome,
        &out,
        &[&args[..], &["--apply-to-channels", "all"]].concat(),
    );
    assert!(h5_f64(&out, "shifts").iter().any(|&s| s != 0.0));
    let given = out.display().to_string();
    let bits = |a: ndarray::ArrayD<f32>| a.mapv(f32::to_bits);
    for (channel, want) in [("0", "out.h5"), ("1", "out_c1.h5")] {
        let again = tmp.path().join(format!("again{channel}.h5"));
        run_ok(
            &ome,
            &again,
            &[&args[..], &["--channel", channel, "--shifts", &given]].concat(),
        );
        assert_eq!(
            bits(h5_f32(&again, "data")),
            bits(h5_f32(&tmp.path().join(want), "data")),
            "channel {channel}"
        );
    }
}

#[test]
fn given_shifts_are_applied_bit_for_bit_as_registering_with_them() {
    use crate::formats::{h5_f32, h5_f64, run_err, run_ok};
    let tmp = tempfile::tempdir().unwrap();
    let ome = two_channel_store(tmp.path());
    let zarr = ["--format", "zarr", "--upsample-factor", "4"];
    // Registered on channel 0, channel 1 written with the same shifts.
    let out = tmp.path().join("out.h5");
    run_ok(
        &ome,
        &out,
        &[&zarr[..], &["--apply-to-channels", "all"]].concat(),
    );
    let out_c1 = tmp.path().join("out_c1.h5");
    let shifts = h5_f64(&out, "shifts");
    assert!(shifts.iter().any(|&s| s != 0.0), "{shifts:?}");
    assert_eq!(h5_f64(&out_c1, "shifts"), shifts);
    // --shifts of the output on channel 0: the registered run's data, bit for bit.
    let again = tmp.path().join("again.h5");
    let given = out.display().to_string();
    run_ok(&ome, &again, &[&zarr[..], &["--shifts", &given]].concat());
    let bits = |a: ndarray::ArrayD<f32>| a.mapv(f32::to_bits);
    assert_eq!(bits(h5_f32(&again, "data")), bits(h5_f32(&out, "data")));
    // On channel 1: what --apply-to-channels wrote.
    let c1 = tmp.path().join("c1.h5");
    run_ok(
        &ome,
        &c1,
        &[&zarr[..], &["--channel", "1", "--shifts", &given]].concat(),
    );
    assert_eq!(bits(h5_f32(&c1, "data")), bits(h5_f32(&out_c1, "data")));
    assert_ne!(bits(h5_f32(&c1, "data")), bits(h5_f32(&out, "data")));
    // The same shifts from a CSV table (rows out of order, full precision).
    let csv = tmp.path().join("shifts.csv");
    let mut text = String::from("t,z,y,x\n");
    for t in (0..5).rev() {
        let r = |a: usize| shifts[[t, a]];
        text += &format!("{t},{:?},{:?},{:?}\n", r(0), r(1), r(2));
    }
    std::fs::write(&csv, text).unwrap();
    let from_csv = tmp.path().join("csv.h5");
    let csv_arg = csv.display().to_string();
    run_ok(
        &ome,
        &from_csv,
        &[&zarr[..], &["--shifts", &csv_arg]].concat(),
    );
    assert_eq!(bits(h5_f32(&from_csv, "data")), bits(h5_f32(&out, "data")));
    // A count that does not match: one line naming the file, and no output.
    std::fs::write(&csv, "y,x\n1,2\n3,4\n").unwrap();
    let bad = tmp.path().join("bad.h5");
    let (code, err) = run_err(&ome, &bad, &[&zarr[..], &["--shifts", &csv_arg]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("shifts.csv")
            && err.contains("holds shifts for 2 timepoints; the input has 5"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!bad.exists());
    // A channel list naming the registered channel, or one past the channels: refused up front.
    let (_, err) = run_err(
        &ome,
        &bad,
        &[&zarr[..], &["--apply-to-channels", "0"]].concat(),
    );
    assert!(
        err.contains("--apply-to-channels: channel 0 is the one registered"),
        "{err}"
    );
    let (_, err) = run_err(
        &ome,
        &bad,
        &[&zarr[..], &["--apply-to-channels", "2"]].concat(),
    );
    assert!(
        err.contains("channel 2 is out of range: the input has 2 channels"),
        "{err}"
    );
    assert!(!bad.exists());
}

/// The QC side arrays in both output formats: framewise displacement from the shifts, the
/// correlation with the reference higher after registration than before for a drifting blob, and
/// a blank frame and a frame at the `--max-shift` bound flagged.
#[test]
fn qc_arrays_are_written_in_both_formats() {
    use crate::formats::{run_ok, series, write_h5};
    let tmp = tempfile::tempdir().unwrap();
    let mut data = series(7, [8, 3, 16, 16]);
    data.slice_mut(ndarray::s![5, .., .., ..]).fill(0);
    let input = tmp.path().join("in.h5");
    write_h5(&input, &data);
    for name in ["qc.h5", "qc.zarr"] {
        let out = tmp.path().join(name);
        // One blob in noise: unwhitened correlation registers every frame.
        run_ok(
            &input,
            &out,
            &["--dataset", "data", "--normalization", "none"],
        );
        let read = |out: &std::path::Path, name| gpuprep_io::arrays::read_f64(out, name).unwrap();
        let shifts = read(&out, "shifts");
        let fd = read(&out, "framewise_displacement");
        assert_eq!(fd.len(), 8);
        for t in 1..8 {
            let d: f64 = (0..3)
                .map(|a| (shifts[[t, a]] - shifts[[t - 1, a]]).powi(2))
                .sum();
            assert!((fd[t] - d.sqrt()).abs() < 1e-12, "{name} {t}");
        }
        let (before, after) = (
            read(&out, "correlation_before"),
            read(&out, "correlation_after"),
        );
        // The blob drifts 0.7 voxel a frame in y: from frame 3 on registration must help.
        for t in [3, 4, 6, 7] {
            assert!(after[t] > before[t], "{name} {t}: {before:?} {after:?}");
        }
        let flags = read(&out, "suspicious");
        assert!(before[5].is_nan() && flags[5] == 1.0, "{name}: {flags:?}");
        // Bounded to one voxel in y: the frames whose shift reaches it are flagged.
        let bounded = tmp.path().join(format!("bounded_{name}"));
        run_ok(
            &input,
            &bounded,
            &["--dataset", "data", "--max-shift", "0,1,3"],
        );
        let (shifts, flags) = (read(&bounded, "shifts"), read(&bounded, "suspicious"));
        for t in (0..8).filter(|&t| t != 5) {
            let at_bound = shifts[[t, 1]].abs() >= 1.0 - 1e-9 || shifts[[t, 2]].abs() >= 3.0 - 1e-9;
            assert_eq!(
                flags[t] == 1.0,
                at_bound,
                "{name} {t}: {shifts:?} {flags:?}"
            );
        }
        // The bound is reached by some frame besides the blank one.
        assert!((0..8).any(|t| t != 5 && flags[t] == 1.0), "{flags:?}");
    }
}

/// `--reference-iterations`: the mean of a drifting range is blurred; registered onto itself it
/// sharpens, and the run's shifts come closer to the truth. The reference used is saved.
#[test]
fn reference_iterations_sharpen_a_blurred_mean_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let m = movie([1, 64, 64], 20, 0.1, &[], 21);
    let input = write_movie(tmp.path(), &m);
    let mut worst_by_iterations = Vec::new();
    for n in ["0", "2"] {
        let out = tmp.path().join(format!("it{n}.h5"));
        crate::formats::run_ok(
            &input,
            &out,
            &[
                "--dataset",
                "data",
                "--no-median",
                "--reference-mean",
                "0:20",
                "--upsample-factor",
                "10",
                "--smooth-sigma",
                "0,2,2",
                "--max-shift",
                "0,8,8",
                "--reference-iterations",
                n,
            ],
        );
        let shifts = gpuprep_io::arrays::read_f64(&out, "shifts").unwrap();
        // Shifts are relative to the reference: compare drift differences to frame 0.
        let worst = (0..20)
            .flat_map(|t| (1..3).map(move |a| (t, a)))
            .map(|(t, a)| {
                ((shifts[[t, a]] - shifts[[0, a]]) - (m.truth[t][a] - m.truth[0][a])).abs()
            })
            .fold(0.0, f64::max);
        let saved = gpuprep_io::arrays::read_f32(&out, "reference");
        assert_eq!(saved.is_ok(), n != "0", "{n}");
        worst_by_iterations.push(worst);
    }
    eprintln!("worst relative error by iterations 0, 2: {worst_by_iterations:?}");
    assert!(
        worst_by_iterations[1] < worst_by_iterations[0] && worst_by_iterations[1] <= 0.5,
        "{worst_by_iterations:?}"
    );
}

/// `tests/fixtures/disambiguate.h5` (`scripts/make_disambiguate_fixture.py`).
fn disambiguate_fixture() -> hdf5::File {
    hdf5::File::open(crate::support::fixture("disambiguate.h5"))
        .expect("tests/fixtures/disambiguate.h5 (run scripts/make_disambiguate_fixture.py)")
}

fn cases(f: &hdf5::File, kind: &str) -> Vec<(String, hdf5::Group)> {
    let g = f.group(kind).unwrap();
    let mut names = g.member_names().unwrap();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let c = g.group(&n).unwrap();
            (n, c)
        })
        .collect()
}

fn shift3(v: Vec<f64>) -> [f64; 3] {
    [v[0], v[1], v[2]]
}

/// scipy's `grid-wrap` shift (`gpuprep_core::spline::shift_grid_wrap`), which the disambiguation
/// shifts with: orders 0, 1, 3 on odd and prime shapes, a singleton axis, shifts past the size,
/// exact multiples of it and half-voxel ties, against scipy 1.17's numbers.
#[test]
fn grid_wrap_shift_matches_scipy() {
    use crate::support::{attr_i64, attr_vec_f64, ds3};
    let f = disambiguate_fixture();
    let all = cases(&f, "gridwrap");
    assert_eq!(all.len(), 18);
    for (name, c) in all {
        let (input, want) = (ds3(&c, "input"), ds3(&c, "output"));
        let order = attr_i64(&c, "order") as usize;
        let shift = shift3(attr_vec_f64(&c, "shift"));
        let got = gpuprep_core::spline::shift_grid_wrap(input.view(), shift, order);
        let range = input.iter().fold(0f32, |m, v| m.max(v.abs()));
        let tol = if order == 3 { 1e-5 } else { 2e-6 } * (1.0 + range);
        let (worst, at) = crate::support::max_abs_diff(got.view(), want.view());
        assert!(
            worst <= tol,
            "{name}: order {order} shift {shift:?}: {worst} at {at:?}"
        );
    }
}

/// scikit-image's `disambiguate=True` on two windows of one textured field offset beyond half the
/// field of view (its test_disambiguate_2d, in 3-D, whole and sub-voxel shifts, both
/// normalizations): the rule alone on scikit-image's plain shift, and the CPU registration followed
/// by it, give scikit-image's disambiguated shift; the GPU's registration followed by it gives the
/// CPU's. Where the plain shift was wrong, the disambiguated one is the truth.
#[test]
fn disambiguation_matches_scikit_image() {
    use crate::support::{attr_i64, attr_str, attr_vec_f64, ds3, ds_f64};
    use gpuprep_core::register::disambiguate;
    let f = disambiguate_fixture();
    let mut gpu = gpu();
    let mut fixed = 0;
    for (name, c) in cases(&f, "disambiguate") {
        let (reference, moving) = (ds3(&c, "reference"), ds3(&c, "moving"));
        let plain = shift3(ds_f64(&c, "plain").iter().copied().collect());
        let want = shift3(ds_f64(&c, "disambiguated").iter().copied().collect());
        let truth = shift3(attr_vec_f64(&c, "true_shift"));
        let u = attr_i64(&c, "upsample_factor") as u32;
        let norm = match attr_str(&c, "normalization").as_str() {
            "none" => Normalization::None,
            _ => Normalization::Phase,
        };
        let close = |a: [f64; 3], b: [f64; 3]| (0..3).all(|i| (a[i] - b[i]).abs() < 1e-4);
        let rule = disambiguate(reference.view(), moving.view(), plain).unwrap();
        assert!(
            close(rule, want),
            "{name}: rule {rule:?}, scikit-image {want:?}"
        );

        let p = RegisterParams::new(u, norm).unwrap();
        let mut cpu = CpuBackend::new();
        let h = cpu.set_reference(reference.view(), &p).unwrap();
        let r = cpu.register(&h, moving.view()).unwrap();
        let cpu_shift = disambiguate(reference.view(), moving.view(), r.shift).unwrap();
        assert!(
            close(cpu_shift, want),
            "{name}: cpu {cpu_shift:?}, scikit-image {want:?}"
        );
        if let Some(g) = gpu.as_mut() {
            let h = g.set_reference(reference.view(), &p).unwrap();
            let r = g.register(&h, moving.view()).unwrap();
            let gpu_shift = disambiguate(reference.view(), moving.view(), r.shift).unwrap();
            let tol = if u == 1 { 0.0 } else { 1.0 / u as f64 };
            assert!(
                (0..3).all(|a| (gpu_shift[a] - cpu_shift[a]).abs() <= tol),
                "{name}: gpu {gpu_shift:?}, cpu {cpu_shift:?}"
            );
        }
        if !close(plain, truth) && close(want, truth) {
            fixed += 1;
        }
    }
    // The fixture has cases the disambiguation puts right (six of nine).
    assert!(fixed >= 5, "{fixed}");
}

/// A whole-voxel shift's choice on a tiny volume, and the degenerate case (every tile constant):
/// no choice (`None`; scikit-image warns and keeps the shift).
#[test]
fn disambiguation_keeps_the_shift_when_no_tile_correlates() {
    use gpuprep_core::register::disambiguate;
    let flat = Array3::<f32>::from_elem((1, 6, 7), 2.0);
    assert_eq!(
        disambiguate(flat.view(), flat.view(), [0.0, 2.0, -3.0]),
        None
    );
    // An exactly periodic pair (moving is the reference rolled by -2 along x): the candidates +2 and
    // -5 both fit, every tile correlates perfectly, and among equals the first tile in
    // `itertools.product` order, the negative candidate's, wins (scikit-image 0.26 gives -5 from
    // either).
    let reference = Array3::from_shape_fn((1, 5, 7), |(_, y, x)| (x * x + 3 * y) as f32);
    let moving =
        Array3::from_shape_fn((1, 5, 7), |(_, y, x)| (((x + 2) % 7).pow(2) + 3 * y) as f32);
    for given in [2.0, -5.0] {
        let got = disambiguate(reference.view(), moving.view(), [0.0, 0.0, given]);
        assert_eq!(got, Some([0.0, 0.0, -5.0]), "{given}");
    }
}

/// `gpuprep run --disambiguate`: frames that are windows of one textured field, one offset beyond
/// half the field of view: without the flag its shift is the aliased one (wrong by the volume's
/// size along y and x), with it the true one; the other frames are unchanged; a `--max-shift` bound
/// still holds (the other candidate is not taken past it); the GPU run gives the CPU's shifts; the
/// flag is recorded in the output.
#[test]
fn disambiguate_recovers_shifts_beyond_half_the_field_of_view() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(1212);
    let field = Array3::from_shape_fn((1, 110, 110), |_| rng.random::<f32>());
    let (origin, win) = (30usize, 48usize);
    let offsets: [[i64; 3]; 3] = [[0, 0, 0], [0, 27, -26], [0, -4, 3]];
    let mut all = ndarray::Array4::<f32>::zeros((3, 1, win, win));
    for (t, d) in offsets.iter().enumerate() {
        let (y, x) = (
            (origin as i64 + d[1]) as usize,
            (origin as i64 + d[2]) as usize,
        );
        all.slice_mut(ndarray::s![t, .., .., ..])
            .assign(&field.slice(ndarray::s![.., y..y + win, x..x + win]));
    }
    let input = tmp.path().join("windows.h5");
    let f = hdf5::File::create(&input).unwrap();
    f.new_dataset_builder()
        .with_data(&all)
        .create("data")
        .unwrap();
    drop(f);
    let shifts = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec!["--dataset", "data", "--no-zscore"];
        args.extend(extra);
        crate::formats::run_ok(&input, &out, &args);
        (gpuprep_io::arrays::read_f64(&out, "shifts").unwrap(), out)
    };
    let (plain, plain_out) = shifts("plain.h5", &[]);
    let (amb, amb_out) = shifts("amb.h5", &["--disambiguate"]);
    for (t, d) in offsets.iter().enumerate() {
        let want: [f64; 3] = d.map(|v| v as f64);
        let got = [amb[[t, 0]], amb[[t, 1]], amb[[t, 2]]];
        assert_eq!(got, want, "frame {t} with --disambiguate");
    }
    // Without the flag frame 1's shift is aliased: the truth minus the window's size.
    assert_eq!(
        [plain[[1, 0]], plain[[1, 1]], plain[[1, 2]]],
        [0.0, 27.0 - win as f64, -26.0 + win as f64]
    );
    assert_eq!([plain[[2, 1]], plain[[2, 2]]], [-4.0, 3.0]);
    // A --max-shift bound holds with --disambiguate too: a candidate past it is not taken.
    let (bounded, _) = shifts("bounded.h5", &["--disambiguate", "--max-shift", "0,30,30"]);
    let (tight, _) = shifts("tight.h5", &["--disambiguate", "--max-shift", "0,23,23"]);
    assert_eq!(bounded, amb, "a bound the true shifts are within");
    for t in 0..3 {
        assert!(
            tight[[t, 1]].abs() <= 23.0 && tight[[t, 2]].abs() <= 23.0,
            "frame {t}: {tight:?}"
        );
    }
    assert_eq!(
        [tight[[1, 1]], tight[[1, 2]]],
        [27.0 - win as f64, -26.0 + win as f64]
    );
    let attr = |out: &std::path::Path| {
        let f = hdf5::File::open(out).unwrap();
        crate::support::attr_i64(&f, "disambiguate")
    };
    assert_eq!((attr(&plain_out), attr(&amb_out)), (0, 1));

    if gpu().is_some() {
        let out = tmp.path().join("gpu.h5");
        let args = [
            "run",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--backend",
            "gpu",
            "--gpu-api",
            "vulkan",
            "-q",
            "--dataset",
            "data",
            "--no-zscore",
            "--disambiguate",
        ];
        let (code, _, err) = crate::support::gpuprep_output(&args);
        assert_eq!(code, 0, "{err}");
        let gpu_shifts = gpuprep_io::arrays::read_f64(&out, "shifts").unwrap();
        assert_eq!(gpu_shifts, amb, "GPU shifts");
        let (cpu_data, gpu_data) = (
            crate::formats::h5_f32(&amb_out, "data"),
            crate::formats::h5_f32(&out, "data"),
        );
        let worst = cpu_data
            .iter()
            .zip(gpu_data.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "GPU data differs from the CPU's by {worst}");
    }
}

/// `--reference-top N` (suite2p's template): eight of the reference range's twenty frames show
/// another field of view (another seed's cells), in noisy data (0.25). Refined as the plain mean
/// (three iterations), the reference mixes both scenes; averaging only the 12 frames most correlated
/// with it keeps the right ones, and the other frames' drift comes out closer to the truth: RMS
/// error of the good frames about their mean offset 0.092 -> 0.073 voxel here (seeds 41 and 7 of
/// the movie: 0.122 -> 0.095, 0.087 -> 0.072). The option is recorded.
#[test]
fn reference_top_leaves_outlier_frames_out_of_the_template() {
    const NOISE: f32 = 0.25;
    let tmp = tempfile::tempdir().unwrap();
    let shape = [1, 64, 64];
    let outliers = [2usize, 4, 6, 9, 11, 13, 15, 17];
    let mut m = movie(shape, 20, NOISE, &[], 33);
    // Another field of view (another seed's cells) in the outlier frames.
    let mut other = movie(shape, 20, NOISE, &[], 99);
    for &t in &outliers {
        m.frames[t] = std::mem::take(&mut other.frames[t]);
    }
    let input = write_movie(tmp.path(), &m);
    let mut rms_by_top = Vec::new();
    for top in [None, Some("12")] {
        let out = tmp.path().join(format!("top{top:?}.h5"));
        let mut args = vec![
            "--dataset",
            "data",
            "--no-median",
            "--no-zscore",
            "--reference-mean",
            "0:20",
            "--upsample-factor",
            "10",
            "--smooth-sigma",
            "0,2,2",
            "--max-shift",
            "0,8,8",
            "--reference-iterations",
            "3",
        ];
        if let Some(n) = top {
            args.extend(["--reference-top", n]);
        }
        crate::formats::run_ok(&input, &out, &args);
        let shifts = gpuprep_io::arrays::read_f64(&out, "shifts").unwrap();
        let good: Vec<usize> = (0..20).filter(|t| !outliers.contains(t)).collect();
        // Each good frame's error from the truth, less their mean (the reference's own offset).
        let err = |t: usize, a: usize| shifts[[t, a]] - m.truth[t][a];
        let mut sq = 0.0;
        for a in 1..3 {
            let mean = good.iter().map(|&t| err(t, a)).sum::<f64>() / good.len() as f64;
            sq += good
                .iter()
                .map(|&t| (err(t, a) - mean).powi(2))
                .sum::<f64>();
        }
        let rms = (sq / (2 * good.len()) as f64).sqrt();
        let f = hdf5::File::open(&out).unwrap();
        let recorded = crate::support::attr_i64(&f, "reference_top");
        assert_eq!(recorded, top.map_or(0, |n| n.parse().unwrap()));
        rms_by_top.push(rms);
    }
    eprintln!("rms drift error, plain mean vs top 12: {rms_by_top:?}");
    assert!(rms_by_top[1] < 0.9 * rms_by_top[0], "{rms_by_top:?}");
}

/// The reference refinement on the GPU (lavapipe) as on the CPU: `--reference-iterations` with and
/// without `--reference-top`, bounded and smoothed, on a 3-D movie with a median: shifts identical at
/// integer precision and within 1/upsample at upsample 4, the saved references within float32 rounding
/// of the filtered and shifted frames' means.
#[test]
fn the_reference_refinement_on_the_gpu_equals_the_cpus() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = movie([6, 24, 28], 12, 0.1, &[], 5);
    let input = write_movie(tmp.path(), &m);
    let run = |backend: &str, up: &str, top: Option<&str>| {
        let out = tmp
            .path()
            .join(format!("{backend}_{up}_{}.h5", top.unwrap_or("all")));
        let mut args: Vec<String> = [
            "run",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-q",
            "--dataset",
            "data",
            "--backend",
            backend,
            "--reference-mean",
            "0:8",
            "--reference-iterations",
            "2",
            "--upsample-factor",
            up,
            "--max-shift",
            "2,5,5",
            "--smooth-sigma",
            "0.5,1,1",
        ]
        .map(String::from)
        .to_vec();
        if let Some(n) = top {
            args.extend(["--reference-top".to_string(), n.to_string()]);
        }
        let (code, _, err) = crate::support::gpuprep_output(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        (
            gpuprep_io::arrays::read_f64(&out, "shifts").unwrap(),
            gpuprep_io::arrays::read_f32(&out, "reference").unwrap(),
        )
    };
    for top in [None, Some("5")] {
        for up in ["1", "4"] {
            let (cpu, cpu_ref) = run("cpu", up, top);
            let (gpu, gpu_ref) = run("gpu", up, top);
            let tol = if up == "1" { 0.0 } else { 0.25 + 1e-9 };
            for (c, g) in cpu.iter().zip(gpu.iter()) {
                assert!(
                    (c - g).abs() <= tol,
                    "top {top:?} upsample {up}: {cpu:?} vs {gpu:?}"
                );
            }
            let worst = cpu_ref
                .iter()
                .zip(gpu_ref.iter())
                .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-4,
                "top {top:?} upsample {up}: references differ by {worst}"
            );
        }
    }
}
