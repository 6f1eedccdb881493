//! The streaming driver: read → filter → register → shift → accumulate, then normalize and write.
//!
//! Each pass is a three-stage pipeline: a reader thread, the backend on the calling thread (it never
//! leaves it), and a writer thread, joined by bounded channels, so computing volume t overlaps reading
//! the next ones and writing the previous ones. With the z-score on, pass 1 keeps the pre-z-score volumes
//! in memory when they fit `RunConfig::memory_budget` (by default a quarter of the available memory, so a
//! dataset that fits is written once), else writes them to a raw scratch file beside the output
//! (`--save` datasets go to the output as they come); pass 2 takes them back, normalizes them and writes
//! `data` to the output once; with it off, pass 1 writes `data` directly and there is no pass 2. The
//! scratch is a plain file rather than an HDF5 dataset
//! because the hdf5 crate serialises every library call behind one global lock: HDF5 reads and writes
//! never overlap each other, but plain-file I/O overlaps both. It costs disk: during pass 2 the scratch
//! and the output each hold a copy of `data`.
//!
//! Memory is bounded by a few volumes plus the z-score accumulators, whatever the number of timepoints
//! (pass 1's results kept in memory aside, which the budget bounds):
//! at most `depth` + 1 volumes on the read side (queued and being read), in pass 1 the lookahead of a
//! backend that stages uploads (the GPU backend's `process_stream` takes the next volume from the stream
//! before computing the current one, to upload it during that compute; the CPU backend takes none), the
//! one being computed with its result, and `depth` + 1 results on the
//! write side (queued and being written; a result is two volumes with `--save filtered`), where
//! `depth` (`queue_depth`) is 2 for volumes up to 8 MiB and 1 above. Pass 1 thus holds up to
//! 2·`depth` + 5 volumes (`depth` + 2 more with `--save filtered`), pass 2 up to 2·`depth` + 4.
//! The CPU backend's shift also keeps its f64 intermediate (two f32 volumes' worth) on the computing
//! thread between volumes (`cpu::shift`), rather than faulting in fresh pages for every volume.

use gpuprep_core::backend::{Backend, FrameOutput, FramePlan, Moments};
use gpuprep_core::chunked::ChunkedBlock;
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::{MedianParams, RegisterParams, Registration, ShiftParams, ZscoreParams};
use gpuprep_io::source::Volume;
use gpuprep_io::{fmt_shape, Axes, Compression, Sink, SinkOptions, Source};
use ndarray::{Array1, Array2, Array3, ArrayView3, Zip};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

/// Bytes of volumes queued on each side of the compute (read ahead, or waiting for the writer).
const QUEUE_BYTES: usize = 16 << 20;

/// Volumes queued on each side of the compute: two small ones (enough to hide HDF5 latency and ride out
/// one slow write, a chunk-cache flush), or one when two would pass `QUEUE_BYTES`. One in the queue plus
/// one in the hands of the reader (or writer) still overlaps I/O with the compute.
pub fn queue_depth(shape: [usize; 3]) -> usize {
    let bytes = shape.iter().product::<usize>() * std::mem::size_of::<f32>();
    (QUEUE_BYTES / bytes.max(1)).clamp(1, 2)
}

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

impl NonFinite {
    pub const ALL: [NonFinite; 2] = [NonFinite::Error, NonFinite::Zero];

    /// The name on the command line and in the output's attributes.
    pub fn name(self) -> &'static str {
        match self {
            NonFinite::Error => "error",
            NonFinite::Zero => "zero",
        }
    }
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
    /// What each input's dataset holds (`--axes`); `None` guesses as [`Source::open_with`] does.
    pub axes: Option<Axes>,
    /// Chunk compression of the output (`Compression::Zstd`: Zarr outputs only).
    pub compression: Compression,
    /// Zarr outputs: one shard per time slab of chunks (`--shard`).
    pub shard: bool,
    /// The input format (`--format`); `None` detects it from the paths.
    pub format: Option<gpuprep_io::source::Format>,
    /// The channel read from an input with several (`--channel`).
    pub channel: usize,
    /// Bytes pass 1's results may take in memory for the z-score's second pass (`--memory-budget`);
    /// beyond it they wait in a scratch file. `None`: a quarter of the available memory.
    pub memory_budget: Option<u64>,
    /// `--reference-iterations`: times the reference becomes the mean of its range's frames
    /// registered onto it (`refined_reference`) before the run registers against it.
    pub reference_iterations: u32,
    /// `--reference-top N`: each refinement averages only the N frames of the reference range most
    /// correlated with the current reference after registration (suite2p's template); `None`: all.
    pub reference_top: Option<usize>,
    /// `--disambiguate`: scikit-image's `disambiguate=True` (`gpuprep_core::register::disambiguate`)
    /// on every registration, on the host with the reference and the moving volume.
    pub disambiguate: bool,
    /// `--shifts`: apply the shifts of this file (`crate::shifts::load`) instead of registering.
    pub shifts_file: Option<PathBuf>,
    /// `--apply-to-channels`: the other channels written shifted alike (`crate::channels`).
    pub apply_to_channels: Option<crate::channels::ChannelSet>,
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
            axes: None,
            compression: Compression::None,
            shard: false,
            format: None,
            channel: 0,
            memory_budget: None,
            reference_iterations: 0,
            reference_top: None,
            disambiguate: false,
            shifts_file: None,
            apply_to_channels: None,
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
    /// Timepoints the registration's QC flags (`crate::qc::suspicious`).
    pub suspicious: Vec<usize>,
    pub nonfinite_replaced: usize,
    pub constant_voxels: usize,
    /// Where pass 1's results waited for the z-score: "memory" or "file" (`None` without z-score).
    pub scratch: Option<&'static str>,
    /// Volumes read in place (memory-mapped from their files: `Source::read_in_place`), not copied.
    pub read_in_place: usize,
    /// Output chunks written straight to the device (`O_DIRECT`: `gpuprep_io::direct`).
    pub written_directly: usize,
    /// The inputs read, for the summary: file count, first and last file, axes ([`Source::inputs_summary`]).
    pub inputs_summary: String,
    /// Busy time per stage, summed over volumes: `reference`; `read` (the reader threads: inputs, then the
    /// scratch file); `compute` and `normalize` (the backend, on the calling thread); `write` (the writer
    /// threads: scratch file and output, plus closing the output). The stages run on different threads
    /// at once, so they overlap and may add up to more than `total`.
    pub stage_times: Vec<(&'static str, Duration)>,
    pub total: Duration,
}

impl RunReport {
    /// Timepoints registered with an empty (all-zero) volume or reference: shift 0 and error NaN
    /// (`cpu::register::check_finite`).
    pub fn empty_registrations(&self) -> Vec<usize> {
        (self.registrations.iter().enumerate())
            .filter(|(_, r)| r.error.is_nan())
            .map(|(t, _)| t)
            .collect()
    }
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

/// Where a run reports how far it is: each pass's start (`"pass 1"`, `"z-score"`) with its number of
/// timepoints, one `advance` per timepoint done, its end. The CLI draws bars from it; a library user
/// may log, or ignore it (`()` does).
pub trait Progress {
    fn start(&mut self, pass: &'static str, timepoints: usize) {
        let _ = (pass, timepoints);
    }
    fn advance(&mut self) {}
    fn finish(&mut self) {}
    /// Asked after each `advance`: a reason to stop the run (a library user's cancel, an interrupt
    /// its host noticed), or `None` to go on. The run then stops as on an error, leaving no output.
    fn cancelled(&mut self) -> Option<String> {
        None
    }
}

impl Progress for () {}

/// Applies the `NonFinite` policy to one volume; returns how many values were replaced.
fn sanitize(vol: &mut Array3<f32>, policy: NonFinite, source: &Source, t: usize) -> Result<usize> {
    let bad = nonfinite(vol.view(), policy, source, t)?;
    if bad > 0 {
        vol.mapv_inplace(|v| if v.is_finite() { v } else { 0.0 });
    }
    Ok(bad)
}

/// `sanitize` of a volume that may be read in place: copied only when values must be replaced.
fn sanitize_volume(
    vol: Volume,
    policy: NonFinite,
    source: &Source,
    t: usize,
) -> Result<(Volume, usize)> {
    match nonfinite(vol.view(), policy, source, t)? {
        0 => Ok((vol, 0)),
        _ => {
            let mut owned = vol.into_owned();
            let bad = sanitize(&mut owned, policy, source, t)?;
            Ok((Volume::Owned(owned), bad))
        }
    }
}

/// How many NaN/Inf values `vol` has, to be replaced with 0; an error naming them under
/// `NonFinite::Error`.
fn nonfinite(vol: ArrayView3<f32>, policy: NonFinite, source: &Source, t: usize) -> Result<usize> {
    let bad = match vol.as_slice() {
        // Branch-free over runs short enough for a u32 count: vectorized, at memory speed.
        Some(v) => v
            .chunks(1 << 16)
            .map(|c| c.iter().map(|x| u32::from(!x.is_finite())).sum::<u32>() as usize)
            .sum(),
        None => vol.iter().filter(|v| !v.is_finite()).count(),
    };
    if bad == 0 {
        return Ok(0);
    }
    match policy {
        NonFinite::Error => Err(Error::Input {
            path: source.file_of(t).to_path_buf(),
            message: format!(
                "dataset {:?}, {}: {bad} NaN/Inf values; pass --nonfinite zero to replace them with 0",
                source.dataset(),
                source.timepoint(t)
            ),
        }),
        NonFinite::Zero => Ok(bad),
    }
}

fn check_config(cfg: &RunConfig, source: &Source) -> Result<()> {
    let n = source.len();
    if cfg.register.is_some() {
        match cfg.reference {
            ReferenceSpec::Index(i) if i >= n => {
                return Err(Error::InvalidParameter {
                    name: "reference".into(),
                    message: format!("timepoint {i} is out of range; the input has {n} timepoints (0..{n})"),
                })
            }
            ReferenceSpec::Mean { start, end } if start >= end || end > n => {
                return Err(Error::InvalidParameter {
                    name: "reference range".into(),
                    message: format!("range {start}:{end} is empty or past the end; the input has {n} timepoints"),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// The reference range's timepoints, `start..end`.
fn reference_range(cfg: &RunConfig) -> (usize, usize) {
    match cfg.reference {
        ReferenceSpec::Index(i) => (i, i + 1),
        ReferenceSpec::Mean { start, end } => (start, end),
    }
}

/// Timepoint `t` as the run treats it before registration: read, sanitized, filtered unless
/// registering raw.
fn reference_frame(
    cfg: &RunConfig,
    source: &Source,
    backend: &mut dyn Backend,
    t: usize,
) -> Result<Array3<f32>> {
    let mut vol = source.read(t)?;
    sanitize(&mut vol, cfg.nonfinite, source, t)?;
    match (&cfg.median, cfg.register_on_raw) {
        (Some(m), false) => backend.median3d(vol.view(), m),
        _ => Ok(vol),
    }
}

/// `--reference-iterations`: the mean of the reference range's frames registered onto `current`
/// and shifted (each as the run will treat it: filtered unless registering raw). With
/// `--reference-top N` only the N whose shifted volume correlates best with `current` (Pearson,
/// `qc::correlation`; the earlier frame first among equals, NaN last), as suite2p picks its template:
/// their shifts are kept from a first sweep and the chosen frames read and shifted again, so no more
/// than two volumes are held whatever the range's length.
fn refined_reference(
    cfg: &RunConfig,
    source: &Source,
    backend: &mut dyn Backend,
    current: ArrayView3<f32>,
    reg: &RegisterParams,
) -> Result<Array3<f32>> {
    let (start, end) = reference_range(cfg);
    let handle = backend.set_reference(current, reg)?;
    let mut sum = Array3::<f64>::zeros(source.shape());
    let mut add = |shifted: &Array3<f32>| {
        Zip::from(&mut sum)
            .and(shifted)
            .for_each(|s, &v| *s += v as f64)
    };
    let mut scored = Vec::new();
    for t in start..end {
        let vol = reference_frame(cfg, source, backend, t)?;
        let r = register_frame(cfg, backend, &handle, current, vol.view())?;
        let shifted = backend.shift(vol.view(), r.shift, &cfg.shift)?;
        match cfg.reference_top {
            None => add(&shifted),
            Some(_) => scored.push((t, r.shift, crate::qc::correlation(shifted.view(), current))),
        }
    }
    let n = match cfg.reference_top {
        None => end - start,
        Some(top) => {
            scored.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            scored.sort_by_key(|s| s.2.is_nan());
            for &(t, shift, _) in scored.iter().take(top) {
                let vol = reference_frame(cfg, source, backend, t)?;
                add(&backend.shift(vol.view(), shift, &cfg.shift)?);
            }
            top.min(end - start)
        }
    };
    Ok(sum.mapv(|s| (s / n as f64) as f32))
}

/// The registration of `moving` against the reference `handle` holds (`reference` on the host),
/// disambiguated as scikit-image's `disambiguate=True` when the run asks for it.
fn register_frame(
    cfg: &RunConfig,
    backend: &mut dyn Backend,
    handle: &gpuprep_core::backend::Reference,
    reference: ArrayView3<f32>,
    moving: ArrayView3<f32>,
) -> Result<Registration> {
    let mut r = backend.register(handle, moving)?;
    if cfg.disambiguate {
        // A degenerate case (no tile correlates) keeps the shift, as scikit-image's; so does an axis
        // whose other candidate is past `--max-shift`, which the search promised not to return.
        let chosen = gpuprep_core::register::disambiguate(reference, moving, r.shift);
        let bound = handle.params().max_shift;
        for (a, s) in chosen.unwrap_or(r.shift).into_iter().enumerate() {
            if bound.is_none_or(|m| s.abs() <= m[a] + 1e-9) {
                r.shift[a] = s;
            }
        }
    }
    Ok(r)
}

/// The volume registration aligns to: the chosen timepoint or mean, filtered unless registering raw.
fn reference_volume(
    cfg: &RunConfig,
    source: &Source,
    backend: &mut dyn Backend,
) -> Result<Array3<f32>> {
    let (start, end) = reference_range(cfg);
    let mut sum = Array3::<f64>::zeros(source.shape());
    for t in start..end {
        let vol = reference_frame(cfg, source, backend, t)?;
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
    run_with_progress(cfg, backend, &mut ())
}

/// `run`, reporting each pass's progress to `progress`.
pub fn run_with_progress(
    cfg: &RunConfig,
    backend: &mut dyn Backend,
    progress: &mut dyn Progress,
) -> Result<RunReport> {
    let started = Instant::now();
    let mut clock = Clock::default();
    let opts = gpuprep_io::source::OpenOptions {
        axes: cfg.axes,
        format: cfg.format,
        channel: cfg.channel,
    };
    let source = Source::open_opts(&cfg.inputs, &cfg.dataset, opts)?;
    check_config(cfg, &source)?;
    // Given shifts replace the registration: loaded (and their count checked) before any work.
    let given = match (&cfg.shifts_file, &cfg.register) {
        (Some(path), Some(_)) => Some(crate::shifts::load(path, source.len())?),
        _ => None,
    };
    let compute = crate::memory::Compute::of(backend);
    // Pass 1's results stay in memory for pass 2 when they fit the budget and the run still fits the
    // machine with them; else they wait in a scratch file, and the memory check is the streaming one.
    let in_memory = cfg.zscore.is_some()
        && crate::memory::results_fit_budget(cfg, source.len(), source.shape())?
        && crate::memory::check_run(cfg, &source, compute, true).is_ok();
    crate::memory::check_run(cfg, &source, compute, in_memory)?;
    let (n, shape) = (source.len(), source.shape());

    let mut datasets = vec!["data"];
    if cfg.save_filtered && cfg.median.is_some() {
        datasets.push("filtered");
    }
    if cfg.save_registered {
        datasets.push("registered");
    }
    let mut sink = Sink::create_with(
        &cfg.output,
        cfg.force,
        source.files(),
        n,
        shape,
        &datasets,
        SinkOptions {
            compression: cfg.compression,
            shard: cfg.shard,
            // Pass 2 then writes /data block by block (below).
            blocks: in_memory,
        },
    )?;
    if let Some(v) = source.voxel_size() {
        sink.set_voxel_size(&v)?;
    }

    // The reference on the host, for the QC correlations.
    let mut reference_host: Option<Array3<f32>> = None;
    let reference = match &cfg.register {
        Some(_) if given.is_some() => None,
        Some(reg) => {
            let mut reference =
                clock.time("reference", || reference_volume(cfg, &source, backend))?;
            for _ in 0..cfg.reference_iterations {
                reference = clock.time("reference", || {
                    refined_reference(cfg, &source, backend, reference.view(), reg)
                })?;
            }
            let handle = backend.set_reference(reference.view(), reg)?;
            if cfg.reference_iterations > 0 {
                sink.write_array_f32("reference", reference.view().into_dyn())?;
            }
            reference_host = Some(reference);
            Some(handle)
        }
        None => None,
    };
    // Results kept in memory are z-scored there after pass 1, in cache-sized runs of voxels over all
    // timepoints (`zscore_volumes_in_place`, the accumulator's numbers bit for bit): the backend then
    // accumulates nothing, sparing the f64 moments' round trip through memory per volume.
    let accumulation = match cfg.zscore {
        Some(_) if !in_memory => Some(backend.reset_moments(shape)?),
        _ => None,
    };
    // Registered or given shifts: the volumes before and after the shift are compared (QC).
    let shifting = reference.is_some() || given.is_some();
    let plan = FramePlan {
        median: cfg.median,
        register: reference,
        register_on_raw: cfg.register_on_raw,
        shift: cfg.shift,
        accumulate: accumulation,
        // The filtered volume is the one shifted: QC correlates it with the reference before the shift
        // and projects it.
        keep_filtered: cfg.save_filtered || (shifting && cfg.median.is_some()),
    };
    // Without a median the raw volume is the one shifted: kept for QC until its result comes out.
    let raw_queue = std::cell::RefCell::new(std::collections::VecDeque::new());
    let keep_raw = shifting && cfg.median.is_none();
    let correlations = std::sync::Mutex::new(vec![(f64::NAN, f64::NAN); n]);
    let projections = std::sync::Mutex::new(crate::qc::Projections::new(shape));

    // With the z-score on, the first pass's results wait in the scratch file, not in the output.
    let scratch = match cfg.zscore {
        Some(_) if in_memory => Some(Scratch::Memory(MemoryScratch::new(n, shape))),
        Some(_) => Some(Scratch::File(FileScratch::create(
            sink.temp_dir(),
            sink.path(),
            shape,
        )?)),
        None => None,
    };

    let depth = queue_depth(shape);
    let mut registrations = Vec::with_capacity(if cfg.register.is_some() { n } else { 0 });
    let mut nonfinite_replaced = 0;
    // Only the z-score, and its block-wise sweep: pass 1's results are the inputs themselves, so
    // they are read in place where the format allows (`Source::read_in_place`: no copy, no fresh
    // memory) and the backend has nothing to do.
    let mut unchanged: Option<Vec<Volume>> = None;
    let mut read_in_place = 0;
    progress.start("pass 1", n);
    if cfg.median.is_none()
        && cfg.register.is_none()
        && !cfg.save_registered
        && in_memory
        && sink.block_chunk().is_some()
    {
        let kept = std::thread::scope(|scope| -> Result<Vec<Volume>> {
            let source = &source;
            // Sanitized on the reader threads: both cores scan.
            let rx = spawn_reader(scope, n, depth, |t| {
                sanitize_volume(source.read_in_place(t)?, cfg.nonfinite, source, t)
            });
            let mut kept = Vec::with_capacity(n);
            for _ in 0..n {
                let (vol, bad) = receive(&rx, &mut clock)?;
                nonfinite_replaced += bad;
                read_in_place += usize::from(!matches!(vol, Volume::Owned(_)));
                kept.push(vol);
                progress.advance();
                if let Some(why) = progress.cancelled() {
                    return Err(Error::Data(why));
                }
            }
            Ok(kept)
        })?;
        unchanged = Some(kept);
    } else {
        std::thread::scope(|scope| -> Result<()> {
            let source = &source;
            let rx = spawn_reader(scope, n, depth, |t| source.read(t));
            let (sink, scratch) = (&mut sink, scratch.as_ref());
            let (reference_host, correlations) = (reference_host.as_ref(), &correlations);
            let projections = &projections;
            type Message = (usize, Array3<f32>, Option<Array3<f32>>, Option<Array3<f32>>);
            let mut writer = WriteBehind::spawn(
                scope,
                depth,
                move |(t, volume, filtered, before): Message| {
                    if let (Some(r), Some(b)) =
                        (reference_host, before.as_ref().or(filtered.as_ref()))
                    {
                        let c = (
                            crate::qc::correlation(b.view(), r.view()),
                            crate::qc::correlation(volume.view(), r.view()),
                        );
                        correlations.lock().unwrap_or_else(|p| p.into_inner())[t] = c;
                    }
                    if let Some(b) = before.as_ref().or(filtered.as_ref()).filter(|_| shifting) {
                        let mut p = projections.lock().unwrap_or_else(|p| p.into_inner());
                        p.add(b.view(), volume.view());
                    }
                    if let Some(f) = filtered.as_ref().filter(|_| cfg.save_filtered) {
                        sink.write_volume("filtered", t, f.view())?;
                    }
                    if cfg.save_registered {
                        sink.write_volume("registered", t, volume.view())?;
                    }
                    match scratch {
                        Some(s) => s.write(t, volume),
                        None => sink.write_volume("data", t, volume.view()),
                    }
                },
            );
            // The backend takes volumes from `frames` as it needs them (the GPU backend one ahead, to
            // stage its upload) and hands each result to `emit` in order.
            let mut frames = Frames {
                rx: &rx,
                next_t: 0,
                n,
                cfg,
                source,
                clock: &mut clock,
                nonfinite_replaced: &mut nonfinite_replaced,
                failed: false,
                busy: Duration::ZERO,
                keep_raw: keep_raw.then_some(&raw_queue),
            };
            let (mut emitted, mut emit_failed, mut emit_busy) = (0usize, false, Duration::ZERO);
            let mut emit = |out: FrameOutput| -> Result<()> {
                let t0 = Instant::now();
                let FrameOutput {
                    volume,
                    filtered,
                    registration,
                } = out;
                registrations.extend(registration);
                let before = raw_queue.borrow_mut().pop_front();
                let sent = writer.send((emitted, volume, filtered, before));
                emit_failed = sent.is_err();
                emit_busy += t0.elapsed();
                sent?;
                emitted += 1;
                progress.advance();
                if let Some(why) = progress.cancelled() {
                    emit_failed = true;
                    return Err(Error::Data(why));
                }
                Ok(())
            };
            let t0 = Instant::now();
            let streamed = match (&given, reference_host.filter(|_| cfg.disambiguate)) {
                (None, None) => backend.process_stream(&plan, &mut frames, &mut emit),
                (given, disambiguate) => (|| {
                    for (t, raw) in (&mut frames).enumerate() {
                        let raw = raw?;
                        let how = match (given, disambiguate) {
                            (Some(shifts), _) => FrameShift::Given(shifts[t]),
                            (None, reference) => FrameShift::Disambiguated(cfg, reference),
                        };
                        let out = frame_with_shift(backend, raw.view(), &plan, how)?;
                        drop(raw);
                        emit(out)?;
                    }
                    Ok(())
                })(),
            };
            let elapsed = t0.elapsed();
            let (read_failed, read_busy) = (frames.failed, frames.busy);
            clock.add("compute", elapsed.saturating_sub(read_busy + emit_busy));
            match streamed {
                Ok(()) if emitted == n => {}
                Ok(()) => {
                    return Err(Error::Data(format!(
                        "the backend returned {emitted} of {n} volumes"
                    )))
                }
                // Reading, sanitizing and writing name their own file and timepoint.
                Err(e) if read_failed || emit_failed => return Err(e),
                // The backend sees volumes, not timepoints: a data error (e.g. a registration that is
                // not finite) gets its timepoint here. Results come out in order, so the volume being
                // computed is the first not yet emitted.
                Err(Error::Data(m)) => {
                    return Err(Error::Data(format!("timepoint {emitted}: {m}")))
                }
                Err(e) => return Err(e),
            }
            clock.add("write", writer.finish()?);
            Ok(())
        })?;
    }
    progress.finish();

    let mut constant_voxels = 0;
    if let (Some(z), Some(Scratch::Memory(kept)), Some(chunk)) =
        (&cfg.zscore, &scratch, sink.block_chunk())
    {
        // Block by block of output chunks, each stored by the writer thread while the next is
        // computed: the z-score and the writing overlap instead of following each other. The
        // z-scores are computed into the chunks the output stores, so the writer stores them as
        // they are.
        let volumes = match unchanged.take() {
            Some(v) => v,
            None => kept.take_all()?.into_iter().map(Volume::Owned).collect(),
        };
        let blocks = shape[0].div_ceil(chunk[1]) * shape[1].div_ceil(chunk[2]);
        progress.start("z-score", n);
        let (mut done, mut shown) = (0, 0);
        let moments = std::thread::scope(|scope| -> Result<Moments> {
            let sink = &mut sink;
            // Written blocks come back to be filled again (fresh memory costs a fault per page).
            let (spare_tx, spares) = mpsc::channel::<ChunkedBlock<f32>>();
            let mut writer = WriteBehind::spawn(scope, 1, move |block: ChunkedBlock<f32>| {
                sink.write_block("data", &block)?;
                let _ = spare_tx.send(block);
                Ok(())
            });
            let t0 = Instant::now();
            let views: Vec<_> = volumes.iter().map(|v| v.view()).collect();
            let moments = gpuprep_core::zscore::zscore_volumes_by_block(
                &views,
                z,
                chunk,
                || spares.try_recv().ok(),
                |block| {
                    writer.send(block)?;
                    done += 1;
                    // The bar counts timepoints' worth of blocks.
                    while shown < done * n / blocks {
                        progress.advance();
                        shown += 1;
                    }
                    match progress.cancelled() {
                        Some(why) => Err(Error::Data(why)),
                        None => Ok(()),
                    }
                },
            )?;
            clock.add("normalize", t0.elapsed());
            clock.add("write", writer.finish()?);
            Ok(moments)
        })?;
        drop(volumes);
        progress.finish();
        constant_voxels = moments.constant_voxels();
        sink.write_array_f32("mean", moments.mean().view().into_dyn())?;
        sink.write_array_f32("std", moments.std().view().into_dyn())?;
    } else if let (Some(z), Some(Scratch::Memory(kept))) = (&cfg.zscore, &scratch) {
        let mut volumes = kept.take_all()?;
        let moments = clock.time("normalize", || {
            gpuprep_core::zscore::zscore_volumes_in_place(&mut volumes, z)
        })?;
        constant_voxels = moments.constant_voxels();
        progress.start("z-score", n);
        for (t, zs) in volumes.into_iter().enumerate() {
            clock.time("write", || sink.write_volume("data", t, zs.view()))?;
            progress.advance();
            if let Some(why) = progress.cancelled() {
                return Err(Error::Data(why));
            }
        }
        progress.finish();
        sink.write_array_f32("mean", moments.mean().view().into_dyn())?;
        sink.write_array_f32("std", moments.std().view().into_dyn())?;
    } else if let (Some(z), Some(scratch), Some(acc)) = (&cfg.zscore, &scratch, &accumulation) {
        let moments: Moments = clock.time("normalize", || backend.moments(acc, z))?;
        constant_voxels = moments.constant_voxels();
        progress.start("z-score", n);
        std::thread::scope(|scope| -> Result<()> {
            let rx = spawn_reader(scope, n, depth, |t| scratch.read(t));
            let sink = &mut sink;
            let mut writer =
                WriteBehind::spawn(scope, depth, move |(t, zs): (usize, Array3<f32>)| {
                    sink.write_volume("data", t, zs.view())
                });
            for t in 0..n {
                let vol = receive(&rx, &mut clock)?;
                let zs = clock.time("normalize", || backend.normalize(vol.view(), &moments, z))?;
                writer.send((t, zs))?;
                progress.advance();
                if let Some(why) = progress.cancelled() {
                    return Err(Error::Data(why));
                }
            }
            clock.add("write", writer.finish()?);
            Ok(())
        })?;
        progress.finish();
        sink.write_array_f32("mean", moments.mean().view().into_dyn())?;
        sink.write_array_f32("std", moments.std().view().into_dyn())?;
    }
    let scratch_place = scratch.as_ref().map(Scratch::place);
    // Deleted now rather than at the end of the function so the scratch's disk space is free before the
    // output is flushed.
    drop(scratch);

    if let Some(shifts) = &given {
        let shifts = Array2::from_shape_fn((n, 3), |(t, a)| shifts[t][a]);
        sink.write_array_f64("shifts", shifts.view().into_dyn())?;
    }
    if !registrations.is_empty() {
        let shifts = Array2::from_shape_fn((n, 3), |(t, a)| registrations[t].shift[a]);
        sink.write_array_f64("shifts", shifts.view().into_dyn())?;
        let error = Array1::from_iter(registrations.iter().map(|r| r.error));
        sink.write_array_f64("error", error.view().into_dyn())?;
        let phasediff = Array1::from_iter(registrations.iter().map(|r| r.phasediff));
        sink.write_array_f64("phasediff", phasediff.view().into_dyn())?;
    }
    let shifts_written: Option<Vec<[f64; 3]>> = match &given {
        Some(s) => Some(s.clone()),
        None if !registrations.is_empty() => Some(registrations.iter().map(|r| r.shift).collect()),
        None => None,
    };
    if let Some(shifts) = &shifts_written {
        let fd = crate::qc::framewise_displacement(shifts, [1.0; 3]);
        sink.write_array_f64("framewise_displacement", Array1::from(fd).view().into_dyn())?;
        if let Some(um) = source
            .voxel_size()
            .as_ref()
            .and_then(crate::qc::micrometres)
        {
            let fd = crate::qc::framewise_displacement(shifts, um);
            sink.write_array_f64(
                "framewise_displacement_um",
                Array1::from(fd).view().into_dyn(),
            )?;
        }
    }
    let mut suspicious = Vec::new();
    if !registrations.is_empty() {
        let c = correlations.into_inner().unwrap_or_else(|p| p.into_inner());
        let before = Array1::from_iter(c.iter().map(|c| c.0));
        let after: Vec<f64> = c.iter().map(|c| c.1).collect();
        sink.write_array_f64("correlation_before", before.view().into_dyn())?;
        sink.write_array_f64(
            "correlation_after",
            Array1::from(after.clone()).view().into_dyn(),
        )?;
        let max_shift = cfg.register.and_then(|r| r.max_shift);
        let flags = crate::qc::suspicious(&registrations, max_shift, &after);
        let flag_values = Array1::from_iter(flags.iter().map(|&f| f as u8 as f64));
        sink.write_array_f64("suspicious", flag_values.view().into_dyn())?;
        suspicious = (0..n).filter(|&t| flags[t]).collect();
    }
    if shifting {
        let p = projections.into_inner().unwrap_or_else(|p| p.into_inner());
        for (axis, name) in ["projection_z", "projection_y", "projection_x"]
            .into_iter()
            .enumerate()
        {
            sink.write_array_f32(name, p.planes(axis).view().into_dyn())?;
        }
        sink.set_attr_strs(
            "projection_planes",
            &crate::qc::PROJECTION_PLANES.map(String::from),
        )?;
    }
    write_attributes(&mut sink, cfg, &source, &backend.describe())?;
    let written_directly = sink.written_directly();
    let output = clock.time("write", || sink.finish())?;
    Ok(RunReport {
        output,
        backend: backend.describe(),
        timepoints: n,
        shape,
        registrations,
        suspicious,
        nonfinite_replaced,
        constant_voxels,
        scratch: scratch_place,
        read_in_place,
        written_directly,
        inputs_summary: source.inputs_summary(),
        stage_times: clock.0,
        total: started.elapsed(),
    })
}

/// Where `frame_with_shift` takes its shift from.
enum FrameShift<'a> {
    /// `--shifts`: this one, no registration.
    Given([f64; 3]),
    /// `--disambiguate`: the plan's registration, disambiguated on the host against this reference.
    Disambiguated(&'a RunConfig, Option<&'a Array3<f32>>),
}

/// The first pass for one timepoint stage by stage on the host's side, as `frame_by_stage`, with the
/// shift given (`--shifts`, no registration) or the registration disambiguated between registering
/// and shifting (`--disambiguate`, which a fused device route could not stop for).
fn frame_with_shift(
    backend: &mut dyn Backend,
    raw: ArrayView3<f32>,
    plan: &FramePlan,
    how: FrameShift<'_>,
) -> Result<FrameOutput> {
    let filtered = match &plan.median {
        Some(m) => Some(backend.median3d(raw, m)?),
        None => None,
    };
    let current = filtered.as_ref().map(|f| f.view()).unwrap_or(raw);
    let (shift, registration) = match (how, &plan.register) {
        (FrameShift::Given(shift), _) => (shift, None),
        (FrameShift::Disambiguated(cfg, Some(reference)), Some(handle)) => {
            let moving = if plan.register_on_raw { raw } else { current };
            let r = register_frame(cfg, backend, handle, reference.view(), moving)?;
            (r.shift, Some(r))
        }
        (FrameShift::Disambiguated(..), _) => {
            return Err(Error::Data(
                "disambiguation needs the run's reference and registration".into(),
            ))
        }
    };
    let volume = backend.shift(current, shift, &plan.shift)?;
    if let Some(acc) = &plan.accumulate {
        backend.accumulate(acc, volume.view())?;
    }
    Ok(FrameOutput {
        volume,
        filtered: if plan.keep_filtered { filtered } else { None },
        registration,
    })
}

/// Pass 1's volumes as the backend takes them (`Backend::process_stream`): timepoint t from the
/// reader thread, its read time on the clock, sanitized by the `NonFinite` policy. Ends after `n`.
struct Frames<'a> {
    rx: &'a Readers<Array3<f32>>,
    next_t: usize,
    n: usize,
    cfg: &'a RunConfig,
    source: &'a Source,
    clock: &'a mut Clock,
    nonfinite_replaced: &'a mut usize,
    /// Whether an item was an error (then the stream's error is this one, unchanged).
    failed: bool,
    /// Wall time spent in `next` (waiting for the reader, sanitizing): not the backend's compute.
    busy: Duration,
    /// Where each raw volume is also kept (for QC) until its result comes out, when asked.
    keep_raw: Option<&'a std::cell::RefCell<std::collections::VecDeque<Array3<f32>>>>,
}

impl Iterator for Frames<'_> {
    type Item = Result<Array3<f32>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_t == self.n || self.failed {
            return None;
        }
        let t0 = Instant::now();
        let t = self.next_t;
        self.next_t += 1;
        let item = receive(self.rx, self.clock).and_then(|mut raw| {
            *self.nonfinite_replaced += sanitize(&mut raw, self.cfg.nonfinite, self.source, t)?;
            if let Some(q) = self.keep_raw {
                q.borrow_mut().push_back(raw.clone());
            }
            Ok(raw)
        });
        self.failed = item.is_err();
        self.busy += t0.elapsed();
        Some(item)
    }
}

/// Threads reading volumes: two, so that reading from the page cache (a copy per volume, CPU-bound)
/// uses both cores of a small machine while nothing else runs (the z-score-only run), and one
/// volume's read latency hides behind the other's.
const READERS: usize = 2;

/// Items `0..n` read on `READERS` scoped threads (item t on thread t mod `READERS`), handed out in
/// order by `receive`.
struct Readers<T> {
    rx: Vec<Receiver<Result<(T, Duration)>>>,
    next: std::cell::Cell<usize>,
}

/// Reads items `0..n` on scoped threads, together at most `depth + 1` items ahead of the consumer
/// (queued or being read, as one thread with a queue of `depth` would), each arriving with the time
/// its read took. A thread stops after sending its first error, or when the receiver is dropped (its
/// blocked `send` then fails), so an early return on the consuming side never leaves one hanging.
fn spawn_reader<'scope, T: Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    n: usize,
    depth: usize,
    read: impl Fn(usize) -> Result<T> + Send + Sync + 'scope,
) -> Readers<T> {
    let threads = READERS.min(n).max(1);
    // Each thread holds the item it reads plus `queue` sent ones.
    let queue = ((depth + 1) / threads).saturating_sub(1);
    let read = std::sync::Arc::new(read);
    let rx = (0..threads)
        .map(|first| {
            let (tx, rx) = mpsc::sync_channel(queue);
            let read = read.clone();
            scope.spawn(move || {
                for t in (first..n).step_by(threads) {
                    let t0 = Instant::now();
                    let r = read(t).map(|v| (v, t0.elapsed()));
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            });
            rx
        })
        .collect();
    Readers {
        rx,
        next: std::cell::Cell::new(0),
    }
}

/// The next item from the `spawn_reader` threads, its read time added to `clock`.
fn receive<T>(readers: &Readers<T>, clock: &mut Clock) -> Result<T> {
    let t = readers.next.get();
    readers.next.set(t + 1);
    let (item, read_time) = readers.rx[t % readers.rx.len()]
        .recv()
        .map_err(|_| Error::Data("the reader thread stopped".into()))??;
    clock.add("read", read_time);
    Ok(item)
}

/// The write side of a pass: a scoped thread applying `write` to each message in order, at most
/// `depth` messages behind the sender.
///
/// Dropping it without `finish` (an early return on the sending side) closes the queue: the thread writes
/// what is queued and ends, and the scope joins it.
struct WriteBehind<'scope, M> {
    tx: Option<SyncSender<M>>,
    handle: Option<ScopedJoinHandle<'scope, Result<Duration>>>,
}

impl<'scope, M: Send + 'scope> WriteBehind<'scope, M> {
    fn spawn(
        scope: &'scope Scope<'scope, '_>,
        depth: usize,
        mut write: impl FnMut(M) -> Result<()> + Send + 'scope,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel::<M>(depth);
        let handle = scope.spawn(move || {
            let mut busy = Duration::ZERO;
            // Returning on an error drops `rx`, which turns the sender's next (or blocked) `send` into a
            // failure instead of a wait on a queue nobody drains.
            for msg in rx {
                let t0 = Instant::now();
                write(msg)?;
                busy += t0.elapsed();
            }
            Ok(busy)
        });
        WriteBehind {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Queues `msg`, waiting while the queue is full; if the writer has stopped, returns its error.
    fn send(&mut self, msg: M) -> Result<()> {
        if let Some(tx) = &self.tx {
            if tx.send(msg).is_ok() {
                return Ok(());
            }
        }
        self.tx = None;
        Err(self
            .join()
            .err()
            .unwrap_or_else(|| Error::Data("the writer thread stopped early".into())))
    }

    /// Closes the queue and waits for everything in it to be written; returns the writer's busy time.
    fn finish(mut self) -> Result<Duration> {
        self.tx = None;
        self.join()
    }

    fn join(&mut self) -> Result<Duration> {
        match self.handle.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => Err(Error::Data("the writer thread has already ended".into())),
        }
    }
}

/// The first pass's volumes while the z-score statistics are not yet known: raw little-endian f32, volume
/// t at byte `t * volume_bytes`, in a temporary file in the output's private temporary directory
/// (`Sink::temp_dir`). `NamedTempFile` deletes it when dropped, so it disappears whether the run succeeds,
/// fails or panics; an interrupt removes the whole directory.
/// Where pass 1's results wait for the z-score's second pass.
enum Scratch {
    /// In memory, when they fit `RunConfig::memory_budget`: the data is written once, to the output.
    Memory(MemoryScratch),
    /// A raw file beside the output.
    File(FileScratch),
}

impl Scratch {
    fn write(&self, t: usize, vol: Array3<f32>) -> Result<()> {
        match self {
            Scratch::Memory(m) => m.write(t, vol),
            Scratch::File(f) => f.write(t, vol.view()),
        }
    }

    fn read(&self, t: usize) -> Result<Array3<f32>> {
        match self {
            Scratch::Memory(m) => m.take(t),
            Scratch::File(f) => f.read(t),
        }
    }

    fn place(&self) -> &'static str {
        match self {
            Scratch::Memory(_) => "memory",
            Scratch::File(_) => "file",
        }
    }
}

/// Pass 1's volumes held until pass 2 takes each (and frees it).
struct MemoryScratch {
    volumes: std::sync::Mutex<Vec<Option<Array3<f32>>>>,
    shape: [usize; 3],
}

impl MemoryScratch {
    fn new(n: usize, shape: [usize; 3]) -> MemoryScratch {
        MemoryScratch {
            volumes: std::sync::Mutex::new(vec![None; n]),
            shape,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Option<Array3<f32>>>> {
        // A panic elsewhere while holding the lock leaves the list itself intact.
        self.volumes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, t: usize, vol: Array3<f32>) -> Result<()> {
        if vol.shape() != self.shape {
            return Err(Error::Data(format!(
                "volume {t} has shape {}, expected {}",
                fmt_shape(vol.shape()),
                fmt_shape(&self.shape)
            )));
        }
        match self.slots().get_mut(t) {
            Some(slot) => {
                *slot = Some(vol);
                Ok(())
            }
            None => Err(Error::Data(format!("timepoint {t} is past the series"))),
        }
    }

    /// Every volume, in time order; errors if one was not kept.
    fn take_all(&self) -> Result<Vec<Array3<f32>>> {
        std::mem::take(&mut *self.slots())
            .into_iter()
            .enumerate()
            .map(|(t, v)| {
                v.ok_or_else(|| Error::Data(format!("timepoint {t} was not kept by pass 1")))
            })
            .collect()
    }

    fn take(&self, t: usize) -> Result<Array3<f32>> {
        self.slots()
            .get_mut(t)
            .and_then(Option::take)
            .ok_or_else(|| Error::Data(format!("timepoint {t} was not kept by pass 1")))
    }
}

struct FileScratch {
    file: tempfile::NamedTempFile,
    shape: [usize; 3],
    /// The output path, which errors name: the scratch file's own path means nothing to the user.
    output: PathBuf,
}

impl FileScratch {
    fn create(dir: &Path, output: &Path, shape: [usize; 3]) -> Result<FileScratch> {
        let file = tempfile::Builder::new()
            .prefix("scratch")
            .tempfile_in(dir)
            .map_err(|e| Error::Output {
                path: output.to_path_buf(),
                message: format!(
                    "cannot create the z-score scratch file in {} ({e})",
                    dir.display()
                ),
            })?;
        Ok(FileScratch {
            file,
            shape,
            output: output.to_path_buf(),
        })
    }

    fn offset(&self, t: usize) -> u64 {
        (t * self.shape.iter().product::<usize>() * size_of::<f32>()) as u64
    }

    fn err(&self, what: String, e: std::io::Error) -> Error {
        let text = e.to_string();
        let text = text.split(" (os error ").next().unwrap_or_default();
        Error::Output {
            path: self.output.clone(),
            message: format!("{text} while {what} of the z-score scratch file"),
        }
    }

    /// Writes volume `t`. Reads and writes are positioned (`pwrite`/`pread`), never through the
    /// file's shared position: pass 2 reads the scratch on several threads at once, and a seek
    /// followed by a read on one thread while another seeks would read the wrong volume.
    fn write(&self, t: usize, vol: ArrayView3<f32>) -> Result<()> {
        if vol.shape() != self.shape {
            return Err(Error::Data(format!(
                "volume {t} has shape {}, expected {}",
                fmt_shape(vol.shape()),
                fmt_shape(&self.shape)
            )));
        }
        let vol = vol.as_standard_layout();
        let values = vol.as_slice().expect("standard layout is contiguous");
        let f: &File = self.file.as_file();
        let written = if cfg!(target_endian = "little") {
            write_all_at(f, bytemuck::cast_slice(values), self.offset(t))
        } else {
            let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            write_all_at(f, &le, self.offset(t))
        };
        written.map_err(|e| self.err(format!("writing timepoint {t}"), e))
    }

    /// Reads volume `t` back.
    fn read(&self, t: usize) -> Result<Array3<f32>> {
        let mut vol = Array3::<f32>::zeros(self.shape);
        let values = vol.as_slice_mut().expect("a new array is contiguous");
        let f: &File = self.file.as_file();
        read_exact_at(f, bytemuck::cast_slice_mut(values), self.offset(t))
            .map_err(|e| self.err(format!("reading timepoint {t}"), e))?;
        if cfg!(target_endian = "big") {
            values
                .iter_mut()
                .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
        }
        Ok(vol)
    }
}

/// `buf` written at byte `at` of `f` without moving (or using) the file's position.
fn write_all_at(f: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    return std::os::unix::fs::FileExt::write_all_at(f, buf, at);
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let (mut buf, mut at) = (buf, at);
        while !buf.is_empty() {
            match f.seek_write(buf, at)? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => (buf, at) = (&buf[n..], at + n as u64),
            }
        }
        Ok(())
    }
}

/// `buf` filled from byte `at` of `f` without moving (or using) the file's position.
fn read_exact_at(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    return std::os::unix::fs::FileExt::read_exact_at(f, buf, at);
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let (mut buf, mut at) = (buf, at);
        while !buf.is_empty() {
            match f.seek_read(buf, at)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => (buf, at) = (&mut buf[n..], at + n as u64),
            }
        }
        Ok(())
    }
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
            sink.set_attr_str("normalization", r.normalization.name())?;
            let axes3 = |v: [f64; 3]| format!("{},{},{}", v[0], v[1], v[2]);
            sink.set_attr_str("max_shift", &r.max_shift.map_or("off".into(), axes3))?;
            sink.set_attr_str("smooth_sigma", &axes3(r.smooth_sigma))?;
            sink.set_attr_i64("reference_iterations", cfg.reference_iterations as i64)?;
            sink.set_attr_i64("reference_top", cfg.reference_top.unwrap_or(0) as i64)?;
            sink.set_attr_i64("disambiguate", cfg.disambiguate as i64)?;
            sink.set_attr_str(
                "register_on",
                if cfg.register_on_raw {
                    "raw"
                } else {
                    "filtered"
                },
            )?;
            if let Some(path) = &cfg.shifts_file {
                sink.set_attr_str("shifts_from", &path.display().to_string())?;
            }
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
            sink.set_attr_str("zscore_constant_voxels", z.constant.name())?;
        }
        None => sink.set_attr_str("zscore", "off")?,
    }
    sink.set_attr_str("nonfinite", cfg.nonfinite.name())?;
    sink.set_attr_str("compression", cfg.compression.name())?;
    sink.set_attr_str(
        "sharding",
        if cfg.shard {
            "one shard per time slab"
        } else {
            "none"
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_writer_stops_the_sender_with_its_error() {
        let written = std::thread::scope(|scope| {
            let mut writer = WriteBehind::spawn(scope, 2, |t: usize| {
                if t == 3 {
                    Err(Error::Data(format!("disk full at {t}")))
                } else {
                    Ok(())
                }
            });
            // Far more than the queue holds: without the error turning `send` into a failure this blocks.
            let sent = (0..100).map(|t| writer.send(t)).find_map(|r| r.err());
            (sent, writer.finish())
        });
        let err = written
            .0
            .expect("the send after the failure fails")
            .to_string();
        assert!(err.contains("disk full at 3"), "{err}");
        assert!(written.1.is_err());
    }

    #[test]
    fn a_reader_abandoned_midway_ends() {
        std::thread::scope(|scope| {
            let rx = spawn_reader(scope, 1000, 2, |t| Ok(vec![t; 10]));
            let mut clock = Clock::default();
            assert_eq!(receive(&rx, &mut clock).unwrap(), vec![0; 10]);
            // Dropping `rx` here must let the scope join the readers.
        });
    }

    /// Several reader threads still deliver every item once, in order, whatever each read's time;
    /// an error arrives at its place in the order and ends the reading.
    #[test]
    fn readers_deliver_in_order_and_stop_at_an_error() {
        std::thread::scope(|scope| {
            let rx = spawn_reader(scope, 9, 1, |t| {
                std::thread::sleep(Duration::from_millis(((t * 7) % 5) as u64));
                Ok(t)
            });
            let mut clock = Clock::default();
            let got: Vec<usize> = (0..9).map(|_| receive(&rx, &mut clock).unwrap()).collect();
            assert_eq!(got, (0..9).collect::<Vec<_>>());
        });
        std::thread::scope(|scope| {
            let rx = spawn_reader(scope, 100, 2, |t| {
                if t == 5 {
                    Err(Error::Data("bad chunk at 5".into()))
                } else {
                    Ok(t)
                }
            });
            let mut clock = Clock::default();
            for t in 0..5 {
                assert_eq!(receive(&rx, &mut clock).unwrap(), t);
            }
            let e = receive(&rx, &mut clock).unwrap_err();
            assert!(e.to_string().contains("bad chunk at 5"), "{e}");
        });
    }

    #[test]
    fn scratch_round_trips_volumes_and_disappears() {
        let dir = tempfile::tempdir().unwrap();
        let shape = [3, 4, 5];
        let vols: Vec<Array3<f32>> = (0..4)
            .map(|t| {
                Array3::from_shape_fn(shape, |(z, y, x)| {
                    (t * 100 + z * 20 + y * 5 + x) as f32 - 0.5
                })
            })
            .collect();
        let scratch = FileScratch::create(dir.path(), Path::new("out.h5"), shape).unwrap();
        let path = scratch.file.path().to_path_buf();
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("scratch"));
        for t in [2, 0, 3, 1] {
            scratch.write(t, vols[t].view()).unwrap();
        }
        // A view in another memory order is written in logical (C) order.
        let transposed = vols[1].t().to_owned();
        scratch.write(1, transposed.t()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * 60 * 4);
        for (t, vol) in vols.iter().enumerate() {
            assert_eq!(&scratch.read(t).unwrap(), vol);
        }
        // Read on several threads at once, as pass 2's readers do: each gets its own volume.
        std::thread::scope(|scope| {
            for first in 0..4 {
                let (scratch, vols) = (&scratch, &vols);
                scope.spawn(move || {
                    for k in 0..200 {
                        let t = (first + k) % 4;
                        assert_eq!(&scratch.read(t).unwrap(), &vols[t], "timepoint {t}");
                    }
                });
            }
        });
        let err = scratch.read(4).unwrap_err().to_string();
        assert!(
            err.starts_with("out.h5: ") && err.contains("timepoint 4"),
            "{err}"
        );
        assert!(scratch.write(0, Array3::zeros([3, 4, 4]).view()).is_err());
        drop(scratch);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
