//! The fused route: one upload, median → register → shift → accumulate on the device, one readback,
//! the next volume staged between the registration's submit and resolve.

use super::*;

/// Where the fused route adds a frame's final volume to the z-score.
pub(super) enum Accumulate<'a> {
    Device(&'a mut GpuAccumulator),
    /// On the device, the float32 path.
    DeviceF32(&'a mut F32Accumulator),
    /// On the CPU twin, after the readback.
    Host(&'a mut host_zscore::Accumulator),
}

/// The fused route's buffers for one frame: given only when every stage of the plan is resident,
/// so the frame cannot meet a tiled stage halfway.
pub(super) struct Fused<'a> {
    pub(super) ctx: &'a GpuContext,
    pub(super) input: &'a mut Input,
    /// The median's output, when filtering.
    pub(super) filtered: Option<&'a wgpu::Buffer>,
    /// The registrar, the shift's buffers and its output, when registering.
    pub(super) register: Option<(&'a GpuRegistrar, &'a ShiftBuffers, &'a wgpu::Buffer)>,
    pub(super) accumulate: Option<Accumulate<'a>>,
}

/// A fused frame's result, and whether it staged the next volume into `Input::ahead`.
pub(super) struct FusedOutput {
    pub(super) out: FrameOutput,
    pub(super) staged: bool,
}

impl Fused<'_> {
    /// The frame of `raw` (already in `Input::ahead` when `prestaged`), staging `next` after the
    /// first submission when it has `raw`'s shape.
    pub(super) fn run(
        self,
        raw: ArrayView3<f32>,
        prestaged: bool,
        next: Option<ArrayView3<f32>>,
        plan: &FramePlan,
        stats: &mut AheadStats,
    ) -> Result<FusedOutput> {
        let Fused {
            ctx,
            input,
            filtered,
            register,
            accumulate,
        } = self;
        let shape = input.shape;
        match (&mut input.ahead, prestaged) {
            (Some(ahead), true) => {
                // The staging copy was submitted before anything this frame submits, so the queue
                // runs it first.
                std::mem::swap(&mut input.volume, &mut ahead.input);
                stats.frames_prestaged += 1;
            }
            _ => {
                input.upload(ctx, raw);
                stats.frames_uploaded += 1;
            }
        }
        let next = next.filter(|n| dims(n) == shape);
        if next.is_some() && input.ahead.is_none() {
            input.ahead = Some(AheadUpload::new(ctx, shape.iter().product())?);
        }
        let input: &Input = input;
        // Called right after the frame's first submission, so the host copy overlaps that GPU work.
        let stage_next = || -> Result<bool> {
            match (next, &input.ahead) {
                (Some(n), Some(ahead)) => {
                    ahead.stage(ctx, &c_order(n))?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        };
        let mut rec = ctx.recorder();
        let current = match (&plan.median, filtered) {
            (Some(m), Some(filtered)) => {
                median3d::record(ctx, &mut rec, &input.volume, filtered, shape, m)?;
                filtered
            }
            _ => &input.volume,
        };
        let registering = register.is_some();
        let (registration, mut rec, staged) = match register {
            Some((registrar, bufs, shifted)) => {
                let target = if plan.register_on_raw {
                    &input.volume
                } else {
                    current
                };
                // One submission for the median and the registration (most of the frame's GPU
                // time), the next volume staged while it runs, then the peak read back.
                let pending = registrar.submit(ctx, rec, target)?;
                let staged = stage_next()?;
                let r = pending.resolve(ctx)?;
                let mut rec = ctx.recorder();
                shift::record(ctx, &mut rec, bufs, current, shifted, r.shift, &plan.shift)?;
                (Some((r, shifted)), rec, staged)
            }
            None => (None, rec, false),
        };
        let (registration, volume_buf) = match registration {
            Some((r, shifted)) => (Some(r), shifted),
            None => (None, current),
        };
        let mut host_acc = None;
        match accumulate {
            Some(Accumulate::Device(acc)) => acc.record_add(ctx, &mut rec, volume_buf)?,
            Some(Accumulate::DeviceF32(acc)) => acc.record_add(ctx, &mut rec, volume_buf)?,
            Some(Accumulate::Host(acc)) => host_acc = Some(acc),
            None => {}
        }
        rec.submit()?;
        let staged = if !registering { stage_next()? } else { staged };
        let volume = download(ctx, volume_buf, shape)?;
        if let Some(acc) = host_acc {
            acc.add(volume.view());
        }
        let filtered = match filtered {
            Some(f) if plan.keep_filtered => Some(if registration.is_some() {
                download(ctx, f, shape)?
            } else {
                volume.clone()
            }),
            _ => None,
        };
        if staged {
            stats.staged += 1;
        }
        Ok(FusedOutput {
            out: FrameOutput {
                volume,
                filtered,
                registration,
            },
            staged,
        })
    }
}
