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

use super::cross_power::{cross_one, CoarseWindow, Smooth};
use super::fft::RealFft3;
use super::simd::{self, Level};
use gpuprep_core::complex::{Complex64, C32};
use gpuprep_core::error::Result;
use gpuprep_core::params::{Normalization, RegisterParams, Registration};
use gpuprep_core::register::Window;
pub use gpuprep_core::register::{
    check_finite, coarse_shift, fftfreq, not_finite, score, spectrum_scale, upsample_slab_rows,
    UPSAMPLE_SLAB_BYTES,
};
use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;
use std::sync::Mutex;

/// The reference's spectrum, computed once and reused for every timepoint.
pub struct Registrar {
    fft: RealFft3,
    /// The reference's half spectrum, transposed to (ny·nh, nz): its lines along z contiguous, as
    /// the fused z pass reads them.
    reference_lines: Vec<C32>,
    reference_power: f64,
    reference_max: f64,
    params: RegisterParams,
    /// Where the integer peak is searched (`--max-shift`; unbounded by default).
    window: CoarseWindow,
    /// `--smooth-sigma`'s Gaussian, when smoothing: the cross-power spectrum is multiplied by it
    /// before the inverse transform (and before the copy the upsampled DFT reads).
    smooth: Option<Smooth>,
    work: Mutex<Work>,
}

/// `sum(|F|²)` over the full spectrum, from its half, and `max |F|`: columns `1..nx - nh + 1` stand
/// for their mirror images too (all but x = 0 and, for even nx, the Nyquist column). In f64 from the
/// f64 components: |F|² passes f32's range from |F| = 1.8e19.
pub fn power(half: &Array3<C32>, nx: usize) -> (f64, f64) {
    power_of(half.as_slice().expect("standard layout"), half.dim().2, nx)
}

/// `power` of a half spectrum in C order, rows `nh` long.
fn power_of(half: &[C32], nh: usize, nx: usize) -> (f64, f64) {
    let mirrored = 1..nx - nh + 1;
    let (sum, max_sq) = half
        .par_chunks(nh)
        .map(|row| {
            row.iter().enumerate().fold((0.0, 0.0), |(sum, m), (x, c)| {
                let p = (c.re as f64).powi(2) + (c.im as f64).powi(2);
                let w = if mirrored.contains(&x) { 2.0 } else { 1.0 };
                (sum + w * p, nan_max(m, p))
            })
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, nan_max(a.1, b.1)));
    (sum, max_sq.sqrt())
}

/// NaN-propagating max: a NaN bin must not vanish from the bound.
#[inline(always)]
fn nan_max(a: f64, b: f64) -> f64 {
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}

type PhaseArgs<'a> = (
    &'a mut [C32],
    usize,
    usize,
    usize,
    Option<&'a mut [C32]>,
    &'a [C32],
    [usize; 3],
    Option<&'a Smooth>,
);

/// The middle of the fused z pass at phase normalization, on one block of z-lines of the moving
/// spectrum (see `RealFft3::z_round_trip`): the block's share of the moving power `Σ|G|²` (each
/// bin counted for its Hermitian mirror too, as `power`) and of `max |G|²`, and `G` replaced by the
/// phase of `F·conj(G)` (`cross_power`), times the Gaussian's transform when `smooth` is given,
/// copied to `kept` when given.
#[inline(always)]
fn phase_block(
    (lines, stride, col0, w, kept, reference, shape, smooth): PhaseArgs<'_>,
) -> (f64, f64) {
    let [nz, _, nx] = shape;
    let nh = nx / 2 + 1;
    let mirrored = 1..nx - nh + 1;
    let (mut sum, mut max_sq) = (0.0, 0.0);
    for c in 0..w {
        let col = col0 + c;
        let wt = if mirrored.contains(&(col % nh)) {
            2.0
        } else {
            1.0
        };
        let line = &mut lines[c * stride..][..nz];
        let (s, m) = line_power(line);
        sum += wt * s;
        max_sq = nan_max(max_sq, m);
        cross_phase_line(&reference[col * nz..][..nz], line);
        if let Some(smooth) = smooth {
            smooth.line(line, col / nh, col % nh);
        }
    }
    if let Some(kept) = kept {
        for (c, k) in kept.chunks_exact_mut(nz).enumerate() {
            k.copy_from_slice(&lines[c * stride..][..nz]);
        }
    }
    (sum, max_sq)
}

/// Lanes of the per-line loops below: independent partial results the compiler keeps in vector
/// registers.
const LANES: usize = 8;

/// `Σ|g|²` and `max |g|²` over a line, in f64, in `LANES` partial sums.
#[inline(always)]
fn line_power(line: &[C32]) -> (f64, f64) {
    let mut sum = [0.0f64; LANES];
    let mut max = [0.0f64; LANES];
    let mut chunks = line.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            let p = (ch[l].re as f64) * (ch[l].re as f64) + (ch[l].im as f64) * (ch[l].im as f64);
            sum[l] += p;
            max[l] = nan_max(max[l], p);
        }
    }
    let (mut s, mut m) = (0.0, 0.0);
    for g in chunks.remainder() {
        let p = (g.re as f64) * (g.re as f64) + (g.im as f64) * (g.im as f64);
        s += p;
        m = nan_max(m, p);
    }
    for l in 0..LANES {
        s += sum[l];
        m = nan_max(m, max[l]);
    }
    (s, m)
}

/// `cross_one(f, g, Phase, 1.0)` over a line, `LANES` bins at a time (the same operations).
#[inline(always)]
fn cross_phase_line(f: &[C32], g: &mut [C32]) {
    let floor = 100.0 * f32::EPSILON as f64;
    let mut fc = f.chunks_exact(LANES);
    let mut gc = g.chunks_exact_mut(LANES);
    for (f, g) in (&mut fc).zip(&mut gc) {
        let (mut re, mut im, mut d) = ([0.0f64; LANES], [0.0f64; LANES], [0.0f64; LANES]);
        for l in 0..LANES {
            let (fr, fi, gr, gi) = (
                f[l].re as f64,
                f[l].im as f64,
                g[l].re as f64,
                g[l].im as f64,
            );
            re[l] = fr * gr + fi * gi;
            im[l] = fi * gr - fr * gi;
        }
        for l in 0..LANES {
            d[l] = (re[l] * re[l] + im[l] * im[l]).sqrt().max(floor);
        }
        for l in 0..LANES {
            g[l] = C32::new((re[l] / d[l]) as f32, (im[l] / d[l]) as f32);
        }
    }
    for (f, g) in fc.remainder().iter().zip(gc.into_remainder()) {
        *g = cross_one(*f, *g, Normalization::Phase, 1.0);
    }
}

/// Buffers one registration at a time reuses: the moving spectrum and its copy kept for the
/// upsampled DFT. Fresh ones per volume cost more in page faults and zeroing than an FFT pass.
#[derive(Default)]
struct Work {
    spectrum: Vec<C32>,
    kept: Vec<C32>,
}

impl Registrar {
    pub fn new(reference: ArrayView3<f32>, params: &RegisterParams) -> Self {
        let (nz, ny, nx) = reference.dim();
        let fft = RealFft3::new([nz, ny, nx]);
        let reference_freq = fft.forward(reference);
        let (reference_power, reference_max) = power(&reference_freq, nx);
        let reference_lines = reference_freq
            .view()
            .into_shape_with_order((nz, reference_freq.len() / nz.max(1)))
            .expect("standard layout")
            .t()
            .iter()
            .copied()
            .collect();
        Registrar {
            fft,
            reference_lines,
            reference_power,
            reference_max,
            params: *params,
            window: CoarseWindow::new([nz, ny, nx], params.coarse_window()),
            smooth: params
                .smooths()
                .then(|| Smooth::new([nz, ny, nx], params.smooth_sigma)),
            work: Mutex::default(),
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
        self.register_at(simd::level(), moving)
    }

    /// `register_unchecked` at vector level `level`.
    fn register_at(&self, level: Level, moving: ArrayView3<f32>) -> (Registration, f64, Complex64) {
        // A second caller at once gets buffers of its own rather than waiting.
        let mut fresh = Work::default();
        let mut guard = self.work.try_lock().ok();
        let work = guard.as_deref_mut().unwrap_or(&mut fresh);
        let shape = self.fft.shape();
        let spectrum_shape = self.fft.spectrum_shape();
        let len = spectrum_shape.iter().product();
        let nh = spectrum_shape[2];
        work.spectrum.resize(len, C32::default());
        if self.params.upsample_factor > 1 {
            work.kept.resize(len, C32::default());
        }
        let product = &mut work.spectrum[..];
        let kept = (self.params.upsample_factor > 1).then_some(&mut work.kept[..]);
        let (moving_power, scale, (peak, cc_peak)) = match self.params.normalization {
            Normalization::Phase => {
                // The moving spectrum's z pass, its power, the cross-power spectrum (and its copy
                // for upsampling) and the inverse z pass, fused per block of z-lines.
                self.fft.forward_xy(moving, product);
                let reference = &self.reference_lines[..];
                let smooth = self.smooth.as_ref();
                let sums = self.fft.z_round_trip(
                    product,
                    kept,
                    || (0.0, 0.0),
                    |a: (f64, f64), b: (f64, f64)| (a.0 + b.0, nan_max(a.1, b.1)),
                    |lines, stride, col0, w, kept| {
                        let args = (lines, stride, col0, w, kept, reference, shape, smooth);
                        simd::dispatch!(level, phase_block, (args: PhaseArgs<'_>) -> (f64, f64))
                    },
                );
                let peak = self.fft.inverse_argmax_yx(product, &self.window);
                (sums.0, 1.0, peak)
            }
            Normalization::None => {
                self.fft.forward_into(moving, product);
                let (moving_power, moving_max) = power_of(product, nh, shape[2]);
                let scale = spectrum_scale(
                    self.reference_max,
                    moving_max,
                    self.fft.shape().iter().product(),
                );
                let nz = shape[0];
                product
                    .par_chunks_mut(len / nz)
                    .enumerate()
                    .for_each(|(z, plane)| {
                        for (col, g) in plane.iter_mut().enumerate() {
                            let f = self.reference_lines[col * nz + z];
                            *g = cross_one(f, *g, Normalization::None, scale);
                            if let Some(smooth) = &self.smooth {
                                *g = smooth.apply(*g, z, col / nh, col % nh);
                            }
                        }
                    });
                // The spectrum outlives the inverse transform only for the upsampled refinement.
                if let Some(kept) = kept {
                    let nz = shape[0];
                    let product = &*product;
                    kept.par_chunks_mut(nz).enumerate().for_each(|(col, line)| {
                        for (z, k) in line.iter_mut().enumerate() {
                            *k = product[z * (len / nz) + col];
                        }
                    });
                }
                let peak = self.fft.inverse_argmax(product, &self.window);
                (moving_power, scale, peak)
            }
        };
        let kept = &work.kept;
        let upsampled = |region, u, offsets, window| {
            let spectrum = Lines::new(&kept[..], spectrum_shape);
            Ok::<_, std::convert::Infallible>(upsampled_peak_at(
                level,
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
            Complex64::new(cc_peak as f64, 0.0),
            scale,
            upsampled,
        );
        (r, moving_power, cc_peak)
    }
}

/// One axis's kernel of the upsampled DFT, applied to conj(spectrum), split into re and im:
/// `k[r·n + j] = exp(-2πi (r - off) fftfreq(j))` for `r < region`, and zero rows up to `rows`
/// (so that blocked loops need no remainder).
struct Kernel {
    re: Vec<f64>,
    im: Vec<f64>,
    n: usize,
}

impl Kernel {
    fn new(n: usize, region: usize, rows: usize, u: f64, off: f64) -> Kernel {
        let (mut re, mut im) = (vec![0.0; rows * n], vec![0.0; rows * n]);
        for r in 0..region {
            for j in 0..n {
                let ph = -2.0 * std::f64::consts::PI * (r as f64 - off) * fftfreq(j, n, u);
                let k = Complex64::from_polar(1.0, ph);
                (re[r * n + j], im[r * n + j]) = (k.re, k.im);
            }
        }
        Kernel { re, im, n }
    }

    fn at(&self, r: usize, j: usize) -> Complex64 {
        Complex64::new(self.re[r * self.n + j], self.im[r * self.n + j])
    }
}

/// Complex values as two f64 arrays.
#[derive(Clone, Default)]
struct Split {
    re: Vec<f64>,
    im: Vec<f64>,
}

impl Split {
    fn zeros(len: usize) -> Split {
        Split {
            re: vec![0.0; len],
            im: vec![0.0; len],
        }
    }

    fn at(&self, i: usize) -> Complex64 {
        Complex64::new(self.re[i], self.im[i])
    }
}

/// A half spectrum `(nz, ny, nh)` stored as its lines along z, `(ny·nh, nz)` in C order: the layout
/// the fused z pass leaves it in, where a block of consecutive z is contiguous.
#[derive(Clone, Copy)]
struct Lines<'a> {
    data: &'a [C32],
    nz: usize,
    ny: usize,
    nh: usize,
}

impl<'a> Lines<'a> {
    fn new(data: &'a [C32], [nz, ny, nh]: [usize; 3]) -> Self {
        assert_eq!(data.len(), nz * ny * nh, "lines of the half spectrum");
        Lines { data, nz, ny, nh }
    }
}

/// Rows of the half spectrum (lines along x) per block of the x-contraction, and output columns
/// per register tile, at each vector level: `2·COLS` accumulators of `ROWS` lanes stay in registers
/// (10 of the 16 ymm at AVX2, 10 of the 32 zmm at AVX-512, 8 xmm at the baseline).
const X_TILE_AVX512: (usize, usize) = (8, 5);
const X_TILE_AVX2: (usize, usize) = (4, 5);
const X_TILE_SCALAR: (usize, usize) = (2, 4);

/// The upsampled DFT of one registration: scikit-image's `_upsampled_dft(conj(S), region, u,
/// offsets).conj()` as three complex matrix products, one per axis, x (the longest line, and the
/// one the half spectrum shortens) first. `half` is the non-redundant half of the spectrum of a
/// volume `nx` wide; the other half is its Hermitian mirror.
struct UpsampledDft<'a> {
    half: Lines<'a>,
    nx: usize,
    region: usize,
    kz: Kernel,
    ky: Kernel,
    kx: Kernel,
    level: Level,
}

impl<'a> UpsampledDft<'a> {
    fn new(
        half: Lines<'a>,
        nx: usize,
        region: usize,
        u: f64,
        offsets: [f64; 3],
        level: Level,
    ) -> Self {
        let (nz, ny) = (half.nz, half.ny);
        let cols = [X_TILE_AVX512.1, X_TILE_AVX2.1, X_TILE_SCALAR.1]
            .into_iter()
            .fold(1, |a, b| a * b / gcd(a, b));
        UpsampledDft {
            half,
            nx,
            region,
            kz: Kernel::new(nz, region, region, u, offsets[0]),
            ky: Kernel::new(ny, region, region, u, offsets[1]),
            kx: Kernel::new(nx, region, region.next_multiple_of(cols), u, offsets[2]),
            level,
        }
    }

    /// The first contraction (over x): `t1[y][z][c]`, `ny·nz·region` (the rows in `Lines`' order,
    /// as `mirrored_sums` leaves them).
    ///
    /// It runs over the half spectrum only: for 1 <= x <= nx - nh the full spectrum's column
    /// nx - x is conj(S[-z, -y, x]) and kx[c][nx - x] = conj(kx[c][x]), so the mirrored half of
    /// row (z, y)'s sum is conj of the partial sum `p` of row (-z, -y) over those x.
    fn contract_x(&self) -> Split {
        let (nz, ny, nh) = (self.half.nz, self.half.ny, self.half.nh);
        let r = self.region;
        let p = self.mirrored_sums();
        // x = 0, and for even nx the Nyquist column x = nh - 1, have no mirror.
        let nyquist = nh - 1 > self.nx - nh;
        let k0: Vec<Complex64> = (0..r).map(|c| self.kx.at(c, 0)).collect();
        let kn: Vec<Complex64> = (0..r).map(|c| self.kx.at(c, nh - 1)).collect();
        let mut t1 = Split::zeros(ny * nz * r);
        t1.re
            .par_chunks_mut(nz * r)
            .zip(t1.im.par_chunks_mut(nz * r))
            .enumerate()
            .for_each(|(y, (t_re, t_im))| {
                let ym = (ny - y) % ny;
                // The z-lines of columns 0 and nh - 1 of row y, contiguous in `Lines`.
                let s0 = &self.half.data[y * nh * nz..][..nz];
                let sn = &self.half.data[(y * nh + nh - 1) * nz..][..nz];
                for z in 0..nz {
                    let zm = (nz - z) % nz;
                    let (own_row, mirror_row) = ((y * nz + z) * r, (ym * nz + zm) * r);
                    let conj = |s: C32| Complex64::new(s.re as f64, -s.im as f64);
                    let (c0, cn) = (conj(s0[z]), conj(sn[z]));
                    for c in 0..r {
                        let mut own = k0[c] * c0 + p.at(own_row + c);
                        if nyquist {
                            own += kn[c] * cn;
                        }
                        let v = own + p.at(mirror_row + c).conj();
                        (t_re[z * r + c], t_im[z * r + c]) = (v.re, v.im);
                    }
                }
            });
        t1
    }

    /// `p[y·nz + z][c] = Σ_{x=1}^{nx-nh} kx[c][x]·conj(S[z][y][x])` for every line along x of the
    /// half spectrum: a complex matrix product whose vector lanes are consecutive z (contiguous in
    /// `Lines`), each sum in x order whatever the level.
    fn mirrored_sums(&self) -> Split {
        let rows = self.half.nz * self.half.ny;
        let r = self.region;
        // Tasks of whole tiles; about 8 per thread for balance.
        let block = (rows.div_ceil(8 * rayon::current_num_threads()))
            .next_multiple_of(8)
            .max(8);
        let mut p = Split::zeros(rows * r);
        let level = self.level;
        p.re.par_chunks_mut(block * r)
            .zip(p.im.par_chunks_mut(block * r))
            .enumerate()
            .for_each(|(b, (p_re, p_im))| {
                let row0 = b * block;
                let args = (self, row0, p_re, p_im);
                simd::dispatch!(level, mirrored_block, (args: MirroredArgs<'_, '_>))
            });
        p
    }
}

type MirroredArgs<'s, 'd> = (&'s UpsampledDft<'d>, usize, &'s mut [f64], &'s mut [f64]);

/// `mirrored_sums` for the rows from `row0` that `p_re`/`p_im` hold, with the level's tile.
#[inline(always)]
fn mirrored_block((dft, row0, p_re, p_im): MirroredArgs<'_, '_>) {
    #[cfg(target_arch = "x86_64")]
    match dft.level {
        Level::Avx512 => {
            return mirrored_tiles::<{ X_TILE_AVX512.0 }, { X_TILE_AVX512.1 }>(
                dft, row0, p_re, p_im,
            )
        }
        Level::Avx2 => {
            return mirrored_tiles::<{ X_TILE_AVX2.0 }, { X_TILE_AVX2.1 }>(dft, row0, p_re, p_im)
        }
        Level::Scalar => {}
    }
    mirrored_tiles::<{ X_TILE_SCALAR.0 }, { X_TILE_SCALAR.1 }>(dft, row0, p_re, p_im)
}

/// The register tiles of `mirrored_block`: `L` rows (lanes) by `C` output columns.
#[inline(always)]
fn mirrored_tiles<const L: usize, const C: usize>(
    dft: &UpsampledDft<'_>,
    row0: usize,
    p_re: &mut [f64],
    p_im: &mut [f64],
) {
    let half = dft.half;
    let (nz, nh) = (half.nz, half.nh);
    let m = dft.nx - nh;
    let r = dft.region;
    let count = p_re.len() / r;
    let total = half.nz * half.ny;
    let kx = &dft.kx;
    let mut h_re = vec![[0.0f64; L]; m];
    let mut h_im = vec![[0.0f64; L]; m];
    for t0 in (0..count).step_by(L) {
        // conj of the tile's lines, x = 1..=m, transposed: lane l is line (y, z) = row t0 + l
        // (zero past the end); lanes of one y read consecutive z.
        let base: [Option<usize>; L] = std::array::from_fn(|l| {
            let row = row0 + t0 + l;
            (row < total && t0 + l < count).then(|| ((row / nz) * nh + 1) * nz + row % nz)
        });
        let b0 = base[0].unwrap_or(0);
        if (0..L).all(|l| base[l] == Some(b0 + l)) {
            // The usual tile: L consecutive z of one y, contiguous at every x.
            // Loops rather than `array::from_fn`, which stays an out-of-line call compiled at the
            // baseline instead of in this level's copy.
            for x in 0..m {
                let v = &half.data[b0 + x * nz..][..L];
                for l in 0..L {
                    h_re[x][l] = v[l].re as f64;
                    h_im[x][l] = -v[l].im as f64;
                }
            }
        } else {
            for x in 0..m {
                for l in 0..L {
                    let v = base[l].map_or(C32::default(), |b| half.data[b + x * nz]);
                    h_re[x][l] = v.re as f64;
                    h_im[x][l] = -v.im as f64;
                }
            }
        }
        for c0 in (0..r).step_by(C) {
            let mut acc_re = [[0.0f64; L]; C];
            let mut acc_im = [[0.0f64; L]; C];
            let k_re: [&[f64]; C] = std::array::from_fn(|j| &kx.re[(c0 + j) * kx.n + 1..][..m]);
            let k_im: [&[f64]; C] = std::array::from_fn(|j| &kx.im[(c0 + j) * kx.n + 1..][..m]);
            for x in 0..m {
                let (hr, hi) = (h_re[x], h_im[x]);
                for j in 0..C {
                    let (kr, ki) = (k_re[j][x], k_im[j][x]);
                    for l in 0..L {
                        acc_re[j][l] += kr * hr[l] - ki * hi[l];
                        acc_im[j][l] += kr * hi[l] + ki * hr[l];
                    }
                }
            }
            for l in 0..L.min(count - t0) {
                for j in 0..C.min(r - c0) {
                    p_re[(t0 + l) * r + c0 + j] = acc_re[j][l];
                    p_im[(t0 + l) * r + c0 + j] = acc_im[j][l];
                }
            }
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `dst[c] = Σ_j k[j]·src[j][c]` over `c < dst.len()`, `src` rows `stride` apart, in j order: one
/// row of a complex matrix product, the form of the y and z contractions.
#[inline(always)]
fn contract_rows(
    k_re: &[f64],
    k_im: &[f64],
    src: (&[f64], &[f64]),
    stride: usize,
    dst: (&mut [f64], &mut [f64]),
) {
    let (d_re, d_im) = dst;
    let w = d_re.len();
    let d_im = &mut d_im[..w];
    d_re.fill(0.0);
    d_im.fill(0.0);
    for (j, (&kr, &ki)) in k_re.iter().zip(k_im).enumerate() {
        let (s_re, s_im) = (&src.0[j * stride..][..w], &src.1[j * stride..][..w]);
        for c in 0..w {
            d_re[c] += kr * s_re[c] - ki * s_im[c];
            d_im[c] += kr * s_im[c] + ki * s_re[c];
        }
    }
}

type RowsArgs<'a> = (
    &'a [f64],
    &'a [f64],
    (&'a [f64], &'a [f64]),
    usize,
    (&'a mut [f64], &'a mut [f64]),
);

#[inline(always)]
fn contract_rows_args((k_re, k_im, src, stride, dst): RowsArgs<'_>) {
    contract_rows(k_re, k_im, src, stride, dst)
}

/// `contract_rows` at `level`.
fn contract_rows_at(level: Level, args: RowsArgs<'_>) {
    simd::dispatch!(level, contract_rows_args, (args: RowsArgs<'_>))
}

impl UpsampledDft<'_> {
    /// The second contraction (over y) for output rows `b0..b0 + bs`: `t2[z][b - b0][c]`.
    fn contract_y(&self, t1: &Split, b0: usize, bs: usize, t2: &mut Split) {
        let (nz, ny) = (self.half.nz, self.half.ny);
        let r = self.region;
        let level = self.level;
        t2.re[..nz * bs * r]
            .par_chunks_mut(bs * r)
            .zip(t2.im[..nz * bs * r].par_chunks_mut(bs * r))
            .enumerate()
            .for_each(|(z, (t_re, t_im))| {
                // Plane z's rows of `t1` ([y][z][c]), `nz·r` apart.
                let src = (&t1.re[z * r..], &t1.im[z * r..]);
                for bl in 0..bs {
                    let b = b0 + bl;
                    let k = (&self.ky.re[b * ny..][..ny], &self.ky.im[b * ny..][..ny]);
                    let dst = (&mut t_re[bl * r..][..r], &mut t_im[bl * r..][..r]);
                    contract_rows_at(level, (k.0, k.1, src, nz * r, dst));
                }
            });
    }

    /// The last contraction (over z), conjugated: the region's values at plane `a`, row `bl` of a
    /// slab of `bs` rows whose y-contraction is `t2`, into `out` (`region` values).
    fn region_row(
        &self,
        t2: &Split,
        bs: usize,
        a: usize,
        bl: usize,
        out: (&mut [f64], &mut [f64]),
    ) {
        let nz = self.kz.n;
        let r = self.region;
        let k = (&self.kz.re[a * nz..][..nz], &self.kz.im[a * nz..][..nz]);
        let src = (&t2.re[bl * r..], &t2.im[bl * r..]);
        let (o_re, o_im) = out;
        contract_rows_at(
            self.level,
            (k.0, k.1, src, bs * r, (&mut *o_re, &mut *o_im)),
        );
        o_im.iter_mut().for_each(|v| *v = -*v);
    }
}

/// Whether `|v|` (as `norm`, a `hypot`) is surely below `best` (a `norm`), from `|v|²` alone: `hypot`
/// per value would dominate the region's sweep. The margin (1e-9 relative) dwarfs the rounding of
/// both; a `best` whose square is not a well-scaled normal number, and a NaN `|v|²`, decide nothing.
#[inline]
fn below(v: Complex64, best: f64) -> bool {
    let best_sq = best * best;
    best_sq.is_finite() && best_sq >= 1e-280 && v.norm_sqr() < best_sq * (1.0 - 1e-9)
}

/// The running maximum of the region's sweep: (|v|, C-order index, v), np.argmax's choice (the
/// first largest |v|; a NaN never ranks above anything).
#[derive(Clone, Copy)]
struct Peak {
    norm: f64,
    index: usize,
    value: Complex64,
}

impl Peak {
    const NONE: Peak = Peak {
        norm: f64::NEG_INFINITY,
        index: usize::MAX,
        value: Complex64::new(0.0, 0.0),
    };

    /// Takes the larger of two, ties to the lower index.
    fn pick(self, other: Peak) -> Peak {
        if other.norm > self.norm || (other.norm == self.norm && other.index < self.index) {
            other
        } else {
            self
        }
    }

    /// Offers the values `v` of one region row (C order, the first at index `index0`).
    fn visit_row(&mut self, re: &[f64], im: &[f64], index0: usize) {
        for (c, (&vr, &vi)) in re.iter().zip(im).enumerate() {
            let v = Complex64::new(vr, vi);
            if below(v, self.norm) {
                continue;
            }
            // Strictly larger, in C order within the row: NaN never replaces.
            if v.norm() > self.norm {
                *self = Peak {
                    norm: v.norm(),
                    index: index0 + c,
                    value: v,
                };
            }
        }
    }
}

/// The largest `|v|` of `_upsampled_dft(conj(spectrum), region, u, offsets).conj()` from
/// scikit-image and its index: the cross-correlation sampled on a `region`³ grid with spacing `1/u`
/// around the coarse peak (`UpsampledDft`), cheaper than zero-padding the whole volume by `u`, at
/// vector level `level`.
///
/// The region (`region`³ complex128: 50 GiB at u = 1000) is never held: it is swept in slabs of
/// output rows b (the region's y axis), each needing only the y-contraction `t2[z][b][c]` of its
/// rows (`slab_bytes`, see `upsample_slab_rows`), so the memory is the x-contraction's `2·nz·ny·region`
/// values plus the slab. Every value is summed in the same order whatever the slab, so it is bit
/// for bit the same, and the peak is np.argmax's over the whole region in C order: the first
/// largest |v|. Only indices in `window` (`--max-shift`; the whole region without it) are
/// candidates: planes and rows outside it are not computed, columns outside it not ranked. When
/// nothing ranks (all NaN) the answer is the window's first index (0, as np.argmax, without a bound).
#[allow(clippy::too_many_arguments)]
fn upsampled_peak_at(
    level: Level,
    half: Lines<'_>,
    nx: usize,
    region: usize,
    u: f64,
    offsets: [f64; 3],
    window: Window,
    slab_bytes: usize,
) -> ([usize; 3], Complex64) {
    let [wa, wb, wc] = window;
    let nz = half.nz;
    let dft = UpsampledDft::new(half, nx, region, u, offsets, level);
    let t1 = dft.contract_x();
    let rows = upsample_slab_rows(nz, region, slab_bytes);
    let mut t2 = Split::zeros(nz * rows * region);
    let mut best = Peak::NONE;
    for b0 in wb.clone().step_by(rows) {
        let bs = rows.min(wb.end - b0);
        dft.contract_y(&t1, b0, bs, &mut t2);
        let slab = wa
            .clone()
            .into_par_iter()
            .map_init(
                || Split::zeros(region),
                |row, a| {
                    let mut peak = Peak::NONE;
                    for bl in 0..bs {
                        dft.region_row(&t2, bs, a, bl, (&mut row.re, &mut row.im));
                        let (re, im) = (&row.re[wc.clone()], &row.im[wc.clone()]);
                        peak.visit_row(re, im, (a * region + b0 + bl) * region + wc.start);
                    }
                    peak
                },
            )
            .reduce(|| Peak::NONE, Peak::pick);
        best = best.pick(slab);
    }
    if best.index == usize::MAX {
        // No value ranked (all NaN): the window's first index, with its value.
        let first = [wa.start, wb.start, wc.start];
        dft.contract_y(&t1, first[1], 1, &mut t2);
        let mut row = Split::zeros(region);
        dft.region_row(&t2, 1, first[0], 0, (&mut row.re, &mut row.im));
        return (first, row.at(first[2]));
    }
    let i = best.index;
    (
        [i / (region * region), (i / region) % region, i % region],
        best.value,
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

    /// `upsampled_peak_at` over the whole region at the machine's level.
    fn upsampled_peak(
        half: Lines<'_>,
        nx: usize,
        region: usize,
        u: f64,
        offsets: [f64; 3],
        slab_bytes: usize,
    ) -> ([usize; 3], Complex64) {
        let all = [0..region, 0..region, 0..region];
        upsampled_peak_at(simd::level(), half, nx, region, u, offsets, all, slab_bytes)
    }

    /// A C-order half spectrum as `Lines` data.
    fn to_lines(half: ArrayView3<C32>) -> Vec<C32> {
        let (nz, _, nh) = half.dim();
        let mut out = vec![C32::default(); half.len()];
        for ((z, y, x), &v) in half.indexed_iter() {
            out[(y * nh + x) * nz + z] = v;
        }
        out
    }

    /// The whole region at once, as `upsampled_peak` computed it before it swept slabs.
    fn upsampled_dft_conj(
        half: &Array3<C32>,
        nx: usize,
        region: usize,
        u: f64,
        offsets: [f64; 3],
    ) -> Array3<Complex64> {
        upsampled_region_at(Level::Scalar, half, nx, region, u, offsets)
    }

    fn upsampled_region_at(
        level: Level,
        half: &Array3<C32>,
        nx: usize,
        region: usize,
        u: f64,
        offsets: [f64; 3],
    ) -> Array3<Complex64> {
        let nz = half.dim().0;
        let lines = to_lines(half.view());
        let half = Lines::new(&lines, half.shape().try_into().unwrap());
        let dft = UpsampledDft::new(half, nx, region, u, offsets, level);
        let t1 = dft.contract_x();
        let mut t2 = Split::zeros(nz * region * region);
        dft.contract_y(&t1, 0, region, &mut t2);
        let mut out = Array3::zeros((region, region, region));
        let mut row = Split::zeros(region);
        for a in 0..region {
            for b in 0..region {
                dft.region_row(&t2, region, a, b, (&mut row.re, &mut row.im));
                for c in 0..region {
                    out[[a, b, c]] = row.at(c);
                }
            }
        }
        out
    }

    #[test]
    fn upsampled_dft_is_the_same_at_every_vector_level() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Row counts that are and are not multiples of the tiles; regions past one column tile.
        for shape in [[4, 6, 8], [3, 5, 7], [2, 3, 1], [5, 7, 33], [1, 1, 16]] {
            let v = Array3::from_shape_fn(shape, |_| rng.random_range(-1.0f32..1.0));
            let half = RealFft3::new(shape).forward(v.view());
            for (region, u) in [(5, 3.0), (15, 10.0), (23, 15.0)] {
                let off = [2.0, 7.0, 4.0];
                let want = upsampled_region_at(Level::Scalar, &half, shape[2], region, u, off);
                for level in simd::available() {
                    let got = upsampled_region_at(level, &half, shape[2], region, u, off);
                    for (a, b) in got.iter().zip(want.iter()) {
                        assert_eq!(
                            (a.re.to_bits(), a.im.to_bits()),
                            (b.re.to_bits(), b.im.to_bits()),
                            "{shape:?} R={region} {level:?}"
                        );
                    }
                    let lines = to_lines(half.view());
                    let lines = Lines::new(&lines, half.shape().try_into().unwrap());
                    let all = [0..region, 0..region, 0..region];
                    let peak = upsampled_peak_at(level, lines, shape[2], region, u, off, all, 0);
                    assert_eq!(peak.0, whole_region_peak(&want).0, "{level:?}");
                }
            }
        }
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
                    let lines = to_lines(half.view());
                    let lines = Lines::new(&lines, half.shape().try_into().unwrap());
                    let got = upsampled_peak(lines, shape[2], region, u, off, budget);
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
            let lines = to_lines(half.view());
            let lines = Lines::new(&lines, half.shape().try_into().unwrap());
            let (i, v) = upsampled_peak(lines, shape[2], 7, 5.0, [3.0; 3], budget);
            assert_eq!((i, v.norm()), ([0; 3], 0.0), "budget {budget}");
        }
        // A NaN spectrum ranks nothing: index 0 and its (NaN) value, as the whole-region loop.
        let mut nan = RealFft3::new(shape).forward(zero.view());
        nan.fill(C32::new(f32::NAN, 0.0));
        let whole = whole_region_peak(&upsampled_dft_conj(&nan, shape[2], 7, 5.0, [3.0; 3]));
        for budget in [0, usize::MAX] {
            let (i, v) = upsampled_peak(
                Lines::new(&to_lines(nan.view()), nan.shape().try_into().unwrap()),
                shape[2],
                7,
                5.0,
                [3.0; 3],
                budget,
            );
            assert_eq!(i, whole.0);
            assert!(v.re.is_nan() && whole.1.re.is_nan());
        }
    }

    /// Registration as it ran before the fused passes (issue 12's CPU path): the whole cross-power
    /// spectrum, smoothed, inverted and searched within the window; the upsampled region computed
    /// whole and its first largest |v| taken among the window's indices.
    fn register_unfused(
        reference: ArrayView3<f32>,
        moving: ArrayView3<f32>,
        p: &RegisterParams,
    ) -> Registration {
        use crate::cross_power::{argmax_abs_real_within, cross_power};
        let shape: [usize; 3] = reference.shape().try_into().unwrap();
        let fft = RealFft3::new(shape);
        let f = fft.forward(reference);
        let mut g = fft.forward(moving);
        let (reference_power, reference_max) = power(&f, shape[2]);
        let (moving_power, moving_max) = power(&g, shape[2]);
        let scale = match p.normalization {
            Normalization::Phase => 1.0,
            Normalization::None => {
                spectrum_scale(reference_max, moving_max, shape.iter().product())
            }
        };
        cross_power(&f, &mut g, p.normalization, scale);
        if p.smooths() {
            Smooth::new(shape, p.smooth_sigma).spectrum(&mut g);
        }
        let kept = g.clone();
        let correlation = fft.inverse(g);
        let peak = argmax_abs_real_within(&correlation, p.coarse_window());
        let up = |region, u, offsets, window: Window| {
            let whole = upsampled_dft_conj(&kept, shape[2], region, u, offsets);
            let mut best = ([window[0].start, window[1].start, window[2].start], None);
            for ((a, b, c), v) in whole.indexed_iter() {
                let inside =
                    window[0].contains(&a) && window[1].contains(&b) && window[2].contains(&c);
                if inside && best.1.is_none_or(|n| v.norm() > n) && !v.norm().is_nan() {
                    best = ([a, b, c], Some(v.norm()));
                }
            }
            Ok::<_, std::convert::Infallible>((best.0, whole[best.0]))
        };
        let cc_peak = Complex64::new(correlation[peak] as f64, 0.0);
        let Ok((r, _)) = gpuprep_core::register::finish(
            shape,
            p,
            reference_power,
            moving_power,
            peak,
            cc_peak,
            scale,
            up,
        );
        r
    }

    #[test]
    fn window_and_smoothing_in_the_fused_passes_equal_the_unfused_path_at_every_level() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        for shape in [[6, 10, 12], [5, 9, 7], [1, 8, 9]] {
            let reference = Array3::from_shape_fn(shape, |_| rng.random_range(0.0f32..1.0));
            // Moved by (2, 4, -5) (z: 0 for a single plane), outside the window below in y and x.
            let moving = Array3::from_shape_fn(shape, |(z, y, x)| {
                let at =
                    |i: usize, s: isize, n: usize| (i as isize - s).rem_euclid(n as isize) as usize;
                let dz = if shape[0] > 1 { 2 } else { 0 };
                reference[[at(z, dz, shape[0]), at(y, 4, shape[1]), at(x, -5, shape[2])]]
                    + 0.3 * rng.random_range(-1.0f32..1.0)
            });
            for normalization in [Normalization::Phase, Normalization::None] {
                for u in [1, 4, 10] {
                    for max in [None, Some([1.0, 2.5, 3.0]), Some([3.0, 0.0, 6.0])] {
                        for sigma in [[0.0; 3], [1.0, 0.5, 2.0], [0.0, 0.0, 1.5]] {
                            let mut p = RegisterParams::new(u, normalization)
                                .unwrap()
                                .with_smooth_sigma(sigma)
                                .unwrap();
                            if let Some(m) = max {
                                p = p.with_max_shift(m).unwrap();
                            }
                            let want = register_unfused(reference.view(), moving.view(), &p);
                            let registrar = Registrar::new(reference.view(), &p);
                            for level in simd::available() {
                                let got = registrar.register_at(level, moving.view()).0;
                                let what = format!("{shape:?} {p:?} {level:?}");
                                assert_eq!(got.shift, want.shift, "{what}");
                                assert_eq!(
                                    got.phasediff.to_bits(),
                                    want.phasediff.to_bits(),
                                    "{what}"
                                );
                                // The power sums run in another order: the error to rounding.
                                assert!(
                                    (got.error - want.error).abs() <= 1e-9,
                                    "{what}: {got:?} {want:?}"
                                );
                                if let Some(m) = max {
                                    for (s, m) in got.shift.iter().zip(m) {
                                        assert!(s.abs() <= m + 1e-9, "{what}: {got:?}");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_upsampled_peak_within_a_window_is_the_windows_first_largest() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(29);
        let shape = [3, 5, 7];
        let v = Array3::from_shape_fn(shape, |_| rng.random_range(-1.0f32..1.0));
        let half = RealFft3::new(shape).forward(v.view());
        let (region, u, off) = (8, 5.0, [4.0, 3.2, 3.8]);
        let whole = upsampled_dft_conj(&half, shape[2], region, u, off);
        let lines = to_lines(half.view());
        for window in [[0..8, 2..5, 3..8], [7..8, 0..1, 0..8], [1..3, 0..8, 5..6]] {
            let mut want = ([0; 3], f64::NEG_INFINITY);
            for ((a, b, c), x) in whole.indexed_iter() {
                let inside =
                    window[0].contains(&a) && window[1].contains(&b) && window[2].contains(&c);
                if inside && x.norm() > want.1 {
                    want = ([a, b, c], x.norm());
                }
            }
            for level in simd::available() {
                for budget in [0, usize::MAX] {
                    let l = Lines::new(&lines, half.shape().try_into().unwrap());
                    let got = upsampled_peak_at(
                        level,
                        l,
                        shape[2],
                        region,
                        u,
                        off,
                        window.clone(),
                        budget,
                    );
                    assert_eq!(got.0, want.0, "{window:?} {level:?} budget {budget}");
                    assert_eq!(got.1, whole[got.0]);
                }
            }
        }
        // All NaN: the window's first index and its value.
        let mut nan = half.clone();
        nan.fill(C32::new(f32::NAN, 0.0));
        let lines = to_lines(nan.view());
        let l = Lines::new(&lines, nan.shape().try_into().unwrap());
        let (i, v) = upsampled_peak_at(
            simd::level(),
            l,
            shape[2],
            7,
            5.0,
            [3.0; 3],
            [2..5, 1..3, 4..7],
            0,
        );
        assert_eq!(i, [2, 1, 4]);
        assert!(v.re.is_nan());
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
