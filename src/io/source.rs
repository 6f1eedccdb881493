//! Input volumes: a directory, globs or a list of 3-D HDF5 files (one timepoint each), or one 4-D file.
//!
//! Everything is validated when the source is opened, so a bad file fails before any work starts; reads then
//! stream one volume at a time and open the file per read, so hundreds of inputs never hold hundreds of handles.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use ndarray::{s, Array3};

use super::fmt_shape;
use crate::error::{Error, Result};

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
                flag: "--dtype".into(),
                message: format!(
                    "unknown dtype '{s}'; expected one of {}",
                    Dtype::ALL.map(Dtype::name).join(", ")
                ),
            })
    }
}

/// A validated series of volumes.
#[derive(Clone, Debug)]
pub struct Source {
    files: Vec<PathBuf>,
    dataset: String,
    shape: [usize; 3],
    dtype: Dtype,
    len: usize,
    is_4d: bool,
    chunks: Option<Vec<usize>>,
}

/// What one file's dataset looks like, before the checks that need the other files.
struct Probe {
    shape: Vec<usize>,
    desc: TypeDescriptor,
    chunks: Option<Vec<usize>>,
    filters: Vec<hdf5::filters::Filter>,
}

impl Source {
    /// Opens `inputs` as typed on the command line: directories (their `*.h5` / `*.hdf5` files, sorted by
    /// name), glob patterns (matches sorted) and explicit files, each holding one 3-D volume at `dataset`; or
    /// exactly one file whose `dataset` is 4-D (t, z, y, x).
    pub fn open(inputs: &[String], dataset: &str) -> Result<Source> {
        let files = expand_inputs(inputs)?;
        let mut probes = Vec::with_capacity(files.len());
        for f in &files {
            // Check each file before opening the next, so a 4-D file among several is named as the problem
            // rather than the next file for lacking its dataset.
            let p = probe(f, dataset)?;
            check_probe(f, &p, dataset, files.len())?;
            probes.push(p);
        }
        let is_4d = probes[0].shape.len() == 4;

        let (shape0, desc0) = (&probes[0].shape, &probes[0].desc);
        for (file, p) in files.iter().zip(&probes).skip(1) {
            if &p.shape != shape0 {
                return Err(Error::Input {
                    path: file.to_path_buf(),
                    message: format!(
                        "dataset '{dataset}' has shape {} but {} has {}; every input must have the same shape",
                        fmt_shape(&p.shape),
                        files[0].display(),
                        fmt_shape(shape0)
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

        let spatial = &shape0[shape0.len() - 3..];
        let shape = [spatial[0], spatial[1], spatial[2]];
        let len = if is_4d { shape0[0] } else { files.len() };
        let dtype = Dtype::from_descriptor(desc0).expect("checked above");
        let chunks = probes.swap_remove(0).chunks;
        Ok(Source {
            files,
            dataset: dataset.to_string(),
            shape,
            dtype,
            len,
            is_4d,
            chunks,
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

    /// (z, y, x) of one volume.
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

    pub fn is_4d(&self) -> bool {
        self.is_4d
    }

    /// Chunk shape of the (first file's) dataset, if it is chunked.
    pub fn chunks(&self) -> Option<Vec<usize>> {
        self.chunks.clone()
    }

    /// Volume `t` as f32 (integers exactly up to 2^24, float64 rounded to nearest, beyond f32's range to
    /// ±inf, as HDF5's own conversion). Contiguous little-endian datasets (h5py's default layout, and the
    /// notebook's) are read with plain file I/O and converted here; others by HDF5.
    pub fn read(&self, t: usize) -> Result<Array3<f32>> {
        if t >= self.len {
            return Err(Error::Data(format!(
                "timepoint {t} out of range: {} has {} timepoints",
                self.describe_source(),
                self.len
            )));
        }
        let path = if self.is_4d {
            &self.files[0]
        } else {
            &self.files[t]
        };
        let what = || format!("reading dataset '{}' at t={t}", self.dataset);
        let hdf5_err = |source| Error::Hdf5 {
            path: path.clone(),
            what: what(),
            source,
        };
        let file = hdf5::File::open(path).map_err(|e| Error::Input {
            path: path.clone(),
            message: format!(
                "cannot be opened to read dataset '{}' at t={t} any more ({})",
                self.dataset,
                first_line(&e)
            ),
        })?;
        let ds = file.dataset(&self.dataset).map_err(hdf5_err)?;
        // The files were checked at open; recheck the shape so a file replaced mid-run is an error, not a
        // silently misread volume.
        let expected: Vec<usize> = if self.is_4d {
            vec![self.len, self.shape[0], self.shape[1], self.shape[2]]
        } else {
            self.shape.to_vec()
        };
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
        let voxels: usize = self.shape.iter().product();
        if let Some(offset) = raw_location(&ds, self.dtype) {
            // Plain file I/O from here: HDF5 is done with this file (the handles close first).
            drop(ds);
            drop(file);
            let offset =
                offset + (if self.is_4d { t } else { 0 } * voxels * self.dtype.size()) as u64;
            let mut vol = Array3::<f32>::zeros(self.shape);
            read_raw(
                path,
                offset,
                self.dtype,
                vol.as_slice_mut().expect("standard layout"),
            )
            .map_err(|e| Error::Input {
                path: path.clone(),
                message: format!("{} ({e})", what()),
            })?;
            return Ok(vol);
        }
        let vol = if self.is_4d {
            ds.read_slice::<f32, _, ndarray::Ix3>(s![t, .., .., ..])
                .map_err(hdf5_err)?
        } else {
            ds.read::<f32, ndarray::Ix3>().map_err(hdf5_err)?
        };
        Ok(vol)
    }

    fn describe_source(&self) -> String {
        if self.is_4d {
            format!("{} (dataset '{}')", self.files[0].display(), self.dataset)
        } else {
            format!("the {} input files", self.files.len())
        }
    }
}

/// File offset of a dataset's elements when plain file I/O can read them: contiguous layout (so no
/// filters), storage allocated, and little-endian elements of `dtype`'s size. Such reads stay out of the
/// hdf5 crate's global lock, which serialises every HDF5 call in the process: the reader thread would
/// otherwise wait for the writer's HDF5 writes (and they for it), and HDF5's element-wise conversion is
/// slower than the one in `read_raw`.
fn raw_location(ds: &hdf5::Dataset, dtype: Dtype) -> Option<u64> {
    use hdf5::datatype::ByteOrder;
    if ds.layout() != hdf5::dataset::Layout::Contiguous {
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

/// Reads `out.len()` little-endian `dtype` elements at byte `offset` of `path` into `out`, in blocks
/// of a few MiB (bounded memory whatever the volume size).
fn read_raw(path: &Path, offset: u64, dtype: Dtype, out: &mut [f32]) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    const BLOCK_BYTES: usize = 4 << 20;
    let size = dtype.size();
    let mut file = std::fs::File::open(path)?;
    let needed = offset + (out.len() * size) as u64;
    let len = file.metadata()?.len();
    if len < needed {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the file is {len} bytes but the dataset's data ends at byte {needed}: truncated?"
            ),
        ));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = vec![0u8; BLOCK_BYTES.min(out.len() * size)];
    for dst in out.chunks_mut(bytes.len() / size) {
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
            Dtype::F64 => convert!(f64),
        }
    }
    Ok(())
}

/// The checks one file must pass on its own: rank (3, or 4 when it is the only input), nonzero sizes, dtype.
fn check_probe(file: &Path, p: &Probe, dataset: &str, nfiles: usize) -> Result<()> {
    let expected_rank = if nfiles == 1 && p.shape.len() == 4 {
        4
    } else {
        3
    };
    if p.shape.len() != expected_rank {
        let message = if p.shape.len() == 4 {
            format!(
                "dataset '{dataset}' is 4-D {}; a 4-D (t, z, y, x) dataset must be the only input, \
                 not one of {} files",
                fmt_shape(&p.shape),
                nfiles
            )
        } else {
            format!(
                "dataset '{dataset}' has shape {} ({}-D); expected a 3-D (z, y, x) volume per file \
                 or one file with a 4-D (t, z, y, x) dataset",
                fmt_shape(&p.shape),
                p.shape.len()
            )
        };
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

/// One line per input file for `gpuprep info`: path, dataset, shape, dtype, chunking, compression.
///
/// Unlike [`Source::open`] it describes datasets of any rank and type (that is what `info` is for), and only
/// fails where there is nothing to describe: a missing path, a file that is not HDF5, or no such dataset.
pub fn describe(inputs: &[String], dataset: &str) -> Result<Vec<String>> {
    let files = expand_inputs(inputs)?;
    let mut lines = Vec::with_capacity(files.len());
    for f in &files {
        let p = probe(f, dataset)?;
        let dtype = match Dtype::from_descriptor(&p.desc) {
            Some(d) => d.to_string(),
            None => format!("{} (unsupported)", p.desc),
        };
        let layout = match &p.chunks {
            Some(c) => format!("chunks {}", fmt_shape(c)),
            None => "contiguous".to_string(),
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
        lines.push(format!(
            "{}: dataset '{dataset}' shape {} {dtype}, {layout}, {compression}",
            f.display(),
            fmt_shape(&p.shape)
        ));
    }
    Ok(lines)
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

/// Turns command-line inputs into the list of files, in order; every path named must exist.
fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        return Err(Error::InvalidParameter {
            flag: "input".into(),
            message: "no input given; pass a directory, a glob pattern or HDF5 files".into(),
        });
    }
    let mut files = Vec::new();
    for input in inputs {
        let path = Path::new(input);
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
                let is_h5 = p.extension().is_some_and(|e| e == "h5" || e == "hdf5");
                if is_h5 && p.is_file() {
                    found.push(p);
                }
            }
            if found.is_empty() {
                return Err(Error::Input {
                    path: path.into(),
                    message: "directory contains no *.h5 or *.hdf5 files".into(),
                });
            }
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.to_path_buf());
        } else if input.contains(['*', '?', '[']) {
            let paths = glob::glob(input).map_err(|e| Error::Input {
                path: path.into(),
                message: format!("invalid glob pattern: {e}"),
            })?;
            let mut found = Vec::new();
            for p in paths {
                let p = p.map_err(|e| Error::Io {
                    path: e.path().to_path_buf(),
                    source: e.into(),
                })?;
                if p.is_file() {
                    found.push(p);
                }
            }
            if found.is_empty() {
                return Err(Error::Input {
                    path: path.into(),
                    message: "glob pattern matches no files".into(),
                });
            }
            found.sort();
            files.extend(found);
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

fn probe(path: &Path, dataset: &str) -> Result<Probe> {
    if !path.is_file() {
        return Err(Error::Input {
            path: path.into(),
            message: "is not a regular file".into(),
        });
    }
    let file = hdf5::File::open(path).map_err(|e| Error::Input {
        path: path.into(),
        message: format!("is not a readable HDF5 file ({})", first_line(&e)),
    })?;
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
    Ok(Probe {
        shape: ds.shape(),
        desc,
        chunks: ds.chunk(),
        filters: ds.filters(),
    })
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
    use super::{raw_location, Source};
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
                    &f.dataset("default").unwrap(),
                    Source::open(&[p3.display().to_string()], "default")
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
            let src = Source::open(&[p.display().to_string()], "default").unwrap();
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
        check("float64", |v| v);
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
        let src = Source::open(&[p.display().to_string()], "default").unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        let err = src.read(0).unwrap_err().to_string();
        assert!(err.contains("cut.h5") && err.contains("t=0"), "{err}");
    }
}
