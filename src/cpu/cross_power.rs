//! Cross-power spectrum and correlation-peak search on the CPU; CPU twin of `shaders/cross_power.wgsl`.

use super::fft::C32;
use crate::params::Normalization;
use ndarray::{Array3, Zip};
use rayon::prelude::*;

/// `R = F · conj(G)`, then with `phase` normalization `R /= max(|R|, 100·eps_f32)`, as
/// scikit-image does in single precision for float32 input. Written into `g`.
pub fn cross_power(f: &Array3<C32>, g: &mut Array3<C32>, normalization: Normalization) {
    let floor = 100.0 * f32::EPSILON;
    Zip::from(g).and(f).par_for_each(|g, f| {
        let r = f * g.conj();
        *g = match normalization {
            Normalization::Phase => r / magnitude(r).max(floor),
            Normalization::None => r,
        };
    });
}

/// `|r|` as numpy's `abs` (hypot): no overflow where `re² + im²` passes f32's range (|r| > 1.8e19,
/// reached by the DC bin of large integer volumes). In f64, which is several times faster than `hypot`.
fn magnitude(r: C32) -> f32 {
    let (re, im) = (r.re as f64, r.im as f64);
    (re * re + im * im).sqrt() as f32
}

/// Index (C order) of the largest `|c|`; the first one on ties, as `np.argmax`.
pub fn argmax_abs(c: &Array3<C32>) -> [usize; 3] {
    argmax_by(c, |v| v.norm())
}

/// Index (C order) of the largest `|c|` of a real correlation; the first one on ties.
pub fn argmax_abs_real(c: &Array3<f32>) -> [usize; 3] {
    argmax_by(c, |v| v.abs())
}

fn argmax_by<T: Sync>(c: &Array3<T>, key: impl Fn(&T) -> f32 + Sync) -> [usize; 3] {
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
                let a = key(v);
                if a > best.0 {
                    best = (a, b * BLOCK + i);
                }
            }
            best
        })
        .reduce(
            || (f32::NEG_INFINITY, usize::MAX),
            |x, y| {
                if y.0 > x.0 || (y.0 == x.0 && y.1 < x.1) {
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

    #[test]
    fn phase_normalization_survives_magnitudes_whose_square_overflows_f32() {
        // |F·G*| = 1.4e30: re² + im² overflows f32, the magnitude does not.
        let f = Array3::from_elem((1, 1, 2), C32::new(1e15, 1e15));
        let mut g = Array3::from_elem((1, 1, 2), C32::new(1e15, 0.0));
        cross_power(&f, &mut g, Normalization::Phase);
        for v in g.iter() {
            assert!(
                (v.re - 0.70710677).abs() < 1e-6 && (v.im - 0.70710677).abs() < 1e-6,
                "{v}"
            );
        }
    }
}
