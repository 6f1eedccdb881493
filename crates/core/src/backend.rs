//! The seam between the streaming pipeline and the compute engines (CPU today, GPU beside it).
//!
//! The pipeline drives one `Backend` per run. Kernel-level methods exist so each kernel can be
//! tested on its own; `process_frame` chains them for one timepoint, and a backend that keeps data
//! resident on a device (the GPU) overrides it so a volume is uploaded once and read back once.
//! `process_frame_ahead` is the same step told which volume comes next, so a device backend can
//! stage that upload while this one computes.

use crate::error::Result;
use crate::params::{MedianParams, RegisterParams, Registration, ShiftParams, ZscoreParams};
use ndarray::{Array3, ArrayView3};

/// What to do with each timepoint in the first pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FramePlan {
    /// Median filter, or `None` to skip it.
    pub median: Option<MedianParams>,
    /// Register against the reference set by `set_reference`, or skip.
    pub register: Option<RegisterParams>,
    /// Register on the raw volume instead of the filtered one.
    pub register_on_raw: bool,
    /// Apply the registration shift with these parameters (ignored when not registering).
    pub shift: ShiftParams,
    /// Accumulate z-score statistics of the final volume.
    pub accumulate: bool,
    /// Return the filtered volume as well (for `--save filtered`).
    pub keep_filtered: bool,
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

/// Per-voxel mean and standard deviation over time, the result of the accumulation pass.
///
/// The accumulators are f64, and so are `mean64` and `std64`: normalization and the constant-voxel
/// rule use them, as `scipy.stats.zscore` of the float32 data computed in float64 does. `mean` and
/// `std` are their float32 roundings, what the output's `/mean` and `/std` store; normalizing with
/// those instead would move z by up to `eps_f32 · |mean| / std` (0.5 for 1.5 at a large mean).
#[derive(Clone, Debug)]
pub struct Moments {
    pub mean: Array3<f32>,
    pub std: Array3<f32>,
    pub mean64: Array3<f64>,
    pub std64: Array3<f64>,
    /// Voxels whose time series is constant (scipy's test on the f64 moments:
    /// `std <= |eps_f64 · mean|`, `cpu::zscore::is_constant`).
    pub constant_voxels: usize,
    /// Identifies the backend computation these came from (`Moments::next_id`), so a backend can
    /// keep its own device copy for `normalize` instead of uploading them per volume. 0 means
    /// "made elsewhere": always used as given. Set it to 0 after changing any of the arrays.
    pub id: u64,
}

impl Moments {
    /// A fresh nonzero id for moments a backend computes.
    pub fn next_id() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Moments from the f64 mean and standard deviation: the f32 roundings and the constant-voxel
    /// count follow from them.
    pub fn from_f64(mean64: Array3<f64>, std64: Array3<f64>, id: u64) -> Moments {
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
            id,
        }
    }

    /// Moments known only as float32 (e.g. read back from an output's `/mean` and `/std`), widened
    /// exactly to f64; id 0.
    pub fn from_f32(mean: Array3<f32>, std: Array3<f32>) -> Moments {
        Moments::from_f64(mean.mapv(f64::from), std.mapv(f64::from), 0)
    }
}

/// A volume with its sequence number (`SeqVolume::next_seq`): the identity by which a backend
/// recognises a volume it staged ahead of time (`Backend::process_frame_ahead`). Two volumes with the
/// same number must hold the same values; numbers from `next_seq` are never reused in a process, so
/// a volume staged in one run can never be mistaken for one of another run.
#[derive(Clone, Copy, Debug)]
pub struct SeqVolume<'a> {
    pub seq: u64,
    pub vol: ArrayView3<'a, f32>,
}

impl<'a> SeqVolume<'a> {
    pub fn new(seq: u64, vol: ArrayView3<'a, f32>) -> Self {
        SeqVolume { seq, vol }
    }

    /// A fresh nonzero sequence number.
    pub fn next_seq() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

pub trait Backend {
    /// Human-readable description: backend name and device.
    fn describe(&self) -> String;

    /// `scipy.ndimage.median_filter(vol, size, mode, cval)`.
    fn median3d(&mut self, vol: ArrayView3<f32>, p: &MedianParams) -> Result<Array3<f32>>;

    /// Store (and transform) the reference volume used by `register`.
    fn set_reference(&mut self, reference: ArrayView3<f32>, p: &RegisterParams) -> Result<()>;

    /// `phase_cross_correlation(reference, vol)`: the shift that registers `vol` onto the reference.
    fn register(&mut self, vol: ArrayView3<f32>) -> Result<Registration>;

    /// `scipy.ndimage.shift(vol, shift, order, mode, cval)` with the spline prefilter.
    fn shift(
        &mut self,
        vol: ArrayView3<f32>,
        shift: [f64; 3],
        p: &ShiftParams,
    ) -> Result<Array3<f32>>;

    /// Start a new z-score accumulation for volumes of `shape`.
    fn reset_moments(&mut self, shape: [usize; 3]) -> Result<()>;

    /// Add one volume to the running per-voxel statistics (f64 accumulators).
    fn accumulate(&mut self, vol: ArrayView3<f32>) -> Result<()>;

    /// Finish the accumulation: per-voxel mean and standard deviation with `ddof`.
    fn moments(&mut self, p: &ZscoreParams) -> Result<Moments>;

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

    /// Whether `process_frame_ahead` uses `next` for frames of `shape` under `plan`: the pipeline
    /// takes volume t + 1 from the reader before computing t (one more volume in memory) only then.
    fn stages_ahead(&self, shape: [usize; 3], plan: &FramePlan) -> bool {
        let _ = (shape, plan);
        false
    }

    /// `process_frame` for `raw`, told that `next` is the volume of the following call. A backend
    /// may start moving `next` to its device while `raw` is computed (the GPU backend does) and
    /// skip that upload when the following call brings the same `seq`; the result is the same as
    /// `process_frame(raw.vol, plan)` whatever `next` is. The default ignores `next`.
    fn process_frame_ahead(
        &mut self,
        raw: SeqVolume<'_>,
        next: Option<SeqVolume<'_>>,
        plan: &FramePlan,
    ) -> Result<FrameOutput> {
        let _ = next;
        self.process_frame(raw.vol, plan)
    }
}

/// `process_frame` as the sequence of the backend's stage calls (the default; the GPU backend's
/// route for volumes over its tile limit).
pub fn frame_by_stage<B: Backend + ?Sized>(
    b: &mut B,
    raw: ArrayView3<f32>,
    plan: &FramePlan,
) -> Result<FrameOutput> {
    let filtered = match &plan.median {
        Some(m) => Some(b.median3d(raw, m)?),
        None => None,
    };
    let current = filtered.as_ref().map(|f| f.view()).unwrap_or(raw);
    let registration = match plan.register {
        Some(_) => Some(b.register(if plan.register_on_raw { raw } else { current })?),
        None => None,
    };
    let volume = match registration {
        Some(r) => b.shift(current, r.shift, &plan.shift)?,
        None => current.to_owned(),
    };
    if plan.accumulate {
        b.accumulate(volume.view())?;
    }
    Ok(FrameOutput {
        volume,
        filtered: if plan.keep_filtered { filtered } else { None },
        registration,
    })
}
