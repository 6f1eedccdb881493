//! Zarr in and OME-Zarr out: the same data gives bit-identical results through HDF5 and Zarr, in both
//! directions; hostile Zarr inputs give one clear line; a failed run leaves no store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gpuprep_io::writer::{SeriesWriter, TypedVolume};
use gpuprep_io::Dtype;
use ndarray::{s, Array4, ArrayD, Dimension};
use serde_json::{json, Value};
use zarrs::array::{data_type, Array, ArrayBuilder};
use zarrs::filesystem::FilesystemStore;

use crate::support::{fresh_seed, gpuprep_output, rng};

/// A (t, z, y, x) uint16 series with structure, small enough for a fast CPU run with registration.
pub(crate) fn series(seed: u64, shape: [usize; 4]) -> Array4<u16> {
    use rand::Rng;
    let mut r = rng(seed);
    let [_, nz, ny, nx] = shape;
    Array4::from_shape_fn(shape, |(t, z, y, x)| {
        // A blob that drifts with t, plus noise: registration has something to find.
        let (cz, cy, cx) = (
            nz as f32 / 2.0,
            ny as f32 / 2.0 + t as f32 * 0.7,
            nx as f32 / 2.0 - t as f32 * 0.4,
        );
        let d2 = (z as f32 - cz).powi(2) + (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
        (1000.0 * (-d2 / 20.0).exp() + r.random_range(0.0f32..50.0)) as u16
    })
}

pub(crate) fn write_h5(path: &Path, data: &Array4<u16>) {
    let shape = data.shape();
    let w = SeriesWriter::create(
        path,
        "data",
        Dtype::U16,
        [shape[0], shape[1], shape[2], shape[3]],
    )
    .unwrap();
    for t in 0..shape[0] {
        w.write(
            t,
            &TypedVolume::U16(data.slice(s![t, .., .., ..]).to_owned()),
        )
        .unwrap();
    }
    w.close().unwrap();
}

fn fs_store(path: &Path) -> Arc<FilesystemStore> {
    Arc::new(FilesystemStore::new(path).unwrap())
}

/// A Zarr v3 array of `data` at the store's root, zstd-compressed, chunks spanning 2 timepoints.
fn write_zarr_v3(path: &Path, data: &Array4<u16>) {
    std::fs::create_dir_all(path).unwrap();
    let shape: Vec<u64> = data.shape().iter().map(|&n| n as u64).collect();
    let chunk = vec![2, shape[1], shape[2].div_ceil(2), shape[3]];
    let array = ArrayBuilder::new(shape.clone(), chunk, data_type::uint16(), 0u16)
        .bytes_to_bytes_codecs(vec![Arc::new(zarrs::array::codec::ZstdCodec::new(
            3, false,
        ))])
        .build(fs_store(path), "/")
        .unwrap();
    array.store_metadata().unwrap();
    let ranges: Vec<_> = shape.iter().map(|&n| 0..n).collect();
    array.store_array_subset(&ranges, data.clone()).unwrap();
}

/// A Zarr v2 array written by hand (`.zarray` and raw little-endian chunks, "." separated keys): a writer
/// independent of the reader under test.
pub(crate) fn write_zarr_v2(dir: &Path, data: &ArrayD<u16>, chunks: &[usize], extra: Value) {
    std::fs::create_dir_all(dir).unwrap();
    let mut meta = json!({
        "zarr_format": 2, "shape": data.shape(), "chunks": chunks, "dtype": "<u2",
        "compressor": null, "fill_value": 0, "filters": null, "order": "C"
    });
    meta.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    std::fs::write(dir.join(".zarray"), meta.to_string()).unwrap();
    let grid: Vec<usize> = data
        .shape()
        .iter()
        .zip(chunks)
        .map(|(n, c)| n.div_ceil(*c))
        .collect();
    for idx in ndarray::indices(grid.as_slice()) {
        let idx = idx.slice().to_vec();
        // A chunk is always whole: the part past the array's edge holds the fill value.
        let mut buf = ArrayD::<u16>::zeros(chunks);
        let region: Vec<ndarray::SliceInfoElem> = idx
            .iter()
            .zip(chunks)
            .zip(data.shape())
            .map(|((i, c), n)| ndarray::Slice::from(i * c..((i + 1) * c).min(*n)).into())
            .collect();
        let part = data.slice(region.as_slice());
        let inner: Vec<ndarray::SliceInfoElem> = part
            .shape()
            .iter()
            .map(|&n| ndarray::Slice::from(0..n).into())
            .collect();
        buf.slice_mut(inner.as_slice()).assign(&part);
        let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sep = meta
            .get("dimension_separator")
            .and_then(Value::as_str)
            .unwrap_or(".");
        let key = idx
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(sep);
        let key = dir.join(key);
        std::fs::create_dir_all(key.parent().unwrap()).unwrap();
        std::fs::write(key, bytes).unwrap();
    }
}

/// `gpuprep run INPUT -o OUT --backend cpu -q EXTRA`: (exit code, stderr).
pub(crate) fn run(input: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<String> = vec![
        "run".into(),
        input.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(["--backend", "cpu", "-q"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let (code, _, err) = gpuprep_output(&args);
    (code, err)
}

/// `run`, asserting success.
pub(crate) fn run_ok(input: &Path, out: &Path, extra: &[&str]) {
    let (code, err) = run(input, out, extra);
    assert_eq!(code, 0, "{input:?} -> {out:?}: {err}");
}

/// `run`, expecting a failure: (exit code, stderr).
pub(crate) fn run_err(input: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let (code, err) = run(input, out, extra);
    assert_ne!(code, 0, "{input:?} should fail");
    (code, err)
}

pub(crate) fn h5_f32(path: &Path, name: &str) -> ArrayD<f32> {
    hdf5::File::open(path)
        .unwrap()
        .dataset(name)
        .unwrap()
        .read_dyn()
        .unwrap()
}

pub(crate) fn h5_f64(path: &Path, name: &str) -> ArrayD<f64> {
    hdf5::File::open(path)
        .unwrap()
        .dataset(name)
        .unwrap()
        .read_dyn()
        .unwrap()
}

fn zarr_array(store: &Path, key: &str) -> Array<FilesystemStore> {
    Array::open(fs_store(store), &format!("/{key}")).unwrap()
}

fn zarr_read<T: zarrs::array::ElementOwned>(store: &Path, key: &str) -> ArrayD<T> {
    let a = zarr_array(store, key);
    a.retrieve_array_subset(&a.subset_all()).unwrap()
}

fn zarr_attrs(store: &Path) -> serde_json::Map<String, Value> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(store.join("zarr.json")).unwrap()).unwrap();
    assert_eq!(v["zarr_format"], 3);
    assert_eq!(v["node_type"], "group");
    v["attributes"].as_object().unwrap().clone()
}

/// Bitwise equality (NaN payloads included), with the first differing index in the message.
fn same_bits<T: Copy + PartialEq + std::fmt::Debug>(
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    bits: impl Fn(T) -> u64,
    what: &str,
) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    if let Some((i, (x, y))) = a
        .iter()
        .zip(b.iter())
        .enumerate()
        .find(|(_, (x, y))| bits(**x) != bits(**y))
    {
        panic!("{what}: element {i} differs: {x:?} vs {y:?}");
    }
}

fn same_f32(a: &ArrayD<f32>, b: &ArrayD<f32>, what: &str) {
    same_bits(a, b, |v| v.to_bits() as u64, what)
}

fn same_f64(a: &ArrayD<f64>, b: &ArrayD<f64>, what: &str) {
    same_bits(a, b, f64::to_bits, what)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every result of a run with `--save filtered,registered`: the HDF5 output against the OME-Zarr one.
fn assert_same_outputs(h5: &Path, zarr: &Path) {
    same_f32(&h5_f32(h5, "data"), &zarr_read::<f32>(zarr, "0"), "data");
    for name in ["filtered", "registered", "mean", "std"] {
        same_f32(&h5_f32(h5, name), &zarr_read::<f32>(zarr, name), name);
    }
    for name in ["shifts", "error", "phasediff"] {
        same_f64(&h5_f64(h5, name), &zarr_read::<f64>(zarr, name), name);
    }
}

#[test]
fn ome_zarr_output_is_bit_identical_to_hdf5_with_every_attribute() {
    let seed = fresh_seed();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.h5");
    // 11 timepoints: the last chunk of 8 timepoints is partial.
    write_h5(&input, &series(seed, [11, 6, 20, 18]).mapv(|v| v));
    let (h5, zarr) = (tmp.path().join("out.h5"), tmp.path().join("out.ome.zarr"));
    let args = ["--dataset", "data", "--save", "filtered,registered"];
    run_ok(&input, &h5, &args);
    run_ok(&input, &zarr, &args);
    assert_same_outputs(&h5, &zarr);
    assert_eq!(entries(tmp.path()), ["in.h5", "out.h5", "out.ome.zarr"]);

    // The image: (t, z, y, x) float32 at "0", chunks of several timepoints and a spatial block.
    let image = zarr_array(&zarr, "0");
    assert_eq!(image.shape(), &[11, 6, 20, 18]);
    assert_eq!(image.data_type(), &data_type::float32());
    let names: Vec<_> = image
        .dimension_names()
        .clone()
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(names, ["t", "z", "y", "x"]);
    let chunk = image.chunk_shape(&[0, 0, 0, 0]).unwrap();
    assert_eq!(chunk[0].get(), 8, "{chunk:?}");

    // Attributes: the OME-NGFF 0.5 multiscales, and every root attribute of the HDF5 output with its value.
    let attrs = zarr_attrs(&zarr);
    let ome = &attrs["ome"];
    assert_eq!(ome["version"], "0.5");
    let ms = &ome["multiscales"][0];
    assert_eq!(ms["name"], "out");
    let axes: Vec<(&str, &str)> = ms["axes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        axes,
        [
            ("t", "time"),
            ("z", "space"),
            ("y", "space"),
            ("x", "space")
        ]
    );
    assert_eq!(ms["datasets"][0]["path"], "0");
    assert_eq!(
        ms["datasets"][0]["coordinateTransformations"],
        json!([{"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]}])
    );
    let file = hdf5::File::open(&h5).unwrap();
    let h5_names = file.attr_names().unwrap();
    assert!(h5_names.len() >= 15, "{h5_names:?}");
    for name in &h5_names {
        let a = file.attr(name).unwrap();
        let z = attrs
            .get(name)
            .unwrap_or_else(|| panic!("attribute {name} missing from zarr.json"));
        let want = match a.dtype().unwrap().to_descriptor().unwrap() {
            hdf5::types::TypeDescriptor::VarLenUnicode if a.ndim() == 0 => {
                json!(a
                    .read_scalar::<hdf5::types::VarLenUnicode>()
                    .unwrap()
                    .as_str())
            }
            hdf5::types::TypeDescriptor::VarLenUnicode => json!(a
                .read_raw::<hdf5::types::VarLenUnicode>()
                .unwrap()
                .iter()
                .map(|s| s.as_str().to_string())
                .collect::<Vec<_>>()),
            hdf5::types::TypeDescriptor::Float(_) => json!(a.read_scalar::<f64>().unwrap()),
            hdf5::types::TypeDescriptor::Integer(_) => json!(a.read_scalar::<i64>().unwrap()),
            other => panic!("attribute {name}: unexpected type {other:?}"),
        };
        assert_eq!(z, &want, "attribute {name}");
    }

    // gpuprep reads its own OME-Zarr output back as a 4-D source.
    let src = gpuprep_io::Source::open(&[zarr.display().to_string()], "default").unwrap();
    assert_eq!(
        (src.len(), src.shape(), src.dtype(), src.dataset()),
        (11, [6, 20, 18], Dtype::F32, "0")
    );
    let data = h5_f32(&h5, "data");
    assert_eq!(
        src.read(10).unwrap().into_dyn(),
        data.slice(s![10, .., .., ..]).into_dyn()
    );
}

#[test]
fn zarr_inputs_give_the_result_of_the_same_data_in_hdf5() {
    let seed = fresh_seed();
    let tmp = tempfile::tempdir().unwrap();
    let data = series(seed, [7, 5, 16, 20]);
    let h5_in = tmp.path().join("in.h5");
    write_h5(&h5_in, &data);
    let reference = tmp.path().join("ref.h5");
    run_ok(&h5_in, &reference, &["--dataset", "data"]);

    // Zarr v3, zstd, chunks across timepoints and split in y.
    let v3 = tmp.path().join("v3.zarr");
    write_zarr_v3(&v3, &data);
    // Zarr v2, raw chunks with ragged edges.
    let v2 = tmp.path().join("v2.zarr");
    write_zarr_v2(&v2, &data.clone().into_dyn(), &[3, 2, 7, 20], json!({}));
    // OME-Zarr 0.4 on v2: (t, c, z, y, x) with two channels, channel 0 the data.
    let ome = tmp.path().join("ome04.zarr");
    let mut five = ndarray::Array5::<u16>::zeros([7, 2, 5, 16, 20]);
    five.slice_mut(s![.., 0, .., .., ..]).assign(&data);
    five.slice_mut(s![.., 1, .., .., ..]).fill(7);
    std::fs::create_dir_all(&ome).unwrap();
    std::fs::write(ome.join(".zgroup"), r#"{"zarr_format": 2}"#).unwrap();
    let axes = json!([
        {"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}
    ]);
    let ms = json!({"multiscales": [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 3.0, 0.5, 0.5]}]},
    ]}]});
    std::fs::write(ome.join(".zattrs"), ms.to_string()).unwrap();
    write_zarr_v2(
        &ome.join("s0"),
        &five.into_dyn(),
        &[4, 1, 5, 16, 20],
        json!({"dimension_separator": "/"}),
    );
    // A 3-D movie (t, y, x) read with --axes tyx against the same movie in HDF5.
    let movie = data.slice(s![.., 2, .., ..]).to_owned();
    let movie_h5 = tmp.path().join("movie.h5");
    {
        let f = hdf5::File::create(&movie_h5).unwrap();
        f.new_dataset_builder()
            .with_data(movie.view())
            .create("data")
            .unwrap();
    }
    let movie_zarr = tmp.path().join("movie.zarr");
    write_zarr_v2(
        &movie_zarr,
        &movie.clone().into_dyn(),
        &[7, 8, 8],
        json!({}),
    );
    let movie_ref = tmp.path().join("movie_ref.h5");
    run_ok(
        &movie_h5,
        &movie_ref,
        &["--dataset", "data", "--axes", "tyx"],
    );

    for (input, reference) in [
        (&v3, &reference),
        (&v2, &reference),
        (&ome, &reference),
        (&movie_zarr, &movie_ref),
    ] {
        let out = tmp.path().join(format!(
            "{}.h5",
            input.file_name().unwrap().to_string_lossy()
        ));
        let extra: &[&str] = if input == &movie_zarr {
            &["--axes", "tyx"]
        } else {
            &[]
        };
        run_ok(input, &out, extra);
        same_f32(
            &h5_f32(reference, "data"),
            &h5_f32(&out, "data"),
            &format!("{input:?} data"),
        );
        same_f64(
            &h5_f64(reference, "shifts"),
            &h5_f64(&out, "shifts"),
            &format!("{input:?} shifts"),
        );
    }

    // The OME input's voxel size reaches the output: OME-Zarr axes units and scale, HDF5 attributes.
    let ome_out = tmp.path().join("from_ome.ome.zarr");
    run_ok(&ome, &ome_out, &[]);
    let ms = &zarr_attrs(&ome_out)["ome"]["multiscales"][0];
    assert_eq!(
        ms["datasets"][0]["coordinateTransformations"],
        json!([{"type": "scale", "scale": [2.0, 3.0, 0.5, 0.5]}])
    );
    let units: Vec<Value> = (0..4).map(|i| ms["axes"][i]["unit"].clone()).collect();
    assert_eq!(
        units,
        [
            json!("second"),
            json!("micrometer"),
            json!("micrometer"),
            json!("micrometer")
        ]
    );
    let h5 = hdf5::File::open(tmp.path().join("ome04.zarr.h5")).unwrap();
    let attr = |n: &str| -> String {
        let v: hdf5::types::VarLenUnicode = h5.attr(n).unwrap().read_scalar().unwrap();
        v.to_string()
    };
    assert_eq!(attr("voxel_size"), "2,3,0.5,0.5");
    assert_eq!(
        attr("voxel_units"),
        "second,micrometer,micrometer,micrometer"
    );
    assert!(hdf5::File::open(&reference)
        .unwrap()
        .attr("voxel_size")
        .is_err());

    // The memory check counts the typed copy and the decoded chunks (2 timepoints each) of a volume.
    let src = gpuprep_io::Source::open(&[v3.display().to_string()], "default").unwrap();
    assert_eq!(src.read_buffer_bytes(), 5 * 16 * 20 * 2 * (1 + 2));
    assert_eq!(src.chunks(), Some(vec![2, 5, 8, 20]));

    // `info` describes the store: format, array, shape, type, chunks, codecs, axes and voxel size.
    let (code, out, err) = gpuprep_output(&["info".to_string(), ome.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "Zarr v2, OME-NGFF 0.4 image",
        "array 's0' shape (7, 2, 5, 16, 20) uint16",
        "chunks (4, 1, 5, 16, 20)",
        "axes t,c,z,y,x",
        "voxel size t 2 second, z 3 micrometer, y 0.5 micrometer, x 0.5 micrometer",
        "channel 0 of 2",
        "axes tzyx: 7 volumes of (z, y, x) = (5, 16, 20)",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let (code, out, _) = gpuprep_output(&["info".to_string(), v3.display().to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("Zarr v3, array '/' shape (7, 5, 16, 20) uint16, chunks (2, 5, 8, 20), codecs bytes+zstd"), "{out}");
}

#[test]
fn hostile_zarr_inputs_give_one_clear_line_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = series(1, [4, 3, 8, 8]).into_dyn();
    let make = |name: &str| {
        let p = tmp.path().join(name);
        write_zarr_v2(&p, &data, &[1, 3, 8, 8], json!({}));
        p
    };
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("result.ome.zarr");
    let mut cases: Vec<(PathBuf, Vec<String>)> = Vec::new();

    // The only chunk of the last timepoint missing: a store cut short, refused before any work.
    let p = make("missing.zarr");
    std::fs::remove_file(p.join("3.0.0.0")).unwrap();
    cases.push((
        p.clone(),
        vec![
            p.display().to_string(),
            "chunk (3, 0, 0, 0) (3.0.0.0) is missing".into(),
            "timepoint 3".into(),
        ],
    ));
    // A truncated chunk.
    let p = make("truncated.zarr");
    let chunk = p.join("2.0.0.0");
    let bytes = std::fs::read(&chunk).unwrap();
    std::fs::write(&chunk, &bytes[..bytes.len() / 2]).unwrap();
    cases.push((
        p.clone(),
        vec![
            p.display().to_string(),
            "chunk (2, 0, 0, 0) (2.0.0.0) cannot be decoded at timepoint 2".into(),
        ],
    ));
    // A type gpuprep does not take.
    let p = tmp.path().join("int64.zarr");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(
        p.join(".zarray"),
        json!({"zarr_format": 2, "shape": [2, 2, 2, 2], "chunks": [1, 2, 2, 2],
        "dtype": "<i8", "compressor": null, "fill_value": 0, "filters": null, "order": "C"})
        .to_string(),
    )
    .unwrap();
    cases.push((
        p.clone(),
        vec!["unsupported type int64".into(), "uint8, uint16".into()],
    ));
    // Metadata that is not JSON.
    let p = tmp.path().join("garbage.zarr");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("zarr.json"), "{\"zarr_format\": 3, \"node_type\": ").unwrap();
    cases.push((
        p.clone(),
        vec![p.display().to_string(), "the store's root".into()],
    ));
    // OME axes that do not match the array's rank.
    let p = tmp.path().join("axes.zarr");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join(".zgroup"), r#"{"zarr_format": 2}"#).unwrap();
    std::fs::write(
        p.join(".zattrs"),
        json!({"multiscales": [{"version": "0.4",
        "axes": [{"name": "t"}, {"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}]})
        .to_string(),
    )
    .unwrap();
    write_zarr_v2(&p.join("0"), &data, &[1, 3, 8, 8], json!({}));
    cases.push((
        p.clone(),
        vec!["array '0' has 4 axes but the OME-NGFF metadata names 3 (t, y, x)".into()],
    ));
    // A 5-D array without axes metadata.
    let p = tmp.path().join("five.zarr");
    write_zarr_v2(
        &p,
        &data.clone().insert_axis(ndarray::Axis(0)),
        &[1, 1, 3, 8, 8],
        json!({}),
    );
    cases.push((
        p.clone(),
        vec!["is 5-D with shape (1, 4, 3, 8, 8); expected 4-D (t, z, y, x)".into()],
    ));

    for (input, wants) in cases {
        let (code, err) = run_err(&input, &out, &[]);
        assert_eq!(code, 2, "{input:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{input:?}: not one line:\n{err}"
        );
        for want in &wants {
            assert!(
                err.contains(want.as_str()),
                "{input:?}: {want:?} not in {err}"
            );
        }
        // No output, no temporary directory: nothing that looks like a result.
        assert!(
            entries(&out_dir).is_empty(),
            "{input:?}: left {:?}",
            entries(&out_dir)
        );
    }
}

#[test]
fn zarr_output_force_rules_and_interrupts_leave_no_store() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.h5");
    write_h5(&input, &series(2, [3, 2, 8, 8]));
    let out = tmp.path().join("o.zarr");
    run_ok(&input, &out, &["--dataset", "data"]);
    // An existing store is replaced only with --force.
    let (_, err) = run_err(&input, &out, &["--dataset", "data"]);
    assert!(err.contains("exists; pass --force to overwrite"), "{err}");
    std::fs::write(out.join("stray"), "x").unwrap();
    run_ok(&input, &out, &["--dataset", "data", "--force"]);
    assert!(
        !out.join("stray").exists(),
        "the old store was not replaced"
    );
    assert!(zarr_attrs(&out).contains_key("ome"));
    // A directory that is not a Zarr store is never replaced.
    let plain = tmp.path().join("plain.zarr");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("keep"), "x").unwrap();
    let (_, err) = run_err(&input, &plain, &["--dataset", "data", "--force"]);
    assert!(
        err.contains("is a directory that is not a Zarr store"),
        "{err}"
    );
    assert_eq!(entries(&plain), ["keep"]);
    let names: Vec<_> = entries(tmp.path())
        .into_iter()
        .filter(|n| n.starts_with(".gpuprep-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn an_interrupted_zarr_run_leaves_no_store() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (code, _, err) = gpuprep_output(&[
        "synth".into(),
        data.display().to_string(),
        "--shape".into(),
        "40,48,64,64".into(),
        "--dtype".into(),
        "float32".into(),
    ]);
    assert_eq!(code, 0, "{err}");
    let outdir = tmp.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let mut child = crate::support::gpuprep_command()
        .arg("run")
        .arg(&data)
        .arg("-o")
        .arg(outdir.join("out.ome.zarr"))
        .args([
            "--backend",
            "cpu",
            "--threads",
            "1",
            "-q",
            "--save",
            "filtered",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted once the store holds chunks of written volumes (the first slab of "filtered").
    let started = Instant::now();
    let temp = loop {
        let temp = std::fs::read_dir(&outdir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .next();
        if let Some(t) = temp.filter(|t| t.join("out.zarr/filtered/c").exists()) {
            break t;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(started.elapsed() < Duration::from_secs(120), "stuck");
        std::thread::sleep(Duration::from_millis(2));
    };
    // The store being written has no root metadata yet: even a copy of it is no complete-looking result.
    assert!(!temp.join("out.zarr/zarr.json").exists());
    assert!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) } == 0);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "gpuprep: interrupted (SIGINT); removed the temporary files in {}",
            temp.display()
        )
    );
    assert!(entries(&outdir).is_empty(), "{:?}", entries(&outdir));
}

#[test]
fn zarr_sink_gathers_slabs_rewrites_stored_volumes_and_refuses_bad_names() {
    use gpuprep_io::Sink;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s.zarr");
    let vol = |base: f32| {
        ndarray::Array3::from_shape_fn([4, 5, 6], |(z, y, x)| base + (z * 30 + y * 6 + x) as f32)
    };
    let mut sink = Sink::create(&out, false, &[], 3, [4, 5, 6], &["data", "filtered"]).unwrap();
    assert!(sink.temp_path().is_dir() && !out.exists());
    for t in 0..3 {
        sink.write_volume("data", t, vol(100.0 * t as f32).view())
            .unwrap();
    }
    // One slab of 3 timepoints, stored when complete; a volume written again goes to the store.
    assert_eq!(sink.read_volume("data", 1).unwrap(), vol(100.0));
    sink.write_volume("data", 1, vol(-1.0).view()).unwrap();
    assert_eq!(sink.read_volume("data", 1).unwrap(), vol(-1.0));
    // A pending (incomplete) slab reads back from memory; its missing timepoints hold 0 at the end.
    sink.write_volume(
        "filtered",
        0,
        vol(5.0).view().reversed_axes().reversed_axes(),
    )
    .unwrap();
    assert_eq!(sink.read_volume("filtered", 0).unwrap(), vol(5.0));
    for bad in ["0", "../x", ".hidden", "a/b", ""] {
        let e = sink
            .write_array_f32(bad, ndarray::ArrayD::zeros(vec![2]).view())
            .unwrap_err();
        assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
    }
    sink.write_array_f64("shifts", ndarray::ArrayD::from_elem(vec![3, 3], 0.5).view())
        .unwrap();
    sink.write_array_f64("shifts", ndarray::ArrayD::from_elem(vec![2], 1.5).view())
        .unwrap();
    sink.set_attr_f64("cval", f64::NAN).unwrap();
    assert!(sink
        .set_attr_str("ome", "x")
        .unwrap_err()
        .to_string()
        .contains("'ome'"));
    assert_eq!(sink.finish().unwrap(), out);

    let data = zarr_read::<f32>(&out, "0");
    for (t, want) in [(0, vol(0.0)), (1, vol(-1.0)), (2, vol(200.0))] {
        assert_eq!(data.slice(s![t, .., .., ..]), want, "t = {t}");
    }
    let filtered = zarr_read::<f32>(&out, "filtered");
    assert_eq!(filtered.slice(s![0, .., .., ..]), vol(5.0));
    assert!(filtered
        .slice(s![1.., .., .., ..])
        .iter()
        .all(|&v| v == 0.0));
    // Replaced whole: the second "shifts" alone, no chunk of the first left.
    assert_eq!(
        zarr_read::<f64>(&out, "shifts"),
        ndarray::ArrayD::from_elem(vec![2], 1.5)
    );
    assert_eq!(zarr_attrs(&out)["cval"], "NaN");
}

/// The Python with zarr-python 3 and h5py: `GPUPREP_PYTHON`, else `python3` on the PATH. Named
/// explicitly (as `scripts/test.sh` does, with the venv `scripts/setup.sh` makes), a Python without
/// them is a failure, not a skip: CI must not pass by skipping.
fn python_with_zarr() -> Option<String> {
    let named = std::env::var("GPUPREP_PYTHON").ok();
    let py = named.clone().unwrap_or_else(|| "python3".into());
    let out = std::process::Command::new(&py)
        .args([
            "-c",
            "import zarr, h5py, numpy, jsonschema; assert int(zarr.__version__.split('.')[0]) >= 3",
        ])
        .output();
    let ok = out.as_ref().is_ok_and(|o| o.status.success());
    if !ok && named.is_some() {
        panic!("GPUPREP_PYTHON={py} has no zarr>=3, h5py, numpy and jsonschema: {out:?}");
    }
    ok.then_some(py)
}

#[test]
fn zarr_python_reads_the_ome_zarr_output_with_the_same_values() {
    use std::io::Write;
    let Some(py) = python_with_zarr() else {
        // Written past the test harness's capture, so a run without zarr-python says what it skipped.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED formats::zarr_python_reads_the_ome_zarr_output_with_the_same_values: no Python with \
             zarr>=3, h5py, numpy and jsonschema (set GPUPREP_PYTHON, or pip install zarr h5py numpy \
             jsonschema)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.h5");
    write_h5(&input, &series(3, [5, 4, 12, 10]));
    let (h5, zarr) = (tmp.path().join("out.h5"), tmp.path().join("out.ome.zarr"));
    run_ok(&input, &h5, &["--dataset", "data"]);
    run_ok(&input, &zarr, &["--dataset", "data"]);
    // An output with units and a scale: from an ImageJ hyperstack with a calibration.
    let calibrated = tmp.path().join("calibrated.ome.zarr");
    let tif = tmp.path().join("in.tif");
    let d = series(4, [3, 2, 8, 8]);
    write_tiff::<tiff::encoder::colortype::Gray16>(
        &tif,
        &planes(&d, (0..3).flat_map(|t| (0..2).map(move |z| (t, z)))),
        [8, 8],
        false,
        tiff::encoder::Compression::Uncompressed,
        Some("ImageJ=1.11a\nimages=6\nslices=2\nframes=3\nunit=micron\nspacing=4\nfinterval=2\n"),
    );
    run_ok(&tif, &calibrated, &[]);
    let script = r#"
import sys, json, pathlib, h5py, numpy as np, zarr, jsonschema, referencing
h5, store, schemas, calibrated = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4]
# The OME-NGFF 0.5 image schema (vendored; its $refs resolved from the same directory).
docs = [json.loads(p.read_text()) for p in schemas.glob("*.schema")]
registry = referencing.Registry().with_resources(
    [(d["$id"], referencing.Resource.from_contents(d)) for d in docs])
image = next(d for d in docs if d["$id"].endswith("/image.schema"))
validator = jsonschema.Draft202012Validator(image, registry=registry)
for s in [store, calibrated]:
    attrs = json.loads(pathlib.Path(s, "zarr.json").read_text())["attributes"]
    validator.validate(attrs)
    # The check can fail: an axis whose type is not a string is refused.
    bad = json.loads(json.dumps(attrs))
    bad["ome"]["multiscales"][0]["axes"][0]["type"] = 7
    assert not validator.is_valid(bad)
axes = zarr.open_group(calibrated, mode="r").attrs["ome"]["multiscales"][0]
assert [a.get("unit") for a in axes["axes"]] == ["second", "micrometer", "micrometer", "micrometer"], axes
assert axes["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 4.0, 1.0, 1.0], axes
g = zarr.open_group(store, mode="r")
assert g.metadata.zarr_format == 3, g.metadata.zarr_format
ome = g.attrs["ome"]
assert ome["version"] == "0.5", ome
ms = ome["multiscales"][0]
assert [a["name"] for a in ms["axes"]] == ["t", "z", "y", "x"], ms["axes"]
level0 = g[ms["datasets"][0]["path"]]
with h5py.File(h5, "r") as f:
    for name, z in [("data", level0), ("shifts", g["shifts"]), ("mean", g["mean"]), ("std", g["std"])]:
        a, b = f[name][...], z[...]
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        assert a.tobytes() == b.tobytes(), name
    for k, v in f.attrs.items():
        v = v.tolist() if hasattr(v, "tolist") else v
        assert g.attrs[k] == v, (k, g.attrs[k], v)
print("ok")
"#;
    let o = std::process::Command::new(&py)
        .args(["-c", script])
        .arg(&h5)
        .arg(&zarr)
        .arg(crate::support::fixture("ngff-0.5"))
        .arg(&calibrated)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success() && out.trim() == "ok", "{out}\n{err}");
}

#[test]
fn zstd_compression_is_for_zarr_outputs_and_reads_back_the_same() {
    use gpuprep_io::{Compression, Sink, SinkOptions};
    let tmp = tempfile::tempdir().unwrap();
    let zstd = SinkOptions {
        compression: "zstd".parse().unwrap(),
        ..Default::default()
    };
    assert_eq!(zstd.compression, Compression::Zstd);
    assert!("lz4"
        .parse::<Compression>()
        .unwrap_err()
        .to_string()
        .contains("none, zstd or blosc-lz4"));
    let e = Sink::create_with(
        &tmp.path().join("o.h5"),
        false,
        &[],
        2,
        [2, 3, 4],
        &["data"],
        zstd,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("Zarr outputs (.zarr, .ome.zarr) only"),
        "{e}"
    );
    assert!(entries(tmp.path()).is_empty());

    let out = tmp.path().join("o.zarr");
    let mut sink = Sink::create_with(&out, false, &[], 2, [2, 3, 4], &["data"], zstd).unwrap();
    let vol =
        ndarray::Array3::from_shape_fn([2, 3, 4], |(z, y, x)| (z * 12 + y * 4 + x) as f32 * 0.25);
    for t in 0..2 {
        sink.write_volume("data", t, vol.view()).unwrap();
    }
    sink.write_array_f64(
        "shifts",
        ndarray::ArrayD::from_elem(vec![2, 3], -0.5).view(),
    )
    .unwrap();
    sink.finish().unwrap();
    for key in ["0", "shifts"] {
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(key).join("zarr.json")).unwrap(),
        )
        .unwrap();
        let names: Vec<&str> = meta["codecs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["bytes", "zstd"], "{key}");
    }
    let data = zarr_read::<f32>(&out, "0");
    assert_eq!(data.slice(s![1, .., .., ..]), vol);
    assert_eq!(
        zarr_read::<f64>(&out, "shifts"),
        ndarray::ArrayD::from_elem(vec![2, 3], -0.5)
    );
}

#[test]
fn the_compression_flag_compresses_zarr_outputs_and_refuses_hdf5() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.h5");
    write_h5(&input, &series(fresh_seed(), [4, 5, 12, 10]));
    let plain = tmp.path().join("plain.ome.zarr");
    run_ok(&input, &plain, &["--dataset", "data", "--save", "filtered"]);
    for (codec, name) in [("zstd", "zstd"), ("blosc-lz4", "blosc")] {
        let out = tmp.path().join(format!("{codec}.ome.zarr"));
        run_ok(
            &input,
            &out,
            &[
                "--dataset",
                "data",
                "--save",
                "filtered",
                "--compression",
                codec,
            ],
        );
        for key in ["0", "filtered", "shifts"] {
            let meta: Value = serde_json::from_str(
                &std::fs::read_to_string(out.join(key).join("zarr.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(meta["codecs"][1]["name"], name, "{key}: {}", meta["codecs"]);
            if codec == "blosc-lz4" {
                let c = &meta["codecs"][1]["configuration"];
                assert_eq!(
                    (&c["cname"], &c["shuffle"]),
                    (&json!("lz4"), &json!("shuffle"))
                );
                let typesize = if key == "shifts" { 8 } else { 4 };
                assert_eq!(c["typesize"], typesize, "{key}");
            }
        }
        for key in ["0", "filtered"] {
            same_f32(
                &zarr_read::<f32>(&plain, key),
                &zarr_read::<f32>(&out, key),
                key,
            );
        }
        assert_eq!(zarr_attrs(&out)["compression"], codec);
    }
    assert_eq!(zarr_attrs(&plain)["compression"], "none");
    // zarr-python decodes the blosc-lz4 chunks to the same bytes as the uncompressed store's.
    if let Some(py) = python_with_zarr() {
        let script = r#"
import sys, zarr
a, b = zarr.open_group(sys.argv[1], mode="r"), zarr.open_group(sys.argv[2], mode="r")
for k in ["0", "filtered", "shifts", "mean"]:
    assert "Blosc" in repr(b[k].compressors), (k, b[k].compressors)
    assert a[k][...].tobytes() == b[k][...].tobytes(), k
print("ok")
"#;
        let o = std::process::Command::new(&py)
            .args(["-c", script])
            .arg(&plain)
            .arg(tmp.path().join("blosc-lz4.ome.zarr"))
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success() && out.trim() == "ok", "{out}\n{err}");
    }
    // HDF5 has no built-in zstd filter: refused before any data is read, nothing left behind.
    let h5 = tmp.path().join("out.h5");
    let (code, err) = run_err(&input, &h5, &["--dataset", "data", "--compression", "zstd"]);
    assert_eq!(code, 2, "{err}");
    let (code2, err2) = run_err(
        &input,
        &h5,
        &["--dataset", "data", "--compression", "blosc-lz4"],
    );
    assert_eq!(code2, 2, "{err2}");
    assert!(
        err2.contains("blosc-lz4 compression is available for Zarr outputs"),
        "{err2}"
    );
    assert!(
        err.contains("out.h5") && err.contains("Zarr outputs"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!h5.exists());
    let (code, err) = run_err(&input, &h5, &["--compression", "lz4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--compression"), "{err}");
}

/// Writes `pages` (each a (y, x) plane of `w` × `h` values) as one TIFF (BigTIFF with `big`), the
/// ImageDescription `desc` on the first page, every page with `compression`.
fn write_tiff<C: tiff::encoder::colortype::ColorType>(
    path: &Path,
    pages: &[Vec<C::Inner>],
    [h, w]: [usize; 2],
    big: bool,
    compression: tiff::encoder::Compression,
    desc: Option<&str>,
) where
    [C::Inner]: tiff::encoder::TiffValue,
{
    fn pages_into<K: tiff::encoder::TiffKind, C: tiff::encoder::colortype::ColorType>(
        mut enc: tiff::encoder::TiffEncoder<std::fs::File, K>,
        pages: &[Vec<C::Inner>],
        [h, w]: [usize; 2],
        desc: Option<&str>,
    ) where
        [C::Inner]: tiff::encoder::TiffValue,
    {
        for (i, p) in pages.iter().enumerate() {
            let mut img = enc.new_image::<C>(w as u32, h as u32).unwrap();
            if let (0, Some(d)) = (i, desc) {
                let tag = tiff::tags::Tag::ImageDescription;
                // The encoder takes ASCII text only; UTF-8 ("µm" in OME-XML) goes in as bytes.
                if d.is_ascii() {
                    img.encoder().write_tag(tag, d).unwrap();
                } else {
                    img.encoder().write_tag(tag, d.as_bytes()).unwrap();
                }
            }
            img.write_data(p).unwrap();
        }
    }
    let file = std::fs::File::create(path).unwrap();
    if big {
        let enc = tiff::encoder::TiffEncoder::new_big(file)
            .unwrap()
            .with_compression(compression);
        pages_into::<_, C>(enc, pages, [h, w], desc);
    } else {
        let enc = tiff::encoder::TiffEncoder::new(file)
            .unwrap()
            .with_compression(compression);
        pages_into::<_, C>(enc, pages, [h, w], desc);
    }
}

/// The (y, x) planes of `data` at the (t, z) pairs `order` lists, as TIFF pages.
fn planes(data: &Array4<u16>, order: impl IntoIterator<Item = (usize, usize)>) -> Vec<Vec<u16>> {
    order
        .into_iter()
        .map(|(t, z)| data.slice(s![t, z, .., ..]).iter().copied().collect())
        .collect()
}

fn deflate() -> tiff::encoder::Compression {
    tiff::encoder::Compression::Deflate(tiff::encoder::DeflateLevel::Balanced)
}

#[test]
fn tiff_inputs_give_the_result_of_the_same_data_in_hdf5_and_zarr() {
    use tiff::encoder::colortype::Gray16;
    use tiff::encoder::Compression as C;
    let seed = fresh_seed();
    let tmp = tempfile::tempdir().unwrap();
    let (nt, nz, ny, nx) = (7, 5, 16, 20);
    let data = series(seed, [nt, nz, ny, nx]);
    let h5_in = tmp.path().join("in.h5");
    write_h5(&h5_in, &data);
    let reference = tmp.path().join("ref.h5");
    run_ok(&h5_in, &reference, &["--dataset", "data"]);

    // Zarr v3 of the same data.
    let v3 = tmp.path().join("v3.zarr");
    write_zarr_v3(&v3, &data);
    // One 3-D stack per timepoint, numbered so that natural order (vol_3 before vol_12) is not the
    // byte order; every compression the pages come in.
    let per_t = tmp.path().join("per_t");
    std::fs::create_dir(&per_t).unwrap();
    let codecs = [C::Uncompressed, C::Lzw, deflate(), C::Packbits];
    for t in 0..nt {
        write_tiff::<Gray16>(
            &per_t.join(format!("vol_{}.tif", t * 3)),
            &planes(&data, (0..nz).map(|z| (t, z))),
            [ny, nx],
            t % 2 == 1,
            codecs[t % codecs.len()],
            None,
        );
    }
    // One ImageJ hyperstack: 2 channels (the data in channel 1), pages in (t, z, c) order.
    let imagej = tmp.path().join("hyper.tif");
    let mut pages = Vec::new();
    for t in 0..nt {
        for z in 0..nz {
            pages.push(vec![9u16; ny * nx]);
            pages.extend(planes(&data, [(t, z)]));
        }
    }
    write_tiff::<Gray16>(
        &imagej,
        &pages,
        [ny, nx],
        false,
        C::Lzw,
        Some(&format!(
            "ImageJ=1.11a\nimages={}\nchannels=2\nslices={nz}\nframes={nt}\nhyperstack=true\n\
             unit=micron\nspacing=2.5\nfinterval=0.5\n",
            2 * nz * nt
        )),
    );
    // One OME-TIFF (BigTIFF) with t fastest: DimensionOrder XYTZC.
    let ome = tmp.path().join("stack.ome.tif");
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYTZC" Type="uint16" SizeX="{nx}" SizeY="{ny}" SizeZ="{nz}" SizeC="1" SizeT="{nt}" PhysicalSizeX="0.25" PhysicalSizeY="0.25" PhysicalSizeZ="1.5" PhysicalSizeZUnit="µm"/></Image></OME>"#
    );
    write_tiff::<Gray16>(
        &ome,
        &planes(&data, (0..nz).flat_map(|z| (0..nt).map(move |t| (t, z)))),
        [ny, nx],
        true,
        deflate(),
        Some(&xml),
    );

    let glob = per_t.join("vol_*.tif");
    let cases: Vec<(&Path, &[&str])> = vec![
        (&v3, &[]),
        (&per_t, &[]),
        (&glob, &[]),
        (&imagej, &["--channel", "1"]),
        (&ome, &[]),
    ];
    for (i, (input, extra)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("out{i}.h5"));
        run_ok(input, &out, extra);
        same_f32(
            &h5_f32(&reference, "data"),
            &h5_f32(&out, "data"),
            &format!("{input:?} data"),
        );
        same_f64(
            &h5_f64(&reference, "shifts"),
            &h5_f64(&out, "shifts"),
            &format!("{input:?} shifts"),
        );
    }

    // An output written into the TIFF directory does not turn it into an HDF5 series.
    run_ok(&per_t, &per_t.join("result.h5"), &[]);
    let again = tmp.path().join("again.h5");
    run_ok(&per_t, &again, &[]);
    same_f32(
        &h5_f32(&reference, "data"),
        &h5_f32(&again, "data"),
        "rerun data",
    );
    std::fs::remove_file(per_t.join("result.h5")).unwrap();

    // The ImageJ calibration and the OME physical sizes reach the output.
    let voxel = |i: usize| -> (String, String) {
        let h5 = hdf5::File::open(tmp.path().join(format!("out{i}.h5"))).unwrap();
        let attr = |n: &str| -> String {
            let v: hdf5::types::VarLenUnicode = h5.attr(n).unwrap().read_scalar().unwrap();
            v.to_string()
        };
        (attr("voxel_size"), attr("voxel_units"))
    };
    assert_eq!(
        voxel(3),
        (
            "0.5,2.5,1,1".to_string(),
            "second,micrometer,micrometer,micrometer".to_string()
        )
    );
    assert_eq!(voxel(4).0, "1,1.5,0.25,0.25");

    // The library reads every page as written; the memory check counts one decoded page.
    let src = gpuprep_io::Source::open(&[per_t.display().to_string()], "default").unwrap();
    assert_eq!(
        (src.len(), src.shape(), src.dtype(), src.axes()),
        (nt, [nz, ny, nx], Dtype::U16, gpuprep_io::Axes::Zyx)
    );
    assert_eq!(src.read_buffer_bytes(), ny * nx * 2);
    let names: Vec<String> = src
        .files()
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names[..3], ["vol_0.tif", "vol_3.tif", "vol_6.tif"]);
    assert_eq!(names[6], "vol_18.tif");

    // `info` describes TIFF inputs: kind, pages, page size, type, compression, axes, voxel size.
    let (code, out, err) = gpuprep_output(&["info".to_string(), imagej.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "TIFF, 70 pages of (y, x) = (16, 20) uint16, LZW, axes t 7, c 2, z 5 (ImageJ hyperstack)",
        "voxel size t 0.5 second, z 2.5 micrometer, y 1 micrometer, x 1 micrometer",
        "input: 1 file, hyper.tif (TIFF, ImageJ hyperstack), channel 0 of 2; axes tzyx: 7 volumes",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let (code, out, err) = gpuprep_output(&["info".to_string(), per_t.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "vol_3.tif: BigTIFF, 5 pages of (y, x) = (16, 20) uint16, LZW",
        "vol_6.tif: TIFF, 5 pages of (y, x) = (16, 20) uint16, deflate",
        "vol_9.tif: BigTIFF, 5 pages of (y, x) = (16, 20) uint16, PackBits",
        "input: 7 files, vol_0.tif … vol_18.tif (TIFF); axes zyx: one volume of (z, y, x) = (5, 16, 20) per file",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
}

#[test]
fn tiff_pages_of_every_dtype_read_as_hdf5_reads_them() {
    use tiff::encoder::colortype::{Gray16, Gray32Float, Gray64Float, Gray8, GrayI16, GrayI32};
    use tiff::encoder::Compression as C;
    let tmp = tempfile::tempdir().unwrap();
    let edge = [
        0.0,
        1.0,
        -1.0,
        0.5,
        255.0,
        32767.0,
        -32768.0,
        65535.0,
        16777217.0,
        2147483647.0,
        -2147483648.0,
        std::f64::consts::PI,
        1e-40,
    ];
    let (ny, nx) = (3, 5);
    let values = |page: usize| -> Vec<f64> {
        (0..ny * nx)
            .map(|i| edge[(i + page * 7) % edge.len()] * if i > 12 { 0.37 } else { 1.0 })
            .collect()
    };
    macro_rules! case {
        ($color:ty, $t:ty, $dtype:expr, $conv:expr) => {{
            let conv = $conv;
            let pages: Vec<Vec<$t>> = (0..4)
                .map(|p| values(p).into_iter().map(conv).collect())
                .collect();
            let path = tmp.path().join(format!("{}.tif", $dtype));
            write_tiff::<$color>(&path, &pages, [ny, nx], false, C::Lzw, None);
            let src = gpuprep_io::Source::open_with(
                &[path.display().to_string()],
                "default",
                Some(gpuprep_io::Axes::Zyx),
            )
            .unwrap();
            assert_eq!(
                (src.len(), src.shape(), src.dtype()),
                (1, [4, ny, nx], $dtype)
            );
            let vol = src.read(0).unwrap();
            for (p, page) in pages.iter().enumerate() {
                let want: Vec<f32> = page.iter().map(|&v| v as f32).collect();
                let got: Vec<f32> = vol.slice(s![p, .., ..]).iter().copied().collect();
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{} page {p}",
                    $dtype
                );
            }
        }};
    }
    case!(Gray8, u8, Dtype::U8, |v: f64| v.clamp(0.0, 255.0) as u8);
    case!(Gray16, u16, Dtype::U16, |v: f64| v.clamp(0.0, 65535.0)
        as u16);
    case!(
        GrayI16,
        i16,
        Dtype::I16,
        |v: f64| v.clamp(-32768.0, 32767.0) as i16
    );
    case!(GrayI32, i32, Dtype::I32, |v: f64| v as i32);
    case!(Gray32Float, f32, Dtype::F32, |v: f64| v as f32);
    case!(Gray64Float, f64, Dtype::F64, |v: f64| v);

    // A float64 page beyond float32's range is an error naming the file and voxel, as for HDF5.
    let path = tmp.path().join("huge.tif");
    let mut page = vec![0.0f64; ny * nx];
    page[7] = 1e300;
    write_tiff::<Gray64Float>(&path, &[page], [ny, nx], false, C::Uncompressed, None);
    let src = gpuprep_io::Source::open(&[path.display().to_string()], "default").unwrap();
    let e = src.read(0).unwrap_err().to_string();
    assert!(
        e.contains("huge.tif") && e.contains("voxel (z, y, x) = (0, 1, 2)") && e.contains("1e300"),
        "{e}"
    );
}

#[test]
fn hostile_tiff_inputs_give_one_clear_line_and_leave_nothing() {
    use tiff::encoder::colortype::{Gray16, Gray8, RGB8};
    use tiff::encoder::Compression as C;
    let tmp = tempfile::tempdir().unwrap();
    let (ny, nx) = (8, 8);
    let data = series(5, [3, 4, ny, nx]);
    let series_dir = |name: &str| -> PathBuf {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for t in 0..3 {
            write_tiff::<Gray16>(
                &d.join(format!("t{t}.tif")),
                &planes(&data, (0..4).map(|z| (t, z))),
                [ny, nx],
                false,
                C::Lzw,
                None,
            );
        }
        d
    };
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("result.h5");
    let mut cases: Vec<(PathBuf, Vec<&str>, Vec<String>)> = Vec::new();

    // A page of another shape: page 2 of t1.tif is 8 × 9.
    let d = series_dir("other_shape");
    let mut pages = planes(&data, (0..4).map(|z| (1, z)));
    {
        let f = d.join("t1.tif");
        let file = std::fs::File::create(&f).unwrap();
        let mut enc = tiff::encoder::TiffEncoder::new(file).unwrap();
        for (i, p) in pages.iter_mut().enumerate() {
            if i == 2 {
                p.extend(vec![0u16; ny]);
                enc.write_image::<Gray16>(9, ny as u32, p).unwrap();
            } else {
                enc.write_image::<Gray16>(nx as u32, ny as u32, p).unwrap();
            }
        }
    }
    cases.push((
        d.clone(),
        vec![],
        vec![
            d.join("t1.tif").display().to_string(),
            "page 2: its (y, x) size is (8, 9) but page 0's is (8, 8)".into(),
        ],
    ));
    // A file cut short: its last page directory is gone.
    let d = series_dir("truncated");
    let f = d.join("t2.tif");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 40)
        .unwrap();
    cases.push((
        d.clone(),
        vec![],
        vec![f.display().to_string(), "page 3".into(), "truncated".into()],
    ));
    // A page whose data lies past the end of the file (its directory intact): tifffile's 4-D fixture
    // with the last page's strip offset moved 1 MiB on.
    let past = tmp.path().join("past_end.tif");
    let mut bytes = std::fs::read(crate::support::fixture("tiff/tifffile_tzyx.tif")).unwrap();
    let offset = {
        let mut dec = tiff::decoder::Decoder::new(std::io::Cursor::new(&bytes)).unwrap();
        dec.seek_to_image(11).unwrap();
        dec.get_tag_u32(tiff::tags::Tag::StripOffsets).unwrap()
    };
    // The directory comes after the data, so the offset's bytes past the data are the tag's.
    let at = (offset as usize + 60)
        + bytes[offset as usize + 60..]
            .windows(4)
            .position(|w| w == offset.to_le_bytes())
            .unwrap();
    bytes[at..at + 4].copy_from_slice(&(offset + (1 << 20)).to_le_bytes());
    std::fs::write(&past, &bytes).unwrap();
    cases.push((
        past.clone(),
        vec![],
        vec![
            past.display().to_string(),
            format!(
                "page 11: its data ends at byte {} but the file is {} bytes: truncated?",
                offset + (1 << 20) + 60,
                bytes.len()
            ),
        ],
    ));
    // A file of another type among the series.
    let d = series_dir("wrong_type");
    write_tiff::<Gray8>(
        &d.join("t1.tif"),
        &vec![vec![1u8; ny * nx]; 4],
        [ny, nx],
        false,
        C::Uncompressed,
        None,
    );
    cases.push((
        d.clone(),
        vec![],
        vec![
            d.join("t1.tif").display().to_string(),
            "has pages of type uint8 but".into(),
            "t0.tif has uint16".into(),
        ],
    ));
    // A named file that does not exist, after one that does.
    let d = series_dir("missing");
    cases.push((d.join("t0.tif"), vec![], vec![]));
    let missing_extra = d.join("t9.tif").display().to_string();
    // RGB pages.
    let rgb = tmp.path().join("rgb.tif");
    write_tiff::<RGB8>(
        &rgb,
        &[vec![0u8; ny * nx * 3]],
        [ny, nx],
        false,
        C::Uncompressed,
        None,
    );
    cases.push((
        rgb.clone(),
        vec![],
        vec![
            rgb.display().to_string(),
            "RGB".into(),
            "single-sample".into(),
        ],
    ));
    // ImageJ metadata that promises more pages than the file has.
    let short = tmp.path().join("short.tif");
    write_tiff::<Gray16>(
        &short,
        &planes(&data, (0..4).map(|z| (0, z))),
        [ny, nx],
        false,
        C::Uncompressed,
        Some("ImageJ=1.11a\nimages=8\nslices=4\nframes=2\n"),
    );
    cases.push((
        short.clone(),
        vec![],
        vec![
            short.display().to_string(),
            "describes 2 × 1 × 4 = 8 pages but the file has 4".into(),
        ],
    ));
    // --channel past the channels, on TIFF and HDF5 inputs; --axes tzyx with no metadata to split pages.
    let plain = tmp.path().join("plain.tif");
    write_tiff::<Gray16>(
        &plain,
        &planes(&data, (0..4).map(|z| (0, z))),
        [ny, nx],
        false,
        C::Uncompressed,
        None,
    );
    cases.push((
        plain.clone(),
        vec!["--channel", "1"],
        vec![
            plain.display().to_string(),
            "--channel 1 is out of range: it has 1 channel".into(),
        ],
    ));
    let h5 = tmp.path().join("in.h5");
    write_h5(&h5, &data);
    cases.push((
        h5.clone(),
        vec!["--dataset", "data", "--channel", "3"],
        vec![
            h5.display().to_string(),
            "--channel 3 is out of range: it has 1 channel".into(),
        ],
    ));
    cases.push((
        plain.clone(),
        vec!["--axes", "tzyx"],
        vec!["--axes tzyx needs ImageJ hyperstack or OME-XML metadata".into()],
    ));
    cases.push((
        h5.clone(),
        vec!["--format", "tiff"],
        vec![
            h5.display().to_string(),
            "is not a readable TIFF file".into(),
        ],
    ));

    for (input, extra, wants) in cases {
        let (code, err) = if wants.is_empty() {
            // The missing file: named after an existing one.
            let mut args: Vec<String> = vec![
                "run".into(),
                input.display().to_string(),
                missing_extra.clone(),
                "-o".into(),
                out.display().to_string(),
            ];
            args.extend(["--backend", "cpu", "-q"].map(String::from));
            let (code, _, err) = gpuprep_output(&args);
            assert!(
                err.contains(&missing_extra) && err.contains("no such file"),
                "{err}"
            );
            (code, err)
        } else {
            run_err(&input, &out, &extra)
        };
        assert_eq!(code, 2, "{input:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{input:?}: not one line:\n{err}"
        );
        for want in &wants {
            assert!(
                err.contains(want.as_str()),
                "{input:?}: {want:?} not in {err}"
            );
        }
        assert!(
            entries(&out_dir).is_empty(),
            "{input:?}: left {:?}",
            entries(&out_dir)
        );
    }
    // A file replaced during the run by one of another page size: the read names the file and page.
    let d = series_dir("replaced");
    let src = gpuprep_io::Source::open(&[d.display().to_string()], "default").unwrap();
    write_tiff::<Gray16>(
        &d.join("t1.tif"),
        &vec![vec![0u16; ny * 9]; 4],
        [ny, 9],
        false,
        C::Uncompressed,
        None,
    );
    src.read(0).unwrap();
    let e = src.read(1).unwrap_err().to_string();
    assert!(
        e.contains("t1.tif")
            && e.contains(
                "page 0 (timepoint 1, z 0): it is now (8, 9) uint16 where (8, 8) uint16 was opened"
            ),
        "{e}"
    );
}

#[test]
fn the_channel_flag_picks_a_channel_of_an_ome_zarr_image() {
    let tmp = tempfile::tempdir().unwrap();
    let data = series(fresh_seed(), [4, 3, 10, 12]);
    let h5_in = tmp.path().join("in.h5");
    write_h5(&h5_in, &data);
    let reference = tmp.path().join("ref.h5");
    run_ok(&h5_in, &reference, &["--dataset", "data"]);
    // OME-Zarr 0.4, (t, c, z, y, x) with three channels, the data in channel 2.
    let ome = tmp.path().join("three.zarr");
    let mut five = ndarray::Array5::<u16>::zeros([4, 3, 3, 10, 12]);
    five.slice_mut(s![.., 0, .., .., ..]).fill(3);
    five.slice_mut(s![.., 1, .., .., ..])
        .assign(&data.mapv(|v| v / 2));
    five.slice_mut(s![.., 2, .., .., ..]).assign(&data);
    std::fs::create_dir_all(&ome).unwrap();
    std::fs::write(ome.join(".zgroup"), r#"{"zarr_format": 2}"#).unwrap();
    let ms = json!({"multiscales": [{"version": "0.4", "axes": [
        {"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0"}]}]});
    std::fs::write(ome.join(".zattrs"), ms.to_string()).unwrap();
    write_zarr_v2(
        &ome.join("0"),
        &five.into_dyn(),
        &[2, 2, 3, 10, 12],
        json!({}),
    );
    let out = tmp.path().join("c2.h5");
    run_ok(&ome, &out, &["--channel", "2", "--format", "zarr"]);
    same_f32(&h5_f32(&reference, "data"), &h5_f32(&out, "data"), "data");
    same_f64(
        &h5_f64(&reference, "shifts"),
        &h5_f64(&out, "shifts"),
        "shifts",
    );
    let (code, info, err) = gpuprep_output(&[
        "info".to_string(),
        ome.display().to_string(),
        "--channel".into(),
        "1".into(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(info.contains("channel 1 of 3"), "{info}");
    // Past the channels: one line naming the flag, the store and how many channels it has.
    let bad = tmp.path().join("bad.h5");
    let (code, err) = run_err(&ome, &bad, &["--channel", "3"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("three.zarr")
            && err.contains("--channel 3 is out of range: it has 3 channels"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!bad.exists());
    // --format zarr on an HDF5 file, --format hdf5 on a store: one line each.
    let (code, err) = run_err(&h5_in, &bad, &["--format", "zarr"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("in.h5") && err.contains("is not a Zarr store"),
        "{err}"
    );
    let (code, err) = run_err(&ome, &bad, &["--format", "hdf5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("three.zarr"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn absent_chunks_read_as_the_fill_value_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = series(fresh_seed(), [4, 3, 8, 8]);
    // Timepoint 1's upper half holds only the fill value: zarr-python (write_empty_chunks=False)
    // would not write that chunk.
    data.slice_mut(s![1, .., 0..4, ..]).fill(0);
    let h5_in = tmp.path().join("in.h5");
    write_h5(&h5_in, &data);
    let reference = tmp.path().join("ref.h5");
    run_ok(&h5_in, &reference, &["--dataset", "data"]);
    let store = tmp.path().join("sparse.zarr");
    write_zarr_v2(&store, &data.clone().into_dyn(), &[1, 3, 4, 8], json!({}));
    std::fs::remove_file(store.join("1.0.0.0")).unwrap();

    let out = tmp.path().join("out.h5");
    let (code, err) = run(&store, &out, &[]);
    assert_eq!(code, 0, "{err}");
    same_f32(&h5_f32(&reference, "data"), &h5_f32(&out, "data"), "data");
    same_f64(
        &h5_f64(&reference, "shifts"),
        &h5_f64(&out, "shifts"),
        "shifts",
    );
    assert!(
        err.contains("warning")
            && err.contains("sparse.zarr")
            && err.contains(
                "1 of 8 chunks of the store's root are absent and read as the fill value 0"
            )
            && err.contains("e.g. 1.0.0.0"),
        "{err}"
    );
    let (code, info, _) = gpuprep_output(&["info".to_string(), store.display().to_string()]);
    assert_eq!(code, 0);
    assert!(
        info.contains("1 of 8 chunks absent (read as the fill value)"),
        "{info}"
    );

    // Timepoint 2 with no chunk at all: a store cut short, refused with one line before any work.
    std::fs::remove_file(store.join("2.0.0.0")).unwrap();
    std::fs::remove_file(store.join("2.0.1.0")).unwrap();
    let bad = tmp.path().join("bad.h5");
    let (code, err) = run_err(&store, &bad, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "chunk (2, 0, 0, 0) (2.0.0.0) is missing, and so is every other chunk of timepoint 2"
        ) && err.contains("(3 of 8 chunks absent)"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!bad.exists());
    // `info` still describes it, and says why a run would refuse it.
    let (code, info, _) = gpuprep_output(&["info".to_string(), store.display().to_string()]);
    assert_eq!(code, 0);
    assert!(
        info.contains("3 of 8 chunks absent (read as the fill value)")
            && info.contains("unusable as input:")
            && info.contains("every other chunk of timepoint 2"),
        "{info}"
    );
}

#[test]
fn tiff_files_written_by_tifffile_read_as_written() {
    use crate::support::fixture;
    let (nt, nz, ny, nx) = (3, 4, 6, 5);
    // tests/fixtures/tiff/make_fixtures.py's formula.
    let value = |t: usize, c: usize, z: usize, y: usize, x: usize| {
        (t * 1000 + c * 500 + z * 50 + y * 10 + x) as f32
    };
    let check = |src: &gpuprep_io::Source, c: usize, what: &str| {
        assert_eq!((src.len(), src.shape()), (nt, [nz, ny, nx]), "{what}");
        for t in 0..nt {
            let vol = src.read(t).unwrap();
            let want =
                ndarray::Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| value(t, c, z, y, x));
            assert_eq!(vol, want, "{what} timepoint {t}");
        }
    };
    let open = |path: &str, channel: usize| {
        gpuprep_io::Source::open_opts(
            &[fixture(path).display().to_string()],
            "default",
            gpuprep_io::source::OpenOptions {
                channel,
                ..Default::default()
            },
        )
        .unwrap()
    };
    for c in 0..2 {
        let ome = open("tiff/tifffile_ome.ome.tif", c);
        check(&ome, c, "OME-TIFF");
        assert_eq!(
            ome.voxel_size().unwrap(),
            [
                (3.0, Some("second".to_string())),
                (2.0, Some("micrometer".to_string())),
                (0.5, Some("micrometer".to_string())),
                (0.5, Some("micrometer".to_string())),
            ]
        );
        let ij = open("tiff/tifffile_imagej.tif", c);
        check(&ij, c, "ImageJ");
        assert_eq!(ij.dtype(), Dtype::F32);
        assert_eq!(
            ij.voxel_size().unwrap().map(|(s, _)| s),
            [0.25, 2.0, 0.5, 0.5]
        );
    }
    let series = open("tiff/tifffile_series", 0);
    check(&series, 0, "series");
    assert!(series.voxel_size().is_none());
    // tifffile's JSON shape: 4-D without names as (t, z, y, x); named axes in any order.
    check(&open("tiff/tifffile_tzyx.tif", 0), 0, "tifffile 4-D");
    check(&open("tiff/tifffile_ctzyx.tif", 1), 1, "tifffile CTZYX");
    // zstd-compressed pages (tifffile + imagecodecs).
    let zstd = open("tiff/tifffile_zstd.tif", 0);
    check(&zstd, 0, "zstd");
    assert_eq!(zstd.dtype(), Dtype::F32);
    let (code, out, err) = gpuprep_output(&[
        "info".to_string(),
        fixture("tiff/tifffile_ctzyx.tif").display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("24 pages of (y, x) = (6, 5) uint16, no compression, axes t 3, c 2, z 4 (tifffile shape)")
            && out.contains("(TIFF, tifffile shape), channel 0 of 2; axes tzyx: 3 volumes"),
        "{out}"
    );
    let e = gpuprep_io::Source::open_opts(
        &[fixture("tiff/tifffile_ome.ome.tif").display().to_string()],
        "default",
        gpuprep_io::source::OpenOptions {
            channel: 2,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tifffile_ome.ome.tif")
            && e.contains("--channel 2 is out of range: it has 2 channels"),
        "{e}"
    );
}

/// OME-Zarr written by ome-zarr-py, the OME's own writer (`tests/fixtures/ome-zarr-py`, made by the script
/// there, with the arrays it wrote also in `expected.h5`): level 0 of an OME-NGFF 0.5 (t, z, y, x) pyramid
/// on Zarr v3 and of a 0.4 (t, c, z, y, x) pyramid on Zarr v2 read as written, the channel asked for, and
/// the 0.5 image's scale and units carried to the output.
#[test]
fn ome_zarr_written_by_ome_zarr_py_reads_as_written() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ome-zarr-py");
    let expected = hdf5::File::open(dir.join("expected.h5")).unwrap();
    let tzyx: ArrayD<u16> = expected.dataset("tzyx").unwrap().read_dyn().unwrap();
    let tczyx: ArrayD<f32> = expected.dataset("tczyx").unwrap().read_dyn().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let plain = ["--no-median", "--no-register", "--no-zscore"];

    let v05 = tmp.path().join("v05.h5");
    run_ok(&dir.join("v05_tzyx.ome.zarr"), &v05, &plain);
    same_f32(
        &h5_f32(&v05, "data"),
        &tzyx.mapv(f32::from),
        "OME-NGFF 0.5 level 0",
    );
    let h5 = hdf5::File::open(&v05).unwrap();
    let attr = |n: &str| -> String {
        let v: hdf5::types::VarLenUnicode = h5.attr(n).unwrap().read_scalar().unwrap();
        v.as_str().to_string()
    };
    assert_eq!(attr("voxel_size"), "1.5,2,0.5,0.5");
    assert_eq!(
        attr("voxel_units"),
        "second,micrometer,micrometer,micrometer"
    );

    for channel in [0, 1] {
        let out = tmp.path().join(format!("v04_c{channel}.h5"));
        let c = channel.to_string();
        run_ok(
            &dir.join("v04_tczyx.ome.zarr"),
            &out,
            &[&plain[..], &["--channel", &c]].concat(),
        );
        let want = tczyx.index_axis(ndarray::Axis(1), channel).to_owned();
        same_f32(&h5_f32(&out, "data"), &want, "OME-NGFF 0.4 level 0");
    }
    let (_, err) = run_err(
        &dir.join("v04_tczyx.ome.zarr"),
        &tmp.path().join("c2.h5"),
        &[&plain[..], &["--channel", "2"]].concat(),
    );
    assert!(
        err.contains("--channel 2") && err.contains("2 channels"),
        "{err}"
    );
    assert_eq!(entries(tmp.path()).len(), 3, "{:?}", entries(tmp.path()));
}

/// All files under `dir`, recursively.
fn file_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                file_count(&p)
            } else {
                1
            }
        })
        .sum()
}

/// `--shard`: each time slab of chunks is one shard (Zarr v3 `sharding_indexed`, the chunks inside), with
/// the same values as unsharded chunks and fewer files; zstd applies inside the shards; HDF5 outputs
/// refuse it before anything is written.
#[test]
fn the_shard_flag_stores_time_slabs_as_shards_and_refuses_hdf5() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.h5");
    // 20 timepoints of 16x64x64: 256 KiB volumes, chunked four timepoints at a time, split in space.
    write_h5(&input, &series(fresh_seed(), [20, 16, 64, 64]));
    let plain = tmp.path().join("plain.ome.zarr");
    run_ok(
        &input,
        &plain,
        &["--dataset", "data", "--save", "registered"],
    );
    for extra in [&["--shard"][..], &["--shard", "--compression", "zstd"][..]] {
        let out = tmp.path().join("sharded.ome.zarr");
        let _ = std::fs::remove_dir_all(&out);
        run_ok(
            &input,
            &out,
            &[&["--dataset", "data", "--save", "registered"][..], extra].concat(),
        );
        for key in ["0", "registered"] {
            let meta: Value = serde_json::from_str(
                &std::fs::read_to_string(out.join(key).join("zarr.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(
                meta["codecs"][0]["name"], "sharding_indexed",
                "{key}: {meta}"
            );
            let inner = &meta["codecs"][0]["configuration"];
            let plain_meta: Value = serde_json::from_str(
                &std::fs::read_to_string(plain.join(key).join("zarr.json")).unwrap(),
            )
            .unwrap();
            // The shard is the slab (t extent of a chunk, the whole volume); its chunks the unsharded ones.
            assert_eq!(
                inner["chunk_shape"],
                plain_meta["chunk_grid"]["configuration"]["chunk_shape"]
            );
            let shard = &meta["chunk_grid"]["configuration"]["chunk_shape"];
            assert_eq!(shard[0], inner["chunk_shape"][0]);
            assert_eq!(
                shard.as_array().unwrap()[1..],
                [json!(16), json!(64), json!(64)]
            );
            same_f32(&zarr_read(&out, key), &zarr_read(&plain, key), key);
            assert!(
                file_count(&out.join(key)) < file_count(&plain.join(key)),
                "{key}: {} files sharded, {} plain",
                file_count(&out.join(key)),
                file_count(&plain.join(key))
            );
        }
        assert_eq!(zarr_attrs(&out)["sharding"], "one shard per time slab");
    }
    assert_eq!(zarr_attrs(&plain)["sharding"], "none");
    let (code, err) = run_err(
        &input,
        &tmp.path().join("out.h5"),
        &["--dataset", "data", "--shard"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--shard") && err.contains("HDF5"), "{err}");
    assert!(!tmp.path().join("out.h5").exists());
}
