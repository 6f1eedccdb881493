//! gpuprep-cpu: the CPU backend, the production fallback and the reference the GPU path is tested against.
//!
//! One file per WGSL kernel, same names (`median3d`, `fft`, `cross_power`, `shift`), plus `register`
//! (the scikit-image algorithm around them) and `reference` (naive versions for tests). The z-score's
//! CPU twin (`zscore`) lives in gpuprep-core, as the GPU backend falls back to it; it is re-exported
//! here under its kernel's name. `zscore_f32` is the twin of the float32 z-score kernel, for tests.

pub mod cross_power;
pub mod fft;
pub mod median3d;
pub mod reference;
pub mod register;
pub mod shift;
pub use gpuprep_core::simd;
pub mod zscore_f32;

pub use gpuprep_core::zscore;

use gpuprep_core::backend::{
    check_out_shape, frame_into_by_stage, stale_handle, Accumulation, Backend, FrameParts,
    FramePlan, Moments, Reference,
};
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::{MedianParams, RegisterParams, Registration, ShiftParams, ZscoreParams};
use ndarray::{Array3, ArrayView3, ArrayViewMut3};

/// The CPU backend: rayon-parallel kernels on the host.
#[derive(Default)]
pub struct CpuBackend {
    /// The reference and the handle issued for it.
    registrar: Option<(Reference, register::Registrar)>,
    moments: Option<(Accumulation, zscore::Accumulator)>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn median3d(&mut self, vol: ArrayView3<f32>, p: &MedianParams) -> Result<Array3<f32>> {
        Ok(median3d::median3d(vol, p))
    }

    fn set_reference(
        &mut self,
        reference: ArrayView3<f32>,
        p: &RegisterParams,
    ) -> Result<Reference> {
        self.registrar = None;
        let r = register::Registrar::new(reference, p);
        if !r.reference_is_finite() {
            let max = reference
                .iter()
                .fold(0.0f64, |m, &v| m.max((v as f64).abs()));
            return Err(register::not_finite(
                "the reference volume's spectrum",
                Some(max),
            ));
        }
        let handle = Reference::issue(r.shape(), *p);
        self.registrar = Some((handle, r));
        Ok(handle)
    }

    fn register(&mut self, reference: &Reference, vol: ArrayView3<f32>) -> Result<Registration> {
        let r = match &self.registrar {
            Some((h, r)) if h == reference => r,
            _ => return Err(stale_handle("reference")),
        };
        let shape = [vol.dim().0, vol.dim().1, vol.dim().2];
        if shape != r.shape() {
            return Err(Error::Data(format!(
                "volume shape {shape:?} differs from the reference's {:?}",
                r.shape()
            )));
        }
        r.try_register(vol)
    }

    fn shift(
        &mut self,
        vol: ArrayView3<f32>,
        shift: [f64; 3],
        p: &ShiftParams,
    ) -> Result<Array3<f32>> {
        Ok(shift::shift3d(vol, shift, p))
    }

    fn shift_into(
        &mut self,
        vol: ArrayView3<f32>,
        shift: [f64; 3],
        p: &ShiftParams,
        mut out: ArrayViewMut3<f32>,
    ) -> Result<()> {
        check_out_shape(&vol, &out)?;
        if shift::writable_in_place(&vol, &out) {
            shift::shift3d_into(vol, shift, p, out);
        } else {
            out.assign(&shift::shift3d(vol, shift, p));
        }
        Ok(())
    }

    /// The stages one by one, the shift written straight into `out`.
    fn process_frame_into(
        &mut self,
        raw: ArrayView3<f32>,
        plan: &FramePlan,
        out: ArrayViewMut3<f32>,
    ) -> Result<FrameParts> {
        frame_into_by_stage(self, raw, plan, out)
    }

    fn reset_moments(&mut self, shape: [usize; 3]) -> Result<Accumulation> {
        let handle = Accumulation::issue(shape);
        self.moments = Some((handle, zscore::Accumulator::new(shape)));
        Ok(handle)
    }

    fn accumulate(&mut self, acc: &Accumulation, vol: ArrayView3<f32>) -> Result<()> {
        let a = match &mut self.moments {
            Some((h, a)) if h == acc => a,
            _ => return Err(stale_handle("accumulation")),
        };
        let shape = [vol.dim().0, vol.dim().1, vol.dim().2];
        if shape != acc.shape() {
            return Err(Error::Data(format!(
                "volume shape {shape:?} differs from the accumulator's {:?}",
                acc.shape()
            )));
        }
        a.add(vol);
        Ok(())
    }

    fn moments(&mut self, acc: &Accumulation, p: &ZscoreParams) -> Result<Moments> {
        match &self.moments {
            Some((h, a)) if h == acc => Ok(a.moments(p)),
            _ => Err(stale_handle("accumulation")),
        }
    }

    fn normalize(
        &mut self,
        vol: ArrayView3<f32>,
        moments: &Moments,
        p: &ZscoreParams,
    ) -> Result<Array3<f32>> {
        Ok(zscore::normalize(vol, moments, p))
    }
}
