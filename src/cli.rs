//! Command-line flags, and their conversion into validated configurations before any work starts.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gpuprep_core::params::{BoundaryMode, ConstantVoxels, Normalization};
use gpuprep_core::{Error, Result};
use gpuprep_gpu::Api;
use gpuprep_io::source::Format;
use gpuprep_io::{Compression, Dtype};
use gpuprep_pipeline::driver::{NonFinite, RunConfig};
use gpuprep_pipeline::options::memory_budget;
use gpuprep_pipeline::synth::SynthMode;
use gpuprep_pipeline::RunOptions;
use gpuprep_report::Format as ReportFormat;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "gpuprep",
    version,
    about = "Preprocess 4-D (t, z, y, x) imaging data on the GPU or CPU: \
median filter, phase-correlation registration, shift, voxel-wise z-score — with scipy's numbers."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Preprocess a dataset: median filter → register → shift → z-score, into one HDF5 file.
    Run(RunArgs),
    /// Write a synthetic dataset in the notebook's layout (one HDF5 file per timepoint).
    Synth(SynthArgs),
    /// Describe input files and list the compute backends on this machine.
    Info(InfoArgs),
    /// Synthesise a small dataset with known shifts, preprocess it and report what happened.
    Demo(DemoArgs),
    /// Write the registration QC report of a finished output: shifts, displacement, error, flagged
    /// frames, projections before and after (one self-contained HTML page, or PNG).
    Report(ReportArgs),
}

/// A flag that takes one of a library enum's names, read from the enum's own table (`ALL` and `name`), so
/// each spelling is written once and the library needs no clap. A bad value is clap's usage error, which
/// names the flag, the value and the accepted names.
fn choice<T: Copy + Send + Sync + 'static>(
    all: &'static [T],
    name: fn(T) -> &'static str,
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(all.iter().map(|&v| name(v))).map(move |s| {
        all.iter()
            .copied()
            .find(|&v| name(v) == s)
            .expect("clap passes only the listed names")
    })
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// A GPU adapter when there is one, else the CPU.
    Auto,
    /// A GPU adapter; an error when there is none.
    Gpu,
    /// The CPU path.
    Cpu,
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Graphics API for the GPU backend (default: any).
    #[arg(long, value_parser = choice(&Api::ALL, Api::name))]
    pub gpu_api: Option<Api>,
    /// CPU threads (default: all cores; at most 4 per core, at least 64 allowed, never above 1024).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Inputs: a directory of .h5 (or .tif) files, glob patterns, files (one 3-D volume each), or one file
    /// with a 4-D (t, z, y, x) dataset or a 3-D (t, y, x) movie; a Zarr store; a multi-page TIFF stack.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Input format: hdf5, zarr or tiff (default: detected from the paths).
    #[arg(long, value_parser = choice(&Format::ALL, Format::name))]
    pub format: Option<Format>,
    /// The channel read from an input with several (a 5-D OME-Zarr image, a multi-channel TIFF).
    #[arg(long, default_value_t = 0)]
    pub channel: usize,
    /// What each input dataset holds: tzyx (4-D), tyx (a movie: T frames, each a volume of z = 1; several
    /// files are concatenated in time) or zyx (one volume per file). Default: tzyx for a 4-D dataset, tyx
    /// for a 3-D dataset in a single file given by name, zyx for several files, a directory or a glob.
    #[arg(long, value_name = "tzyx|tyx|zyx")]
    pub axes: Option<gpuprep_io::Axes>,
    /// Output HDF5 file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Dataset path inside each input file.
    #[arg(long, default_value = "default")]
    pub dataset: String,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,

    /// Median window per axis "z,y,x" (odd), or one number for all axes.
    #[arg(long, default_value = "3,3,3")]
    pub median_size: String,
    /// Median boundary mode (scipy's names).
    #[arg(long, default_value = "reflect", value_parser = choice(&BoundaryMode::ALL, BoundaryMode::name))]
    pub median_mode: BoundaryMode,
    /// Value outside the volume for --median-mode constant.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub median_cval: f32,
    /// Skip the median filter.
    #[arg(long)]
    pub no_median: bool,

    /// Skip registration and shifting.
    #[arg(long)]
    pub no_register: bool,
    /// Sub-voxel precision 1/N of the registration (scikit-image's upsample_factor).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub upsample_factor: i64,
    /// Cross-power spectrum normalization (scikit-image's names).
    #[arg(long, default_value = "phase", value_parser = choice(&Normalization::ALL, Normalization::name))]
    pub normalization: Normalization,
    /// Search the registration peak only within |shift| <= Z,Y,X voxels (one number: all axes), at
    /// integer and upsampled precision (suite2p's maxregshift, CaImAn's max_shifts). Default: the
    /// whole volume, as scikit-image.
    #[arg(long, value_name = "Z,Y,X")]
    pub max_shift: Option<String>,
    /// Smooth the correlation with a Gaussian of S voxels (or Z,Y,X per axis): the cross-power
    /// spectrum times its Fourier transform, as suite2p. 0: scikit-image's plain phase correlation.
    #[arg(long, value_name = "S|Z,Y,X", default_value = "0")]
    pub smooth_sigma: String,
    /// Refine the reference N times before registering: it becomes the mean of its frames (the
    /// --reference-mean range, or the --reference timepoint) registered onto it. Saved as /reference.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub reference_iterations: u32,
    /// With --reference-iterations: each refinement averages only the N frames of the reference range
    /// most correlated with the current reference after registration (suite2p's template).
    /// Default: all of them.
    #[arg(long, value_name = "N")]
    pub reference_top: Option<usize>,
    /// Try each shift's candidates modulo the volume's size in real space and keep the best
    /// (scikit-image's disambiguate=True), for shifts beyond half the field of view.
    #[arg(long)]
    pub disambiguate: bool,
    /// Apply the shifts in FILE instead of registering: a gpuprep output (its /shifts) or a CSV/TSV
    /// table with a header naming z,y,x (and t) columns, one row per timepoint.
    #[arg(long, value_name = "FILE")]
    pub shifts: Option<PathBuf>,
    /// Also write these channels (all, or e.g. 1,2) of a multi-channel input, shifted as the channel
    /// registered (--channel): each to OUTPUT with _c<N> before its extension.
    #[arg(long, value_name = "all|LIST")]
    pub apply_to_channels: Option<String>,
    /// Reference timepoint.
    #[arg(long, default_value_t = 0, conflicts_with = "reference_mean")]
    pub reference: usize,
    /// Use the mean of timepoints START:END (half-open) as the reference.
    #[arg(long, value_name = "START:END")]
    pub reference_mean: Option<String>,
    /// Register the raw volumes instead of the filtered ones (the shift is still applied to the
    /// filtered volume).
    #[arg(long)]
    pub register_raw: bool,

    /// Spline order of the shift: 0, 1 or 3.
    #[arg(long, default_value_t = 3)]
    pub order: u32,
    /// Shift boundary mode (scipy's names).
    #[arg(long, default_value = "constant", value_parser = choice(&BoundaryMode::ALL, BoundaryMode::name))]
    pub shift_mode: BoundaryMode,
    /// Value outside the volume for --shift-mode constant.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub shift_cval: f32,

    /// Skip the z-score (write the registered volumes).
    #[arg(long)]
    pub no_zscore: bool,
    /// Delta degrees of freedom of the standard deviation.
    #[arg(long, default_value_t = 0)]
    pub ddof: u32,
    /// Z-score of voxels whose time series is constant: nan (scipy's) or zero.
    #[arg(long, default_value = "nan", value_parser = choice(&ConstantVoxels::ALL, ConstantVoxels::name))]
    pub constant_voxels: ConstantVoxels,
    /// NaN/Inf stored in the input: error (stop and name the file) or zero (replace with 0). A finite
    /// float64 value beyond float32's range is always an error, whatever this says.
    #[arg(long, default_value = "error", value_parser = choice(&NonFinite::ALL, NonFinite::name))]
    pub nonfinite: NonFinite,

    /// Chunk compression of the output: none, zstd or blosc-lz4 (the last two for Zarr outputs,
    /// .zarr/.ome.zarr, only).
    #[arg(long, default_value = "none", value_parser = choice(&Compression::ALL, Compression::name))]
    pub compression: Compression,
    /// Zarr outputs: store each time slab of chunks as one shard (Zarr v3 sharding), one file per slab
    /// instead of one per chunk.
    #[arg(long)]
    pub shard: bool,

    /// Memory pass 1's results may take for the z-score's second pass ("8G", "500M", bytes; 0: always a
    /// scratch file). Default: a quarter of the available memory. Beyond it they wait in a scratch file.
    #[arg(long, value_name = "SIZE")]
    pub memory_budget: Option<String>,

    /// Extra datasets to keep: filtered, registered (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub save: Vec<String>,
    /// Also write the registration QC report beside the output (OUT.report.html; see `gpuprep report`).
    #[arg(long)]
    pub report: bool,
    /// No progress bar and no summary.
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A gpuprep output (.h5 file or .ome.zarr store) of a run that registered or applied shifts.
    pub output: PathBuf,
    /// The report's path (default: beside the output, OUT.report.html or .png).
    #[arg(short = 'o', long = "out")]
    pub report: Option<PathBuf>,
    /// html (one page, images inlined, no network or JavaScript needed) or png (one image). Default:
    /// from the report path's extension, else html.
    #[arg(long, value_parser = choice(&ReportFormat::ALL, ReportFormat::name))]
    pub format: Option<ReportFormat>,
    /// Replace an existing report.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output directory.
    pub dir: PathBuf,
    /// Shape "t,z,y,x".
    #[arg(long, default_value = "10,100,100,100")]
    pub shape: String,
    /// randn (the notebook's) or realistic (smooth structure + noise + known shifts).
    #[arg(long, default_value = "randn", value_parser = choice(&SynthMode::ALL, SynthMode::name))]
    pub mode: SynthMode,
    /// Write one 4-D file (DIR/data.h5) instead of one file per timepoint.
    #[arg(long)]
    pub four_d: bool,
    /// Largest shift per axis (realistic mode).
    #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
    pub max_shift: f64,
    /// Sub-voxel shifts (realistic mode).
    #[arg(long)]
    pub subpixel: bool,
    /// Noise standard deviation relative to the structure (realistic mode).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub noise: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stored dtype (numpy's names).
    #[arg(long, default_value = "float64", value_parser = choice(&Dtype::ALL, Dtype::name))]
    pub dtype: Dtype,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Input files, directories or globs (optional).
    pub inputs: Vec<PathBuf>,
    /// What each input dataset holds, as for `run --axes`.
    #[arg(long, value_name = "tzyx|tyx|zyx")]
    pub axes: Option<gpuprep_io::Axes>,
    #[arg(long, default_value = "default")]
    pub dataset: String,
    /// Input format, as for `run --format`.
    #[arg(long, value_parser = choice(&Format::ALL, Format::name))]
    pub format: Option<Format>,
    /// The channel read, as for `run --channel`.
    #[arg(long, default_value_t = 0)]
    pub channel: usize,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Shape "t,z,y,x" of the synthetic data.
    #[arg(long, default_value = "20,32,64,64")]
    pub shape: String,
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub upsample_factor: i64,
    /// Where the demo's registration report is kept (replaced if it exists).
    #[arg(long, default_value = "gpuprep-demo-report.html")]
    pub report: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn parse_list(flag: &str, s: &str, expected: usize) -> Result<Vec<usize>> {
    let parts: std::result::Result<Vec<usize>, _> =
        s.split(',').map(|p| p.trim().parse::<usize>()).collect();
    match parts {
        Ok(v) if v.len() == expected => Ok(v),
        Ok(v) if v.len() == 1 && expected == 3 => Ok(vec![v[0]; 3]),
        _ => Err(Error::InvalidParameter {
            name: flag.into(),
            message: format!(
                "got {s:?}; expected {expected} comma-separated non-negative integers"
            ),
        }),
    }
}

/// Three numbers "z,y,x" (or one for all axes) for `flag`; range checks are the library's.
pub fn parse_floats3(flag: &str, s: &str) -> Result<[f64; 3]> {
    let parts: std::result::Result<Vec<f64>, _> =
        s.split(',').map(|p| p.trim().parse::<f64>()).collect();
    match parts {
        Ok(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
        Ok(v) if v.len() == 1 => Ok([v[0]; 3]),
        _ => Err(Error::InvalidParameter {
            name: flag.into(),
            message: format!(
                "got {s:?}; expected one number or three comma-separated numbers z,y,x"
            ),
        }),
    }
}

pub fn parse_shape4(flag: &str, s: &str) -> Result<[usize; 4]> {
    let v = parse_list(flag, s, 4)?;
    if v.contains(&0) {
        return Err(Error::InvalidParameter {
            name: flag.into(),
            message: format!("got {s:?}; sizes must be >= 1"),
        });
    }
    Ok([v[0], v[1], v[2], v[3]])
}

/// The flag that supplies each parameter the libraries name in their errors (`Error::InvalidParameter`).
const PARAMETER_FLAGS: &[(&str, &str)] = &[
    ("median size", "--median-size"),
    ("boundary mode", "--median-mode"),
    ("upsample factor", "--upsample-factor"),
    ("normalization", "--normalization"),
    ("spline order", "--order"),
    ("reference", "--reference"),
    ("reference range", "--reference-mean"),
    ("saved stages", "--save"),
    ("memory budget", "--memory-budget"),
    ("sharding", "--shard"),
    ("axes", "--axes"),
    ("format", "--format"),
    ("dtype", "--dtype"),
    ("shape", "--shape"),
    ("max shift", "--max-shift"),
    ("smooth sigma", "--smooth-sigma"),
    ("shifts", "--shifts"),
    ("reference top", "--reference-top"),
    ("disambiguation", "--disambiguate"),
    ("channels to apply to", "--apply-to-channels"),
    ("noise", "--noise"),
    ("graphics API", "--gpu-api"),
];

/// A library error naming a parameter, restated under the flag that supplies it; other errors as
/// they are.
pub fn under_its_flag(e: Error) -> Error {
    match e {
        Error::InvalidParameter { name, message } => {
            let flag = PARAMETER_FLAGS.iter().find(|(n, _)| *n == name);
            Error::InvalidParameter {
                name: flag.map_or(name, |(_, f)| f.to_string()),
                message,
            }
        }
        e => e,
    }
}

impl RunArgs {
    /// Every flag checked and converted before a byte is read: the text flags parsed here, the rest
    /// validated by the library (`RunOptions::into_config`, shared with the Python package), its errors
    /// restated under their flags.
    pub fn to_config(&self) -> Result<RunConfig> {
        let size = parse_list("--median-size", &self.median_size, 3)?;
        let reference_mean = match &self.reference_mean {
            None => None,
            Some(r) => {
                let bad = || Error::InvalidParameter {
                    name: "--reference-mean".into(),
                    message: format!("got {r:?}; expected START:END with START < END"),
                };
                let (a, b) = r.split_once(':').ok_or_else(bad)?;
                Some((
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                ))
            }
        };
        RunOptions {
            inputs: gpuprep_io::source::utf8_inputs(&self.inputs)?,
            output: self.output.clone(),
            dataset: self.dataset.clone(),
            axes: self.axes,
            format: self.format,
            channel: self.channel,
            force: self.force,
            no_median: self.no_median,
            median_size: [size[0], size[1], size[2]],
            median_mode: self.median_mode,
            median_cval: self.median_cval,
            no_register: self.no_register,
            upsample_factor: self.upsample_factor,
            normalization: self.normalization,
            max_shift: match &self.max_shift {
                None => None,
                Some(m) => Some(parse_floats3("--max-shift", m)?),
            },
            smooth_sigma: parse_floats3("--smooth-sigma", &self.smooth_sigma)?,
            reference: self.reference,
            reference_mean,
            register_raw: self.register_raw,
            order: self.order,
            shift_mode: self.shift_mode,
            shift_cval: self.shift_cval,
            no_zscore: self.no_zscore,
            ddof: self.ddof,
            constant_voxels: self.constant_voxels,
            nonfinite: self.nonfinite,
            compression: self.compression,
            shard: self.shard,
            save: self.save.clone(),
            reference_iterations: self.reference_iterations,
            reference_top: self.reference_top,
            disambiguate: self.disambiguate,
            shifts: self.shifts.clone(),
            apply_to_channels: self.apply_to_channels.clone(),
            memory_budget: match &self.memory_budget {
                None => None,
                Some(text) => Some(memory_budget(text).map_err(under_its_flag)?),
            },
        }
        .into_config()
        .map_err(under_its_flag)
    }
}
