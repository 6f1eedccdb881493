//! Host side of `shaders/cross_power.wgsl` with the FFTs of `fft.rs`: scikit-image's
//! `phase_cross_correlation` on the device. CPU twin: `src/cpu/register.rs` (whose `finish` this
//! mirrors step by step, with the peak, the powers and the upsampled DFT computed on the GPU).

use super::device::{Bind, GpuContext, Recorder, WORKGROUP};
use super::fft::{line_work, Fft3Plan};
use bytemuck::{Pod, Zeroable};
use gpuprep_core::complex::Complex64;
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::{Normalization, RegisterParams, Registration};
pub use gpuprep_core::register::upsample_slab_planes;
use gpuprep_core::register::{check_finite, UPSAMPLE_SLAB_BYTES};
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

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
    /// `cross_power`, unnormalized: f32 bits of the power of two R is stored times (0 means 1).
    pub scale_bits: u32,
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
    /// What the unnormalized cross-power is stored times (`unnormalized_scale`).
    scale: f64,
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
            sums: ctx.storage("register.power_partials", groups as u64 * 8)?,
            groups,
            reference_power: 0.0,
            scale: 1.0,
        };
        let mut rec = ctx.recorder();
        r.record_spectrum(ctx, &mut rec, src, &r.reference)?;
        rec.submit()?;
        r.reference_power = r.read_power(ctx)?;
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
        Ok(scaled_sum(&ctx.read::<[f32; 2]>(&self.sums, self.groups)?))
    }

    /// Register the real volume in `src` (on the device) onto the reference. Work already recorded in
    /// `rec` (e.g. the median filter producing `src`) is submitted with it.
    pub fn register(
        &mut self,
        ctx: &GpuContext,
        src: &wgpu::Buffer,
        rec: Option<Recorder<'_>>,
    ) -> Result<Registration> {
        Ok(self.register_then(ctx, src, rec, || Ok(()))?.0)
    }

    /// `register`, calling `after_submit` once the spectra and peak search are submitted and
    /// before waiting for them: host work placed there overlaps the registration's GPU time
    /// (`GpuBackend::process_frame_ahead` stages the next volume there).
    pub fn register_then<T>(
        &mut self,
        ctx: &GpuContext,
        src: &wgpu::Buffer,
        rec: Option<Recorder<'_>>,
        after_submit: impl FnOnce() -> Result<T>,
    ) -> Result<(Registration, T)> {
        let total = self.total();
        let mut rec = rec.unwrap_or_else(|| ctx.recorder());
        self.record_spectrum(ctx, &mut rec, src, &self.g)?;
        let u = CrossUniform {
            total: total as u32,
            phase: (self.params.normalization == Normalization::Phase) as u32,
            scale_bits: (self.scale as f32).to_bits(),
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
        let after = after_submit()?;
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
            return Err(gpuprep_core::register::not_finite(
                "the cross-power spectrum (its correlation is NaN everywhere)",
                None,
            ));
        }
        let [_, ny, nx] = self.shape;
        let i = best.idx as usize;
        let peak = [i / (ny * nx), (i / nx) % ny, i % nx];
        let r = self.finish(
            ctx,
            peak,
            Complex64::new(best.re as f64, best.im as f64),
            moving_power,
        )?;
        Ok((r, after))
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
            |r, u, offsets| self.upsampled_dft(ctx, r, u, offsets),
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
    ) -> Result<([usize; 3], Complex64)> {
        let [nz, ny, nx] = self.shape;
        let [ky, kx] = upsample_kernels(ctx, self.shape, r, u, offsets)?;
        let t1 = ctx.storage("register.upsample_t1", (nz * ny * r * 8) as u64)?;
        let t2 = ctx.storage("register.upsample_t2", (nz * r * r * 8) as u64)?;
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
        upsampled_peak_z(ctx, &k, &t2, nz, r, u, offsets[0], UPSAMPLE_SLAB_BYTES)
    }
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
    up: impl FnOnce(usize, f64, [f64; 3]) -> Result<([usize; 3], Complex64)>,
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

/// The conjugated kernel of one axis of the upsampled DFT: `r` rows of `n` values.
fn upsample_kernel(n: usize, r: usize, u: f64, off: f64) -> Vec<[f32; 2]> {
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
fn record_contract(
    rec: &mut Recorder<'_>,
    k: &std::rc::Rc<super::device::Kernel>,
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
        scale_bits: 0,
    };
    rec.dispatch(k, &u, &bufs, total as u64);
}

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
    plans: HashMap<([usize; 3], bool), Rc<Fft3Plan>>,
}

fn slabs(n: usize, step: usize) -> Vec<Range<usize>> {
    (0..n).step_by(step).map(|a| a..(a + step).min(n)).collect()
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
            let groups = record_reduce(ctx, &mut rec, "sum_sq", &a, plan_total(&plan))?;
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

    fn plan(&mut self, ctx: &GpuContext, shape: [usize; 3], xy: bool) -> Result<Rc<Fft3Plan>> {
        if let Some(p) = self.plans.get(&(shape, xy)) {
            return Ok(p.clone());
        }
        let axes = if xy {
            [false, true, true]
        } else {
            [true, false, false]
        };
        let p = Rc::new(Fft3Plan::new_axes(ctx, shape, axes, false)?);
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
                &ctx.kernel("cross_power", "to_complex", &[], &R3)?,
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
            let groups = record_reduce(ctx, &mut rec, "sum_sq", &a, total)?;
            let u = CrossUniform {
                total: total as u32,
                phase,
                scale_bits: (self.scale as f32).to_bits(),
                ..Default::default()
            };
            rec.dispatch(
                &ctx.kernel("cross_power", "cross_power", &[], &R3)?,
                &u,
                &[&f, &a],
                total as u64,
            );
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
        let mut best = Partial {
            val: f32::NEG_INFINITY,
            idx: u32::MAX,
            re: 0.0,
            im: 0.0,
        };
        for zs in slabs(nz, self.zs) {
            let plan = self.plan(ctx, [zs.len(), ny, nx], true)?;
            let total = plan_total(&plan);
            let a = ctx.tile_buffer("register.tile_a", plan_bytes(&plan))?;
            let b = ctx.tile_buffer("register.tile_b", plan_bytes(&plan))?;
            ctx.upload(&a, &spec[zs.start * ny * nx..zs.end * ny * nx]);
            let mut rec = ctx.recorder();
            plan.record(ctx, &mut rec, &a, &b, true)?;
            let groups = record_reduce(ctx, &mut rec, "argmax_abs", &a, total)?;
            rec.submit()?;
            let offset = (zs.start * ny * nx) as u32;
            let (partials, _) = reduce_buffers(ctx)?;
            for mut q in ctx.read::<Partial>(&partials, groups)? {
                if q.idx == u32::MAX {
                    continue;
                }
                q.idx += offset;
                if q.val > best.val || (q.val == best.val && q.idx < best.idx) {
                    best = q;
                }
            }
            ctx.count_tiles(1, |s| &mut s.register);
        }
        if best.idx == u32::MAX {
            return Err(gpuprep_core::register::not_finite(
                "the cross-power spectrum (its correlation is NaN everywhere)",
                None,
            ));
        }
        let i = best.idx as usize;
        let peak = [i / (ny * nx), (i / nx) % ny, i % nx];
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
            |r, u, offsets| self.upsampled_dft(ctx, &cross, r, u, offsets),
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
        let t2 = ctx.storage_init("register.upsample_t2", &t2)?;
        let budget = UPSAMPLE_SLAB_BYTES.min(ctx.max_tile_bytes() as usize);
        upsampled_peak_z(ctx, &k, &t2, nz, r, u, offsets[0], budget)
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
/// `total` complex values in `buf`, into the pooled partials; returns the number of partials.
fn record_reduce(
    ctx: &GpuContext,
    rec: &mut Recorder<'_>,
    entry: &str,
    buf: &wgpu::Buffer,
    total: usize,
) -> Result<usize> {
    let groups = reduce_groups(total);
    let (partials, sums) = reduce_buffers(ctx)?;
    let u = CrossUniform {
        total: total as u32,
        ..Default::default()
    };
    rec.dispatch_groups(
        &ctx.kernel("cross_power", entry, &[], &R4)?,
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

/// The y and x axes' `upsample_kernel` tables on the device, for the first two contractions of the
/// upsampled DFT (resident and tiled); z's goes up slab by slab (`upsampled_peak_z`).
fn upsample_kernels(
    ctx: &GpuContext,
    shape: [usize; 3],
    r: usize,
    u: f64,
    offsets: [f64; 3],
) -> Result<[wgpu::Buffer; 2]> {
    Ok([
        ctx.storage_init(
            "register.upsample_ky",
            &upsample_kernel(shape[1], r, u, offsets[1]),
        )?,
        ctx.storage_init(
            "register.upsample_kx",
            &upsample_kernel(shape[2], r, u, offsets[2]),
        )?,
    ])
}

fn contract_kernel(ctx: &GpuContext) -> Result<Rc<super::device::Kernel>> {
    ctx.kernel(
        "cross_power",
        "contract",
        &[],
        &[Bind::Uniform, Bind::Read, Bind::Read, Bind::ReadWrite],
    )
}

/// The last contraction (over z) of the upsampled DFT from `t2` (`nz·r²` values on the device), and
/// the first largest |v| of the `r³` region in C order with its index, as np.argmax. The region is
/// never held: slabs of output planes (`upsample_slab_planes` of `slab_bytes`) are contracted with
/// their rows of the z kernel, read back and scanned in order, so host and device hold one slab
/// instead of `r³` values (24 GiB at u = 1000). Each value is the same dispatch's sum as over the
/// whole region, so the peak is too.
#[allow(clippy::too_many_arguments)]
fn upsampled_peak_z(
    ctx: &GpuContext,
    k: &Rc<super::device::Kernel>,
    t2: &wgpu::Buffer,
    nz: usize,
    r: usize,
    u: f64,
    off_z: f64,
    slab_bytes: usize,
) -> Result<([usize; 3], Complex64)> {
    let kz = upsample_kernel(nz, r, u, off_z);
    let planes = upsample_slab_planes(r, slab_bytes);
    let t3 = ctx.storage("register.upsample_t3", (planes * r * r * 8) as u64)?;
    // Strictly larger in C order: the first maximum; a NaN never ranks (all NaN: index 0).
    let (mut best, mut best_v, mut value) = (0usize, f64::NEG_INFINITY, None);
    for a0 in (0..r).step_by(planes) {
        let n = planes.min(r - a0);
        let kzs = ctx.storage_init("register.upsample_kz", &kz[a0 * nz..(a0 + n) * nz])?;
        let mut rec = ctx.recorder();
        record_contract(&mut rec, k, [nz, r, r], 0, n, [t2, &kzs, &t3], n * r * r);
        rec.submit()?;
        let slab = ctx.read::<[f32; 2]>(&t3, n * r * r)?;
        if a0 == 0 {
            value = value.or(Some(slab[0]));
        }
        for (i, &[re, im]) in slab.iter().enumerate() {
            let v = Complex64::new(re as f64, im as f64);
            if v.norm() > best_v {
                best_v = v.norm();
                best = a0 * r * r + i;
                value = Some([re, im]);
            }
        }
    }
    let [re, im] = value.expect("r >= 1");
    Ok((
        [best / (r * r), (best / r) % r, best % r],
        Complex64::new(re as f64, im as f64),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Api;

    fn ctx() -> Option<GpuContext> {
        match GpuContext::new(Api::Vulkan) {
            Ok(c) => Some(c),
            Err(e) if std::env::var("GPUPREP_REQUIRE_GPU").as_deref() != Ok("1") => {
                eprintln!("SKIPPED: no Vulkan adapter ({e})");
                None
            }
            Err(e) => panic!("GPUPREP_REQUIRE_GPU=1 but no Vulkan adapter: {e}"),
        }
    }

    #[test]
    fn upsampled_peak_in_slabs_of_planes_is_the_whole_regions_bit_for_bit() {
        let Some(ctx) = ctx() else { return };
        let k = contract_kernel(&ctx).unwrap();
        // Odd r; t2 values of a few distinct magnitudes, so the region has exact ties across planes.
        let (nz, r) = (3usize, 7usize);
        let t2: Vec<[f32; 2]> = (0..nz * r * r)
            .map(|i| [((i * 37) % 11) as f32 - 5.0, ((i * 13) % 7) as f32])
            .collect();
        let t2 = ctx.storage_init("test.t2", &t2).unwrap();
        let peak = |bytes| upsampled_peak_z(&ctx, &k, &t2, nz, r, 3.0, 2.5, bytes).unwrap();
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
