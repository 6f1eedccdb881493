//! The four drop-in functions on float32 (z, y, x) volumes; `gpuprep/__init__.py` gives them
//! scipy's and scikit-image's signatures, dimensions and dtypes.

use crate::engine::{self, Choice};
use crate::errors::py;
use gpuprep_core::backend::{Backend, Moments as CoreMoments};
use gpuprep_core::params::{
    BoundaryMode, ConstantVoxels, MedianParams, Normalization, RegisterParams, ShiftParams,
    ZscoreParams,
};
use gpuprep_core::zscore::{zscore_series, Sample};
use gpuprep_core::Result;
use gpuprep_cpu::CpuBackend;
use ndarray::{Array4, ArrayView3, ArrayView4, Axis};
use numpy::{IntoPyArray, PyArray3, PyArray4, PyReadonlyArray3, PyReadonlyArray4};
use pyo3::exceptions::{PyNotImplementedError, PyValueError};
use pyo3::prelude::*;

/// `f` on the backend `choice` resolves to: a fresh CPU backend (it holds nothing between calls),
/// or the process's GPU. Call without the GIL.
pub fn with_backend<T>(choice: Choice, f: impl FnOnce(&mut dyn Backend) -> Result<T>) -> Result<T> {
    match engine::select(choice)? {
        Some(mut gpu) => f(gpu.backend()),
        None => f(&mut CpuBackend::new()),
    }
}

/// A boundary mode by scipy's name, under the keyword that gave it.
pub fn mode(keyword: &str, name: &str) -> PyResult<BoundaryMode> {
    name.parse().map_err(|_| {
        PyValueError::new_err(format!(
            "{keyword}: unknown boundary mode {name:?}; expected 'reflect', 'nearest', 'mirror', \
             'constant' or 'wrap'"
        ))
    })
}

pub fn normalization(name: &str) -> PyResult<Normalization> {
    name.parse::<Normalization>().map_err(|_| {
        PyValueError::new_err(format!(
            "normalization: unknown normalization {name:?}; expected 'phase' or None"
        ))
    })
}

pub fn register_params(upsample_factor: i64, norm: &str) -> PyResult<RegisterParams> {
    let u = py(gpuprep_pipeline::options::upsample_factor(upsample_factor))?;
    py(RegisterParams::new(u, normalization(norm)?))
}

fn shape3(v: &ArrayView3<f32>) -> [usize; 3] {
    let (z, y, x) = v.dim();
    [z, y, x]
}

/// `scipy.ndimage.median_filter(input, size, mode=mode, cval=cval)` of a (z, y, x) volume.
#[pyfunction]
#[pyo3(signature = (input, size, mode, cval, backend))]
pub fn median_filter<'py>(
    py_: Python<'py>,
    input: PyReadonlyArray3<'py, f32>,
    size: [usize; 3],
    mode: &str,
    cval: f32,
    backend: &str,
) -> PyResult<Bound<'py, PyArray3<f32>>> {
    let p = py(MedianParams::new(size, self::mode("mode", mode)?, cval))?;
    let choice = Choice::parse(backend)?;
    let view = input.as_array();
    let out = py_.detach(|| py(with_backend(choice, |b| b.median3d(view, &p))))?;
    Ok(out.into_pyarray(py_))
}

/// `scipy.ndimage.shift(input, shift, order=order, mode=mode, cval=cval)` of a (z, y, x) volume.
#[pyfunction]
#[pyo3(signature = (input, shift, order, mode, cval, backend))]
pub fn shift<'py>(
    py_: Python<'py>,
    input: PyReadonlyArray3<'py, f32>,
    shift: [f64; 3],
    order: u32,
    mode: &str,
    cval: f32,
    backend: &str,
) -> PyResult<Bound<'py, PyArray3<f32>>> {
    if let Some(s) = shift.iter().find(|s| !s.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "shift: {s} is not a finite number of voxels"
        )));
    }
    let p = py(ShiftParams::new(order, self::mode("mode", mode)?, cval))?;
    let choice = Choice::parse(backend)?;
    let view = input.as_array();
    let out = py_.detach(|| py(with_backend(choice, |b| b.shift(view, shift, &p))))?;
    Ok(out.into_pyarray(py_))
}

/// `phase_cross_correlation(reference, moving, upsample_factor, normalization, disambiguate)` of two (z, y, x)
/// volumes: `((dz, dy, dx), error, phasediff, degenerate)`; `degenerate`: the disambiguation asked
/// for found no tile to correlate and kept the shift (scikit-image warns).
#[pyfunction]
#[pyo3(signature = (reference_image, moving_image, upsample_factor, normalization, backend, disambiguate=false))]
pub fn phase_cross_correlation(
    py_: Python<'_>,
    reference_image: PyReadonlyArray3<'_, f32>,
    moving_image: PyReadonlyArray3<'_, f32>,
    upsample_factor: i64,
    normalization: &str,
    backend: &str,
    disambiguate: bool,
) -> PyResult<([f64; 3], f64, f64, bool)> {
    let (r, m) = (reference_image.as_array(), moving_image.as_array());
    if shape3(&r) != shape3(&m) {
        return Err(PyValueError::new_err(format!(
            "moving_image: shape {:?} differs from reference_image's {:?}",
            m.shape(),
            r.shape()
        )));
    }
    let p = register_params(upsample_factor, normalization)?;
    let choice = Choice::parse(backend)?;
    let reg = py_.detach(|| {
        py(with_backend(choice, |b| {
            let handle = b.set_reference(r, &p)?;
            let mut reg = b.register(&handle, m)?;
            let mut degenerate = false;
            if disambiguate {
                match gpuprep_core::register::disambiguate(r, m, reg.shift) {
                    Some(s) => reg.shift = s,
                    None => degenerate = true,
                }
            }
            Ok((reg, degenerate))
        }))
    })?;
    let (reg, degenerate) = reg;
    Ok((reg.shift, reg.error, reg.phasediff, degenerate))
}

/// A (t, z, y, x) series in float32 or float64.
#[derive(FromPyObject)]
pub enum Series<'py> {
    F32(PyReadonlyArray4<'py, f32>),
    F64(PyReadonlyArray4<'py, f64>),
}

pub fn constant_voxels(name: &str) -> PyResult<ConstantVoxels> {
    ConstantVoxels::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "constant_voxels: got {name:?}; expected 'nan' (scipy's) or 'zero'"
            ))
        })
}

/// The z-score over the series' first axis on the CPU, in the series' own precision (float64 data is
/// never rounded to float32, where small variations around a large mean would vanish), with the
/// number of constant voxels.
fn zscore_cpu<T: Sample>(series: ArrayView4<T>, p: &ZscoreParams) -> (Array4<T>, usize) {
    let (t, z, y, x) = series.dim();
    let flat = series.as_standard_layout();
    let flat = flat
        .view()
        .into_shape_with_order((t, z * y * x))
        .expect("standard layout");
    let (out, constant) = zscore_series(flat, p);
    let out = out
        .into_shape_with_order((t, z, y, x))
        .expect("as many elements as the series");
    (out, constant)
}

/// `zscore_cpu` of float32 data through a backend's accumulation (the GPU's).
fn zscore_backend(
    series: ArrayView4<f32>,
    p: &ZscoreParams,
    b: &mut dyn Backend,
) -> Result<(Array4<f32>, usize)> {
    let (_, z, y, x) = series.dim();
    let acc = b.reset_moments([z, y, x])?;
    for v in series.axis_iter(Axis(0)) {
        b.accumulate(&acc, v)?;
    }
    let m = b.moments(&acc, p)?;
    let mut out = Array4::<f32>::zeros(series.raw_dim());
    for (v, mut o) in series.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        o.assign(&b.normalize(v, &m, p)?);
    }
    Ok((out, m.constant_voxels()))
}

/// `scipy.stats.zscore(a, axis=0, ddof=ddof)` of a (t, z, y, x) series, in the series' dtype, and
/// the number of constant voxels.
#[pyfunction]
#[pyo3(signature = (a, ddof, constant_voxels, backend))]
pub fn zscore<'py>(
    py_: Python<'py>,
    a: Series<'py>,
    ddof: u32,
    constant_voxels: &str,
    backend: &str,
) -> PyResult<(Bound<'py, PyAny>, usize)> {
    let p = ZscoreParams {
        ddof,
        constant: self::constant_voxels(constant_voxels)?,
    };
    let choice = Choice::parse(backend)?;
    match a {
        Series::F32(a) => {
            let view = a.as_array();
            let out = py_.detach(|| {
                py(engine::select(choice).and_then(|g| match g {
                    Some(mut g) => zscore_backend(view, &p, g.backend()),
                    None => Ok(zscore_cpu(view, &p)),
                }))
            })?;
            Ok((out.0.into_pyarray(py_).into_any(), out.1))
        }
        Series::F64(a) => {
            if choice == Choice::Gpu {
                return Err(PyNotImplementedError::new_err(
                    "a: the GPU z-score computes in float32; float64 data would lose small variations \
                     around a large mean there. Use backend='cpu' (or 'auto', which keeps float64 on the \
                     CPU), or cast to float32",
                ));
            }
            let view = a.as_array();
            let (out, constant) = py_.detach(|| zscore_cpu(view, &p));
            Ok((out.into_pyarray(py_).into_any(), constant))
        }
    }
}

/// Refuses moments whose shape is not that of the block's volumes.
pub(crate) fn check_moments_shape(
    block: ArrayView4<'_, f32>,
    mean: ArrayView3<'_, f64>,
    std: ArrayView3<'_, f64>,
) -> PyResult<()> {
    let (_, z, y, x) = block.dim();
    if mean.dim() != (z, y, x) || std.dim() != (z, y, x) {
        return Err(PyValueError::new_err(format!(
            "mean, std: shapes {:?} and {:?} differ from the block's volumes {:?}",
            mean.shape(),
            std.shape(),
            [z, y, x]
        )));
    }
    Ok(())
}

/// `normalize` of each volume of `block` on the GPU.
pub(crate) fn normalize_on_gpu(
    gpu: &mut engine::Gpu,
    block: ArrayView4<'_, f32>,
    mean: ArrayView3<'_, f64>,
    std: ArrayView3<'_, f64>,
    p: &ZscoreParams,
) -> gpuprep_core::error::Result<Array4<f32>> {
    let m = CoreMoments::from_f64(mean.to_owned(), std.to_owned());
    let b = gpu.backend();
    let mut out = Array4::<f32>::zeros(block.raw_dim());
    for (v, mut o) in block.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        o.assign(&b.normalize(v, &m, p)?);
    }
    Ok(out)
}

/// `(block - mean) / std` for each volume of a (t, z, y, x) float32 block, with f64 moments (from
/// `Moments.finalize`) and the constant-voxel rule of `zscore`.
#[pyfunction]
#[pyo3(signature = (block, mean, std, constant_voxels, backend))]
pub fn normalize<'py>(
    py_: Python<'py>,
    block: PyReadonlyArray4<'py, f32>,
    mean: PyReadonlyArray3<'py, f64>,
    std: PyReadonlyArray3<'py, f64>,
    constant_voxels: &str,
    backend: &str,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    let p = ZscoreParams {
        ddof: 0,
        constant: self::constant_voxels(constant_voxels)?,
    };
    let choice = Choice::parse(backend)?;
    let (block, mean, std) = (block.as_array(), mean.as_array(), std.as_array());
    check_moments_shape(block.view(), mean.view(), std.view())?;
    let out = py_.detach(|| {
        py((|| match engine::select(choice)? {
            Some(mut gpu) => normalize_on_gpu(&mut gpu, block, mean, std, &p),
            // The CPU backend's `normalize`, a block at a time (the moments read once per block,
            // where they are: a block's worth of them copied per call cost as much as the sweep).
            None => gpuprep_core::zscore::normalize_block_with(block, mean, std, &p),
        })())
    })?;
    Ok(out.into_pyarray(py_))
}
