//! The streaming driver: read → filter → register → shift → accumulate, then normalize and write.
//!
//! Memory is bounded by a few volumes plus the z-score accumulators, whatever the number of timepoints:
//! a reader thread keeps at most `READ_AHEAD` volumes in flight, the first pass writes each finished
//! volume to the output file, and the second pass reads them back one at a time to normalize them.

use crate::backend::{Backend, FramePlan, Moments};
use crate::error::{Error, Result};
use crate::io::{Sink, Source};
use crate::params::{MedianParams, RegisterParams, Registration, ShiftParams, ZscoreParams};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::{Array1, Array2, Array3, Zip};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Volumes read ahead of the compute: enough to hide HDF5 latency, few enough to bound memory.
const READ_AHEAD: usize = 2;

/// Which volume registration aligns to.
#[derive(Clone, Debug, PartialEq)]
pub enum ReferenceSpec {
    /// One timepoint.
    Index(usize),
    /// The mean of timepoints `start..end` (half-open).
    Mean { start: usize, end: usize },
}

/// What to do with NaN and ±Inf in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonFinite {
    /// Stop with an error naming the file and timepoint (the default: scipy's median and FFT give
    /// meaningless results around them).
    Error,
    /// Replace them with 0 before any stage, and report how many there were.
    Zero,
}

/// A validated description of one run, built by the CLI before any data is read.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub inputs: Vec<String>,
    pub dataset: String,
    pub output: PathBuf,
    pub force: bool,
    pub median: Option<MedianParams>,
    pub register: Option<RegisterParams>,
    pub register_on_raw: bool,
    pub reference: ReferenceSpec,
    pub shift: ShiftParams,
    pub zscore: Option<ZscoreParams>,
    pub save_filtered: bool,
    pub save_registered: bool,
    pub nonfinite: NonFinite,
    pub progress: bool,
}

impl RunConfig {
    /// The default job (the notebook's, with the registration bug fixed) from `inputs` to `output`.
    pub fn new(inputs: Vec<String>, output: PathBuf) -> Self {
        RunConfig {
            inputs,
            dataset: "default".into(),
            output,
            force: false,
            median: Some(MedianParams::default()),
            register: Some(RegisterParams::default()),
            register_on_raw: false,
            reference: ReferenceSpec::Index(0),
            shift: ShiftParams::default(),
            zscore: Some(ZscoreParams::default()),
            save_filtered: false,
            save_registered: false,
            nonfinite: NonFinite::Error,
            progress: false,
        }
    }
}

/// What a run did, for the CLI to print.
#[derive(Debug)]
pub struct RunReport {
    pub output: PathBuf,
    pub backend: String,
    pub timepoints: usize,
    pub shape: [usize; 3],
    pub registrations: Vec<Registration>,
    pub nonfinite_replaced: usize,
    pub constant_voxels: usize,
    /// Wall time per stage of the driver (read, first pass, normalize, write).
    pub stage_times: Vec<(&'static str, Duration)>,
    pub total: Duration,
}

#[derive(Default)]
struct Clock(Vec<(&'static str, Duration)>);

impl Clock {
    fn add(&mut self, name: &'static str, d: Duration) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += d,
            None => self.0.push((name, d)),
        }
    }
    fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let r = f();
        self.add(name, t0.elapsed());
        r
    }
}

fn progress_bar(show: bool, len: usize, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} frames, {per_sec}, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Applies the `NonFinite` policy to one volume; returns how many values were replaced.
fn sanitize(vol: &mut Array3<f32>, policy: NonFinite, source: &Source, t: usize) -> Result<usize> {
    let bad = vol.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(0);
    }
    match policy {
        NonFinite::Error => Err(Error::Input {
            path: source.files()[if source.is_4d() { 0 } else { t }].clone(),
            message: format!(
                "dataset {:?}, timepoint {t}: {bad} NaN/Inf values; pass --nonfinite zero to replace them with 0",
                source.dataset()
            ),
        }),
        NonFinite::Zero => {
            vol.mapv_inplace(|v| if v.is_finite() { v } else { 0.0 });
            Ok(bad)
        }
    }
}

fn check_config(cfg: &RunConfig, source: &Source) -> Result<()> {
    let n = source.len();
    if let Some(m) = &cfg.median {
        m.check_shape(source.shape())?;
    }
    if cfg.register.is_some() {
        match cfg.reference {
            ReferenceSpec::Index(i) if i >= n => {
                return Err(Error::InvalidParameter {
                    flag: "--reference".into(),
                    message: format!("timepoint {i} is out of range; the input has {n} timepoints (0..{n})"),
                })
            }
            ReferenceSpec::Mean { start, end } if start >= end || end > n => {
                return Err(Error::InvalidParameter {
                    flag: "--reference-mean".into(),
                    message: format!("range {start}:{end} is empty or past the end; the input has {n} timepoints"),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// The volume registration aligns to: the chosen timepoint or mean, filtered unless registering raw.
fn reference_volume(
    cfg: &RunConfig,
    source: &Source,
    backend: &mut dyn Backend,
) -> Result<Array3<f32>> {
    let (start, end) = match cfg.reference {
        ReferenceSpec::Index(i) => (i, i + 1),
        ReferenceSpec::Mean { start, end } => (start, end),
    };
    let mut sum = Array3::<f64>::zeros(source.shape());
    for t in start..end {
        let mut vol = source.read(t)?;
        sanitize(&mut vol, cfg.nonfinite, source, t)?;
        let vol = match (&cfg.median, cfg.register_on_raw) {
            (Some(m), false) => backend.median3d(vol.view(), m)?,
            _ => vol,
        };
        if end - start == 1 {
            return Ok(vol);
        }
        Zip::from(&mut sum)
            .and(&vol)
            .for_each(|s, &v| *s += v as f64);
    }
    let n = (end - start) as f64;
    Ok(sum.mapv(|s| (s / n) as f32))
}

/// Runs the whole job. The output appears at `cfg.output` only when complete.
pub fn run(cfg: &RunConfig, backend: &mut dyn Backend) -> Result<RunReport> {
    let started = Instant::now();
    let mut clock = Clock::default();
    let source = Source::open(&cfg.inputs, &cfg.dataset)?;
    check_config(cfg, &source)?;
    let (n, shape) = (source.len(), source.shape());

    let mut datasets = vec!["data"];
    if cfg.save_filtered && cfg.median.is_some() {
        datasets.push("filtered");
    }
    if cfg.save_registered {
        datasets.push("registered");
    }
    let mut sink = Sink::create(&cfg.output, cfg.force, source.files(), n, shape, &datasets)?;

    if let Some(reg) = &cfg.register {
        let reference = clock.time("reference", || reference_volume(cfg, &source, backend))?;
        backend.set_reference(reference.view(), reg)?;
    }
    if cfg.zscore.is_some() {
        backend.reset_moments(shape)?;
    }
    let plan = FramePlan {
        median: cfg.median,
        register: cfg.register,
        register_on_raw: cfg.register_on_raw,
        shift: cfg.shift,
        accumulate: cfg.zscore.is_some(),
        keep_filtered: cfg.save_filtered,
    };

    let mut registrations = Vec::with_capacity(if cfg.register.is_some() { n } else { 0 });
    let mut nonfinite_replaced = 0;
    let pb = progress_bar(cfg.progress, n, "pass 1");
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Result<(Array3<f32>, Duration)>>(READ_AHEAD);
        let source = &source;
        scope.spawn(move || {
            for t in 0..n {
                let t0 = Instant::now();
                let r = source.read(t).map(|v| (v, t0.elapsed()));
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    break;
                }
            }
        });
        for t in 0..n {
            let (mut raw, read_time) = rx
                .recv()
                .map_err(|_| Error::Data("the reader thread stopped".into()))??;
            clock.add("read", read_time);
            nonfinite_replaced += sanitize(&mut raw, cfg.nonfinite, source, t)?;
            let out = clock.time("compute", || backend.process_frame(raw.view(), &plan))?;
            clock.time("write", || -> Result<()> {
                sink.write_volume("data", t, out.volume.view())?;
                if let Some(f) = &out.filtered {
                    sink.write_volume("filtered", t, f.view())?;
                }
                if cfg.save_registered {
                    sink.write_volume("registered", t, out.volume.view())?;
                }
                Ok(())
            })?;
            if let Some(r) = out.registration {
                registrations.push(r);
            }
            pb.inc(1);
        }
        Ok(())
    })?;
    pb.finish_and_clear();

    let mut constant_voxels = 0;
    if let Some(z) = &cfg.zscore {
        let moments: Moments = clock.time("normalize", || backend.moments(z))?;
        constant_voxels = moments.constant_voxels;
        let pb = progress_bar(cfg.progress, n, "z-score");
        for t in 0..n {
            let vol = clock.time("write", || sink.read_volume("data", t))?;
            let zs = clock.time("normalize", || backend.normalize(vol.view(), &moments, z))?;
            clock.time("write", || sink.write_volume("data", t, zs.view()))?;
            pb.inc(1);
        }
        pb.finish_and_clear();
        sink.write_array_f32("mean", moments.mean.view().into_dyn())?;
        sink.write_array_f32("std", moments.std.view().into_dyn())?;
    }

    if !registrations.is_empty() {
        let shifts = Array2::from_shape_fn((n, 3), |(t, a)| registrations[t].shift[a]);
        sink.write_array_f64("shifts", shifts.view().into_dyn())?;
        let error = Array1::from_iter(registrations.iter().map(|r| r.error));
        sink.write_array_f64("error", error.view().into_dyn())?;
        let phasediff = Array1::from_iter(registrations.iter().map(|r| r.phasediff));
        sink.write_array_f64("phasediff", phasediff.view().into_dyn())?;
    }
    write_attributes(&mut sink, cfg, &source, &backend.describe())?;
    let output = clock.time("write", || sink.finish())?;
    Ok(RunReport {
        output,
        backend: backend.describe(),
        timepoints: n,
        shape,
        registrations,
        nonfinite_replaced,
        constant_voxels,
        stage_times: clock.0,
        total: started.elapsed(),
    })
}

fn write_attributes(
    sink: &mut Sink,
    cfg: &RunConfig,
    source: &Source,
    backend: &str,
) -> Result<()> {
    sink.set_attr_str("gpuprep_version", env!("CARGO_PKG_VERSION"))?;
    sink.set_attr_str("backend", backend)?;
    let files: Vec<String> = source
        .files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    sink.set_attr_strs("input_files", &files)?;
    sink.set_attr_str("input_dataset", source.dataset())?;
    sink.set_attr_str("input_dtype", &source.dtype().to_string())?;
    sink.set_attr_str("axes", "t,z,y,x")?;
    match &cfg.median {
        Some(m) => {
            sink.set_attr_str(
                "median_size",
                &format!("{},{},{}", m.size[0], m.size[1], m.size[2]),
            )?;
            sink.set_attr_str("median_mode", m.mode.name())?;
            sink.set_attr_f64("median_cval", m.cval as f64)?;
        }
        None => sink.set_attr_str("median_size", "off")?,
    }
    match &cfg.register {
        Some(r) => {
            sink.set_attr_i64("upsample_factor", r.upsample_factor as i64)?;
            sink.set_attr_str("normalization", &r.normalization.to_string())?;
            sink.set_attr_str(
                "register_on",
                if cfg.register_on_raw {
                    "raw"
                } else {
                    "filtered"
                },
            )?;
            sink.set_attr_str(
                "reference",
                &match cfg.reference {
                    ReferenceSpec::Index(i) => format!("timepoint {i}"),
                    ReferenceSpec::Mean { start, end } => {
                        format!("mean of timepoints {start}:{end}")
                    }
                },
            )?;
            sink.set_attr_str(
                "shift_convention",
                "scipy.ndimage.shift(volume[t], shifts[t]) registers volume t onto the reference",
            )?;
            sink.set_attr_i64("shift_order", cfg.shift.order as i64)?;
            sink.set_attr_str("shift_mode", cfg.shift.mode.name())?;
            sink.set_attr_f64("shift_cval", cfg.shift.cval as f64)?;
        }
        None => sink.set_attr_str("registration", "off")?,
    }
    match &cfg.zscore {
        Some(z) => {
            sink.set_attr_i64("zscore_ddof", z.ddof as i64)?;
            sink.set_attr_str(
                "zscore_constant_voxels",
                match z.constant {
                    crate::params::ConstantVoxels::Nan => "nan",
                    crate::params::ConstantVoxels::Zero => "zero",
                },
            )?;
        }
        None => sink.set_attr_str("zscore", "off")?,
    }
    sink.set_attr_str(
        "nonfinite",
        match cfg.nonfinite {
            NonFinite::Error => "error",
            NonFinite::Zero => "zero",
        },
    )?;
    Ok(())
}
