//! `GpuBackend`: the `Backend` on a wgpu device.

use super::device::{Api, GpuContext};
use super::register::GpuRegistrar;
use super::shift::ShiftBuffers;
use super::zscore::GpuAccumulator;
use super::{median3d, shift, zscore};
use crate::backend::{Backend, FrameOutput, FramePlan, Moments};
use crate::cpu;
use crate::error::{Error, Result};
use crate::params::{MedianParams, RegisterParams, Registration, ShiftParams, ZscoreParams};
use ndarray::{Array3, ArrayView3};

/// Resident per-shape volume buffers, reused across timepoints.
struct Frame {
    shape: [usize; 3],
    raw: wgpu::Buffer,
    filtered: wgpu::Buffer,
    shifted: wgpu::Buffer,
    shift: ShiftBuffers,
}

impl Frame {
    fn new(ctx: &GpuContext, shape: [usize; 3]) -> Result<Frame> {
        let bytes = shape.iter().product::<usize>() as u64 * 4;
        Ok(Frame {
            shape,
            raw: ctx.storage("frame.raw", bytes)?,
            filtered: ctx.storage("frame.filtered", bytes)?,
            shifted: ctx.storage("frame.shifted", bytes)?,
            shift: ShiftBuffers::new(ctx, shape)?,
        })
    }
}

enum MomentState {
    Gpu(GpuAccumulator),
    /// Fallback when the device has no SHADER_F64.
    Cpu(cpu::zscore::Accumulator),
}

/// The GPU backend. Every stage runs on the device (see `describe`), except the z-score (accumulation
/// and normalization) on devices without 64-bit floats (e.g. wgpu's GL backend), which runs on the
/// CPU twin.
pub struct GpuBackend {
    ctx: GpuContext,
    frame: Option<Frame>,
    registrar: Option<GpuRegistrar>,
    moments: Option<MomentState>,
    /// Device copies of the last moments this backend computed (`Moments::id`, mean, std), so
    /// the normalize pass uploads only the volume.
    resident_moments: Option<(u64, wgpu::Buffer, wgpu::Buffer)>,
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
        })
    }

    /// A reference is set and has the volume's shape.
    fn check_reference_shape(&self, shape: [usize; 3]) -> Result<()> {
        let rshape = self
            .registrar
            .as_ref()
            .ok_or_else(|| Error::Data("register called before set_reference".into()))?
            .shape;
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
            Some(MomentState::Gpu(a)) if a.shape != shape => Err(Error::Data(format!(
                "volume shape {shape:?} differs from the accumulator's {:?}",
                a.shape
            ))),
            _ => Ok(()),
        }
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
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
        p.check_shape(shape)?;
        self.upload(vol)?;
        let f = self.frame.as_ref().unwrap();
        let mut rec = self.ctx.recorder();
        median3d::record(&self.ctx, &mut rec, &f.raw, &f.filtered, shape, p)?;
        rec.submit()?;
        self.download(&f.filtered, shape)
    }

    fn set_reference(&mut self, reference: ArrayView3<f32>, p: &RegisterParams) -> Result<()> {
        let shape = dims(&reference);
        self.upload(reference)?;
        let f = self.frame.as_ref().unwrap();
        self.registrar = Some(GpuRegistrar::new(&self.ctx, &f.raw, shape, p)?);
        Ok(())
    }

    fn register(&mut self, vol: ArrayView3<f32>) -> Result<Registration> {
        let shape = dims(&vol);
        self.check_reference_shape(shape)?;
        self.upload(vol)?;
        let f = self.frame.as_ref().unwrap();
        self.registrar
            .as_mut()
            .unwrap()
            .register(&self.ctx, &f.raw, None)
    }

    fn shift(&mut self, vol: ArrayView3<f32>, s: [f64; 3], p: &ShiftParams) -> Result<Array3<f32>> {
        let shape = dims(&vol);
        self.upload(vol)?;
        let f = self.frame.as_ref().unwrap();
        let mut rec = self.ctx.recorder();
        shift::record(&self.ctx, &mut rec, &f.shift, &f.raw, &f.shifted, s, p)?;
        rec.submit()?;
        self.download(&f.shifted, shape)
    }

    fn reset_moments(&mut self, shape: [usize; 3]) -> Result<()> {
        check_shape(shape)?;
        self.moments = Some(if self.ctx.has_f64() {
            MomentState::Gpu(GpuAccumulator::new(&self.ctx, shape)?)
        } else {
            MomentState::Cpu(cpu::zscore::Accumulator::new(shape))
        });
        Ok(())
    }

    fn accumulate(&mut self, vol: ArrayView3<f32>) -> Result<()> {
        let shape = dims(&vol);
        self.check_accumulator_shape(shape)?;
        if let Some(MomentState::Cpu(a)) = self.moments.as_mut() {
            a.add(vol);
            return Ok(());
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
        let acc = match self.moments.as_ref() {
            None => return Err(Error::Data("moments called before reset_moments".into())),
            Some(MomentState::Cpu(a)) => return Ok(a.moments(p)),
            Some(MomentState::Gpu(a)) => a,
        };
        let shape = acc.shape;
        self.frame(shape)?;
        let f = self.frame.as_ref().unwrap();
        let Some(MomentState::Gpu(acc)) = self.moments.as_ref() else {
            unreachable!()
        };
        let mut rec = self.ctx.recorder();
        acc.record_finalize(&self.ctx, &mut rec, p, &f.filtered, &f.shifted)?;
        let bytes = (shape.iter().product::<usize>() * 4) as u64;
        let keep_mean = self.ctx.storage("gpuprep.moments.mean", bytes)?;
        let keep_std = self.ctx.storage("gpuprep.moments.std", bytes)?;
        rec.copy(&f.filtered, &keep_mean, bytes);
        rec.copy(&f.shifted, &keep_std, bytes);
        rec.submit()?;
        let mean = self.download(&f.filtered, shape)?;
        let std = self.download(&f.shifted, shape)?;
        let id = Moments::next_id();
        self.resident_moments = Some((id, keep_mean, keep_std));
        let constant_voxels = mean
            .iter()
            .zip(std.iter())
            .filter(|(&m, &s)| cpu::zscore::is_constant(m, s))
            .count();
        Ok(Moments {
            mean,
            std,
            constant_voxels,
            id,
        })
    }

    fn normalize(
        &mut self,
        vol: ArrayView3<f32>,
        m: &Moments,
        p: &ZscoreParams,
    ) -> Result<Array3<f32>> {
        let shape = dims(&vol);
        if m.mean.shape() != &shape[..] || m.std.shape() != &shape[..] {
            return Err(Error::Data(format!(
                "volume shape {shape:?} differs from the moments' {:?}",
                m.mean.shape()
            )));
        }
        if !self.ctx.has_f64() {
            // zscore.wgsl needs f64 (see `describe`).
            return Ok(cpu::zscore::normalize(vol, m, p));
        }
        self.upload(vol)?;
        let f = self.frame.as_ref().unwrap();
        let (mean_buf, std_buf) = match &self.resident_moments {
            // Computed here and still on the device: upload only the volume.
            Some((id, mean, std)) if m.id != 0 && *id == m.id => (mean, std),
            _ => {
                let mean = m.mean.as_standard_layout();
                let std = m.std.as_standard_layout();
                self.ctx.queue.write_buffer(
                    &f.filtered,
                    0,
                    bytemuck::cast_slice(mean.as_slice().unwrap()),
                );
                self.ctx.queue.write_buffer(
                    &f.shift.tmp[0],
                    0,
                    bytemuck::cast_slice(std.as_slice().unwrap()),
                );
                (&f.filtered, &f.shift.tmp[0])
            }
        };
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
        let shape = dims(&raw);
        if let Some(m) = &plan.median {
            m.check_shape(shape)?;
        }
        if plan.register.is_some() {
            self.check_reference_shape(shape)?;
        }
        if plan.accumulate {
            self.check_accumulator_shape(shape)?;
        }
        self.upload(raw)?;
        let ctx = &self.ctx;
        let f = self.frame.as_ref().unwrap();
        let mut rec = ctx.recorder();
        let current = match &plan.median {
            Some(m) => {
                median3d::record(ctx, &mut rec, &f.raw, &f.filtered, shape, m)?;
                &f.filtered
            }
            None => &f.raw,
        };
        let registration = match plan.register {
            Some(_) => {
                let target = if plan.register_on_raw {
                    &f.raw
                } else {
                    current
                };
                // The registrar appends its work to `rec` and submits it: one submission for the
                // median and the registration, then the peak is read back.
                let r = self
                    .registrar
                    .as_mut()
                    .unwrap()
                    .register(ctx, target, Some(rec))?;
                rec = ctx.recorder();
                Some(r)
            }
            None => None,
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
        Ok(FrameOutput {
            volume,
            filtered,
            registration,
        })
    }
}

impl GpuBackend {
    /// The 3-D FFT of `data` on the device (numpy conventions), for tests and benchmarks of the
    /// `fft.wgsl` kernel on its own.
    pub fn fft3(
        &mut self,
        data: &Array3<cpu::fft::C32>,
        inverse: bool,
    ) -> Result<Array3<cpu::fft::C32>> {
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
            out.into_iter()
                .map(|[r, i]| cpu::fft::C32::new(r, i))
                .collect(),
        )
        .map_err(|e| Error::Gpu(format!("readback shape: {e}")))
    }
}
