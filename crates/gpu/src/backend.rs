//! `GpuBackend`: the `Backend` on a wgpu device.
//!
//! Each stage runs resident (the volume's buffers on the device, `process_frame` uploading once)
//! when its largest buffer fits the tile limit (`GpuContext::max_tile_bytes`, one storage binding
//! by default): the f32 volume (4 bytes a voxel) for the median, shift and normalization, the
//! complex spectrum (8) for registration, the f64 accumulators (8 each) for the z-score. Larger
//! volumes take each stage's tiled route (slabs or element ranges, see the kernels' `run_tiled`),
//! stage by stage, with the volume on the host between stages.
//!
//! `process_frame_ahead` stages the next volume's upload into a second input buffer (see
//! `ahead`) right after the frame's first submission, while the GPU computes; the next call that
//! brings a volume with that sequence number swaps the two inputs instead of uploading. Only the
//! fused resident route stages: the tiled route has no single device input, so it ignores `next`.

use super::ahead::AheadUpload;
use super::device::{Api, GpuContext, TileStats};
use super::register::{GpuRegistrar, TiledRegistrar};
use super::shift::ShiftBuffers;
use super::zscore::{GpuAccumulator, TiledAccumulator};
use super::{median3d, shift, zscore};
use gpuprep_core::backend::{Backend, FrameOutput, FramePlan, Moments, SeqVolume};
use gpuprep_core::complex::C32;
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::{MedianParams, RegisterParams, Registration, ShiftParams, ZscoreParams};
use gpuprep_core::zscore as host_zscore;
use ndarray::{Array3, ArrayView3};

/// Resident per-shape volume buffers, reused across timepoints.
struct Frame {
    shape: [usize; 3],
    /// The input volume. Swapped with `ahead.input` when a frame finds its volume staged there,
    /// so the two alternate as frames go by.
    raw: wgpu::Buffer,
    filtered: wgpu::Buffer,
    shifted: wgpu::Buffer,
    shift: ShiftBuffers,
    /// Made by the first `process_frame_ahead` with a `next`: one more volume on the device.
    ahead: Option<AheadUpload>,
}

impl Frame {
    fn new(ctx: &GpuContext, shape: [usize; 3]) -> Result<Frame> {
        let bytes = shape.iter().product::<usize>() as u64 * 4;
        Ok(Frame {
            shape,
            raw: ctx.storage("frame.input_a", bytes)?,
            filtered: ctx.storage("frame.filtered", bytes)?,
            shifted: ctx.storage("frame.shifted", bytes)?,
            shift: ShiftBuffers::new(ctx, shape)?,
            ahead: None,
        })
    }
}

/// The volume staged in `Frame::ahead`, by sequence number (`SeqVolume`).
#[derive(Clone, Copy, Debug)]
struct Staged {
    seq: u64,
    shape: [usize; 3],
}

/// How `process_frame` and `process_frame_ahead` got their volumes onto the device (tests assert
/// that staged uploads were really used).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AheadStats {
    /// Volumes staged while an earlier frame computed.
    pub staged: usize,
    /// Frames (fused resident route) that found their volume staged and skipped its upload.
    pub frames_prestaged: usize,
    /// Frames (fused resident route) that uploaded their volume: nothing staged, or another volume.
    pub frames_uploaded: usize,
}

enum RegisterState {
    Gpu(Box<GpuRegistrar>),
    Tiled(TiledRegistrar),
}

impl RegisterState {
    fn shape(&self) -> [usize; 3] {
        match self {
            RegisterState::Gpu(r) => r.shape,
            RegisterState::Tiled(r) => r.shape,
        }
    }
}

enum MomentState {
    Gpu(GpuAccumulator),
    /// Accumulators over the tile limit: on the host, updated on the device chunk by chunk.
    Tiled(TiledAccumulator),
    /// Fallback when the device has no SHADER_F64.
    Cpu(host_zscore::Accumulator),
}

/// The GPU backend. Every stage runs on the device (see `describe`), except the z-score (accumulation
/// and normalization) on devices without 64-bit floats (e.g. wgpu's GL backend), which runs on the
/// CPU twin.
pub struct GpuBackend {
    ctx: GpuContext,
    frame: Option<Frame>,
    registrar: Option<RegisterState>,
    moments: Option<MomentState>,
    /// Device copies of the last moments this backend computed (`Moments::id`, f64 mean, f64 std),
    /// so the normalize pass uploads only the volume.
    resident_moments: Option<(u64, wgpu::Buffer, wgpu::Buffer)>,
    /// What `Frame::ahead.input` holds for the next frame call, if anything. Every frame call
    /// consumes it (uses it or lets it go); kernel-level calls leave it alone, as they only write
    /// `Frame::raw`.
    staged: Option<Staged>,
    ahead_stats: AheadStats,
}

fn dims(v: &ArrayView3<f32>) -> [usize; 3] {
    let (a, b, c) = v.dim();
    [a, b, c]
}

fn check_shape(shape: [usize; 3]) -> Result<()> {
    let total = shape.iter().product::<usize>();
    if total == 0 {
        return Err(Error::Data(format!("empty volume {shape:?}")));
    }
    if total > u32::MAX as usize / 2 {
        return Err(Error::Gpu(format!(
            "volume {shape:?} has more voxels than the GPU kernels index"
        )));
    }
    Ok(())
}

impl GpuBackend {
    /// Open the first adapter of `api`; `Error::Gpu("no GPU adapter found (backend …)")` when none.
    pub fn new(api: Api) -> Result<GpuBackend> {
        Ok(GpuBackend {
            ctx: GpuContext::new(api)?,
            frame: None,
            registrar: None,
            moments: None,
            resident_moments: None,
            staged: None,
            ahead_stats: AheadStats::default(),
        })
    }

    /// Counts of staged and uploaded frame volumes since the backend was made.
    pub fn ahead_stats(&self) -> AheadStats {
        self.ahead_stats
    }

    /// A reference is set and has the volume's shape.
    fn check_reference_shape(&self, shape: [usize; 3]) -> Result<()> {
        let rshape = self
            .registrar
            .as_ref()
            .ok_or_else(|| Error::Data("register called before set_reference".into()))?
            .shape();
        if rshape != shape {
            return Err(Error::Data(format!(
                "volume shape {shape:?} differs from the reference's {rshape:?}"
            )));
        }
        Ok(())
    }

    fn check_accumulator_shape(&self, shape: [usize; 3]) -> Result<()> {
        match self.moments.as_ref() {
            None => Err(Error::Data("accumulate called before reset_moments".into())),
            Some(MomentState::Gpu(GpuAccumulator { shape: s, .. }))
            | Some(MomentState::Tiled(TiledAccumulator { shape: s, .. }))
                if *s != shape =>
            {
                Err(Error::Data(format!(
                    "volume shape {shape:?} differs from the accumulator's {s:?}"
                )))
            }
            _ => Ok(()),
        }
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Lower the tile limit (bytes of the largest buffer a stage may use before it tiles); tests
    /// force tiny tiles with it. Takes effect for references and accumulations set after it.
    pub fn set_max_tile_bytes(&mut self, bytes: u64) {
        self.ctx.set_max_tile_bytes(bytes);
    }

    /// Tiles run so far per kernel (zero while every volume fits).
    pub fn tile_stats(&self) -> TileStats {
        self.ctx.tile_stats()
    }

    /// Whether `shape`'s buffers of `bytes_per_voxel` fit the tile limit (resident route).
    fn fits(&self, shape: [usize; 3], bytes_per_voxel: u64) -> bool {
        self.ctx
            .fits(shape.iter().product::<usize>() as u64 * bytes_per_voxel)
    }

    /// Whether the shift of `shape` runs resident.
    fn shift_fits(&self, shape: [usize; 3], p: &ShiftParams) -> bool {
        self.ctx.fits(shift::resident_bytes(shape, p))
    }

    /// Whether every stage of `plan` runs resident for `shape` (`process_frame`'s fused route).
    fn frame_fits(&self, shape: [usize; 3], plan: &FramePlan) -> bool {
        self.fits(shape, 4)
            && (plan.register.is_none()
                || (matches!(self.registrar, Some(RegisterState::Gpu(_)))
                    && self.shift_fits(shape, &plan.shift)))
            && (!plan.accumulate || !matches!(self.moments, Some(MomentState::Tiled(_))))
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

    fn frame(&mut self, shape: [usize; 3]) -> Result<&Frame> {
        check_shape(shape)?;
        if self.frame.as_ref().map(|f| f.shape) != Some(shape) {
            self.frame = None;
            self.staged = None;
            self.frame = Some(Frame::new(&self.ctx, shape)?);
        }
        Ok(self.frame.as_ref().unwrap())
    }

    fn upload(&mut self, vol: ArrayView3<f32>) -> Result<()> {
        let shape = dims(&vol);
        self.frame(shape)?;
        let f = self.frame.as_ref().unwrap();
        let std = vol.as_standard_layout();
        self.ctx
            .queue
            .write_buffer(&f.raw, 0, bytemuck::cast_slice(std.as_slice().unwrap()));
        Ok(())
    }

    fn download(&self, buf: &wgpu::Buffer, shape: [usize; 3]) -> Result<Array3<f32>> {
        let v = self.ctx.read::<f32>(buf, shape.iter().product())?;
        Array3::from_shape_vec(shape, v).map_err(|e| Error::Gpu(format!("readback shape: {e}")))
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        let mut s = format!("gpu: {}", self.ctx.describe());
        if !self.ctx.has_f64() {
            s.push_str(
                "; z-score (accumulation and normalization) on CPU: device lacks SHADER_F64",
            );
        }
        s
    }

    fn median3d(&mut self, vol: ArrayView3<f32>, p: &MedianParams) -> Result<Array3<f32>> {
        let shape = dims(&vol);
        check_shape(shape)?;
        if !self.fits(shape, 4) {
            return Ok(median3d::run_tiled(&self.ctx, vol, p)?.0);
        }
        self.upload(vol)?;
        let f = self.frame.as_ref().unwrap();
        let mut rec = self.ctx.recorder();
        median3d::record(&self.ctx, &mut rec, &f.raw, &f.filtered, shape, p)?;
        rec.submit()?;
        self.download(&f.filtered, shape)
    }

    fn set_reference(&mut self, reference: ArrayView3<f32>, p: &RegisterParams) -> Result<()> {
        let shape = dims(&reference);
        check_shape(shape)?;
        self.registrar = None;
        if !self.ctx.fits(super::register::resident_bytes(shape, p)) {
            let std = reference.as_standard_layout();
            let r = TiledRegistrar::new(&self.ctx, std.as_slice().unwrap(), shape, p)?;
            self.registrar = Some(RegisterState::Tiled(r));
            return Ok(());
        }
        self.upload(reference)?;
        let f = self.frame.as_ref().unwrap();
        self.registrar = Some(RegisterState::Gpu(Box::new(GpuRegistrar::new(
            &self.ctx, &f.raw, shape, p,
        )?)));
        Ok(())
    }

    fn register(&mut self, vol: ArrayView3<f32>) -> Result<Registration> {
        let shape = dims(&vol);
        self.check_reference_shape(shape)?;
        if let Some(RegisterState::Tiled(r)) = self.registrar.as_mut() {
            let std = vol.as_standard_layout();
            return r.register(&self.ctx, std.as_slice().unwrap());
        }
        self.upload(vol)?;
        let f = self.frame.as_ref().unwrap();
        let Some(RegisterState::Gpu(r)) = self.registrar.as_mut() else {
            unreachable!("checked by check_reference_shape")
        };
        r.register(&self.ctx, &f.raw, None)
    }

    fn shift(&mut self, vol: ArrayView3<f32>, s: [f64; 3], p: &ShiftParams) -> Result<Array3<f32>> {
        let shape = dims(&vol);
        check_shape(shape)?;
        if !self.shift_fits(shape, p) {
            return Ok(shift::run_tiled(&self.ctx, vol, s, p)?.0);
        }
        self.upload(vol)?;
        let f = self.frame.as_ref().unwrap();
        let mut rec = self.ctx.recorder();
        shift::record(&self.ctx, &mut rec, &f.shift, &f.raw, &f.shifted, s, p)?;
        rec.submit()?;
        self.download(&f.shifted, shape)
    }

    fn reset_moments(&mut self, shape: [usize; 3]) -> Result<()> {
        check_shape(shape)?;
        self.moments = None;
        self.moments = Some(if !self.ctx.has_f64() {
            MomentState::Cpu(host_zscore::Accumulator::new(shape))
        } else if !self.fits(shape, 8) {
            MomentState::Tiled(TiledAccumulator::new(shape))
        } else {
            MomentState::Gpu(GpuAccumulator::new(&self.ctx, shape)?)
        });
        Ok(())
    }

    fn accumulate(&mut self, vol: ArrayView3<f32>) -> Result<()> {
        let shape = dims(&vol);
        self.check_accumulator_shape(shape)?;
        match self.moments.as_mut() {
            Some(MomentState::Cpu(a)) => {
                a.add(vol);
                return Ok(());
            }
            Some(MomentState::Tiled(a)) => {
                let std = vol.as_standard_layout();
                a.add(&self.ctx, std.as_slice().unwrap())?;
                return Ok(());
            }
            _ => {}
        }
        self.upload(vol)?;
        let f = self.frame.as_ref().unwrap();
        let Some(MomentState::Gpu(acc)) = self.moments.as_mut() else {
            unreachable!()
        };
        let mut rec = self.ctx.recorder();
        acc.record_add(&self.ctx, &mut rec, &f.raw)?;
        rec.submit()?;
        Ok(())
    }

    fn moments(&mut self, p: &ZscoreParams) -> Result<Moments> {
        let to_array = |shape: [usize; 3], v: Vec<f64>| {
            Array3::from_shape_vec(shape, v).map_err(|e| Error::Gpu(format!("moments shape: {e}")))
        };
        let acc = match self.moments.as_ref() {
            None => return Err(Error::Data("moments called before reset_moments".into())),
            Some(MomentState::Cpu(a)) => return Ok(a.moments(p)),
            Some(MomentState::Tiled(a)) => {
                let (mean, std) = a.finalize(&self.ctx, p)?;
                let shape = a.shape;
                return Ok(Moments::from_f64(
                    to_array(shape, mean)?,
                    to_array(shape, std)?,
                    Moments::next_id(),
                ));
            }
            Some(MomentState::Gpu(a)) => a,
        };
        let shape = acc.shape;
        let total = shape.iter().product::<usize>();
        let bytes = (total * 8) as u64;
        // Kept on the device for `normalize` (`Moments::id`), apart from the accumulators, which a
        // later `accumulate` or `reset_moments` changes.
        let keep_mean = self.ctx.storage("gpuprep.moments.mean_f64", bytes)?;
        let keep_std = self.ctx.storage("gpuprep.moments.std_f64", bytes)?;
        let mut rec = self.ctx.recorder();
        acc.record_finalize(&self.ctx, &mut rec, p, &keep_mean, &keep_std)?;
        rec.submit()?;
        let mean = to_array(shape, self.ctx.read::<f64>(&keep_mean, total)?)?;
        let std = to_array(shape, self.ctx.read::<f64>(&keep_std, total)?)?;
        let id = Moments::next_id();
        self.resident_moments = Some((id, keep_mean, keep_std));
        Ok(Moments::from_f64(mean, std, id))
    }

    fn normalize(
        &mut self,
        vol: ArrayView3<f32>,
        m: &Moments,
        p: &ZscoreParams,
    ) -> Result<Array3<f32>> {
        let shape = dims(&vol);
        if m.mean64.shape() != &shape[..] || m.std64.shape() != &shape[..] {
            return Err(Error::Data(format!(
                "volume shape {shape:?} differs from the moments' {:?}",
                m.mean64.shape()
            )));
        }
        if !self.ctx.has_f64() {
            // zscore.wgsl needs f64 (see `describe`).
            return Ok(host_zscore::normalize(vol, m, p));
        }
        if !self.fits(shape, 8) {
            let (v, mean, std) = (
                vol.as_standard_layout(),
                m.mean64.as_standard_layout(),
                m.std64.as_standard_layout(),
            );
            let z = zscore::normalize_tiled(
                &self.ctx,
                p,
                v.as_slice().unwrap(),
                mean.as_slice().unwrap(),
                std.as_slice().unwrap(),
            )?;
            return Array3::from_shape_vec(shape, z)
                .map_err(|e| Error::Gpu(format!("normalize shape: {e}")));
        }
        self.upload(vol)?;
        let given;
        let (mean_buf, std_buf) = match &self.resident_moments {
            // Computed here and still on the device: upload only the volume.
            Some((id, mean, std)) if m.id != 0 && *id == m.id => (mean, std),
            _ => {
                // Moments made elsewhere (tests, or an earlier computation): uploaded per call.
                let mean = m.mean64.as_standard_layout();
                let std = m.std64.as_standard_layout();
                given = (
                    self.ctx
                        .storage_init("gpuprep.moments.given_mean", mean.as_slice().unwrap())?,
                    self.ctx
                        .storage_init("gpuprep.moments.given_std", std.as_slice().unwrap())?,
                );
                (&given.0, &given.1)
            }
        };
        let f = self.frame.as_ref().unwrap();
        let mut rec = self.ctx.recorder();
        let total = shape.iter().product();
        zscore::record_normalize(
            &self.ctx, &mut rec, total, p, &f.raw, mean_buf, std_buf, &f.shifted,
        )?;
        rec.submit()?;
        self.download(&f.shifted, shape)
    }

    /// Upload once; median → register → shift → accumulate on the device; read back once.
    fn process_frame(&mut self, raw: ArrayView3<f32>, plan: &FramePlan) -> Result<FrameOutput> {
        self.frame_with_lookahead(raw, None, None, plan)
    }

    /// The fused resident route stages the next volume; the tiled route ignores it.
    fn stages_ahead(&self, shape: [usize; 3], plan: &FramePlan) -> bool {
        self.frame_fits(shape, plan)
    }

    fn process_frame_ahead(
        &mut self,
        raw: SeqVolume<'_>,
        next: Option<SeqVolume<'_>>,
        plan: &FramePlan,
    ) -> Result<FrameOutput> {
        self.frame_with_lookahead(raw.vol, Some(raw.seq), next, plan)
    }
}

impl GpuBackend {
    /// The fused frame: `raw` (sequence number `seq`, if any) uploaded unless it was staged,
    /// `next` staged after the first submission.
    fn frame_with_lookahead(
        &mut self,
        raw: ArrayView3<f32>,
        seq: Option<u64>,
        next: Option<SeqVolume<'_>>,
        plan: &FramePlan,
    ) -> Result<FrameOutput> {
        let shape = dims(&raw);
        if plan.register.is_some() {
            self.check_reference_shape(shape)?;
        }
        if plan.accumulate {
            self.check_accumulator_shape(shape)?;
        }
        check_shape(shape)?;
        let staged = self.staged.take();
        if !self.frame_fits(shape, plan) {
            return gpuprep_core::backend::frame_by_stage(self, raw, plan);
        }
        self.frame(shape)?;
        let f = self.frame.as_mut().unwrap();
        match (staged, &mut f.ahead) {
            (Some(s), Some(ahead)) if seq == Some(s.seq) && s.shape == shape => {
                // The staging copy was submitted before anything this frame submits, so the queue
                // runs it first.
                std::mem::swap(&mut f.raw, &mut ahead.input);
                self.ahead_stats.frames_prestaged += 1;
            }
            _ => {
                self.upload(raw)?;
                self.ahead_stats.frames_uploaded += 1;
            }
        }
        let next = next.filter(|n| dims(&n.vol) == shape);
        let f = self.frame.as_mut().unwrap();
        if next.is_some() && f.ahead.is_none() {
            f.ahead = Some(AheadUpload::new(&self.ctx, shape.iter().product())?);
        }
        let ctx = &self.ctx;
        let f = self.frame.as_ref().unwrap();
        // Called right after the frame's first submission, so the host copy overlaps that GPU work;
        // returns the sequence number it staged.
        let stage_next = || -> Result<Option<u64>> {
            match (next, &f.ahead) {
                (Some(n), Some(ahead)) => {
                    let std = n.vol.as_standard_layout();
                    ahead.stage(ctx, std.as_slice().unwrap())?;
                    Ok(Some(n.seq))
                }
                _ => Ok(None),
            }
        };
        let mut rec = ctx.recorder();
        let current = match &plan.median {
            Some(m) => {
                median3d::record(ctx, &mut rec, &f.raw, &f.filtered, shape, m)?;
                &f.filtered
            }
            None => &f.raw,
        };
        let mut staged_seq = None;
        let (registration, mut rec, stage_later) = match plan.register {
            Some(_) => {
                let target = if plan.register_on_raw {
                    &f.raw
                } else {
                    current
                };
                // The registrar appends its work to `rec` and submits it: one submission for the
                // median and the registration (most of the frame's GPU time), then the peak is
                // read back; the next volume is staged in between.
                let Some(RegisterState::Gpu(registrar)) = self.registrar.as_mut() else {
                    unreachable!("checked by frame_fits")
                };
                let (r, s) = registrar.register_then(ctx, target, Some(rec), stage_next)?;
                staged_seq = s;
                (Some(r), ctx.recorder(), None)
            }
            None => (None, rec, Some(stage_next)),
        };
        let volume_buf = match &registration {
            Some(r) => {
                shift::record(
                    ctx,
                    &mut rec,
                    &f.shift,
                    current,
                    &f.shifted,
                    r.shift,
                    &plan.shift,
                )?;
                &f.shifted
            }
            None => current,
        };
        let mut cpu_acc = false;
        if plan.accumulate {
            match self.moments.as_mut() {
                Some(MomentState::Gpu(acc)) => acc.record_add(ctx, &mut rec, volume_buf)?,
                _ => cpu_acc = true,
            }
        }
        rec.submit()?;
        if let Some(stage) = stage_later {
            staged_seq = stage()?;
        }
        let volume = self.download(volume_buf, shape)?;
        if cpu_acc {
            if let Some(MomentState::Cpu(a)) = self.moments.as_mut() {
                a.add(volume.view());
            }
        }
        let filtered = if plan.keep_filtered && plan.median.is_some() {
            Some(if registration.is_some() {
                self.download(&f.filtered, shape)?
            } else {
                volume.clone()
            })
        } else {
            None
        };
        if let Some(seq) = staged_seq {
            self.staged = Some(Staged { seq, shape });
            self.ahead_stats.staged += 1;
        }
        Ok(FrameOutput {
            volume,
            filtered,
            registration,
        })
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
