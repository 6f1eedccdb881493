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
