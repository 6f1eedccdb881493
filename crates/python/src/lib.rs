//! The `gpuprep._gpuprep` extension module: gpuprep's kernels and the whole job on numpy arrays.
//!
//! The Rust side takes float32 (z, y, x) volumes and validated parameters; the Python layer
//! (`python/gpuprep/__init__.py`) gives them scipy's and scikit-image's signatures, dtypes and
//! dimensions. Every call releases the GIL while Rust computes; arrays are borrowed, not copied, and
//! results are handed to numpy without a copy.

mod engine;
mod errors;
mod kernels;
mod report;
mod run;
mod source;
mod stream;

use pyo3::prelude::*;

#[pymodule]
fn _gpuprep(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(kernels::median_filter, m)?)?;
    m.add_function(wrap_pyfunction!(kernels::shift, m)?)?;
    m.add_function(wrap_pyfunction!(kernels::phase_cross_correlation, m)?)?;
    m.add_function(wrap_pyfunction!(kernels::zscore, m)?)?;
    m.add_function(wrap_pyfunction!(kernels::normalize, m)?)?;
    m.add_function(wrap_pyfunction!(engine::backend_name, m)?)?;
    m.add_function(wrap_pyfunction!(run::preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(run::validate_run, m)?)?;
    m.add_function(wrap_pyfunction!(stream::process_block, m)?)?;
    m.add_function(wrap_pyfunction!(stream::qc_suspicious, m)?)?;
    m.add_function(wrap_pyfunction!(report::report, m)?)?;
    m.add_function(wrap_pyfunction!(source::describe_input, m)?)?;
    m.add_function(wrap_pyfunction!(source::read_block, m)?)?;
    m.add_function(wrap_pyfunction!(source::write_zarr_block, m)?)?;
    m.add_function(wrap_pyfunction!(source::normalize_zarr_block, m)?)?;
    m.add_function(wrap_pyfunction!(source::write_zarr_volume, m)?)?;
    m.add_function(wrap_pyfunction!(stream::merged_stats, m)?)?;
    m.add_class::<stream::Reference>()?;
    m.add_class::<stream::Moments>()?;
    Ok(())
}
