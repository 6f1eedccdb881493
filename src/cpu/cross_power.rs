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
            // sqrt(re² + im²) rather than hypot: within an ulp of numpy's abs, and several times faster.
            Normalization::Phase => r / r.norm_sqr().sqrt().max(floor),
            Normalization::None => r,
        };
    });
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
