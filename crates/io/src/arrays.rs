//! Side arrays of a finished gpuprep output read back by name (`/shifts` for `--shifts`, the QC
//! arrays for `gpuprep report`), from either output format.

use gpuprep_core::error::{Error, Result};
use ndarray::ArrayD;
use std::path::Path;
use std::sync::Arc;
use zarrs::array::{Array, ElementOwned};
use zarrs::filesystem::FilesystemStore;

fn input_err(path: &Path, message: String) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        message,
    }
}

/// Whether `path` is a Zarr store (a directory) rather than an HDF5 file.
fn is_zarr(path: &Path) -> bool {
    path.is_dir()
}

fn read<T: hdf5::H5Type + ElementOwned + Clone>(path: &Path, name: &str) -> Result<ArrayD<T>> {
    if is_zarr(path) {
        let store = Arc::new(
            FilesystemStore::new(path)
                .map_err(|e| input_err(path, format!("cannot be opened as a Zarr store ({e})")))?,
        );
        let node = format!("/{}", name.trim_matches('/'));
        let array = Array::open(store, &node).map_err(|e| {
            input_err(
                path,
                format!("has no array {node} ({})", crate::one_line(&e.to_string())),
            )
        })?;
        let shape: Vec<usize> = array.shape().iter().map(|&n| n as usize).collect();
        let ranges: Vec<std::ops::Range<u64>> = array.shape().iter().map(|&n| 0..n).collect();
        let values = array
            .retrieve_array_subset::<Vec<T>>(&ranges.as_slice())
            .map_err(|e| {
                input_err(
                    path,
                    format!("reading {node}: {}", crate::one_line(&e.to_string())),
                )
            })?;
        ArrayD::from_shape_vec(shape, values)
            .map_err(|e| input_err(path, format!("reading {node}: {e}")))
    } else {
        let file = hdf5::File::open(path).map_err(|e| {
            input_err(
                path,
                format!("cannot be opened as HDF5 ({})", crate::hdf5_cause(&e)),
            )
        })?;
        let ds = file
            .dataset(name)
            .map_err(|_| input_err(path, format!("has no dataset /{name}")))?;
        ds.read_dyn::<T>()
            .map_err(|e| input_err(path, format!("reading /{name}: {}", crate::hdf5_cause(&e))))
    }
}

/// The float64 array `name` of the output at `path` (HDF5 file or Zarr store).
pub fn read_f64(path: &Path, name: &str) -> Result<ArrayD<f64>> {
    read::<f64>(path, name)
}

/// The float32 array `name` of the output at `path` (HDF5 file or Zarr store).
pub fn read_f32(path: &Path, name: &str) -> Result<ArrayD<f32>> {
    read::<f32>(path, name)
}
