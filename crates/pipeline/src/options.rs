//! A run's parameters by name, as the CLI's flags and the Python package's keywords give them, and
//! their one validation into a `RunConfig`.
//!
//! Both front ends fill a `RunOptions` (one field per flag of `gpuprep run`, named as the flag) and call
//! `into_config`; its errors name parameters ("median size"), and each front end restates them under its
//! own spelling (`--median-size`, `median_size=`), so the rules and the wording exist once.

use crate::driver::{NonFinite, ReferenceSpec, RunConfig};
use gpuprep_core::params::{
    BoundaryMode, ConstantVoxels, MedianParams, Normalization, RegisterParams, ShiftParams,
    ZscoreParams,
};
use gpuprep_core::{Error, Result};
use gpuprep_io::source::Format;
use gpuprep_io::{Axes, Compression};
use std::path::PathBuf;

/// The largest upsample factor: 1/1000 voxel is far below any registration's accuracy, and the
/// upsampled DFT's cost grows with it.
pub const MAX_UPSAMPLE: i64 = 1000;

/// The parameters of `gpuprep run`, before validation; `Default` is the CLI's defaults.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub inputs: Vec<String>,
    pub output: PathBuf,
    pub dataset: String,
    pub axes: Option<Axes>,
    /// The input format; `None` detects it from the paths.
    pub format: Option<Format>,
    /// The channel read from an input with several.
    pub channel: usize,
    pub force: bool,
    pub no_median: bool,
    pub median_size: [usize; 3],
    pub median_mode: BoundaryMode,
    pub median_cval: f32,
    pub no_register: bool,
    pub upsample_factor: i64,
    pub normalization: Normalization,
    /// Largest |shift| searched per axis (z, y, x voxels); `None`: unbounded (scikit-image's).
    pub max_shift: Option<[f64; 3]>,
    /// Gaussian smoothing (z, y, x voxels) of the correlation; 0: none (scikit-image's).
    pub smooth_sigma: [f64; 3],
    pub reference: usize,
    /// The half-open range whose mean is the reference, instead of `reference`.
    pub reference_mean: Option<(usize, usize)>,
    pub register_raw: bool,
    pub order: u32,
    pub shift_mode: BoundaryMode,
    pub shift_cval: f32,
    pub no_zscore: bool,
    pub ddof: u32,
    pub constant_voxels: ConstantVoxels,
    pub nonfinite: NonFinite,
    pub compression: Compression,
    /// Zarr outputs: one shard per time slab of chunks.
    pub shard: bool,
    /// Extra stages to keep: "filtered", "registered".
    pub save: Vec<String>,
    /// Bytes pass 1's results may take in memory for the z-score (`None`: a quarter of what is available).
    pub memory_budget: Option<u64>,
    /// Times the reference is refined: the mean of its range's frames registered onto it.
    pub reference_iterations: u32,
    /// Each refinement averages only the N frames of the reference range most correlated with the
    /// current reference after registration (suite2p's template); `None`: all of them.
    pub reference_top: Option<usize>,
    /// scikit-image's `disambiguate=True`: each shift's candidates modulo the volume tried in real space.
    pub disambiguate: bool,
    /// Apply the shifts of this file (a gpuprep output, or CSV/TSV t,z,y,x) instead of registering.
    pub shifts: Option<PathBuf>,
    /// Other channels to write shifted alike: "all" or "1,2" (`None`: none).
    pub apply_to_channels: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            inputs: Vec::new(),
            output: PathBuf::new(),
            dataset: "default".into(),
            axes: None,
            format: None,
            channel: 0,
            force: false,
            no_median: false,
            median_size: [3, 3, 3],
            median_mode: BoundaryMode::Reflect,
            median_cval: 0.0,
            no_register: false,
            upsample_factor: 1,
            normalization: Normalization::Phase,
            max_shift: None,
            smooth_sigma: [0.0; 3],
            reference: 0,
            reference_mean: None,
            register_raw: false,
            order: 3,
            shift_mode: BoundaryMode::Constant,
            shift_cval: 0.0,
            no_zscore: false,
            ddof: 0,
            constant_voxels: ConstantVoxels::Nan,
            nonfinite: NonFinite::Error,
            compression: Compression::None,
            shard: false,
            save: Vec::new(),
            memory_budget: None,
            reference_iterations: 0,
            reference_top: None,
            disambiguate: false,
            shifts: None,
            apply_to_channels: None,
        }
    }
}

/// `u` as an upsample factor: from 1 to `MAX_UPSAMPLE`.
pub fn upsample_factor(u: i64) -> Result<u32> {
    if !(1..=MAX_UPSAMPLE).contains(&u) {
        return Err(Error::InvalidParameter {
            name: "upsample factor".into(),
            message: format!("got {u}; expected an integer from 1 to {MAX_UPSAMPLE}"),
        });
    }
    Ok(u as u32)
}

/// A memory size for `memory_budget` ("8G", "500M", "1.5GiB", a number of bytes; suffixes are powers
/// of 1024).
pub fn memory_budget(text: &str) -> Result<u64> {
    gpuprep_core::host::parse_bytes(text)
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| Error::InvalidParameter {
            name: "memory budget".into(),
            message: format!("got {text:?}; expected a size such as 8G, 500M or a number of bytes"),
        })
}

impl RunOptions {
    /// Every parameter checked and converted before a byte is read.
    pub fn into_config(self) -> Result<RunConfig> {
        let median = if self.no_median {
            None
        } else {
            Some(MedianParams::new(
                self.median_size,
                self.median_mode,
                self.median_cval,
            )?)
        };
        let register = if self.no_register {
            None
        } else {
            let p =
                RegisterParams::new(upsample_factor(self.upsample_factor)?, self.normalization)?
                    .with_smooth_sigma(self.smooth_sigma)?;
            Some(match self.max_shift {
                Some(m) => p.with_max_shift(m)?,
                None => p,
            })
        };
        let reference = match self.reference_mean {
            None => ReferenceSpec::Index(self.reference),
            Some((start, end)) if start < end => ReferenceSpec::Mean { start, end },
            Some((start, end)) => {
                return Err(Error::InvalidParameter {
                    name: "reference range".into(),
                    message: format!("got \"{start}:{end}\"; expected START:END with START < END"),
                })
            }
        };
        if self.shifts.is_some() && self.no_register {
            return Err(Error::InvalidParameter {
                name: "shifts".into(),
                message: "given shifts replace the registration, which is off (drop --no-register)"
                    .into(),
            });
        }
        if let Some(top) = self.reference_top {
            let (start, end) = self
                .reference_mean
                .unwrap_or((self.reference, self.reference + 1));
            let frames = end - start;
            if top == 0 || top > frames {
                return Err(Error::InvalidParameter {
                    name: "reference top".into(),
                    message: format!(
                        "got {top}; expected from 1 to {frames} (the timepoints in the reference range)"
                    ),
                });
            }
            if self.reference_iterations == 0 {
                return Err(Error::InvalidParameter {
                    name: "reference top".into(),
                    message: "it picks the frames each reference iteration averages, and there are none (set reference iterations to 1 or more)".into(),
                });
            }
        }
        if self.disambiguate && (self.no_register || self.shifts.is_some()) {
            return Err(Error::InvalidParameter {
                name: "disambiguation".into(),
                message: "it chooses among a registration's shifts, and the run does not register (registration off or shifts given)".into(),
            });
        }
        let apply_to_channels = match &self.apply_to_channels {
            None => None,
            Some(_) if self.no_register => return Err(Error::InvalidParameter {
                name: "channels to apply to".into(),
                message:
                    "other channels get the registered channel's shifts, and registration is off"
                        .into(),
            }),
            Some(s) => Some(s.parse::<crate::channels::ChannelSet>()?),
        };
        let shift = ShiftParams::new(self.order, self.shift_mode, self.shift_cval)?;
        let zscore = (!self.no_zscore).then_some(ZscoreParams {
            ddof: self.ddof,
            constant: self.constant_voxels,
        });
        let (mut save_filtered, mut save_registered) = (false, false);
        for s in &self.save {
            match s.trim() {
                "filtered" => save_filtered = true,
                "registered" => save_registered = true,
                "" => {}
                other => {
                    return Err(Error::InvalidParameter {
                        name: "saved stages".into(),
                        message: format!(
                            "unknown stage {other:?}; expected filtered and/or registered"
                        ),
                    })
                }
            }
        }
        if save_filtered && median.is_none() {
            return Err(Error::InvalidParameter {
                name: "saved stages".into(),
                message: "filtered was asked for but the median filter is off".into(),
            });
        }
        Ok(RunConfig {
            inputs: self.inputs,
            dataset: self.dataset,
            output: self.output,
            force: self.force,
            median,
            register,
            register_on_raw: self.register_raw,
            reference,
            shift,
            zscore,
            save_filtered,
            save_registered,
            nonfinite: self.nonfinite,
            axes: self.axes,
            compression: self.compression,
            shard: self.shard,
            format: self.format,
            channel: self.channel,
            memory_budget: self.memory_budget,
            reference_iterations: self.reference_iterations,
            reference_top: self.reference_top,
            disambiguate: self.disambiguate,
            shifts_file: self.shifts,
            apply_to_channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(o: RunOptions) -> String {
        o.into_config().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_default_job() {
        let c = RunOptions::default().into_config().unwrap();
        let d = RunConfig::new(Vec::new(), PathBuf::new());
        assert_eq!(
            (c.median, c.register, c.reference, c.shift, c.zscore),
            (d.median, d.register, d.reference, d.shift, d.zscore)
        );
    }

    #[test]
    fn each_bad_parameter_is_named() {
        let cases = [
            (
                RunOptions {
                    median_size: [3, 4, 3],
                    ..Default::default()
                },
                "median size: ",
            ),
            (
                RunOptions {
                    upsample_factor: 0,
                    ..Default::default()
                },
                "upsample factor: got 0",
            ),
            (
                RunOptions {
                    upsample_factor: 1001,
                    ..Default::default()
                },
                "upsample factor: got 1001",
            ),
            (
                RunOptions {
                    reference_mean: Some((3, 3)),
                    ..Default::default()
                },
                "reference range: got \"3:3\"",
            ),
            (
                RunOptions {
                    max_shift: Some([0.0, -1.0, 3.0]),
                    ..Default::default()
                },
                "max shift: got -1 along y",
            ),
            (
                RunOptions {
                    smooth_sigma: [0.0, 1.0, f64::INFINITY],
                    ..Default::default()
                },
                "smooth sigma: got inf along x",
            ),
            (
                RunOptions {
                    reference_top: Some(0),
                    reference_iterations: 1,
                    ..Default::default()
                },
                "reference top: got 0; expected from 1 to 1 (the timepoints",
            ),
            (
                RunOptions {
                    reference_top: Some(6),
                    reference_mean: Some((2, 7)),
                    reference_iterations: 1,
                    ..Default::default()
                },
                "reference top: got 6; expected from 1 to 5 (the timepoints",
            ),
            (
                RunOptions {
                    reference_top: Some(3),
                    reference_mean: Some((2, 7)),
                    ..Default::default()
                },
                "reference top: it picks the frames each reference iteration averages",
            ),
            (
                RunOptions {
                    disambiguate: true,
                    no_register: true,
                    ..Default::default()
                },
                "disambiguation: it chooses among a registration's shifts",
            ),
            (
                RunOptions {
                    disambiguate: true,
                    shifts: Some("s.csv".into()),
                    ..Default::default()
                },
                "disambiguation: it chooses among a registration's shifts",
            ),
            (
                RunOptions {
                    order: 2,
                    ..Default::default()
                },
                "spline order: ",
            ),
            (
                RunOptions {
                    save: vec!["bogus".into()],
                    ..Default::default()
                },
                "saved stages: unknown stage \"bogus\"",
            ),
            (
                RunOptions {
                    save: vec!["filtered".into()],
                    no_median: true,
                    ..Default::default()
                },
                "saved stages: filtered was asked for",
            ),
        ];
        for (o, want) in cases {
            let e = err(o);
            assert!(e.starts_with(want), "{e:?} does not start with {want:?}");
        }
    }

    #[test]
    fn switched_off_stages_are_not_validated() {
        let c = RunOptions {
            no_median: true,
            median_size: [2, 2, 2],
            no_register: true,
            upsample_factor: 0,
            ..Default::default()
        }
        .into_config()
        .unwrap();
        assert!(c.median.is_none() && c.register.is_none());
    }
}
