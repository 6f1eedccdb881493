//! Issue 8's CLI items: jobs too large for memory refused up front (item 10, and the (2, 2^40, 2^40,
//! 2^40) shape of item 19), `--threads` bounded (12), negative flag values (16), `--gpu-api` with
//! `--backend cpu` (20).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Runs the binary with `env` set; (exit code, stderr, wall time).
fn gpuprep_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, Duration) {
    let mut cmd = crate::support::gpuprep_command();
    cmd.args(args).env_remove("GPUPREP_MEMORY_LIMIT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed(),
    )
}

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/io")
        .join(rel)
        .display()
        .to_string()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// `run INPUT ARGS -o DIR/out.h5 --backend cpu -q` must fail fast with exit 2, one line holding every
/// needle, no panic, and leave `DIR` as it was.
fn expect_refused(input: &str, args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.h5").display().to_string();
    let mut all = vec!["run", input];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", &out, "--backend", "cpu", "-q"]);
    let (code, err, took) = gpuprep_env(&all, env);
    assert_eq!(code, 2, "{args:?}: exit {code}, stderr {err}");
    assert!(err.starts_with("gpuprep: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} should mention {n:?}");
    }
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new(), "left files");
}

/// A chunked float32 dataset of `shape` with no data written: HDF5 allocates no chunk, so the file
/// is a few KiB however large the shape.
fn sparse(dir: &Path, shape: &[usize], chunk: &[usize]) -> String {
    let path = dir.join("sparse.h5");
    let f = hdf5::File::create(&path).unwrap();
    f.new_dataset::<f32>()
        .shape(shape)
        .chunk(chunk)
        .create("default")
        .unwrap();
    drop(f);
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    path.display().to_string()
}

#[test]
fn a_sparse_4096_cube_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let input = sparse(dir.path(), &[4096, 4096, 4096], &[64, 64, 64]);
    // The machine's own figure: no machine has the terabytes this needs. One volume, not a movie.
    expect_refused(
        &input,
        &["--axes", "zyx"],
        &[],
        &[
            "sparse.h5",
            "(1, 4096, 4096, 4096)",
            "needs about",
            "TiB of memory",
            "is available",
            "crop or bin",
        ],
    );
}

#[test]
fn a_billion_timepoints_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let input = sparse(dir.path(), &[1_000_000_000, 3, 3, 3], &[1 << 14, 3, 3, 3]);
    // 40 bytes of results per timepoint, twice at the end: 74.5 GiB.
    expect_refused(
        &input,
        &[],
        &[("GPUPREP_MEMORY_LIMIT", "16G")],
        &[
            "(1000000000, 3, 3, 3)",
            "needs about 74.",
            "per-timepoint results (1000000000 timepoints",
            "but 16.0 GiB is available (GPUPREP_MEMORY_LIMIT)",
            "shorter runs",
        ],
    );
}

#[test]
fn upsample_factor_1000_runs_in_bounded_memory() {
    // The 1500^3 region (50 GiB of complex128, refused before) is swept in slabs of at most 64 MiB:
    // the whole job now fits 512 MiB. One 1x3x4 volume: the sweep's 3.4e9 values take ~15 s.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("vol.h5");
    let f = hdf5::File::create(&input).unwrap();
    let v: Vec<f32> = (0..12).map(|i| ((i * 7) % 5) as f32).collect();
    f.new_dataset::<f32>()
        .shape([1, 3, 4])
        .create("default")
        .unwrap()
        .write_raw(&v)
        .unwrap();
    drop(f);
    let out = tmp.path().join("out.h5");
    let (code, err, _) = gpuprep_env(
        &[
            "run",
            &input.display().to_string(),
            "-o",
            &out.display().to_string(),
            "--backend",
            "cpu",
            "--upsample-factor",
            "1000",
            "--no-median",
            "--no-zscore",
            "-q",
        ],
        &[("GPUPREP_MEMORY_LIMIT", "512M")],
    );
    assert_eq!(code, 0, "{err}");
    let shifts = hdf5::File::open(&out)
        .unwrap()
        .dataset("shifts")
        .unwrap()
        .read_raw::<f64>()
        .unwrap();
    // The volume registered onto itself.
    assert!(shifts.iter().all(|s| s.abs() < 1e-3), "{shifts:?}");
}

#[test]
fn upsample_factor_1000_is_refused_naming_the_slab_when_even_that_does_not_fit() {
    // 48 MiB for the program and 64 MiB for the upsampling's slab do not fit 100 MiB.
    expect_refused(
        &fixture("series"),
        &["--upsample-factor", "1000"],
        &[("GPUPREP_MEMORY_LIMIT", "100M")],
        &[
            "--upsample-factor: ",
            "series/ind_00000.h5",
            "upsampling region 1500^3 at --upsample-factor 1000, in slabs: 65.",
            "but 100.0 MiB is available",
            "lower --upsample-factor",
        ],
    );
}

#[test]
fn the_available_figure_decides_and_can_be_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.h5").display().to_string();
    let series = fixture("series");
    let run = |limit: &str| {
        gpuprep_env(
            &[
                "run",
                &series,
                "-o",
                &out,
                "--backend",
                "cpu",
                "-q",
                "--force",
            ],
            &[("GPUPREP_MEMORY_LIMIT", limit)],
        )
    };
    // A tiny job passes with room to spare, and is refused when told there is only 1 MiB.
    let (code, err, _) = run("64G");
    assert_eq!(code, 0, "{err}");
    expect_refused(
        &series,
        &[],
        &[("GPUPREP_MEMORY_LIMIT", "1M")],
        &[
            "needs about",
            "program and libraries",
            "but 1.0 MiB is available",
        ],
    );
    let (code, err, _) = run("lots");
    assert_eq!(code, 2);
    assert!(err.contains("GPUPREP_MEMORY_LIMIT: got \"lots\""), "{err}");
}

#[test]
fn synth_refuses_a_2048_cube_before_touching_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synth");
    let d = dir.display().to_string();
    let (code, err, took) = gpuprep_env(
        &["synth", &d, "--shape", "2,2048,2048,2048"],
        &[("GPUPREP_MEMORY_LIMIT", "16G")],
    );
    assert_eq!(code, 2, "{err}");
    for n in [
        "--shape: (2, 2048, 2048, 2048) needs about 128.",
        "float64 volume and its 8-byte-per-voxel copy",
        "but 16.0 GiB is available",
        "use a smaller --shape",
    ] {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!dir.exists(), "synth created {d}");
}

#[test]
fn a_shape_of_2_pow_40_cubed_is_too_large_not_a_chunk_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synth");
    let d = dir.display().to_string();
    let big = (1u64 << 40).to_string();
    let shape = format!("2,{big},{big},{big}");
    let (code, err, _) = gpuprep_env(&["synth", &d, "--shape", &shape, "--four-d"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("voxels, too large for any machine's memory"),
        "{err}"
    );
    assert!(!err.contains("chunk"), "{err}");
    assert!(!dir.exists());

    // HDF5 declares such a dataset happily (chunked, nothing written); `run` says what is wrong. Made
    // small and resized, since the hdf5 crate multiplies the dimensions of a dataset it creates.
    let path = tmp.path().join("huge.h5");
    let f = hdf5::File::create(&path).unwrap();
    let ds = f
        .new_dataset::<f32>()
        .shape(hdf5::SimpleExtents::resizable([2, 64, 64, 64]))
        .chunk([1, 64, 64, 64])
        .create("default")
        .unwrap();
    let big = 1usize << 40;
    ds.resize([2, big, big, big]).unwrap();
    drop((ds, f));
    let input = path.display().to_string();
    expect_refused(
        &input,
        &[],
        &[],
        &[
            "(2, 1099511627776, 1099511627776, 1099511627776) (t, z, y, x): volume",
            "voxels, too large for any machine's memory",
        ],
    );
}

#[test]
fn threads_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.h5").display().to_string();
    let series = fixture("series");
    let cores = std::thread::available_parallelism().unwrap().get();
    let max = (4 * cores).clamp(64, 1024);
    let too_many = (max + 1).to_string();
    expect_refused(
        &series,
        &["--threads", &too_many],
        &[],
        &[
            &format!("--threads: got {too_many}; at most {max}"),
            "4 per core",
        ],
    );
    expect_refused(&series, &["--threads", "100000"], &[], &["at most"]);
    let (code, err, _) = gpuprep_env(
        &[
            "run",
            &series,
            "-o",
            &out,
            "--backend",
            "cpu",
            "-q",
            "--threads",
            &max.to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

fn attr_f64(path: &str, name: &str) -> f64 {
    hdf5::File::open(path)
        .unwrap()
        .attr(name)
        .unwrap()
        .read_scalar::<f64>()
        .unwrap()
}

#[test]
fn negative_numbers_are_flag_values() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.h5").display().to_string();
    let series = fixture("series");
    for (args, attr, want) in [
        (&["--shift-cval", "-1"][..], "shift_cval", -1.0),
        (
            &["--median-cval", "-7807.7", "--median-mode", "constant"][..],
            "median_cval",
            -7807.7f32 as f64,
        ),
        (&["--median-cval=-1"][..], "median_cval", -1.0),
    ] {
        let mut all = vec![
            "run",
            &series,
            "-o",
            &out,
            "--backend",
            "cpu",
            "-q",
            "--force",
        ];
        all.extend_from_slice(args);
        let (code, err, _) = gpuprep_env(&all, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(attr_f64(&out, attr), want, "{args:?}");
    }
    // A negative value reaches the check that refuses it, instead of "unexpected argument".
    expect_refused(
        &series,
        &["--upsample-factor", "-3"],
        &[],
        &["--upsample-factor: got -3"],
    );
}

#[test]
fn gpu_api_with_the_cpu_backend_is_an_error() {
    expect_refused(
        &fixture("series"),
        &["--gpu-api", "vulkan"],
        &[],
        &["--gpu-api: vulkan applies to the GPU backend; it has no effect with --backend cpu"],
    );
}
