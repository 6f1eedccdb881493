//! The fused route: one upload, median → register → shift → accumulate on the device, one readback;
//! in a stream, the next volume staged while the GPU computes and the next frame's median and
//! registration submitted before the current frame's readback is waited for.

use super::*;
use crate::device::{typed, PendingRead};
use crate::register::Pending;

/// Where the fused route adds a frame's final volume to the z-score.
pub(super) enum Accumulate<'a> {
    Device(&'a mut GpuAccumulator),
    /// On the device, the float32 path.
    DeviceF32(&'a mut F32Accumulator),
    /// On the CPU twin, after the readback.
    Host(&'a mut host_zscore::Accumulator),
}

/// The fused route's buffers for frames of one shape: given only when every stage of the plan is
/// resident, so a frame cannot meet a tiled stage halfway.
pub(super) struct Fused<'a> {
    pub(super) ctx: &'a GpuContext,
    pub(super) input: &'a mut Input,
    /// The median's output, when filtering.
    pub(super) filtered: Option<&'a wgpu::Buffer>,
    /// The registrar, the shift's buffers and its output, when registering.
    pub(super) register: Option<(&'a GpuRegistrar, &'a ShiftBuffers, &'a wgpu::Buffer)>,
    pub(super) accumulate: Option<Accumulate<'a>>,
}

/// A fused frame whose first submission is in: the median, and the registration when the plan
/// registers (its peak not yet read back).
pub(super) struct Begun<'a> {
    registration: Option<Pending<'a>>,
}

/// A fused frame whose work is all submitted, its readback copies included.
pub(super) struct Submitted {
    read: PendingRead,
    registration: Option<Registration>,
    filtered: Filtered,
}

/// Where a frame's filtered volume comes from when the plan keeps it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filtered {
    /// Not kept.
    No,
    /// Read back as the readback's second part (registering: the volume read back is the shifted
    /// one).
    OwnPart,
    /// The volume read back is the filtered one (not registering).
    Volume,
}

impl<'a> Fused<'a> {
    /// The buffer the frame's later stages read: the median's output when filtering, else the
    /// input (a handle: `begin` may swap the input's buffers).
    fn current(&self, plan: &FramePlan) -> wgpu::Buffer {
        match (&plan.median, self.filtered) {
            (Some(_), Some(filtered)) => filtered.clone(),
            _ => self.input.volume.clone(),
        }
    }

    /// Puts `raw` on the device (already in `Input::ahead` when `prestaged`: swapped in) and
    /// submits the median, and the registration when the plan registers.
    fn begin(
        &mut self,
        raw: ArrayView3<f32>,
        prestaged: bool,
        plan: &FramePlan,
        stats: &mut AheadStats,
    ) -> Result<Begun<'a>> {
        let ctx = self.ctx;
        let input = &mut *self.input;
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
        let mut rec = ctx.recorder();
        if let (Some(m), Some(filtered)) = (&plan.median, self.filtered) {
            median3d::record(
                ctx,
                &mut rec,
                &self.input.volume,
                filtered,
                self.input.shape,
                m,
            )?;
        }
        let registration = match self.register {
            Some((registrar, _, _)) => {
                let target = if plan.register_on_raw {
                    self.input.volume.clone()
                } else {
                    self.current(plan)
                };
                Some(registrar.submit(ctx, rec, &target)?)
            }
            None => {
                rec.submit()?;
                None
            }
        };
        Ok(Begun { registration })
    }

    /// Stages `next` into the second input buffer (made on first use) when it has this route's
    /// shape, while the GPU computes what was submitted; whether it did.
    fn stage(&mut self, next: Option<ArrayView3<f32>>, stats: &mut AheadStats) -> Result<bool> {
        let shape = self.input.shape;
        let Some(next) = next.filter(|n| dims(n) == shape) else {
            return Ok(false);
        };
        if self.input.ahead.is_none() {
            self.input.ahead = Some(AheadUpload::new(self.ctx, shape.iter().product())?);
        }
        match &self.input.ahead {
            Some(ahead) => ahead.stage(self.ctx, &c_order(next))?,
            None => return Ok(false),
        }
        stats.staged += 1;
        Ok(true)
    }

    /// Reads the registration's peak back, then submits the shift, the accumulation and the
    /// readback copies, without waiting for them.
    fn submit_rest(&mut self, begun: Begun<'a>, plan: &FramePlan) -> Result<Submitted> {
        let ctx = self.ctx;
        let current = self.current(plan);
        let mut rec = ctx.recorder();
        let (registration, volume) = match (begun.registration, self.register) {
            (Some(pending), Some((_, bufs, shifted))) => {
                let r = pending.resolve(ctx)?;
                shift::record(ctx, &mut rec, bufs, &current, shifted, r.shift, &plan.shift)?;
                (Some(r), shifted.clone())
            }
            _ => (None, current.clone()),
        };
        match &mut self.accumulate {
            Some(Accumulate::Device(acc)) => acc.record_add(ctx, &mut rec, &volume)?,
            Some(Accumulate::DeviceF32(acc)) => acc.record_add(ctx, &mut rec, &volume)?,
            Some(Accumulate::Host(_)) | None => {}
        }
        let bytes = volume_bytes(self.input.shape);
        let filtered = match (plan.keep_filtered, self.filtered, &registration) {
            (true, Some(_), Some(_)) => Filtered::OwnPart,
            (true, Some(_), None) => Filtered::Volume,
            _ => Filtered::No,
        };
        // The filtered volume is read with the frame's result, before a next frame's median
        // (submitted after this) overwrites it.
        let read = match filtered {
            Filtered::OwnPart => ctx.read_later(rec, &[(&volume, bytes), (&current, bytes)])?,
            _ => ctx.read_later(rec, &[(&volume, bytes)])?,
        };
        Ok(Submitted {
            read,
            registration,
            filtered,
        })
    }

    /// Waits for the frame's readback; adds the volume to the CPU twin's accumulation when the
    /// z-score runs there.
    fn finish(&mut self, s: Submitted) -> Result<FrameOutput> {
        let shape = self.input.shape;
        let (volume, filtered) = s.read.wait(self.ctx, |parts| {
            let vol = |p: &[u8]| {
                Array3::from_shape_vec(shape, typed::<f32>(p))
                    .map_err(|e| Error::Gpu(format!("readback shape: {e}")))
            };
            Ok::<_, Error>((vol(parts[0])?, parts.get(1).map(|p| vol(p)).transpose()?))
        })??;
        if let Some(Accumulate::Host(acc)) = &mut self.accumulate {
            acc.add(volume.view());
        }
        let filtered = match s.filtered {
            Filtered::No => None,
            Filtered::OwnPart => filtered,
            Filtered::Volume => Some(volume.clone()),
        };
        Ok(FrameOutput {
            volume,
            filtered,
            registration: s.registration,
        })
    }

    /// One frame (`process_frame`).
    pub(super) fn run(
        mut self,
        raw: ArrayView3<f32>,
        plan: &FramePlan,
        stats: &mut AheadStats,
    ) -> Result<FrameOutput> {
        let begun = self.begin(raw, false, plan, stats)?;
        let submitted = self.submit_rest(begun, plan)?;
        self.finish(submitted)
    }

    /// The frames of a stream from `first` on while they have this route's shape; returns the
    /// first volume of another shape, if the stream has one.
    ///
    /// Per frame t: its shift, accumulation and readback copies are submitted, then frame t + 1's
    /// median and registration (its volume staged earlier), and only then does the host wait for
    /// frame t's readback, copy it out and emit it, while the GPU computes frame t + 1. Volume
    /// t + 2 is taken from the stream and staged after frame t is emitted. So the stream is taken
    /// as `process_stream` always did (volume t + 1 before frame t is computed, t + 2 after it is
    /// emitted), and the GPU idles only for the peak's round trip.
    pub(super) fn stream(
        mut self,
        first: Array3<f32>,
        frames: &mut dyn Iterator<Item = Result<Array3<f32>>>,
        emit: &mut dyn FnMut(FrameOutput) -> Result<()>,
        plan: &FramePlan,
        stats: &mut AheadStats,
    ) -> Result<Option<Array3<f32>>> {
        let mut begun = self.begin(first.view(), false, plan, stats)?;
        // Its values are on the device (or in wgpu's staging) now.
        drop(first);
        let mut next = frames.next().transpose()?;
        let mut staged = self.stage(next.as_ref().map(|n| n.view()), stats)?;
        loop {
            let submitted = self.submit_rest(begun, plan)?;
            let following = match next.take() {
                Some(n) if staged => {
                    let b = self.begin(n.view(), true, plan, stats)?;
                    stats.frames_overlapped += 1;
                    Some(b)
                }
                other => {
                    next = other;
                    None
                }
            };
            emit(self.finish(submitted)?)?;
            match following {
                Some(b) => begun = b,
                // The end of the stream, or a volume of another shape (not staged).
                None => return Ok(next),
            }
            next = frames.next().transpose()?;
            staged = self.stage(next.as_ref().map(|n| n.view()), stats)?;
        }
    }
}
