//! Cross-power spectrum and correlation-peak search on the CPU; CPU twin of `shaders/cross_power.wgsl`.

use gpuprep_core::complex::C32;
use gpuprep_core::params::Normalization;
use gpuprep_core::register::within;
use ndarray::{Array3, Zip};
use rayon::prelude::*;

/// The cross-power spectrum (a half spectrum, `nx` wide in full) times the Fourier transform of a
/// Gaussian (`gaussian_spectrum` per axis, their product taken in f32 in z, y, x order as the GPU
/// twin `gaussian_smooth` does): the correlation smoothed in real space.
pub fn smooth(r: &mut Array3<C32>, tables: &[Vec<f32>; 3]) {
    let [gz, gy, gx] = tables;
    r.axis_iter_mut(ndarray::Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(z, mut plane)| {
            for ((y, x), c) in plane.indexed_iter_mut() {
                let g = (gz[z] * gy[y]) * gx[x];
                *c = C32::new(c.re * g, c.im * g);
            }
        });
}

/// `R = F · conj(G)`, then with `phase` normalization `R /= max(|R|, 100·eps_f32)`, as
/// scikit-image does for float32 input. Written into `g`. The product and its magnitude are taken in
/// f64: |F·G*| passes f32's range (3.4e38) for volumes whose values reach ~1e17 (scikit-image's
/// float32 product overflows there and it raises), while the normalized result is a unit phasor.
/// Without normalization R itself is stored times `scale` (a power of two, so exact; 1 unless the
/// caller sees R overflow f32, see `spectrum_scale`).
pub fn cross_power(f: &Array3<C32>, g: &mut Array3<C32>, normalization: Normalization, scale: f64) {
    let floor = 100.0 * f32::EPSILON as f64;
    Zip::from(g).and(f).par_for_each(|g, f| {
        let (fr, fi, gr, gi) = (f.re as f64, f.im as f64, g.re as f64, g.im as f64);
        let (re, im) = (fr * gr + fi * gi, fi * gr - fr * gi);
        let d = match normalization {
            Normalization::Phase => (re * re + im * im).sqrt().max(floor),
            Normalization::None => 1.0 / scale,
        };
        *g = C32::new((re / d) as f32, (im / d) as f32);
    });
}

/// Index (C order) of the largest `|c|`; the first one on ties, as `np.argmax`.
pub fn argmax_abs(c: &Array3<C32>) -> [usize; 3] {
    argmax_by(c, |_, v| v.norm())
}

/// Index (C order) of the largest `|c|` of a real correlation; the first one on ties.
pub fn argmax_abs_real(c: &Array3<f32>) -> [usize; 3] {
    argmax_by(c, |_, v| v.abs())
}

/// `argmax_abs_real` among the shifts of at most `window` voxels per axis (`RegisterParams::
/// coarse_window`; `u32::MAX`: unbounded): outside it every value ranks below any inside.
pub fn argmax_abs_real_within(c: &Array3<f32>, window: [u32; 3]) -> [usize; 3] {
    if window == [u32::MAX; 3] {
        return argmax_abs_real(c);
    }
    let (nz, ny, nx) = c.dim();
    argmax_by(c, |i, v| {
        let (z, y, x) = (i / (ny * nx), (i / nx) % ny, i % nx);
        let inside =
            within(z, nz, window[0]) && within(y, ny, window[1]) && within(x, nx, window[2]);
        if inside {
            v.abs()
        } else {
            f32::NEG_INFINITY
        }
    })
}

/// `a` ranks above `b` in np.argmax's order: larger, and NaN above everything (numpy returns the
/// first NaN), so a non-finite correlation shows in its peak value instead of hiding behind a finite one.
#[inline]
fn above(a: f32, b: f32) -> bool {
    a > b || (a.is_nan() && !b.is_nan())
}

fn argmax_by<T: Sync>(c: &Array3<T>, key: impl Fn(usize, &T) -> f32 + Sync) -> [usize; 3] {
    let (_, ny, nx) = c.dim();
    const BLOCK: usize = 1 << 14;
    // Each block's first maximum, then the first block holding the largest: np.argmax's answer.
    let (_, best) = c
        .as_slice()
        .expect("standard layout")
        .par_chunks(BLOCK)
        .enumerate()
        .map(|(b, chunk)| {
            let mut best = (f32::NEG_INFINITY, b * BLOCK);
            for (i, v) in chunk.iter().enumerate() {
                let a = key(b * BLOCK + i, v);
                if above(a, best.0) {
                    best = (a, b * BLOCK + i);
                }
            }
            best
        })
        .reduce(
            || (f32::NEG_INFINITY, usize::MAX),
            |x, y| {
                let tie = y.0 == x.0 || (y.0.is_nan() && x.0.is_nan());
                if above(y.0, x.0) || (tie && y.1 < x.1) {
                    y
                } else {
                    x
                }
            },
        );
    let best = if best == usize::MAX { 0 } else { best };
    [best / (ny * nx), (best / nx) % ny, best % nx]
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuprep_core::register::spectrum_scale;

    #[test]
    fn phase_normalization_survives_a_product_beyond_f32_range() {
        // |F| = |G| = 1.4e22 (volumes of values ~1e18): |F·G*| = 2e44 is not an f32.
        let f = Array3::from_elem((1, 1, 2), C32::new(1e22, 1e22));
        let mut g = Array3::from_elem((1, 1, 2), C32::new(0.0, 1e22));
        cross_power(&f, &mut g, Normalization::Phase, 1.0);
        for v in g.iter() {
            assert!(
                (v.re - 0.70710677).abs() < 1e-6 && (v.im + 0.70710677).abs() < 1e-6,
                "{v}"
            );
        }
    }

    #[test]
    fn unnormalized_spectrum_is_scaled_into_f32_range_only_when_needed() {
        assert_eq!(spectrum_scale(1e10, 1e10, 1 << 20), 1.0);
        let s = spectrum_scale(1e22, 1e22, 1 << 20);
        assert!(s < 1.0 && s.log2().fract() == 0.0);
        assert!(1e44 * (1 << 20) as f64 * s <= 2f64.powi(120));
        let f = Array3::from_elem((1, 1, 1), C32::new(1e22, 0.0));
        let mut g = Array3::from_elem((1, 1, 1), C32::new(1e22, 0.0));
        cross_power(&f, &mut g, Normalization::None, s);
        assert!(((g[[0, 0, 0]].re as f64) / s / 1e44 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn windowed_argmax_keeps_to_the_window() {
        let mut c = Array3::from_elem((4, 8, 8), 0.5f32);
        c[[0, 4, 4]] = 9.0; // shift (0, 4, 4): outside a window of 2
        c[[0, 6, 1]] = 3.0; // shift (0, -2, 1): inside
        c[[1, 0, 0]] = 4.0; // z shift 1: outside a z window of 0
        assert_eq!(argmax_abs_real_within(&c, [u32::MAX; 3]), [0, 4, 4]);
        assert_eq!(argmax_abs_real_within(&c, [0, 2, 2]), [0, 6, 1]);
        assert_eq!(argmax_abs_real_within(&c, [1, 2, 2]), [1, 0, 0]);
    }

    #[test]
    fn argmax_ranks_nan_first_as_numpy() {
        let mut c = Array3::from_elem((1, 2, 3), 1.0f32);
        c[[0, 1, 2]] = 5.0;
        c[[0, 1, 0]] = f32::NAN;
        c[[0, 1, 1]] = f32::NAN;
        assert_eq!(argmax_abs_real(&c), [0, 1, 0]);
    }

    #[test]
    fn phase_normalization_survives_magnitudes_whose_square_overflows_f32() {
        // |F·G*| = 1.4e30: re² + im² overflows f32, the magnitude does not.
        let f = Array3::from_elem((1, 1, 2), C32::new(1e15, 1e15));
        let mut g = Array3::from_elem((1, 1, 2), C32::new(1e15, 0.0));
        cross_power(&f, &mut g, Normalization::Phase, 1.0);
        for v in g.iter() {
            assert!(
                (v.re - 0.70710677).abs() < 1e-6 && (v.im - 0.70710677).abs() < 1e-6,
                "{v}"
            );
        }
    }
}
