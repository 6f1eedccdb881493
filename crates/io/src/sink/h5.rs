//! The HDF5 output format: one file of chunked 4-D float32 datasets, small arrays and root attributes.

use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;
use ndarray::{s, Array1, Array3, ArrayView3, ArrayViewD};

use super::volume_chunking;
use crate::source::first_line;
use gpuprep_core::chunked::ChunkedBlock;
use gpuprep_core::error::{Error, Result};

/// An HDF5 output file open for writing.
pub(super) struct Hdf5Out {
    /// The user's path, which errors name: the temporary one means nothing to them and is gone after the
    /// error.
    path: PathBuf,
    // `None` once closed; the datasets are dropped before the file so HDF5 really closes it.
    file: Option<hdf5::File>,
    volumes: Vec<(String, hdf5::Dataset)>,
}

impl Hdf5Out {
    /// Creates `temp` exclusively with one 4-D float32 dataset per name in `volumes`.
    pub(super) fn create(
        path: &Path,
        temp: &Path,
        t: usize,
        shape: [usize; 3],
        volumes: &[&str],
    ) -> Result<Hdf5Out> {
        // Exclusive as well: the directory is new and private, so an existing file there is a fault.
        let file = hdf5::File::create_excl(temp).map_err(|e| Error::Output {
            path: temp.to_path_buf(),
            message: format!(
                "cannot create the temporary output file ({})",
                first_line(&e)
            ),
        })?;
        let (chunk, cache_bytes, cache_slots) = volume_chunking(t, shape);
        let mut out = Hdf5Out {
            path: path.to_path_buf(),
            file: Some(file),
            volumes: Vec::new(),
        };
        for &name in volumes {
            let ds = out
                .file()?
                .new_dataset::<f32>()
                .shape([t, shape[0], shape[1], shape[2]])
                .chunk(chunk)
                .chunk_cache(cache_slots, cache_bytes, 1.0)
                .create(name)
                .map_err(|source| out.hdf5_err(format!("creating /{name}"), source))?;
            out.volumes.push((name.to_string(), ds));
        }
        Ok(out)
    }

    /// Writes volume `t` of `name`; the caller has checked the name, `t` and the shape.
    pub(super) fn write_volume(
        &mut self,
        name: &str,
        t: usize,
        vol: ArrayView3<f32>,
    ) -> Result<()> {
        let vol = vol.as_standard_layout();
        self.dataset(name)?
            .write_slice(&vol, s![t, .., .., ..])
            .map_err(|source| self.hdf5_err(format!("writing /{name} at timepoint {t}"), source))
    }

    /// Writes every timepoint over `block`; the caller has checked the name and shapes.
    pub(super) fn write_block(&mut self, name: &str, block: &ChunkedBlock<f32>) -> Result<()> {
        // Chunk by chunk, as the block holds them, through HDF5's direct chunk write (the volumes
        // are uncompressed float32 in the file's byte order): HDF5's own path gathers every chunk
        // again into a freshly allocated cache buffer, page faults and all.
        let id = self.dataset(name)?.id();
        let written = block.chunks().try_for_each(|(at, chunk)| {
            let offset = at.map(|o| o as hdf5_sys::h5::hsize_t);
            // SAFETY: `offset` has the dataset's rank and `chunk` is one whole chunk (the caller
            // checked the chunk shape); both outlive the call, made under the crate's global HDF5
            // lock.
            let rc = hdf5::sync::sync(|| unsafe {
                hdf5_sys::h5d::H5Dwrite_chunk(
                    id,
                    hdf5_sys::h5p::H5P_DEFAULT,
                    0,
                    offset.as_ptr(),
                    std::mem::size_of_val(chunk),
                    chunk.as_ptr().cast(),
                )
            });
            hdf5::h5check(rc).map(drop)
        });
        let [z, y, x] = block.origin();
        written.map_err(|source| {
            self.hdf5_err(
                format!("writing /{name} at (z, y, x) = ({z}, {y}, {x}), every timepoint"),
                source,
            )
        })
    }

    pub(super) fn read_volume(&self, name: &str, t: usize) -> Result<Array3<f32>> {
        self.dataset(name)?
            .read_slice::<f32, _, ndarray::Ix3>(s![t, .., .., ..])
            .map_err(|source| self.hdf5_err(format!("reading /{name} at timepoint {t}"), source))
    }

    pub(super) fn write_array<T: hdf5::H5Type>(
        &mut self,
        name: &str,
        data: ArrayViewD<T>,
    ) -> Result<()> {
        let file = self.file()?;
        if file.link_exists(name) {
            file.unlink(name)
                .map_err(|source| self.hdf5_err(format!("replacing /{name}"), source))?;
        }
        file.new_dataset_builder()
            .with_data(data)
            .create(name)
            .map(drop)
            .map_err(|source| self.hdf5_err(format!("writing /{name}"), source))
    }

    pub(super) fn set_attr_str(&mut self, name: &str, value: &str) -> Result<()> {
        let v = vlen(name, value)?;
        self.replace_attr(name, |f| {
            f.new_attr_builder()
                .with_data(ndarray::arr0(v).view())
                .create(name)
                .map(drop)
        })
    }

    pub(super) fn set_attr_f64(&mut self, name: &str, value: f64) -> Result<()> {
        self.replace_attr(name, |f| {
            f.new_attr_builder()
                .with_data(ndarray::arr0(value).view())
                .create(name)
                .map(drop)
        })
    }

    pub(super) fn set_attr_i64(&mut self, name: &str, value: i64) -> Result<()> {
        self.replace_attr(name, |f| {
            f.new_attr_builder()
                .with_data(ndarray::arr0(value).view())
                .create(name)
                .map(drop)
        })
    }

    pub(super) fn set_attr_strs(&mut self, name: &str, values: &[String]) -> Result<()> {
        let vs = values
            .iter()
            .map(|v| vlen(name, v))
            .collect::<Result<Vec<_>>>()?;
        let arr = Array1::from(vs);
        self.replace_attr(name, |f| {
            f.new_attr_builder()
                .with_data(arr.view())
                .create(name)
                .map(drop)
        })
    }

    fn replace_attr(
        &mut self,
        name: &str,
        create: impl FnOnce(&hdf5::File) -> hdf5::Result<()>,
    ) -> Result<()> {
        let file = self.file()?;
        let what = || format!("writing attribute '{name}'");
        if file
            .attr_names()
            .map_err(|s| self.hdf5_err(what(), s))?
            .iter()
            .any(|n| n == name)
        {
            file.delete_attr(name)
                .map_err(|s| self.hdf5_err(what(), s))?;
        }
        create(file).map_err(|s| self.hdf5_err(what(), s))
    }

    /// Flushes and closes the file.
    pub(super) fn close(&mut self) -> Result<()> {
        let file = self.file.take().ok_or_else(|| closed(&self.path))?;
        let flushed = file.flush();
        self.volumes.clear();
        let closed = file.close();
        flushed
            .and(closed)
            .map_err(|source| self.hdf5_err("flushing and closing the output".into(), source))
    }

    fn file(&self) -> Result<&hdf5::File> {
        self.file.as_ref().ok_or_else(|| closed(&self.path))
    }

    fn dataset(&self, name: &str) -> Result<&hdf5::Dataset> {
        self.volumes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
            .ok_or_else(|| closed(&self.path))
    }

    fn hdf5_err(&self, what: String, source: hdf5::Error) -> Error {
        crate::hdf5_error(self.path.clone(), what, source)
    }
}

impl Drop for Hdf5Out {
    fn drop(&mut self) {
        // The datasets first, so HDF5 really closes the file before its directory is deleted.
        self.volumes.clear();
        drop(self.file.take());
    }
}

fn closed(path: &Path) -> Error {
    Error::Output {
        path: path.to_path_buf(),
        message: "the output file is already closed".into(),
    }
}

fn vlen(name: &str, value: &str) -> Result<VarLenUnicode> {
    value.parse::<VarLenUnicode>().map_err(|e| {
        Error::Data(format!(
            "attribute '{name}': value {value:?} cannot be stored as an HDF5 string: {e}"
        ))
    })
}
