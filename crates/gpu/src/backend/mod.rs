//! `GpuBackend`: the `Backend` on a wgpu device.
//!
//! Each stage owns its route, chosen per volume shape and held in its own enum with its named
//! buffers: resident (the stage's buffers on the device) when its largest buffer fits the tile
//! limit (`GpuContext::max_tile_bytes`, one storage binding by default), else tiled (slabs or
//! element ranges, see the kernels' `run_tiled`), with the volume on the host between stages. The
//! largest buffer is the f32 volume (4 bytes a voxel) for the median and the normalization, the f32
//! volume or the order-3 padded lines for the shift, the complex spectrum (8) for registration, the
//! f64 accumulators (8 each) for the z-score.
//!
//! `process_frame` takes the fused route (one upload, median → register → shift → accumulate on the
//! device, one readback) when every stage of the plan is resident (`Fused`), else the stages one by
//! one. `process_stream` does the same for each volume of the stream and, on the fused route, takes
//! the next volume from the stream before computing the current one and stages its upload into a
//! second input buffer (see `ahead`) right after the frame's first submission, while the GPU
//! computes; the next frame swaps the two inputs instead of uploading.

use super::ahead::AheadUpload;
use super::device::{Api, GpuContext, GpuCounters, TileStats};
use super::register::{GpuRegistrar, TiledRegistrar};
use super::shift::ShiftBuffers;
use super::zscore::{GpuAccumulator, TiledAccumulator};
use super::zscore_f32::{self, F32Accumulator, ZscoreChoice, ZscorePath};
use super::{median3d, shift, zscore};
use gpuprep_core::backend::{
    frame_by_stage, stale_handle, Accumulation, Backend, FrameOutput, FramePlan, Moments,
    MomentsKey, Reference,
};
use gpuprep_core::complex::C32;
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::{MedianParams, RegisterParams, Registration, ShiftParams, ZscoreParams};
use gpuprep_core::zscore as host_zscore;
use ndarray::{Array3, ArrayView3};
use std::borrow::Cow;

mod fused;
mod stages;

use fused::{Accumulate, Fused};
use stages::*;

/// How the fused route got its volumes onto the device (tests assert that staged uploads were
/// really used).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AheadStats {
    /// Volumes staged while an earlier frame of a stream computed.
    pub staged: usize,
    /// Frames (fused route) that found their volume staged and skipped its upload.
    pub frames_prestaged: usize,
    /// Frames (fused route) that uploaded their volume.
    pub frames_uploaded: usize,
    /// Frames of a stream (fused route) whose median and registration were submitted before the
    /// previous frame's readback was waited for.
    pub frames_overlapped: usize,
}

/// The GPU backend. Every stage runs on the device (see `describe`). The z-score runs on the device in
/// f64 where it has SHADER_F64, else in float32 double-float arithmetic of the same accuracy
/// (`zscore_f32.wgsl`) when the device passes its self-test, else on the CPU twin; `GPUPREP_GPU_ZSCORE`
/// forces one (`zscore_f32::ZscorePath`).
pub struct GpuBackend {
    ctx: GpuContext,
    /// Where the z-score runs, and why (for `describe`).
    zscore: (ZscorePath, String),
    input: Option<Input>,
    median: Option<MedianStage>,
    shift: Option<ShiftStage>,
    /// The reference's route, with the handle issued for it.
    register: Option<(Reference, RegisterStage)>,
    /// The accumulation's route, with the handle issued for it.
    moments: Option<(Accumulation, MomentStage)>,
    issued: Option<IssuedMoments>,
    normalize: Option<NormalizeBuffers>,
    ahead_stats: AheadStats,
}

impl GpuBackend {
    /// Open the first adapter of `api`; `Error::Gpu("no GPU adapter found (backend …)")` when none.
    /// The z-score's path as `GPUPREP_GPU_ZSCORE` says (`zscore_f32::ZscoreChoice::from_env`).
    pub fn new(api: Api) -> Result<GpuBackend> {
        let choice = ZscoreChoice::from_env()?;
        let ctx = GpuContext::new(api)?;
        let zscore = zscore_f32::choose(&ctx, choice)?;
        Ok(GpuBackend {
            ctx,
            zscore,
            input: None,
            median: None,
            shift: None,
            register: None,
            moments: None,
            issued: None,
            normalize: None,
            ahead_stats: AheadStats::default(),
        })
    }

    /// Where the z-score runs (accumulation, moments, normalization).
    pub fn zscore_path(&self) -> ZscorePath {
        self.zscore.0
    }

    /// Choose the z-score's path again (tests force the f32 path on devices with f64); an error
    /// when the device cannot run a forced path. Accumulations issued before are stale after it.
    pub fn set_zscore_path(&mut self, choice: ZscoreChoice) -> Result<()> {
        self.zscore = zscore_f32::choose(&self.ctx, choice)?;
        self.moments = None;
        self.issued = None;
        Ok(())
    }

    /// Counts of staged and uploaded frame volumes since the backend was made.
    pub fn ahead_stats(&self) -> AheadStats {
        self.ahead_stats
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Lower the tile limit (bytes of the largest buffer a stage may use before it tiles); tests
    /// force tiny tiles with it. Takes effect for references and accumulations set after it.
    pub fn set_max_tile_bytes(&mut self, bytes: u64) {
        self.ctx.set_max_tile_bytes(bytes);
    }

    /// Dispatches, submits, blocking reads and writes sent to the device so far.
    pub fn counters(&self) -> GpuCounters {
        self.ctx.counters()
    }

    /// Tiles run so far per kernel (zero while every volume fits).
    pub fn tile_stats(&self) -> TileStats {
        self.ctx.tile_stats()
    }

    /// Whether the adapter is a software rasterizer on the CPU (lavapipe, llvmpipe, WARP): correct
    /// but slower than the CPU backend, so `--backend auto` should not prefer it.
    pub fn is_software(&self) -> bool {
        self.ctx.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The adapter's backend (Vulkan, Metal, …).
    pub fn adapter_backend(&self) -> wgpu::Backend {
        self.ctx.info.backend
    }

    /// The fused route's buffers for frames of `shape` under `plan`, or `None` when a stage of
    /// the plan is tiled (the frame then goes stage by stage). Errors for a plan whose reference
    /// or accumulation does not match `shape`.
    fn fused(&mut self, shape: [usize; 3], plan: &FramePlan) -> Result<Option<Fused<'_>>> {
        check_shape(shape)?;
        let GpuBackend {
            ctx,
            input,
            median,
            shift,
            register,
            moments,
            ..
        } = self;
        let ctx: &GpuContext = ctx;
        let register_stage = match &plan.register {
            Some(r) => Some(registration_for(register, r, shape)?),
            None => None,
        };
        let moment_stage = match &plan.accumulate {
            Some(a) => Some(accumulation_for(moments, a, shape)?),
            None => None,
        };
        if !ctx.fits(volume_bytes(shape)) {
            return Ok(None);
        }
        let filtered = match plan.median {
            None => None,
            Some(_) => match MedianStage::ensure(median, ctx, shape)? {
                MedianStage::Resident { filtered, .. } => Some(filtered),
                MedianStage::Tiled { .. } => return Ok(None),
            },
        };
        let register = match register_stage {
            None => None,
            Some(RegisterStage::Resident(registrar)) => {
                match ShiftStage::ensure(shift, ctx, shape)? {
                    ShiftStage::Resident { bufs, shifted, .. } => {
                        Some((&**registrar, &**bufs, shifted))
                    }
                    ShiftStage::Tiled { .. } => return Ok(None),
                }
            }
            Some(RegisterStage::Tiled(_)) => return Ok(None),
        };
        let accumulate = match moment_stage {
            None => None,
            Some(MomentStage::Resident(a)) => Some(Accumulate::Device(a)),
            Some(MomentStage::ResidentF32(a)) => Some(Accumulate::DeviceF32(a)),
            Some(MomentStage::Host(a)) => Some(Accumulate::Host(a)),
            Some(MomentStage::Tiled(_)) => return Ok(None),
        };
        Ok(Some(Fused {
            ctx,
            input: Input::ensure(input, ctx, shape)?,
            filtered,
            register,
            accumulate,
        }))
    }

    /// One frame: fused when every stage is resident, else stage by stage.
    fn frame(&mut self, raw: ArrayView3<f32>, plan: &FramePlan) -> Result<FrameOutput> {
        let mut stats = self.ahead_stats;
        let out = match self.fused(dims(&raw), plan)? {
            Some(f) => f.run(raw, plan, &mut stats)?,
            None => return frame_by_stage(self, raw, plan),
        };
        self.ahead_stats = stats;
        Ok(out)
    }

    /// How the FFT of a volume of `shape` would run on this device, per axis (e.g.
    /// `[8x8 one pass, bluestein(101 via 210) one pass, skip]`).
    pub fn fft3_route(&self, shape: [usize; 3]) -> Result<String> {
        check_shape(shape)?;
        Ok(super::fft::Fft3Plan::new(&self.ctx, shape)?.describe())
    }

    /// The 3-D FFT of `data` on the device (numpy conventions), for tests and benchmarks of the
    /// `fft.wgsl` kernel on its own.
    pub fn fft3(&mut self, data: &Array3<C32>, inverse: bool) -> Result<Array3<C32>> {
        let (a, b, c) = data.dim();
        let shape = [a, b, c];
        check_shape(shape)?;
        let ctx = &self.ctx;
        let plan = super::fft::Fft3Plan::new(ctx, shape)?;
        let std = data.as_standard_layout();
        let flat: Vec<[f32; 2]> = std.iter().map(|z| [z.re, z.im]).collect();
        let x = ctx.storage_init("fft3.data", &flat)?;
        let y = ctx.storage("fft3.tmp", flat.len() as u64 * 8)?;
        let mut rec = ctx.recorder();
        plan.record(ctx, &mut rec, &x, &y, inverse)?;
        rec.submit()?;
        let out = ctx.read::<[f32; 2]>(&x, flat.len())?;
        Array3::from_shape_vec(
            shape,
            out.into_iter().map(|[r, i]| C32::new(r, i)).collect(),
        )
        .map_err(|e| Error::Gpu(format!("readback shape: {e}")))
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        let (path, why) = &self.zscore;
        let path = match path {
            ZscorePath::F64 => "f64 on the device",
            ZscorePath::F32 => "float32 double-float on the device",
            ZscorePath::Cpu => "on the CPU",
        };
        format!("gpu: {}; z-score {path} ({why})", self.ctx.describe())
    }

    fn median3d(&mut self, vol: ArrayView3<f32>, p: &MedianParams) -> Result<Array3<f32>> {
        let shape = dims(&vol);
        let ctx = &self.ctx;
        match MedianStage::ensure(&mut self.median, ctx, shape)? {
            MedianStage::Tiled { .. } => Ok(median3d::run_tiled(ctx, vol, p)?.0),
            MedianStage::Resident { filtered, .. } => {
                let input = Input::ensure(&mut self.input, ctx, shape)?;
                input.upload(ctx, vol);
                let mut rec = ctx.recorder();
                median3d::record(ctx, &mut rec, &input.volume, filtered, shape, p)?;
                rec.submit()?;
                download(ctx, filtered, shape)
            }
        }
    }

    fn set_reference(
        &mut self,
        reference: ArrayView3<f32>,
        p: &RegisterParams,
    ) -> Result<Reference> {
        let shape = dims(&reference);
        check_shape(shape)?;
        self.register = None;
        let ctx = &self.ctx;
        let stage = if !ctx.fits(super::register::resident_bytes(shape, p)) {
            RegisterStage::Tiled(TiledRegistrar::new(ctx, &c_order(reference), shape, p)?)
        } else {
            let input = Input::ensure(&mut self.input, ctx, shape)?;
            input.upload(ctx, reference);
            RegisterStage::Resident(Box::new(GpuRegistrar::new(ctx, &input.volume, shape, p)?))
        };
        let handle = Reference::issue(shape, *p);
        self.register = Some((handle, stage));
        Ok(handle)
    }

    fn register(&mut self, reference: &Reference, vol: ArrayView3<f32>) -> Result<Registration> {
        let shape = dims(&vol);
        let ctx = &self.ctx;
        match registration_for(&mut self.register, reference, shape)? {
            RegisterStage::Tiled(r) => r.register(ctx, &c_order(vol)),
            RegisterStage::Resident(r) => {
                let input = Input::ensure(&mut self.input, ctx, shape)?;
                input.upload(ctx, vol);
                r.register(ctx, &input.volume, ctx.recorder())
            }
        }
    }

    fn shift(&mut self, vol: ArrayView3<f32>, s: [f64; 3], p: &ShiftParams) -> Result<Array3<f32>> {
        let shape = dims(&vol);
        let ctx = &self.ctx;
        match ShiftStage::ensure(&mut self.shift, ctx, shape)? {
            ShiftStage::Tiled { .. } => Ok(shift::run_tiled(ctx, vol, s, p)?.0),
            ShiftStage::Resident { bufs, shifted, .. } => {
                let input = Input::ensure(&mut self.input, ctx, shape)?;
                input.upload(ctx, vol);
                let mut rec = ctx.recorder();
                shift::record(ctx, &mut rec, bufs, &input.volume, shifted, s, p)?;
                rec.submit()?;
                download(ctx, shifted, shape)
            }
        }
    }

    fn reset_moments(&mut self, shape: [usize; 3]) -> Result<Accumulation> {
        check_shape(shape)?;
        self.moments = None;
        let stage = match self.zscore.0 {
            ZscorePath::Cpu => MomentStage::Host(host_zscore::Accumulator::new(shape)),
            ZscorePath::F64 if !self.ctx.fits(f64_bytes(shape)) => {
                MomentStage::Tiled(TiledAccumulator::new(shape))
            }
            ZscorePath::F64 => MomentStage::Resident(GpuAccumulator::new(&self.ctx, shape)?),
            // The f32 path has no tiled route: volumes over the tile limit take the CPU twin.
            ZscorePath::F32 if !self.ctx.fits(F32Accumulator::largest_buffer(shape)) => {
                MomentStage::Host(host_zscore::Accumulator::new(shape))
            }
            ZscorePath::F32 => MomentStage::ResidentF32(F32Accumulator::new(&self.ctx, shape)?),
        };
        let handle = Accumulation::issue(shape);
        self.moments = Some((handle, stage));
        Ok(handle)
    }

    fn accumulate(&mut self, acc: &Accumulation, vol: ArrayView3<f32>) -> Result<()> {
        let shape = dims(&vol);
        let ctx = &self.ctx;
        match accumulation_for(&mut self.moments, acc, shape)? {
            MomentStage::Host(a) => a.add(vol),
            MomentStage::Tiled(a) => {
                a.add(ctx, &c_order(vol))?;
            }
            MomentStage::Resident(a) => {
                let input = Input::ensure(&mut self.input, ctx, shape)?;
                input.upload(ctx, vol);
                let mut rec = ctx.recorder();
                a.record_add(ctx, &mut rec, &input.volume)?;
                rec.submit()?;
            }
            MomentStage::ResidentF32(a) => {
                let input = Input::ensure(&mut self.input, ctx, shape)?;
                input.upload(ctx, vol);
                let mut rec = ctx.recorder();
                a.record_add(ctx, &mut rec, &input.volume)?;
                rec.submit()?;
            }
        }
        Ok(())
    }

    fn moments(&mut self, acc: &Accumulation, p: &ZscoreParams) -> Result<Moments> {
        let to_array = |shape: [usize; 3], v: Vec<f64>| {
            Array3::from_shape_vec(shape, v).map_err(|e| Error::Gpu(format!("moments shape: {e}")))
        };
        let ctx = &self.ctx;
        match accumulation_for(&mut self.moments, acc, acc.shape())? {
            MomentStage::Host(a) => Ok(a.moments(p)),
            MomentStage::Tiled(a) => {
                let (mean, std) = a.finalize(ctx, p)?;
                Ok(Moments::from_f64(
                    to_array(a.shape, mean)?,
                    to_array(a.shape, std)?,
                ))
            }
            MomentStage::Resident(acc) => {
                let shape = acc.shape;
                let total = shape.iter().product::<usize>();
                let bytes = (total * 8) as u64;
                // Kept on the device for `normalize`, apart from the accumulators, which a later
                // `accumulate` or `reset_moments` changes.
                self.issued = None;
                let mean = ctx.storage("moments.mean_f64", bytes)?;
                let std = ctx.storage("moments.std_f64", bytes)?;
                let mut rec = ctx.recorder();
                acc.record_finalize(ctx, &mut rec, p, &mean, &std)?;
                rec.submit()?;
                let (mean64, std64) = ctx.read_two::<f64, f64>((&mean, total), (&std, total))?;
                let (mean64, std64) = (to_array(shape, mean64)?, to_array(shape, std64)?);
                let key = MomentsKey::new();
                let m = key.issue(mean64, std64);
                self.issued = Some(IssuedMoments { key, mean, std });
                Ok(m)
            }
            MomentStage::ResidentF32(acc) => {
                let shape = acc.shape;
                let total = shape.iter().product::<usize>();
                let bytes = (total * 8) as u64;
                self.issued = None;
                let mean = ctx.storage("moments.mean_df", bytes)?;
                let std = ctx.storage("moments.std_df", bytes)?;
                let mut rec = ctx.recorder();
                acc.record_finalize(ctx, &mut rec, p, &mean, &std)?;
                rec.submit()?;
                let widen = |v: Vec<[f32; 2]>| -> Vec<f64> {
                    v.into_iter().map(zscore_f32::df_to_f64).collect()
                };
                let (mean_df, std_df) = ctx.read_two((&mean, total), (&std, total))?;
                let mean64 = to_array(shape, widen(mean_df))?;
                let std64 = to_array(shape, widen(std_df))?;
                let key = MomentsKey::new();
                let m = key.issue(mean64, std64);
                self.issued = Some(IssuedMoments { key, mean, std });
                Ok(m)
            }
        }
    }

    fn normalize(
        &mut self,
        vol: ArrayView3<f32>,
        m: &Moments,
        p: &ZscoreParams,
    ) -> Result<Array3<f32>> {
        let shape = dims(&vol);
        if m.mean64().shape() != &shape[..] || m.std64().shape() != &shape[..] {
            return Err(Error::Data(format!(
                "volume shape {shape:?} differs from the moments' {:?}",
                m.mean64().shape()
            )));
        }
        let ctx = &self.ctx;
        let path = self.zscore.0;
        if path == ZscorePath::Cpu
            || (path == ZscorePath::F32 && !ctx.fits(F32Accumulator::largest_buffer(shape)))
        {
            return Ok(host_zscore::normalize(vol, m, p));
        }
        if !ctx.fits(f64_bytes(shape)) {
            let (mean, std) = (c_order(m.mean64().view()), c_order(m.std64().view()));
            let z = zscore::normalize_tiled(ctx, p, &c_order(vol), &mean, &std)?;
            return Array3::from_shape_vec(shape, z)
                .map_err(|e| Error::Gpu(format!("normalize shape: {e}")));
        }
        let input = Input::ensure(&mut self.input, ctx, shape)?;
        input.upload(ctx, vol);
        let given;
        let (mean, std) = match &self.issued {
            // Computed here and still on the device: upload only the volume.
            Some(i) if i.key.issued(m) => (&i.mean, &i.std),
            // Moments made elsewhere (tests, or an earlier computation): uploaded per call, as
            // double-floats on the f32 path.
            _ if path == ZscorePath::F32 => {
                let df = |a: &Array3<f64>| -> Vec<[f32; 2]> {
                    a.iter().map(|&v| zscore_f32::df_from_f64(v)).collect()
                };
                given = (
                    ctx.storage_init("moments.given_mean", &df(m.mean64())[..])?,
                    ctx.storage_init("moments.given_std", &df(m.std64())[..])?,
                );
                (&given.0, &given.1)
            }
            _ => {
                let (mean, std) = (c_order(m.mean64().view()), c_order(m.std64().view()));
                given = (
                    ctx.storage_init("moments.given_mean", &mean[..])?,
                    ctx.storage_init("moments.given_std", &std[..])?,
                );
                (&given.0, &given.1)
            }
        };
        let out = match &mut self.normalize {
            Some(n) if n.shape == shape => n,
            slot => slot.insert(NormalizeBuffers {
                shape,
                zscores: ctx.storage("normalize.zscores", volume_bytes(shape))?,
            }),
        };
        let mut rec = ctx.recorder();
        let total = shape.iter().product();
        let record = if path == ZscorePath::F32 {
            zscore_f32::record_normalize
        } else {
            zscore::record_normalize
        };
        record(
            ctx,
            &mut rec,
            total,
            p,
            &input.volume,
            mean,
            std,
            &out.zscores,
        )?;
        rec.submit()?;
        download(ctx, &out.zscores, shape)
    }

    /// Upload once; median → register → shift → accumulate on the device; read back once.
    fn process_frame(&mut self, raw: ArrayView3<f32>, plan: &FramePlan) -> Result<FrameOutput> {
        self.frame(raw, plan)
    }

    /// It does on the fused route: `process_stream` stages the next volume's upload.
    fn streams_ahead(&self) -> bool {
        true
    }

    /// `process_frame` of each volume. On the fused route (`Fused::stream`) the next volume is
    /// taken from `frames` before the current one computes, its upload staged meanwhile (one more
    /// volume held), and its median and registration submitted before the current frame's
    /// readback is waited for; on the tiled route volumes are taken one at a time.
    fn process_stream(
        &mut self,
        plan: &FramePlan,
        frames: &mut dyn Iterator<Item = Result<Array3<f32>>>,
        emit: &mut dyn FnMut(FrameOutput) -> Result<()>,
    ) -> Result<()> {
        let mut current = match frames.next() {
            Some(v) => v?,
            None => return Ok(()),
        };
        loop {
            let mut stats = self.ahead_stats;
            let rest = match self.fused(dims(&current.view()), plan)? {
                Some(f) => f.stream(current, frames, emit, plan, &mut stats),
                None => {
                    let out = frame_by_stage(self, current.view(), plan)?;
                    // Freed before `emit`, which may wait on a full write queue.
                    drop(current);
                    emit(out)?;
                    frames.next().transpose()
                }
            };
            self.ahead_stats = stats;
            match rest? {
                Some(v) => current = v,
                None => return Ok(()),
            }
        }
    }
}
