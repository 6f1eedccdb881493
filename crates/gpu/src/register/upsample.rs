//! The upsampled DFT of the registration's sub-pixel refinement on the device: the kernel tables
//! and the `contract` dispatches both routes use, and the last (z) contraction in slabs of planes.

use super::CrossUniform;
use crate::device::{GpuContext, Kernel, Recorder};
use crate::shaders;
use gpuprep_core::complex::Complex64;
use gpuprep_core::error::{Error, Result};
use gpuprep_core::register::{upsample_slab_planes, Window};
use std::sync::Arc;

/// One contraction of the upsampled DFT: input dims, axis, input, kernel, output, output length.
pub(super) type Contraction<'a> = (
    [usize; 3],
    u32,
    &'a wgpu::Buffer,
    &'a wgpu::Buffer,
    &'a wgpu::Buffer,
    usize,
);

/// The conjugated kernel of one axis of the upsampled DFT: `r` rows of `n` values.
pub(super) fn upsample_kernel(n: usize, r: usize, u: f64, off: f64) -> Vec<[f32; 2]> {
    let mut k = Vec::with_capacity(r * n);
    for i in 0..r {
        for j in 0..n {
            let f = if j < n.div_ceil(2) {
                j as f64
            } else {
                j as f64 - n as f64
            } / (n as f64 * u);
            // conj(exp(-2 pi i (i - off) f))
            let ph = 2.0 * std::f64::consts::PI * (i as f64 - off) * f;
            k.push([ph.cos() as f32, ph.sin() as f32]);
        }
    }
    k
}

/// Record one `contract` of the `d`-shaped input along `axis` to length `r` (`total` outputs).
pub(super) fn record_contract(
    rec: &mut Recorder<'_>,
    k: &Arc<Kernel>,
    d: [usize; 3],
    axis: u32,
    r: usize,
    bufs: [&wgpu::Buffer; 3],
    total: usize,
) {
    let u = CrossUniform {
        total: total as u32,
        phase: 0,
        d0: d[0] as u32,
        d1: d[1] as u32,
        d2: d[2] as u32,
        axis,
        r: r as u32,
        ..Default::default()
    };
    rec.dispatch(k, &u, &bufs, total as u64);
}

/// The y and x axes' `upsample_kernel` tables on the device, for the first two contractions of the
/// upsampled DFT (resident and tiled); z's goes up slab by slab (`upsampled_peak_z`).
pub(super) fn upsample_kernels(
    ctx: &GpuContext,
    shape: [usize; 3],
    r: usize,
    u: f64,
    offsets: [f64; 3],
) -> Result<[wgpu::Buffer; 2]> {
    Ok([
        ctx.pooled_init(
            "register.upsample_ky",
            &upsample_kernel(shape[1], r, u, offsets[1]),
        )?,
        ctx.pooled_init(
            "register.upsample_kx",
            &upsample_kernel(shape[2], r, u, offsets[2]),
        )?,
    ])
}

pub(super) fn contract_kernel(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    ctx.pipeline(&shaders::CROSS_CONTRACT)
}

/// The last contraction (over z) of the upsampled DFT from `t2` (`nz·r²` values on the device), and
/// the first largest |v| of the `r³` region in C order with its index, as np.argmax. The region is
/// never held: slabs of output planes (`upsample_slab_planes` of `slab_bytes`) are contracted with
/// their rows of the z kernel, read back and scanned in order, so host and device hold one slab
/// instead of `r³` values (24 GiB at u = 1000). Each value is the same dispatch's sum as over the
/// whole region, so the peak is too.
#[allow(clippy::too_many_arguments)]
pub(super) fn upsampled_peak_z(
    ctx: &GpuContext,
    k: &Arc<Kernel>,
    t2: &wgpu::Buffer,
    nz: usize,
    r: usize,
    u: f64,
    off_z: f64,
    window: Window,
    slab_bytes: usize,
) -> Result<([usize; 3], Complex64)> {
    let [wa, wb, wc] = window;
    let kz = upsample_kernel(nz, r, u, off_z);
    let planes = upsample_slab_planes(r, slab_bytes);
    let t3 = ctx.pooled("register.upsample_t3", (planes * r * r * 8) as u64)?;
    // Strictly larger in C order: the first maximum; a NaN never ranks (all NaN: index 0).
    let first = (wa.start * r + wb.start) * r + wc.start;
    let (mut best, mut best_v, mut value) = (first, f64::NEG_INFINITY, None);
    for a0 in wa.clone().step_by(planes) {
        let n = planes.min(wa.end - a0);
        // Each slab is read back before the next one's kernel rows are written.
        let kzs = ctx.pooled_init("register.upsample_kz", &kz[a0 * nz..(a0 + n) * nz])?;
        let mut rec = ctx.recorder();
        record_contract(&mut rec, k, [nz, r, r], 0, n, [t2, &kzs, &t3], n * r * r);
        rec.submit()?;
        let slab = ctx.read::<[f32; 2]>(&t3, n * r * r)?;
        if a0 == wa.start {
            value = value.or(Some(slab[first - a0 * r * r]));
        }
        for (i, &[re, im]) in slab.iter().enumerate() {
            // `--max-shift`: only the window's indices rank.
            if !(wb.contains(&((i / r) % r)) && wc.contains(&(i % r))) {
                continue;
            }
            let v = Complex64::new(re as f64, im as f64);
            if v.norm() > best_v {
                best_v = v.norm();
                best = a0 * r * r + i;
                value = Some([re, im]);
            }
        }
    }
    let [re, im] = value.ok_or_else(|| Error::Gpu("upsampled DFT: an empty region".into()))?;
    Ok((
        [best / (r * r), (best / r) % r, best % r],
        Complex64::new(re as f64, im as f64),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_context;

    #[test]
    fn upsampled_peak_in_slabs_of_planes_is_the_whole_regions_bit_for_bit() {
        let Some(ctx) = test_context() else { return };
        let k = contract_kernel(&ctx).unwrap();
        // Odd r; t2 values of a few distinct magnitudes, so the region has exact ties across planes.
        let (nz, r) = (3usize, 7usize);
        let t2: Vec<[f32; 2]> = (0..nz * r * r)
            .map(|i| [((i * 37) % 11) as f32 - 5.0, ((i * 13) % 7) as f32])
            .collect();
        let t2 = ctx.storage_init("test.t2", &t2).unwrap();
        let all = || [0..r, 0..r, 0..r];
        let peak = |bytes| upsampled_peak_z(&ctx, &k, &t2, nz, r, 3.0, 2.5, all(), bytes).unwrap();
        let whole = peak(usize::MAX);
        assert_eq!(upsample_slab_planes(r, 0), 1);
        assert_eq!(upsample_slab_planes(r, usize::MAX), r);
        // One plane a slab, two, three (an uneven split of 7).
        for bytes in [0, 2 * 8 * r * r, 3 * 8 * r * r] {
            let got = peak(bytes);
            assert_eq!(got.0, whole.0, "slab of {bytes} bytes");
            assert_eq!(
                (got.1.re.to_bits(), got.1.im.to_bits()),
                (whole.1.re.to_bits(), whole.1.im.to_bits()),
                "slab of {bytes} bytes"
            );
        }
        // The region's first largest |v| in C order, from the whole region read back at once.
        let t3 = ctx.storage("test.t3", (r * r * r * 8) as u64).unwrap();
        let kz = ctx
            .storage_init("test.kz", &upsample_kernel(nz, r, 3.0, 2.5))
            .unwrap();
        let mut rec = ctx.recorder();
        record_contract(&mut rec, &k, [nz, r, r], 0, r, [&t2, &kz, &t3], r * r * r);
        rec.submit().unwrap();
        let all = ctx.read::<[f32; 2]>(&t3, r * r * r).unwrap();
        let norm = |[a, b]: [f32; 2]| Complex64::new(a as f64, b as f64).norm();
        let top = all
            .iter()
            .map(|&v| norm(v))
            .fold(f64::NEG_INFINITY, f64::max);
        let first = all.iter().position(|&v| norm(v) == top).unwrap();
        assert_eq!(whole.0, [first / (r * r), (first / r) % r, first % r]);
    }
}
