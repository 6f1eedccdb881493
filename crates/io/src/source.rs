//! Input volumes: a directory, globs or a list of 3-D HDF5 files (one timepoint each, or a movie each),
//! or one 4-D file; one Zarr array or OME-Zarr image (see [`zarr`]); or TIFF stacks (see [`tiff`]).
//!
//! Everything is validated when the source is opened, so a bad file fails before any work starts; reads then
//! stream one volume at a time and open the file per read, so hundreds of inputs never hold hundreds of
//! handles. Only a file holding many timepoints in chunked storage stays open between reads (one at a time),
//! so that its chunk cache spares decompressing a chunk again for every volume it spans.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use ndarray::{s, Array3, ArrayView3};

use super::fmt_shape;
use crate::VoxelSize;
use gpuprep_core::error::{Error, Result};

pub mod tiff;
pub mod zarr;

/// The element types gpuprep reads and writes (numpy's names in `Display`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    U8,
    U16,
    I16,
    I32,
    F32,
    F64,
}

impl Dtype {
    pub const ALL: [Dtype; 6] = [
        Dtype::U8,
        Dtype::U16,
        Dtype::I16,
        Dtype::I32,
        Dtype::F32,
        Dtype::F64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "uint8",
            Dtype::U16 => "uint16",
            Dtype::I16 => "int16",
            Dtype::I32 => "int32",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::U16 | Dtype::I16 => 2,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F64)
    }

    /// The in-file type, or `None` for types the pipeline does not accept (int8, int64, strings, …).
    pub fn from_descriptor(desc: &TypeDescriptor) -> Option<Dtype> {
        match desc {
            TypeDescriptor::Unsigned(IntSize::U1) => Some(Dtype::U8),
            TypeDescriptor::Unsigned(IntSize::U2) => Some(Dtype::U16),
            TypeDescriptor::Integer(IntSize::U2) => Some(Dtype::I16),
            TypeDescriptor::Integer(IntSize::U4) => Some(Dtype::I32),
            TypeDescriptor::Float(FloatSize::U4) => Some(Dtype::F32),
            TypeDescriptor::Float(FloatSize::U8) => Some(Dtype::F64),
            _ => None,
        }
    }

    pub fn descriptor(self) -> TypeDescriptor {
        match self {
            Dtype::U8 => TypeDescriptor::Unsigned(IntSize::U1),
            Dtype::U16 => TypeDescriptor::Unsigned(IntSize::U2),
            Dtype::I16 => TypeDescriptor::Integer(IntSize::U2),
            Dtype::I32 => TypeDescriptor::Integer(IntSize::U4),
            Dtype::F32 => TypeDescriptor::Float(FloatSize::U4),
            Dtype::F64 => TypeDescriptor::Float(FloatSize::U8),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Dtype> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| Error::InvalidParameter {
                name: "dtype".into(),
                message: format!(
                    "unknown dtype '{s}'; expected one of {}",
                    Dtype::ALL.map(Dtype::name).join(", ")
                ),
            })
    }
}

/// How a dataset's axes map onto the pipeline's (t, z, y, x).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axes {
    /// One file holding a 4-D (t, z, y, x) dataset.
    Tzyx,
    /// Files holding a 3-D (t, y, x) movie each: every frame is a volume of z = 1. Several files are
    /// concatenated in time, in input order (recordings are often split into several files).
    Tyx,
    /// Files holding one 3-D (z, y, x) volume each: one timepoint per file.
    Zyx,
}

impl Axes {
    pub const ALL: [Axes; 3] = [Axes::Tzyx, Axes::Tyx, Axes::Zyx];

    pub fn name(self) -> &'static str {
        match self {
            Axes::Tzyx => "tzyx",
            Axes::Tyx => "tyx",
            Axes::Zyx => "zyx",
        }
    }

    fn rank(self) -> usize {
        match self {
            Axes::Tzyx => 4,
            Axes::Tyx | Axes::Zyx => 3,
        }
    }

    fn layout(self) -> &'static str {
        match self {
            Axes::Tzyx => "4-D (t, z, y, x)",
            Axes::Tyx => "3-D (t, y, x)",
            Axes::Zyx => "3-D (z, y, x)",
        }
    }

    /// Whether a file holds many timepoints along its first axis.
    fn has_time(self) -> bool {
        self != Axes::Zyx
    }
}

impl fmt::Display for Axes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Axes {
    type Err = Error;

    fn from_str(s: &str) -> Result<Axes> {
        Axes::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| Error::InvalidParameter {
                name: "axes".into(),
                message: format!("unknown axes '{s}'; expected tzyx, tyx or zyx"),
            })
    }
}

/// The container an input is read as: detected from the paths, or forced by `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Hdf5,
    Zarr,
    Tiff,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Hdf5, Format::Zarr, Format::Tiff];

    pub fn name(self) -> &'static str {
        match self {
            Format::Hdf5 => "hdf5",
            Format::Zarr => "zarr",
            Format::Tiff => "tiff",
        }
    }

    /// Whether a directory entry of this name is an input of this format.
    fn takes_name(self, p: &Path) -> bool {
        match self {
            Format::Tiff => tiff::is_tiff_name(p),
            _ => is_h5_name(p),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| Error::InvalidParameter {
                name: "format".into(),
                message: format!("unknown format '{s}'; expected hdf5, zarr or tiff"),
            })
    }
}

/// What the command line says about the inputs besides their paths and dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// `--axes`: what each input holds; `None` guesses (see [`Source::open_with`]).
    pub axes: Option<Axes>,
    /// `--format`; `None` detects it (see [`detect_format`]).
    pub format: Option<Format>,
    /// `--channel`: the channel read from an input with several (OME-Zarr, TIFF hyperstacks).
    pub channel: usize,
}

/// The format of `inputs`: a Zarr store given alone; TIFF for a named file or first glob match that
/// starts with a TIFF signature (or, unreadable, is named so), or a directory holding `*.tif`/`*.tiff`
/// files and no `*.h5`/`*.hdf5` but gpuprep's outputs; HDF5 otherwise (its own errors then say why).
pub fn detect_format<S: AsRef<Path>>(inputs: &[S]) -> Format {
    if let [one] = inputs {
        if zarr::is_zarr(one.as_ref()) {
            return Format::Zarr;
        }
    }
    let is_tiff = |p: &Path| tiff::has_tiff_signature(p) || tiff::is_tiff_name(p);
    let Some(first) = inputs.first().map(AsRef::as_ref) else {
        return Format::Hdf5;
    };
    if first.is_dir() {
        let names: Vec<PathBuf> = std::fs::read_dir(first)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        if !names.iter().any(|p| tiff::is_tiff_name(p)) {
            return Format::Hdf5;
        }
        // gpuprep's own outputs written beside TIFF inputs do not make the directory an HDF5 series.
        let h5_inputs = names
            .iter()
            .filter(|p| is_h5_name(p))
            .any(|p| !is_gpuprep_output(p));
        return if h5_inputs {
            Format::Hdf5
        } else {
            Format::Tiff
        };
    }
    if first.symlink_metadata().is_ok() {
        return if is_tiff(first) {
            Format::Tiff
        } else {
            Format::Hdf5
        };
    }
    let matched = first
        .to_str()
        .and_then(|s| glob::glob(s).ok())
        .and_then(|mut g| g.find_map(|p| p.ok().filter(|p| p.is_file())));
    match matched {
        Some(p) if is_tiff(&p) => Format::Tiff,
        _ => Format::Hdf5,
    }
}

/// A validated series of volumes.
#[derive(Clone, Debug)]
pub struct Source {
    files: Vec<PathBuf>,
    /// Timepoints in each file (1 per file for `zyx`), and the first timepoint of each.
    lens: Vec<usize>,
    starts: Vec<usize>,
    dataset: String,
    axes: Axes,
    shape: [usize; 3],
    dtype: Dtype,
    len: usize,
    chunks: Option<Vec<usize>>,
    /// Chunk cache per open dataset: 0 for HDF5's default, else enough for the chunks one volume
    /// touches, when a chunk spans several timepoints.
    cache_bytes: usize,
    cache_slots: usize,
    held: Held,
    /// The Zarr array read, for a Zarr input (then `files` is its store alone).
    zarr: Option<std::sync::Arc<zarr::ZarrInput>>,
    /// The TIFF files read, for a TIFF input.
    tiff: Option<std::sync::Arc<tiff::TiffInput>>,
}

/// The dataset of a file holding many timepoints, kept open between reads so that its chunk cache
/// survives: a chunk spanning several timepoints is then decompressed once, not once per volume.
#[derive(Default)]
struct Held(Mutex<Option<(usize, hdf5::Dataset)>>);

impl Clone for Held {
    fn clone(&self) -> Self {
        Held::default()
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

/// What one file's dataset looks like, before the checks that need the other files.
struct Probe {
    shape: Vec<usize>,
    desc: TypeDescriptor,
    chunks: Option<Vec<usize>>,
    filters: Vec<hdf5::filters::Filter>,
    layout: hdf5::dataset::Layout,
    external: usize,
}

/// One file to read, and how the command line gave it: named, found by listing a directory, or matched.
struct Input {
    path: PathBuf,
    from_dir: bool,
    named: bool,
}

/// Bytes `read_raw` reads at a time.
const RAW_BLOCK_BYTES: usize = 4 << 20;

/// float64 values a volume held that float32 cannot: how many, and the first (index, value).
#[derive(Default)]
struct OutOfRange {
    count: usize,
    first: Option<(usize, f64)>,
}

impl OutOfRange {
    /// Converts `src` into `dst`; `base` is the index of `src[0]` in the volume.
    fn convert(&mut self, src: impl Iterator<Item = f64>, dst: &mut [f32], base: usize) {
        for (i, (d, v)) in dst.iter_mut().zip(src).enumerate() {
            *d = v as f32;
            // Rounding decides, not a comparison with f32::MAX: values up to half an ulp above it
            // round to it and are fine.
            if d.is_infinite() && v.is_finite() {
                self.count += 1;
                self.first.get_or_insert((base + i, v));
            }
        }
    }
}

impl Source {
    /// Opens `inputs` as typed on the command line, with the axes guessed from the data (see
    /// [`Source::open_with`]).
    pub fn open(inputs: &[String], dataset: &str) -> Result<Source> {
        Source::open_with(inputs, dataset, None)
    }

    /// Opens `inputs` as typed on the command line: directories (their `*.h5` / `*.hdf5` files, in natural
    /// order: t2 before t10; gpuprep's own outputs among them skipped with a warning), glob patterns
    /// (matches in natural order) and explicit files (in the order given). `axes` says what each file's
    /// dataset holds; `None` takes a 4-D dataset as `tzyx`, the 3-D dataset of a single file named as the
    /// only input as `tyx` (a movie), and 3-D datasets otherwise (several files, or a directory or glob,
    /// even of one file) as `zyx` (a volume each).
    pub fn open_with(inputs: &[String], dataset: &str, axes: Option<Axes>) -> Result<Source> {
        let opts = OpenOptions {
            axes,
            ..OpenOptions::default()
        };
        Source::open_inner(inputs, dataset, opts, true)
    }

    /// Opens `inputs` as [`Source::open_with`] does, with the format and channel of `opts`.
    pub fn open_opts(inputs: &[String], dataset: &str, opts: OpenOptions) -> Result<Source> {
        Source::open_inner(inputs, dataset, opts, true)
    }

    fn open_inner<S: AsRef<Path>>(
        inputs: &[S],
        dataset: &str,
        opts: OpenOptions,
        warn: bool,
    ) -> Result<Source> {
        let requested = opts.axes;
        let format = opts.format.unwrap_or_else(|| detect_format(inputs));
        match format {
            Format::Zarr => {
                let [one] = inputs else {
                    return Err(Error::InvalidParameter {
                        name: "format".into(),
                        message: format!(
                            "--format zarr reads one store, not {} inputs",
                            inputs.len()
                        ),
                    });
                };
                if !zarr::is_zarr(one.as_ref()) {
                    return Err(Error::Input {
                        path: one.as_ref().to_path_buf(),
                        message:
                            "is not a Zarr store or array (no zarr.json, .zarray or .zgroup at its \
                                  root), as --format zarr says"
                                .into(),
                    });
                }
                let source = Source::open_zarr(one.as_ref(), dataset, requested, opts.channel)?;
                if let Some(note) = source.zarr.as_ref().and_then(|z| z.absent_note()) {
                    if warn {
                        eprintln!("gpuprep: warning: {}: {note}", one.as_ref().display());
                    }
                }
                return Ok(source);
            }
            Format::Tiff => return Source::open_tiff(inputs, dataset, requested, opts.channel),
            Format::Hdf5 => {}
        }
        let inputs = expand_inputs(inputs, Format::Hdf5)?;
        check_duplicates(&inputs)?;
        let mut files = Vec::with_capacity(inputs.len());
        let mut probes = Vec::with_capacity(inputs.len());
        let mut failed = None;
        for input in &inputs {
            match probe(&input.path, dataset, input.from_dir) {
                Ok(Some(p)) => {
                    files.push(input.path.clone());
                    probes.push(p);
                }
                Ok(None) => {
                    if warn {
                        eprintln!(
                            "gpuprep: warning: skipping {}: it is an output of gpuprep (root attribute \
                             gpuprep_version); name it explicitly to read it",
                            input.path.display()
                        );
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // A file that fails to probe is reported after the checks of the files before it, so a 4-D file
        // among several is named as the problem rather than the next file for lacking its dataset.
        let nfiles = if failed.is_some() {
            inputs.len()
        } else {
            files.len()
        };
        if files.is_empty() {
            return Err(failed.unwrap_or_else(|| Error::Input {
                path: inputs[0].path.clone(),
                message:
                    "holds only outputs of gpuprep (root attribute gpuprep_version); name one \
                          explicitly to read it"
                        .into(),
            }));
        }
        // A directory or glob stands for a series of files, a volume each, even when it holds only one.
        let axes = requested.unwrap_or(match probes[0].shape.len() {
            4 => Axes::Tzyx,
            3 if nfiles == 1 && inputs.len() == 1 && inputs[0].named => Axes::Tyx,
            _ => Axes::Zyx,
        });
        for (f, p) in files.iter().zip(&probes) {
            check_probe(f, p, dataset, nfiles, axes, requested.is_some())?;
        }
        if let Some(e) = failed {
            return Err(e);
        }

        let (shape0, desc0) = (&probes[0].shape, &probes[0].desc);
        // A movie's files may differ in length, never in frame shape.
        let skip = usize::from(axes == Axes::Tyx);
        for (file, p) in files.iter().zip(&probes).skip(1) {
            if p.shape[skip..] != shape0[skip..] {
                let what = if skip == 1 {
                    "frames of (y, x)"
                } else {
                    "shape"
                };
                return Err(Error::Input {
                    path: file.to_path_buf(),
                    message: format!(
                        "dataset '{dataset}' has {what} {} but {} has {}; every input must have the same {what}",
                        fmt_shape(&p.shape[skip..]),
                        files[0].display(),
                        fmt_shape(&shape0[skip..])
                    ),
                });
            }
            if &p.desc != desc0 {
                return Err(Error::Input {
                    path: file.to_path_buf(),
                    message: format!(
                        "dataset '{dataset}' has type {} but {} has {}; every input must have the same type",
                        p.desc,
                        files[0].display(),
                        desc0
                    ),
                });
            }
        }

        let shape = match axes {
            Axes::Tyx => [1, shape0[1], shape0[2]],
            _ => {
                let s = &shape0[shape0.len() - 3..];
                [s[0], s[1], s[2]]
            }
        };
        let lens: Vec<usize> = probes
            .iter()
            .map(|p| if axes.has_time() { p.shape[0] } else { 1 })
            .collect();
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |acc, &l| {
                let s = *acc;
                *acc += l;
                Some(s)
            })
            .collect();
        let len = lens.iter().sum();
        let dtype = Dtype::from_descriptor(desc0).expect("checked above");
        let (mut cache_bytes, mut cache_slots) = (0, 0);
        if axes.has_time() {
            for (f, p) in files.iter().zip(&probes) {
                let (bytes, slots) = volume_cache(f, p, dataset, dtype)?;
                cache_bytes = cache_bytes.max(bytes);
                cache_slots = cache_slots.max(slots);
            }
        }
        let chunks = probes.swap_remove(0).chunks;
        let source = Source {
            files,
            lens,
            starts,
            dataset: dataset.to_string(),
            axes,
            shape,
            dtype,
            len,
            chunks,
            cache_bytes,
            cache_slots,
            held: Held::default(),
            zarr: None,
            tiff: None,
        };
        if opts.channel > 0 {
            return Err(channel_err(&source.files[0], opts.channel, 1));
        }
        Ok(source)
    }

    /// The input's voxel size per (t, z, y, x) axis with its unit, where its metadata says (OME-Zarr,
    /// ImageJ, OME-TIFF).
    pub fn voxel_size(&self) -> Option<VoxelSize> {
        if let Some(t) = &self.tiff {
            return t.voxel_size();
        }
        self.zarr.as_ref().and_then(|z| z.voxel_size())
    }

    /// TIFF files: named, listed from directories (`*.tif`, `*.tiff`, …) or matched, in the same order
    /// as HDF5 inputs.
    fn open_tiff<S: AsRef<Path>>(
        inputs: &[S],
        dataset: &str,
        requested: Option<Axes>,
        channel: usize,
    ) -> Result<Source> {
        let expanded = expand_inputs(inputs, Format::Tiff)?;
        check_duplicates(&expanded)?;
        if dataset != "default" {
            return Err(Error::InvalidParameter {
                name: "dataset".into(),
                message: format!(
                    "--dataset {dataset} names an HDF5 dataset or a Zarr array; TIFF inputs have none"
                ),
            });
        }
        let lone = expanded.len() == 1 && expanded[0].named && inputs.len() == 1;
        let files = expanded.into_iter().map(|i| i.path).collect();
        let t = tiff::TiffInput::open(files, lone, requested, channel)?;
        let lens = t.lens();
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |acc, &l| {
                let s = *acc;
                *acc += l;
                Some(s)
            })
            .collect();
        Ok(Source {
            files: t.files().to_vec(),
            len: lens.iter().sum(),
            lens,
            starts,
            dataset: "pages".into(),
            axes: t.axes(),
            shape: t.shape(),
            dtype: t.dtype(),
            chunks: None,
            cache_bytes: 0,
            cache_slots: 0,
            held: Held::default(),
            zarr: None,
            tiff: Some(std::sync::Arc::new(t)),
        })
    }

    /// A Zarr store (or array) given as the only input.
    fn open_zarr(
        path: &Path,
        dataset: &str,
        requested: Option<Axes>,
        channel: usize,
    ) -> Result<Source> {
        let z = zarr::ZarrInput::open(path, dataset, requested, channel)?;
        z.check_whole_volumes()?;
        let len = z.len();
        Ok(Source {
            files: vec![path.to_path_buf()],
            lens: vec![len],
            starts: vec![0],
            dataset: z.dataset(),
            axes: z.axes(),
            shape: z.shape(),
            dtype: z.dtype(),
            len,
            chunks: z.chunks(),
            cache_bytes: 0,
            cache_slots: 0,
            held: Held::default(),
            zarr: Some(std::sync::Arc::new(z)),
            tiff: None,
        })
    }

    /// Number of timepoints.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty source is refused by `open`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// (z, y, x) of one volume; (1, y, x) for a `tyx` movie.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// The input files (one for a 4-D source).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The format the inputs are read as.
    pub fn format(&self) -> Format {
        match (&self.zarr, &self.tiff) {
            (Some(_), _) => Format::Zarr,
            (_, Some(_)) => Format::Tiff,
            _ => Format::Hdf5,
        }
    }

    /// The first timepoint of each file: the files holding a run of timepoints, opened alone with
    /// this source's format, dataset, axes and channel, read those timepoints from the first one's
    /// offset (what a front end reading block by block opens per block).
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// What each file's dataset holds.
    pub fn axes(&self) -> Axes {
        self.axes
    }

    /// Whether the source is one 4-D (t, z, y, x) file.
    pub fn is_4d(&self) -> bool {
        self.axes == Axes::Tzyx
    }

    /// The file holding timepoint `t` (`t` < `len()`).
    pub fn file_of(&self, t: usize) -> &Path {
        &self.files[self.file_index(t)]
    }

    fn file_index(&self, t: usize) -> usize {
        self.starts.partition_point(|&s| s <= t) - 1
    }

    /// Timepoint `t` as messages naming `file_of(t)` say it: the series' timepoint, and where the file
    /// holds several (a movie among several) the frame within that file, so the two numbers never clash.
    pub fn timepoint(&self, t: usize) -> String {
        let i = self.file_index(t);
        match t - self.starts[i] {
            // A file of one timepoint has no frames to tell apart.
            local if local != t && self.lens[i] > 1 => {
                format!("timepoint {t} (frame {local} of this file)")
            }
            _ => format!("timepoint {t}"),
        }
    }

    /// Chunk shape of the (first file's) dataset, if it is chunked.
    pub fn chunks(&self) -> Option<Vec<usize>> {
        self.chunks.clone()
    }

    /// Bytes the read path holds besides the volume it returns: the chunk cache kept for a dataset whose
    /// chunks span several timepoints, and the float64 copy or block a read converts from.
    pub fn read_buffer_bytes(&self) -> usize {
        // Saturating: a declared shape past the address space must reach the memory check's refusal,
        // not overflow here.
        let voxels = (self.shape.iter()).fold(1usize, |a, &n| a.saturating_mul(n));
        let convert = if self.dtype == Dtype::F64 {
            voxels.saturating_mul(8)
        } else {
            0
        };
        let typed = voxels.saturating_mul(self.dtype.size());
        if self.tiff.is_some() {
            // One decoded page, typed, beside the volume.
            return (voxels / self.shape[0].max(1)).saturating_mul(self.dtype.size());
        }
        if let Some(z) = &self.zarr {
            // The typed copy zarrs returns, plus the decoded chunks of the volume: a chunk spanning
            // several timepoints (or channels) is decoded whole.
            return typed.saturating_add(typed.saturating_mul(z.chunk_span()));
        }
        let block = RAW_BLOCK_BYTES.min(typed);
        self.cache_bytes.saturating_add(convert.max(block))
    }

    /// One line for the run summary and `info`: how many files, the first and last, and the axes.
    pub fn inputs_summary(&self) -> String {
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        };
        let files = match self.files.len() {
            1 => format!("1 file, {}", name(&self.files[0])),
            n => format!(
                "{n} files, {} … {}",
                name(&self.files[0]),
                name(&self.files[n - 1])
            ),
        };
        let files = match (&self.zarr, &self.tiff) {
            (Some(z), _) => z.summary(),
            (_, Some(t)) => t.summary(),
            _ => files,
        };
        let [z, y, x] = self.shape;
        let axes = match self.axes {
            Axes::Tzyx => format!(
                "axes tzyx: {} volumes of (z, y, x) = ({z}, {y}, {x})",
                self.len
            ),
            Axes::Tyx => format!(
                "axes tyx: {} frames of (y, x) = ({y}, {x}), each a volume of z = 1{}",
                self.len,
                if self.files.len() == 1 {
                    " (--axes zyx reads a 3-D dataset as one volume)"
                } else {
                    ", the files concatenated in time"
                }
            ),
            Axes::Zyx => format!("axes zyx: one volume of (z, y, x) = ({z}, {y}, {x}) per file"),
        };
        format!("{files}; {axes}")
    }

    /// Volume `t` as f32 (integers exactly up to 2^24, float64 rounded to nearest). A float64 value beyond
    /// float32's range is an error naming it: it is neither NaN nor Inf in the file, and no stage could
    /// compute with it. Contiguous little-endian datasets stored in the file opened (h5py's default layout,
    /// and the notebook's) are read with plain file I/O and converted here; others by HDF5.
    pub fn read(&self, t: usize) -> Result<Array3<f32>> {
        if t >= self.len {
            return Err(Error::Data(format!(
                "timepoint {t} out of range: {} has {} timepoints",
                self.describe_source(),
                self.len
            )));
        }
        if let Some(z) = &self.zarr {
            return z.read(t, |bad| self.check_range(bad, &self.files[0], t));
        }
        let i = self.file_index(t);
        let local = t - self.starts[i];
        if let Some(tf) = &self.tiff {
            let path = &self.files[i];
            return tf.read(i, local, &self.timepoint(t), |bad| {
                self.check_range(bad, path, t)
            });
        }
        let path = &self.files[i];
        let mut held = self.held.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((hi, ds)) = held.as_ref() {
            if *hi == i {
                return self.read_hdf5(ds, path, t, local);
            }
        }
        *held = None;
        let (file, ds) = self.open_dataset(i, t)?;
        if let Some(offset) = raw_location(&file, &ds, self.dtype) {
            // Plain file I/O from here: HDF5 is done with this file (the handles close first).
            drop(ds);
            drop(file);
            let offset = self.volume_offset(path, offset, local, t)?;
            let mut vol = Array3::<f32>::zeros(self.shape);
            huge_pages(vol.as_slice_mut().expect("standard layout"));
            let bad = read_raw(
                path,
                offset,
                self.dtype,
                vol.as_slice_mut().expect("standard layout"),
            )
            .map_err(|e| self.raw_err(path, t, "reading", e))?;
            self.check_range(bad, path, t)?;
            return Ok(vol);
        }
        let vol = self.read_hdf5(&ds, path, t, local)?;
        if self.lens[i] > 1 {
            *held = Some((i, ds));
        }
        Ok(vol)
    }

    /// Volume `t` read in place where it can be: float32 stored raw (contiguous, uncompressed,
    /// little-endian) in an HDF5 file is mapped into memory, its pages shared with the page cache
    /// (no copy, no fresh memory: on a run that only z-scores, most of the read's cost), when the
    /// process ends a run whose mapped input shrinks with an error rather than a crash
    /// (`cleanup::bus_errors_handled`) and `GPUPREP_MAP_INPUTS` is not `0`; read as `read` does
    /// otherwise. The same checks as `read`; the file's bytes are never written.
    pub fn read_in_place(&self, t: usize) -> Result<Volume> {
        #[cfg(unix)]
        if let Some(v) = self.map(t)? {
            return Ok(Volume::Mapped(v));
        }
        self.read(t).map(Volume::Owned)
    }

    #[cfg(unix)]
    fn map(&self, t: usize) -> Result<Option<MappedVolume>> {
        if self.zarr.is_some()
            || self.tiff.is_some()
            || self.dtype != Dtype::F32
            || cfg!(not(target_endian = "little"))
            || t >= self.len
            || !crate::cleanup::bus_errors_handled()
            || std::env::var_os(MAP_ENV).is_some_and(|v| v == "0")
        {
            return Ok(None);
        }
        let i = self.file_index(t);
        let local = t - self.starts[i];
        let path = &self.files[i];
        let (file, ds) = self.open_dataset(i, t)?;
        let Some(offset) = raw_location(&file, &ds, self.dtype) else {
            return Ok(None);
        };
        drop(ds);
        drop(file);
        let offset = self.volume_offset(path, offset, local, t)?;
        MappedVolume::map(path, offset, self.shape).map_err(|e| self.raw_err(path, t, "mapping", e))
    }

    /// Opens input file `i` and its dataset for timepoint `t`, checking the dataset's shape again.
    fn open_dataset(&self, i: usize, t: usize) -> Result<(hdf5::File, hdf5::Dataset)> {
        let path = &self.files[i];
        let mut options = hdf5::File::with_options();
        if self.cache_bytes > 0 {
            options.with_fapl(|p| p.chunk_cache(self.cache_slots, self.cache_bytes, 1.0));
        }
        let file = options.open(path).map_err(|e| Error::Input {
            path: path.clone(),
            message: format!(
                "cannot be opened to read dataset '{}' at {} any more ({})",
                self.dataset,
                self.timepoint(t),
                first_line(&e)
            ),
        })?;
        let ds = file
            .dataset(&self.dataset)
            .map_err(|e| self.hdf5_err(path, t, e))?;
        // The files were checked at open; recheck the shape so a file replaced mid-run is an error, not a
        // silently misread volume.
        let expected = self.file_shape(i);
        if ds.shape() != expected {
            return Err(Error::Input {
                path: path.clone(),
                message: format!(
                    "dataset '{}' changed shape to {} since it was opened (expected {})",
                    self.dataset,
                    fmt_shape(&ds.shape()),
                    fmt_shape(&expected)
                ),
            });
        }
        Ok((file, ds))
    }

    /// The byte offset of volume `local` of a raw dataset whose data starts at `offset`.
    fn volume_offset(&self, path: &Path, offset: u64, local: usize, t: usize) -> Result<u64> {
        let voxels: usize = self.shape.iter().product();
        // The offset comes from the file: a crafted one must not wrap around to other bytes.
        (local as u64)
            .checked_mul((voxels * self.dtype.size()) as u64)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| Error::Input {
                path: path.to_path_buf(),
                message: format!(
                    "dataset '{}' at {}: its data offset ({offset}) lies past any file size",
                    self.dataset,
                    self.timepoint(t)
                ),
            })
    }

    fn raw_err(&self, path: &Path, t: usize, doing: &str, e: std::io::Error) -> Error {
        Error::Input {
            path: path.to_path_buf(),
            message: format!(
                "{doing} dataset '{}' at {} ({e})",
                self.dataset,
                self.timepoint(t)
            ),
        }
    }

    fn read_hdf5(
        &self,
        ds: &hdf5::Dataset,
        path: &Path,
        t: usize,
        local: usize,
    ) -> Result<Array3<f32>> {
        fn slice<T: hdf5::H5Type>(
            ds: &hdf5::Dataset,
            axes: Axes,
            local: usize,
        ) -> hdf5::Result<Array3<T>> {
            match axes {
                Axes::Tzyx => ds.read_slice(s![local, .., .., ..]),
                Axes::Tyx => ds.read_slice(s![local..local + 1, .., ..]),
                Axes::Zyx => ds.read(),
            }
        }
        if self.dtype != Dtype::F64 {
            return slice::<f32>(ds, self.axes, local).map_err(|e| self.hdf5_err(path, t, e));
        }
        // float64 is converted here, not by HDF5, which would turn values beyond float32's range into ±inf.
        let wide = slice::<f64>(ds, self.axes, local).map_err(|e| self.hdf5_err(path, t, e))?;
        let mut vol = Array3::<f32>::zeros(self.shape);
        let mut bad = OutOfRange::default();
        bad.convert(
            wide.iter().copied(),
            vol.as_slice_mut().expect("standard layout"),
            0,
        );
        self.check_range(bad, path, t)?;
        Ok(vol)
    }

    fn check_range(&self, bad: OutOfRange, path: &Path, t: usize) -> Result<()> {
        let Some((index, value)) = bad.first else {
            return Ok(());
        };
        let [_, ny, nx] = self.shape;
        let (z, y, x) = (index / (ny * nx), index / nx % ny, index % nx);
        let others = match bad.count {
            1 => String::new(),
            n => format!(" (and {} more in this volume)", n - 1),
        };
        Err(Error::Input {
            path: path.to_path_buf(),
            message: format!(
                "dataset '{}', {}, voxel (z, y, x) = ({z}, {y}, {x}): float64 value {value:e} is \
                 beyond float32's range (±{:e}){others}; gpuprep computes in float32: rescale the data \
                 (--nonfinite only covers NaN/±Inf stored in the file)",
                self.dataset,
                self.timepoint(t),
                f32::MAX
            ),
        })
    }

    fn hdf5_err(&self, path: &Path, t: usize, source: hdf5::Error) -> Error {
        crate::hdf5_error(
            path,
            format!(
                "reading dataset '{}' at {}",
                self.dataset,
                self.timepoint(t)
            ),
            source,
        )
    }

    /// The shape file `i`'s dataset had when the source was opened.
    fn file_shape(&self, i: usize) -> Vec<usize> {
        let [z, y, x] = self.shape;
        match self.axes {
            Axes::Tzyx => vec![self.lens[i], z, y, x],
            Axes::Tyx => vec![self.lens[i], y, x],
            Axes::Zyx => vec![z, y, x],
        }
    }

    fn describe_source(&self) -> String {
        if self.files.len() == 1 {
            format!("{} (dataset '{}')", self.files[0].display(), self.dataset)
        } else {
            format!("the {} input files", self.files.len())
        }
    }
}

/// The most a chunk cache may hold: a quarter of the memory `memory::available` reports (it honours
/// `GPUPREP_MEMORY_LIMIT` and cgroup limits), 2 GiB where nothing can be read.
fn cache_limit() -> Result<usize> {
    Ok(gpuprep_core::host::available()?
        .map_or(2 << 30, |a| (a.bytes / 4).min(usize::MAX as u128) as usize))
}

/// Chunk cache (bytes, slots) for reading a file of many timepoints one volume at a time: none when each
/// chunk holds one timepoint, else room for every chunk one volume touches, so consecutive volumes
/// reuse them instead of decompressing them again (a chunk spanning the whole series was otherwise
/// decompressed once per volume). Refused past `cache_limit`.
fn volume_cache(file: &Path, p: &Probe, dataset: &str, dtype: Dtype) -> Result<(usize, usize)> {
    let Some(chunk) = &p.chunks else {
        return Ok((0, 0));
    };
    if chunk.len() != p.shape.len() || chunk[0] <= 1 {
        return Ok((0, 0));
    }
    let per_volume: usize = p.shape[1..]
        .iter()
        .zip(&chunk[1..])
        .map(|(&n, &c)| n.div_ceil(c.max(1)))
        .product();
    let chunk_bytes = chunk.iter().product::<usize>().saturating_mul(dtype.size());
    let bytes = per_volume.saturating_mul(chunk_bytes);
    let limit = cache_limit()?;
    if bytes > limit {
        return Err(Error::Input {
            path: file.to_path_buf(),
            message: format!(
                "dataset '{dataset}' is stored in chunks of {} ({} each) spanning {} timepoints; reading \
                 it volume by volume needs {per_volume} of them ({}) in memory at once, more than the {} \
                 allowed (a quarter of the available memory); rewrite it with chunks of one timepoint \
                 (e.g. h5repack -l CHUNK=1x...)",
                fmt_shape(chunk),
                gpuprep_core::fmt::fmt_bytes(chunk_bytes as u128),
                chunk[0],
                gpuprep_core::fmt::fmt_bytes(bytes as u128),
                gpuprep_core::fmt::fmt_bytes(limit as u128)
            ),
        });
    }
    let total: usize = p
        .shape
        .iter()
        .zip(chunk)
        .map(|(&n, &c)| n.div_ceil(c.max(1)))
        .product();
    // A chunk's slot is its linear index modulo the slot count: with a slot per chunk none collide.
    Ok((bytes + (1 << 20), total.clamp(521, 1 << 20)))
}

/// File offset of a dataset's elements when plain file I/O can read them: storage in the very file
/// opened (not behind an external link, not in external raw files, not a virtual dataset), contiguous
/// layout (so no filters), storage allocated, and little-endian elements of `dtype`'s size. Such reads
/// stay out of the hdf5 crate's global lock, which serialises every HDF5 call in the process: the reader
/// thread would otherwise wait for the writer's HDF5 writes (and they for it), and HDF5's element-wise
/// conversion is slower than the one in `read_raw`.
fn raw_location(file: &hdf5::File, ds: &hdf5::Dataset, dtype: Dtype) -> Option<u64> {
    use hdf5::datatype::ByteOrder;
    if ds.layout() != hdf5::dataset::Layout::Contiguous || !ds.filters().is_empty() {
        return None;
    }
    // An external link resolves to a dataset in another file, whose offset means nothing in this one.
    let own = ds.filename();
    if own.is_empty() || own != file.filename() {
        return None;
    }
    let dcpl = ds.dcpl().ok()?;
    if !dcpl.external().is_empty() {
        return None;
    }
    let dt = ds.dtype().ok()?;
    let little = match dt.byte_order() {
        ByteOrder::LittleEndian => true,
        ByteOrder::None => dt.size() == 1,
        _ => false,
    };
    // The whole type, not only its size: a file replaced mid-run by int32 for float32 must not be
    // reinterpreted (HDF5 would convert it).
    let same_type = dt
        .to_descriptor()
        .ok()
        .and_then(|d| Dtype::from_descriptor(&d))
        == Some(dtype);
    (little && same_type).then(|| ds.offset()).flatten()
}

/// Asks the kernel to back `buf` (a fresh allocation not yet touched) with 2 MiB pages where it
/// can: a volume read into fresh memory otherwise takes a page fault per 4 KiB, which costs a reader
/// about as much as copying the data from the page cache. Only a hint (Linux's transparent huge
/// pages in `madvise` mode, the usual default); elsewhere, or refused, nothing changes.
pub fn huge_pages<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buf);
        let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if hi > lo {
            // SAFETY: [lo, hi) lies within `buf`, which this process owns; MADV_HUGEPAGE changes
            // only how its pages are backed, never their contents.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// An error unless `file` holds `bytes` bytes at `offset`.
fn check_holds(file: &std::fs::File, offset: u64, bytes: u64) -> std::io::Result<()> {
    let needed = offset.checked_add(bytes).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the dataset's data offset {offset} lies past any file size"),
        )
    })?;
    let len = file.metadata()?.len();
    if len < needed {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the file is {len} bytes but the dataset's data ends at byte {needed}: truncated?"
            ),
        ));
    }
    Ok(())
}

/// The environment variable that turns off reading inputs in place (`0`), for comparisons.
pub const MAP_ENV: &str = "GPUPREP_MAP_INPUTS";

/// A volume as a reader hands it on: in memory, or mapped from its file (`Source::read_in_place`).
#[derive(Debug)]
pub enum Volume {
    Owned(Array3<f32>),
    #[cfg(unix)]
    Mapped(MappedVolume),
}

impl Volume {
    pub fn view(&self) -> ArrayView3<'_, f32> {
        match self {
            Volume::Owned(a) => a.view(),
            #[cfg(unix)]
            Volume::Mapped(m) => m.view(),
        }
    }

    /// The volume in memory of its own (a mapped one copied), to be changed.
    pub fn into_owned(self) -> Array3<f32> {
        match self {
            Volume::Owned(a) => a,
            #[cfg(unix)]
            Volume::Mapped(m) => m.view().to_owned(),
        }
    }
}

/// A float32 volume's bytes in its input file, mapped read-only and private: the process never
/// writes them, and the file's pages are shared with the page cache rather than copied.
#[cfg(unix)]
#[derive(Debug)]
pub struct MappedVolume {
    map: memmap2::Mmap,
    /// Where the volume starts in `map` (the map starts on a page boundary).
    start: usize,
    shape: [usize; 3],
    _region: crate::cleanup::MappedRegion,
}

#[cfg(unix)]
impl MappedVolume {
    /// Maps the float32 volume of `shape` at byte `offset` of `path`; `None` where its data is not
    /// aligned for float32 (then it is read instead).
    fn map(path: &Path, offset: u64, shape: [usize; 3]) -> std::io::Result<Option<MappedVolume>> {
        let bytes = shape.iter().product::<usize>() * std::mem::size_of::<f32>();
        if !offset.is_multiple_of(std::mem::align_of::<f32>() as u64) {
            return Ok(None);
        }
        let file = std::fs::File::open(path)?;
        // Mapping past the file's end would fault on first touch, not fail here.
        check_holds(&file, offset, bytes as u64)?;
        // SAFETY: `page_size` only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let base = offset / page * page;
        let start = (offset - base) as usize;
        // SAFETY: read-only and private; the file shrinking under the map raises SIGBUS on access,
        // which `cleanup` turns into an error naming the file (mapping is only done when it will).
        // Populated: the pages are brought in by the reader thread, not by the kernels' first touch.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(base)
                .len(start + bytes)
                .populate()
                .map(&file)?
        };
        let _region = crate::cleanup::MappedRegion::new(map.as_ptr() as usize, map.len(), path);
        Ok(Some(MappedVolume {
            map,
            start,
            shape,
            _region,
        }))
    }

    pub fn view(&self) -> ArrayView3<'_, f32> {
        let bytes = &self.map[self.start..];
        let values: &[f32] = bytemuck::cast_slice(&bytes[..bytes.len() / 4 * 4]);
        ArrayView3::from_shape(self.shape, values).expect("the map holds the whole volume")
    }
}

/// Reads `out.len()` little-endian `dtype` elements at byte `offset` of `path` into `out`, in blocks
/// of a few MiB (bounded memory whatever the volume size); reports float64 values float32 cannot hold.
fn read_raw(
    path: &Path,
    offset: u64,
    dtype: Dtype,
    out: &mut [f32],
) -> std::io::Result<OutOfRange> {
    use std::io::{Read, Seek, SeekFrom};
    let size = dtype.size();
    let mut file = std::fs::File::open(path)?;
    check_holds(&file, offset, (out.len() * size) as u64)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bad = OutOfRange::default();
    if dtype == Dtype::F32 && cfg!(target_endian = "little") {
        // The file's bytes are the values: straight into place, no intermediate copy.
        file.read_exact(bytemuck::cast_slice_mut(out))?;
        return Ok(bad);
    }
    let mut bytes = vec![0u8; RAW_BLOCK_BYTES.min(out.len() * size)];
    let per_block = bytes.len() / size;
    for (block, dst) in out.chunks_mut(per_block).enumerate() {
        let src = &mut bytes[..dst.len() * size];
        file.read_exact(src)?;
        let src = src.chunks_exact(size);
        macro_rules! convert {
            ($t:ty) => {
                dst.iter_mut()
                    .zip(src)
                    .for_each(|(d, b)| *d = <$t>::from_le_bytes(b.try_into().unwrap()) as f32)
            };
        }
        match dtype {
            Dtype::U8 => convert!(u8),
            Dtype::U16 => convert!(u16),
            Dtype::I16 => convert!(i16),
            Dtype::I32 => convert!(i32),
            Dtype::F32 => convert!(f32),
            Dtype::F64 => bad.convert(
                src.map(|b| f64::from_le_bytes(b.try_into().unwrap())),
                dst,
                block * per_block,
            ),
        }
    }
    Ok(bad)
}

/// The checks one file must pass on its own: rank (as `axes` says; 4 only when it is the only input),
/// nonzero sizes, dtype. `explicit`: the axes came from `--axes`, so a mismatch names the flag.
fn check_probe(
    file: &Path,
    p: &Probe,
    dataset: &str,
    nfiles: usize,
    axes: Axes,
    explicit: bool,
) -> Result<()> {
    let rank = p.shape.len();
    let message = if rank == 4 && nfiles > 1 && (axes == Axes::Tzyx || !explicit) {
        Some(format!(
            "dataset '{dataset}' is 4-D {}; a 4-D (t, z, y, x) dataset must be the only input, not one of \
             {nfiles} files",
            fmt_shape(&p.shape),
        ))
    } else if rank != axes.rank() && explicit {
        Some(format!(
            "dataset '{dataset}' has shape {} ({rank}-D) but --axes {axes} expects a {} dataset",
            fmt_shape(&p.shape),
            axes.layout()
        ))
    } else if rank != axes.rank() {
        Some(format!(
            "dataset '{dataset}' has shape {} ({rank}-D); expected a 3-D (z, y, x) volume per file, a 3-D \
             (t, y, x) movie, or one file with a 4-D (t, z, y, x) dataset",
            fmt_shape(&p.shape),
        ))
    } else {
        None
    };
    if let Some(message) = message {
        return Err(Error::Input {
            path: file.to_path_buf(),
            message,
        });
    }
    if p.shape.contains(&0) {
        return Err(Error::Input {
            path: file.to_path_buf(),
            message: format!(
                "dataset '{dataset}' has shape {}; every dimension must be nonzero",
                fmt_shape(&p.shape)
            ),
        });
    }
    if Dtype::from_descriptor(&p.desc).is_none() {
        return Err(Error::Input {
            path: file.to_path_buf(),
            message: format!(
                "dataset '{dataset}' has unsupported type {}; supported: {}",
                p.desc,
                Dtype::ALL.map(Dtype::name).join(", ")
            ),
        });
    }
    Ok(())
}

/// One line per input file for `gpuprep info`: path, dataset, shape, dtype, storage, compression, and why
/// it cannot be read (`unusable: …`) when it cannot on its own.
///
/// Unlike [`Source::open`] it describes datasets of any rank and type (that is what `info` is for), and only
/// fails where there is nothing to describe: a missing path, a file that is not HDF5, or no such dataset.
pub fn describe(inputs: &[String], dataset: &str) -> Result<Vec<String>> {
    describe_with(inputs, dataset, OpenOptions::default())
}

/// [`describe`] with the format and axes `opts` give (`info --format`, `--axes`).
pub fn describe_with(inputs: &[String], dataset: &str, opts: OpenOptions) -> Result<Vec<String>> {
    match opts.format.unwrap_or_else(|| detect_format(inputs)) {
        Format::Zarr => {
            if let [one] = inputs {
                return Ok(vec![zarr::ZarrInput::open(
                    Path::new(one),
                    dataset,
                    None,
                    0,
                )?
                .describe()]);
            }
        }
        Format::Tiff => {
            let expanded = expand_inputs(inputs, Format::Tiff)?;
            let lone = expanded.len() == 1 && expanded[0].named && inputs.len() == 1;
            let files: Vec<PathBuf> = expanded.into_iter().map(|i| i.path).collect();
            let axes = opts.axes.or(lone.then_some(Axes::Tyx));
            return Ok(tiff::describe_files(&files, axes));
        }
        Format::Hdf5 => {}
    }
    let files = expand_inputs(inputs, Format::Hdf5)?;
    let mut lines = Vec::with_capacity(files.len());
    for f in &files {
        let Some(p) = probe(&f.path, dataset, f.from_dir)? else {
            lines.push(format!(
                "{}: skipped: an output of gpuprep (root attribute gpuprep_version); name it explicitly \
                 to read it",
                f.path.display()
            ));
            continue;
        };
        let dtype = match Dtype::from_descriptor(&p.desc) {
            Some(d) => d.to_string(),
            None => format!("{} (unsupported)", p.desc),
        };
        use hdf5::dataset::Layout;
        let layout = match (&p.layout, &p.chunks) {
            (Layout::Virtual, _) => "virtual (mapped from other datasets)".to_string(),
            (_, Some(c)) => format!("chunks {}", fmt_shape(c)),
            (Layout::Compact, _) => "compact".to_string(),
            _ if p.external > 0 => format!("contiguous in {} external raw file(s)", p.external),
            _ => "contiguous".to_string(),
        };
        let compression = if p.filters.is_empty() {
            "no compression".to_string()
        } else {
            p.filters
                .iter()
                .map(filter_name)
                .collect::<Vec<_>>()
                .join("+")
        };
        let rank = p.shape.len();
        let unusable = if !(3..=4).contains(&rank) {
            format!(
                "; unusable: {rank}-D, expected 3-D (z, y, x) or (t, y, x), or 4-D (t, z, y, x)"
            )
        } else if p.shape.contains(&0) {
            "; unusable: an axis of length 0".to_string()
        } else if Dtype::from_descriptor(&p.desc).is_none() {
            format!(
                "; unusable: type {}, expected one of {}",
                p.desc,
                Dtype::ALL.map(Dtype::name).join(", ")
            )
        } else {
            String::new()
        };
        lines.push(format!(
            "{}: dataset '{dataset}' shape {} {dtype}, {layout}, {compression}{unusable}",
            f.path.display(),
            fmt_shape(&p.shape)
        ));
    }
    Ok(lines)
}

/// The line `gpuprep info` ends its file list with: what a run would read (see
/// [`Source::inputs_summary`]), or why it would refuse.
pub fn describe_set(inputs: &[String], dataset: &str, opts: OpenOptions) -> String {
    match Source::open_inner(inputs, dataset, opts, false) {
        Ok(s) => format!("input: {}", s.inputs_summary()),
        Err(e) => format!("unusable as input: {e}"),
    }
}

/// Command-line inputs as the strings the library takes, or an error naming the one that is not valid UTF-8
/// (HDF5 opens files by UTF-8 names only, so such a path could not be read).
pub fn utf8_inputs(inputs: &[PathBuf]) -> Result<Vec<String>> {
    inputs
        .iter()
        .map(|p| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| Error::InvalidParameter {
                    name: "inputs".into(),
                    message: format!(
                    "{:?} is not valid UTF-8, and HDF5 opens files by UTF-8 names only; rename it",
                    p.as_os_str()
                ),
                })
        })
        .collect()
}

fn filter_name(f: &hdf5::filters::Filter) -> String {
    use hdf5::filters::Filter;
    match f {
        Filter::Deflate(level) => format!("gzip({level})"),
        Filter::Shuffle => "shuffle".into(),
        Filter::Fletcher32 => "fletcher32".into(),
        Filter::SZip(..) => "szip".into(),
        Filter::NBit => "nbit".into(),
        Filter::ScaleOffset(..) => "scaleoffset".into(),
        other => format!("{other:?}"),
    }
}

/// Whether `p` is an HDF5 file written by gpuprep (root attribute `gpuprep_version`).
fn is_gpuprep_output(p: &Path) -> bool {
    p.is_file()
        && hdf5::File::open(p).is_ok_and(|f| {
            f.attr_names()
                .is_ok_and(|a| a.iter().any(|n| n == "gpuprep_version"))
        })
}

/// `--channel` past the channels an input has.
fn channel_err(path: &Path, channel: usize, channels: usize) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        message: format!(
            "--channel {channel} is out of range: it has {channels} channel{}",
            if channels == 1 { "" } else { "s" }
        ),
    }
}

fn is_h5_name(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "h5" || e == "hdf5")
}

/// A listed or matched path must be a regular file (or a link to one): skipping a broken link or a
/// special file would silently move every later timepoint down by one.
fn check_regular(p: &Path) -> Result<()> {
    let message = match std::fs::metadata(p) {
        Ok(m) if m.is_file() => return Ok(()),
        Ok(m) => {
            let kind = if m.is_dir() {
                "a directory"
            } else {
                use std::os::unix::fs::FileTypeExt;
                let t = m.file_type();
                if t.is_fifo() {
                    "a FIFO"
                } else if t.is_socket() {
                    "a socket"
                } else if t.is_block_device() || t.is_char_device() {
                    "a device"
                } else {
                    "not a regular file"
                }
            };
            format!("is {kind}, not an HDF5 file; remove it or name the inputs explicitly")
        }
        Err(e) => match std::fs::read_link(p) {
            Ok(target) => format!(
                "is a broken symbolic link (to {}); fix or remove it: skipping it would shift every \
                 later timepoint",
                target.display()
            ),
            Err(_) => format!("cannot be read ({e})"),
        },
    };
    Err(Error::Input {
        path: p.to_path_buf(),
        message,
    })
}

/// Orders names as people number files: digit runs by value (t2 before t10), the rest byte by byte;
/// zero-padded names keep their plain order.
fn natural_cmp(a: &Path, b: &Path) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    use std::os::unix::ffi::OsStrExt;
    let (a, b) = (a.as_os_str().as_bytes(), b.as_os_str().as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            fn run(s: &[u8], k: usize) -> (usize, &[u8]) {
                let end = k + s[k..].iter().take_while(|c| c.is_ascii_digit()).count();
                let zeros = s[k..end].iter().take_while(|&&c| c == b'0').count();
                (end, &s[k + zeros..end])
            }
            let ((ei, da), (ej, db)) = (run(a, i), run(b, j));
            let ord = da
                .len()
                .cmp(&db.len())
                .then_with(|| da.cmp(db))
                // Equal values: the shorter spelling (fewer leading zeros) first, so the order is total.
                .then_with(|| (ei - i).cmp(&(ej - j)));
            if ord != Ordering::Equal {
                return ord;
            }
            (i, j) = (ei, ej);
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// Turns command-line inputs into the list of files, in order; every path named must exist, and every
/// directory entry named `*.h5`/`*.hdf5` and every glob match must be a readable regular file.
fn expand_inputs<S: AsRef<Path>>(inputs: &[S], format: Format) -> Result<Vec<Input>> {
    if inputs.is_empty() {
        return Err(Error::InvalidParameter {
            name: "inputs".into(),
            message: "no input given; pass a directory, a glob pattern or HDF5 files".into(),
        });
    }
    let mut files = Vec::new();
    for input in inputs {
        let path = input.as_ref();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
                path: path.into(),
                source,
            })?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| Error::Io {
                    path: path.into(),
                    source,
                })?;
                let p = entry.path();
                if format.takes_name(&p) {
                    check_regular(&p)?;
                    found.push(p);
                }
            }
            if found.is_empty() {
                return Err(Error::Input {
                    path: path.into(),
                    message: match format {
                        Format::Tiff => "directory contains no *.tif or *.tiff files",
                        _ => "directory contains no *.h5, *.hdf5, *.tif or *.tiff files",
                    }
                    .into(),
                });
            }
            found.sort_by(|a, b| natural_cmp(a, b));
            files.extend(found.into_iter().map(|path| Input {
                path,
                from_dir: true,
                named: false,
            }));
        } else if path.symlink_metadata().is_ok() {
            check_regular(path)?;
            files.push(Input {
                path: path.to_path_buf(),
                from_dir: false,
                named: true,
            });
        } else if let Some(pattern) = path.to_str().filter(|s| s.contains(['*', '?', '['])) {
            let paths = glob::glob(pattern).map_err(|e| Error::Input {
                path: path.into(),
                message: format!("invalid glob pattern: {e}"),
            })?;
            let mut found = Vec::new();
            for p in paths {
                let p = p.map_err(|e| Error::Io {
                    path: e.path().to_path_buf(),
                    source: e.into(),
                })?;
                // A subdirectory is plainly not a volume; anything else matched must be one.
                if p.is_dir() && !format.takes_name(&p) {
                    continue;
                }
                check_regular(&p)?;
                found.push(p);
            }
            if found.is_empty() {
                return Err(Error::Input {
                    path: path.into(),
                    message: "glob pattern matches no files".into(),
                });
            }
            found.sort_by(|a, b| natural_cmp(a, b));
            files.extend(found.into_iter().map(|path| Input {
                path,
                from_dir: false,
                named: false,
            }));
        } else {
            return Err(Error::Input {
                path: path.into(),
                // The system says ENAMETOOLONG for these; `exists()` hides it as "missing".
                message: super::sink::name_too_long(path)
                    .unwrap_or_else(|| "no such file or directory".into()),
            });
        }
    }
    Ok(files)
}

/// The same file twice (by device and inode, whatever the spelling: `d d`, `d/a.h5 d/./a.h5`, a hard or
/// symbolic link) would silently double timepoints.
fn check_duplicates(inputs: &[Input]) -> Result<()> {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    let mut seen: HashMap<(u64, u64), &Path> = HashMap::new();
    for input in inputs {
        let m = std::fs::metadata(&input.path).map_err(|source| Error::Io {
            path: input.path.clone(),
            source,
        })?;
        if let Some(first) = seen.insert((m.dev(), m.ino()), &input.path) {
            return Err(Error::Input {
                path: input.path.clone(),
                message: format!(
                    "is the same file as {} (device {}, inode {}); each input may be given once",
                    first.display(),
                    m.dev(),
                    m.ino()
                ),
            });
        }
    }
    Ok(())
}

/// Opens `path` and describes its `dataset`; `None` for an output of gpuprep found by listing a
/// directory (`skip_outputs`), so a second run on the input directory does not read the first one's result.
fn probe(path: &Path, dataset: &str, skip_outputs: bool) -> Result<Option<Probe>> {
    if !path.is_file() {
        return Err(Error::Input {
            path: path.into(),
            message: "is not a regular file".into(),
        });
    }
    if path.to_str().is_none() {
        return Err(Error::Input {
            path: path.into(),
            message: "has a name that is not valid UTF-8, which HDF5 cannot open; rename it".into(),
        });
    }
    if let Err(e) = std::fs::File::open(path) {
        return Err(Error::Input {
            path: path.into(),
            message: format!("cannot be read ({e})"),
        });
    }
    let file = hdf5::File::open(path).map_err(|e| Error::Input {
        path: path.into(),
        message: format!("is not a readable HDF5 file ({})", first_line(&e)),
    })?;
    if skip_outputs
        && file
            .attr_names()
            .is_ok_and(|a| a.iter().any(|n| n == "gpuprep_version"))
    {
        return Ok(None);
    }
    if !file.link_exists(dataset) {
        let members = file.member_names().unwrap_or_default();
        let found = if members.is_empty() {
            "the file is empty".to_string()
        } else {
            format!("found: {}", members.join(", "))
        };
        return Err(Error::Input {
            path: path.into(),
            message: format!(
                "has no dataset '{dataset}' ({found}); pass the dataset name with --dataset"
            ),
        });
    }
    let ds = file.dataset(dataset).map_err(|e| Error::Input {
        path: path.into(),
        message: format!("'{dataset}' is not a readable dataset ({})", first_line(&e)),
    })?;
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| Error::Input {
            path: path.into(),
            message: format!(
                "dataset '{dataset}' has a type gpuprep cannot read ({})",
                first_line(&e)
            ),
        })?;
    Ok(Some(Probe {
        shape: ds.shape(),
        desc,
        chunks: ds.chunk(),
        filters: ds.filters(),
        layout: ds.layout(),
        external: ds.dcpl().map(|p| p.external().len()).unwrap_or(0),
    }))
}

/// HDF5's messages can carry the whole error stack; one line is what users need beside our own words.
pub(crate) fn first_line(e: &hdf5::Error) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::{raw_location, Axes, Source};
    use ndarray::{Array3, Array4};

    /// Values at the edges of each type, so both conversions meet rounding, overflow and NaN.
    fn values<T: hdf5::H5Type + Copy>(conv: impl Fn(f64) -> T) -> Vec<T> {
        let edge = [
            0.0,
            1.0,
            -1.0,
            0.5,
            127.0,
            255.0,
            32767.0,
            -32768.0,
            65535.0,
            16777217.0,
            2147483647.0,
            -2147483648.0,
            1e39,
            -1e39,
            1e-50,
            f64::NAN,
            f64::INFINITY,
            std::f64::consts::PI,
        ];
        (0..3 * 4 * 5)
            .map(|i| conv(edge[i % edge.len()] * if i > 17 { 0.37 } else { 1.0 }))
            .collect()
    }

    fn check<T: hdf5::H5Type + Copy>(name: &str, conv: impl Fn(f64) -> T) {
        let dir = tempfile::tempdir().unwrap();
        let v = values(conv);
        let vol = Array3::from_shape_vec((3, 4, 5), v.clone()).unwrap();
        let series = Array4::from_shape_fn((2, 3, 4, 5), |(t, z, y, x)| {
            v[(t + z * 20 + y * 5 + x) % v.len()]
        });
        let (p3, p4, pc) = ["a.h5", "b.h5", "c.h5"].map(|f| dir.path().join(f)).into();
        {
            let f = hdf5::File::create(&p3).unwrap();
            f.new_dataset_builder()
                .with_data(&vol)
                .create("default")
                .unwrap();
            assert!(
                raw_location(
                    &f,
                    &f.dataset("default").unwrap(),
                    Source::open_with(&[p3.display().to_string()], "default", Some(Axes::Zyx))
                        .unwrap()
                        .dtype()
                )
                .is_some(),
                "{name}: contiguous is read raw"
            );
            let f = hdf5::File::create(&p4).unwrap();
            f.new_dataset_builder()
                .with_data(&series)
                .create("default")
                .unwrap();
            let f = hdf5::File::create(&pc).unwrap();
            f.new_dataset_builder()
                .with_data(&vol)
                .chunk((1, 2, 5))
                .create("default")
                .unwrap();
        }
        let same = |a: &Array3<f32>, b: &Array3<f32>| {
            a.iter()
                .zip(b.iter())
                .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
        };
        for (p, is_4d) in [(&p3, false), (&p4, true), (&pc, false)] {
            let axes = if is_4d { Axes::Tzyx } else { Axes::Zyx };
            let src = Source::open_with(&[p.display().to_string()], "default", Some(axes)).unwrap();
            let ds = hdf5::File::open(p).unwrap().dataset("default").unwrap();
            for t in 0..src.len() {
                let by_hdf5: Array3<f32> = if is_4d {
                    ds.read_slice(ndarray::s![t, .., .., ..]).unwrap()
                } else {
                    ds.read().unwrap()
                };
                let ours = src.read(t).unwrap();
                assert!(
                    same(&ours, &by_hdf5),
                    "{name} {p:?} t={t}: {ours} vs {by_hdf5}"
                );
            }
        }
    }

    #[test]
    fn raw_reads_convert_exactly_as_hdf5_does() {
        check("uint8", |v| v.clamp(0.0, 255.0) as u8);
        check("uint16", |v| v.clamp(0.0, 65535.0) as u16);
        check("int16", |v| v.clamp(-32768.0, 32767.0) as i16);
        check("int32", |v| v as i32);
        check("float32", |v| v as f32);
        // Beyond float32's range float64 is an error rather than HDF5's ±inf (tests/reliability_input.rs).
        check("float64", |v| {
            if v.abs() > f32::MAX as f64 {
                v / 10.0
            } else {
                v
            }
        });
    }

    #[test]
    fn natural_order_numbers_by_value_and_is_total() {
        use std::os::unix::ffi::OsStrExt;
        let mut names: Vec<std::path::PathBuf> = [
            &b"t10.h5"[..],
            b"t2.h5",
            b"t01.h5",
            b"t1.h5",
            b"s9.h5",
            b"t1\xff.h5",
            b"t1.h5.h5",
        ]
        .iter()
        .map(|b| std::ffi::OsStr::from_bytes(b).into())
        .collect();
        names.sort_by(|a, b| super::natural_cmp(a, b));
        let got: Vec<_> = names.iter().map(|p| p.to_string_lossy()).collect();
        assert_eq!(
            got,
            [
                "s9.h5",
                "t1.h5",
                "t1.h5.h5",
                "t1\u{FFFD}.h5",
                "t01.h5",
                "t2.h5",
                "t10.h5"
            ]
        );
    }

    #[test]
    fn a_file_cut_short_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cut.h5");
        {
            let f = hdf5::File::create(&p).unwrap();
            f.new_dataset_builder()
                .with_data(&Array3::<f64>::zeros((8, 16, 16)))
                .create("default")
                .unwrap();
        }
        let src =
            Source::open_with(&[p.display().to_string()], "default", Some(Axes::Zyx)).unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        let err = src.read(0).unwrap_err().to_string();
        assert!(
            err.contains("cut.h5") && err.contains("timepoint 0"),
            "{err}"
        );
    }
}
