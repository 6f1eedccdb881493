//! Which backend computes a call (`backend='auto'|'cpu'|'gpu'`), and the process's one GPU device.
//!
//! The GPU backend is opened on first use and kept for the life of the process: opening a device
//! costs tens to hundreds of milliseconds, and its pipelines are compiled once. It sits behind a
//! mutex (one queue; calls from several Python threads take turns), which is only ever taken with
//! the GIL released, so a thread waiting for the device never blocks the interpreter.

use crate::errors::py;
use gpuprep_core::backend::{Backend, Reference};
use gpuprep_core::params::RegisterParams;
use gpuprep_core::{Error, Result};
use gpuprep_gpu::{Api, GpuBackend};
use ndarray::ArrayView3;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::{Mutex, MutexGuard};

/// A caller's choice of backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// A hardware GPU when there is one, else the CPU (software adapters are slower than the CPU).
    Auto,
    Cpu,
    /// Any GPU adapter, software ones included; an error when there is none.
    Gpu,
}

impl Choice {
    pub fn name(self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Cpu => "cpu",
            Choice::Gpu => "gpu",
        }
    }

    pub fn parse(s: &str) -> PyResult<Choice> {
        match s {
            "auto" => Ok(Choice::Auto),
            "cpu" => Ok(Choice::Cpu),
            "gpu" => Ok(Choice::Gpu),
            _ => Err(PyValueError::new_err(format!(
                "backend: unknown backend {s:?}; expected 'auto', 'cpu' or 'gpu'"
            ))),
        }
    }
}

/// The process's GPU: not yet opened, opened, or the reason it could not be (kept, so `auto` does
/// not retry a missing device on every call). `software` marks lavapipe-like adapters.
enum Device {
    Unopened,
    Open {
        backend: Box<GpuBackend>,
        software: bool,
        /// The reference the backend holds: the owning `Reference` object's number and the handle.
        reference: Option<(u64, Reference)>,
    },
    Failed(String),
    /// A setting of the user's is wrong (e.g. `GPUPREP_GPU_ZSCORE`): an error under `'auto'` too,
    /// not a missing GPU to fall back from. Its name and message.
    Invalid(String, String),
}

static DEVICE: Mutex<Device> = Mutex::new(Device::Unopened);

/// The GPU backend, opened once. Call without the GIL.
pub struct Gpu(MutexGuard<'static, Device>);

impl Gpu {
    pub fn backend(&mut self) -> &mut GpuBackend {
        self.parts().0
    }

    /// The backend with the reference of owner `id` set (from `volume` when it holds another
    /// owner's, which costs one transform), and its handle.
    pub fn with_reference(
        &mut self,
        id: u64,
        volume: ArrayView3<f32>,
        params: &RegisterParams,
    ) -> Result<(&mut GpuBackend, Reference)> {
        let (backend, current) = self.parts();
        let handle = match current {
            Some((owner, handle)) if *owner == id => *handle,
            _ => {
                *current = None;
                let handle = backend.set_reference(volume, params)?;
                *current = Some((id, handle));
                handle
            }
        };
        Ok((backend, handle))
    }

    fn parts(&mut self) -> (&mut GpuBackend, &mut Option<(u64, Reference)>) {
        match &mut *self.0 {
            Device::Open {
                backend, reference, ..
            } => (backend, reference),
            _ => unreachable!("a Gpu guard exists only for an open device"),
        }
    }
}

fn lock() -> MutexGuard<'static, Device> {
    // A panic while holding the device leaves no half-made state the next caller could misuse:
    // each call sets up what it needs.
    DEVICE.lock().unwrap_or_else(|p| p.into_inner())
}

fn open(device: &mut Device) {
    if let Device::Unopened = device {
        *device = match GpuBackend::new(Api::default()) {
            Ok(backend) => Device::Open {
                software: backend.is_software(),
                backend: Box::new(backend),
                reference: None,
            },
            Err(Error::InvalidParameter { name, message }) => Device::Invalid(name, message),
            Err(e) => Device::Failed(e.to_string()),
        };
    }
}

/// The GPU for `choice`, or `None` for the CPU. Call without the GIL.
pub fn select(choice: Choice) -> Result<Option<Gpu>> {
    if choice == Choice::Cpu {
        return Ok(None);
    }
    let mut device = lock();
    open(&mut device);
    match (&*device, choice) {
        (Device::Open { software: true, .. }, Choice::Auto) => Ok(None),
        (Device::Open { .. }, _) => Ok(Some(Gpu(device))),
        (Device::Failed(_), Choice::Auto) => Ok(None),
        (Device::Failed(why), _) => Err(Error::Gpu(why.clone())),
        (Device::Invalid(name, message), _) => Err(Error::InvalidParameter {
            name: name.clone(),
            message: message.clone(),
        }),
        (Device::Unopened, _) => unreachable!("opened above"),
    }
}

/// What `backend=` resolves to on this machine: `"cpu"` or the GPU's description.
#[pyfunction]
#[pyo3(signature = (backend = "auto"))]
pub fn backend_name(py_: Python<'_>, backend: &str) -> PyResult<String> {
    let choice = Choice::parse(backend)?;
    py_.detach(|| {
        py(select(choice)).map(|g| match g {
            Some(mut g) => g.backend().describe(),
            None => "cpu".to_string(),
        })
    })
}
