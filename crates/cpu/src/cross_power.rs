//! Cross-power spectrum and correlation-peak search on the CPU; CPU twin of `shaders/cross_power.wgsl`.

use gpuprep_core::complex::C32;
use gpuprep_core::params::{gaussian_spectrum, Normalization};
use gpuprep_core::register::within;
use ndarray::Array3;
use rayon::prelude::*;
use std::ops::Range;

/// `--smooth-sigma`'s Gaussian (`gaussian_spectrum` per axis, x's over the half spectrum): the
/// cross-power spectrum times it is the correlation smoothed in real space.
pub struct Smooth {
    gz: Vec<f32>,
    gy: Vec<f32>,
    gx: Vec<f32>,
}

impl Smooth {
    /// The tables for a volume of `shape` (its half spectrum `nx / 2 + 1` wide), smoothed by `sigma`.
    pub fn new([nz, ny, nx]: [usize; 3], [sz, sy, sx]: [f64; 3]) -> Self {
        let mut gx = gaussian_spectrum(nx, sx);
        gx.truncate(nx / 2 + 1);
        Smooth {
            gz: gaussian_spectrum(nz, sz),
            gy: gaussian_spectrum(ny, sy),
            gx,
        }
    }

    /// The factor of bin (z, y, x), taken in f32 in z, y, x order as the GPU twin `gaussian_smooth`
    /// does, so both backends multiply by the same bits.
    #[inline(always)]
    pub fn at(&self, z: usize, y: usize, x: usize) -> f32 {
        (self.gz[z] * self.gy[y]) * self.gx[x]
    }

    /// Bin (z, y, x) of the cross-power spectrum, smoothed.
    #[inline(always)]
    pub fn apply(&self, c: C32, z: usize, y: usize, x: usize) -> C32 {
        let g = self.at(z, y, x);
        C32::new(c.re * g, c.im * g)
    }

    /// The line along z at (y, x) of the cross-power spectrum, smoothed in place.
    #[inline(always)]
    pub fn line(&self, line: &mut [C32], y: usize, x: usize) {
        for (z, c) in line.iter_mut().enumerate() {
            *c = self.apply(*c, z, y, x);
        }
    }

    /// A half spectrum (C order, `(nz, ny, nx / 2 + 1)`), smoothed in place.
    pub fn spectrum(&self, r: &mut Array3<C32>) {
        r.axis_iter_mut(ndarray::Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(z, mut plane)| {
                for ((y, x), c) in plane.indexed_iter_mut() {
                    *c = self.apply(*c, z, y, x);
                }
            });
    }
}

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

/// The coarse peak's search window (`RegisterParams::coarse_window`) over a correlation of `shape`,
/// as the rows (lines along x) the fused peak search offers: a row ranks only where its (z, y) is
/// within the window, and then only at the x within it. Index 0 (shift 0) is always inside, so
/// skipping the rest is ranking it below everything inside.
#[derive(Clone, Debug)]
pub struct CoarseWindow {
    window: [u32; 3],
    shape: [usize; 3],
    /// The x within the window: shifts 0..=wx, then the wrapped negative ones up to the end.
    xs: [Range<usize>; 2],
}

impl CoarseWindow {
    pub fn new(shape: [usize; 3], window: [u32; 3]) -> Self {
        CoarseWindow {
            window,
            shape,
            xs: within_ranges(shape[2], window[2]),
        }
    }

    /// Whether every index ranks.
    pub fn is_unbounded(&self) -> bool {
        self.window == [u32::MAX; 3]
    }

    /// The parts of row `row` (its index along the (nz·ny) rows) within the window, C order.
    #[inline]
    pub fn row(&self, row: usize) -> Option<&[Range<usize>; 2]> {
        let [nz, ny, _] = self.shape;
        let (z, y) = (row / ny, row % ny);
        (within(z, nz, self.window[0]) && within(y, ny, self.window[1])).then_some(&self.xs)
    }
}

/// The indices `k` of an axis of length `n` with `within(k, n, w)`, as two ranges in order: `0..a`
/// (shifts 0..=w) and `b..n` (the wrapped shifts -w..-1); the second is empty when they meet.
fn within_ranges(n: usize, w: u32) -> [Range<usize>; 2] {
    let w = usize::try_from(w).unwrap_or(usize::MAX);
    let a = w.min(n / 2).saturating_add(1).min(n);
    let b = n.saturating_sub(w).max(n / 2 + 1).max(a);
    [0..a, b.min(n)..n]
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
    let best = c
        .as_slice()
        .expect("standard layout")
        .par_chunks(BLOCK)
        .enumerate()
        .map(|(b, chunk)| {
            let mut best = ArgMax::NONE;
            for (i, v) in chunk.iter().enumerate() {
                best.offer_key(key(b * BLOCK + i, v), b * BLOCK + i);
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

    /// Offers `values` (C order, the first at `index0`), after any offered before them: the plain
    /// reference `offer_scaled` is tested against.
    #[cfg(test)]
    fn offer(&mut self, values: &[f32], index0: usize) {
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

    /// `offer` of `values` each times `scale` (positive), without multiplying the values that
    /// cannot rank: a block of them is passed over when every `|v|·scale` is at most the key so
    /// far (compared lane by lane; a NaN or a NaN key fails the comparison and takes the exact
    /// path), which is every block once the peak is found. `|v·scale|` is `|v|·scale` bit for bit
    /// and rounding is monotone, so the choice is `offer`'s on the scaled values.
    #[inline]
    pub fn offer_scaled(&mut self, values: &[f32], scale: f32, index0: usize) {
        const BLOCK: usize = 16;
        let mut blocks = values.chunks_exact(BLOCK);
        let mut start = index0;
        for block in &mut blocks {
            let key = self.key;
            let below = block
                .iter()
                .map(|&v| u32::from(v.abs() * scale <= key))
                .sum::<u32>();
            if below as usize != BLOCK {
                self.offer_each_scaled(block, scale, start);
            }
            start += BLOCK;
        }
        self.offer_each_scaled(blocks.remainder(), scale, start);
    }

    #[inline]
    fn offer_each_scaled(&mut self, values: &[f32], scale: f32, index0: usize) {
        for (i, &v) in values.iter().enumerate() {
            let v = v * scale;
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
    fn offer_scaled_chooses_as_offer_of_the_scaled_values() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let specials = [
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            0.0,
            -0.0,
            1e-45,
            3.0,
            -3.0,
        ];
        for case in 0..400 {
            let n = rng.random_range(1..70);
            let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(-4.0f32..4.0)).collect();
            // Ties, repeats and non-finite values in some cases.
            for _ in 0..rng.random_range(0..4) {
                let i = rng.random_range(0..n);
                v[i] = if case % 3 == 0 {
                    specials[rng.random_range(0..8)]
                } else {
                    3.0
                };
            }
            let scale = [1.0 / 1e6, 0.37, 1.0, 3.0e-39][case % 4];
            let (mut fast, mut plain) = (ArgMax::NONE, ArgMax::NONE);
            let cut = rng.random_range(0..=n);
            fast.offer_scaled(&v[..cut], scale, 0);
            fast.offer_scaled(&v[cut..], scale, cut);
            let scaled: Vec<f32> = v.iter().map(|&x| x * scale).collect();
            plain.offer(&scaled, 0);
            assert_eq!(
                (fast.index, fast.key.to_bits(), fast.value.to_bits()),
                (plain.index, plain.key.to_bits(), plain.value.to_bits()),
                "case {case}: {v:?} × {scale}"
            );
        }
    }

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
    fn window_ranges_hold_exactly_the_indices_within() {
        for n in 1..12 {
            for w in (0..14).chain([u32::MAX - 1, u32::MAX]) {
                let [a, b] = within_ranges(n, w);
                assert!(a.end <= b.start || b.is_empty(), "n {n} w {w}: {a:?} {b:?}");
                for k in 0..n {
                    let inside = a.contains(&k) || b.contains(&k);
                    assert_eq!(inside, within(k, n, w), "n {n} w {w} k {k}: {a:?} {b:?}");
                }
            }
        }
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
