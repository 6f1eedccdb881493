//! gpuprep's errors as Python exceptions, named in the caller's terms.

use gpuprep_core::Error;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

/// The Python keyword that supplies each parameter the libraries name in their errors, so
/// `median size: …` reads `median_size: …` as the CLI's reads `--median-size: …`.
const PARAMETER_KEYWORDS: &[(&str, &str)] = &[
    ("median size", "median_size"),
    ("boundary mode", "mode"),
    ("upsample factor", "upsample_factor"),
    ("normalization", "normalization"),
    ("spline order", "order"),
    ("reference", "reference"),
    ("reference range", "reference_mean"),
    ("saved stages", "save"),
    ("memory budget", "memory_budget"),
    ("sharding", "shard"),
    ("axes", "axes"),
    ("inputs", "inputs"),
    ("max shift", "max_shift"),
    ("smooth sigma", "smooth_sigma"),
    ("reference top", "reference_top"),
    ("disambiguation", "disambiguate"),
    ("shifts", "shifts"),
    ("channels to apply to", "apply_to_channels"),
    ("compression", "compression"),
    ("format", "format"),
    ("dataset", "dataset"),
];

/// A library error as the exception a Python user expects: bad parameters and data are
/// `ValueError` (a run refused for memory too: it names the parameter or input to change), files
/// and storage `OSError`, the device `RuntimeError`. The message is the CLI's one line, with keywords for flags.
pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::InvalidParameter { name, message } => {
            let name = PARAMETER_KEYWORDS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(name, |(_, k)| k.to_string());
            PyValueError::new_err(format!("{name}: {message}"))
        }
        e @ Error::Data(_) => PyValueError::new_err(e.to_string()),
        e @ (Error::Input { .. }
        | Error::Output { .. }
        | Error::Storage { .. }
        | Error::Io { .. }) => PyOSError::new_err(e.to_string()),
        e @ Error::Gpu(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

/// `r` with its error converted by `to_py`.
pub fn py<T>(r: gpuprep_core::Result<T>) -> pyo3::PyResult<T> {
    r.map_err(to_py)
}
