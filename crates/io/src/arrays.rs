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

fn open_h5(path: &Path) -> Result<hdf5::File> {
    hdf5::File::open(path).map_err(|e| {
        input_err(
            path,
            format!("cannot be opened as HDF5 ({})", crate::hdf5_cause(&e)),
        )
    })
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
        let file = open_h5(path)?;
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

/// Whether the output at `path` has an array `name` (a dataset in HDF5, an array node in Zarr); an
/// output that cannot be opened is an error naming it.
pub fn exists(path: &Path, name: &str) -> Result<bool> {
    let name = name.trim_matches('/');
    if is_zarr(path) {
        // Zarr v3 nodes are directories holding zarr.json; gpuprep writes no v2 outputs.
        if !path.join("zarr.json").is_file() {
            return Err(input_err(
                path,
                "is not a Zarr v3 store (no zarr.json): expected a gpuprep output".into(),
            ));
        }
        Ok(path.join(name).join("zarr.json").is_file())
    } else {
        let file = open_h5(path)?;
        Ok(file.link_exists(name))
    }
}

/// The output's root attributes (the run's parameters, inputs and version) as display strings,
/// sorted by name: strings as they are, numbers in Rust's shortest form, string lists joined by ", ".
pub fn read_attributes(path: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if is_zarr(path) {
        let meta = path.join("zarr.json");
        let text = std::fs::read_to_string(&meta)
            .map_err(|e| input_err(&meta, format!("cannot be read ({e})")))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| input_err(&meta, format!("is not JSON ({e})")))?;
        if let Some(attrs) = json.get("attributes").and_then(|a| a.as_object()) {
            for (k, v) in attrs {
                let shown = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => items
                        .iter()
                        .filter_map(|i| i.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    // Metadata of other conventions (OME's multiscales) is not a run parameter.
                    serde_json::Value::Object(_) => continue,
                    other => other.to_string(),
                };
                out.push((k.clone(), shown));
            }
        }
    } else {
        use hdf5::types::{TypeDescriptor, VarLenUnicode};
        let file = open_h5(path)?;
        let names = file
            .attr_names()
            .map_err(|e| input_err(path, format!("attributes: {}", crate::hdf5_cause(&e))))?;
        for name in names {
            let attr = file.attr(&name).map_err(|e| {
                input_err(path, format!("attribute {name}: {}", crate::hdf5_cause(&e)))
            })?;
            let desc = attr.dtype().and_then(|t| t.to_descriptor());
            let scalar = attr.ndim() == 0;
            let shown = match desc {
                Ok(TypeDescriptor::VarLenUnicode) if scalar => {
                    attr.read_scalar::<VarLenUnicode>().map(|s| s.to_string())
                }
                Ok(TypeDescriptor::VarLenUnicode) => attr
                    .read_raw::<VarLenUnicode>()
                    .map(|v| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
                Ok(TypeDescriptor::Float(_)) if scalar => {
                    attr.read_scalar::<f64>().map(|v| v.to_string())
                }
                Ok(TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)) if scalar => {
                    attr.read_scalar::<i64>().map(|v| v.to_string())
                }
                Ok(TypeDescriptor::Float(_)) => attr
                    .read_raw::<f64>()
                    .map(|v| v.iter().map(f64::to_string).collect::<Vec<_>>().join(", ")),
                // Attributes of other types (none that gpuprep writes) are left out of the listing.
                _ => continue,
            }
            .map_err(|e| input_err(path, format!("attribute {name}: {}", crate::hdf5_cause(&e))))?;
            out.push((name, shown));
        }
    }
    out.sort();
    Ok(out)
}
