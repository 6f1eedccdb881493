//! Host side of `shaders/cross_power.wgsl` with the FFTs of `fft.rs`: scikit-image's
//! `phase_cross_correlation` on the device. CPU twin: `src/cpu/register.rs` (whose `finish` this
//! mirrors step by step, with the peak, the powers and the upsampled DFT computed on the GPU).

use super::device::{Bind, GpuContext, Recorder, WORKGROUP};
use super::fft::Fft3Plan;
use crate::error::{Error, Result};
use crate::params::{Normalization, RegisterParams, Registration};
use bytemuck::{Pod, Zeroable};
use rustfft::num_complex::Complex64;

/// Uniforms of `cross_power.wgsl`; keep in sync with `struct Params` in shaders/cross_power.wgsl.
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
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<CrossUniform>() == 32);

/// One workgroup's argmax; keep in sync with `struct Partial` in shaders/cross_power.wgsl.
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

/// The reference spectrum and the buffers of the registration, resident on the device.
pub struct GpuRegistrar {
    pub shape: [usize; 3],
    pub params: RegisterParams,
    plan: Fft3Plan,
    reference: wgpu::Buffer,
    g: wgpu::Buffer,
    tmp: wgpu::Buffer,
    spectrum: wgpu::Buffer,
    partials: wgpu::Buffer,
    sums: wgpu::Buffer,
    groups: usize,
    reference_power: f64,
}

/// One contraction of the upsampled DFT: input dims, axis, input, kernel, output, output length.
type Contraction<'a> = (
    [usize; 3],
    u32,
    &'a wgpu::Buffer,
    &'a wgpu::Buffer,
    &'a wgpu::Buffer,
    usize,
);

const R3: [Bind; 3] = [Bind::Uniform, Bind::Read, Bind::ReadWrite];
const R4: [Bind; 4] = [Bind::Uniform, Bind::Read, Bind::ReadWrite, Bind::ReadWrite];

impl GpuRegistrar {
    /// Transform the reference (a real volume already on the device in `src`) and keep its spectrum.
    pub fn new(
        ctx: &GpuContext,
        src: &wgpu::Buffer,
        shape: [usize; 3],
        p: &RegisterParams,
    ) -> Result<Self> {
        let total: usize = shape.iter().product();
        let bytes = total as u64 * 8;
        let groups = total
            .div_ceil(WORKGROUP as usize)
            .clamp(1, MAX_REDUCE_GROUPS);
        // Buffers first: a volume too large for one binding fails here, before any planning.
        let reference = ctx.storage("register.reference_spectrum", bytes)?;
        let g = ctx.storage("register.moving_spectrum", bytes)?;
        let tmp = ctx.storage("register.fft_tmp", bytes)?;
        let spectrum = ctx.storage("register.cross_power", bytes)?;
        let mut r = GpuRegistrar {
            shape,
            params: *p,
            plan: Fft3Plan::new(ctx, shape)?,
            reference,
            g,
            tmp,
            spectrum,
            partials: ctx.storage("register.argmax_partials", groups as u64 * 16)?,
            sums: ctx.storage("register.power_partials", groups as u64 * 4)?,
            groups,
            reference_power: 0.0,
        };
        let mut rec = ctx.recorder();
        r.record_spectrum(ctx, &mut rec, src, &r.reference)?;
        rec.submit()?;
        r.reference_power = r.read_power(ctx)?;
        Ok(r)
    }

    pub fn fft_plan(&self) -> &Fft3Plan {
        &self.plan
    }

    fn total(&self) -> usize {
        self.shape.iter().product()
    }

    /// to_complex + forward FFT + sum of |.|^2 partials, into `dst`.
    fn record_spectrum(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
    ) -> Result<()> {
        let total = self.total();
        let u = CrossUniform {
            total: total as u32,
            ..Default::default()
        };
        rec.dispatch(
            &ctx.kernel("cross_power", "to_complex", &[], &R3)?,
            &u,
            &[src, dst],
            total as u64,
        );
        self.plan.record(ctx, rec, dst, &self.tmp, false)?;
        rec.dispatch_groups(
            &ctx.kernel("cross_power", "sum_sq", &[], &R4)?,
            &u,
            &[dst, &self.partials, &self.sums],
            self.groups as u64,
        );
        Ok(())
    }

    fn read_power(&self, ctx: &GpuContext) -> Result<f64> {
        Ok(ctx
            .read::<f32>(&self.sums, self.groups)?
            .iter()
            .map(|&v| v as f64)
            .sum())
    }

    /// Register the real volume in `src` (on the device) onto the reference. Work already recorded in
    /// `rec` (e.g. the median filter producing `src`) is submitted with it.
    pub fn register(
        &mut self,
        ctx: &GpuContext,
        src: &wgpu::Buffer,
        rec: Option<Recorder<'_>>,
    ) -> Result<Registration> {
        let total = self.total();
        let mut rec = rec.unwrap_or_else(|| ctx.recorder());
        self.record_spectrum(ctx, &mut rec, src, &self.g)?;
        let u = CrossUniform {
            total: total as u32,
            phase: (self.params.normalization == Normalization::Phase) as u32,
            ..Default::default()
        };
        rec.dispatch(
            &ctx.kernel("cross_power", "cross_power", &[], &R3)?,
            &u,
            &[&self.reference, &self.g],
            total as u64,
        );
        if self.params.upsample_factor > 1 {
            rec.copy(&self.g, &self.spectrum, total as u64 * 8);
        }
        self.plan.record(ctx, &mut rec, &self.g, &self.tmp, true)?;
        rec.dispatch_groups(
            &ctx.kernel("cross_power", "argmax_abs", &[], &R4)?,
            &u,
            &[&self.g, &self.partials, &self.sums],
            self.groups as u64,
        );
        rec.submit()?;
        let moving_power = self.read_power(ctx)?;
        let partials = ctx.read::<Partial>(&self.partials, self.groups)?;
        let mut best = Partial {
            val: f32::NEG_INFINITY,
            idx: u32::MAX,
            re: 0.0,
            im: 0.0,
        };
        for q in partials {
            if q.idx != u32::MAX && (q.val > best.val || (q.val == best.val && q.idx < best.idx)) {
                best = q;
            }
        }
        if best.idx == u32::MAX {
            return Err(Error::Data(
                "registration: the cross-correlation is NaN everywhere".into(),
            ));
        }
        let [_, ny, nx] = self.shape;
        let i = best.idx as usize;
        let peak = [i / (ny * nx), (i / nx) % ny, i % nx];
        self.finish(
            ctx,
            peak,
            Complex64::new(best.re as f64, best.im as f64),
            moving_power,
        )
    }

    /// `cpu::register::finish`, with the upsampled DFT on the device.
    fn finish(
        &self,
        ctx: &GpuContext,
        peak: [usize; 3],
        cc_peak: Complex64,
        moving_power: f64,
    ) -> Result<Registration> {
        let shape = self.shape;
        let n = self.total() as f64;
        let mut shift = crate::cpu::register::coarse_shift(peak, shape);
        let (cc_max, src_amp, target_amp) = if self.params.upsample_factor == 1 {
            (cc_peak, self.reference_power / n, moving_power / n)
        } else {
            let u = self.params.upsample_factor as f64;
            for s in &mut shift {
                *s = (*s * u).round() / u;
            }
            let region = (u * 1.5).ceil();
            let dftshift = (region / 2.0).trunc();
            let offsets = shift.map(|s| dftshift - s * u);
            let r = region as usize;
            let up = self.upsampled_dft(ctx, r, u, offsets)?;
            let (mut best, mut best_v) = (0usize, f64::NEG_INFINITY);
            for (i, v) in up.iter().enumerate() {
                if v.norm() > best_v {
                    best_v = v.norm();
                    best = i;
                }
            }
            let b = [best / (r * r), (best / r) % r, best % r];
            for a in 0..3 {
                shift[a] += (b[a] as f64 - dftshift) / u;
            }
            (up[best], self.reference_power, moving_power)
        };
        Ok(crate::cpu::register::score(
            shift, shape, cc_max, src_amp, target_amp,
        ))
    }

    /// `_upsampled_dft(conj(R), r, u, offsets).conj()` as three contractions of R with conjugated
    /// kernels (x, then y, then z, as the CPU twin); returns the r³ values in C order.
    fn upsampled_dft(
        &self,
        ctx: &GpuContext,
        r: usize,
        u: f64,
        offsets: [f64; 3],
    ) -> Result<Vec<Complex64>> {
        let [nz, ny, nx] = self.shape;
        let kernel = |n: usize, off: f64| -> Vec<[f32; 2]> {
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
        };
        let kx = ctx.storage_init("register.upsample_kx", &kernel(nx, offsets[2]))?;
        let ky = ctx.storage_init("register.upsample_ky", &kernel(ny, offsets[1]))?;
        let kz = ctx.storage_init("register.upsample_kz", &kernel(nz, offsets[0]))?;
        let t1 = ctx.storage("register.upsample_t1", (nz * ny * r * 8) as u64)?;
        let t2 = ctx.storage("register.upsample_t2", (nz * r * r * 8) as u64)?;
        let t3 = ctx.storage("register.upsample_t3", (r * r * r * 8) as u64)?;
        let k = ctx.kernel(
            "cross_power",
            "contract",
            &[],
            &[Bind::Uniform, Bind::Read, Bind::Read, Bind::ReadWrite],
        )?;
        let mut rec = ctx.recorder();
        let steps: [Contraction<'_>; 3] = [
            ([nz, ny, nx], 2, &self.spectrum, &kx, &t1, nz * ny * r),
            ([nz, ny, r], 1, &t1, &ky, &t2, nz * r * r),
            ([nz, r, r], 0, &t2, &kz, &t3, r * r * r),
        ];
        for (d, axis, src, kern, dst, total) in steps {
            let u = CrossUniform {
                total: total as u32,
                phase: 0,
                d0: d[0] as u32,
                d1: d[1] as u32,
                d2: d[2] as u32,
                axis,
                r: r as u32,
                _pad: 0,
            };
            rec.dispatch(&k, &u, &[src, kern, dst], total as u64);
        }
        rec.submit()?;
        Ok(ctx
            .read::<[f32; 2]>(&t3, r * r * r)?
            .into_iter()
            .map(|[a, b]| Complex64::new(a as f64, b as f64))
            .collect())
    }
}
