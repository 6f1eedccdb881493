//! `gpuprep.preprocess`: the whole job of `gpuprep run`, from Python.

use crate::engine::{self, Choice};
use crate::errors::py;
use crate::kernels::{constant_voxels, mode, normalization};
use gpuprep_core::backend::Backend;
use gpuprep_cpu::CpuBackend;
use gpuprep_pipeline::driver::{NonFinite, Progress, RunReport};
use gpuprep_pipeline::RunOptions;
use numpy::IntoPyArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// Progress reported to a Python callable `callback(pass_name, done, total)`, the GIL taken only for
/// the call. A callback that raises stops the run (its exception is re-raised); so does a pending
/// KeyboardInterrupt, checked at each timepoint.
struct Callback {
    callback: Option<Py<PyAny>>,
    pass: &'static str,
    done: usize,
    total: usize,
    error: Option<PyErr>,
}

impl Callback {
    fn call(&mut self) {
        if self.error.is_some() {
            return;
        }
        let (pass, done, total) = (self.pass, self.done, self.total);
        let r = Python::attach(|py_| -> PyResult<()> {
            py_.check_signals()?;
            if let Some(cb) = &self.callback {
                cb.call1(py_, (pass, done, total))?;
            }
            Ok(())
        });
        self.error = r.err();
    }
}

impl Progress for Callback {
    fn start(&mut self, pass: &'static str, timepoints: usize) {
        (self.pass, self.done, self.total) = (pass, 0, timepoints);
        self.call();
    }
    fn advance(&mut self) {
        self.done += 1;
        self.call();
    }
    fn cancelled(&mut self) -> Option<String> {
        self.error
            .as_ref()
            .map(|e| format!("stopped by Python: {e}"))
    }
}

fn nonfinite(name: &str) -> PyResult<NonFinite> {
    NonFinite::ALL
        .into_iter()
        .find(|n| n.name() == name)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "nonfinite: got {name:?}; expected 'error' or 'zero'"
            ))
        })
}

/// The run's report as a dict: output, backend, timepoints, shape, shifts, error, phasediff,
/// replaced non-finite values, constant voxels, stage times and total seconds.
fn report<'py>(py_: Python<'py>, r: RunReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py_);
    d.set_item("output", r.output.clone())?;
    d.set_item("backend", &r.backend)?;
    d.set_item("timepoints", r.timepoints)?;
    d.set_item("shape", (r.shape[0], r.shape[1], r.shape[2]))?;
    let t = r.registrations.len();
    let shifts = ndarray::Array2::from_shape_fn((t, 3), |(i, a)| r.registrations[i].shift[a]);
    d.set_item("shifts", shifts.into_pyarray(py_))?;
    let error: Vec<f64> = r.registrations.iter().map(|g| g.error).collect();
    let phasediff: Vec<f64> = r.registrations.iter().map(|g| g.phasediff).collect();
    d.set_item("error", ndarray::Array1::from(error).into_pyarray(py_))?;
    d.set_item(
        "phasediff",
        ndarray::Array1::from(phasediff).into_pyarray(py_),
    )?;
    d.set_item("nonfinite_replaced", r.nonfinite_replaced)?;
    d.set_item("constant_voxels", r.constant_voxels)?;
    d.set_item("scratch", r.scratch)?;
    d.set_item("inputs", &r.inputs_summary)?;
    let stages = PyDict::new(py_);
    for (name, t) in &r.stage_times {
        stages.set_item(*name, t.as_secs_f64())?;
    }
    d.set_item("stage_seconds", stages)?;
    d.set_item("seconds", r.total.as_secs_f64())?;
    Ok(d)
}

/// `gpuprep run INPUTS -o OUTPUT` with the CLI's flags as keywords (validated as the CLI validates
/// them, by `RunOptions::into_config`).
#[pyfunction]
#[pyo3(signature = (
    inputs, output, *, dataset, axes, format, channel, force, no_median, median_size, median_mode, median_cval,
    no_register, upsample_factor, normalization, reference, reference_mean, register_raw, order,
    shift_mode, shift_cval, no_zscore, ddof, constant_voxels, nonfinite, compression, save,
    memory_budget, backend, progress
))]
#[allow(clippy::too_many_arguments)]
pub fn preprocess<'py>(
    py_: Python<'py>,
    inputs: Vec<String>,
    output: PathBuf,
    dataset: String,
    axes: Option<String>,
    format: Option<String>,
    channel: usize,
    force: bool,
    no_median: bool,
    median_size: [usize; 3],
    median_mode: &str,
    median_cval: f32,
    no_register: bool,
    upsample_factor: i64,
    normalization: &str,
    reference: usize,
    reference_mean: Option<(usize, usize)>,
    register_raw: bool,
    order: u32,
    shift_mode: &str,
    shift_cval: f32,
    no_zscore: bool,
    ddof: u32,
    constant_voxels: &str,
    nonfinite: &str,
    compression: &str,
    save: Vec<String>,
    memory_budget: Option<String>,
    backend: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let options = RunOptions {
        inputs,
        output,
        dataset,
        axes: match axes {
            Some(a) => Some(py(a.parse())?),
            None => None,
        },
        format: match format {
            Some(f) => Some(
                gpuprep_io::source::Format::ALL
                    .into_iter()
                    .find(|x| x.name() == f)
                    .ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "format: got {f:?}; expected one of {}",
                            gpuprep_io::source::Format::ALL.map(|x| x.name()).join(", ")
                        ))
                    })?,
            ),
            None => None,
        },
        channel,
        force,
        no_median,
        median_size,
        median_mode: mode("median_mode", median_mode)?,
        median_cval,
        no_register,
        upsample_factor,
        normalization: self::normalization(normalization)?,
        reference,
        reference_mean,
        register_raw,
        order,
        shift_mode: mode("shift_mode", shift_mode)?,
        shift_cval,
        no_zscore,
        ddof,
        constant_voxels: self::constant_voxels(constant_voxels)?,
        nonfinite: self::nonfinite(nonfinite)?,
        compression: gpuprep_io::Compression::ALL
            .into_iter()
            .find(|c| c.name() == compression)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "compression: got {compression:?}; expected one of {}",
                    gpuprep_io::Compression::ALL.map(|c| c.name()).join(", ")
                ))
            })?,
        save,
        memory_budget: match memory_budget {
            Some(text) => Some(py(gpuprep_pipeline::options::memory_budget(&text))?),
            None => None,
        },
    };
    let cfg = py(options.into_config())?;
    let choice = Choice::parse(backend)?;
    let mut progress = Callback {
        callback: progress,
        pass: "",
        done: 0,
        total: 0,
        error: None,
    };
    let result = py_.detach(|| {
        engine::select(choice).and_then(|gpu| match gpu {
            Some(mut gpu) => {
                gpuprep_pipeline::run_with_progress(&cfg, gpu.backend(), &mut progress)
            }
            None => {
                let mut cpu = CpuBackend::new();
                let b: &mut dyn Backend = &mut cpu;
                gpuprep_pipeline::run_with_progress(&cfg, b, &mut progress)
            }
        })
    });
    if let Some(e) = progress.error.take() {
        return Err(e);
    }
    report(py_, py(result)?)
}
