//! Integration tests: io — reading every input layout and dtype, refusing bad input with a message that names
//! the culprit, the sink's temp-then-rename contract, and deterministic synthetic data.

use std::path::{Path, PathBuf};

use gpuprep_io::source::describe;
use gpuprep_io::{Axes, Dtype, Sink, Source};
use gpuprep_pipeline::synth::{synth, SynthLayout, SynthMode, SynthSpec};
use ndarray::{Array, Array3, ArrayD, IxDyn};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/io")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn arange(shape: [usize; 3], start: f32) -> Array3<f32> {
    Array::from_iter((0..shape.iter().product::<usize>()).map(|i| start + i as f32))
        .into_shape_with_order(shape)
        .unwrap()
}

/// The error's message, asserting it is an error and that it mentions every one of `needles`.
fn err_of<T: std::fmt::Debug>(r: gpuprep_core::Result<T>, needles: &[&str]) -> String {
    let msg = r.expect_err("expected an error").to_string();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} does not mention {n:?}");
    }
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    msg
}

#[test]
fn every_dtype_reads_as_f32() {
    for (file, dtype) in [
        ("u8.h5", Dtype::U8),
        ("u16.h5", Dtype::U16),
        ("i16.h5", Dtype::I16),
        ("i32.h5", Dtype::I32),
        ("f32.h5", Dtype::F32),
        ("f64.h5", Dtype::F64),
    ] {
        let src = Source::open_with(&[fixture(file)], "default", Some(Axes::Zyx)).unwrap();
        assert_eq!(
            (src.len(), src.shape(), src.dtype(), src.is_4d()),
            (1, [3, 4, 5], dtype, false),
            "{file}"
        );
        assert_eq!(src.read(0).unwrap(), arange([3, 4, 5], 0.0), "{file}");
    }
    assert_eq!(Dtype::U8.to_string(), "uint8");
    assert_eq!("float64".parse::<Dtype>().unwrap(), Dtype::F64);
    err_of("float16".parse::<Dtype>(), &["dtype", "float16", "uint8"]);
}

#[test]
fn gzip_chunked_file_reads_and_reports_chunks() {
    let src = Source::open_with(&[fixture("gzip_chunked.h5")], "default", Some(Axes::Zyx)).unwrap();
    assert_eq!(src.chunks(), Some(vec![2, 3, 5]));
    assert_eq!(src.read(0).unwrap(), arange([4, 6, 5], 0.0));
    let lines = describe(&[fixture("gzip_chunked.h5"), fixture("u8.h5")], "default").unwrap();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].contains("gzip_chunked.h5") && lines[0].contains("(4, 6, 5)"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("float32") && lines[0].contains("(2, 3, 5)") && lines[0].contains("gzip"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("uint8") && lines[1].contains("contiguous"),
        "{}",
        lines[1]
    );
}

fn check_series(src: &Source) {
    assert_eq!(
        (src.len(), src.shape(), src.dtype(), src.is_4d()),
        (3, [4, 5, 6], Dtype::F64, false)
    );
    for t in 0..3 {
        assert_eq!(
            src.read(t).unwrap(),
            arange([4, 5, 6], 1000.0 * t as f32),
            "t={t}"
        );
    }
    err_of(src.read(3), &["timepoint 3", "3"]);
}

#[test]
fn directory_glob_and_list_inputs() {
    let dir = Source::open(&[fixture("series")], "default").unwrap();
    check_series(&dir);
    let glob = Source::open(&[fixture("series/ind_*.h5")], "default").unwrap();
    check_series(&glob);
    assert_eq!(dir.files(), glob.files());
    let list: Vec<String> = (0..3)
        .map(|t| fixture(&format!("series/ind_0000{t}.h5")))
        .collect();
    let listed = Source::open(&list, "default").unwrap();
    check_series(&listed);
    assert_eq!(listed.files(), dir.files());
    // Order as given, not sorted: the user's list is the time axis.
    let reversed: Vec<String> = list.iter().rev().cloned().collect();
    let rev = Source::open(&reversed, "default").unwrap();
    assert_eq!(rev.read(0).unwrap(), arange([4, 5, 6], 2000.0));
}

#[test]
fn four_d_single_file() {
    let src = Source::open(&[fixture("series4d.h5")], "data").unwrap();
    assert_eq!(
        (src.len(), src.shape(), src.dtype(), src.is_4d()),
        (3, [4, 5, 6], Dtype::F32, true)
    );
    assert_eq!(src.files().len(), 1);
    assert_eq!(src.dataset(), "data");
    for t in 0..3 {
        assert_eq!(
            src.read(t).unwrap(),
            arange([4, 5, 6], 120.0 * t as f32),
            "t={t}"
        );
    }
}

#[test]
fn bad_inputs_name_the_culprit() {
    err_of(
        Source::open(&[fixture("not_hdf5.h5")], "default"),
        &["not_hdf5.h5", "is not a readable HDF5 file"],
    );
    err_of(
        Source::open(&[fixture("truncated.h5")], "default"),
        &["truncated.h5", "is not a readable HDF5 file"],
    );
    err_of(
        Source::open(&[fixture("wrong_rank.h5")], "default"),
        &["wrong_rank.h5", "'default'", "(4, 5)"],
    );
    err_of(
        Source::open(&[fixture("other_name.h5")], "default"),
        &["other_name.h5", "'default'", "volume"],
    );
    err_of(
        Source::open(&[fixture("shape_mismatch")], "default"),
        &["ind_00001.h5", "(4, 5, 7)", "(4, 5, 6)", "ind_00000.h5"],
    );
    err_of(
        Source::open(&[fixture("dtype_mismatch")], "default"),
        &["ind_00001.h5", "uint16", "float32", "ind_00000.h5"],
    );
    err_of(
        Source::open(&[fixture("missing.h5")], "default"),
        &["missing.h5", "no such file"],
    );
    err_of(
        Source::open(&[fixture("series/nothing_*.h5")], "default"),
        &["nothing_*.h5", "matches no files"],
    );
    err_of(Source::open(&[], "default"), &["no input"]);
    let empty = tempfile::tempdir().unwrap();
    err_of(
        Source::open(&[empty.path().to_string_lossy().into_owned()], "default"),
        &[&empty.path().to_string_lossy(), "no *.h5"],
    );
    // A 4-D file is only accepted alone.
    err_of(
        Source::open(&[fixture("series4d.h5"), fixture("f32.h5")], "data"),
        &["series4d.h5", "4-D"],
    );
    // Mixing a 3-D series with a file of another shape names the odd one out.
    err_of(
        Source::open(&[fixture("series"), fixture("f64.h5")], "default"),
        &["f64.h5", "(3, 4, 5)"],
    );
    err_of(
        describe(&[fixture("not_hdf5.h5")], "default"),
        &["not_hdf5.h5", "is not a readable HDF5 file"],
    );
}

#[test]
fn a_file_broken_after_open_is_an_error_naming_file_dataset_and_t() {
    let dir = tempfile::tempdir().unwrap();
    for t in 0..2 {
        std::fs::copy(fixture("f32.h5"), dir.path().join(format!("v{t}.h5"))).unwrap();
    }
    let src = Source::open(&[dir.path().to_string_lossy().into_owned()], "default").unwrap();
    std::fs::write(dir.path().join("v1.h5"), b"gone").unwrap();
    assert!(src.read(0).is_ok());
    err_of(src.read(1), &["v1.h5", "'default'", "timepoint 1"]);
    std::fs::copy(fixture("f64.h5"), dir.path().join("v1.h5")).unwrap();
    assert_eq!(
        src.read(1).unwrap(),
        arange([3, 4, 5], 0.0),
        "float64 replacing float32 still converts"
    );
    std::fs::copy(fixture("gzip_chunked.h5"), dir.path().join("v1.h5")).unwrap();
    err_of(
        src.read(1),
        &["v1.h5", "'default'", "(4, 6, 5)", "(3, 4, 5)"],
    );
}

#[test]
fn unsupported_and_empty_datasets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i64.h5");
    let f = hdf5::File::create(&p).unwrap();
    f.new_dataset_builder()
        .with_data(&Array3::<i64>::zeros((2, 2, 2)))
        .create("default")
        .unwrap();
    f.new_dataset::<f32>()
        .shape([0, 2, 2])
        .create("empty")
        .unwrap();
    drop(f);
    let p = p.to_string_lossy().into_owned();
    err_of(
        Source::open(std::slice::from_ref(&p), "default"),
        &["i64.h5", "unsupported type int64", "uint8"],
    );
    err_of(
        Source::open(std::slice::from_ref(&p), "empty"),
        &["i64.h5", "(0, 2, 2)", "nonzero"],
    );
    assert!(describe(&[p], "default").unwrap()[0].contains("int64 (unsupported)"));
}

#[test]
fn sink_writes_then_renames_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.h5");
    let mut sink = Sink::create(&out, false, &[], 3, [4, 5, 6], &["data", "filtered"]).unwrap();
    assert!(sink.temp_path().exists() && !out.exists());
    assert_eq!(sink.temp_dir().parent(), out.parent());
    for t in 0..3 {
        sink.write_volume("data", t, arange([4, 5, 6], 100.0 * t as f32).view())
            .unwrap();
        // A transposed (non-standard-layout) view is written by value, not by memory order.
        let v = arange([6, 5, 4], t as f32);
        sink.write_volume("filtered", t, v.view().reversed_axes())
            .unwrap();
    }
    assert_eq!(
        sink.read_volume("data", 1).unwrap(),
        arange([4, 5, 6], 100.0)
    );
    sink.write_volume("data", 1, arange([4, 5, 6], -1.0).view())
        .unwrap();
    err_of(
        sink.write_volume("data", 3, arange([4, 5, 6], 0.0).view()),
        &["timepoint 3", "'data'"],
    );
    err_of(
        sink.write_volume("data", 0, arange([4, 5, 5], 0.0).view()),
        &["(4, 5, 5)", "(4, 5, 6)"],
    );
    err_of(
        sink.write_volume("registered", 0, arange([4, 5, 6], 0.0).view()),
        &["'registered'", "data, filtered"],
    );

    let shifts = ArrayD::from_shape_fn(IxDyn(&[3, 3]), |i| (i[0] * 3 + i[1]) as f64 * 0.5);
    sink.write_array_f64("shifts", shifts.view()).unwrap();
    sink.write_array_f64("shifts", shifts.view()).unwrap(); // replacing is allowed
    sink.write_array_f32("mean", arange([4, 5, 6], 0.0).into_dyn().view())
        .unwrap();
    err_of(
        sink.write_array_f32("data", arange([4, 5, 6], 0.0).into_dyn().view()),
        &["'data'", "4-D"],
    );
    sink.set_attr_str("backend", "cpu").unwrap();
    sink.set_attr_str("backend", "gpu").unwrap();
    sink.set_attr_f64("sigma", 1.5).unwrap();
    sink.set_attr_i64("reference", 0).unwrap();
    sink.set_attr_strs("inputs", &["a.h5".into(), "ünïcode.h5".into()])
        .unwrap();
    let temp = sink.temp_path().to_path_buf();
    assert_eq!(sink.finish().unwrap(), out);
    assert!(out.exists() && !temp.exists());

    // Our own reader reads the result as a 4-D source.
    let src = Source::open(&[out.to_string_lossy().into_owned()], "data").unwrap();
    assert_eq!(
        (src.len(), src.shape(), src.dtype(), src.is_4d()),
        (3, [4, 5, 6], Dtype::F32, true)
    );
    assert_eq!(src.read(0).unwrap(), arange([4, 5, 6], 0.0));
    assert_eq!(src.read(1).unwrap(), arange([4, 5, 6], -1.0));
    assert_eq!(src.read(2).unwrap(), arange([4, 5, 6], 200.0));
    let filtered = Source::open(&[out.to_string_lossy().into_owned()], "filtered").unwrap();
    assert_eq!(
        filtered.read(2).unwrap(),
        arange([6, 5, 4], 2.0).reversed_axes()
    );
    assert_eq!(src.chunks().unwrap()[0], 3);

    let f = hdf5::File::open(&out).unwrap();
    assert_eq!(
        f.dataset("shifts").unwrap().read_dyn::<f64>().unwrap(),
        shifts
    );
    let backend: hdf5::types::VarLenUnicode = f.attr("backend").unwrap().read_scalar().unwrap();
    assert_eq!(backend.as_str(), "gpu");
    assert_eq!(f.attr("sigma").unwrap().read_scalar::<f64>().unwrap(), 1.5);
    let inputs = f
        .attr("inputs")
        .unwrap()
        .read_raw::<hdf5::types::VarLenUnicode>()
        .unwrap();
    assert_eq!(inputs[1].as_str(), "ünïcode.h5");
}

#[test]
fn dropped_sink_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.h5");
    let mut sink = Sink::create(&out, false, &[], 2, [2, 3, 4], &["data"]).unwrap();
    sink.write_volume("data", 0, arange([2, 3, 4], 0.0).view())
        .unwrap();
    let temp = sink.temp_path().to_path_buf();
    assert!(temp.exists());
    drop(sink);
    assert!(!temp.exists() && !out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn sink_refuses_existing_output_inputs_and_missing_parent() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.h5");
    std::fs::write(&out, b"precious").unwrap();
    err_of(
        Sink::create(&out, false, &[], 1, [1, 1, 1], &["data"]),
        &["out.h5", "exists; pass --force to overwrite"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    // With force the old file stays intact until finish replaces it.
    let sink = Sink::create(&out, true, &[], 1, [1, 1, 1], &["data"]).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    sink.finish().unwrap();
    assert!(hdf5::File::open(&out).is_ok());

    // The output is an input, also through another spelling of the path, and also with force.
    let input = dir.path().join("in.h5");
    std::fs::write(&input, b"x").unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let alias = sub.join("../in.h5");
    for force in [false, true] {
        err_of(
            Sink::create(
                &alias,
                force,
                std::slice::from_ref(&input),
                1,
                [1, 1, 1],
                &["data"],
            ),
            &["in.h5", "input"],
        );
    }
    err_of(
        Sink::create(
            &dir.path().join("nope/out.h5"),
            false,
            &[],
            1,
            [1, 1, 1],
            &["data"],
        ),
        &["nope", "does not exist"],
    );
    err_of(
        Sink::create(&sub, true, &[], 1, [1, 1, 1], &["data"]),
        &["sub", "directory"],
    );
    err_of(
        Sink::create(
            &dir.path().join("z.h5"),
            false,
            &[],
            0,
            [1, 1, 1],
            &["data"],
        ),
        &["z.h5", "nonzero"],
    );
    assert!(!dir.path().join("z.h5").exists());
}

#[test]
fn finish_does_not_overwrite_a_file_that_appeared_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.h5");
    let sink = Sink::create(&out, false, &[], 1, [1, 1, 1], &["data"]).unwrap();
    let temp = sink.temp_path().to_path_buf();
    std::fs::write(&out, b"someone else's").unwrap();
    err_of(
        sink.finish(),
        &[
            "out.h5",
            "--force",
            &temp.file_name().unwrap().to_string_lossy(),
        ],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"someone else's");
    assert!(temp.exists(), "the finished result is kept for the user");
}

fn read_all(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn synth_randn_files_layout_is_deterministic() {
    let spec = SynthSpec {
        shape: [3, 4, 5, 6],
        mode: SynthMode::Randn,
        layout: SynthLayout::Files,
        seed: 7,
        dtype: Dtype::F64,
        ..SynthSpec::default()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = synth(a.path(), &spec, false).unwrap();
    assert!(out.true_shifts.is_none());
    let names: Vec<_> = out
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["ind_00000.h5", "ind_00001.h5", "ind_00002.h5"]);
    let src = Source::open(&[a.path().to_string_lossy().into_owned()], "default").unwrap();
    assert_eq!(
        (src.len(), src.shape(), src.dtype()),
        (3, [4, 5, 6], Dtype::F64)
    );
    let v0 = src.read(0).unwrap();
    let mean = v0.mean().unwrap();
    assert!(
        mean.abs() < 0.5 && v0.std(0.0) > 0.5,
        "not standard normal: mean {mean}"
    );
    assert_ne!(v0, src.read(1).unwrap());

    let again = synth(b.path(), &spec, false).unwrap();
    assert_eq!(read_all(&out.files), read_all(&again.files));

    err_of(synth(a.path(), &spec, false), &["ind_00000.h5", "--force"]);
    // Overwriting with fewer timepoints leaves no stale files behind.
    let fewer = SynthSpec {
        shape: [2, 4, 5, 6],
        seed: 8,
        ..spec.clone()
    };
    synth(a.path(), &fewer, true).unwrap();
    assert_eq!(
        Source::open(&[a.path().to_string_lossy().into_owned()], "default")
            .unwrap()
            .len(),
        2
    );
    assert_ne!(read_all(&out.files[..1]), read_all(&again.files[..1]));
}

#[test]
fn synth_realistic_shifts_and_4d_layout() {
    let spec = SynthSpec {
        shape: [4, 1, 24, 20],
        mode: SynthMode::Realistic,
        layout: SynthLayout::FourD,
        max_shift: 3.0,
        subpixel: false,
        noise: 0.0,
        seed: 3,
        dtype: Dtype::U16,
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = synth(a.path(), &spec, false).unwrap();
    let shifts = out.true_shifts.clone().unwrap();
    assert_eq!(shifts.len(), 4);
    assert_eq!(shifts[0], [0.0; 3]);
    for s in &shifts {
        assert_eq!(s[0], 0.0, "size-1 axis gets no shift");
        for v in s {
            assert!(v.abs() <= 3.0 && v.fract() == 0.0, "{s:?}");
        }
    }
    let csv = std::fs::read_to_string(a.path().join("true_shifts.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "t,z,y,x");
    assert_eq!(lines.len(), 5);
    let row: Vec<f64> = lines[2].split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(row, [1.0, shifts[1][0], shifts[1][1], shifts[1][2]]);

    let src = Source::open(&[out.files[0].to_string_lossy().into_owned()], "default").unwrap();
    assert_eq!(
        (src.len(), src.shape(), src.dtype(), src.is_4d()),
        (4, [1, 24, 20], Dtype::U16, true)
    );
    // Without noise and with integer shifts, volume t shifted by the registration shift is volume 0 where both
    // are defined (up to integer rounding of the stored uint16 values).
    let v0 = src.read(0).unwrap();
    let mut compared = 0;
    for (t, shift) in shifts.iter().enumerate().skip(1) {
        let vt = src.read(t).unwrap();
        let [_, dy, dx] = shift.map(|v| v as isize);
        for y in 0..24isize {
            for x in 0..20isize {
                let (sy, sx) = (y - dy, x - dx);
                if (0..24).contains(&sy) && (0..20).contains(&sx) {
                    let (a, b) = (
                        vt[[0, sy as usize, sx as usize]],
                        v0[[0, y as usize, x as usize]],
                    );
                    assert!((a - b).abs() <= 1.0, "t={t} y={y} x={x}: {a} vs {b}");
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 300);
    assert!(
        v0.iter().any(|&v| v > 400.0),
        "blobs are visible above the background"
    );

    let again = synth(b.path(), &spec, false).unwrap();
    assert_eq!(again.true_shifts, out.true_shifts);
    assert_eq!(read_all(&out.files), read_all(&again.files));
    assert_eq!(
        csv,
        std::fs::read_to_string(b.path().join("true_shifts.csv")).unwrap()
    );
}

#[test]
fn synth_refuses_bad_specs() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        shape: [2, 0, 3, 3],
        ..SynthSpec::default()
    };
    err_of(synth(dir.path(), &spec, false), &["shape", "(2, 0, 3, 3)"]);
    let spec = SynthSpec {
        shape: [2, 3, 3, 3],
        max_shift: f64::NAN,
        ..SynthSpec::default()
    };
    err_of(synth(dir.path(), &spec, false), &["max shift"]);
    let spec = SynthSpec {
        shape: [2, 3, 3, 3],
        noise: -1.0,
        ..SynthSpec::default()
    };
    err_of(synth(dir.path(), &spec, false), &["noise"]);
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    err_of(
        synth(
            &file,
            &SynthSpec {
                shape: [1, 1, 1, 1],
                ..SynthSpec::default()
            },
            false,
        ),
        &["file", "not a directory"],
    );
}

/// Blocks of whole chunks (every timepoint) read back exactly, chunks cut by the edges in t, y and
/// x included (their padding stored as the formats store it), whether the block was computed into
/// its chunks or copied from a plain array in another memory order. Both output formats; blocks as
/// the driver cuts them (whole rows along x) and one chunk wide. Blocks that are not whole chunks
/// of the output are refused, naming the block.
#[test]
fn blocks_of_whole_chunks_read_back_exactly() {
    use gpuprep_core::chunked::ChunkedBlock;
    let dir = tempfile::tempdir().unwrap();
    // (11, ...): time chunks of 8 and 3; (5, 41, 71, 93): y and x chunks cut at the edge.
    for (k, (t, shape)) in [(11, [9, 20, 30]), (5, [41, 71, 93])]
        .into_iter()
        .enumerate()
    {
        let want =
            ndarray::Array4::from_shape_fn((t, shape[0], shape[1], shape[2]), |(t, z, y, x)| {
                ((t * 7919 + z * 104729 + y * 1299709 + x * 15485863) % 100003) as f32 * 0.25 - 7.0
            });
        for ext in ["h5", "ome.zarr"] {
            for whole_x in [true, false] {
                let out = dir.path().join(format!("blocks{k}{whole_x}.{ext}"));
                let mut sink = Sink::create(&out, false, &[], t, shape, &["data"]).unwrap();
                let chunk = sink.block_chunk().unwrap();
                let block = if whole_x {
                    [chunk[1], chunk[2], shape[2]]
                } else {
                    [chunk[1], chunk[2], chunk[3]]
                };
                assert!(
                    (0..3).any(|i| shape[i] % block[i] != 0) || k == 0,
                    "{block:?}"
                );
                // Not whole chunks: one voxel short along z (or y), or another chunk shape.
                let (bz, by) = (block[0].min(shape[0]), block[1].min(shape[1]));
                let short = want.slice(ndarray::s![.., ..bz - 1, ..by, ..]);
                let short = ChunkedBlock::from_array(chunk, [0; 3], short).unwrap();
                let e = sink.write_block("data", &short).unwrap_err().to_string();
                assert!(
                    e.contains("whole chunks of") && e.contains("(0, 0, 0)"),
                    "{e}"
                );
                let other = [chunk[0], chunk[1], chunk[2], chunk[3] + 1];
                let other = ChunkedBlock::from_array(other, [0; 3], want.view()).unwrap_or(short);
                assert!(sink.write_block("data", &other).is_err());
                for z in (0..shape[0]).step_by(block[0]) {
                    for y in (0..shape[1]).step_by(block[1]) {
                        for x in (0..shape[2]).step_by(block[2]) {
                            let part = want.slice(ndarray::s![
                                ..,
                                z..(z + block[0]).min(shape[0]),
                                y..(y + block[1]).min(shape[1]),
                                x..(x + block[2]).min(shape[2])
                            ]);
                            let b = if x == 0 {
                                // Reversed in memory.
                                let r = part.reversed_axes().to_owned();
                                ChunkedBlock::from_array(chunk, [z, y, x], r.view().reversed_axes())
                            } else {
                                ChunkedBlock::from_array(chunk, [z, y, x], part)
                            };
                            sink.write_block("data", &b.unwrap()).unwrap();
                        }
                    }
                }
                for i in 0..t {
                    let got = sink.read_volume("data", i).unwrap();
                    assert_eq!(got, want.index_axis(ndarray::Axis(0), i), "{ext} t={i}");
                }
                sink.finish().unwrap();
            }
        }
    }
}
