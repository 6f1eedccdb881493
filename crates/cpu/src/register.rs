//! Rigid registration by phase correlation on the CPU, a port of scikit-image 0.26's
//! `phase_cross_correlation(reference, moving, upsample_factor, normalization)` (space="real").
//!
//! The returned shift registers `moving` onto `reference`: `scipy.ndimage.shift(moving, shift)`.
//! FFTs and the stored cross-power spectrum are single precision, as scikit-image computes them for
//! float32 input; the product F·G*, the power sums, the upsampled-DFT refinement and the error terms
//! use f64, so volumes whose values reach ~1e17..1e30 (where scikit-image's float32 |F·G*| and Σ|F|²
//! overflow and it raises) still register. Past that (the f32 FFT itself overflows) a registration
//! whose spectrum, peak or error is not finite is an error (`Registrar::try_register`), never a
//! silent zero shift.
//!
//! Both volumes are real, so their spectra are Hermitian and only the non-redundant half (`rfftn`) is
//! computed, and the cross-correlation comes back real (`irfftn`). scikit-image takes `abs` of a complex
//! `ifftn` whose imaginary part is rounding noise (~1e-7 relative), so the peak and the shifts are the same;
//! its phase difference is that noise's angle, 0 here (or π for a negative peak).

use super::cross_power::{argmax_abs_real_within, cross_power, smooth};
use super::fft::RealFft3;
use gpuprep_core::complex::{Complex64, C32};
use gpuprep_core::error::Result;
use gpuprep_core::params::{gaussian_spectrum, Normalization, RegisterParams, Registration};
use gpuprep_core::register::Window;
pub use gpuprep_core::register::{
    check_finite, coarse_shift, fftfreq, not_finite, score, spectrum_scale, upsample_slab_rows,
    UPSAMPLE_SLAB_BYTES,
};
use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

/// The reference's spectrum, computed once and reused for every timepoint.
pub struct Registrar {
    fft: RealFft3,
    reference_freq: Array3<C32>,
    reference_power: f64,
    reference_max: f64,
    params: RegisterParams,
    /// `--smooth-sigma`'s Gaussian spectrum per axis (x's over the half spectrum), when smoothing.
    smooth: Option<[Vec<f32>; 3]>,
}

/// `sum(|F|²)` over the full spectrum, from its half, and `max |F|`: columns `1..nx - nh + 1` stand
/// for their mirror images too (all but x = 0 and, for even nx, the Nyquist column). In f64 from the
/// f64 components: |F|² passes f32's range from |F| = 1.8e19.
pub fn power(half: &Array3<C32>, nx: usize) -> (f64, f64) {
    let nh = half.dim().2;
    let mirrored = 1..nx - nh + 1;
    // NaN-propagating max: a NaN bin must not vanish from the bound.
    let max = |a: f64, b: f64| if b > a || b.is_nan() { b } else { a };
    let (sum, max_sq) = half
        .as_slice()
        .expect("standard layout")
        .par_chunks(nh)
        .map(|row| {
            row.iter().enumerate().fold((0.0, 0.0), |(sum, m), (x, c)| {
                let p = (c.re as f64).powi(2) + (c.im as f64).powi(2);
                let w = if mirrored.contains(&x) { 2.0 } else { 1.0 };
                (sum + w * p, max(m, p))
            })
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, max(a.1, b.1)));
    (sum, max_sq.sqrt())
}

impl Registrar {
    pub fn new(reference: ArrayView3<f32>, params: &RegisterParams) -> Self {
        let (nz, ny, nx) = reference.dim();
        let fft = RealFft3::new([nz, ny, nx]);
        let reference_freq = fft.forward(reference);
        let (reference_power, reference_max) = power(&reference_freq, nx);
        let nh = reference_freq.dim().2;
        let smooth = params.smooths().then(|| {
            let [sz, sy, sx] = params.smooth_sigma;
            let mut gx = gaussian_spectrum(nx, sx);
            gx.truncate(nh);
            [gaussian_spectrum(nz, sz), gaussian_spectrum(ny, sy), gx]
        });
        Registrar {
            fft,
            reference_freq,
            reference_power,
            reference_max,
            params: *params,
            smooth,
        }
    }

    /// Whether the reference's spectrum is finite (else every registration against it fails).
    pub fn reference_is_finite(&self) -> bool {
        self.reference_power.is_finite()
    }

    pub fn shape(&self) -> [usize; 3] {
        self.fft.shape()
    }

    /// `phase_cross_correlation(reference, moving)`; the result may hold non-finite values where
    /// the spectra overflow (see `try_register`).
    pub fn register(&self, moving: ArrayView3<f32>) -> Registration {
        self.register_unchecked(moving).0
    }

    /// `register`, as an error when the spectra, the correlation peak or the error are not finite.
    pub fn try_register(&self, moving: ArrayView3<f32>) -> Result<Registration> {
        let (r, moving_power, cc_peak) = self.register_unchecked(moving);
        check_finite(r, self.reference_power, moving_power, cc_peak, || {
            Some(moving.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs())))
        })
    }

    /// The registration, the moving volume's power and the (unscaled) correlation peak.
    fn register_unchecked(&self, moving: ArrayView3<f32>) -> (Registration, f64, Complex64) {
        let mut product = self.fft.forward(moving);
        let (moving_power, moving_max) = power(&product, self.fft.shape()[2]);
        let scale = match self.params.normalization {
            Normalization::Phase => 1.0,
            Normalization::None => spectrum_scale(
                self.reference_max,
                moving_max,
                self.fft.shape().iter().product(),
            ),
        };
        cross_power(
            &self.reference_freq,
            &mut product,
            self.params.normalization,
            scale,
        );
        if let Some(tables) = &self.smooth {
            smooth(&mut product, tables);
        }
        // The spectrum outlives the inverse transform only for the upsampled refinement.
        let spectrum = (self.params.upsample_factor > 1).then(|| product.clone());
        let correlation = self.fft.inverse(product);
        let peak = argmax_abs_real_within(&correlation, self.params.coarse_window());
        let shape = self.fft.shape();
        let upsampled = |region, u, offsets, window| {
            let spectrum = spectrum.as_ref().expect("kept when upsample_factor > 1");
            Ok::<_, std::convert::Infallible>(upsampled_peak(
                spectrum,
                shape[2],
                region,
                u,
                offsets,
                window,
                UPSAMPLE_SLAB_BYTES,
            ))
        };
        let Ok((r, cc_peak)) = gpuprep_core::register::finish(
            shape,
            &self.params,
            self.reference_power,
            moving_power,
            peak,
            Complex64::new(correlation[peak] as f64, 0.0),
            scale,
            upsampled,
        );
        (r, moving_power, cc_peak)
    }
}

/// The kernel of one axis of the upsampled DFT, applied to conj(spectrum):
/// `kernel[r][k] = exp(-2πi (r - off) fftfreq(k))`, `region` rows of `n`.
fn upsample_kernel(n: usize, region: usize, u: f64, off: f64) -> Vec<Complex64> {
    let mut k = Vec::with_capacity(region * n);
    for r in 0..region {
        for j in 0..n {
            let ph = -2.0 * std::f64::consts::PI * (r as f64 - off) * fftfreq(j, n, u);
            k.push(Complex64::from_polar(1.0, ph));
        }
    }
    k
}

/// The upsampled DFT's first contraction (over x) of conj(`half`): `t1[z][y][c]`, `nz·ny·region`.
///
/// It runs over the half spectrum only: for 1 <= x <= nx - nh the full spectrum's column nx - x is
/// conj(S[-z, -y, x]) and kx[c][nx - x] = conj(kx[c][x]), so the mirrored half of row (z, y)'s sum is
/// conj of the partial sum `p` of row (-z, -y) over those x. Dot products run on split re/im arrays
/// four lanes wide so they vectorise.
fn contract_x(half: &Array3<C32>, nx: usize, region: usize, kx: &[Complex64]) -> Vec<Complex64> {
    let (nz, ny, nh) = half.dim();
    let m = nx - nh;
    let (kx_re, kx_im): (Vec<f64>, Vec<f64>) = kx.iter().map(|k| (k.re, k.im)).unzip();
    let mut t1 = vec![Complex64::default(); nz * ny * region];
    let mut p = vec![Complex64::default(); nz * ny * region];
    t1.par_chunks_mut(ny * region)
        .zip(p.par_chunks_mut(ny * region))
        .enumerate()
        .for_each_init(
            || (vec![0.0; nh], vec![0.0; nh]),
            |(row_re, row_im), (z, (t1_plane, p_plane))| {
                for y in 0..ny {
                    for x in 0..nh {
                        let v = half[[z, y, x]];
                        (row_re[x], row_im[x]) = (v.re as f64, -v.im as f64);
                    }
                    for c in 0..region {
                        let (kr, ki) = (&kx_re[c * nx..], &kx_im[c * nx..]);
                        let term = |x: usize| {
                            Complex64::new(kr[x], ki[x]) * Complex64::new(row_re[x], row_im[x])
                        };
                        let mirrored = dot4(&kr[1..=m], &ki[1..=m], &row_re[1..=m], &row_im[1..=m]);
                        // x = 0, and for even nx the Nyquist column x = nh - 1, have no mirror.
                        let mut own = term(0) + mirrored;
                        if nh - 1 > m {
                            own += term(nh - 1);
                        }
                        t1_plane[y * region + c] = own;
                        p_plane[y * region + c] = mirrored;
                    }
                }
            },
        );
    t1.par_chunks_mut(ny * region)
        .enumerate()
        .for_each(|(z, plane)| {
            let zm = (nz - z) % nz;
            for y in 0..ny {
                let ym = (ny - y) % ny;
                for c in 0..region {
                    plane[y * region + c] += p[(zm * ny + ym) * region + c].conj();
                }
            }
        });
    t1
}

/// The second contraction (over y) at one point: `Σ_y ky[b][y]·t1[z][y][c]`, in y order.
#[inline]
fn contract_y_at(
    t1: &[Complex64],
    ky: &[Complex64],
    ny: usize,
    region: usize,
    z: usize,
    b: usize,
    c: usize,
) -> Complex64 {
    let mut acc = Complex64::default();
    for y in 0..ny {
        acc += ky[b * ny + y] * t1[(z * ny + y) * region + c];
    }
    acc
}

/// The last contraction (over z) at one point, conjugated: `conj(Σ_z kz[a][z]·t2(z))`, in z order.
#[inline]
fn contract_z_at(
    kz: &[Complex64],
    nz: usize,
    a: usize,
    t2: impl Fn(usize) -> Complex64,
) -> Complex64 {
    let mut acc = Complex64::default();
    for z in 0..nz {
        acc += kz[a * nz + z] * t2(z);
    }
    acc.conj()
}

/// Whether `|v|` (as `norm`, a `hypot`) is surely below `best` (a `norm`), from `|v|²` alone: `hypot`
/// per value would dominate the region's sweep. The margin (1e-9 relative) dwarfs the rounding of
/// both; a `best` whose square is not a well-scaled normal number, and a NaN `|v|²`, decide nothing.
#[inline]
fn below(v: Complex64, best: f64) -> bool {
    let best_sq = best * best;
    best_sq.is_finite() && best_sq >= 1e-280 && v.norm_sqr() < best_sq * (1.0 - 1e-9)
}

/// The largest `|v|` of `_upsampled_dft(conj(spectrum), region, u, offsets).conj()` from scikit-image
/// and its index: the cross-correlation sampled on a `region`³ grid with spacing `1/u` around the
/// coarse peak, by matrix-multiply DFTs (cheaper than zero-padding the whole volume by `u`). `half` is
/// the non-redundant half of the spectrum of a volume `nx` wide; the other half is its Hermitian mirror.
///
/// The region (`region`³ complex128: 50 GiB at u = 1000) is never held: it is swept in slabs of
/// output rows b (the region's y axis), each needing only the y-contraction `t2[z][b][c]` of its
/// rows (`slab_bytes`, see `upsample_slab_rows`), so the memory is the x-contraction's `2·nz·ny·region`
/// values plus the slab. Every value is summed in the same order as the whole-region contraction,
/// so it is bit for bit the same, and the peak is np.argmax's over the whole region in C order: the
/// first largest |v| (a NaN never ranks above anything; all NaN gives index 0). Only indices in
/// `window` (`--max-shift`) are candidates: the others are neither computed nor ranked.
fn upsampled_peak(
    half: &Array3<C32>,
    nx: usize,
    region: usize,
    u: f64,
    offsets: [f64; 3],
    window: Window,
    slab_bytes: usize,
) -> ([usize; 3], Complex64) {
    let [wa, wb, wc] = window;
    let (nz, ny, _) = half.dim();
    let (kz, ky, kx) = (
        upsample_kernel(nz, region, u, offsets[0]),
        upsample_kernel(ny, region, u, offsets[1]),
        upsample_kernel(nx, region, u, offsets[2]),
    );
    let t1 = contract_x(half, nx, region, &kx);
    let rows = upsample_slab_rows(nz, region, slab_bytes);
    let mut t2 = vec![Complex64::default(); nz * rows * region];
    // (|v|, C-order index, v): the first largest, ties to the lower index as np.argmax.
    type Best = (f64, usize, Complex64);
    let pick = |x: Best, y: Best| {
        if y.0 > x.0 || (y.0 == x.0 && y.1 < x.1) {
            y
        } else {
            x
        }
    };
    let none: Best = (f64::NEG_INFINITY, usize::MAX, Complex64::default());
    let mut best = none;
    for b0 in wb.clone().step_by(rows) {
        let bs = rows.min(wb.end - b0);
        let t2 = &mut t2[..nz * bs * region];
        t2.par_chunks_mut(bs * region)
            .enumerate()
            .for_each(|(z, plane)| {
                for bl in 0..bs {
                    for c in 0..region {
                        plane[bl * region + c] = contract_y_at(&t1, &ky, ny, region, z, b0 + bl, c);
                    }
                }
            });
        let t2 = &*t2;
        let slab = wa
            .clone()
            .into_par_iter()
            .map_init(
                || vec![Complex64::default(); region],
                |acc, a| {
                    let mut row_best = none;
                    for bl in 0..bs {
                        // `contract_z_at` for the whole row c = 0..region, z outermost so the
                        // inner loop runs over contiguous values; each sum still adds z in order.
                        acc.fill(Complex64::default());
                        for z in 0..nz {
                            let k = kz[a * nz + z];
                            let src = &t2[(z * bs + bl) * region..][..region];
                            for (s, &t) in acc.iter_mut().zip(src) {
                                *s += k * t;
                            }
                        }
                        for (c, s) in acc.iter().enumerate().take(wc.end).skip(wc.start) {
                            let v = s.conj();
                            if below(v, row_best.0) {
                                continue;
                            }
                            // Strictly larger, in C order within the row: NaN never replaces.
                            if v.norm() > row_best.0 {
                                row_best = (v.norm(), (a * region + b0 + bl) * region + c, v);
                            }
                        }
                    }
                    row_best
                },
            )
            .reduce(|| none, pick);
        best = pick(best, slab);
    }
    if best.1 == usize::MAX {
        // No value ranked (all NaN): the window's first index (0, as np.argmax), with its value.
        let first = [wa.start, wb.start, wc.start];
        let v = contract_z_at(&kz, nz, first[0], |z| {
            contract_y_at(&t1, &ky, ny, region, z, first[1], first[2])
        });
        return (first, v);
    }
    let i = best.1;
    (
        [i / (region * region), (i / region) % region, i % region],
        best.2,
    )
}

/// `Σ (a_re + i a_im)(b_re + i b_im)` over equal-length split-complex slices, in four interleaved
/// partial sums (independent lanes the compiler can put in SIMD registers).
fn dot4(a_re: &[f64], a_im: &[f64], b_re: &[f64], b_im: &[f64]) -> Complex64 {
    let (mut re, mut im) = ([0.0f64; 4], [0.0f64; 4]);
    let n4 = a_re.len() / 4 * 4;
    for i in (0..n4).step_by(4) {
        for l in 0..4 {
            let j = i + l;
            re[l] += a_re[j] * b_re[j] - a_im[j] * b_im[j];
            im[l] += a_re[j] * b_im[j] + a_im[j] * b_re[j];
        }
    }
    for j in n4..a_re.len() {
        re[0] += a_re[j] * b_re[j] - a_im[j] * b_im[j];
        im[0] += a_re[j] * b_im[j] + a_im[j] * b_re[j];
    }
    Complex64::new(
        (re[0] + re[1]) + (re[2] + re[3]),
        (im[0] + im[1]) + (im[2] + im[3]),
    )
}

/// One-shot `phase_cross_correlation(reference, moving)`.
pub fn phase_cross_correlation(
    reference: ArrayView3<f32>,
    moving: ArrayView3<f32>,
    params: &RegisterParams,
) -> Registration {
    Registrar::new(reference, params).register(moving)
}

/// `phase_cross_correlation`, as an error when not finite (`Registrar::try_register`).
pub fn try_phase_cross_correlation(
    reference: ArrayView3<f32>,
    moving: ArrayView3<f32>,
    params: &RegisterParams,
) -> Result<Registration> {
    Registrar::new(reference, params).try_register(moving)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fft::{to_complex, Fft3};
    use rand::{Rng, SeedableRng};

    /// The whole region at once, as `upsampled_peak` computed it before it swept slabs.
    fn upsampled_dft_conj(
        half: &Array3<C32>,
        nx: usize,
        region: usize,
        u: f64,
        offsets: [f64; 3],
    ) -> Array3<Complex64> {
        let (nz, ny, _) = half.dim();
        let (kz, ky, kx) = (
            upsample_kernel(nz, region, u, offsets[0]),
            upsample_kernel(ny, region, u, offsets[1]),
            upsample_kernel(nx, region, u, offsets[2]),
        );
        let t1 = contract_x(half, nx, region, &kx);
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

    /// The first largest |v| in C order and its value, as `finish` took it from the whole region.
    fn whole_region_peak(up: &Array3<Complex64>) -> ([usize; 3], Complex64) {
        let (mut best, mut best_v) = ([0usize; 3], f64::NEG_INFINITY);
        for ((a, b, c), v) in up.indexed_iter() {
            if v.norm() > best_v {
                best_v = v.norm();
                best = [a, b, c];
            }
        }
        (best, up[best])
    }

    /// scikit-image's `_upsampled_dft(conj(S), ...).conj()` written out over the full spectrum.
    fn upsampled_naive(
        full: &Array3<C32>,
        region: usize,
        u: f64,
        off: [f64; 3],
    ) -> Array3<Complex64> {
        let (nz, ny, nx) = full.dim();
        let n = [nz, ny, nx];
        Array3::from_shape_fn((region, region, region), |(a, b, c)| {
            let r = [a, b, c];
            let mut acc = Complex64::default();
            for ((z, y, x), s) in full.indexed_iter() {
                let ph: f64 = [z, y, x]
                    .iter()
                    .enumerate()
                    .map(|(d, &k)| {
                        -2.0 * std::f64::consts::PI * (r[d] as f64 - off[d]) * fftfreq(k, n[d], u)
                    })
                    .sum();
                acc += Complex64::from_polar(1.0, ph) * Complex64::new(s.re as f64, -s.im as f64);
            }
            acc.conj()
        })
    }

    #[test]
    fn upsampled_dft_from_the_half_spectrum_equals_the_full_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Even and odd x (Nyquist column or not), singleton and 2-wide x.
        for shape in [[4, 6, 8], [3, 5, 7], [2, 3, 1], [5, 4, 2], [3, 4, 9]] {
            let v = Array3::from_shape_fn(shape, |_| rng.random_range(-1.0f32..1.0));
            let mut full = to_complex(v.view());
            Fft3::new(shape).forward(&mut full);
            let half = RealFft3::new(shape).forward(v.view());
            let (region, u, off) = (5, 3.0, [2.3, 1.7, 2.9]);
            let ours = upsampled_dft_conj(&half, shape[2], region, u, off);
            let want = upsampled_naive(&full, region, u, off);
            let scale = want.iter().map(|w| w.norm()).fold(1.0, f64::max);
            for (a, b) in ours.iter().zip(want.iter()) {
                assert!((a - b).norm() <= 1e-5 * scale, "{shape:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn upsampled_peak_in_slabs_is_the_whole_regions_argmax_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for shape in [[4, 6, 8], [3, 5, 7], [2, 3, 1], [1, 4, 5]] {
            let v = Array3::from_shape_fn(shape, |_| rng.random_range(-1.0f32..1.0));
            let half = RealFft3::new(shape).forward(v.view());
            // Odd and even regions (u = 3, 5, 4), offsets as `finish` makes them.
            for (region, u, off) in [
                (5, 3.0, [2.3, 1.7, 2.9]),
                (8, 5.0, [4.0, 3.2, 3.8]),
                (6, 4.0, [3.0; 3]),
            ] {
                let whole = upsampled_dft_conj(&half, shape[2], region, u, off);
                let want = whole_region_peak(&whole);
                let row = 16 * shape[0] * region;
                // One-row slabs (budget 0), two rows, an uneven split, and the whole region at once.
                for budget in [0, 2 * row, 3 * row + 1, usize::MAX] {
                    let all = [0..region, 0..region, 0..region];
                    let got = upsampled_peak(&half, shape[2], region, u, off, all, budget);
                    assert_eq!(got.0, want.0, "{shape:?} R={region} budget {budget}");
                    assert_eq!(
                        (got.1.re.to_bits(), got.1.im.to_bits()),
                        (want.1.re.to_bits(), want.1.im.to_bits()),
                        "{shape:?} R={region} budget {budget}"
                    );
                }
            }
        }
    }

    #[test]
    fn upsampled_peak_ties_go_to_the_first_in_c_order_across_slabs() {
        // A constant volume: its spectrum is a single DC bin, so every region value has the same |v|
        // up to rounding; a zero volume makes them exactly equal (all 0): index 0.
        let shape = [3, 4, 5];
        let zero = Array3::<f32>::zeros(shape);
        let half = RealFft3::new(shape).forward(zero.view());
        for budget in [0, usize::MAX] {
            let (i, v) = upsampled_peak(
                &half,
                shape[2],
                7,
                5.0,
                [3.0; 3],
                [0..7, 0..7, 0..7],
                budget,
            );
            assert_eq!((i, v.norm()), ([0; 3], 0.0), "budget {budget}");
        }
        // A NaN spectrum ranks nothing: index 0 and its (NaN) value, as the whole-region loop.
        let mut nan = RealFft3::new(shape).forward(zero.view());
        nan.fill(C32::new(f32::NAN, 0.0));
        let whole = whole_region_peak(&upsampled_dft_conj(&nan, shape[2], 7, 5.0, [3.0; 3]));
        for budget in [0, usize::MAX] {
            let (i, v) =
                upsampled_peak(&nan, shape[2], 7, 5.0, [3.0; 3], [0..7, 0..7, 0..7], budget);
            assert_eq!(i, whole.0);
            assert!(v.re.is_nan() && whole.1.re.is_nan());
        }
    }

    #[test]
    fn slab_rows_fit_the_budget() {
        assert_eq!(upsample_slab_rows(4, 1500, 0), 1);
        assert_eq!(
            upsample_slab_rows(4, 1500, UPSAMPLE_SLAB_BYTES),
            (64 << 20) / (16 * 4 * 1500)
        );
        assert_eq!(upsample_slab_rows(4, 5, UPSAMPLE_SLAB_BYTES), 5);
    }
}
