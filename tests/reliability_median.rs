//! Issue 8, item 14: the median filter on volumes with an axis shorter than the window, end to end
//! through the `gpuprep` binary (a two-photon movie has one z-plane; the default window is 3x3x3).

use crate::support::{fixture, same_shifts_worst_data_diff};
use gpuprep_core::params::{BoundaryMode, MedianParams};
use gpuprep_cpu::median3d::median3d;
use gpuprep_cpu::reference::median3d_sorted;
use ndarray::{Array4, Axis};
use std::path::Path;

/// (exit code, stderr) of the binary run with `args`.
fn gpuprep(args: &[&str]) -> (i32, String) {
    let (code, _, err) = crate::support::gpuprep_output(args);
    (code, err)
}

fn run_ok(args: &[&str]) {
    let (code, err) = gpuprep(args);
    assert_eq!(code, 0, "{args:?}: exit {code}, stderr {err}");
}

fn read4(path: &Path, name: &str) -> Array4<f32> {
    hdf5::File::open(path)
        .unwrap()
        .dataset(name)
        .unwrap()
        .read::<f32, ndarray::Ix4>()
        .unwrap()
}

/// A synthetic (T, 1, y, x) movie with known in-plane shifts, as one 4-D file.
fn movie(dir: &Path) -> String {
    let d = dir.join("movie");
    let d = d.display().to_string();
    run_ok(&[
        "synth",
        &d,
        "--shape",
        "5,1,24,29",
        "--mode",
        "realistic",
        "--four-d",
        "--seed",
        "3",
    ]);
    format!("{d}/data.h5")
}

/// Median, registration, shift and z-score with every default on a one-plane movie, on the CPU and
/// (when there is one) the GPU: both run, z shifts are 0, and the two outputs agree.
#[test]
fn one_plane_movie_runs_end_to_end_with_the_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let input = movie(tmp.path());
    let cpu = tmp.path().join("cpu.h5");
    run_ok(&[
        "run",
        &input,
        "-o",
        &cpu.display().to_string(),
        "-q",
        "--backend",
        "cpu",
    ]);
    let data = read4(&cpu, "data");
    assert_eq!(data.shape(), [5, 1, 24, 29]);
    let shifts = hdf5::File::open(&cpu)
        .unwrap()
        .dataset("shifts")
        .unwrap()
        .read_2d::<f64>()
        .unwrap();
    assert!(shifts.column(0).iter().all(|&s| s == 0.0), "{shifts}");
    assert!(shifts.iter().any(|&s| s != 0.0), "in-plane shifts found");

    let gpu = tmp.path().join("gpu.h5");
    let g = gpu.display().to_string();
    let (code, err) = gpuprep(&["run", &input, "-o", &g, "-q", "--backend", "gpu"]);
    if code != 0 && std::env::var("GPUPREP_REQUIRE_GPU").as_deref() != Ok("1") {
        eprintln!("SKIPPED the GPU run: {err}");
        return;
    }
    assert_eq!(code, 0, "GPU run: {err}");
    let worst = same_shifts_worst_data_diff(&cpu, &gpu);
    assert!(worst < 1e-3, "GPU and CPU outputs differ by {worst}");
}

/// scipy on one plane: reflect, nearest, mirror and wrap repeat it, so 3x3x3 is the (1, 3, 3) window;
/// constant mode brings cval into every window. Median only, through the CLI's flags.
#[test]
fn one_plane_median_follows_scipy_in_every_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let input = movie(tmp.path());
    let raw = read4(Path::new(&input), "default");
    for mode in BoundaryMode::ALL {
        let out = tmp.path().join(format!("{mode}.h5"));
        run_ok(&[
            "run",
            &input,
            "-o",
            &out.display().to_string(),
            "-q",
            "--backend",
            "cpu",
            "--no-register",
            "--no-zscore",
            "--median-mode",
            mode.name(),
            "--median-cval",
            "0.25",
        ]);
        let got = read4(&out, "data");
        for (t, (v, g)) in raw
            .axis_iter(Axis(0))
            .zip(got.axis_iter(Axis(0)))
            .enumerate()
        {
            let want = if mode == BoundaryMode::Constant {
                let p = MedianParams::new([3, 3, 3], mode, 0.25).unwrap();
                median3d_sorted(v, &p)
            } else {
                median3d(v, &MedianParams::new([1, 3, 3], mode, 0.0).unwrap())
            };
            assert_eq!(g, want, "{mode}, timepoint {t}");
        }
    }
    // The file the README's quick start uses, forced through a window longer than every axis.
    let out = tmp.path().join("long.h5");
    let series = fixture("io/series").display().to_string();
    run_ok(&[
        "run",
        &series,
        "-o",
        &out.display().to_string(),
        "-q",
        "--backend",
        "cpu",
        "--median-size",
        "9,11,13",
    ]);
}

/// A window too large to gather (or whose element count overflows) is one clear line, exit 2, and
/// nothing written; it used to abort on the allocation or panic on the overflow.
#[test]
fn an_impossible_window_is_a_clear_error() {
    let series = fixture("io/series").display().to_string();
    for size in ["3000001", "1,1,99999999999", "1,4194305,1"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out.h5").display().to_string();
        let args = [
            "run",
            &series,
            "-o",
            &out,
            "-q",
            "--backend",
            "cpu",
            "--median-size",
            size,
        ];
        let (code, err) = gpuprep(&args);
        assert_eq!(code, 2, "{size}: {err}");
        assert!(
            err.starts_with("gpuprep: ")
                && err.contains("--median-size")
                && err.lines().count() == 1,
            "{size}: {err}"
        );
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "{size}");
    }
}
