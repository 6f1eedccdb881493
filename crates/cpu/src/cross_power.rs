//! Cross-power spectrum and correlation-peak search on the CPU; CPU twin of `shaders/cross_power.wgsl`.

use gpuprep_core::complex::C32;
use gpuprep_core::params::Normalization;
use ndarray::Array3;
use rayon::prelude::*;

/// `R = F · conj(G)`, then with `phase` normalization `R /= max(|R|, 100·eps_f32)`, as
/// scikit-image does for float32 input. Written into `g`. The product and its magnitude are taken in
/// f64: |F·G*| passes f32's range (3.4e38) for volumes whose values reach ~1e17 (scikit-image's
/// float32 product overflows there and it raises), while the normalized result is a unit phasor.
/// Without normalization R itself is stored times `scale` (a power of two, so exact; 1 unless the
/// caller sees R overflow f32, see `spectrum_scale`).
pub fn cross_power(f: &Array3<C32>, g: &mut Array3<C32>, normalization: Normalization, scale: f64) {
    assert_eq!(f.dim(), g.dim(), "spectra of one shape");
    cross_power_slices(
        f.as_slice().expect("standard layout"),
        g.as_slice_mut().expect("standard layout"),
        normalization,
        scale,
    );
}

/// `cross_power` on spectra stored as slices of one length.
pub fn cross_power_slices(f: &[C32], g: &mut [C32], normalization: Normalization, scale: f64) {
    g.par_chunks_mut(1 << 14)
        .zip(f.par_chunks(1 << 14))
        .for_each(|(g, f)| {
            for (g, f) in g.iter_mut().zip(f) {
                *g = cross_one(*f, *g, normalization, scale);
            }
        });
}

/// One bin of `cross_power`: `f·conj(g)`, normalized or times `scale`.
#[inline(always)]
pub fn cross_one(f: C32, g: C32, normalization: Normalization, scale: f64) -> C32 {
    let floor = 100.0 * f32::EPSILON as f64;
    let (fr, fi, gr, gi) = (f.re as f64, f.im as f64, g.re as f64, g.im as f64);
    let (re, im) = (fr * gr + fi * gi, fi * gr - fr * gi);
    let d = match normalization {
        Normalization::Phase => (re * re + im * im).sqrt().max(floor),
        Normalization::None => 1.0 / scale,
    };
    C32::new((re / d) as f32, (im / d) as f32)
}

/// Index (C order) of the largest `|c|`; the first one on ties, as `np.argmax`.
pub fn argmax_abs(c: &Array3<C32>) -> [usize; 3] {
    argmax_by(c, |v| v.norm())
}

/// Index (C order) of the largest `|c|` of a real correlation; the first one on ties.
pub fn argmax_abs_real(c: &Array3<f32>) -> [usize; 3] {
    argmax_by(c, |v| v.abs())
}

/// `a` ranks above `b` in np.argmax's order: larger, and NaN above everything (numpy returns the
/// first NaN), so a non-finite correlation shows in its peak value instead of hiding behind a finite one.
#[inline]
fn above(a: f32, b: f32) -> bool {
    a > b || (a.is_nan() && !b.is_nan())
}

fn argmax_by<T: Sync>(c: &Array3<T>, key: impl Fn(&T) -> f32 + Sync) -> [usize; 3] {
    let (_, ny, nx) = c.dim();
    const BLOCK: usize = 1 << 14;
    // Each block's first maximum, then the first block holding the largest: np.argmax's answer.
    let best = c
        .as_slice()
        .expect("standard layout")
        .par_chunks(BLOCK)
        .enumerate()
        .map(|(b, chunk)| {
            let mut best = ArgMax::NONE;
            for (i, v) in chunk.iter().enumerate() {
                best.offer_key(key(v), b * BLOCK + i);
            }
            best
        })
        .reduce(|| ArgMax::NONE, ArgMax::merge)
        .index();
    [best / (ny * nx), (best / nx) % ny, best % nx]
}

/// np.argmax's running choice over `|value|`: the first largest, NaN above everything. `value` is
/// the signed value at `index`.
#[derive(Clone, Copy, Debug)]
pub struct ArgMax {
    key: f32,
    pub value: f32,
    index: usize,
}

impl ArgMax {
    pub const NONE: ArgMax = ArgMax {
        key: f32::NEG_INFINITY,
        value: 0.0,
        index: usize::MAX,
    };

    /// Offers a key alone (its value is not kept).
    #[inline]
    fn offer_key(&mut self, key: f32, index: usize) {
        if above(key, self.key) {
            (self.key, self.index) = (key, index);
        }
    }

    /// Offers `values` (C order, the first at `index0`), after any offered before them.
    #[inline]
    pub fn offer(&mut self, values: &[f32], index0: usize) {
        for (i, &v) in values.iter().enumerate() {
            if above(v.abs(), self.key) {
                *self = ArgMax {
                    key: v.abs(),
                    value: v,
                    index: index0 + i,
                };
            }
        }
    }

    /// The choice over both sets of values, whichever order they were offered in.
    pub fn merge(self, other: ArgMax) -> ArgMax {
        let tie = other.key == self.key || (other.key.is_nan() && self.key.is_nan());
        if above(other.key, self.key) || (tie && other.index < self.index) {
            other
        } else {
            self
        }
    }

    /// The index chosen; 0 when nothing was offered.
    pub fn index(&self) -> usize {
        if self.index == usize::MAX {
            0
        } else {
            self.index
        }
    }
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
