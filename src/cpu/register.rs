//! Rigid registration by phase correlation on the CPU, a port of scikit-image 0.26's
//! `phase_cross_correlation(reference, moving, upsample_factor, normalization)` (space="real").
//!
//! The returned shift registers `moving` onto `reference`: `scipy.ndimage.shift(moving, shift)`.
//! FFTs and the cross-power spectrum are single precision, as scikit-image computes them for float32
//! input; the upsampled-DFT refinement and the error terms use f64.
//!
//! Both volumes are real, so their spectra are Hermitian and only the non-redundant half (`rfftn`) is
//! computed, and the cross-correlation comes back real (`irfftn`). scikit-image takes `abs` of a complex
//! `ifftn` whose imaginary part is rounding noise (~1e-7 relative), so the peak and the shifts are the same;
//! its phase difference is that noise's angle, 0 here (or π for a negative peak).

use super::cross_power::{argmax_abs_real, cross_power};
use super::fft::{RealFft3, C32};
use crate::params::{RegisterParams, Registration};
use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;
use rustfft::num_complex::Complex64;

/// The reference's spectrum, computed once and reused for every timepoint.
pub struct Registrar {
    fft: RealFft3,
    reference_freq: Array3<C32>,
    reference_power: f64,
    params: RegisterParams,
}

/// `sum(|F|²)` over the full spectrum, from its half: columns `1..nx - nh + 1` stand for their
/// mirror images too (all but x = 0 and, for even nx, the Nyquist column).
fn power(half: &Array3<C32>, nx: usize) -> f64 {
    let nh = half.dim().2;
    let mirrored = 1..nx - nh + 1;
    half.as_slice()
        .expect("standard layout")
        .par_chunks(nh)
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(x, c)| {
                    let p = c.norm_sqr() as f64;
                    if mirrored.contains(&x) {
                        2.0 * p
                    } else {
                        p
                    }
                })
                .sum::<f64>()
        })
        .sum()
}

impl Registrar {
    pub fn new(reference: ArrayView3<f32>, params: &RegisterParams) -> Self {
        let (nz, ny, nx) = reference.dim();
        let fft = RealFft3::new([nz, ny, nx]);
        let reference_freq = fft.forward(reference);
        let reference_power = power(&reference_freq, nx);
        Registrar {
            fft,
            reference_freq,
            reference_power,
            params: *params,
        }
    }

    pub fn shape(&self) -> [usize; 3] {
        self.fft.shape()
    }

    pub fn register(&self, moving: ArrayView3<f32>) -> Registration {
        let mut product = self.fft.forward(moving);
        let moving_power = power(&product, self.fft.shape()[2]);
        cross_power(
            &self.reference_freq,
            &mut product,
            self.params.normalization,
        );
        // The spectrum outlives the inverse transform only for the upsampled refinement.
        let spectrum = (self.params.upsample_factor > 1).then(|| product.clone());
        let correlation = self.fft.inverse(product);
        let peak = argmax_abs_real(&correlation);
        finish(
            spectrum.as_ref(),
            &correlation,
            peak,
            self.reference_power,
            moving_power,
            &self.params,
        )
    }
}

/// From the correlation peak to scikit-image's shift, error and phase difference; `spectrum` (the
/// half cross-power spectrum) is needed only when `params.upsample_factor > 1`.
pub fn finish(
    spectrum: Option<&Array3<C32>>,
    correlation: &Array3<f32>,
    peak: [usize; 3],
    reference_power: f64,
    moving_power: f64,
    params: &RegisterParams,
) -> Registration {
    let shape = [
        correlation.dim().0,
        correlation.dim().1,
        correlation.dim().2,
    ];
    let n = correlation.len() as f64;
    let mut shift = coarse_shift(peak, shape);
    let (cc_max, src_amp, target_amp) = if params.upsample_factor == 1 {
        (
            Complex64::new(correlation[peak] as f64, 0.0),
            reference_power / n,
            moving_power / n,
        )
    } else {
        let u = params.upsample_factor as f64;
        for s in &mut shift {
            *s = (*s * u).round() / u;
        }
        let region = (u * 1.5).ceil();
        let dftshift = (region / 2.0).trunc();
        let offsets = shift.map(|s| dftshift - s * u);
        let spectrum = spectrum.expect("the spectrum is kept when upsample_factor > 1");
        let up = upsampled_dft_conj(spectrum, shape[2], region as usize, u, offsets);
        let (mut best, mut best_v) = ([0usize; 3], f64::NEG_INFINITY);
        for ((a, b, c), v) in up.indexed_iter() {
            if v.norm() > best_v {
                best_v = v.norm();
                best = [a, b, c];
            }
        }
        for a in 0..3 {
            shift[a] += (best[a] as f64 - dftshift) / u;
        }
        (up[best], reference_power, moving_power)
    };
    score(shift, shape, cc_max, src_amp, target_amp)
}

/// The correlation peak as a signed integer shift (peaks past the midpoint wrap to negative).
pub fn coarse_shift(peak: [usize; 3], shape: [usize; 3]) -> [f64; 3] {
    std::array::from_fn(|a| {
        let s = peak[a] as f64;
        if s > (shape[a] / 2) as f64 {
            s - shape[a] as f64
        } else {
            s
        }
    })
}

/// scikit-image's tail: zero shifts along singleton axes, the error and the phase difference.
pub fn score(
    mut shift: [f64; 3],
    shape: [usize; 3],
    cc_max: Complex64,
    src_amp: f64,
    target_amp: f64,
) -> Registration {
    for a in 0..3 {
        if shape[a] == 1 {
            shift[a] = 0.0;
        }
    }
    let error = (1.0 - cc_max.norm_sqr() / (src_amp * target_amp))
        .abs()
        .sqrt();
    Registration {
        shift,
        error,
        phasediff: cc_max.im.atan2(cc_max.re),
    }
}

/// `np.fft.fftfreq(n, d)[k]`.
fn fftfreq(k: usize, n: usize, d: f64) -> f64 {
    let k = if k < n.div_ceil(2) {
        k as f64
    } else {
        k as f64 - n as f64
    };
    k / (n as f64 * d)
}

/// `_upsampled_dft(conj(spectrum), region, u, offsets).conj()` from scikit-image: the cross-correlation
/// sampled on a `region`³ grid with spacing `1/u` around the coarse peak, by matrix-multiply DFTs
/// (cheaper than zero-padding the whole volume by `u`). `half` is the non-redundant half of the
/// spectrum of a volume `nx` wide; the other half is its Hermitian mirror.
fn upsampled_dft_conj(
    half: &Array3<C32>,
    nx: usize,
    region: usize,
    u: f64,
    offsets: [f64; 3],
) -> Array3<Complex64> {
    let (nz, ny, nh) = half.dim();
    // conj(S[z, y, x]) over the full x range: S[-z, -y, nx - x] for the mirrored half.
    let conj_full = |z: usize, y: usize, x: usize| -> Complex64 {
        if x < nh {
            let s = half[[z, y, x]];
            Complex64::new(s.re as f64, -s.im as f64)
        } else {
            let s = half[[(nz - z) % nz, (ny - y) % ny, nx - x]];
            Complex64::new(s.re as f64, s.im as f64)
        }
    };
    let kernel = |n: usize, off: f64| -> Vec<Complex64> {
        // kernel[r][k] = exp(-2πi (r - off) fftfreq(k)); applied to conj(spectrum).
        let mut k = Vec::with_capacity(region * n);
        for r in 0..region {
            for j in 0..n {
                let ph = -2.0 * std::f64::consts::PI * (r as f64 - off) * fftfreq(j, n, u);
                k.push(Complex64::from_polar(1.0, ph));
            }
        }
        k
    };
    let (kz, ky, kx) = (
        kernel(nz, offsets[0]),
        kernel(ny, offsets[1]),
        kernel(nx, offsets[2]),
    );
    // Contract x, then y, then z, as the tensordots do.
    let mut t1 = vec![Complex64::default(); nz * ny * region];
    t1.par_chunks_mut(ny * region)
        .enumerate()
        .for_each(|(z, plane)| {
            for y in 0..ny {
                for c in 0..region {
                    let mut acc = Complex64::default();
                    for x in 0..nx {
                        acc += kx[c * nx + x] * conj_full(z, y, x);
                    }
                    plane[y * region + c] = acc;
                }
            }
        });
    let mut t2 = vec![Complex64::default(); nz * region * region];
    for z in 0..nz {
        for b in 0..region {
            for c in 0..region {
                let mut acc = Complex64::default();
                for y in 0..ny {
                    acc += ky[b * ny + y] * t1[(z * ny + y) * region + c];
                }
                t2[(z * region + b) * region + c] = acc;
            }
        }
    }
    Array3::from_shape_fn((region, region, region), |(a, b, c)| {
        let mut acc = Complex64::default();
        for z in 0..nz {
            acc += kz[a * nz + z] * t2[(z * region + b) * region + c];
        }
        acc.conj()
    })
}

/// One-shot `phase_cross_correlation(reference, moving)`.
pub fn phase_cross_correlation(
    reference: ArrayView3<f32>,
    moving: ArrayView3<f32>,
    params: &RegisterParams,
) -> Registration {
    Registrar::new(reference, params).register(moving)
}
