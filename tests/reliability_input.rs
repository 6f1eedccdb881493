//! Issue 8, inputs: hostile and unusual input sets are read exactly or refused with a line naming the culprit.
//!
//! Most cases go through the `gpuprep` binary with every stage off (`/data` is then the input as float32),
//! so what is checked is what a user gets.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use gpuprep_io::Source;
use ndarray::{Array3, Array4, ArrayD, IxDyn};

fn gpuprep<S: AsRef<OsStr>>(args: &[S]) -> (i32, String, String) {
    crate::support::gpuprep_output(args)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `gpuprep run INPUTS… -o OUT` with every stage off; the exit status, stdout and stderr.
fn copy_run(inputs: &[&str], out: &Path, extra: &[&str]) -> (i32, String, String) {
    let o = s(out);
    let mut args: Vec<&str> = vec!["run"];
    args.extend_from_slice(inputs);
    args.extend_from_slice(&[
        "-o",
        &o,
        "--backend",
        "cpu",
        "--no-median",
        "--no-register",
        "--no-zscore",
    ]);
    args.extend_from_slice(extra);
    gpuprep(&args)
}

/// Like `copy_run`, expecting success; `/data` of the output.
fn copied(inputs: &[&str], out: &Path, extra: &[&str]) -> Array4<f32> {
    let (code, _, err) = copy_run(inputs, out, &[&["-q"], extra].concat());
    assert_eq!(code, 0, "{inputs:?} {extra:?}: {err}");
    let f = hdf5::File::open(out).unwrap();
    f.dataset("data").unwrap().read().unwrap()
}

/// Like `copy_run`, expecting exit 2 with one line naming every one of `needles` and no output.
fn refused(inputs: &[&str], out: &Path, extra: &[&str], needles: &[&str]) -> String {
    let (code, _, err) = copy_run(inputs, out, &[&["-q"], extra].concat());
    assert_eq!(code, 2, "{inputs:?}: exit {code}, stderr {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
    assert!(!out.exists(), "{inputs:?}: an output was written");
    err
}

/// Writes an HDF5 file at `path` through `fill`. The file is written under another name and copied into
/// place: a `gpuprep` spawned meanwhile by another test inherits HDF5's descriptor (opened without
/// close-on-exec) with its lock, and a file locked so could not be read by this test's own runs.
fn create(path: &Path, fill: impl FnOnce(&hdf5::File)) {
    let scratch = path.with_extension("writing");
    fill(&hdf5::File::create(&scratch).unwrap());
    std::fs::copy(&scratch, path).unwrap();
    std::fs::remove_file(&scratch).unwrap();
}

fn write<T: hdf5::H5Type>(path: &Path, name: &str, data: &ArrayD<T>) {
    create(path, |f| {
        f.new_dataset_builder()
            .with_data(data)
            .create(name)
            .unwrap();
    });
}

/// A (3, 4, 5) float32 volume: `base + index`.
fn volume(base: f32) -> Array3<f32> {
    Array3::from_shape_fn((3, 4, 5), |(z, y, x)| base + (z * 20 + y * 5 + x) as f32)
}

fn write_volume(path: &Path, base: f32) {
    write(path, "default", &volume(base).into_dyn());
}

/// Timepoint values of a copied series (each volume is `volume(base)`: its first voxel is `base`).
fn bases(data: &Array4<f32>) -> Vec<f32> {
    data.outer_iter().map(|v| v[[0, 0, 0]]).collect()
}

/// `volume(base)` as a one-timepoint 4-D series: read the same way with or without `--axes`.
fn series1(base: f32) -> Array4<f32> {
    volume(base).insert_axis(ndarray::Axis(0))
}

// ---- item 3: storage outside the file opened ----

#[test]
fn an_external_link_is_read_from_the_linked_file() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.h5");
    create(&b, |f| {
        // Padding first, so the linked dataset's offset in b.h5 lands inside a.h5's unrelated data.
        f.new_dataset_builder()
            .with_data(&Array3::<f32>::from_elem((4, 4, 4), -7.0))
            .create("pad")
            .unwrap();
        f.new_dataset_builder()
            .with_data(&series1(500.0))
            .create("x")
            .unwrap();
    });
    let a = dir.path().join("a.h5");
    create(&a, |f| {
        f.new_dataset_builder()
            .with_data(&Array3::<f32>::from_elem((8, 8, 8), 3.0))
            .create("unrelated")
            .unwrap();
        f.link_external("b.h5", "/x", "default").unwrap();
    });
    let out = dir.path().join("out.h5");
    assert_eq!(copied(&[&s(&a)], &out, &[]), series1(500.0));
}

#[test]
fn external_raw_storage_is_read_through_hdf5() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw.bin");
    let vol = volume(900.0);
    let bytes: Vec<u8> = vol.iter().flat_map(|v| v.to_le_bytes()).collect();
    // A header in front of the samples, so an offset misread as one in the HDF5 file shows.
    std::fs::write(&raw, [vec![0xAB; 64], bytes].concat()).unwrap();
    let a = dir.path().join("a.h5");
    create(&a, |f| {
        f.new_dataset_builder()
            .with_data(&Array3::<f32>::from_elem((8, 8, 8), 3.0))
            .create("unrelated")
            .unwrap();
        f.new_dataset::<f32>()
            .shape((1, 3, 4, 5))
            .external(&s(&raw), 64, 60 * 4)
            .create("default")
            .unwrap();
    });
    let out = dir.path().join("out.h5");
    assert_eq!(copied(&[&s(&a)], &out, &[]), series1(900.0));
}

// ---- item 4: nothing skipped silently ----

#[test]
fn a_broken_link_or_special_file_in_a_directory_or_glob_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("in");
    std::fs::create_dir(&d).unwrap();
    for t in [0, 2] {
        write_volume(&d.join(format!("t{t}.h5")), t as f32);
    }
    std::os::unix::fs::symlink(d.join("gone.h5"), d.join("t1.h5")).unwrap();
    let out = dir.path().join("out.h5");
    let glob = s(&d.join("t*.h5"));
    for input in [s(&d), glob.clone()] {
        refused(&[&input], &out, &[], &["t1.h5", "broken symbolic link"]);
    }
    std::fs::remove_file(d.join("t1.h5")).unwrap();
    std::fs::create_dir(d.join("t1.h5")).unwrap();
    for input in [s(&d), glob.clone()] {
        refused(&[&input], &out, &[], &["t1.h5", "directory"]);
    }
    std::fs::remove_dir(d.join("t1.h5")).unwrap();
    let fifo = d.join("t1.h5");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for input in [s(&d), glob] {
        refused(&[&input], &out, &[], &["t1.h5", "FIFO"]);
    }
}

// ---- item 6: the same file twice; natural order ----

#[test]
fn the_same_file_twice_is_refused_whatever_the_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d6");
    std::fs::create_dir(&d).unwrap();
    for t in 0..2 {
        write_volume(&d.join(format!("a{t}.h5")), t as f32);
    }
    let out = dir.path().join("out.h5");
    let (a0, dd) = (s(&d.join("a0.h5")), s(&d));
    refused(&[&dd, &dd], &out, &[], &["a0.h5", "same file"]);
    let dotted = s(&d.join(".").join("a0.h5"));
    refused(&[&a0, &dotted], &out, &[], &[&a0, &dotted, "same file"]);
    let hard = dir.path().join("hard.h5");
    std::fs::hard_link(d.join("a0.h5"), &hard).unwrap();
    refused(&[&dd, &s(&hard)], &out, &[], &["hard.h5", "a0.h5"]);
    let soft = dir.path().join("soft.h5");
    std::os::unix::fs::symlink(d.join("a1.h5"), &soft).unwrap();
    refused(&[&s(&soft), &dd], &out, &[], &["soft.h5", "a1.h5"]);
}

#[test]
fn directory_and_glob_order_is_natural_and_the_summary_names_first_and_last() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("in");
    std::fs::create_dir(&d).unwrap();
    for t in [1, 2, 10, 9] {
        write_volume(&d.join(format!("t{t}.h5")), t as f32);
    }
    let out = dir.path().join("out.h5");
    assert_eq!(bases(&copied(&[&s(&d)], &out, &[])), [1.0, 2.0, 9.0, 10.0]);
    std::fs::remove_file(&out).unwrap();
    let glob = s(&d.join("t*.h5"));
    assert_eq!(bases(&copied(&[&glob], &out, &[])), [1.0, 2.0, 9.0, 10.0]);
    std::fs::remove_file(&out).unwrap();
    let (code, stdout, err) = copy_run(&[&s(&d)], &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("4 files, t1.h5 … t10.h5"), "{stdout}");
    assert!(stdout.contains("axes zyx"), "{stdout}");

    // Zero-padded names keep their plain order.
    let z = dir.path().join("padded");
    std::fs::create_dir(&z).unwrap();
    for t in [0, 1, 10, 2] {
        write_volume(&z.join(format!("ind_{t:05}.h5")), t as f32);
    }
    std::fs::remove_file(&out).unwrap();
    assert_eq!(bases(&copied(&[&s(&z)], &out, &[])), [0.0, 1.0, 2.0, 10.0]);
}

// ---- item 8: float64 beyond float32's range ----

#[test]
fn a_float64_value_beyond_float32s_range_is_an_error_naming_it_on_both_read_paths() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.h5");
    for (name, chunked) in [("contiguous.h5", false), ("gzip.h5", true)] {
        for value in [1e300, -4e38] {
            let mut series = Array4::<f64>::zeros((3, 2, 3, 4));
            series[[2, 1, 2, 3]] = value;
            let p = dir.path().join(name);
            create(&p, |f| {
                let b = f.new_dataset_builder();
                let b = if chunked {
                    b.chunk((1, 2, 3, 4)).deflate(4)
                } else {
                    b
                };
                b.with_data(&series).create("default").unwrap();
            });
            for policy in ["error", "zero"] {
                let err = refused(
                    &[&s(&p)],
                    &out,
                    &["--nonfinite", policy],
                    &[
                        name,
                        "'default'",
                        "timepoint 2",
                        "(1, 2, 3)",
                        &format!("{value:e}"),
                        "float32's range",
                    ],
                );
                assert!(!err.contains("NaN/Inf values"), "{err}");
            }
        }
    }
    // The largest float32 stored as float64 is in range.
    let p = dir.path().join("max.h5");
    let mut vol = Array4::<f64>::zeros((1, 2, 2, 2));
    vol[[0, 0, 0, 1]] = f32::MAX as f64;
    write(&p, "default", &vol.into_dyn());
    let data = copied(&[&s(&p)], &out, &[]);
    assert_eq!(data[[0, 0, 0, 1]], f32::MAX);
}

// ---- item 13: a chunk spanning many timepoints ----

/// Seconds to read every volume of a 4-D file through `Source`.
fn read_all(path: &Path) -> f64 {
    let src = Source::open(&[s(path)], "default").unwrap();
    let t0 = Instant::now();
    for t in 0..src.len() {
        let v = src.read(t).unwrap();
        assert_eq!(v[[0, 0, 0]], t as f32, "t={t}");
    }
    t0.elapsed().as_secs_f64()
}

#[test]
fn a_chunk_spanning_the_series_is_decompressed_once_not_per_volume() {
    let dir = tempfile::tempdir().unwrap();
    let shape = (48, 8, 64, 64);
    let series = Array4::from_shape_fn(shape, |(t, z, y, x)| {
        if (z, y, x) == (0, 0, 0) {
            t as f32
        } else {
            ((t * 7 + z * 3 + y * 5 + x) % 251) as f32
        }
    });
    let per_t = dir.path().join("per_t.h5");
    let whole = dir.path().join("whole.h5");
    let tiles = dir.path().join("tiles.h5");
    for (p, chunk) in [
        (&per_t, (1, 8, 64, 64)),
        (&whole, shape),
        (&tiles, (48, 3, 32, 64)),
    ] {
        create(p, |f| {
            f.new_dataset_builder()
                .with_data(&series)
                .chunk(chunk)
                .deflate(4)
                .create("default")
                .unwrap();
        });
    }
    // Decompressing the whole chunk for each of 48 volumes made this ~48× slower than chunks of one
    // timepoint; with the chunk cached it is about as fast.
    let a = read_all(&per_t);
    for p in [&whole, &tiles] {
        let b = read_all(p);
        assert!(
            b < 4.0 * a + 0.05,
            "{p:?}: {b:.3} s, chunks per t: {a:.3} s"
        );
    }
}

#[test]
fn a_chunk_cache_past_the_memory_bound_is_refused_naming_the_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.h5");
    // Declared, never written: the file stays tiny.
    create(&p, |f| {
        f.new_dataset::<f32>()
            .shape((1024, 512, 1024, 1024))
            .chunk((256, 1, 1024, 1024))
            .deflate(1)
            .create("default")
            .unwrap();
    });
    let msg = Source::open(&[s(&p)], "default").unwrap_err().to_string();
    for n in ["huge.h5", "(256, 1, 1024, 1024)", "(1.0 GiB each)"] {
        assert!(msg.contains(n), "{msg:?} should mention {n:?}");
    }
}

// ---- item 15: --axes ----

#[test]
fn axes_one_3d_file_is_a_movie_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let movie = Array3::from_shape_fn((6, 5, 7), |(t, y, x)| (t * 100 + y * 7 + x) as f32);
    let m = dir.path().join("movie.h5");
    write(&m, "default", &movie.clone().into_dyn());
    let out = dir.path().join("out.h5");
    let data = copied(&[&s(&m)], &out, &[]);
    assert_eq!(data.shape(), [6, 1, 5, 7]);
    assert_eq!(
        data.into_shape_with_order((6, 5, 7)).unwrap(),
        movie,
        "frames in order"
    );
    std::fs::remove_file(&out).unwrap();
    let (code, stdout, err) = copy_run(&[&s(&m)], &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("axes tyx") && stdout.contains("movie.h5"),
        "{stdout}"
    );
    std::fs::remove_file(&out).unwrap();
    assert_eq!(
        copied(&[&s(&m)], &out, &["--axes", "zyx"]).shape(),
        [1, 6, 5, 7]
    );
    std::fs::remove_file(&out).unwrap();
    // Two movies of different lengths are concatenated in time.
    let m2 = dir.path().join("movie2.h5");
    write(
        &m2,
        "default",
        &movie.slice(ndarray::s![..2, .., ..]).to_owned().into_dyn(),
    );
    let data = copied(&[&s(&m), &s(&m2)], &out, &["--axes", "tyx"]);
    assert_eq!(data.shape(), [8, 1, 5, 7]);
    assert_eq!(data[[7, 0, 1, 2]], movie[[1, 1, 2]]);
    std::fs::remove_file(&out).unwrap();
    // A directory or glob is a series of volumes, even of one file.
    let d = dir.path().join("one");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(&m, d.join("only.h5")).unwrap();
    for input in [s(&d), s(&d.join("*.h5"))] {
        assert_eq!(copied(&[&input], &out, &[]).shape(), [1, 6, 5, 7]);
        std::fs::remove_file(&out).unwrap();
    }
    // Several 3-D files without --axes stay one volume each.
    let m3 = dir.path().join("movie3.h5");
    std::fs::copy(&m, &m3).unwrap();
    assert_eq!(copied(&[&s(&m), &s(&m3)], &out, &[]).shape(), [2, 6, 5, 7]);
    std::fs::remove_file(&out).unwrap();
    refused(
        &[&s(&m)],
        &out,
        &["--axes", "tzyx"],
        &["movie.h5", "--axes tzyx", "4-D"],
    );
    let (code, stdout, err) = gpuprep(&["info", &s(&m)]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("axes tyx: 6 frames"), "{stdout}");
    let (_, stdout, _) = gpuprep(&["info", &s(&m), "--axes", "zyx"]);
    assert!(stdout.contains("axes zyx"), "{stdout}");
}

// ---- item 20 ----

#[test]
fn info_flags_unusable_datasets_and_names_virtual_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<usize>); 3] = [
        ("two_d.h5", vec![4, 5]),
        ("five_d.h5", vec![2, 2, 2, 2, 2]),
        ("empty.h5", vec![0, 4, 5]),
    ];
    for (name, shape) in &cases {
        let p = dir.path().join(name);
        write(&p, "default", &ArrayD::<f32>::zeros(IxDyn(shape)));
        let (code, stdout, err) = gpuprep(&["info", &s(&p)]);
        assert_eq!(code, 0, "{err}");
        let line = stdout.lines().next().unwrap();
        assert!(line.contains(name) && line.contains("unusable"), "{stdout}");
    }
    let src = dir.path().join("src.h5");
    write(&src, "x", &series1(0.0).into_dyn());
    let v = dir.path().join("virtual.h5");
    create(&v, |f| {
        f.new_dataset::<f32>()
            .shape((1, 3, 4, 5))
            .virtual_map(s(&src), "x", (1, 3, 4, 5), .., (1, 3, 4, 5), ..)
            .create("default")
            .unwrap();
    });
    let (code, stdout, err) = gpuprep(&["info", &s(&v)]);
    assert_eq!(code, 0, "{err}");
    let line = stdout.lines().next().unwrap();
    assert!(
        line.contains("virtual") && !line.contains("contiguous"),
        "{stdout}"
    );
    let out = dir.path().join("out.h5");
    assert_eq!(copied(&[&s(&v)], &out, &[]), series1(0.0));
}

#[test]
fn non_utf8_names_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("in");
    std::fs::create_dir(&d).unwrap();
    write_volume(&d.join("t0.h5"), 0.0);
    let bad = d.join(OsStr::from_bytes(b"t1-\xff.h5"));
    std::fs::copy(d.join("t0.h5"), &bad).unwrap();
    let out = dir.path().join("out.h5");
    refused(&[&s(&d)], &out, &[], &["t1-\u{FFFD}.h5", "UTF-8"]);
    let o = s(&out);
    let mut args: Vec<&OsStr> = ["run"].iter().map(OsStr::new).collect();
    args.push(bad.as_os_str());
    let rest = ["-o", &o, "--backend", "cpu", "-q"];
    args.extend(rest.iter().map(OsStr::new));
    let (code, _, err) = gpuprep(&args);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("t1-\\xFF.h5") && err.contains("UTF-8"),
        "{err}"
    );
    let (code, _, err) = gpuprep(&[OsStr::new("info"), bad.as_os_str()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("t1-\\xFF.h5"), "{err}");
}

#[test]
fn an_output_in_the_input_directory_is_not_read_as_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("in");
    std::fs::create_dir(&d).unwrap();
    for t in 0..3 {
        write_volume(&d.join(format!("t{t}.h5")), t as f32);
    }
    let first = d.join("out.h5");
    copied(&[&s(&d)], &first, &[]);
    let second = dir.path().join("second.h5");
    let (code, _, err) = copy_run(&[&s(&d)], &second, &["-q"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("out.h5") && err.contains("skipping"), "{err}");
    let f = hdf5::File::open(&second).unwrap();
    let data: Array4<f32> = f.dataset("data").unwrap().read().unwrap();
    assert_eq!(bases(&data), [0.0, 1.0, 2.0]);
    // Named explicitly, an output is an input like any other.
    let third = dir.path().join("third.h5");
    let data = copied(&[&s(&first)], &third, &["--dataset", "data"]);
    assert_eq!(data.shape(), [3, 3, 4, 5]);
}
