//! Input files in the layouts gpuprep reads (one volume per file, or one 4-D dataset), written by
//! `gpuprep synth` and by tests: the only HDF5 writing outside the output sink.

use crate::{hdf5_error, source::first_line, Dtype};
use gpuprep_core::error::{Error, Result};
use ndarray::{s, Array3};
use std::path::{Path, PathBuf};

/// A volume in one of the element types gpuprep reads.
#[derive(Clone, Debug)]
pub enum TypedVolume {
    U8(Array3<u8>),
    U16(Array3<u16>),
    I16(Array3<i16>),
    I32(Array3<i32>),
    F32(Array3<f32>),
    F64(Array3<f64>),
}

/// Runs `$body` with `$arr` bound to the typed array inside `$v`.
macro_rules! with_typed {
    ($v:expr, |$arr:ident| $body:expr) => {
        match $v {
            TypedVolume::U8($arr) => $body,
            TypedVolume::U16($arr) => $body,
            TypedVolume::I16($arr) => $body,
            TypedVolume::I32($arr) => $body,
            TypedVolume::F32($arr) => $body,
            TypedVolume::F64($arr) => $body,
        }
    };
}

fn create(path: &Path) -> Result<hdf5::File> {
    hdf5::File::create(path).map_err(|e| Error::Output {
        path: path.into(),
        message: format!("cannot be created ({})", first_line(&e)),
    })
}

/// Creates (or truncates) `path` holding `v` as dataset `name`.
pub fn write_volume_file(path: &Path, name: &str, v: &TypedVolume) -> Result<()> {
    let file = create(path)?;
    with_typed!(v, |arr| file
        .new_dataset_builder()
        .with_data(arr.view())
        .create(name)
        .map(drop))
    .map_err(|e| hdf5_error(path, format!("writing dataset '{name}'"), e))?;
    file.close().map_err(|e| hdf5_error(path, "closing", e))
}

/// One 4-D (t, z, y, x) dataset filled volume by volume.
pub struct SeriesWriter {
    path: PathBuf,
    name: String,
    file: hdf5::File,
    ds: hdf5::Dataset,
}

impl SeriesWriter {
    /// Creates (or truncates) `path` with an empty dataset `name` of `dtype` and `shape`.
    pub fn create(
        path: &Path,
        name: &str,
        dtype: Dtype,
        shape: [usize; 4],
    ) -> Result<SeriesWriter> {
        let file = create(path)?;
        let ds = file
            .new_dataset_builder()
            .empty_as(dtype.descriptor())
            .shape(shape)
            .create(name)
            .map_err(|e| hdf5_error(path, format!("creating dataset '{name}'"), e))?;
        Ok(SeriesWriter {
            path: path.into(),
            name: name.into(),
            file,
            ds,
        })
    }

    /// Writes volume `t`; callable from several threads (HDF5 serialises them).
    pub fn write(&self, t: usize, v: &TypedVolume) -> Result<()> {
        with_typed!(v, |arr| self.ds.write_slice(arr.view(), s![t, .., .., ..])).map_err(|e| {
            hdf5_error(
                &self.path,
                format!("writing dataset '{}' at t={t}", self.name),
                e,
            )
        })
    }

    /// Flushes and closes the file.
    pub fn close(self) -> Result<()> {
        drop(self.ds);
        self.file
            .close()
            .map_err(|e| hdf5_error(&self.path, "closing", e))
    }
}
