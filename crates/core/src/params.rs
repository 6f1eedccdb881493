//! Validated parameters for every stage, shared by the CPU and GPU backends and the CLI.
//!
//! Errors name the parameter ("median size"), not a flag: the CLI restates them under the flag that
//! supplied the value.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// How a kernel extends the volume beyond its edges, with scipy.ndimage's names and meanings.
///
/// For the median filter (scipy's `_extend_mode` for filters), with input `a b c d`:
/// `reflect` (d c b a | a b c d | d c b a), `mirror` (d c b | a b c d | c b a), `nearest` (a a a | a b c d | d d d),
/// `wrap` (a b c d | a b c d | a b c d), `constant` (k k k | a b c d | k k k).
/// For spline interpolation (`shift`), the same names follow scipy.ndimage.shift exactly, including its
/// quirks: `constant` gives `cval` outside the input and no interpolation across the edge, and `wrap`
/// has period `n - 1` as in scipy's legacy `wrap` (not `grid-wrap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BoundaryMode {
    Reflect,
    Nearest,
    Mirror,
    Constant,
    Wrap,
}

impl BoundaryMode {
    pub const ALL: [BoundaryMode; 5] = [
        BoundaryMode::Reflect,
        BoundaryMode::Nearest,
        BoundaryMode::Mirror,
        BoundaryMode::Constant,
        BoundaryMode::Wrap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BoundaryMode::Reflect => "reflect",
            BoundaryMode::Nearest => "nearest",
            BoundaryMode::Mirror => "mirror",
            BoundaryMode::Constant => "constant",
            BoundaryMode::Wrap => "wrap",
        }
    }

    /// The integer code used in GPU uniform structs: the `MODE_*` constants of `shaders/common.wgsl`
    /// (checked by `tests/shaders.rs`, `boundary_mode_codes_match_wgsl`).
    pub fn code(self) -> u32 {
        match self {
            BoundaryMode::Reflect => 0,
            BoundaryMode::Nearest => 1,
            BoundaryMode::Mirror => 2,
            BoundaryMode::Constant => 3,
            BoundaryMode::Wrap => 4,
        }
    }
}

impl fmt::Display for BoundaryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BoundaryMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BoundaryMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::InvalidParameter {
                name: "boundary mode".into(),
                message: format!(
                    "unknown boundary mode {s:?}; expected one of reflect, nearest, mirror, constant, wrap"
                ),
            })
    }
}

/// Median filter parameters, as `scipy.ndimage.median_filter(vol, size=size, mode=mode, cval=cval)`.
/// Like scipy, any odd window runs on any shape: an axis shorter than the window is extended
/// periodically (`crate::cpu::boundary::filter_index`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MedianParams {
    /// Window size per axis (z, y, x); each odd and at least 1.
    pub size: [usize; 3],
    pub mode: BoundaryMode,
    pub cval: f32,
}

impl Default for MedianParams {
    fn default() -> Self {
        MedianParams {
            size: [3, 3, 3],
            mode: BoundaryMode::Reflect,
            cval: 0.0,
        }
    }
}

impl MedianParams {
    pub fn new(size: [usize; 3], mode: BoundaryMode, cval: f32) -> Result<Self> {
        for (axis, &s) in ["z", "y", "x"].iter().zip(size.iter()) {
            if s == 0 || s % 2 == 0 {
                return Err(Error::InvalidParameter {
                    name: "median size".into(),
                    message: format!("size along {axis} is {s}; expected an odd number >= 1"),
                });
            }
        }
        let elements = size.iter().try_fold(1usize, |n, &s| n.checked_mul(s));
        match elements {
            Some(n) if n <= MedianParams::MAX_ELEMENTS => Ok(MedianParams { size, mode, cval }),
            _ => Err(Error::InvalidParameter {
                name: "median size".into(),
                message: format!(
                    "the window {}x{}x{} has {} elements; at most {} (e.g. 161x161x161) are supported",
                    size[0],
                    size[1],
                    size[2],
                    elements.map_or("too many".into(), |n| n.to_string()),
                    MedianParams::MAX_ELEMENTS
                ),
            }),
        }
    }

    /// The largest window (elements): scipy takes any size, but with windows no longer bounded by the
    /// volume, each CPU thread's gathered window (4 bytes an element) must stay bounded; a larger
    /// window would take hours per volume anyway.
    pub const MAX_ELEMENTS: usize = 1 << 22;
}

/// Normalization of the cross-power spectrum (`normalization=` of `phase_cross_correlation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    Phase,
    None,
}

impl Normalization {
    pub const ALL: [Normalization; 2] = [Normalization::Phase, Normalization::None];

    /// scikit-image's name.
    pub fn name(self) -> &'static str {
        match self {
            Normalization::Phase => "phase",
            Normalization::None => "none",
        }
    }
}

impl FromStr for Normalization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Normalization::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| Error::InvalidParameter {
                name: "normalization".into(),
                message: format!("unknown normalization {s:?}; expected phase or none"),
            })
    }
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Registration parameters, as `skimage.registration.phase_cross_correlation(reference, moving,
/// upsample_factor=..., normalization=...)`, plus what makes phase correlation hold on noisy
/// recordings (off by default, so the default is scikit-image's): a bound on the shift searched
/// (suite2p's `maxregshift`, CaImAn's `max_shifts`) and a Gaussian smoothing of the correlation
/// (suite2p's `smooth_sigma`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegisterParams {
    pub upsample_factor: u32,
    pub normalization: Normalization,
    /// Largest |shift| (z, y, x) searched, in voxels; `None`: the whole volume, as scikit-image.
    pub max_shift: Option<[f64; 3]>,
    /// Standard deviation (z, y, x, voxels) of the real-space Gaussian the correlation is smoothed
    /// with (the cross-power spectrum times its Fourier transform); 0: none.
    pub smooth_sigma: [f64; 3],
}

impl Default for RegisterParams {
    fn default() -> Self {
        RegisterParams {
            upsample_factor: 1,
            normalization: Normalization::Phase,
            max_shift: None,
            smooth_sigma: [0.0; 3],
        }
    }
}

impl RegisterParams {
    pub fn new(upsample_factor: u32, normalization: Normalization) -> Result<Self> {
        if upsample_factor < 1 {
            return Err(Error::InvalidParameter {
                name: "upsample factor".into(),
                message: format!("got {upsample_factor}; expected an integer >= 1"),
            });
        }
        Ok(RegisterParams {
            upsample_factor,
            normalization,
            ..Default::default()
        })
    }

    /// These parameters with the search bounded to |shift| <= `max` per axis (voxels, each finite
    /// and >= 0; 0 keeps that axis still).
    pub fn with_max_shift(self, max: [f64; 3]) -> Result<Self> {
        check_per_axis("max shift", max)?;
        Ok(RegisterParams {
            max_shift: Some(max),
            ..self
        })
    }

    /// These parameters with the correlation smoothed by a Gaussian of `sigma` voxels per axis (each
    /// finite and >= 0).
    pub fn with_smooth_sigma(self, sigma: [f64; 3]) -> Result<Self> {
        check_per_axis("smooth sigma", sigma)?;
        Ok(RegisterParams {
            smooth_sigma: sigma,
            ..self
        })
    }

    /// Whether the correlation is smoothed at all.
    pub fn smooths(&self) -> bool {
        self.smooth_sigma.iter().any(|&s| s > 0.0)
    }

    /// The largest |integer shift| the coarse peak may have along each axis (`u32::MAX`: no bound).
    pub fn coarse_window(&self) -> [u32; 3] {
        match self.max_shift {
            None => [u32::MAX; 3],
            Some(m) => m.map(|m| (m + 1e-9).floor().min(u32::MAX as f64 - 1.0) as u32),
        }
    }
}

fn check_per_axis(name: &str, v: [f64; 3]) -> Result<()> {
    for (axis, &x) in ["z", "y", "x"].iter().zip(v.iter()) {
        if !(x.is_finite() && x >= 0.0) {
            return Err(Error::InvalidParameter {
                name: name.into(),
                message: format!("got {x} along {axis}; expected a finite number >= 0 (voxels)"),
            });
        }
    }
    Ok(())
}

/// `exp(-2π² σ² f²)` at `np.fft.fftfreq(n)[k]` for k in 0..n: the Fourier transform of a unit-sum
/// Gaussian of standard deviation `sigma` samples, what the cross-power spectrum is multiplied by
/// along one axis to smooth the correlation (all 1 for sigma 0). f32, as both backends multiply.
pub fn gaussian_spectrum(n: usize, sigma: f64) -> Vec<f32> {
    (0..n)
        .map(|k| {
            let f = if k < n.div_ceil(2) {
                k as f64
            } else {
                k as f64 - n as f64
            } / n as f64;
            (-2.0 * std::f64::consts::PI.powi(2) * sigma * sigma * f * f).exp() as f32
        })
        .collect()
}

/// The result of registering one volume onto the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Registration {
    /// Shift (z, y, x) in voxels that registers the moving volume onto the reference:
    /// `scipy.ndimage.shift(moving, shift)` lines it up with the reference.
    pub shift: [f64; 3],
    /// scikit-image's translation-invariant normalized RMS error.
    pub error: f64,
    /// Global phase difference between the two volumes (radians).
    pub phasediff: f64,
}

/// Shift (interpolation) parameters, as `scipy.ndimage.shift(vol, s, order=order, mode=mode, cval=cval)`
/// with `prefilter=True`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShiftParams {
    /// Spline order: 0, 1 or 3.
    pub order: u32,
    pub mode: BoundaryMode,
    pub cval: f32,
}

impl Default for ShiftParams {
    fn default() -> Self {
        ShiftParams {
            order: 3,
            mode: BoundaryMode::Constant,
            cval: 0.0,
        }
    }
}

impl ShiftParams {
    pub fn new(order: u32, mode: BoundaryMode, cval: f32) -> Result<Self> {
        if !matches!(order, 0 | 1 | 3) {
            return Err(Error::InvalidParameter {
                name: "spline order".into(),
                message: format!("spline order {order} is not supported; expected 0, 1 or 3"),
            });
        }
        Ok(ShiftParams { order, mode, cval })
    }
}

/// What to write for voxels whose time series is constant (standard deviation zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConstantVoxels {
    /// NaN, as `scipy.stats.zscore` does.
    Nan,
    /// 0.
    Zero,
}

impl ConstantVoxels {
    pub const ALL: [ConstantVoxels; 2] = [ConstantVoxels::Nan, ConstantVoxels::Zero];

    /// The name on the command line and in the output's attributes.
    pub fn name(self) -> &'static str {
        match self {
            ConstantVoxels::Nan => "nan",
            ConstantVoxels::Zero => "zero",
        }
    }
}

/// Z-score parameters, as `scipy.stats.zscore(data, axis=0, ddof=ddof)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZscoreParams {
    pub ddof: u32,
    pub constant: ConstantVoxels,
}

impl Default for ZscoreParams {
    fn default() -> Self {
        ZscoreParams {
            ddof: 0,
            constant: ConstantVoxels::Nan,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library names what is wrong in its own terms; only the CLI knows which flag fed it.
    #[test]
    fn errors_name_parameters_not_flags() {
        let errors = [
            MedianParams::new([4, 3, 3], BoundaryMode::Reflect, 0.0).unwrap_err(),
            RegisterParams::new(0, Normalization::Phase).unwrap_err(),
            ShiftParams::new(2, BoundaryMode::Constant, 0.0).unwrap_err(),
            "grid".parse::<BoundaryMode>().unwrap_err(),
            "bogus".parse::<Normalization>().unwrap_err(),
            RegisterParams::default()
                .with_max_shift([1.0, -1.0, 2.0])
                .unwrap_err(),
            RegisterParams::default()
                .with_smooth_sigma([f64::NAN, 1.0, 1.0])
                .unwrap_err(),
        ];
        let names = [
            "median size",
            "upsample factor",
            "spline order",
            "boundary mode",
            "normalization",
            "max shift",
            "smooth sigma",
        ];
        for (e, name) in errors.iter().zip(names) {
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("{name}: ")) && !text.contains("--"),
                "{text}"
            );
        }
    }

    #[test]
    fn coarse_window_floors_the_bound() {
        let p = RegisterParams::default()
            .with_max_shift([0.0, 2.5, 3.0])
            .unwrap();
        assert_eq!(p.coarse_window(), [0, 2, 3]);
        assert_eq!(RegisterParams::default().coarse_window(), [u32::MAX; 3]);
    }

    #[test]
    fn gaussian_spectrum_is_symmetric_and_one_at_dc() {
        let g = gaussian_spectrum(8, 1.5);
        assert_eq!(g[0], 1.0);
        for k in 1..8 {
            assert_eq!(g[k], g[8 - k]);
        }
        assert!(g[4] < g[1] && g[1] < 1.0);
        assert!(gaussian_spectrum(7, 0.0).iter().all(|&v| v == 1.0));
    }

    #[test]
    fn names_round_trip() {
        for m in BoundaryMode::ALL {
            assert_eq!(m.name().parse::<BoundaryMode>().unwrap(), m);
        }
        for n in Normalization::ALL {
            assert_eq!(n.name().parse::<Normalization>().unwrap(), n);
        }
    }
}
