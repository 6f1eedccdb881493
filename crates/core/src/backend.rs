//! The seam between the streaming pipeline and the compute engines (CPU today, GPU beside it).
//!
//! The pipeline drives one `Backend` per run. Kernel-level methods exist so each kernel can be
//! tested on its own; `process_frame` chains them for one timepoint, and a backend that keeps data
//! resident on a device (the GPU) overrides it so a volume is uploaded once and read back once.
//! `process_stream` is the first pass over the whole series: the pipeline hands it an iterator of
//! volumes and a callback for the results, and a device backend looks ahead in that iterator itself
//! (to stage the next upload while the current volume computes); the pipeline knows nothing of it.
//!
//! The stage order is carried by handles: `set_reference` returns the `Reference` that `register`
//! and a registering `FramePlan` need, `reset_moments` the `Accumulation` that `accumulate`,
//! `moments` and an accumulating plan need. What stays a run-time check is a handle the backend no
//! longer holds (replaced by a later call, or another backend's): an `Error::Data`.

use crate::error::Result;
use crate::params::{MedianParams, RegisterParams, Registration, ShiftParams, ZscoreParams};
use ndarray::{Array3, ArrayView3, ArrayViewMut3};

/// What to do with each timepoint in the first pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FramePlan {
    /// Median filter, or `None` to skip it.
    pub median: Option<MedianParams>,
    /// Register against this reference (from `set_reference`, with its parameters), or skip.
    pub register: Option<Reference>,
    /// Register on the raw volume instead of the filtered one.
    pub register_on_raw: bool,
    /// Apply the registration shift with these parameters (ignored when not registering).
    pub shift: ShiftParams,
    /// Accumulate z-score statistics of the final volume into this accumulation (from
    /// `reset_moments`), or skip.
    pub accumulate: Option<Accumulation>,
    /// Return the filtered volume as well (for `--save filtered`).
    pub keep_filtered: bool,
}

/// A fresh number for a handle: never reused in a process, so no two handles are equal by chance.
fn next_handle() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What `Backend::set_reference` returns and registration needs (`register`, a plan that
/// registers): the stage order set_reference → register is carried by the type. A backend refuses
/// a handle other than the one it issued for the reference it holds (another backend's, or one a
/// later `set_reference` replaced).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reference {
    id: u64,
    shape: [usize; 3],
    params: RegisterParams,
}

impl Reference {
    /// A new handle, for a backend's `set_reference` of a reference of `shape`.
    pub fn issue(shape: [usize; 3], params: RegisterParams) -> Reference {
        Reference {
            id: next_handle(),
            shape,
            params,
        }
    }

    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    pub fn params(&self) -> &RegisterParams {
        &self.params
    }
}

/// What `Backend::reset_moments` returns and `accumulate` and `moments` need: the stage order
/// reset_moments → accumulate → moments is carried by the type. A backend refuses a handle other
/// than the one it issued for its current accumulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accumulation {
    id: u64,
    shape: [usize; 3],
}

impl Accumulation {
    /// A new handle, for a backend's `reset_moments` of volumes of `shape`.
    pub fn issue(shape: [usize; 3]) -> Accumulation {
        Accumulation {
            id: next_handle(),
            shape,
        }
    }

    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }
}

/// The error for a handle the backend does not hold: `what` names it ("reference", "accumulation").
pub fn stale_handle(what: &str) -> crate::error::Error {
    crate::error::Error::Data(format!(
        "this {what} is not the backend's current one (replaced by a later call, or another backend's)"
    ))
}

/// What the first pass produced for one timepoint.
#[derive(Debug)]
pub struct FrameOutput {
    /// The volume after every enabled stage (filtered, then shifted).
    pub volume: Array3<f32>,
    /// The filtered volume, when asked for.
    pub filtered: Option<Array3<f32>>,
    /// Registration result, when registering.
    pub registration: Option<Registration>,
}

/// What `process_frame_into` produced besides the volume, which went into the caller's array.
#[derive(Debug)]
pub struct FrameParts {
    /// The filtered volume, when asked for.
    pub filtered: Option<Array3<f32>>,
    /// Registration result, when registering.
    pub registration: Option<Registration>,
}

/// Per-voxel mean and standard deviation over time, the result of the accumulation pass.
///
/// The accumulators are f64, and so are `mean64` and `std64`: normalization and the constant-voxel
/// rule use them, as `scipy.stats.zscore` of the float32 data computed in float64 does. `mean` and
/// `std` are their float32 roundings, what the output's `/mean` and `/std` store; normalizing with
/// those instead would move z by up to `eps_f32 · |mean| / std` (0.5 for 1.5 at a large mean).
///
/// The fields are private so the four arrays and the count always agree, and so a backend may keep
/// its own device copy of moments it issued (`MomentsKey`): nothing can change values that carry
/// its mark. To edit them, take them apart (`into_parts`) and build unmarked ones (`from_f64`).
#[derive(Clone, Debug)]
pub struct Moments {
    mean: Array3<f32>,
    std: Array3<f32>,
    mean64: Array3<f64>,
    std64: Array3<f64>,
    constant_voxels: usize,
    /// The number of the `MomentsKey` that issued these, if a backend did.
    issuer: Option<u64>,
}

/// A backend's mark on the `Moments` it computes, so it recognises them later (and uses the copy it
/// kept on its device) without comparing arrays. Not `Clone`: only the holder of a key issues or
/// recognises moments under it, and no two keys of a process share a number.
#[derive(Debug)]
pub struct MomentsKey(u64);

impl MomentsKey {
    pub fn new() -> MomentsKey {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        MomentsKey(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// `Moments::from_f64`, marked as issued under this key.
    pub fn issue(&self, mean64: Array3<f64>, std64: Array3<f64>) -> Moments {
        Moments {
            issuer: Some(self.0),
            ..Moments::from_f64(mean64, std64)
        }
    }

    /// Whether `m` was issued under this key (and so holds the values issued).
    pub fn issued(&self, m: &Moments) -> bool {
        m.issuer == Some(self.0)
    }
}

impl Default for MomentsKey {
    fn default() -> Self {
        MomentsKey::new()
    }
}

impl Moments {
    /// Moments from the f64 mean and standard deviation: the f32 roundings and the constant-voxel
    /// count follow from them.
    pub fn from_f64(mean64: Array3<f64>, std64: Array3<f64>) -> Moments {
        let constant_voxels = ndarray::Zip::from(&mean64)
            .and(&std64)
            .fold(0, |acc, &m, &s| {
                acc + crate::zscore::is_constant(m, s) as usize
            });
        Moments {
            mean: mean64.mapv(|m| m as f32),
            std: std64.mapv(|s| s as f32),
            mean64,
            std64,
            constant_voxels,
            issuer: None,
        }
    }

    /// Moments known only as float32 (e.g. read back from an output's `/mean` and `/std`), widened
    /// exactly to f64.
    pub fn from_f32(mean: Array3<f32>, std: Array3<f32>) -> Moments {
        Moments::from_f64(mean.mapv(f64::from), std.mapv(f64::from))
    }

    /// The float32 mean, what the output's `/mean` stores.
    pub fn mean(&self) -> &Array3<f32> {
        &self.mean
    }

    /// The float32 standard deviation, what the output's `/std` stores.
    pub fn std(&self) -> &Array3<f32> {
        &self.std
    }

    /// The f64 mean, which normalization uses.
    pub fn mean64(&self) -> &Array3<f64> {
        &self.mean64
    }

    /// The f64 standard deviation, which normalization uses.
    pub fn std64(&self) -> &Array3<f64> {
        &self.std64
    }

    /// Voxels whose time series is constant (scipy's test on the f64 moments:
    /// `std <= |eps_f64 · mean|`, `zscore::is_constant`).
    pub fn constant_voxels(&self) -> usize {
        self.constant_voxels
    }

    /// The f64 mean and standard deviation, to build changed moments from (`from_f64`).
    pub fn into_parts(self) -> (Array3<f64>, Array3<f64>) {
        (self.mean64, self.std64)
    }
}

pub trait Backend {
    /// Human-readable description: backend name and device.
    fn describe(&self) -> String;

    /// `scipy.ndimage.median_filter(vol, size, mode, cval)`.
    fn median3d(&mut self, vol: ArrayView3<f32>, p: &MedianParams) -> Result<Array3<f32>>;

    /// Store (and transform) the reference volume `register` aligns to, replacing any earlier one.
    fn set_reference(
        &mut self,
        reference: ArrayView3<f32>,
        p: &RegisterParams,
    ) -> Result<Reference>;

    /// `phase_cross_correlation(reference, vol)`: the shift that registers `vol` onto the reference.
    fn register(&mut self, reference: &Reference, vol: ArrayView3<f32>) -> Result<Registration>;

    /// `scipy.ndimage.shift(vol, shift, order, mode, cval)` with the spline prefilter.
    fn shift(
        &mut self,
        vol: ArrayView3<f32>,
        shift: [f64; 3],
        p: &ShiftParams,
    ) -> Result<Array3<f32>>;

    /// `shift` written into `out` (`vol`'s shape) instead of a new array. The default shifts, then
    /// copies; a backend whose shift can write in place overrides it.
    fn shift_into(
        &mut self,
        vol: ArrayView3<f32>,
        shift: [f64; 3],
        p: &ShiftParams,
        mut out: ArrayViewMut3<f32>,
    ) -> Result<()> {
        check_out_shape(&vol, &out)?;
        out.assign(&self.shift(vol, shift, p)?);
        Ok(())
    }

    /// Start a new z-score accumulation for volumes of `shape`, replacing any earlier one.
    fn reset_moments(&mut self, shape: [usize; 3]) -> Result<Accumulation>;

    /// Add one volume to the running per-voxel statistics (f64 accumulators).
    fn accumulate(&mut self, acc: &Accumulation, vol: ArrayView3<f32>) -> Result<()>;

    /// Finish the accumulation: per-voxel mean and standard deviation with `ddof`.
    fn moments(&mut self, acc: &Accumulation, p: &ZscoreParams) -> Result<Moments>;

    /// `(vol - mean) / std`, with constant voxels set by `p.constant`.
    fn normalize(
        &mut self,
        vol: ArrayView3<f32>,
        moments: &Moments,
        p: &ZscoreParams,
    ) -> Result<Array3<f32>>;

    /// The first pass for one timepoint: filter, register, shift, accumulate.
    fn process_frame(&mut self, raw: ArrayView3<f32>, plan: &FramePlan) -> Result<FrameOutput> {
        frame_by_stage(self, raw, plan)
    }

    /// `process_frame` with the volume written into `out` (`raw`'s shape): for a caller filling an
    /// array of its own (a block of timepoints). The default copies `process_frame`'s volume; a
    /// backend whose shift writes in place overrides it with `frame_into_by_stage`.
    fn process_frame_into(
        &mut self,
        raw: ArrayView3<f32>,
        plan: &FramePlan,
        mut out: ArrayViewMut3<f32>,
    ) -> Result<FrameParts> {
        check_out_shape(&raw, &out)?;
        let o = self.process_frame(raw, plan)?;
        out.assign(&o.volume);
        Ok(FrameParts {
            filtered: o.filtered,
            registration: o.registration,
        })
    }

    /// Whether `process_stream` computes ahead of the volume it emits (takes the next volume to stage
    /// it while the current one computes). Where it does not, a caller that holds all its volumes
    /// loses nothing by calling `process_frame_into` on each instead.
    fn streams_ahead(&self) -> bool {
        false
    }

    /// The first pass over a stream of volumes: `process_frame` of each item of `frames` in order,
    /// each result handed to `emit` before the next volume is computed. Stops at the first error,
    /// from `frames`, the backend or `emit`, and returns it unchanged.
    ///
    /// How far ahead of the volume it computes a backend takes from `frames` is its own choice, and
    /// decides how many of the caller's volumes are alive: the default (`stream_by_frame`) takes
    /// one at a time and drops it before `emit`; the GPU backend takes the next one before
    /// computing the current one, to stage its upload meanwhile (one more volume alive).
    fn process_stream(
        &mut self,
        plan: &FramePlan,
        frames: &mut dyn Iterator<Item = Result<Array3<f32>>>,
        emit: &mut dyn FnMut(FrameOutput) -> Result<()>,
    ) -> Result<()> {
        stream_by_frame(self, plan, frames, emit)
    }
}

/// `process_stream` one volume at a time through `process_frame` (the default).
pub fn stream_by_frame<B: Backend + ?Sized>(
    b: &mut B,
    plan: &FramePlan,
    frames: &mut dyn Iterator<Item = Result<Array3<f32>>>,
    emit: &mut dyn FnMut(FrameOutput) -> Result<()>,
) -> Result<()> {
    for raw in frames {
        let raw = raw?;
        let out = if plan.median.is_none() && plan.register.is_none() {
            // Nothing transforms the volume: it goes on as read rather than as a copy.
            if let Some(acc) = &plan.accumulate {
                b.accumulate(acc, raw.view())?;
            }
            FrameOutput {
                volume: raw,
                filtered: None,
                registration: None,
            }
        } else {
            let out = b.process_frame(raw.view(), plan)?;
            // Freed before `emit`, which may wait on a full write queue.
            drop(raw);
            out
        };
        emit(out)?;
    }
    Ok(())
}

/// `process_frame` as the sequence of the backend's stage calls (the default; the GPU backend's
/// route for volumes over its tile limit).
pub fn frame_by_stage<B: Backend + ?Sized>(
    b: &mut B,
    raw: ArrayView3<f32>,
    plan: &FramePlan,
) -> Result<FrameOutput> {
    let (filtered, registration) = filter_and_register(b, raw, plan)?;
    let current = filtered.as_ref().map(|f| f.view()).unwrap_or(raw);
    let volume = match registration {
        Some(r) => b.shift(current, r.shift, &plan.shift)?,
        None => current.to_owned(),
    };
    if let Some(acc) = &plan.accumulate {
        b.accumulate(acc, volume.view())?;
    }
    Ok(FrameOutput {
        volume,
        filtered: if plan.keep_filtered { filtered } else { None },
        registration,
    })
}

/// `process_frame_into` as the sequence of the backend's stage calls, the shift through `shift_into`.
pub fn frame_into_by_stage<B: Backend + ?Sized>(
    b: &mut B,
    raw: ArrayView3<f32>,
    plan: &FramePlan,
    mut out: ArrayViewMut3<f32>,
) -> Result<FrameParts> {
    check_out_shape(&raw, &out)?;
    let (filtered, registration) = filter_and_register(b, raw, plan)?;
    let current = filtered.as_ref().map(|f| f.view()).unwrap_or(raw);
    match registration {
        Some(r) => b.shift_into(current, r.shift, &plan.shift, out.view_mut())?,
        None => out.assign(&current),
    }
    if let Some(acc) = &plan.accumulate {
        b.accumulate(acc, out.view())?;
    }
    Ok(FrameParts {
        filtered: if plan.keep_filtered { filtered } else { None },
        registration,
    })
}

/// The median (when planned) and the registration (when planned) of one timepoint.
fn filter_and_register<B: Backend + ?Sized>(
    b: &mut B,
    raw: ArrayView3<f32>,
    plan: &FramePlan,
) -> Result<(Option<Array3<f32>>, Option<Registration>)> {
    let filtered = match &plan.median {
        Some(m) => Some(b.median3d(raw, m)?),
        None => None,
    };
    let current = filtered.as_ref().map(|f| f.view()).unwrap_or(raw);
    let registration = match &plan.register {
        Some(r) => Some(b.register(r, if plan.register_on_raw { raw } else { current })?),
        None => None,
    };
    Ok((filtered, registration))
}

/// An output array of another shape than its volume is the caller's bug, refused rather than broadcast.
pub fn check_out_shape(vol: &ArrayView3<f32>, out: &ArrayViewMut3<f32>) -> Result<()> {
    if vol.dim() != out.dim() {
        return Err(crate::error::Error::Data(format!(
            "an output of shape {:?} for a volume of shape {:?}",
            out.dim(),
            vol.dim()
        )));
    }
    Ok(())
}
