//! `gpuprep.report`: the registration QC report of a finished output (`gpuprep report`).

use crate::errors::py;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::PathBuf;

/// Writes the QC report of `output` to `path` (default: beside the output) as `format` ("html",
/// "png"; default from the path's extension, else html); returns the path written.
#[pyfunction]
#[pyo3(signature = (output, path=None, format=None, force=false))]
pub fn report(
    py_: Python<'_>,
    output: PathBuf,
    path: Option<PathBuf>,
    format: Option<&str>,
    force: bool,
) -> PyResult<PathBuf> {
    let format = match format {
        None => path.as_deref().map_or(
            gpuprep_report::Format::Html,
            gpuprep_report::Format::from_path,
        ),
        Some(f) => gpuprep_report::Format::ALL
            .into_iter()
            .find(|k| k.name() == f)
            .ok_or_else(|| {
                PyValueError::new_err(format!("format: got {f:?}; expected 'html' or 'png'"))
            })?,
    };
    let path = path.unwrap_or_else(|| gpuprep_report::default_path(&output, format));
    if path.exists() && !force {
        return Err(pyo3::exceptions::PyFileExistsError::new_err(format!(
            "{}: already exists; pass force=True to replace it",
            path.display()
        )));
    }
    py_.detach(|| py(gpuprep_report::write(&output, &path, format, force)))
}
