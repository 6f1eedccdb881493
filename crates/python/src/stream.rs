//! The streaming pieces a distributed front end builds on: a reference transformed once and kept,
//! a block of timepoints through the first pass, and mergeable, picklable z-score moments.

use crate::engine::{self, Choice};
use crate::errors::py;
use crate::kernels::{mode, register_params, with_backend};
use gpuprep_core::backend::{Backend, FramePlan, Reference as Handle};
use gpuprep_core::params::{MedianParams, RegisterParams, Registration, ShiftParams, ZscoreParams};
use gpuprep_core::zscore::Accumulator;
use gpuprep_core::{Error, Result};
use gpuprep_cpu::CpuBackend;
use ndarray::{Array1, Array2, Array3, Array4, ArrayView3, ArrayView4, Axis};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArray3, PyArray4, PyReadonlyArray3, PyReadonlyArray4,
};
use pyo3::exceptions::{PyNotImplementedError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::Mutex;

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The reference volume of a registration, transformed once: `register(volume)` is
/// `phase_cross_correlation(reference, volume)` without the reference's transform. Pickles as its
/// volume and parameters, so a copy sent to another process transforms it once there.
#[pyclass(module = "gpuprep._gpuprep", frozen)]
pub struct Reference {
    volume: Array3<f32>,
    params: RegisterParams,
    backend: Choice,
    id: u64,
    /// On the CPU, a backend of its own holding the transform; on a GPU, `None` (the process's
    /// device holds the most recently used reference, `engine::Gpu::with_reference`).
    cpu: Option<Mutex<(CpuBackend, Handle)>>,
}

impl Reference {
    fn dims(&self) -> [usize; 3] {
        let (z, y, x) = self.volume.dim();
        [z, y, x]
    }

    fn check_shape(&self, what: &str, shape: &[usize]) -> Result<()> {
        if shape[shape.len() - 3..] != self.dims() {
            return Err(Error::InvalidParameter {
                name: what.into(),
                message: format!(
                    "volumes of shape {:?} differ from the reference's {:?}",
                    &shape[shape.len() - 3..],
                    self.dims()
                ),
            });
        }
        Ok(())
    }

    /// `f` with the backend holding this reference and its handle. Call without the GIL.
    fn with<T>(&self, f: impl FnOnce(&mut dyn Backend, Handle) -> Result<T>) -> Result<T> {
        match &self.cpu {
            Some(cpu) => {
                let mut guard = cpu.lock().unwrap_or_else(|p| p.into_inner());
                let (backend, handle) = &mut *guard;
                let handle = *handle;
                f(backend, handle)
            }
            None => {
                let mut gpu = engine::select(self.backend)?.ok_or_else(|| {
                    Error::Gpu("the GPU this reference was set on is gone".into())
                })?;
                let (backend, handle) =
                    gpu.with_reference(self.id, self.volume.view(), &self.params)?;
                f(backend, handle)
            }
        }
    }
}

#[pymethods]
impl Reference {
    #[new]
    #[pyo3(signature = (volume, upsample_factor = 1, normalization = "phase", backend = "auto", max_shift = None, smooth_sigma = [0.0; 3]))]
    fn new(
        py_: Python<'_>,
        volume: PyReadonlyArray3<'_, f32>,
        upsample_factor: i64,
        normalization: &str,
        backend: &str,
        max_shift: Option<[f64; 3]>,
        smooth_sigma: [f64; 3],
    ) -> PyResult<Self> {
        let mut params =
            py(register_params(upsample_factor, normalization)?.with_smooth_sigma(smooth_sigma))?;
        if let Some(m) = max_shift {
            params = py(params.with_max_shift(m))?;
        }
        let choice = Choice::parse(backend)?;
        let volume = volume.as_array().to_owned();
        let id = next_id();
        let cpu = py_.detach(|| {
            py(engine::select(choice).and_then(|gpu| match gpu {
                Some(mut gpu) => {
                    gpu.with_reference(id, volume.view(), &params)?;
                    Ok(None)
                }
                None => {
                    let mut b = CpuBackend::new();
                    let handle = b.set_reference(volume.view(), &params)?;
                    Ok(Some(Mutex::new((b, handle))))
                }
            }))
        })?;
        Ok(Reference {
            volume,
            params,
            backend: choice,
            id,
            cpu,
        })
    }

    /// `(shift, error, phasediff)` registering `volume` onto the reference.
    fn register(
        &self,
        py_: Python<'_>,
        volume: PyReadonlyArray3<'_, f32>,
    ) -> PyResult<([f64; 3], f64, f64)> {
        let v = volume.as_array();
        py(self.check_shape("volume", v.shape()))?;
        let r = py_.detach(|| py(self.with(|b, h| b.register(&h, v))))?;
        Ok((r.shift, r.error, r.phasediff))
    }

    /// A copy of the reference volume (the object's own stays as transformed).
    #[getter]
    fn volume<'py>(&self, py_: Python<'py>) -> Bound<'py, PyArray3<f32>> {
        self.volume.clone().into_pyarray(py_)
    }

    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        self.volume.dim()
    }

    #[getter]
    fn upsample_factor(&self) -> u32 {
        self.params.upsample_factor
    }

    #[getter]
    fn normalization(&self) -> &'static str {
        self.params.normalization.name()
    }

    /// The backend asked for (`'auto'`, `'cpu'`, `'gpu'`), and the one in use.
    #[getter]
    fn backend(&self) -> (&'static str, &'static str) {
        (
            self.backend.name(),
            if self.cpu.is_some() { "cpu" } else { "gpu" },
        )
    }

    fn __reduce__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py_ = slf.py();
        let this = slf.get();
        let args = (
            this.volume.clone().into_pyarray(py_),
            this.params.upsample_factor,
            this.params.normalization.name(),
            this.backend.name(),
            this.params.max_shift,
            this.params.smooth_sigma,
        );
        PyTuple::new(
            py_,
            [
                slf.get_type().into_any(),
                args.into_pyobject(py_)?.into_any(),
            ],
        )
    }

    fn __repr__(&self) -> String {
        let (z, y, x) = self.volume.dim();
        format!(
            "Reference(shape=({z}, {y}, {x}), upsample_factor={}, normalization={:?}, backend={:?}, max_shift={}, smooth_sigma={})",
            self.params.upsample_factor,
            self.params.normalization.name(),
            self.backend.name(),
            self.params
                .max_shift
                .map_or("None".to_string(), |m| format!("({}, {}, {})", m[0], m[1], m[2])),
            {
                let s = self.params.smooth_sigma;
                format!("({}, {}, {})", s[0], s[1], s[2])
            }
        )
    }
}

#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn block_pass<'py>(
    py_: Python<'py>,
    block: PyReadonlyArray4<'py, f32>,
    reference: Option<&Reference>,
    median: Option<([usize; 3], String, f32)>,
    order: u32,
    shift_mode: &str,
    shift_cval: f32,
    register_raw: bool,
    backend: &str,
    extras: &mut Extras,
) -> PyResult<(
    Bound<'py, PyArray4<f32>>,
    Bound<'py, PyArray2<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
)> {
    let median = match median {
        Some((size, m, cval)) => Some(py(MedianParams::new(size, mode("median_mode", &m)?, cval))?),
        None => None,
    };
    let shift = py(ShiftParams::new(
        order,
        mode("shift_mode", shift_mode)?,
        shift_cval,
    ))?;
    let choice = Choice::parse(backend)?;
    let block = block.as_array();
    if let Some(r) = reference {
        py(r.check_shape("block", block.shape()))?;
    }
    let keep_filtered = extras.qc.is_some() || extras.filtered.is_some();
    let plan = |register| FramePlan {
        median,
        register,
        register_on_raw: register_raw,
        shift,
        accumulate: None,
        // QC compares each frame before its shift (the filtered volume when there is a median), and
        // a saved stage may be the filtered volumes.
        keep_filtered,
    };
    let (volumes, regs) = py_.detach(|| {
        py(match reference {
            Some(r) => {
                r.with(|b, h| first_pass(b, block, &plan(Some(h)), Some(r.volume.view()), extras))
            }
            None => with_backend(choice, |b| first_pass(b, block, &plan(None), None, extras)),
        })
    })?;
    let t = regs.len();
    let mut shifts = Array2::<f64>::from_elem((t, 3), f64::NAN);
    let (mut error, mut phasediff) = (
        Array1::from_elem(t, f64::NAN),
        Array1::from_elem(t, f64::NAN),
    );
    for (i, r) in regs.iter().enumerate() {
        if let Some(r) = r {
            shifts.row_mut(i).assign(&Array1::from(r.shift.to_vec()));
            error[i] = r.error;
            phasediff[i] = r.phasediff;
        }
    }
    Ok((
        volumes.into_pyarray(py_),
        shifts.into_pyarray(py_),
        error.into_pyarray(py_),
        phasediff.into_pyarray(py_),
    ))
}

/// `process_stream` over the block's volumes, collected; in `extras`, what the dask front end also
/// keeps when asked: the CLI's per-frame QC of each volume before and after its shift (`gpuprep_pipeline::qc`:
/// the correlations with `reference` and the running projections) and the filtered volumes (a saved
/// stage). Both need `plan.keep_filtered` when there is a median.
fn first_pass(
    b: &mut dyn Backend,
    block: ArrayView4<f32>,
    plan: &FramePlan,
    reference: Option<ArrayView3<f32>>,
    extras: &mut Extras,
) -> Result<(Array4<f32>, Vec<Option<Registration>>)> {
    let mut out = Array4::<f32>::zeros(block.raw_dim());
    let mut regs = Vec::with_capacity(block.dim().0);
    if b.streams_ahead() {
        let mut frames = block.axis_iter(Axis(0)).map(|v| Ok(v.to_owned()));
        let mut t = 0;
        b.process_stream(plan, &mut frames, &mut |o| {
            let raw = block.index_axis(Axis(0), t);
            extras.keep(t, raw, o.filtered.as_ref(), o.volume.view(), reference);
            out.index_axis_mut(Axis(0), t).assign(&o.volume);
            regs.push(o.registration);
            t += 1;
            Ok(())
        })?;
    } else {
        // The block's own volumes in, the shifted ones written into `out`: no volume-sized copies.
        for t in 0..block.dim().0 {
            let raw = block.index_axis(Axis(0), t);
            let o = b.process_frame_into(raw, plan, out.index_axis_mut(Axis(0), t))?;
            extras.keep(
                t,
                raw,
                o.filtered.as_ref(),
                out.index_axis(Axis(0), t),
                reference,
            );
            regs.push(o.registration);
        }
    }
    Ok((out, regs))
}

/// What `process_block` keeps besides the volumes and registrations, when asked.
struct Extras {
    qc: Option<BlockQc>,
    filtered: Option<Array4<f32>>,
}

impl Extras {
    /// What is kept of frame `t` (`raw`, its `filtered` volume when there is a median, `after` its
    /// shift): its QC against `reference`, comparing the frame before its shift (the filtered volume
    /// when there is one) and after it; its filtered volume.
    fn keep(
        &mut self,
        t: usize,
        raw: ArrayView3<f32>,
        filtered: Option<&Array3<f32>>,
        after: ArrayView3<f32>,
        reference: Option<ArrayView3<f32>>,
    ) {
        let before = filtered.map_or(raw, |f| f.view());
        if let (Some(qc), Some(reference)) = (self.qc.as_mut(), reference) {
            qc.correlation_before
                .push(gpuprep_pipeline::qc::correlation(before, reference));
            qc.correlation_after
                .push(gpuprep_pipeline::qc::correlation(after, reference));
            qc.projections.add(before, after);
        }
        if let (Some(kept), Some(f)) = (self.filtered.as_mut(), filtered) {
            kept.index_axis_mut(Axis(0), t).assign(f);
        }
    }
}

/// A block's QC as `gpuprep run` computes it per frame.
struct BlockQc {
    correlation_before: Vec<f64>,
    correlation_after: Vec<f64>,
    projections: gpuprep_pipeline::qc::Projections,
}

/// The first pass over a (t, z, y, x) float32 block, as `gpuprep run` does it per timepoint: median
/// filter, registration against `reference`, shift. Returns the volumes, the (t, 3) shifts, the
/// per-timepoint error and phasediff (NaN columns without registration), and a dict of what the dask
/// front end also keeps: with `qc` (and a reference) the registration's QC of each frame,
/// `correlation_before`, `correlation_after` (t,) and `projections`: per axis (z, y, x) the running sums
/// (f64) and maxima (f32) of the frames before and after their shift, `(sum_before, sum_after,
/// max_before, max_after)`, merged across blocks by the caller (sums add; maxima by `fmax`, NaN being a
/// maximum over no frame); with `filtered` (and a median) the filtered volumes, `filtered` (t, z, y, x).
#[pyfunction]
#[pyo3(signature = (block, reference, median, order, shift_mode, shift_cval, register_raw, backend, qc=false, filtered=false))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn process_block<'py>(
    py_: Python<'py>,
    block: PyReadonlyArray4<'py, f32>,
    reference: Option<&Reference>,
    median: Option<([usize; 3], String, f32)>,
    order: u32,
    shift_mode: &str,
    shift_cval: f32,
    register_raw: bool,
    backend: &str,
    qc: bool,
    filtered: bool,
) -> PyResult<(
    Bound<'py, PyArray4<f32>>,
    Bound<'py, PyArray2<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, pyo3::types::PyDict>,
)> {
    let mut extras = Extras {
        qc: reference.filter(|_| qc).map(|r| {
            let (z, y, x) = r.volume.dim();
            BlockQc {
                correlation_before: Vec::new(),
                correlation_after: Vec::new(),
                projections: gpuprep_pipeline::qc::Projections::new([z, y, x]),
            }
        }),
        filtered: (filtered && median.is_some()).then(|| Array4::zeros(block.as_array().raw_dim())),
    };
    let (v, s, e, p) = block_pass(
        py_,
        block,
        reference,
        median,
        order,
        shift_mode,
        shift_cval,
        register_raw,
        backend,
        &mut extras,
    )?;
    let d = pyo3::types::PyDict::new(py_);
    if let Some(qc) = extras.qc {
        d.set_item(
            "correlation_before",
            Array1::from(qc.correlation_before).into_pyarray(py_),
        )?;
        d.set_item(
            "correlation_after",
            Array1::from(qc.correlation_after).into_pyarray(py_),
        )?;
        let mut axes = Vec::new();
        for axis in 0..3 {
            let (sb, mb) = qc.projections.parts(false, axis);
            let (sa, ma) = qc.projections.parts(true, axis);
            axes.push((
                sb.clone().into_pyarray(py_),
                sa.clone().into_pyarray(py_),
                mb.clone().into_pyarray(py_),
                ma.clone().into_pyarray(py_),
            ));
        }
        d.set_item("projections", axes)?;
    }
    if let Some(f) = extras.filtered {
        d.set_item("filtered", f.into_pyarray(py_))?;
    }
    Ok((v, s, e, p, d))
}

/// A float64 (z, y, x) numpy array.
type F64Volume<'py> = Bound<'py, PyArray3<f64>>;

/// Per-voxel running mean and M2 (sum of squared deviations) in float64 over the volumes given to
/// `update`, mergeable with another's (`merge`: Chan et al.'s pairwise formula, equal to one pass to
/// float64 rounding) and picklable, for z-scores computed block by block.
#[pyclass(module = "gpuprep._gpuprep")]
pub struct Moments {
    acc: Accumulator,
}

/// Arrays of dropped `Moments`, reused by the next ones of their shape: a fresh volume-sized buffer is
/// faulted in a page at a time on first touch, which on the VMs this runs on costs about four times
/// zero-filling a recycled one (a 4-volume block's moments of 64 × 256 × 256: ~60 ms against ~15 ms
/// for the whole update), and the dask front end makes one per block and per merge. At most
/// `POOL_BYTES` are held (larger arrays are never kept), and `Moments.release_pool()` empties it
/// (the dask front end calls it on every worker at the end of a run).
static POOL: std::sync::Mutex<Vec<Array3<f64>>> = std::sync::Mutex::new(Vec::new());
const POOL_BYTES: usize = 128 << 20;

/// A recycled array of `shape` (contents arbitrary), if the pool has one.
fn pooled(shape: (usize, usize, usize)) -> Option<Array3<f64>> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let i = pool.iter().position(|a| a.dim() == shape)?;
    Some(pool.swap_remove(i))
}

/// Two arrays of `shape` for an accumulator: recycled where the pool has them, else fresh zeros.
fn pooled_pair(shape: (usize, usize, usize)) -> (Array3<f64>, Array3<f64>) {
    let one = || pooled(shape).unwrap_or_else(|| Array3::zeros(shape));
    (one(), one())
}

/// Returns `a` to the pool (oldest arrays dropped past `POOL_BYTES`).
fn recycle(a: Array3<f64>) {
    let bytes = |a: &Array3<f64>| a.len() * std::mem::size_of::<f64>();
    if a.is_empty() || bytes(&a) > POOL_BYTES / 2 || !a.is_standard_layout() {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.push(a);
    while pool.iter().map(bytes).sum::<usize>() > POOL_BYTES {
        pool.remove(0);
    }
}

impl Drop for Moments {
    fn drop(&mut self) {
        let acc = std::mem::replace(&mut self.acc, Accumulator::new([0, 0, 0]));
        let (_, mean, m2) = acc.into_parts();
        recycle(mean);
        recycle(m2);
    }
}

/// Volumes in float32 or float64, one (z, y, x) or a (t, z, y, x) block.
#[derive(FromPyObject)]
pub enum Volumes<'py> {
    F32x3(PyReadonlyArray3<'py, f32>),
    F64x3(PyReadonlyArray3<'py, f64>),
    F32x4(PyReadonlyArray4<'py, f32>),
    F64x4(PyReadonlyArray4<'py, f64>),
}

/// `a`, or a copy of it when its data is not aligned for its dtype (an array dask.distributed
/// deserialised from a byte buffer can be): views of it are read in place, which needs alignment.
pub(crate) fn aligned<'py>(a: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let is_aligned = match a.getattr("flags") {
        Ok(flags) => flags.getattr("aligned")?.extract::<bool>()?,
        Err(_) => true, // not an array: extraction reports what it is
    };
    if is_aligned {
        Ok(a.clone())
    } else {
        a.call_method0("copy")
    }
}

fn add_block<T: Copy + Into<f64> + Send + Sync>(
    acc: &mut Accumulator,
    block: ArrayView4<T>,
) -> Result<()> {
    acc.add_block(block)
}

fn add_one<T: Copy + Into<f64> + Sync>(acc: &mut Accumulator, v: ArrayView3<T>) {
    acc.add(v);
}

#[pymethods]
impl Moments {
    /// Empty moments of volumes of `shape` (z, y, x).
    #[new]
    fn new(shape: [usize; 3]) -> Self {
        let acc = match pooled((shape[0], shape[1], shape[2])) {
            Some(mean) => {
                let m2 = pooled(mean.dim()).unwrap_or_else(|| Array3::zeros(mean.dim()));
                Accumulator::new_in(mean, m2)
            }
            // Fresh memory is zero already: no fill.
            None => Accumulator::new(shape),
        };
        Moments { acc }
    }

    /// Adds a volume, or each volume of a (t, z, y, x) block.
    fn update(&mut self, py_: Python<'_>, volumes: &Bound<'_, PyAny>) -> PyResult<()> {
        // numpy.ma arrays convert to their data with the mask dropped: refuse rather than use masked values.
        let masked = py_.import("numpy.ma")?.getattr("MaskedArray")?;
        if volumes.is_instance(&masked)? {
            return Err(PyNotImplementedError::new_err(
                "volumes: masked arrays are not supported; fill or drop the masked values first",
            ));
        }
        let volumes = aligned(volumes)?;
        let volumes: Volumes<'_> = volumes.extract()?;
        let shape = self.shape();
        let check = |s: &[usize]| -> PyResult<()> {
            if s[s.len() - 3..] != [shape.0, shape.1, shape.2] {
                return Err(PyValueError::new_err(format!(
                    "volumes: shape {s:?} does not end in the moments' volume shape {shape:?}"
                )));
            }
            Ok(())
        };
        let acc = &mut self.acc;
        match volumes {
            Volumes::F32x3(v) => {
                let v = v.as_array();
                check(v.shape())?;
                py_.detach(|| add_one(acc, v));
            }
            Volumes::F64x3(v) => {
                let v = v.as_array();
                check(v.shape())?;
                py_.detach(|| add_one(acc, v));
            }
            Volumes::F32x4(v) => {
                let v = v.as_array();
                check(v.shape())?;
                py(py_.detach(|| add_block(acc, v)))?;
            }
            Volumes::F64x4(v) => {
                let v = v.as_array();
                check(v.shape())?;
                py(py_.detach(|| add_block(acc, v)))?;
            }
        }
        Ok(())
    }

    /// Folds `other` into these moments (in place) and returns them.
    fn merge<'py>(
        mut slf: PyRefMut<'py, Self>,
        other: PyRef<'py, Moments>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let py_ = slf.py();
        let acc = &mut slf.acc;
        let o = &other.acc;
        py_.detach(|| py(acc.merge(o)))?;
        Ok(slf)
    }

    /// These moments and `other`'s merged into new Moments (Chan et al.), neither changed: `copy()`
    /// then `merge(other)`, bit for bit, in one pass.
    fn merged(&self, py_: Python<'_>, other: PyRef<'_, Moments>) -> PyResult<Moments> {
        let (mean, m2) = pooled_pair(self.acc.parts().1.dim());
        let (a, b) = (&self.acc, &other.acc);
        Ok(Moments {
            acc: py(py_.detach(|| a.merged_in(b, mean, m2)))?,
        })
    }

    /// `(count, mean, m2)` of planes `z0..z1` as numpy arrays (one copy): the piece of a partial that
    /// one task of a reduce-scatter merges, sent as plain arrays (dask moves those without pickling
    /// copies) and merged by `merged_stats` as they arrive.
    fn slab_parts<'py>(
        &self,
        py_: Python<'py>,
        z0: usize,
        z1: usize,
    ) -> PyResult<(u64, F64Volume<'py>, F64Volume<'py>)> {
        let (count, mean, m2) = self.acc.parts();
        let nz = mean.dim().0;
        if z0 >= z1 || z1 > nz {
            return Err(PyValueError::new_err(format!(
                "slab {z0}..{z1}: expected 0 <= z0 < z1 <= {nz} (the moments' planes)"
            )));
        }
        let take = |a: &Array3<f64>| a.slice(ndarray::s![z0..z1, .., ..]).to_owned();
        Ok((
            count,
            take(mean).into_pyarray(py_),
            take(m2).into_pyarray(py_),
        ))
    }

    /// Frees the arrays kept for reuse from dropped Moments; returns the bytes freed.
    #[staticmethod]
    fn release_pool() -> usize {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = pool
            .iter()
            .map(|a| a.len() * std::mem::size_of::<f64>())
            .sum();
        pool.clear();
        bytes
    }

    /// A copy.
    fn copy(&self) -> Moments {
        let (mean, m2) = pooled_pair(self.acc.parts().1.dim());
        Moments {
            acc: self.acc.copy_in(mean, m2),
        }
    }

    /// `(mean, std)` as float64 (z, y, x) arrays, the standard deviation with `ddof`: numpy's
    /// `mean(axis=0)` and `std(axis=0, ddof=ddof)` of the volumes added, NaN where count <= ddof.
    #[pyo3(signature = (ddof = 0))]
    fn finalize<'py>(
        &self,
        py_: Python<'py>,
        ddof: u32,
    ) -> (Bound<'py, PyArray3<f64>>, Bound<'py, PyArray3<f64>>) {
        let m = py_.detach(|| {
            self.acc.moments(&ZscoreParams {
                ddof,
                ..Default::default()
            })
        });
        let (mean, std) = m.into_parts();
        (mean.into_pyarray(py_), std.into_pyarray(py_))
    }

    #[getter]
    fn count(&self) -> u64 {
        self.acc.count()
    }

    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        self.acc.parts().1.dim()
    }

    /// The running mean (a copy).
    #[getter]
    fn mean<'py>(&self, py_: Python<'py>) -> Bound<'py, PyArray3<f64>> {
        self.acc.parts().1.clone().into_pyarray(py_)
    }

    /// The running sum of squared deviations (a copy).
    #[getter]
    fn m2<'py>(&self, py_: Python<'py>) -> Bound<'py, PyArray3<f64>> {
        self.acc.parts().2.clone().into_pyarray(py_)
    }

    /// Moments from `count`, `mean` and `m2` (what pickling stores).
    #[staticmethod]
    fn from_parts(count: u64, mean: &Bound<'_, PyAny>, m2: &Bound<'_, PyAny>) -> PyResult<Moments> {
        let (mean, m2) = (aligned(mean)?, aligned(m2)?);
        let mean: PyReadonlyArray3<'_, f64> = mean.extract()?;
        let m2: PyReadonlyArray3<'_, f64> = m2.extract()?;
        let (mean, m2) = (mean.as_array(), m2.as_array());
        let (mut own_mean, mut own_m2) = if mean.dim() == m2.dim() {
            pooled_pair(mean.dim())
        } else {
            (Array3::zeros(mean.dim()), Array3::zeros(m2.dim()))
        };
        own_mean.assign(&mean);
        own_m2.assign(&m2);
        Ok(Moments {
            acc: py(Accumulator::from_parts(count, own_mean, own_m2))?,
        })
    }

    fn __reduce__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py_ = slf.py();
        let this = slf.borrow();
        let ctor = slf.get_type().getattr("from_parts")?;
        let args = (this.count(), this.mean(py_), this.m2(py_));
        PyTuple::new(py_, [ctor, args.into_pyobject(py_)?.into_any()])
    }

    fn __repr__(&self) -> String {
        let (z, y, x) = self.shape();
        format!("Moments(shape=({z}, {y}, {x}), count={})", self.acc.count())
    }
}

/// `(mean, std)` (float64, std with `ddof`) of partial moments `[(count, mean, m2), ...]` of the same
/// voxels merged in order (Chan et al.): `Moments.merge` of each into a copy of the first, then
/// `finalize`, bit for bit, in one pass with the GIL released.
#[pyfunction]
#[pyo3(signature = (parts, ddof = 0))]
pub fn merged_stats<'py>(
    py_: Python<'py>,
    parts: Vec<(u64, Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    ddof: u32,
) -> PyResult<(F64Volume<'py>, F64Volume<'py>)> {
    let arrays = parts
        .iter()
        .map(|(c, m, m2)| -> PyResult<_> {
            let m: PyReadonlyArray3<'py, f64> = aligned(m)?.extract()?;
            let m2: PyReadonlyArray3<'py, f64> = aligned(m2)?.extract()?;
            Ok((*c, m, m2))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let views: Vec<_> = arrays
        .iter()
        .map(|(c, m, m2)| (*c, m.as_array(), m2.as_array()))
        .collect();
    let (mean, std) = py(py_.detach(|| gpuprep_core::zscore::merged_stats(&views, ddof)))?;
    Ok((mean.into_pyarray(py_), std.into_pyarray(py_)))
}

/// The CLI's flag for suspicious frames (`gpuprep_pipeline::qc::suspicious`) over a whole run's
/// (t, 3) shifts, (t,) errors and correlations after registration: an empty frame (error NaN), a
/// shift at the `max_shift` bound, or a correlation far below the median.
#[pyfunction]
#[pyo3(signature = (shifts, error, correlation_after, max_shift=None))]
pub fn qc_suspicious<'py>(
    py_: Python<'py>,
    shifts: numpy::PyReadonlyArray2<'py, f64>,
    error: numpy::PyReadonlyArray1<'py, f64>,
    correlation_after: numpy::PyReadonlyArray1<'py, f64>,
    max_shift: Option<[f64; 3]>,
) -> PyResult<Bound<'py, PyArray1<bool>>> {
    let (shifts, error, after) = (
        shifts.as_array(),
        error.as_array(),
        correlation_after.as_array(),
    );
    let t = error.len();
    if shifts.dim() != (t, 3) || after.len() != t {
        return Err(PyValueError::new_err(format!(
            "shifts {:?}, error ({t},), correlation_after ({},): expected (t, 3), (t,), (t,)",
            shifts.dim(),
            after.len()
        )));
    }
    let regs: Vec<Registration> = (0..t)
        .map(|i| Registration {
            shift: [shifts[(i, 0)], shifts[(i, 1)], shifts[(i, 2)]],
            error: error[i],
            phasediff: 0.0,
        })
        .collect();
    let after: Vec<f64> = after.to_vec();
    let flags = gpuprep_pipeline::qc::suspicious(&regs, max_shift, &after);
    Ok(Array1::from(flags).into_pyarray(py_))
}
