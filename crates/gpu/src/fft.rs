//! Host side of `shaders/fft.wgsl` (CPU twin: `crates/cpu/src/fft.rs`): 3-D complex FFT of any shape, as
//! batched 1-D transforms along axes 2, 1, 0 (the CPU's order). Lengths whose prime factors are all in
//! {2, 3, 5, 7} use mixed-radix Stockham stages; others use Bluestein's chirp-z over a power-of-two
//! Stockham FFT. Twiddles, chirps and the chirp filter's spectrum are computed once per shape in f64.

use super::device::{GpuContext, Kernel, Recorder};
use super::shaders::{
    FFT_BLUESTEIN_WG, FFT_CHIRP_POST, FFT_CHIRP_PRE, FFT_CROSS_Z_WG, FFT_POINTWISE, FFT_STOCKHAM,
    FFT_STOCKHAM_WG, FFT_STOCKHAM_WG_PEAK, FFT_STOCKHAM_WG_POWER,
};
use bytemuck::{Pod, Zeroable};
use gpuprep_core::complex::Complex64;
use gpuprep_core::error::Result;
use std::f64::consts::PI;

/// Uniforms of `fft.wgsl`: the layout of its `struct Params` (checked by `tests/shaders.rs`,
/// `uniform_structs_match_wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct FftUniform {
    pub n: u32,
    pub stride: u32,
    pub lines: u32,
    pub radix: u32,
    pub ns: u32,
    pub tw_offset: u32,
    pub m: u32,
    pub chirp_offset: u32,
    pub bhat_offset: u32,
    pub total: u32,
    pub scale: f32,
    /// One pass: lines per workgroup.
    pub group: u32,
    /// One pass: the stages' radices, four bits each, first stage lowest (`pack_radices`).
    pub radices: u32,
    /// `bluestein_wg`, `cross_z_wg`: offset of the inverse twiddles.
    pub tw_inv_offset: u32,
    /// `cross_z_wg`: the cross-power's normalization and scale (as `CrossUniform`'s).
    pub phase: u32,
    pub scale_bits: u32,
    /// `cross_z_wg`: 1 smooth, 2 keep the cross-power; `stockham_wg`: 4 load reals (`LOAD_REALS`).
    pub flags: u32,
    /// `cross_z_wg`, `stockham_wg_peak`: the volume's x length.
    pub nx: u32,
    /// `stockham_wg_peak`: 1 ranks only shifts within (wz, wy, wx) voxels (as `CrossUniform`'s).
    pub window: u32,
    pub wz: u32,
    pub wy: u32,
    pub wx: u32,
    /// `stockham_wg_peak`: the volume's z and y lengths.
    pub nz: u32,
    pub ny: u32,
}
const _: () = assert!(std::mem::size_of::<FftUniform>() == 96);

/// A reduction over the result of `Fft3Plan::record_order`, fused into its last pass where that
/// pass is one Stockham pass (`stockham_wg_power`, `stockham_wg_peak`): one result per workgroup
/// in the buffer given, as `sum_sq` and `argmax_abs` (cross_power.wgsl) write theirs.
#[derive(Clone, Copy)]
pub enum Reduce<'a> {
    /// The sums of |.|^2 as (scale, sum) pairs.
    Power(&'a wgpu::Buffer),
    /// The peak of |.| (`Partial`s), within `window` = (on, wz, wy, wx) of shift.
    Peak(&'a wgpu::Buffer, [u32; 4]),
}

/// `stockham_wg`'s flag: load the real volume bound at binding 1 (imaginary parts 0) instead of `dst`.
const LOAD_REALS: u32 = 4;

/// What `Fft3Plan::record_cross_z` does to each bin between the z transforms.
pub struct CrossZ<'a> {
    /// The reference's spectrum.
    pub reference: &'a wgpu::Buffer,
    /// `cross_value`'s normalization (1: phase) and scale bits.
    pub phase: u32,
    pub scale_bits: u32,
    /// `smooth_table`'s [gz | gy | gx], when smoothing.
    pub smooth: Option<&'a wgpu::Buffer>,
    /// Where to keep the cross-power (for the upsampled DFT), when wanted.
    pub kept: Option<&'a wgpu::Buffer>,
}

/// Complex elements of workgroup memory one pass may use per line set: half of `sh` in `fft.wgsl`
/// (`WG_HALF`, checked by `tests/shaders.rs`); a length up to this runs in one pass per axis.
pub const WG_HALF: usize = 1024;
/// Workgroup memory the one-pass kernels declare (`sh`: two halves of `WG_HALF` vec2<f32>).
pub const WG_BYTES: u32 = (2 * WG_HALF * 8) as u32;

/// `radices` packed four bits per stage for the one-pass kernels, or `None` when there are more
/// than seven stages (the eighth nibble must stay 0 to end the list).
pub fn pack_radices(radices: &[u32]) -> Option<u32> {
    (radices.len() < 8).then(|| {
        radices
            .iter()
            .enumerate()
            .fold(0, |acc, (i, &r)| acc | (r << (4 * i)))
    })
}

/// Every radix a Stockham stage may have: the values of `stockham`'s `RADIX` (see `radices`).
pub const RADICES: [u32; 6] = [2, 3, 4, 5, 7, 8];

/// Radices of a Stockham decomposition of `n`, or `None` when `n` has a prime factor above 7.
/// Radix 8 first: each stage reads and writes the whole volume, and 8s take a third fewer stages
/// than 4s (256 = 8·8·4: 3 stages, not 4; 64 = 8·8: 2, not 3) for twice the arithmetic per point,
/// which a GPU has to spare on these memory-bound passes.
pub fn radices(mut n: usize) -> Option<Vec<u32>> {
    let mut r = Vec::new();
    while n.is_multiple_of(8) {
        r.push(8);
        n /= 8;
    }
    while n.is_multiple_of(4) {
        r.push(4);
        n /= 4;
    }
    for f in [2, 3, 5, 7] {
        while n.is_multiple_of(f) {
            r.push(f as u32);
            n /= f;
        }
    }
    (n == 1).then_some(r)
}

#[derive(Clone, Debug)]
enum AxisKind {
    Skip,
    Stockham {
        radices: Vec<u32>,
        tw: [u32; 2],
    },
    Bluestein {
        m: usize,
        radices: Vec<u32>,
        tw_m: [u32; 2],
        chirp: [u32; 2],
        bhat: [u32; 2],
    },
}

#[derive(Clone, Debug)]
struct Axis {
    n: usize,
    stride: usize,
    lines: usize,
    kind: AxisKind,
    /// One pass through workgroup memory: the packed radices and the lines per workgroup.
    one_pass: Option<(u32, usize)>,
}

/// Elements a line of length `n` occupies while transformed: `n`, or Bluestein's padded length.
pub fn line_work(n: usize) -> usize {
    if n <= 1 || radices(n).is_some() {
        n
    } else {
        bluestein_len(n)
    }
}

/// Bluestein's padded length for a line of `n`: the smallest length of at least 2n - 1 whose prime
/// factors are all in {2, 3, 5, 7} (a Stockham length; up to a third shorter than a power of two).
pub fn bluestein_len(n: usize) -> usize {
    (2 * n - 1..)
        .find(|&m| radices(m).is_some())
        .expect("a power of two is always found")
}

/// A planned 3-D FFT for one shape: tables on the device and Bluestein scratch buffers.
pub struct Fft3Plan {
    pub shape: [usize; 3],
    axes: Vec<Axis>,
    /// Whether the inverse transform scales by 1/N (numpy); the tiled registration does not, as
    /// each slab's plan sees only part of the volume.
    scale_inverse: bool,
    tables: wgpu::Buffer,
    scratch: Option<[wgpu::Buffer; 2]>,
}

fn c32(c: Complex64) -> [f32; 2] {
    [c.re as f32, c.im as f32]
}

/// `exp(-/+ 2 pi i m / n)`, m < n (sign by direction: index 0 forward, 1 inverse).
fn twiddles(n: usize, inverse: bool) -> Vec<[f32; 2]> {
    let s = if inverse { 1.0 } else { -1.0 };
    (0..n)
        .map(|m| {
            c32(Complex64::from_polar(
                1.0,
                s * 2.0 * PI * m as f64 / n as f64,
            ))
        })
        .collect()
}

fn chirp64(n: usize, inverse: bool) -> Vec<Complex64> {
    let s = if inverse { 1.0 } else { -1.0 };
    (0..n)
        .map(|m| {
            let q = (m as u128 * m as u128 % (2 * n as u128)) as f64;
            Complex64::from_polar(1.0, s * PI * q / n as f64)
        })
        .collect()
}

impl Fft3Plan {
    pub fn new(ctx: &GpuContext, shape: [usize; 3]) -> Result<Fft3Plan> {
        Self::new_axes(ctx, shape, [true; 3], true)
    }

    /// A plan transforming only the axes marked in `axes` (the others are left as they are), for
    /// slabs of a tiled volume; `scale_inverse` as the field.
    pub fn new_axes(
        ctx: &GpuContext,
        shape: [usize; 3],
        axes_on: [bool; 3],
        scale_inverse: bool,
    ) -> Result<Fft3Plan> {
        let mut tables: Vec<[f32; 2]> = Vec::new();
        let mut push = |t: Vec<[f32; 2]>| -> u32 {
            let off = tables.len() as u32;
            tables.extend(t);
            off
        };
        let total: usize = shape.iter().product();
        let strides = [shape[1] * shape[2], shape[2], 1];
        let mut scratch_elems = 0usize;
        let mut axes = Vec::new();
        for a in 0..3 {
            let n = shape[a];
            let lines = total / n;
            let kind = if n <= 1 || !axes_on[a] {
                AxisKind::Skip
            } else if let Some(radices) = radices(n) {
                AxisKind::Stockham {
                    radices,
                    tw: [push(twiddles(n, false)), push(twiddles(n, true))],
                }
            } else {
                let m = bluestein_len(n);
                let mut planner = rustfft::FftPlanner::<f64>::new();
                let fft = planner.plan_fft_forward(m);
                let mut chirp = [0u32; 2];
                let mut bhat = [0u32; 2];
                for (d, inverse) in [false, true].into_iter().enumerate() {
                    let w = chirp64(n, inverse);
                    let mut b = vec![Complex64::default(); m];
                    b[0] = w[0].conj();
                    for i in 1..n {
                        b[i] = w[i].conj();
                        b[m - i] = w[i].conj();
                    }
                    fft.process(&mut b);
                    chirp[d] = push(w.iter().map(|&c| c32(c)).collect());
                    bhat[d] = push(b.iter().map(|&c| c32(c / m as f64)).collect());
                }
                AxisKind::Bluestein {
                    m,
                    radices: radices(m).expect("a Stockham length"),
                    tw_m: [push(twiddles(m, false)), push(twiddles(m, true))],
                    chirp,
                    bhat,
                }
            };
            // One pass per axis where a workgroup's lines fit in its memory: `group` lines each.
            let one_pass = |len: usize, radices: &[u32]| {
                let packed =
                    pack_radices(radices).filter(|_| ctx.fft_one_pass() && len <= WG_HALF)?;
                Some((packed, (WG_HALF / len).min(lines).max(1)))
            };
            let one_pass = match &kind {
                AxisKind::Skip => None,
                AxisKind::Stockham { radices, .. } => one_pass(n, radices),
                AxisKind::Bluestein { m, radices, .. } => one_pass(*m, radices),
            };
            if let (AxisKind::Bluestein { m, .. }, None) = (&kind, one_pass) {
                scratch_elems = scratch_elems.max(lines * m);
            }
            axes.push(Axis {
                n,
                stride: strides[a],
                lines,
                kind,
                one_pass,
            });
        }
        let scratch = if scratch_elems > 0 {
            Some([
                ctx.storage("fft.bluestein0", scratch_elems as u64 * 8)?,
                ctx.storage("fft.bluestein1", scratch_elems as u64 * 8)?,
            ])
        } else {
            None
        };
        Ok(Fft3Plan {
            shape,
            axes,
            scale_inverse,
            tables: ctx.storage_init("fft.tables", &tables)?,
            scratch,
        })
    }

    /// Describe the plan per axis, e.g. `[4x4x2, bluestein(101 via 256), skip]`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .axes
            .iter()
            .map(|a| {
                let route = if a.one_pass.is_some() {
                    " one pass"
                } else {
                    ""
                };
                match &a.kind {
                    AxisKind::Skip => "skip".into(),
                    AxisKind::Stockham { radices, .. } => {
                        let r: Vec<String> = radices.iter().map(|r| r.to_string()).collect();
                        format!("{}{route}", r.join("x"))
                    }
                    AxisKind::Bluestein { m, .. } => format!("bluestein({} via {m}){route}", a.n),
                }
            })
            .collect();
        format!("[{}]", parts.join(", "))
    }

    /// Record the 3-D FFT of the complex volume in `a` (numpy conventions), using `b` as ping-pong
    /// buffer; the result ends in `a`.
    pub fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        inverse: bool,
    ) -> Result<()> {
        let scale = self.final_scale(inverse);
        self.record_order(ctx, rec, a, b, inverse, &[2, 1, 0], scale, None, None)
            .map(|_| ())
    }

    /// 1/N for an inverse transform that scales (numpy's), else 1.
    fn final_scale(&self, inverse: bool) -> f32 {
        if inverse && self.scale_inverse {
            1.0 / self.shape.iter().product::<usize>() as f32
        } else {
            1.0
        }
    }

    /// Whether `record`'s inverse transform scales by 1/N (numpy's), as the plan was made.
    pub fn scales_inverse(&self) -> bool {
        self.scale_inverse
    }

    /// Whether axis `ax` is transformed (not of length 1, nor left out of the plan).
    pub fn transforms(&self, ax: usize) -> bool {
        !matches!(self.axes[ax].kind, AxisKind::Skip)
    }

    /// Whether `record_order` can take the real volume itself (`reals`) rather than its complex
    /// copy: the first axis of `order` it transforms runs one Stockham pass.
    pub fn reads_reals(&self, order: &[usize]) -> bool {
        order
            .iter()
            .find(|&&ax| self.transforms(ax))
            .is_some_and(|&ax| {
                matches!(
                    (&self.axes[ax].kind, self.axes[ax].one_pass),
                    (AxisKind::Stockham { .. }, Some(_))
                )
            })
    }

    /// Whether `record_cross_z` can run: the z axis is transformed in one Stockham pass.
    pub fn fuses_z(&self) -> bool {
        matches!(
            (&self.axes[0].kind, self.axes[0].one_pass),
            (AxisKind::Stockham { .. }, Some(_))
        )
    }

    /// The forward z transform of `a` (already transformed along x and y), each bin made its
    /// cross-power as `cross` says, and the inverse z transform (times `scale`), in one pass
    /// (`cross_z_wg`); needs `fuses_z`.
    pub fn record_cross_z(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        a: &wgpu::Buffer,
        cross: &CrossZ<'_>,
        scale: f32,
    ) -> Result<()> {
        let axis = &self.axes[0];
        let (AxisKind::Stockham { tw, .. }, Some((packed, group))) = (&axis.kind, axis.one_pass)
        else {
            return Err(gpuprep_core::error::Error::Gpu(format!(
                "the fused z pass needs one Stockham pass along z; the plan is {}",
                self.describe()
            )));
        };
        let u = FftUniform {
            n: axis.n as u32,
            stride: axis.stride as u32,
            lines: axis.lines as u32,
            tw_offset: tw[0],
            tw_inv_offset: tw[1],
            scale,
            group: group as u32,
            radices: packed,
            phase: cross.phase,
            scale_bits: cross.scale_bits,
            flags: cross.smooth.is_some() as u32 | (cross.kept.is_some() as u32) << 1,
            nx: self.shape[2] as u32,
            ..Default::default()
        };
        // Unused bindings get buffers of their kind: a small pooled one for `kept`.
        let none = ctx.pooled("fft.no_kept", 16)?;
        let kept = cross.kept.unwrap_or(&none);
        let smooth = cross.smooth.unwrap_or(&self.tables);
        let bufs = [cross.reference, &self.tables, a, kept, smooth];
        let groups = axis.lines.div_ceil(group) as u64;
        rec.dispatch_groups(&ctx.pipeline(&FFT_CROSS_Z_WG)?, &u, &bufs, groups);
        Ok(())
    }

    /// The 1-D transforms along `order`'s axes, in that order, the last one transformed times
    /// `final_scale`; the result ends in `a` (`b` the ping-pong buffer of the per-stage route).
    /// With `reals`, the first pass reads that real (f32) volume instead of `a` (which `reads_reals`
    /// must allow). With `reduce`, the reduction is fused into the last pass where it is one
    /// Stockham pass: returns the number of results written then (one per workgroup), else `None`
    /// (nothing reduced: the caller runs the reduction's own kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn record_order(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        inverse: bool,
        order: &[usize],
        final_scale: f32,
        reals: Option<&wgpu::Buffer>,
        reduce: Option<Reduce<'_>>,
    ) -> Result<Option<usize>> {
        if reals.is_some() && !self.reads_reals(order) {
            return Err(gpuprep_core::error::Error::Gpu(format!(
                "an FFT from real input needs one Stockham pass on its first axis; the plan is {}",
                self.describe()
            )));
        }
        let mut reals = reals;
        let d = inverse as usize;
        let stockham = |r: u32| ctx.pipeline_variant(&FFT_STOCKHAM, &[("RADIX", r)]);
        let total: usize = self.shape.iter().product();
        // The scale once, on the last transform (numpy's inverse), in f32 as the CPU twin.
        let last = order.iter().rev().copied().find(|&ax| self.transforms(ax));
        let mut cur_is_a = true;
        let mut reduced = None;
        for &ax in order {
            let axis = &self.axes[ax];
            let scale = if Some(ax) == last { final_scale } else { 1.0 };
            let reduce = reduce.filter(|_| Some(ax) == last);
            let (cur, other) = if cur_is_a { (a, b) } else { (b, a) };
            match (&axis.kind, axis.one_pass) {
                (AxisKind::Skip, _) => {}
                (AxisKind::Stockham { tw, .. }, Some((packed, group))) => {
                    // The first pass may load the real volume itself (binding 1, flag 4);
                    // otherwise binding 1 is unused and the tables fill it.
                    let src = reals.take();
                    let mut u = FftUniform {
                        n: axis.n as u32,
                        stride: axis.stride as u32,
                        lines: axis.lines as u32,
                        tw_offset: tw[d],
                        scale,
                        group: group as u32,
                        radices: packed,
                        flags: if src.is_some() { LOAD_REALS } else { 0 },
                        ..Default::default()
                    };
                    let groups = axis.lines.div_ceil(group);
                    let src = src.unwrap_or(&self.tables);
                    match reduce {
                        None => {
                            let k = ctx.pipeline(&FFT_STOCKHAM_WG)?;
                            rec.dispatch_groups(&k, &u, &[src, &self.tables, cur], groups as u64);
                        }
                        Some(Reduce::Power(out)) => {
                            let k = ctx.pipeline(&FFT_STOCKHAM_WG_POWER)?;
                            let bufs = [src, &self.tables, cur, out];
                            rec.dispatch_groups(&k, &u, &bufs, groups as u64);
                            reduced = Some(groups);
                        }
                        Some(Reduce::Peak(out, [window, wz, wy, wx])) => {
                            [u.nz, u.ny, u.nx] = self.shape.map(|d| d as u32);
                            (u.window, u.wz, u.wy, u.wx) = (window, wz, wy, wx);
                            let k = ctx.pipeline(&FFT_STOCKHAM_WG_PEAK)?;
                            let bufs = [src, &self.tables, cur, out];
                            rec.dispatch_groups(&k, &u, &bufs, groups as u64);
                            reduced = Some(groups);
                        }
                    }
                }
                (
                    AxisKind::Bluestein {
                        m,
                        tw_m,
                        chirp,
                        bhat,
                        ..
                    },
                    Some((packed, group)),
                ) => {
                    let u = FftUniform {
                        n: axis.n as u32,
                        stride: axis.stride as u32,
                        lines: axis.lines as u32,
                        m: *m as u32,
                        chirp_offset: chirp[d],
                        bhat_offset: bhat[d],
                        tw_offset: tw_m[0],
                        tw_inv_offset: tw_m[1],
                        scale,
                        group: group as u32,
                        radices: packed,
                        ..Default::default()
                    };
                    let bufs = [&self.tables, &self.tables, cur];
                    let groups = axis.lines.div_ceil(group) as u64;
                    rec.dispatch_groups(&ctx.pipeline(&FFT_BLUESTEIN_WG)?, &u, &bufs, groups);
                }
                (AxisKind::Stockham { radices, tw }, None) => {
                    let flips = self.stages(
                        rec,
                        &stockham,
                        radices,
                        axis.n,
                        axis.stride,
                        axis.lines,
                        tw[d],
                        scale,
                        cur,
                        other,
                    )?;
                    if flips % 2 == 1 {
                        cur_is_a = !cur_is_a;
                    }
                }
                (
                    AxisKind::Bluestein {
                        m,
                        radices,
                        tw_m,
                        chirp,
                        bhat,
                    },
                    None,
                ) => {
                    let s = self.scratch.as_ref().expect("bluestein scratch");
                    let pre = ctx.pipeline(&FFT_CHIRP_PRE)?;
                    let pw = ctx.pipeline(&FFT_POINTWISE)?;
                    let post = ctx.pipeline(&FFT_CHIRP_POST)?;
                    let mut u = FftUniform {
                        n: axis.n as u32,
                        stride: axis.stride as u32,
                        lines: axis.lines as u32,
                        m: *m as u32,
                        chirp_offset: chirp[d],
                        bhat_offset: bhat[d],
                        total: (axis.lines * m) as u32,
                        scale: 1.0,
                        ..Default::default()
                    };
                    rec.dispatch(
                        &pre,
                        &u,
                        &[cur, &self.tables, &s[0]],
                        (axis.lines * m) as u64,
                    );
                    let f1 = self.stages(
                        rec, &stockham, radices, *m, 1, axis.lines, tw_m[0], 1.0, &s[0], &s[1],
                    )?;
                    let (x, y) = if f1 % 2 == 0 {
                        (&s[0], &s[1])
                    } else {
                        (&s[1], &s[0])
                    };
                    rec.dispatch(&pw, &u, &[y, &self.tables, x], (axis.lines * m) as u64);
                    let f2 = self.stages(
                        rec, &stockham, radices, *m, 1, axis.lines, tw_m[1], 1.0, x, y,
                    )?;
                    let res = if f2 % 2 == 0 { x } else { y };
                    u.total = (axis.lines * axis.n) as u32;
                    u.scale = scale;
                    rec.dispatch(
                        &post,
                        &u,
                        &[res, &self.tables, cur],
                        (axis.lines * axis.n) as u64,
                    );
                }
            }
        }
        if !cur_is_a {
            rec.copy(b, a, total as u64 * 8);
        }
        Ok(reduced)
    }

    /// The most workgroups a one-pass axis dispatches: the most results `record_order` writes.
    pub fn max_reduced(&self) -> usize {
        self.axes
            .iter()
            .filter_map(|a| a.one_pass.map(|(_, group)| a.lines.div_ceil(group)))
            .max()
            .unwrap_or(0)
    }

    /// Record the Stockham stages of one axis from `x`, alternating with `y`; returns the number of
    /// stages (the result is in `x` when even, `y` when odd).
    #[allow(clippy::too_many_arguments)]
    fn stages(
        &self,
        rec: &mut Recorder<'_>,
        kernel: &dyn Fn(u32) -> Result<std::sync::Arc<Kernel>>,
        radices: &[u32],
        n: usize,
        stride: usize,
        lines: usize,
        tw: u32,
        scale: f32,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<usize> {
        let mut ns = 1usize;
        for (i, &r) in radices.iter().enumerate() {
            let threads = lines * n / r as usize;
            let u = FftUniform {
                n: n as u32,
                stride: stride as u32,
                lines: lines as u32,
                radix: r,
                ns: ns as u32,
                tw_offset: tw,
                total: threads as u32,
                scale: if i + 1 == radices.len() { scale } else { 1.0 },
                ..Default::default()
            };
            let (src, dst) = if i % 2 == 0 { (x, y) } else { (y, x) };
            rec.dispatch(&kernel(r)?, &u, &[src, &self.tables, dst], threads as u64);
            ns *= r as usize;
        }
        Ok(radices.len())
    }
}
