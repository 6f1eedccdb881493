//! The GPU backend's stages, each owning its resident-or-tiled route and its named buffers, chosen
//! per volume shape; and the small helpers they share.

use super::*;

/// The device input volume for one shape: what every resident stage reads first.
pub(super) struct Input {
    pub(super) shape: [usize; 3],
    /// The volume being computed. Swapped with `ahead.input` when a frame finds its volume staged
    /// there, so the two alternate as frames go by.
    pub(super) volume: wgpu::Buffer,
    /// Made by the first frame of a stream that stages a next volume: one more volume on the device.
    pub(super) ahead: Option<AheadUpload>,
}

impl Input {
    /// The input for `shape` in `slot`, made (and any other shape's dropped) if needed.
    pub(super) fn ensure<'a>(
        slot: &'a mut Option<Input>,
        ctx: &GpuContext,
        shape: [usize; 3],
    ) -> Result<&'a mut Input> {
        check_shape(shape)?;
        if slot.as_ref().map(|i| i.shape) != Some(shape) {
            *slot = None;
            *slot = Some(Input {
                shape,
                volume: ctx.storage("input.volume_a", volume_bytes(shape))?,
                ahead: None,
            });
        }
        slot.as_mut()
            .ok_or_else(|| Error::Gpu("input buffer not set".into()))
    }

    /// `vol` copied into `volume`.
    pub(super) fn upload(&self, ctx: &GpuContext, vol: ArrayView3<f32>) {
        let values = c_order(vol);
        ctx.write(&self.volume, 0, bytemuck::cast_slice::<f32, u8>(&values));
    }
}

/// The median filter's route for one shape.
pub(super) enum MedianStage {
    /// The f32 volume fits: the filtered volume stays on the device.
    Resident {
        shape: [usize; 3],
        filtered: wgpu::Buffer,
    },
    /// Over the tile limit: z-slabs (`median3d::run_tiled`).
    Tiled { shape: [usize; 3] },
}

impl MedianStage {
    /// The stage for `shape` in `slot`, chosen again when the shape or the tile limit changed.
    pub(super) fn ensure<'a>(
        slot: &'a mut Option<MedianStage>,
        ctx: &GpuContext,
        shape: [usize; 3],
    ) -> Result<&'a MedianStage> {
        check_shape(shape)?;
        let resident = ctx.fits(volume_bytes(shape));
        let current = match slot {
            Some(MedianStage::Resident { shape: s, .. }) => *s == shape && resident,
            Some(MedianStage::Tiled { shape: s }) => *s == shape && !resident,
            None => false,
        };
        if !current {
            *slot = None;
            *slot = Some(if resident {
                MedianStage::Resident {
                    shape,
                    filtered: ctx.storage("median.filtered", volume_bytes(shape))?,
                }
            } else {
                MedianStage::Tiled { shape }
            });
        }
        slot.as_ref()
            .ok_or_else(|| Error::Gpu("median stage not set".into()))
    }
}

/// The shift's route for one shape.
pub(super) enum ShiftStage {
    /// The volume fits: the shifted volume stays on the device.
    Resident {
        shape: [usize; 3],
        bufs: Box<ShiftBuffers>,
        shifted: wgpu::Buffer,
    },
    /// Over the tile limit: y- and z-slabs (`shift::run_tiled`).
    Tiled { shape: [usize; 3] },
}

impl ShiftStage {
    pub(super) fn ensure<'a>(
        slot: &'a mut Option<ShiftStage>,
        ctx: &GpuContext,
        shape: [usize; 3],
    ) -> Result<&'a ShiftStage> {
        check_shape(shape)?;
        let resident = ctx.fits(shift::resident_bytes(shape));
        let current = match slot {
            Some(ShiftStage::Resident { shape: s, .. }) => *s == shape && resident,
            Some(ShiftStage::Tiled { shape: s }) => *s == shape && !resident,
            None => false,
        };
        if !current {
            *slot = None;
            *slot = Some(if resident {
                ShiftStage::Resident {
                    shape,
                    bufs: Box::new(ShiftBuffers::new(ctx, shape)?),
                    shifted: ctx.storage("shift.shifted", volume_bytes(shape))?,
                }
            } else {
                ShiftStage::Tiled { shape }
            });
        }
        slot.as_ref()
            .ok_or_else(|| Error::Gpu("shift stage not set".into()))
    }
}

/// The registration's route, chosen by `set_reference` for the reference's shape.
pub(super) enum RegisterStage {
    /// The complex spectrum fits: reference and moving spectra on the device.
    Resident(Box<GpuRegistrar>),
    /// Over the tile limit: slabs, the spectra on the host.
    Tiled(TiledRegistrar),
}

/// The z-score accumulation's route, chosen by `reset_moments`.
pub(super) enum MomentStage {
    /// The f64 accumulators fit on the device.
    Resident(GpuAccumulator),
    /// The f32 path's double-float sums (`zscore_f32.wgsl`) fit on the device.
    ResidentF32(F32Accumulator),
    /// Accumulators over the tile limit: on the host, updated on the device chunk by chunk.
    Tiled(TiledAccumulator),
    /// The CPU twin: the z-score's path is the CPU, or the f32 path's sums are over the tile limit.
    Host(host_zscore::Accumulator),
}

/// The device copies of the last moments the resident accumulator issued (f64, or double-floats on
/// the f32 path), so the normalize pass uploads only the volume.
pub(super) struct IssuedMoments {
    pub(super) key: MomentsKey,
    pub(super) mean: wgpu::Buffer,
    pub(super) std: wgpu::Buffer,
}

/// The normalization's output buffer, for one shape (its input is `Input::volume`).
pub(super) struct NormalizeBuffers {
    pub(super) shape: [usize; 3],
    pub(super) zscores: wgpu::Buffer,
}

pub(super) fn dims<T>(v: &ArrayView3<T>) -> [usize; 3] {
    let (a, b, c) = v.dim();
    [a, b, c]
}

/// Bytes of an f32 volume of `shape`.
pub(super) fn volume_bytes(shape: [usize; 3]) -> u64 {
    shape.iter().product::<usize>() as u64 * 4
}

/// Bytes of an f64 volume of `shape` (one z-score accumulator or moment).
pub(super) fn f64_bytes(shape: [usize; 3]) -> u64 {
    shape.iter().product::<usize>() as u64 * 8
}

/// `v`'s values in C order: borrowed when it is laid out so, else copied.
pub(super) fn c_order<T: Clone>(v: ArrayView3<'_, T>) -> Cow<'_, [T]> {
    match v.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(v.iter().cloned().collect()),
    }
}

pub(super) fn check_shape(shape: [usize; 3]) -> Result<()> {
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

pub(super) fn download(
    ctx: &GpuContext,
    buf: &wgpu::Buffer,
    shape: [usize; 3],
) -> Result<Array3<f32>> {
    let v = ctx.read::<f32>(buf, shape.iter().product())?;
    Array3::from_shape_vec(shape, v).map_err(|e| Error::Gpu(format!("readback shape: {e}")))
}

/// The registration stage of `reference`, when it is the backend's current one and `shape` is its.
pub(super) fn registration_for<'a>(
    stage: &'a mut Option<(Reference, RegisterStage)>,
    reference: &Reference,
    shape: [usize; 3],
) -> Result<&'a mut RegisterStage> {
    match stage {
        Some((h, stage)) if h == reference => {
            check_same_shape(shape, reference.shape(), "reference")?;
            Ok(stage)
        }
        _ => Err(stale_handle("reference")),
    }
}

/// The accumulation stage of `acc`, when it is the backend's current one and `shape` is its.
pub(super) fn accumulation_for<'a>(
    stage: &'a mut Option<(Accumulation, MomentStage)>,
    acc: &Accumulation,
    shape: [usize; 3],
) -> Result<&'a mut MomentStage> {
    match stage {
        Some((h, stage)) if h == acc => {
            check_same_shape(shape, acc.shape(), "accumulator")?;
            Ok(stage)
        }
        _ => Err(stale_handle("accumulation")),
    }
}

pub(super) fn check_same_shape(shape: [usize; 3], theirs: [usize; 3], what: &str) -> Result<()> {
    if shape != theirs {
        return Err(Error::Data(format!(
            "volume shape {shape:?} differs from the {what}'s {theirs:?}"
        )));
    }
    Ok(())
}
