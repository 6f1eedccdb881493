//! The commands behind the CLI: each turns validated flags into work and a printed summary.

use crate::cli::{
    parse_shape4, BackendChoice, Command, DemoArgs, EngineArgs, InfoArgs, ReportArgs, RunArgs,
    SynthArgs,
};
use gpuprep_core::backend::Backend;
use gpuprep_core::{Error, Result};
use gpuprep_cpu::CpuBackend;
use gpuprep_io::Dtype;
use gpuprep_pipeline::driver::{self as pipeline, Progress, RunConfig, RunReport};
use gpuprep_pipeline::synth::{self, SynthLayout, SynthMode, SynthSpec};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

pub fn run_command(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Run(a) => run(a),
        Command::Synth(a) => synth_cmd(a),
        Command::Info(a) => info(a),
        Command::Demo(a) => demo(a),
        Command::Report(a) => report(a),
    }
}

/// The most `--threads` accepted: 4 per core, at least 64 (small machines still take a generous
/// pool), never above 1024. Past the cores threads only add switching: 1000 threads on 2 cores ran
/// 60x slower, and each costs a stack.
pub fn max_threads(cores: usize) -> usize {
    (4 * cores).clamp(64, 1024)
}

fn configure_threads(engine: &EngineArgs) -> Result<()> {
    if let Some(n) = engine.threads {
        if n == 0 {
            return Err(Error::InvalidParameter {
                name: "--threads".into(),
                message: "expected at least 1".into(),
            });
        }
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let max = max_threads(cores);
        if n > max {
            return Err(Error::InvalidParameter {
                name: "--threads".into(),
                message: format!(
                    "got {n}; at most {max} on this machine of {cores} cores (4 per core, at least 64, \
                     never above 1024): threads beyond the cores only add switching and stacks"
                ),
            });
        }
        // Only fails if a pool already exists, in which case the existing one is used.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    Ok(())
}

/// Picks the compute backend: a GPU adapter when asked for (or available under `auto`), else the CPU.
pub fn select_backend(engine: &EngineArgs) -> Result<Box<dyn Backend>> {
    if let (BackendChoice::Cpu, Some(api)) = (engine.backend, engine.gpu_api) {
        return Err(Error::InvalidParameter {
            name: "--gpu-api".into(),
            message: format!(
                "{api} applies to the GPU backend; it has no effect with --backend cpu (drop one of them)"
            ),
        });
    }
    configure_threads(engine)?;
    let api = engine.gpu_api.unwrap_or_default();
    match engine.backend {
        BackendChoice::Cpu => Ok(Box::new(CpuBackend::new())),
        BackendChoice::Gpu => gpu_backend(api),
        BackendChoice::Auto => match auto_gpu_backend(api) {
            Ok(g) => {
                eprintln!("gpuprep: using {}", g.describe());
                Ok(g)
            }
            // A setting of the user's that is wrong (e.g. `GPUPREP_GPU_ZSCORE`) is theirs to fix,
            // not a missing GPU to fall back from.
            Err(e @ Error::InvalidParameter { .. }) => Err(e),
            Err(e) => {
                eprintln!("gpuprep: no hardware GPU adapter ({e}); using the CPU backend");
                Ok(Box::new(CpuBackend::new()))
            }
        },
    }
}

/// `println!` that reports a failed write (a full disk, a closed pipe while SIGPIPE is ignored) as an error
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        say_line(format_args!($($arg)*))
    };
}

fn say_line(args: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // Flushed per line so the failure surfaces here, not in a panic when stdout is flushed at exit.
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot write to standard output: {}", os_text(&e)))
}

/// An I/O error's text without Rust's " (os error 28)" suffix.
fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Warns about temporary directories that earlier runs left beside `output` (SIGKILL, a crash, a power cut:
/// nothing runs then to remove them). They may also belong to a run still in progress, so they are named,
/// never deleted.
fn warn_stale(output: &std::path::Path) {
    use std::io::Write;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let mut err = std::io::stderr().lock();
    for (path, size) in gpuprep_io::cleanup::stale_entries(dir) {
        let _ = writeln!(
            err,
            "gpuprep: warning: {} ({}) was left by a gpuprep run that was killed, or belongs to one still \
             running; delete it when no gpuprep is writing there",
            path.display(),
            gpuprep_pipeline::memory::fmt_bytes(size as u128)
        );
    }
}

fn print_report(r: &RunReport) -> anyhow::Result<()> {
    say!(
        "gpuprep: wrote {} ({} timepoints of {}x{}x{}) with {} in {:.2} s",
        r.output.display(),
        r.timepoints,
        r.shape[0],
        r.shape[1],
        r.shape[2],
        r.backend,
        r.total.as_secs_f64()
    )?;
    say!("  inputs: {}", r.inputs_summary)?;
    let stages: Vec<String> = r
        .stage_times
        .iter()
        .map(|(n, d)| format!("{n} {:.2} s", d.as_secs_f64()))
        .collect();
    // Busy time per stage; reader, compute and writer threads run at once, so these overlap.
    say!("  stages (overlapping): {}", stages.join(", "))?;
    if r.nonfinite_replaced > 0 {
        say!(
            "  replaced {} NaN/Inf input values with 0",
            r.nonfinite_replaced
        )?;
    }
    if r.scratch == Some("memory") {
        say!("  pass 1's results waited in memory for the z-score (within --memory-budget)")?;
    }
    if r.read_in_place > 0 {
        say!(
            "  {} of {} volumes read in place (memory-mapped from their files, not copied)",
            r.read_in_place,
            r.timepoints
        )?;
    }
    if r.written_directly > 0 {
        say!(
            "  {} output chunks written straight to the device (O_DIRECT), not through the page cache",
            r.written_directly
        )?;
    }
    if !r.suspicious.is_empty() {
        say!(
            "  registration QC flags timepoints {:?} (see /suspicious, /correlation_after)",
            r.suspicious
        )?;
    }
    if r.constant_voxels > 0 {
        say!(
            "  {} voxels have a constant time series (z-score set per --constant-voxels)",
            r.constant_voxels
        )?;
    }
    Ok(())
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let cfg = a.to_config()?;
    // Checked before the run: a report it could not write would otherwise fail after all the work.
    let report = a
        .report
        .then(|| gpuprep_report::default_path(&cfg.output, gpuprep_report::Format::Html));
    if let Some(r) = report.as_ref().filter(|r| r.exists() && !a.force) {
        return Err(Error::Output {
            path: r.clone(),
            message: "already exists (the report --report would write); pass --force to replace it"
                .into(),
        }
        .into());
    }
    if a.report && a.no_register && a.shifts.is_none() {
        return Err(Error::InvalidParameter {
            name: "--report".into(),
            message: "the report shows a registration; --no-register without --shifts has none"
                .into(),
        }
        .into());
    }
    warn_stale(&cfg.output);
    let mut backend = select_backend(&a.engine)?;
    let mut bars = Bars::new(!a.quiet && std::io::stderr().is_terminal());
    let reports = gpuprep_pipeline::channels::run_channels(&cfg, backend.as_mut(), &mut bars)?;
    for report in &reports {
        warn_empty(report);
        if !a.quiet {
            print_report(report)?;
        }
    }
    if let Some(r) = &report {
        let written = gpuprep_report::write(&cfg.output, r, gpuprep_report::Format::Html, true)?;
        if !a.quiet {
            say!("  report: {}", written.display())?;
        }
    }
    Ok(())
}

/// The run's progress as indicatif bars on stderr, one per pass; hidden when `show` is false.
struct Bars {
    show: bool,
    bar: Option<ProgressBar>,
}

impl Bars {
    fn new(show: bool) -> Bars {
        Bars { show, bar: None }
    }
}

impl Progress for Bars {
    fn start(&mut self, pass: &'static str, timepoints: usize) {
        if !self.show {
            return;
        }
        let pb =
            ProgressBar::with_draw_target(Some(timepoints as u64), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {pos}/{len} frames, {per_sec}, ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(pass);
        self.bar = Some(pb);
    }

    fn advance(&mut self) {
        if let Some(pb) = &self.bar {
            pb.inc(1);
        }
    }

    fn finish(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}

/// A result users must know of even with `-q`: timepoints that could not be registered because the
/// volume or the reference is empty.
fn warn_empty(report: &RunReport) {
    let empty = report.empty_registrations();
    if empty.is_empty() {
        return;
    }
    let shown: Vec<String> = empty.iter().take(10).map(|t| t.to_string()).collect();
    let more = if empty.len() > 10 { ", …" } else { "" };
    let _ = writeln!(
        std::io::stderr(),
        "gpuprep: warning: {} timepoint(s) ({}{more}) or the reference are empty (all zeros): nothing to \
         register, shift 0 and /error NaN written for them",
        empty.len(),
        shown.join(", ")
    );
}

fn synth_cmd(a: SynthArgs) -> anyhow::Result<()> {
    let shape = parse_shape4("--shape", &a.shape)?;
    let spec = SynthSpec {
        shape,
        mode: a.mode,
        layout: if a.four_d {
            SynthLayout::FourD
        } else {
            SynthLayout::Files
        },
        max_shift: a.max_shift,
        subpixel: a.subpixel,
        noise: a.noise,
        seed: a.seed,
        dtype: a.dtype,
    };
    let out = synth::synth(&a.dir, &spec, a.force)?;
    say!(
        "gpuprep: wrote {} files to {}",
        out.files.len(),
        a.dir.display()
    )?;
    if out.true_shifts.is_some() {
        say!(
            "  true registration shifts: {}",
            a.dir.join("true_shifts.csv").display()
        )?;
    }
    Ok(())
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    if !a.inputs.is_empty() {
        let inputs = gpuprep_io::source::utf8_inputs(&a.inputs)?;
        let opts = gpuprep_io::source::OpenOptions {
            axes: a.axes,
            format: a.format,
            channel: a.channel,
        };
        for line in gpuprep_io::source::describe_with(&inputs, &a.dataset, opts)? {
            say!("{line}")?;
        }
        say!(
            "{}",
            gpuprep_io::source::describe_set(&inputs, &a.dataset, opts)
        )?;
        say!("")?;
    }
    say!("compute backends:")?;
    say!("  cpu: {} threads", rayon::current_num_threads())?;
    let adapters = gpu_adapters();
    if adapters.is_empty() {
        say!("  gpu: no adapter found")?;
    }
    for ad in adapters {
        say!("  gpu: {ad}")?;
    }
    Ok(())
}

fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let shape = parse_shape4("--shape", &a.shape)?;
    let u = gpuprep_pipeline::options::upsample_factor(a.upsample_factor)
        .map_err(crate::cli::under_its_flag)?;
    let dir = tempfile::Builder::new()
        .prefix("gpuprep-demo-")
        .tempdir()
        .map_err(|e| Error::Io {
            path: std::env::temp_dir(),
            source: e,
        })?;
    // An interrupt deletes it; otherwise dropping it does, on success or error.
    let _registered = gpuprep_io::cleanup::Registered::new(dir.path());
    let data = dir.path().join("data");
    let spec = SynthSpec {
        shape,
        mode: SynthMode::Realistic,
        layout: SynthLayout::Files,
        max_shift: 3.0,
        subpixel: true,
        noise: 0.05,
        seed: 7,
        dtype: Dtype::U16,
    };
    say!("gpuprep demo: {}x{}x{}x{} (t,z,y,x) uint16 volumes, smooth structure + noise, known sub-voxel shifts", shape[0], shape[1], shape[2], shape[3])?;
    let t0 = std::time::Instant::now();
    let synth = synth::synth(&data, &spec, false)?;
    say!(
        "  synthesised {} files in {:.2} s under {}",
        synth.files.len(),
        t0.elapsed().as_secs_f64(),
        data.display()
    )?;
    let truth = synth.true_shifts.expect("realistic mode records shifts");

    let output: PathBuf = dir.path().join("preprocessed.h5");
    let mut cfg = RunConfig::new(vec![data.display().to_string()], output.clone());
    cfg.register = Some(gpuprep_core::params::RegisterParams::new(
        u,
        gpuprep_core::params::Normalization::None,
    )?);
    let mut backend = select_backend(&a.engine)?;
    let mut bars = Bars::new(std::io::stderr().is_terminal());
    let report = pipeline::run_with_progress(&cfg, backend.as_mut(), &mut bars)?;
    print_report(&report)?;
    let report_path =
        gpuprep_report::write(&output, &a.report, gpuprep_report::Format::Html, true)?;

    say!("  t   true shift (z, y, x)        found shift (z, y, x)       |error|")?;
    let mut worst: f64 = 0.0;
    for (t, (r, s)) in report.registrations.iter().zip(&truth).enumerate() {
        let err = (0..3)
            .map(|i| (r.shift[i] - s[i]).abs())
            .fold(0.0, f64::max);
        worst = worst.max(err);
        say!(
            "  {t:<3} ({:6.2}, {:6.2}, {:6.2})  ->  ({:6.2}, {:6.2}, {:6.2})   {err:.3}",
            s[0],
            s[1],
            s[2],
            r.shift[0],
            r.shift[1],
            r.shift[2]
        )?;
    }
    say!(
        "  largest shift error {worst:.3} voxels (upsample factor {u}: resolution {:.3}; normalization none: phase whitening amplifies noise)",
        1.0 / u as f64
    )?;
    say!("  output layout: /data (t,z,y,x) float32 z-scores, /shifts, /error, /mean, /std, per-frame QC and projections; kept in a temporary directory that is now removed")?;
    say!(
        "  registration report (shifts, displacement, error, projections before/after; open it in a browser): {}",
        std::path::absolute(&report_path)
            .unwrap_or(report_path)
            .display()
    )?;
    Ok(())
}

/// `--backend gpu`: a GPU adapter of the asked-for API, or an error naming the API.
fn gpu_backend(api: gpuprep_gpu::Api) -> Result<Box<dyn Backend>> {
    Ok(Box::new(gpuprep_gpu::GpuBackend::new(api)?))
}

/// `--backend auto`: a hardware GPU adapter; software rasterizers (lavapipe, llvmpipe) are slower than
/// the CPU path, so auto passes them over (ask for them with `--backend gpu`).
fn auto_gpu_backend(api: gpuprep_gpu::Api) -> Result<Box<dyn Backend>> {
    let g = gpuprep_gpu::GpuBackend::new(api)?;
    if g.is_software() {
        return Err(Error::Gpu(format!(
            "only a software adapter ({}) is available",
            g.describe()
        )));
    }
    Ok(Box::new(g))
}

fn gpu_adapters() -> Vec<String> {
    gpuprep_gpu::list_adapters(gpuprep_gpu::Api::Any)
        .into_iter()
        .map(|a| {
            format!(
                "{} ({}, {}); {}",
                a.name, a.backend, a.device_type, a.limits
            )
        })
        .collect()
}

/// `gpuprep report`: the QC report of a finished output, at `-o` or beside it.
fn report(a: ReportArgs) -> anyhow::Result<()> {
    let format = a.format.unwrap_or_else(|| {
        a.report.as_deref().map_or(
            gpuprep_report::Format::Html,
            gpuprep_report::Format::from_path,
        )
    });
    let path = a
        .report
        .clone()
        .unwrap_or_else(|| gpuprep_report::default_path(&a.output, format));
    if path.exists() && !a.force {
        return Err(Error::Output {
            path,
            message: "already exists; pass --force to replace it".into(),
        }
        .into());
    }
    let written = gpuprep_report::write(&a.output, &path, format, a.force)?;
    say!("report: {}", written.display())?;
    Ok(())
}
