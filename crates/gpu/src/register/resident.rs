//! The registration resident on the device: the reference spectrum and the moving volume's
//! buffers, registration in two steps (`GpuRegistrar::submit`, then `Pending::resolve`) so the
//! caller can do host work while the GPU computes.

use super::upsample::{
    contract_kernel, record_contract, upsample_kernels, upsampled_peak_z, Contraction,
};
use super::{
    argmax_uniform, beats, check_reference_power, finish, peak_position, scaled_sum, smooth_table,
    total_of, unnormalized_scale, CrossUniform, Partial, MAX_REDUCE_GROUPS, NO_PEAK,
};
use crate::device::{GpuContext, Recorder, WORKGROUP};
use crate::fft::{CrossZ, Fft3Plan, Reduce};
use crate::shaders;
use gpuprep_core::complex::Complex64;
use gpuprep_core::error::Result;
use gpuprep_core::params::{Normalization, RegisterParams, Registration};
use gpuprep_core::register::{Window, UPSAMPLE_SLAB_BYTES};

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
    /// `--smooth-sigma`'s Gaussian spectra (`smooth_table`), when smoothing.
    smooth: Option<wgpu::Buffer>,
    groups: usize,
    reference_power: f64,
    /// What the unnormalized cross-power is stored times (`unnormalized_scale`).
    scale: f64,
}

/// A registration submitted to the device (`GpuRegistrar::submit`) whose result is not yet read.
/// It borrows the registrar, so nothing can submit another registration over its buffers before
/// `resolve`.
#[must_use = "a submitted registration is only read by `resolve`"]
pub struct Pending<'r> {
    registrar: &'r GpuRegistrar,
    /// How many power sums and peak partials the submitted work writes (`Reduced`).
    reduced: Reduced,
    /// What the power sums read back are multiplied by: nz when they were taken before the z
    /// transform (the fused route; Parseval along z), else 1.
    power_factor: f64,
}

impl Pending<'_> {
    /// Wait for the submitted work and finish the registration: the moving volume's power and the
    /// peak read back, the peak refined by the upsampled DFT when asked for, the result checked.
    pub fn resolve(self, ctx: &GpuContext) -> Result<Registration> {
        let r = self.registrar;
        // The power and the peak partials in one readback.
        let Reduced { power, peak } = self.reduced;
        let (sums, partials) =
            ctx.read_two::<[f32; 2], Partial>((&r.sums, power), (&r.partials, peak))?;
        let moving_power = scaled_sum(&sums) * self.power_factor;
        let mut best = NO_PEAK;
        for q in partials {
            if beats(&q, &best) {
                best = q;
            }
        }
        let peak = peak_position(&best, r.shape)?;
        r.finish(
            ctx,
            peak,
            Complex64::new(best.re as f64, best.im as f64),
            moving_power,
        )
    }
}

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
        let plan = Fft3Plan::new(ctx, shape)?;
        // The reductions fused into a one-pass FFT axis write one result per workgroup of it.
        let results = groups.max(plan.max_reduced()) as u64;
        // Buffers first: a volume too large for one binding fails here, before any planning.
        let reference = ctx.storage("register.reference_spectrum", bytes)?;
        let g = ctx.storage("register.moving_spectrum", bytes)?;
        let tmp = ctx.storage("register.fft_tmp", bytes)?;
        let spectrum = ctx.storage("register.cross_power", bytes)?;
        let mut r = GpuRegistrar {
            shape,
            params: *p,
            plan,
            reference,
            g,
            tmp,
            spectrum,
            partials: ctx.storage("register.argmax_partials", results * 16)?,
            sums: ctx.storage("register.power_partials", results * 8)?,
            smooth: match p.smooths() {
                true => Some(ctx.storage_init(
                    "register.smooth_table",
                    &smooth_table(p, shape, 0..shape[1]),
                )?),
                false => None,
            },
            groups,
            reference_power: 0.0,
            scale: 1.0,
        };
        let mut rec = ctx.recorder();
        let power = r.record_spectrum(ctx, &mut rec, src, &r.reference, &[2, 1, 0])?;
        rec.submit()?;
        r.reference_power = scaled_sum(&ctx.read::<[f32; 2]>(&r.sums, power)?);
        check_reference_power(r.reference_power)?;
        r.scale = unnormalized_scale(p, r.reference_power, total_of(shape));
        Ok(r)
    }

    pub fn fft_plan(&self) -> &Fft3Plan {
        &self.plan
    }

    fn total(&self) -> usize {
        self.shape.iter().product()
    }

    /// The uniform of a cross-power kernel over the whole volume, with nothing else set.
    fn whole_volume(&self) -> CrossUniform {
        CrossUniform {
            total: self.total() as u32,
            ..Default::default()
        }
    }

    /// The forward transforms along `order` of the real volume `src` into `dst`, the first pass
    /// reading the reals itself where it can (`Fft3Plan::reads_reals`, else `to_complex` first),
    /// and the partial sums of |.|^2 of the result: fused into the last pass where it is one
    /// Stockham pass, else `sum_sq`. Returns how many partial sums it writes.
    fn record_spectrum(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        order: &[usize],
    ) -> Result<usize> {
        let reals = self.plan.reads_reals(order);
        if !reals {
            let k = ctx.pipeline(&shaders::CROSS_TO_COMPLEX)?;
            rec.dispatch(&k, &self.whole_volume(), &[src, dst], self.total() as u64);
        }
        let reals = reals.then_some(src);
        let power = Some(Reduce::Power(&self.sums));
        let fused = self
            .plan
            .record_order(ctx, rec, dst, &self.tmp, false, order, 1.0, reals, power)?;
        Ok(match fused {
            Some(n) => n,
            None => {
                rec.dispatch_groups(
                    &ctx.pipeline(&shaders::CROSS_SUM_SQ)?,
                    &self.whole_volume(),
                    &[dst, &self.partials, &self.sums],
                    self.groups as u64,
                );
                self.groups
            }
        })
    }

    /// The inverse transforms along `order` of `g` (the last times `scale`) and the peak search
    /// over the result: fused into the last pass where it is one Stockham pass, else
    /// `argmax_abs`. Returns how many partials it writes.
    fn record_inverse_peak(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        order: &[usize],
        scale: f32,
    ) -> Result<usize> {
        let u = argmax_uniform(&self.params, self.shape, 0, self.total());
        let peak = Some(Reduce::Peak(&self.partials, [u.window, u.wz, u.wy, u.wx]));
        let fused = self
            .plan
            .record_order(ctx, rec, &self.g, &self.tmp, true, order, scale, None, peak)?;
        Ok(match fused {
            Some(n) => n,
            None => {
                rec.dispatch_groups(
                    &ctx.pipeline(&shaders::CROSS_ARGMAX_ABS)?,
                    &u,
                    &[&self.g, &self.partials, &self.sums],
                    self.groups as u64,
                );
                self.groups
            }
        })
    }

    /// Record the registration of the real volume in `src` (on the device) onto the reference
    /// after the work already in `rec` (e.g. the median filter producing `src`), and submit it all:
    /// the spectrum, the cross-power, its inverse transform and the peak search. The result is
    /// read by `Pending::resolve`; host work done in between overlaps the GPU's (the backend
    /// stages the next volume's upload there).
    pub fn submit<'r>(
        &'r self,
        ctx: &GpuContext,
        mut rec: Recorder<'_>,
        src: &wgpu::Buffer,
    ) -> Result<Pending<'r>> {
        let total = self.total();
        if self.plan.fuses_z() {
            return self.submit_fused(ctx, rec, src);
        }
        let power = self.record_spectrum(ctx, &mut rec, src, &self.g, &[2, 1, 0])?;
        let u = CrossUniform {
            total: total as u32,
            phase: (self.params.normalization == Normalization::Phase) as u32,
            scale_bits: (self.scale as f32).to_bits(),
            ..Default::default()
        };
        rec.dispatch(
            &ctx.pipeline(&shaders::CROSS_POWER)?,
            &u,
            &[&self.reference, &self.g],
            total as u64,
        );
        if let Some(table) = &self.smooth {
            let [d0, d1, d2] = self.shape.map(|d| d as u32);
            let su = CrossUniform {
                total: total as u32,
                d0,
                d1,
                d2,
                ..Default::default()
            };
            rec.dispatch(
                &ctx.pipeline(&shaders::CROSS_SMOOTH)?,
                &su,
                &[&self.g, table],
                total as u64,
            );
        }
        if self.params.upsample_factor > 1 {
            rec.copy(&self.g, &self.spectrum, total as u64 * 8);
        }
        let scale = match self.plan.scales_inverse() {
            true => 1.0 / total as f32,
            false => 1.0,
        };
        let peak = self.record_inverse_peak(ctx, &mut rec, &[2, 1, 0], scale)?;
        rec.submit()?;
        Ok(Pending {
            registrar: self,
            reduced: Reduced { power, peak },
            power_factor: 1.0,
        })
    }

    /// `submit` with the z transforms and the cross-power between them fused in one pass
    /// (`Fft3Plan::record_cross_z`): the forward x and y passes, the power sums (times nz, by
    /// Parseval's theorem along z, when read), the fused z pass, the inverse y and x passes, the
    /// peak search. Two full-volume passes fewer than `submit`'s unfused route, the same results
    /// up to f32 rounding.
    fn submit_fused<'r>(
        &'r self,
        ctx: &GpuContext,
        mut rec: Recorder<'_>,
        src: &wgpu::Buffer,
    ) -> Result<Pending<'r>> {
        let total = self.total();
        let power = self.record_spectrum(ctx, &mut rec, src, &self.g, &[2, 1])?;
        // numpy's 1/N on the last inverse transform: x's, or y's, or this one's.
        let scale = 1.0 / total as f32;
        let z_scale = match self.plan.transforms(1) || self.plan.transforms(2) {
            true => 1.0,
            false => scale,
        };
        let cross = CrossZ {
            reference: &self.reference,
            phase: (self.params.normalization == Normalization::Phase) as u32,
            scale_bits: (self.scale as f32).to_bits(),
            smooth: self.smooth.as_ref(),
            kept: (self.params.upsample_factor > 1).then_some(&self.spectrum),
        };
        self.plan
            .record_cross_z(ctx, &mut rec, &self.g, &cross, z_scale)?;
        let peak = self.record_inverse_peak(ctx, &mut rec, &[1, 2], scale)?;
        rec.submit()?;
        Ok(Pending {
            registrar: self,
            reduced: Reduced { power, peak },
            power_factor: self.shape[0] as f64,
        })
    }

    /// `submit` then `resolve`, with nothing in between.
    pub fn register(
        &self,
        ctx: &GpuContext,
        src: &wgpu::Buffer,
        rec: Recorder<'_>,
    ) -> Result<Registration> {
        self.submit(ctx, rec, src)?.resolve(ctx)
    }

    /// `cpu::register::finish`, with the upsampled DFT on the device.
    fn finish(
        &self,
        ctx: &GpuContext,
        peak: [usize; 3],
        cc_peak: Complex64,
        moving_power: f64,
    ) -> Result<Registration> {
        finish(
            self.shape,
            &self.params,
            self.reference_power,
            peak,
            cc_peak,
            moving_power,
            self.scale,
            |r, u, offsets, window| self.upsampled_dft(ctx, r, u, offsets, window),
        )
    }

    /// The peak of `_upsampled_dft(conj(R), r, u, offsets).conj()`: three contractions of R with
    /// conjugated kernels (x, then y, then z, as the CPU twin), the last in slabs
    /// (`upsampled_peak_z`).
    fn upsampled_dft(
        &self,
        ctx: &GpuContext,
        r: usize,
        u: f64,
        offsets: [f64; 3],
        window: Window,
    ) -> Result<([usize; 3], Complex64)> {
        let [nz, ny, nx] = self.shape;
        let [ky, kx] = upsample_kernels(ctx, self.shape, r, u, offsets)?;
        let t1 = ctx.pooled("register.upsample_t1", (nz * ny * r * 8) as u64)?;
        let t2 = ctx.pooled("register.upsample_t2", (nz * r * r * 8) as u64)?;
        let k = contract_kernel(ctx)?;
        let mut rec = ctx.recorder();
        let steps: [Contraction<'_>; 2] = [
            ([nz, ny, nx], 2, &self.spectrum, &kx, &t1, nz * ny * r),
            ([nz, ny, r], 1, &t1, &ky, &t2, nz * r * r),
        ];
        for (d, axis, src, kern, dst, total) in steps {
            record_contract(&mut rec, &k, d, axis, r, [src, kern, dst], total);
        }
        rec.submit()?;
        upsampled_peak_z(
            ctx,
            &k,
            &t2,
            nz,
            r,
            u,
            offsets[0],
            window,
            UPSAMPLE_SLAB_BYTES,
        )
    }
}

/// How many power sums and peak partials a submitted registration writes: one per workgroup of the
/// FFT pass they are fused into, or `MAX_REDUCE_GROUPS` at most from their own kernels.
#[derive(Clone, Copy)]
struct Reduced {
    power: usize,
    peak: usize,
}

#[cfg(test)]
mod tests {
    use super::super::{beats, CrossUniform, NO_PEAK};
    use super::*;
    use crate::device::test_context;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Input, the axes transformed, --max-shift.
    type Case = (Vec<[f32; 2]>, &'static [usize], Option<[f64; 3]>);

    /// `partials` reduced as `Pending::resolve` does.
    fn best_of(partials: &[Partial]) -> Partial {
        partials
            .iter()
            .fold(NO_PEAK, |b, q| if beats(q, &b) { *q } else { b })
    }

    /// The reductions fused into a one-pass FFT axis against their own kernels run on the values
    /// that very pass wrote: the peak bit for bit (index, |.|, value; with total ties, NaN lines
    /// and the --max-shift window), the power sums within f32 rounding of `sum_sq`'s (another
    /// order of summation). Shapes with every axis one pass, x alone, and a length-1 axis.
    #[test]
    fn fused_reductions_match_their_own_kernels() {
        let Some(ctx) = test_context() else { return };
        let mut rng = StdRng::seed_from_u64(7);
        let argmax = ctx.pipeline(&shaders::CROSS_ARGMAX_ABS).unwrap();
        let sum_sq = ctx.pipeline(&shaders::CROSS_SUM_SQ).unwrap();
        for shape in [[4, 6, 10], [5, 7, 9], [1, 12, 20], [3, 1, 16]] {
            let plan = Fft3Plan::new(&ctx, shape).unwrap();
            let total: usize = shape.iter().product();
            let groups = total
                .div_ceil(WORKGROUP as usize)
                .clamp(1, MAX_REDUCE_GROUPS);
            let results = groups.max(plan.max_reduced());
            let partials = ctx.storage("test.partials", results as u64 * 16).unwrap();
            let sums = ctx.storage("test.sums", results as u64 * 8).unwrap();
            let tmp = ctx.storage("test.tmp", total as u64 * 8).unwrap();
            let whole = CrossUniform {
                total: total as u32,
                ..Default::default()
            };
            let random = |rng: &mut StdRng| -> Vec<[f32; 2]> {
                (0..total)
                    .map(|_| [rng.random::<f32>() - 0.5, rng.random::<f32>() - 0.5])
                    .collect()
            };
            let mut delta = vec![[0.0f32; 2]; total];
            delta[0] = [1.0, 0.0];
            let mut nans = random(&mut rng);
            nans[total / 2] = [f32::NAN, 0.0];
            let cases: Vec<Case> = vec![
                (random(&mut rng), &[2, 1, 0], None),
                (random(&mut rng), &[2, 1, 0], Some([1.0, 2.0, 3.0])),
                // Every |.| is the same 1/N: the first index (in the window) wins.
                (delta.clone(), &[2, 1, 0], None),
                (delta, &[2, 1, 0], Some([0.0, 1.0, 2.0])),
                // NaN along one x line only.
                (nans, &[2], None),
            ];
            for (case, (data, order, max_shift)) in cases.into_iter().enumerate() {
                let what = format!("{shape:?} case {case}");
                let params = RegisterParams {
                    max_shift,
                    ..Default::default()
                };
                let u = argmax_uniform(&params, shape, 0, total);
                let a = ctx.storage_init("test.a", &data).unwrap();
                let mut rec = ctx.recorder();
                let peak = Reduce::Peak(&partials, [u.window, u.wz, u.wy, u.wx]);
                let scale = 1.0 / total as f32;
                let fused = plan
                    .record_order(
                        &ctx,
                        &mut rec,
                        &a,
                        &tmp,
                        true,
                        order,
                        scale,
                        None,
                        Some(peak),
                    )
                    .unwrap();
                rec.submit().unwrap();
                let Some(fused) = fused else {
                    panic!("{what}: the last axis is one pass, so the peak is fused")
                };
                let got = best_of(&ctx.read::<Partial>(&partials, fused).unwrap());
                let mut rec = ctx.recorder();
                rec.dispatch_groups(&argmax, &u, &[&a, &partials, &sums], groups as u64);
                rec.submit().unwrap();
                let want = best_of(&ctx.read::<Partial>(&partials, groups).unwrap());
                let bits = |p: Partial| (p.idx, p.val.to_bits(), p.re.to_bits(), p.im.to_bits());
                assert_eq!(bits(got), bits(want), "{what}: {got:?} against {want:?}");
                if (2..=3).contains(&case) {
                    // The delta's inverse transform is 1/N everywhere: index 0 is the first and
                    // lies in any window.
                    assert_eq!((got.idx, got.val), (0, scale), "{what}");
                }
                if case == 4 {
                    assert_ne!(got.idx, u32::MAX, "{what}: only one line is NaN");
                }
            }
            // The power of a forward transform, fused and by `sum_sq` on its result.
            let a = ctx.storage_init("test.a", &random(&mut rng)).unwrap();
            let mut rec = ctx.recorder();
            let power = Some(Reduce::Power(&sums));
            let fused = plan
                .record_order(
                    &ctx,
                    &mut rec,
                    &a,
                    &tmp,
                    false,
                    &[2, 1, 0],
                    1.0,
                    None,
                    power,
                )
                .unwrap()
                .expect("the power is fused");
            rec.submit().unwrap();
            let got = scaled_sum(&ctx.read::<[f32; 2]>(&sums, fused).unwrap());
            let mut rec = ctx.recorder();
            rec.dispatch_groups(&sum_sq, &whole, &[&a, &partials, &sums], groups as u64);
            rec.submit().unwrap();
            let want = scaled_sum(&ctx.read::<[f32; 2]>(&sums, groups).unwrap());
            assert!(
                (got - want).abs() <= 1e-5 * want,
                "{shape:?}: power {got} against {want}"
            );
        }
    }
}
