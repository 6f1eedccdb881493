//! The inputs gpuprep reads (HDF5, Zarr, TIFF) for front ends that read them block by block (the dask
//! front end): described once on the client, then read a block of timepoints per task, converted to
//! float32 as `gpuprep run` converts them, with its checks and messages.

use std::path::Path;

use crate::errors::py;
use gpuprep_io::source::{Axes, Format, OpenOptions, Source};
use ndarray::{s, Array4};
use numpy::{IntoPyArray, PyArray4, PyReadonlyArray4};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn open(
    inputs: &[String],
    dataset: &str,
    axes: Option<&str>,
    format: Option<&str>,
    channel: usize,
) -> PyResult<Source> {
    let opts = OpenOptions {
        axes: axes.map(|a| py(a.parse::<Axes>())).transpose()?,
        format: format.map(|f| py(f.parse::<Format>())).transpose()?,
        channel,
    };
    py(Source::open_opts(inputs, dataset, opts))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// What `gpuprep run` would read from `inputs`: a dict of shape (t, z, y, x), dtype, files, starts (the
/// first timepoint of each file), dataset, axes, format, voxel_size ((scale, unit) per t, z, y, x, or
/// None) and summary. Errors as `gpuprep run` does on bad inputs.
#[pyfunction]
#[pyo3(signature = (inputs, dataset = "default", axes = None, format = None, channel = 0))]
pub fn describe_input<'py>(
    py_: Python<'py>,
    inputs: Vec<String>,
    dataset: &str,
    axes: Option<&str>,
    format: Option<&str>,
    channel: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let source = py_.detach(|| open(&inputs, dataset, axes, format, channel))?;
    let d = PyDict::new(py_);
    let [z, y, x] = source.shape();
    d.set_item("shape", (source.len(), z, y, x))?;
    d.set_item("dtype", source.dtype().name())?;
    d.set_item(
        "files",
        source
            .files()
            .iter()
            .map(|p| path_str(p))
            .collect::<Vec<_>>(),
    )?;
    d.set_item("starts", source.starts().to_vec())?;
    d.set_item("dataset", source.dataset())?;
    d.set_item("axes", source.axes().name())?;
    d.set_item("format", source.format().name())?;
    d.set_item("voxel_size", source.voxel_size().map(|v| v.to_vec()))?;
    d.set_item("summary", source.inputs_summary())?;
    Ok(d)
}

/// Timepoints `t0 .. t0 + n` of `inputs` (opened with these options) as one float32 (n, z, y, x) array,
/// converted and checked as `gpuprep run` reads them; the GIL is released while reading.
#[pyfunction]
#[pyo3(signature = (inputs, dataset, axes, format, channel, t0, n))]
#[allow(clippy::too_many_arguments)]
pub fn read_block<'py>(
    py_: Python<'py>,
    inputs: Vec<String>,
    dataset: &str,
    axes: Option<&str>,
    format: Option<&str>,
    channel: usize,
    t0: usize,
    n: usize,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    let block = py_.detach(|| -> PyResult<Array4<f32>> {
        let source = open(&inputs, dataset, axes, format, channel)?;
        let end = t0
            .checked_add(n)
            .filter(|&e| e <= source.len())
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "timepoints {t0}..{t0}+{n}: past the {} timepoints of {}",
                    source.len(),
                    inputs.first().map(String::as_str).unwrap_or("no input")
                ))
            })?;
        let [z, y, x] = source.shape();
        let mut block = Array4::<f32>::zeros([n, z, y, x]);
        for t in t0..end {
            let v = py(source.read(t))?;
            block.slice_mut(s![t - t0, .., .., ..]).assign(&v);
        }
        Ok(block)
    })?;
    Ok(block.into_pyarray(py_))
}

/// Stores a float32 (n, z, y, x) `block` as timepoints `t0 ..` of the existing Zarr array at
/// `array_path` (whole chunks along t: each chunk one writer), in Rust with the GIL released.
#[pyfunction]
pub fn write_zarr_block(
    py_: Python<'_>,
    array_path: std::path::PathBuf,
    t0: usize,
    block: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let block = crate::stream::aligned(block)?;
    let block: PyReadonlyArray4<'_, f32> = block.extract()?;
    let view = block.as_array();
    py(py_.detach(|| gpuprep_io::sink::store_zarr_block(&array_path, t0, view)))
}

/// Stores a float32 (z, y, x) `volume` as the whole of the existing 3-D Zarr array at `array_path`,
/// in Rust with the GIL released.
#[pyfunction]
pub fn write_zarr_volume(
    py_: Python<'_>,
    array_path: std::path::PathBuf,
    volume: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let volume = crate::stream::aligned(volume)?;
    let volume: numpy::PyReadonlyArray3<'_, f32> = volume.extract()?;
    let view = volume.as_array();
    py(py_.detach(|| gpuprep_io::sink::store_zarr_volume(&array_path, view)))
}

/// Pass 2 of the dask front end for one block: the float32 (n, z, y, x) `block` normalized by the f64
/// `mean` and `std` (`normalize`'s values, its constant-voxel rule) and stored as timepoints `t0 ..`
/// of the existing Zarr array at `array_path`, in Rust with the GIL released. On the CPU the z-scores
/// are computed straight into the array's chunks (`normalize_volumes_by_block`) and written as each
/// chunk row is done, on a thread of its own, so computing and writing overlap and no normalized
/// (n, z, y, x) copy is made; on a GPU, the volumes are normalized there and stored as
/// `write_zarr_block` stores them.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn normalize_zarr_block(
    py_: Python<'_>,
    array_path: std::path::PathBuf,
    t0: usize,
    block: &Bound<'_, PyAny>,
    mean: &Bound<'_, PyAny>,
    std: &Bound<'_, PyAny>,
    constant_voxels: &str,
    backend: &str,
) -> PyResult<()> {
    use gpuprep_core::chunked::ChunkedBlock;
    use gpuprep_core::params::ZscoreParams;
    use std::sync::mpsc;

    let p = ZscoreParams {
        ddof: 0,
        constant: crate::kernels::constant_voxels(constant_voxels)?,
    };
    let choice = crate::engine::Choice::parse(backend)?;
    let (block, mean, std) = (
        crate::stream::aligned(block)?,
        crate::stream::aligned(mean)?,
        crate::stream::aligned(std)?,
    );
    let block: PyReadonlyArray4<'_, f32> = block.extract()?;
    let mean: numpy::PyReadonlyArray3<'_, f64> = mean.extract()?;
    let std: numpy::PyReadonlyArray3<'_, f64> = std.extract()?;
    let (block, mean, std) = (block.as_array(), mean.as_array(), std.as_array());
    crate::kernels::check_moments_shape(block.view(), mean.view(), std.view())?;
    let (n, z, y, x) = block.dim();
    py(py_.detach(|| -> gpuprep_core::error::Result<()> {
        if let Some(mut gpu) = crate::engine::select(choice)? {
            let out = crate::kernels::normalize_on_gpu(&mut gpu, block, mean, std, &p)?;
            return gpuprep_io::sink::store_zarr_block(&array_path, t0, out.view());
        }
        let writer = gpuprep_io::sink::ZarrBlockWriter::open(&array_path, t0, n, [z, y, x])?;
        let chunk = writer.chunk();
        // Non-contiguous inputs (not from numpy's usual layouts) are made contiguous once.
        let (block, mean, std) = (
            block.as_standard_layout(),
            mean.as_standard_layout(),
            std.as_standard_layout(),
        );
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<ChunkedBlock<f32>>(1);
            let (spare_tx, spares) = mpsc::channel::<ChunkedBlock<f32>>();
            let writer = &writer;
            let written = scope.spawn(move || -> gpuprep_core::error::Result<()> {
                for b in rx {
                    writer.write(&b)?;
                    let _ = spare_tx.send(b);
                }
                Ok(())
            });
            let computed = gpuprep_core::zscore::normalize_volumes_by_block(
                block.view(),
                mean.view(),
                std.view(),
                &p,
                chunk,
                || spares.try_recv().ok(),
                // A send fails only when the writer stopped on an error, which `join` returns.
                |b| {
                    tx.send(b)
                        .map_err(|_| gpuprep_core::error::Error::Data("the writer stopped".into()))
                },
            );
            drop(tx);
            let written = written.join().unwrap_or_else(|_| {
                Err(gpuprep_core::error::Error::Data(
                    "the writer panicked".into(),
                ))
            });
            written.and(computed)
        })
    }))
}
