//! `gpuprep.preprocess`: the whole job of `gpuprep run`, from Python.

use crate::engine::{self, Choice};
use crate::errors::py;
use crate::kernels::{constant_voxels, mode, normalization};
use gpuprep_core::backend::Backend;
use gpuprep_cpu::CpuBackend;
use gpuprep_pipeline::driver::{NonFinite, Progress, ReferenceSpec, RunReport};
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

/// The keywords of `gpuprep.preprocess` (each a `gpuprep run` flag), as the Python layer passes them: a
/// dict with every key.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct RunParams {
    dataset: String,
    axes: Option<String>,
    format: Option<String>,
    channel: usize,
    force: bool,
    no_median: bool,
    median_size: [usize; 3],
    median_mode: String,
    median_cval: f32,
    no_register: bool,
    upsample_factor: i64,
    normalization: String,
    reference: usize,
    reference_mean: Option<(usize, usize)>,
    register_raw: bool,
    order: u32,
    shift_mode: String,
    shift_cval: f32,
    no_zscore: bool,
    ddof: u32,
    constant_voxels: String,
    nonfinite: String,
    compression: String,
    shard: bool,
    save: Vec<String>,
    memory_budget: Option<String>,
    max_shift: Option<[f64; 3]>,
    smooth_sigma: [f64; 3],
    reference_iterations: u32,
    reference_top: Option<usize>,
    disambiguate: bool,
    shifts: Option<PathBuf>,
    apply_to_channels: Option<String>,
}

fn named<T: Copy>(
    keyword: &str,
    value: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> PyResult<T> {
    all.iter()
        .copied()
        .find(|&x| name(x) == value)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "{keyword}: got {value:?}; expected one of {}",
                all.iter().map(|&x| name(x)).collect::<Vec<_>>().join(", ")
            ))
        })
}

impl RunParams {
    /// The run's options (names checked here, values by `RunOptions::into_config`).
    fn options(self, inputs: Vec<String>, output: PathBuf) -> PyResult<RunOptions> {
        Ok(RunOptions {
            inputs,
            output,
            dataset: self.dataset,
            axes: match self.axes {
                Some(a) => Some(py(a.parse())?),
                None => None,
            },
            format: match self.format {
                Some(f) => Some(py(f.parse())?),
                None => None,
            },
            channel: self.channel,
            force: self.force,
            no_median: self.no_median,
            median_size: self.median_size,
            median_mode: mode("median_mode", &self.median_mode)?,
            median_cval: self.median_cval,
            no_register: self.no_register,
            upsample_factor: self.upsample_factor,
            normalization: normalization(&self.normalization)?,
            reference: self.reference,
            reference_mean: self.reference_mean,
            register_raw: self.register_raw,
            order: self.order,
            shift_mode: mode("shift_mode", &self.shift_mode)?,
            shift_cval: self.shift_cval,
            no_zscore: self.no_zscore,
            ddof: self.ddof,
            constant_voxels: constant_voxels(&self.constant_voxels)?,
            nonfinite: named(
                "nonfinite",
                &self.nonfinite,
                &NonFinite::ALL,
                NonFinite::name,
            )?,
            compression: py(self.compression.parse())?,
            shard: self.shard,
            save: self.save,
            memory_budget: match self.memory_budget {
                Some(text) => Some(py(gpuprep_pipeline::options::memory_budget(&text))?),
                None => None,
            },
            max_shift: self.max_shift,
            smooth_sigma: self.smooth_sigma,
            reference_iterations: self.reference_iterations,
            reference_top: self.reference_top,
            disambiguate: self.disambiguate,
            shifts: self.shifts,
            apply_to_channels: self.apply_to_channels,
        })
    }
}

/// The run's parameters validated as `gpuprep run` validates them (`RunOptions::into_config`), for a
/// front end that runs the job itself (`gpuprep.dask`): the stages' parameters, `None` where a stage is
/// off, and the reference as ("index", t) or ("mean", start, end).
#[pyfunction]
pub fn validate_run<'py>(py_: Python<'py>, params: RunParams) -> PyResult<Bound<'py, PyDict>> {
    let cfg = py(params.options(Vec::new(), PathBuf::new())?.into_config())?;
    let d = PyDict::new(py_);
    d.set_item(
        "median",
        cfg.median.map(|m| (m.size.to_vec(), m.mode.name(), m.cval)),
    )?;
    d.set_item(
        "register",
        cfg.register
            .map(|r| (r.upsample_factor, r.normalization.name())),
    )?;
    d.set_item("register_raw", cfg.register_on_raw)?;
    match cfg.reference {
        ReferenceSpec::Index(t) => d.set_item("reference", ("index", t, t + 1))?,
        ReferenceSpec::Mean { start, end } => d.set_item("reference", ("mean", start, end))?,
    }
    d.set_item(
        "shift",
        (cfg.shift.order, cfg.shift.mode.name(), cfg.shift.cval),
    )?;
    d.set_item("zscore", cfg.zscore.map(|z| (z.ddof, z.constant.name())))?;
    d.set_item("nonfinite", cfg.nonfinite.name())?;
    d.set_item("compression", cfg.compression.name())?;
    d.set_item("save_filtered", cfg.save_filtered)?;
    d.set_item("save_registered", cfg.save_registered)?;
    d.set_item("shard", cfg.shard)?;
    d.set_item("memory_budget", cfg.memory_budget)?;
    d.set_item(
        "register_options",
        cfg.register.map(|r| (r.max_shift, r.smooth_sigma)),
    )?;
    d.set_item("reference_iterations", cfg.reference_iterations)?;
    d.set_item("reference_top", cfg.reference_top)?;
    d.set_item("disambiguate", cfg.disambiguate)?;
    d.set_item("shifts", cfg.shifts_file.clone())?;
    d.set_item("apply_to_channels", cfg.apply_to_channels.is_some())?;
    Ok(d)
}

/// `gpuprep run INPUTS -o OUTPUT` with the CLI's flags as keywords (`params`, validated as the CLI
/// validates them, by `RunOptions::into_config`).
#[pyfunction]
#[pyo3(signature = (inputs, output, params, backend, progress))]
pub fn preprocess<'py>(
    py_: Python<'py>,
    inputs: Vec<String>,
    output: PathBuf,
    params: RunParams,
    backend: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let options = params.options(inputs, output)?;
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
