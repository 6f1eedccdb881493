//! The registration of volumes whose complex spectrum is over the tile limit: the resident route's
//! kernels on z- and y-slabs, the spectra on the host.

use super::upsample::{contract_kernel, record_contract, upsample_kernels, upsampled_peak_z};
use super::{
    argmax_uniform, beats, check_reference_power, finish, peak_position, scaled_sum, smooth_table,
    total_of, unnormalized_scale, CrossUniform, Partial, MAX_REDUCE_GROUPS, NO_PEAK,
};
use crate::device::{GpuContext, Recorder, WORKGROUP};
use crate::fft::{line_work, Fft3Plan};
use crate::shaders::{self, KernelDecl};
use gpuprep_core::complex::Complex64;
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::{Normalization, RegisterParams, Registration};
use gpuprep_core::register::{Window, UPSAMPLE_SLAB_BYTES};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// The registration of a volume whose complex spectrum (8 bytes a voxel) is over the tile limit:
/// the resident route's kernels on slabs, with the complex volumes held on the host.
///
/// Spectrum: x and y transforms on z-slabs (`to_complex` + FFT of axes 2, 1), then the z transform
/// on y-slabs (whole z lines), where the moving volume's slab also gets its power (`sum_sq`), the
/// cross-power with the reference's slab and the inverse z transform; the inverse x and y
/// transforms on z-slabs end in a per-slab `argmax_abs` whose partials the host reduces with global
/// indices (same order as the resident route: value, then first index). The inverse transform is
/// left unscaled and the host divides the peak by N. The upsampled refinement contracts x and y on
/// z-slabs of the kept cross-power spectrum and z on the gathered nz·r² values. Host memory: three
/// complex volumes (reference, moving, cross-power when upsampling), 8 bytes a voxel each.
pub struct TiledRegistrar {
    pub shape: [usize; 3],
    pub params: RegisterParams,
    reference: Vec<[f32; 2]>,
    reference_power: f64,
    /// What the unnormalized cross-power is stored times (`unnormalized_scale`).
    scale: f64,
    /// Slab thickness along z (x/y transforms, upsampling) and y (z transform).
    zs: usize,
    ys: usize,
    /// FFT plans by slab shape and kind (true: axes 2 and 1; false: axis 0).
    plans: HashMap<([usize; 3], bool), Arc<Fft3Plan>>,
}

fn slabs(n: usize, step: usize) -> Vec<Range<usize>> {
    (0..n).step_by(step).map(|a| a..(a + step).min(n)).collect()
}

impl TiledRegistrar {
    /// Plan the slabs for the tile limit and transform the reference (C order).
    pub fn new(
        ctx: &GpuContext,
        reference: &[f32],
        shape: [usize; 3],
        p: &RegisterParams,
    ) -> Result<Self> {
        let [nz, ny, nx] = shape;
        let limit = ctx.max_tile_bytes() as usize;
        // Largest complex buffer per plane of a z-slab / per row of a y-slab, Bluestein's padded
        // lines and the upsampling's intermediate results included.
        let r = (p.upsample_factor as f64 * 1.5).ceil() as usize;
        let mut plane = ny * nx.max(line_work(nx)).max(1);
        plane = plane.max(nx * line_work(ny));
        if p.upsample_factor > 1 {
            plane = plane.max(ny * r).max(r * r);
        }
        let row = nx * line_work(nz);
        let (zs, ys) = (limit / (8 * plane), limit / (8 * row));
        if zs == 0 || ys == 0 {
            return Err(Error::Gpu(format!(
                "registration: a slab one voxel thick of the {nz}x{ny}x{nx} volume needs {} bytes, \
                 over the GPU tile limit of {limit} bytes (tiles are z- and y-slabs): use --backend cpu",
                8 * plane.max(row)
            )));
        }
        let mut t = TiledRegistrar {
            shape,
            params: *p,
            reference: Vec::new(),
            reference_power: 0.0,
            scale: 1.0,
            zs: zs.min(nz),
            ys: ys.min(ny),
            plans: HashMap::new(),
        };
        let mut spec = t.forward_xy(ctx, reference)?;
        let mut power = 0.0;
        for ys in slabs(ny, t.ys) {
            let plan = t.plan(ctx, [nz, ys.len(), nx], false)?;
            let a = t.load_y_slab(ctx, &spec, &ys)?;
            let b = ctx.tile_buffer("register.tile_b", plan_bytes(&plan))?;
            let mut rec = ctx.recorder();
            plan.record(ctx, &mut rec, &a, &b, false)?;
            let u = CrossUniform {
                total: plan_total(&plan) as u32,
                ..Default::default()
            };
            let groups = record_reduce(ctx, &mut rec, &shaders::CROSS_SUM_SQ, &a, u)?;
            rec.submit()?;
            power += read_sums(ctx, groups)?;
            t.store_y_slab(ctx, &mut spec, &ys, &a)?;
        }
        t.reference = spec;
        t.reference_power = power;
        check_reference_power(power)?;
        t.scale = unnormalized_scale(p, power, total_of(shape));
        Ok(t)
    }

    fn plan(&mut self, ctx: &GpuContext, shape: [usize; 3], xy: bool) -> Result<Arc<Fft3Plan>> {
        if let Some(p) = self.plans.get(&(shape, xy)) {
            return Ok(p.clone());
        }
        let axes = if xy {
            [false, true, true]
        } else {
            [true, false, false]
        };
        let p = Arc::new(Fft3Plan::new_axes(ctx, shape, axes, false)?);
        self.plans.insert((shape, xy), p.clone());
        Ok(p)
    }

    /// x and y transforms of the real volume `vol` (C order), slab by slab, into a host spectrum.
    fn forward_xy(&mut self, ctx: &GpuContext, vol: &[f32]) -> Result<Vec<[f32; 2]>> {
        let [nz, ny, nx] = self.shape;
        let mut out = Vec::with_capacity(vol.len());
        for zs in slabs(nz, self.zs) {
            let plan = self.plan(ctx, [zs.len(), ny, nx], true)?;
            let total = plan_total(&plan);
            let real = ctx.tile_buffer("register.tile_real", total as u64 * 4)?;
            let a = ctx.tile_buffer("register.tile_a", plan_bytes(&plan))?;
            let b = ctx.tile_buffer("register.tile_b", plan_bytes(&plan))?;
            ctx.upload(&real, &vol[zs.start * ny * nx..zs.end * ny * nx]);
            let mut rec = ctx.recorder();
            let u = CrossUniform {
                total: total as u32,
                ..Default::default()
            };
            rec.dispatch(
                &ctx.pipeline(&shaders::CROSS_TO_COMPLEX)?,
                &u,
                &[&real, &a],
                total as u64,
            );
            plan.record(ctx, &mut rec, &a, &b, false)?;
            rec.submit()?;
            out.extend(ctx.read::<[f32; 2]>(&a, total)?);
            ctx.count_tiles(1, |s| &mut s.register);
        }
        Ok(out)
    }

    /// Upload the y-slab `ys` (all z, all x) of the host volume `spec` into the tile buffer
    /// `register.tile_a` (or `role`).
    fn load_y_slab(
        &self,
        ctx: &GpuContext,
        spec: &[[f32; 2]],
        ys: &Range<usize>,
    ) -> Result<wgpu::Buffer> {
        self.load_y_slab_into(ctx, "register.tile_a", spec, ys)
    }

    fn load_y_slab_into(
        &self,
        ctx: &GpuContext,
        role: &'static str,
        spec: &[[f32; 2]],
        ys: &Range<usize>,
    ) -> Result<wgpu::Buffer> {
        let [nz, ny, nx] = self.shape;
        let mut slab = Vec::with_capacity(nz * ys.len() * nx);
        for z in 0..nz {
            let base = z * ny * nx;
            slab.extend_from_slice(&spec[base + ys.start * nx..base + ys.end * nx]);
        }
        let buf = ctx.tile_buffer(role, slab.len() as u64 * 8)?;
        ctx.upload(&buf, &slab);
        Ok(buf)
    }

    /// Read the y-slab `ys` back from `buf` into the host volume `spec`.
    fn store_y_slab(
        &self,
        ctx: &GpuContext,
        spec: &mut [[f32; 2]],
        ys: &Range<usize>,
        buf: &wgpu::Buffer,
    ) -> Result<()> {
        let [nz, ny, nx] = self.shape;
        let w = ys.len() * nx;
        let slab = ctx.read::<[f32; 2]>(buf, nz * w)?;
        for z in 0..nz {
            let base = z * ny * nx + ys.start * nx;
            spec[base..base + w].copy_from_slice(&slab[z * w..(z + 1) * w]);
        }
        ctx.count_tiles(1, |s| &mut s.register);
        Ok(())
    }

    /// Register the real volume `vol` (C order) onto the reference.
    pub fn register(&mut self, ctx: &GpuContext, vol: &[f32]) -> Result<Registration> {
        let [nz, ny, nx] = self.shape;
        let phase = (self.params.normalization == Normalization::Phase) as u32;
        let upsample = self.params.upsample_factor > 1;
        let mut spec = self.forward_xy(ctx, vol)?;
        let mut cross = if upsample {
            vec![[0.0f32; 2]; spec.len()]
        } else {
            Vec::new()
        };
        let mut moving_power = 0.0;
        for ys in slabs(ny, self.ys) {
            let plan = self.plan(ctx, [nz, ys.len(), nx], false)?;
            let total = plan_total(&plan);
            let a = self.load_y_slab(ctx, &spec, &ys)?;
            let f = self.load_y_slab_into(ctx, "register.tile_ref", &self.reference, &ys)?;
            let b = ctx.tile_buffer("register.tile_b", plan_bytes(&plan))?;
            let mut rec = ctx.recorder();
            plan.record(ctx, &mut rec, &a, &b, false)?;
            let u = CrossUniform {
                total: total as u32,
                ..Default::default()
            };
            let groups = record_reduce(ctx, &mut rec, &shaders::CROSS_SUM_SQ, &a, u)?;
            let u = CrossUniform {
                total: total as u32,
                phase,
                scale_bits: (self.scale as f32).to_bits(),
                ..Default::default()
            };
            rec.dispatch(
                &ctx.pipeline(&shaders::CROSS_POWER)?,
                &u,
                &[&f, &a],
                total as u64,
            );
            if self.params.smooths() {
                let table = smooth_table(&self.params, self.shape, ys.clone());
                let table = ctx.storage_init("register.smooth_table", &table)?;
                let su = CrossUniform {
                    total: total as u32,
                    d0: nz as u32,
                    d1: ys.len() as u32,
                    d2: nx as u32,
                    ..Default::default()
                };
                rec.dispatch(
                    &ctx.pipeline(&shaders::CROSS_SMOOTH)?,
                    &su,
                    &[&a, &table],
                    total as u64,
                );
            }
            if upsample {
                rec.submit()?;
                self.store_y_slab(ctx, &mut cross, &ys, &a)?;
                rec = ctx.recorder();
            }
            plan.record(ctx, &mut rec, &a, &b, true)?;
            rec.submit()?;
            moving_power += read_sums(ctx, groups)?;
            self.store_y_slab(ctx, &mut spec, &ys, &a)?;
        }
        // Inverse x and y transforms and the per-slab peak.
        let mut best = NO_PEAK;
        for zs in slabs(nz, self.zs) {
            let plan = self.plan(ctx, [zs.len(), ny, nx], true)?;
            let total = plan_total(&plan);
            let a = ctx.tile_buffer("register.tile_a", plan_bytes(&plan))?;
            let b = ctx.tile_buffer("register.tile_b", plan_bytes(&plan))?;
            ctx.upload(&a, &spec[zs.start * ny * nx..zs.end * ny * nx]);
            let mut rec = ctx.recorder();
            plan.record(ctx, &mut rec, &a, &b, true)?;
            let window = argmax_uniform(&self.params, self.shape, zs.start, total);
            let groups = record_reduce(ctx, &mut rec, &shaders::CROSS_ARGMAX_ABS, &a, window)?;
            rec.submit()?;
            let offset = (zs.start * ny * nx) as u32;
            let (partials, _) = reduce_buffers(ctx)?;
            for mut q in ctx.read::<Partial>(&partials, groups)? {
                if q.idx == u32::MAX {
                    continue;
                }
                q.idx += offset;
                if beats(&q, &best) {
                    best = q;
                }
            }
            ctx.count_tiles(1, |s| &mut s.register);
        }
        let peak = peak_position(&best, self.shape)?;
        // The inverse transforms were unscaled: numpy's 1/N here, in f64.
        let n = (nz * ny * nx) as f64;
        let cc_peak = Complex64::new(best.re as f64 / n, best.im as f64 / n);
        finish(
            self.shape,
            &self.params,
            self.reference_power,
            peak,
            cc_peak,
            moving_power,
            self.scale,
            |r, u, offsets, window| self.upsampled_dft(ctx, &cross, r, u, offsets, window),
        )
    }

    /// `GpuRegistrar::upsampled_dft` on z-slabs of the host cross-power spectrum: x and y are
    /// contracted per slab, z on the gathered `nz·r²` values (a buffer under one binding) in slabs
    /// under the tile limit.
    fn upsampled_dft(
        &self,
        ctx: &GpuContext,
        cross: &[[f32; 2]],
        r: usize,
        u: f64,
        offsets: [f64; 3],
        window: Window,
    ) -> Result<([usize; 3], Complex64)> {
        let [nz, ny, nx] = self.shape;
        let [ky, kx] = upsample_kernels(ctx, self.shape, r, u, offsets)?;
        let k = contract_kernel(ctx)?;
        let mut t2 = Vec::with_capacity(nz * r * r);
        for zs in slabs(nz, self.zs) {
            let d = zs.len();
            let a = ctx.tile_buffer("register.tile_a", (d * ny * nx * 8) as u64)?;
            let t1 = ctx.tile_buffer("register.tile_b", (d * ny * r * 8) as u64)?;
            let t2s = ctx.tile_buffer("register.tile_t2", (d * r * r * 8) as u64)?;
            ctx.upload(&a, &cross[zs.start * ny * nx..zs.end * ny * nx]);
            let mut rec = ctx.recorder();
            record_contract(&mut rec, &k, [d, ny, nx], 2, r, [&a, &kx, &t1], d * ny * r);
            record_contract(&mut rec, &k, [d, ny, r], 1, r, [&t1, &ky, &t2s], d * r * r);
            rec.submit()?;
            t2.extend(ctx.read::<[f32; 2]>(&t2s, d * r * r)?);
            ctx.count_tiles(1, |s| &mut s.register);
        }
        let t2 = ctx.pooled_init("register.upsample_t2_tiled", &t2)?;
        let budget = UPSAMPLE_SLAB_BYTES.min(ctx.max_tile_bytes() as usize);
        upsampled_peak_z(ctx, &k, &t2, nz, r, u, offsets[0], window, budget)
    }
}

fn plan_total(plan: &Fft3Plan) -> usize {
    plan.shape.iter().product()
}

fn plan_bytes(plan: &Fft3Plan) -> u64 {
    plan_total(plan) as u64 * 8
}

fn reduce_groups(total: usize) -> usize {
    total
        .div_ceil(WORKGROUP as usize)
        .clamp(1, MAX_REDUCE_GROUPS)
}

/// The (argmax partials, power sums) buffers of the tiled reductions.
fn reduce_buffers(ctx: &GpuContext) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
    Ok((
        ctx.pooled("register.tile_partials", MAX_REDUCE_GROUPS as u64 * 16)?,
        ctx.pooled("register.tile_sums", MAX_REDUCE_GROUPS as u64 * 8)?,
    ))
}

/// Record the tiled reduction `entry` (`sum_sq` or `argmax_abs` of `cross_power.wgsl`) over the
/// `u.total` complex values in `buf`, into the pooled partials; returns the number of partials.
fn record_reduce(
    ctx: &GpuContext,
    rec: &mut Recorder<'_>,
    decl: &KernelDecl,
    buf: &wgpu::Buffer,
    u: CrossUniform,
) -> Result<usize> {
    let groups = reduce_groups(u.total as usize);
    let (partials, sums) = reduce_buffers(ctx)?;
    rec.dispatch_groups(
        &ctx.pipeline(decl)?,
        &u,
        &[buf, &partials, &sums],
        groups as u64,
    );
    Ok(groups)
}

fn read_sums(ctx: &GpuContext, groups: usize) -> Result<f64> {
    let (_, sums) = reduce_buffers(ctx)?;
    Ok(scaled_sum(&ctx.read::<[f32; 2]>(&sums, groups)?))
}
