//! The `gpuprep` binary: bad input gets one clear line, exit status 2, no panic, no output left behind.

use std::path::Path;

use crate::support::same_shifts_worst_data_diff;

/// (exit code, stderr) of the binary run with `args`.
fn gpuprep(args: &[&str]) -> (i32, String) {
    let (code, _, err) = crate::support::gpuprep_output(args);
    (code, err)
}

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/io")
        .join(rel)
        .display()
        .to_string()
}

/// Runs `gpuprep run ARGS -o OUT --backend cpu`, expects exit 2 with `needle` in the message, and
/// checks nothing was written.
fn expect_error(args: &[&str], needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.h5");
    let mut all: Vec<&str> = vec!["run"];
    all.extend_from_slice(args);
    let o = out.display().to_string();
    all.extend_from_slice(&["-o", &o, "--backend", "cpu", "-q"]);
    let (code, err) = gpuprep(&all);
    assert_eq!(code, 2, "{args:?}: exit {code}, stderr {err}");
    assert!(err.starts_with("gpuprep: "), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: {err:?} should mention {needle:?}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "{args:?}: left files behind"
    );
}

/// `gpuprep synth` of a float32 "realistic" series of `shape` (t,z,y,x) into `dir`; its path.
fn synth_f32(dir: &Path, shape: &str) -> String {
    let d = dir.display().to_string();
    let (code, err) = gpuprep(&[
        "synth",
        &d,
        "--shape",
        shape,
        "--mode",
        "realistic",
        "--dtype",
        "float32",
    ]);
    assert_eq!(code, 0, "{err}");
    d
}

/// Writes a NaN at voxel (4, 3, 2) of timepoint 3 of a `synth_f32` series in `dir`.
fn nan_in_timepoint_3(dir: &Path) {
    let f = hdf5::File::open_rw(dir.join("ind_00003.h5")).unwrap();
    let ds = f.dataset("default").unwrap();
    let mut v = ds.read::<f32, ndarray::Ix3>().unwrap();
    v[[4, 3, 2]] = f32::NAN;
    ds.write(&v).unwrap();
}

#[test]
fn bad_inputs_are_clear_errors() {
    let series = fixture("series");
    expect_error(&["/no/such/dir"], "/no/such/dir");
    let empty = tempfile::tempdir().unwrap();
    expect_error(
        &[&empty.path().display().to_string()],
        &empty.path().display().to_string(),
    );
    expect_error(&[&fixture("other_name.h5")], "default");
    expect_error(&[&fixture("shape_mismatch")], "ind_00001.h5");
    expect_error(&[&fixture("dtype_mismatch")], "ind_00001.h5");
    expect_error(&[&fixture("wrong_rank.h5")], "wrong_rank.h5");
    expect_error(&[&fixture("truncated.h5")], "truncated.h5");
    expect_error(&[&fixture("not_hdf5.h5")], "not_hdf5.h5");
    expect_error(&[&series, "--median-size", "4,3,3"], "--median-size");
    expect_error(&[&series, "--median-size", "0"], "--median-size");
    expect_error(&[&series, "--upsample-factor", "0"], "--upsample-factor");
    expect_error(&[&series, "--reference", "7"], "--reference");
    expect_error(&[&series, "--order", "2"], "--order");
}

/// A value outside a fixed-choice flag's names is clap's usage error (exit 2), naming the flag, the
/// value and every accepted name, before anything is read or written.
#[test]
fn bad_choices_are_usage_errors() {
    let series = fixture("series");
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("out.h5").display().to_string();
    let dir = tmp.path().join("synth").display().to_string();
    let boundary = "reflect, nearest, mirror, constant, wrap";
    let cases = [
        ("run", "--median-mode", boundary),
        ("run", "--shift-mode", boundary),
        ("run", "--normalization", "phase, none"),
        ("run", "--constant-voxels", "nan, zero"),
        ("run", "--nonfinite", "error, zero"),
        ("run", "--gpu-api", "any, vulkan, metal, dx12, gl"),
        ("synth", "--mode", "randn, realistic"),
        (
            "synth",
            "--dtype",
            "uint8, uint16, int16, int32, float32, float64",
        ),
    ];
    for (command, flag, names) in cases {
        let (code, err) = match command {
            "run" => gpuprep(&["run", &series, "-o", &o, "-q", flag, "grid"]),
            _ => gpuprep(&["synth", &dir, "--shape", "2,2,2,2", flag, "grid"]),
        };
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(
            err.contains(&format!("invalid value 'grid' for '{flag} <"))
                && err.contains(&format!("[possible values: {names}]")),
            "{flag}: {err}"
        );
        assert!(!err.contains("panicked"), "{flag}: {err}");
        assert!(err.starts_with("gpuprep: "), "{flag}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{flag}: one line: {err}");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    // Every other usage error reads the same way; help and version stay clap's own.
    for args in [&["run", "x", "--bogus"][..], &["run"], &["nosuchcommand"]] {
        let (code, err) = gpuprep(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.starts_with("gpuprep: ") && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    let out = crate::support::gpuprep_command()
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gpuprep "));
}

#[test]
fn output_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.h5");
    let o = out.display().to_string();
    let series = fixture("series");
    std::fs::write(&out, b"keep me").unwrap();
    let (code, err) = gpuprep(&["run", &series, "-o", &o, "--backend", "cpu", "-q"]);
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let (code, err) = gpuprep(&[
        "run",
        &series,
        "-o",
        &o,
        "--backend",
        "cpu",
        "-q",
        "--force",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
    // The output may not be one of the inputs.
    let input = fixture("series/ind_00000.h5");
    let (code, err) = gpuprep(&[
        "run",
        &series,
        "-o",
        &input,
        "--backend",
        "cpu",
        "-q",
        "--force",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ind_00000.h5"), "{err}");
}

#[test]
fn gpu_and_cpu_backends_write_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data").display().to_string();
    let (code, err) = gpuprep(&[
        "synth",
        &data,
        "--shape",
        "5,12,20,18",
        "--mode",
        "realistic",
        "--dtype",
        "uint16",
    ]);
    assert_eq!(code, 0, "{err}");
    let cpu = tmp.path().join("cpu.h5").display().to_string();
    let gpu = tmp.path().join("gpu.h5").display().to_string();
    let (code, err) = gpuprep(&["run", &data, "-o", &cpu, "--backend", "cpu", "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = gpuprep(&[
        "run",
        &data,
        "-o",
        &gpu,
        "--backend",
        "gpu",
        "--gpu-api",
        "vulkan",
        "-q",
    ]);
    if code != 0
        && std::env::var("GPUPREP_REQUIRE_GPU").as_deref() != Ok("1")
        && err.contains("no GPU adapter")
    {
        eprintln!("SKIPPED: no Vulkan adapter on this machine ({err})");
        return;
    }
    assert_eq!(code, 0, "{err}");
    let worst = same_shifts_worst_data_diff(Path::new(&cpu), Path::new(&gpu));
    // z-scores from the f32 GPU kernels vs the f64 CPU path (shift tolerance 1e-5 relative, divided by std).
    assert!(worst < 1e-3, "GPU and CPU outputs differ by {worst}");
}

#[test]
fn a_nan_midway_stops_the_run_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = synth_f32(&data, "6,10,14,12");
    nan_in_timepoint_3(&data);
    // Timepoints 0-2 have been written (to the scratch file, and to the output with --save) by then.
    expect_error(&[&d], "ind_00003.h5");
    expect_error(&[&d, "--save", "filtered,registered"], "timepoint 3");
    expect_error(&[&d, "--no-zscore"], "NaN");
}

#[test]
fn a_run_prints_its_overlapping_stage_times() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.h5").display().to_string();
    let o = crate::support::gpuprep_command()
        .args(["run", &fixture("series"), "-o", &out, "--backend", "cpu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(
        stdout.contains("stages (overlapping): reference"),
        "{stdout}"
    );
    for stage in ["read", "compute", "write", "normalize"] {
        assert!(stdout.contains(&format!("{stage} ")), "{stage}: {stdout}");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
#[cfg(unix)]
fn a_closed_stdout_ends_the_run_quietly_after_the_output_is_complete() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.h5");
    let mut child = crate::support::gpuprep_command()
        .args(["run", &fixture("series"), "-o", &out.display().to_string()])
        .args(["--backend", "cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As `gpuprep run ... | head -0`: the reader is gone before the summary is printed.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        o.status.success() || o.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        o.status
    );
    assert!(out.is_file(), "the output was renamed into place first");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

/// A z-score-only run maps float32 inputs instead of reading them (`Source::read_in_place`): the
/// output is the same, bit for bit, as with `GPUPREP_MAP_INPUTS=0`; NaN/Inf are replaced
/// (`--nonfinite zero`) or refused as when read; the inputs are unchanged.
#[test]
fn inputs_read_in_place_give_the_same_output_as_inputs_read() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = synth_f32(&data, "7,10,14,13");
    let files = |dir: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.clone(), std::fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let run = |map: &str, extra: &[&str], name: &str| {
        let out = tmp.path().join(name);
        let o = out.display().to_string();
        let mut args = vec![
            "run",
            &d,
            "-o",
            &o,
            "--backend",
            "cpu",
            "--no-median",
            "--no-register",
        ];
        args.extend_from_slice(extra);
        let r = crate::support::gpuprep_command()
            .env("GPUPREP_MAP_INPUTS", map)
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
        (r.status.code(), stdout, stderr, out)
    };
    let read4 = |p: &Path| {
        let f = hdf5::File::open(p).unwrap();
        let bits = |a: ndarray::ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        (
            bits(f.dataset("data").unwrap().read_dyn::<f32>().unwrap()),
            bits(f.dataset("mean").unwrap().read_dyn::<f32>().unwrap()),
            bits(f.dataset("std").unwrap().read_dyn::<f32>().unwrap()),
        )
    };
    let before = files(&data);
    for (extra, tag) in [(&[][..], "plain"), (&["--nonfinite", "zero"][..], "zero")] {
        let (code, stdout, stderr, mapped) = run("1", extra, &format!("mapped-{tag}.h5"));
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("7 of 7 volumes read in place"), "{stdout}");
        let (code, stdout, stderr, read) = run("0", extra, &format!("read-{tag}.h5"));
        assert_eq!(code, Some(0), "{stderr}");
        assert!(!stdout.contains("read in place"), "{stdout}");
        assert!(read4(&mapped) == read4(&read), "{tag}: outputs differ");
    }
    assert!(files(&data) == before, "an input changed");
    // A NaN in one input: refused, naming it, or replaced (that volume then copied, not mapped).
    nan_in_timepoint_3(&data);
    let before = files(&data);
    let (code, _, stderr, out) = run("1", &[], "nan.h5");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("ind_00003.h5") && stderr.contains("NaN"),
        "{stderr}"
    );
    assert!(!out.exists());
    let (code, stdout, stderr, mapped) = run("1", &["--nonfinite", "zero"], "nan-mapped.h5");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("6 of 7 volumes read in place"), "{stdout}");
    let (code, _, stderr, read) = run("0", &["--nonfinite", "zero"], "nan-read.h5");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        read4(&mapped) == read4(&read),
        "NaN replaced: outputs differ"
    );
    assert!(files(&data) == before, "an input changed");
}

/// The output's chunks written straight to the device (`O_DIRECT`, `gpuprep_io::direct`) give the
/// same output, bit for bit, as written through the page cache (`GPUPREP_DIRECT_WRITES=0`), in both
/// formats, with chunks padded at the edge of y (78 rows in chunks of 20), four blocks along y;
/// the summary counts the chunks that went directly wherever the file system takes `O_DIRECT`.
#[test]
fn chunks_written_directly_equal_chunks_written_through_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    // Chunks of (7, 32, 20, 32): 560 KiB, whole pages; 1 × 1 × 4 × 2 of them.
    let d = synth_f32(&tmp.path().join("data"), "7,32,78,64");
    let takes_direct = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(tmp.path().join("probe"))
            .is_ok()
    };
    if !takes_direct {
        eprintln!(
            "NOTE: {} refuses O_DIRECT: both runs write through the page cache here",
            tmp.path().display()
        );
    }
    let run = |direct: &str, name: &str| {
        let dir = tmp.path().join(format!("direct-{direct}"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(name);
        let o = out.display().to_string();
        let args = [
            "run",
            &d,
            "-o",
            &o,
            "--backend",
            "cpu",
            "--no-median",
            "--no-register",
        ];
        let r = crate::support::gpuprep_command()
            .env("GPUPREP_DIRECT_WRITES", direct)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
        assert_eq!(
            r.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let direct_chunks = stdout
            .lines()
            .find(|l| l.contains("written straight to the device"))
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        (out, direct_chunks)
    };
    // HDF5: every chunk of /data directly.
    let bits = |p: &Path| {
        let f = hdf5::File::open(p).unwrap();
        ["data", "mean", "std"].map(|n| {
            let a = f.dataset(n).unwrap().read_dyn::<f32>().unwrap();
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        })
    };
    let (direct, count) = run("1", "out.h5");
    let (buffered, none) = run("0", "out.h5");
    assert_eq!(count, takes_direct.then_some(8));
    assert_eq!(none, None);
    assert!(bits(&direct) == bits(&buffered), "HDF5 outputs differ");
    // OME-Zarr: every chunk file the same (the root metadata too: same name, same run).
    let (direct, count) = run("1", "out.ome.zarr");
    let (buffered, none) = run("0", "out.ome.zarr");
    assert!(count >= takes_direct.then_some(8), "{count:?}");
    assert_eq!(none, None);
    let files = |root: &Path| {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().unwrap() != "zarr.json" || p.parent().unwrap() != root {
                    v.push((
                        p.strip_prefix(root).unwrap().to_path_buf(),
                        std::fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        v.sort();
        v
    };
    let (a, b) = (files(&direct), files(&buffered));
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 8);
    for ((pa, da), (pb, db)) in a.iter().zip(&b) {
        assert_eq!(pa, pb);
        assert!(da == db, "{} differs", pa.display());
    }
}

/// `GPUPREP_GPU_UNCHECKED` (the unchecked-kernels experiment) other than 0 or 1 stops a run with one
/// line naming the variable, under `--backend auto` too (read before any adapter is opened, so this
/// needs no GPU), and nothing is written.
#[test]
fn a_bad_unchecked_variable_stops_the_run() {
    crate::support::assert_bad_env_stops_an_auto_run("GPUPREP_GPU_UNCHECKED", "yes");
}
