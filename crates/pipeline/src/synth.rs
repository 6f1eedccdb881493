//! Synthetic datasets in the notebook layout (`ind_00000.h5` … with dataset `default`, or one 4-D file),
//! either the notebook's white noise or smooth blobs translated by known shifts, to check registration against.

use std::path::{Path, PathBuf};

use ndarray::{Array3, Zip};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, StandardNormal};
use rayon::prelude::*;

use gpuprep_core::error::{Error, Result};
use gpuprep_core::fmt::fmt_shape;
use gpuprep_io::writer::{write_volume_file, SeriesWriter, TypedVolume};
use gpuprep_io::Dtype;

/// What the volumes contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthMode {
    /// Independent standard-normal noise per voxel, like the notebook's `randn(*dims[1:])`.
    Randn,
    /// Smooth Gaussian blobs translated by a known shift per timepoint, plus noise.
    Realistic,
}

impl SynthMode {
    pub const ALL: [SynthMode; 2] = [SynthMode::Randn, SynthMode::Realistic];

    pub fn name(self) -> &'static str {
        match self {
            SynthMode::Randn => "randn",
            SynthMode::Realistic => "realistic",
        }
    }
}

/// How the volumes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthLayout {
    /// `DIR/ind_00000.h5` … each with a 3-D dataset `default` (the notebook's layout).
    Files,
    /// `DIR/data.h5` with a 4-D dataset `default`.
    FourD,
}

#[derive(Clone, Debug)]
pub struct SynthSpec {
    /// (t, z, y, x).
    pub shape: [usize; 4],
    pub mode: SynthMode,
    pub layout: SynthLayout,
    /// Largest translation per axis, in voxels (Realistic only).
    pub max_shift: f64,
    /// Non-integer shifts (Realistic only).
    pub subpixel: bool,
    /// Standard deviation of the added Gaussian noise, relative to blob amplitudes of about 1 (Realistic only).
    pub noise: f32,
    pub seed: u64,
    pub dtype: Dtype,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            shape: [10, 100, 100, 100],
            mode: SynthMode::Randn,
            layout: SynthLayout::Files,
            max_shift: 5.0,
            subpixel: false,
            noise: 0.05,
            seed: 0,
            dtype: Dtype::F64,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SynthOutput {
    pub files: Vec<PathBuf>,
    /// Per timepoint, the (z, y, x) shift that registers volume t onto volume 0 (Realistic only).
    pub true_shifts: Option<Vec<[f64; 3]>>,
}

/// The dataset name the notebook uses.
pub const DATASET: &str = "default";
/// File the known registration shifts are written to (Realistic only).
pub const SHIFTS_CSV: &str = "true_shifts.csv";

const BACKGROUND: f64 = 0.1;

/// Writes a synthetic dataset into `dir` (created if missing). Refuses to replace an earlier dataset there
/// unless `force`, in which case the old `ind_*.h5`, `data.h5` and `true_shifts.csv` are removed first so none
/// are left over.
pub fn synth(dir: &Path, spec: &SynthSpec, force: bool) -> Result<SynthOutput> {
    validate(spec)?;
    // Before the directory is touched: a job that cannot fit leaves nothing behind.
    let width = crate::memory::check_synth(
        spec.shape,
        spec.dtype.size(),
        spec.mode == SynthMode::Realistic,
        rayon::current_num_threads(),
    )?;
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Output {
            path: dir.into(),
            message: "exists and is not a directory".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.into(),
        source,
    })?;

    let existing = existing_outputs(dir)?;
    if !existing.is_empty() {
        if !force {
            return Err(Error::Output {
                path: dir.into(),
                message: format!(
                    "already holds a dataset ({}{}); pass --force to overwrite",
                    existing[0]
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy(),
                    if existing.len() > 1 {
                        format!(" and {} more", existing.len() - 1)
                    } else {
                        String::new()
                    }
                ),
            });
        }
        for f in &existing {
            std::fs::remove_file(f).map_err(|source| Error::Io {
                path: f.clone(),
                source,
            })?;
        }
    }

    let [nt, nz, ny, nx] = spec.shape;
    let vshape = [nz, ny, nx];
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let model = match spec.mode {
        SynthMode::Randn => None,
        SynthMode::Realistic => {
            let mut blobs = random_blobs(&mut rng, vshape);
            // Blobs pile up in small volumes; scale so the brightest point is about 1 above the background,
            // which keeps `noise` relative to the structure and integer dtypes unsaturated.
            let peak = render(&blobs, [0.0; 3], vshape).fold(0.0f64, |m, &v| m.max(v)) - BACKGROUND;
            if peak > 1.0 {
                blobs.iter_mut().for_each(|b| b.amp /= peak);
            }
            let shifts = random_shifts(&mut rng, spec, vshape);
            Some((blobs, shifts))
        }
    };
    let volume = |t: usize| -> Array3<f64> {
        // One stream per timepoint, so the output does not depend on which worker writes which file.
        let mut rng = StdRng::seed_from_u64(spec.seed ^ splitmix(t as u64 + 1));
        match &model {
            None => Array3::from_shape_simple_fn(vshape, || rng.sample(StandardNormal)),
            Some((blobs, shifts)) => {
                let mut v = render(blobs, shifts[t], vshape);
                if spec.noise > 0.0 {
                    let normal = Normal::new(0.0, spec.noise as f64).expect("noise validated");
                    v.mapv_inplace(|x| x + normal.sample(&mut rng));
                }
                v
            }
        }
    };

    let files = match spec.layout {
        SynthLayout::Files => {
            let files: Vec<PathBuf> = (0..nt)
                .map(|t| dir.join(format!("ind_{t:05}.h5")))
                .collect();
            bounded(nt, width, |t| {
                let path = &files[t];
                let v = volume(t);
                write_volume_file(path, DATASET, &convert(spec.dtype, spec.mode, v.view()))
            })?;
            files
        }
        SynthLayout::FourD => {
            let path = dir.join("data.h5");
            let series = SeriesWriter::create(&path, DATASET, spec.dtype, spec.shape)?;
            // HDF5 calls are serialised by the crate's lock anyway; only the volumes are computed in parallel.
            bounded(nt, width, |t| {
                let v = volume(t);
                series.write(t, &convert(spec.dtype, spec.mode, v.view()))
            })?;
            series.close()?;
            vec![path]
        }
    };

    let true_shifts = match &model {
        None => None,
        Some((_, shifts)) => {
            // Registration undoes the translation: shifting volume t by -s_t gives volume 0 back.
            let reg: Vec<[f64; 3]> = shifts.iter().map(|s| s.map(|v| -v + 0.0)).collect();
            let mut csv = String::from("t,z,y,x\n");
            for (t, r) in reg.iter().enumerate() {
                csv.push_str(&format!("{t},{},{},{}\n", r[0], r[1], r[2]));
            }
            let path = dir.join(SHIFTS_CSV);
            std::fs::write(&path, csv).map_err(|source| Error::Io { path, source })?;
            Some(reg)
        }
    };
    Ok(SynthOutput { files, true_shifts })
}

/// `f(t)` for every timepoint in parallel, in batches of `width`: each call holds whole volumes, and
/// a batch bounds how many exist at once even when a worker waiting inside one call (the parallel
/// `render`) steals another.
fn bounded(nt: usize, width: usize, f: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    let ts: Vec<usize> = (0..nt).collect();
    for batch in ts.chunks(width.max(1)) {
        batch.par_iter().try_for_each(|&t| f(t))?;
    }
    Ok(())
}

fn validate(spec: &SynthSpec) -> Result<()> {
    if spec.shape.contains(&0) {
        return Err(Error::InvalidParameter {
            name: "shape".into(),
            message: format!(
                "{} has a zero size; every dimension must be at least 1",
                fmt_shape(&spec.shape)
            ),
        });
    }
    if !(spec.max_shift.is_finite() && spec.max_shift >= 0.0) {
        return Err(Error::InvalidParameter {
            name: "max shift".into(),
            message: format!("{} is not a finite number >= 0", spec.max_shift),
        });
    }
    if !(spec.noise.is_finite() && spec.noise >= 0.0) {
        return Err(Error::InvalidParameter {
            name: "noise".into(),
            message: format!("{} is not a finite number >= 0", spec.noise),
        });
    }
    Ok(())
}

/// Files a previous `synth` run may have left in `dir`.
fn existing_outputs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.into(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.into(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with("ind_") && name.ends_with(".h5"))
            || name == "data.h5"
            || name == SHIFTS_CSV;
        if ours && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// An anisotropic Gaussian: amplitude, centre and width per axis.
struct Blob {
    amp: f64,
    centre: [f64; 3],
    sigma: [f64; 3],
}

fn random_blobs(rng: &mut StdRng, shape: [usize; 3]) -> Vec<Blob> {
    let n = rng.random_range(20..=60);
    (0..n)
        .map(|_| Blob {
            amp: rng.random_range(0.5..1.0),
            // Size-1 axes keep every blob at 0, so the single plane sees each blob's full amplitude.
            centre: shape.map(|n| {
                // Keep the structure inside the field of view (a sample under a microscope): blobs that
                // cross the edge as they move make the translation ill-defined for any registration.
                let margin = (n as f64 / 4.0).min(8.0);
                if n == 1 {
                    0.0
                } else if n < 8 {
                    rng.random_range(0.0..(n - 1) as f64)
                } else {
                    rng.random_range(margin..(n as f64 - 1.0 - margin))
                }
            }),
            sigma: [(); 3].map(|_| rng.random_range(1.5..4.0)),
        })
        .collect()
}

/// s_0 = 0; later s_t uniform in [-max_shift, max_shift] per axis (rounded unless subpixel; 0 on size-1 axes).
fn random_shifts(rng: &mut StdRng, spec: &SynthSpec, shape: [usize; 3]) -> Vec<[f64; 3]> {
    let m = spec.max_shift;
    (0..spec.shape[0])
        .map(|t| {
            shape.map(|n| {
                let v = if m > 0.0 {
                    rng.random_range(-m..=m)
                } else {
                    0.0
                };
                if t == 0 || n == 1 {
                    0.0
                } else if spec.subpixel {
                    v
                } else {
                    v.round() + 0.0
                }
            })
        })
        .collect()
}

/// f(x - shift), evaluated exactly: each Gaussian is separable, so it is a product of three 1-D profiles.
fn render(blobs: &[Blob], shift: [f64; 3], shape: [usize; 3]) -> Array3<f64> {
    let profile = |b: &Blob, axis: usize| -> Vec<f64> {
        (0..shape[axis])
            .map(|i| {
                let d = (i as f64 - shift[axis] - b.centre[axis]) / b.sigma[axis];
                (-0.5 * d * d).exp()
            })
            .collect()
    };
    let profiles: Vec<[Vec<f64>; 3]> = blobs
        .iter()
        .map(|b| [profile(b, 0), profile(b, 1), profile(b, 2)])
        .collect();
    let mut v = Array3::from_elem(shape, BACKGROUND);
    Zip::indexed(&mut v).par_for_each(|(z, y, x), out| {
        let mut sum = 0.0;
        for (b, p) in blobs.iter().zip(&profiles) {
            sum += b.amp * p[0][z] * p[1][y] * p[2][x];
        }
        *out += sum;
    });
    v
}

/// (scale, offset) mapping float values into a good part of an integer type's range: Realistic values lie in
/// about [0, 1.1] (background 0.1, peak about 1.1), Randn values in about [-5, 5].
fn int_scale(dtype: Dtype, mode: SynthMode) -> (f64, f64) {
    match (dtype, mode) {
        (Dtype::U8, SynthMode::Realistic) => (200.0, 20.0),
        (Dtype::U8, SynthMode::Randn) => (25.0, 128.0),
        (Dtype::U16, SynthMode::Realistic) => (10000.0, 1000.0),
        (Dtype::U16, SynthMode::Randn) => (1000.0, 32768.0),
        (Dtype::I16, SynthMode::Realistic) => (10000.0, 1000.0),
        (Dtype::I16, SynthMode::Randn) => (1000.0, 0.0),
        (Dtype::I32, SynthMode::Realistic) => (1_000_000.0, 100_000.0),
        (Dtype::I32, SynthMode::Randn) => (1_000_000.0, 0.0),
        (Dtype::F32 | Dtype::F64, _) => (1.0, 0.0),
    }
}

fn to_int<T: TryFrom<i64> + Copy>(
    v: ndarray::ArrayView3<f64>,
    scale: f64,
    offset: f64,
    lo: i64,
    hi: i64,
) -> Array3<T> {
    v.mapv(|x| {
        let i = (x * scale + offset).round().clamp(lo as f64, hi as f64) as i64;
        T::try_from(i).ok().expect("clamped into range")
    })
}

/// `v` in `dtype`, integers scaled into a good part of their range (`int_scale`).
fn convert(dtype: Dtype, mode: SynthMode, v: ndarray::ArrayView3<f64>) -> TypedVolume {
    let (scale, offset) = int_scale(dtype, mode);
    match dtype {
        Dtype::U8 => TypedVolume::U8(to_int(v, scale, offset, 0, u8::MAX as i64)),
        Dtype::U16 => TypedVolume::U16(to_int(v, scale, offset, 0, u16::MAX as i64)),
        Dtype::I16 => TypedVolume::I16(to_int(v, scale, offset, i16::MIN as i64, i16::MAX as i64)),
        Dtype::I32 => TypedVolume::I32(to_int(v, scale, offset, i32::MIN as i64, i32::MAX as i64)),
        Dtype::F32 => TypedVolume::F32(v.mapv(|x| x as f32)),
        Dtype::F64 => TypedVolume::F64(v.to_owned()),
    }
}

/// Decorrelates per-timepoint seeds (SplitMix64's finaliser).
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
