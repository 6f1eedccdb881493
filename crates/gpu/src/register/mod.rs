//! Host side of `shaders/cross_power.wgsl` with the FFTs of `fft.rs`: scikit-image's
//! `phase_cross_correlation` on the device. CPU twin: `crates/cpu/src/register.rs` (whose tail,
//! `gpuprep_core::register::finish`, both routes share, with the peak, the powers and the
//! upsampled DFT computed on the GPU).
//!
//! This module holds what both routes share: the shader's uniforms and partials, the peak
//! reduction, the scale of unnormalized spectra and the checked tail (`finish`). The routes:
//! `resident` (the spectra on the device, registration in two steps: `submit`, then `resolve`),
//! `tiled` (slabs, the spectra on the host) and `upsample` (the upsampled DFT's contractions).

mod resident;
mod tiled;
mod upsample;

pub use resident::{GpuRegistrar, Pending};
pub use tiled::TiledRegistrar;

use super::fft::line_work;
use bytemuck::{Pod, Zeroable};
use gpuprep_core::complex::Complex64;
use gpuprep_core::error::Result;
use gpuprep_core::params::{gaussian_spectrum, Normalization, RegisterParams, Registration};
pub use gpuprep_core::register::upsample_slab_planes;
use gpuprep_core::register::{check_finite, Window, UPSAMPLE_SLAB_BYTES};

/// Uniforms of `cross_power.wgsl` (`struct Params`); `tests/shaders.rs` (`uniform_structs_match_wgsl`) checks the layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CrossUniform {
    pub total: u32,
    pub phase: u32,
    pub d0: u32,
    pub d1: u32,
    pub d2: u32,
    pub axis: u32,
    pub r: u32,
    /// `cross_power`, unnormalized: f32 bits of the power of two R is stored times (0 means 1).
    pub scale_bits: u32,
    /// `argmax_abs`: 1 when only shifts within (`wz`, `wy`, `wx`) voxels rank (`--max-shift`); the
    /// volume is then `d0`·`d1`·`d2` and the buffer starts at plane `z0` of it (tiled slabs).
    pub window: u32,
    pub wz: u32,
    pub wy: u32,
    pub wx: u32,
    pub z0: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}
const _: () = assert!(std::mem::size_of::<CrossUniform>() == 64);

/// The uniform of an `argmax_abs` over a correlation of `shape` whose buffer starts at plane `z0`
/// (`total` values), ranking only shifts within `p.coarse_window()`.
fn argmax_uniform(p: &RegisterParams, shape: [usize; 3], z0: usize, total: usize) -> CrossUniform {
    let [wz, wy, wx] = p.coarse_window();
    CrossUniform {
        total: total as u32,
        d0: shape[0] as u32,
        d1: shape[1] as u32,
        d2: shape[2] as u32,
        window: p.max_shift.is_some() as u32,
        wz,
        wy,
        wx,
        z0: z0 as u32,
        ..Default::default()
    }
}

/// `--smooth-sigma`'s Gaussian spectra for the (full, complex) spectrum of `shape` restricted to
/// rows `ys` along y: `[gz | gy[ys] | gx]`, one table, as `gaussian_smooth` in cross_power.wgsl reads it.
fn smooth_table(p: &RegisterParams, shape: [usize; 3], ys: std::ops::Range<usize>) -> Vec<f32> {
    let [sz, sy, sx] = p.smooth_sigma;
    let mut t = gaussian_spectrum(shape[0], sz);
    t.extend_from_slice(&gaussian_spectrum(shape[1], sy)[ys]);
    t.extend(gaussian_spectrum(shape[2], sx));
    t
}

/// One workgroup's argmax (`struct Partial` in shaders/common.wgsl; layout checked by `uniform_structs_match_wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Partial {
    pub val: f32,
    pub idx: u32,
    pub re: f32,
    pub im: f32,
}
const _: () = assert!(std::mem::size_of::<Partial>() == 16);

/// Most workgroups of the reductions (each invocation then strides over the volume).
const MAX_REDUCE_GROUPS: usize = 1024;

/// No workgroup's peak yet: below every value, and an index no voxel has.
const NO_PEAK: Partial = Partial {
    val: f32::NEG_INFINITY,
    idx: u32::MAX,
    re: 0.0,
    im: 0.0,
};

/// Whether the partial `q` beats `best`: a larger value, or the same at a smaller index (the
/// first maximum, as np.argmax); partials of workgroups that saw only NaN never rank.
fn beats(q: &Partial, best: &Partial) -> bool {
    q.idx != u32::MAX && (q.val > best.val || (q.val == best.val && q.idx < best.idx))
}

/// The (z, y, x) of the reduced peak `best` in a volume of `shape`, or the error for a
/// correlation that is NaN everywhere.
fn peak_position(best: &Partial, shape: [usize; 3]) -> Result<[usize; 3]> {
    if best.idx == u32::MAX {
        return Err(gpuprep_core::register::not_finite(
            "the cross-power spectrum (its correlation is NaN everywhere)",
            None,
        ));
    }
    let [_, ny, nx] = shape;
    let i = best.idx as usize;
    Ok([i / (ny * nx), (i / nx) % ny, i % nx])
}

/// `gpuprep_core::register::finish` with the upsampled DFT's peak given as `up(region, u, offsets)`,
/// then checked (`check_finite`), shared by the resident and tiled registrars.
#[allow(clippy::too_many_arguments)]
fn finish(
    shape: [usize; 3],
    params: &RegisterParams,
    reference_power: f64,
    peak: [usize; 3],
    cc_peak: Complex64,
    moving_power: f64,
    scale: f64,
    up: impl FnOnce(usize, f64, [f64; 3], Window) -> Result<([usize; 3], Complex64)>,
) -> Result<Registration> {
    let (r, cc_max) = gpuprep_core::register::finish(
        shape,
        params,
        reference_power,
        moving_power,
        peak,
        cc_peak,
        scale,
        up,
    )?;
    check_finite(r, reference_power, moving_power, cc_max, || None)
}

/// Bytes of the resident registrar's largest buffer for `shape`: the complex spectrum, a Bluestein
/// axis's padded lines, or (upsampling) the first contraction's result. The backend takes the tiled
/// route when this passes the tile limit.
pub fn resident_bytes(shape: [usize; 3], p: &RegisterParams) -> u64 {
    let [nz, ny, nx] = shape;
    let n = nz * ny * nx;
    let mut elems = n;
    for &len in &shape {
        elems = elems.max(n / len.max(1) * line_work(len));
    }
    if p.upsample_factor > 1 {
        let r = (p.upsample_factor as f64 * 1.5).ceil() as usize;
        let planes = upsample_slab_planes(r, UPSAMPLE_SLAB_BYTES);
        elems = elems.max(nz * ny * r).max(nz * r * r).max(planes * r * r);
    }
    8 * elems as u64
}

/// `sum_sq`'s partials `(scale, Σ(|c|/scale)²)` summed in f64: `Σ scale² · sum`.
fn scaled_sum(partials: &[[f32; 2]]) -> f64 {
    partials
        .iter()
        .map(|&[scale, sum]| (scale as f64).powi(2) * sum as f64)
        .sum()
}

fn total_of(shape: [usize; 3]) -> usize {
    shape.iter().product()
}

/// The power of two the unnormalized cross-power is stored times: `cpu::cross_power::spectrum_scale`
/// with `sqrt(Σ|F|²)` of the reference (at least its largest |F|) for both volumes, so moving volumes
/// up to 2^8 times the reference's magnitude fit too (the GPU does not know a moving volume's
/// magnitude before its cross-power); 1 with phase normalization.
fn unnormalized_scale(p: &RegisterParams, reference_power: f64, n: usize) -> f64 {
    match p.normalization {
        Normalization::Phase => 1.0,
        Normalization::None => {
            let m = reference_power.sqrt();
            gpuprep_core::register::spectrum_scale(m, m, n).max(2f64.powi(-126))
        }
    }
}

/// A reference whose spectrum is not finite would fail every registration: refused up front.
fn check_reference_power(power: f64) -> Result<()> {
    if power.is_finite() {
        Ok(())
    } else {
        Err(gpuprep_core::register::not_finite(
            "the reference volume's spectrum",
            None,
        ))
    }
}
