//! Registration's shared tail: from the correlation peak to scikit-image's shift, error and phase
//! difference, the finiteness checks, and the sizes both backends' upsampled DFTs are swept in.
//!
//! Both backends find the peak their own way (the CPU on the host, the GPU with a reduction) and
//! refine it with their own upsampled DFT; everything after that is this module's, so the two cannot
//! drift apart.
//! scikit-image's disambiguation of a shift modulo the volume (`disambiguate`) is here too, on the
//! host for both.

use crate::complex::Complex64;
use crate::error::{Error, Result};
use crate::params::{RegisterParams, Registration};

/// The error for a registration that is not finite (`what` is not); `input_max` is the largest
/// |value| of the volume, when known, for the message.
pub fn not_finite(what: &str, input_max: Option<f64>) -> Error {
    let hint = match input_max {
        Some(m) => format!("the volume's largest |value| is {m:.3e}; "),
        None => String::new(),
    };
    Error::Data(format!(
        "registration failed: {what} is not finite ({hint}float32 spectra overflow near 3.4e38 divided by the voxel count); rescale the data (e.g. to unit range) or skip registration"
    ))
}

/// Checks that a registration and the terms it came from are finite; `input_max` as `not_finite`.
pub fn check_finite(
    r: Registration,
    reference_power: f64,
    moving_power: f64,
    cc_peak: Complex64,
    input_max: impl FnOnce() -> Option<f64>,
) -> Result<Registration> {
    // An empty (all-zero) volume or reference has nothing to register: scikit-image warns and returns
    // error NaN with the shift of an all-zero correlation (0, or -dftshift/u when upsampling, which means
    // nothing). gpuprep gives shift 0, error NaN, phase difference 0, and the pipeline reports the
    // timepoints (`RunReport::empty_registrations`), so a blank frame is neither fatal nor silent.
    if reference_power == 0.0 || moving_power == 0.0 {
        return Ok(Registration {
            shift: [0.0; 3],
            error: f64::NAN,
            phasediff: 0.0,
        });
    }
    let what = if !reference_power.is_finite() {
        "the reference volume's spectrum"
    } else if !moving_power.is_finite() {
        "the moving volume's spectrum"
    } else if !(cc_peak.re.is_finite() && cc_peak.im.is_finite()) {
        "the cross-power spectrum (its correlation peak)"
    } else if !(r.error.is_finite()
        && r.phasediff.is_finite()
        && r.shift.iter().all(|s| s.is_finite()))
    {
        "the registration error"
    } else {
        return Ok(r);
    };
    Err(not_finite(what, input_max()))
}

/// From the correlation peak to scikit-image's shift, error and phase difference, with the
/// correlation value at the peak (unscaled). `cc_peak` is the correlation at `peak` (found within
/// `params.coarse_window()`); `up(region, u, offsets, window)` is the upsampled DFT's peak among the
/// region's indices in `window` (its index in the region and its value), called only when
/// `params.upsample_factor > 1`; `window` is the whole region unless `params.max_shift` bounds it. Both hold the cross-power times `scale` (`spectrum_scale`). The
/// result is not checked: see `check_finite`.
#[allow(clippy::too_many_arguments)]
pub fn finish<E>(
    shape: [usize; 3],
    params: &RegisterParams,
    reference_power: f64,
    moving_power: f64,
    peak: [usize; 3],
    cc_peak: Complex64,
    scale: f64,
    up: impl FnOnce(usize, f64, [f64; 3], Window) -> std::result::Result<([usize; 3], Complex64), E>,
) -> std::result::Result<(Registration, Complex64), E> {
    let n = shape.iter().product::<usize>() as f64;
    let mut shift = coarse_shift(peak, shape);
    let (cc_max, src_amp, target_amp) = if params.upsample_factor == 1 {
        (cc_peak, reference_power / n, moving_power / n)
    } else {
        let u = params.upsample_factor as f64;
        for s in &mut shift {
            *s = (*s * u).round() / u;
        }
        let region = (u * 1.5).ceil();
        let dftshift = (region / 2.0).trunc();
        let offsets = shift.map(|s| dftshift - s * u);
        let window = upsample_window(shift, region as usize, dftshift, u, params.max_shift);
        let (best, value) = up(region as usize, u, offsets, window)?;
        for a in 0..3 {
            shift[a] += (best[a] as f64 - dftshift) / u;
        }
        (value, reference_power, moving_power)
    };
    let cc_max = cc_max / scale;
    Ok((score(shift, shape, cc_max, src_amp, target_amp), cc_max))
}

/// The indices of the upsampled region searched along each axis (z, y, x), a range in each.
pub type Window = [std::ops::Range<usize>; 3];

/// The region's indices whose shift `coarse + (i - dftshift) / u` is within `max` (all when `None`):
/// a contiguous range per axis, never empty when the coarse shift itself is within `max` (i = dftshift).
pub fn upsample_window(
    coarse: [f64; 3],
    region: usize,
    dftshift: f64,
    u: f64,
    max: Option<[f64; 3]>,
) -> Window {
    std::array::from_fn(|a| match max {
        None => 0..region,
        Some(m) => {
            let ok = |i: usize| (coarse[a] + (i as f64 - dftshift) / u).abs() <= m[a] + 1e-9;
            match (0..region).find(|&i| ok(i)) {
                Some(lo) => lo..(lo..region).find(|&i| !ok(i)).unwrap_or(region),
                None => 0..region,
            }
        }
    })
}

/// Whether index `k` of an axis of length `n` (a correlation's, wrapping past the midpoint to
/// negative shifts as `coarse_shift`) is a shift of at most `w` voxels.
#[inline]
pub fn within(k: usize, n: usize, w: u32) -> bool {
    let s = if k > n / 2 { n - k } else { k };
    s as u64 <= w as u64
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
pub fn fftfreq(k: usize, n: usize, d: f64) -> f64 {
    let k = if k < n.div_ceil(2) {
        k as f64
    } else {
        k as f64 - n as f64
    };
    k / (n as f64 * d)
}

/// Bytes of the upsampled DFT's intermediate slab (`upsampled_peak`): the ⌈1.5·u⌉³ region is swept in
/// slabs of output rows whose y-contraction fits this, so its memory no longer grows as u³.
pub const UPSAMPLE_SLAB_BYTES: usize = 64 << 20;

/// Output rows (along the region's y axis) per slab of `upsampled_peak` for a volume `nz` deep: as
/// many as fit `slab_bytes` of complex128 (`nz·region` a row), at least one, at most `region`.
pub fn upsample_slab_rows(nz: usize, region: usize, slab_bytes: usize) -> usize {
    (slab_bytes / (16 * nz * region).max(1)).clamp(1, region.max(1))
}

/// Output rows (along the region's z axis) per slab of the GPU's last upsampled-DFT contraction (`upsampled_peak_z`): as many `r²` planes of
/// complex f32 as fit `slab_bytes`, at least one, at most `r`.
pub fn upsample_slab_planes(r: usize, slab_bytes: usize) -> usize {
    (slab_bytes / (8 * r * r).max(1)).clamp(1, r.max(1))
}

/// The power of two by which an unnormalized cross-power spectrum is stored so that it and its
/// inverse FFT (whose unscaled sums reach `n · max|R|`) stay within f32's range: 1 for any
/// `n · max|F| · max|G|` up to 2^120, else the power of two that brings it there.
pub fn spectrum_scale(max_f: f64, max_g: f64, n: usize) -> f64 {
    let bound = max_f * max_g * n as f64;
    if bound.is_nan() || bound <= 2f64.powi(120) {
        return 1.0;
    }
    2f64.powi(120 - bound.log2().ceil() as i32)
}

/// scikit-image's `_disambiguate_shift` (0.26, `phase_cross_correlation(..., disambiguate=True)`):
/// the peak of a phase correlation gives each axis's shift only modulo the axis's length, so the
/// candidates are the positive (`shift mod n`) and the negative (`that - n`) one per axis. `moving` is
/// shifted by `shift` with scipy's `grid-wrap` (order 0 for whole-voxel shifts, 3 otherwise), which
/// splits it at `round(shift mod n)` along each axis into 2^3 tiles; each tile with more than 2 voxels
/// is Pearson-correlated with the same tile of `reference`, and the best tile (the first, in
/// `itertools.product` order, among equals; NaN never wins) picks per axis the negative candidate (its
/// tile before the split) or the positive one (after). `None` when no tile qualifies (every tile of
/// 2 voxels or fewer, or constant): scikit-image then warns that the disambiguation is degenerate and
/// keeps the shift as it was.
///
/// The chosen candidate is `shift` itself when it has the same sign, so an unchanged axis keeps its
/// value bit for bit (scikit-image's `(shift mod n) - n` may move it by an ulp).
pub fn disambiguate(
    reference: ndarray::ArrayView3<f32>,
    moving: ndarray::ArrayView3<f32>,
    shift: [f64; 3],
) -> Option<[f64; 3]> {
    let d = reference.dim();
    let shape = [d.0, d.1, d.2];
    let positive: [f64; 3] = std::array::from_fn(|a| shift[a].rem_euclid(shape[a] as f64));
    let subpixel = shift.iter().any(|s| s.rem_euclid(1.0) != 0.0);
    let shifted = crate::spline::shift_grid_wrap(moving, shift, if subpixel { 3 } else { 0 });
    let split: [usize; 3] = std::array::from_fn(|a| positive[a].round_ties_even() as usize);
    let corr = tile_correlations(reference, shifted.view(), split);
    let (mut best, mut best_tile) = (-1.0, None);
    for (tile, &c) in corr.iter().enumerate() {
        if c > best {
            best = c;
            best_tile = Some(tile);
        }
    }
    let tile = best_tile?;
    Some(std::array::from_fn(|a| {
        let after_split = tile >> (2 - a) & 1 == 1;
        match (after_split, shift[a] >= 0.0) {
            (true, true) | (false, false) => shift[a],
            (true, false) => positive[a],
            (false, true) => positive[a] - shape[a] as f64,
        }
    }))
}

/// Pearson correlation of `a` and `b` over each of the 8 tiles that `split` cuts the volume into
/// (tile bit 2: z at or after `split[0]`, bit 1: y, bit 0: x, so tiles go in `itertools.product`
/// order), as `np.corrcoef` of the float64 tiles computes it (mean removed, then
/// `cov / sd_a / sd_b` with `n - 1`, clipped to [-1, 1]); -1 for tiles of 2 voxels or fewer.
fn tile_correlations(
    a: ndarray::ArrayView3<f32>,
    b: ndarray::ArrayView3<f32>,
    split: [usize; 3],
) -> [f64; 8] {
    let tile = |z: usize, y: usize, x: usize| {
        ((z >= split[0]) as usize) << 2 | ((y >= split[1]) as usize) << 1 | (x >= split[2]) as usize
    };
    let mut count = [0usize; 8];
    let (mut sa, mut sb) = ([0.0f64; 8], [0.0f64; 8]);
    for ((z, y, x), &va) in a.indexed_iter() {
        let t = tile(z, y, x);
        count[t] += 1;
        sa[t] += va as f64;
        sb[t] += b[(z, y, x)] as f64;
    }
    let ma: [f64; 8] = std::array::from_fn(|t| sa[t] / count[t].max(1) as f64);
    let mb: [f64; 8] = std::array::from_fn(|t| sb[t] / count[t].max(1) as f64);
    let (mut aa, mut bb, mut ab) = ([0.0f64; 8], [0.0f64; 8], [0.0f64; 8]);
    for ((z, y, x), &va) in a.indexed_iter() {
        let t = tile(z, y, x);
        let (da, db) = (va as f64 - ma[t], b[(z, y, x)] as f64 - mb[t]);
        aa[t] += da * da;
        bb[t] += db * db;
        ab[t] += da * db;
    }
    std::array::from_fn(|t| {
        if count[t] <= 2 {
            return -1.0;
        }
        let m = (count[t] - 1) as f64;
        let c = ab[t] / m / (aa[t] / m).sqrt() / (bb[t] / m).sqrt();
        if c.is_nan() {
            c
        } else {
            c.clamp(-1.0, 1.0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upsampled_window_holds_shifts_within_the_bound() {
        // u = 4: region 6, dftshift 3, coarse shift 2 along y, bound 2.5: shifts 2 + (i - 3)/4.
        let w = upsample_window([0.0, 2.0, -2.0], 6, 3.0, 4.0, Some([0.0, 2.5, 2.25]));
        assert_eq!(w, [3..4, 0..6, 2..6]);
        assert_eq!(
            upsample_window([1.0; 3], 6, 3.0, 4.0, None),
            [0..6, 0..6, 0..6]
        );
        assert!(within(0, 8, 0) && within(7, 8, 1) && !within(6, 8, 1) && within(4, 8, 4));
        assert!(!within(4, 8, 3) && within(3, 7, 3) && within(4, 7, 3));
    }
}
