//! 3-D median filter on the CPU; CPU twin of `shaders/median3d.wgsl`.
//!
//! Matches `scipy.ndimage.median_filter(vol, size=(sz, sy, sx), mode, cval)` on float32 exactly: the
//! median of an odd window is one of its values, so there is no rounding to disagree about. Values are
//! ordered by `f32::total_cmp`, so NaN sorts above +Inf (scipy leaves NaN unspecified; the pipeline
//! rejects or replaces non-finite input before filtering).

use super::boundary::filter_index;
use crate::params::MedianParams;
use ndarray::{Array3, ArrayView3, Axis};
use rayon::prelude::*;

/// For one axis: the source index of every (output index, window offset) pair, `None` for cval.
fn window_indices(n: usize, size: usize, p: &MedianParams) -> Vec<Option<usize>> {
    let r = (size / 2) as isize;
    (0..n as isize)
        .flat_map(|i| (-r..=r).map(move |d| filter_index(i + d, n, p.mode)))
        .collect()
}

pub fn median3d(input: ArrayView3<f32>, p: &MedianParams) -> Array3<f32> {
    let (nz, ny, nx) = input.dim();
    let [sz, sy, sx] = p.size;
    if sz * sy * sx == 1 {
        return input.to_owned();
    }
    let input = input.as_standard_layout();
    let src = input.as_slice().expect("standard layout");
    let iz = window_indices(nz, sz, p);
    let iy = window_indices(ny, sy, p);
    let ix = window_indices(nx, sx, p);
    let rank = sz * sy * sx / 2;
    let mut out = Array3::<f32>::zeros((nz, ny, nx));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each_init(
            || Vec::with_capacity(sz * sy * sx),
            |window, (z, mut plane)| {
                for y in 0..ny {
                    for x in 0..nx {
                        window.clear();
                        for dz in &iz[z * sz..(z + 1) * sz] {
                            for dy in &iy[y * sy..(y + 1) * sy] {
                                for dx in &ix[x * sx..(x + 1) * sx] {
                                    window.push(match (dz, dy, dx) {
                                        (Some(a), Some(b), Some(c)) => src[(a * ny + b) * nx + c],
                                        _ => p.cval,
                                    });
                                }
                            }
                        }
                        let (_, m, _) = window.select_nth_unstable_by(rank, |a, b| a.total_cmp(b));
                        plane[[y, x]] = *m;
                    }
                }
            },
        );
    out
}
