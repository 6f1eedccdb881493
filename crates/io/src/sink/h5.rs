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
    /// The temporary file's path, which direct writes open.
    temp: PathBuf,
    /// Set up on the first block of "data" when it was allocated at creation; `None` after
    /// (direct writes off, refused, or the dataset written otherwise first).
    direct: Option<DirectChunks>,
    /// Whether the next `write_block` may still set `direct` up.
    direct_pending: bool,
    /// Chunks written with `O_DIRECT` so far.
    written_directly: usize,
}

/// "data"'s chunks written straight to the file with `O_DIRECT`, at the addresses HDF5 allocated
/// them (early, aligned to 4 KiB, never filled by HDF5 itself): HDF5 writes the file's metadata, we
/// the chunks' bytes, on ranges that share no page.
struct DirectChunks {
    file: std::fs::File,
    /// The bytes of one chunk.
    bytes: usize,
}

impl DirectChunks {
    /// The file address of the chunk whose first element is at `at` (t, z, y, x) in dataset `id`,
    /// when it is allocated where a direct write can reach it: unfiltered, `bytes` long, on a 4 KiB
    /// boundary.
    fn addr(&self, id: hdf5_sys::h5i::hid_t, at: [usize; 4]) -> Option<u64> {
        let offset = at.map(|o| o as hdf5_sys::h5::hsize_t);
        let (mut mask, mut addr, mut size) = (0, 0, 0);
        // SAFETY: `offset` has the dataset's rank; the out-pointers are valid; under the crate's
        // global HDF5 lock.
        let rc = hdf5::sync::sync(|| unsafe {
            hdf5_sys::h5d::H5Dget_chunk_info_by_coord(
                id,
                offset.as_ptr(),
                &mut mask,
                &mut addr,
                &mut size,
            )
        });
        let defined = rc >= 0 && addr != hdf5_sys::h5::HADDR_UNDEF;
        (defined
            && mask == 0
            && size == self.bytes as u64
            && addr.is_multiple_of(crate::direct::ALIGN as u64))
        .then_some(addr)
    }
}

/// The dataset whose blocks may be written directly.
const DIRECT_DATASET: &str = "data";

impl Hdf5Out {
    /// Creates `temp` exclusively with one 4-D float32 dataset per name in `volumes`.
    pub(super) fn create(
        path: &Path,
        temp: &Path,
        t: usize,
        shape: [usize; 3],
        volumes: &[&str],
        blocks: bool,
    ) -> Result<Hdf5Out> {
        // Exclusive as well: the directory is new and private, so an existing file there is a fault.
        // With blocks to come, every allocation of 64 KiB or more (the chunks) starts on a 4 KiB
        // boundary, so chunks can be written directly.
        let direct = blocks && crate::direct::enabled();
        let file = hdf5::File::with_options()
            .with_fapl(|p| {
                if direct {
                    p.alignment(64 << 10, crate::direct::ALIGN as u64)
                } else {
                    p
                }
            })
            .create_excl(temp)
            .map_err(|e| Error::Output {
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
            temp: temp.to_path_buf(),
            direct: None,
            direct_pending: direct,
            written_directly: 0,
        };
        for &name in volumes {
            let builder = out
                .file()?
                .new_dataset::<f32>()
                .shape([t, shape[0], shape[1], shape[2]])
                .chunk(chunk)
                .chunk_cache(cache_slots, cache_bytes, 1.0);
            let builder = if direct && name == DIRECT_DATASET {
                // Every chunk's place in the file fixed now, and left as it is (a new file's
                // unwritten blocks read as zeros): each block's chunks then go straight there.
                builder
                    .alloc_time(Some(hdf5::plist::dataset_create::AllocTime::Early))
                    .fill_time(hdf5::plist::dataset_create::FillTime::Never)
            } else {
                builder
            };
            let ds = builder
                .create(name)
                .map_err(|source| out.hdf5_err(format!("creating /{name}"), source))?;
            out.volumes.push((name.to_string(), ds));
        }
        Ok(out)
    }

    /// Chunks written with `O_DIRECT` so far.
    pub(super) fn written_directly(&self) -> usize {
        self.written_directly
    }

    /// Writes volume `t` of `name`; the caller has checked the name, `t` and the shape.
    pub(super) fn write_volume(
        &mut self,
        name: &str,
        t: usize,
        vol: ArrayView3<f32>,
    ) -> Result<()> {
        let vol = vol.as_standard_layout();
        if name == DIRECT_DATASET {
            // HDF5 may now hold some of its chunks in its cache, and write them at close.
            self.direct_pending = false;
            self.direct = None;
        }
        self.dataset(name)?
            .write_slice(&vol, s![t, .., .., ..])
            .map_err(|source| self.hdf5_err(format!("writing /{name} at timepoint {t}"), source))
    }

    /// Writes every timepoint over `block`; the caller has checked the name and shapes.
    pub(super) fn write_block(&mut self, name: &str, block: &ChunkedBlock<f32>) -> Result<()> {
        // Chunk by chunk, as the block holds them: directly to the device where the chunks were
        // allocated for it, else through HDF5's direct chunk write (the volumes are uncompressed
        // float32 in the file's byte order): HDF5's own path gathers every chunk again into a
        // freshly allocated cache buffer, page faults and all.
        if name == DIRECT_DATASET && self.direct_pending {
            self.direct_pending = false;
            self.direct = self.direct_chunks(block.chunk())?;
        }
        let id = self.dataset(name)?.id();
        let mut rest: Vec<([usize; 4], &[f32])> = Vec::new();
        if let Some(d) = self.direct.as_ref().filter(|_| name == DIRECT_DATASET) {
            let mut direct = Vec::new();
            for (at, chunk) in block.chunks() {
                match d.addr(id, at) {
                    Some(addr) if std::mem::size_of_val(chunk) == d.bytes => {
                        direct.push((at, addr, chunk))
                    }
                    _ => rest.push((at, chunk)),
                }
            }
            let refused = std::sync::Mutex::new(Vec::new());
            let written = crate::direct::on_write_threads(&direct, |&(at, addr, chunk)| {
                if !crate::cleanup::gated(|| {
                    crate::direct::write_at(&d.file, bytemuck::cast_slice(chunk), addr)
                })? {
                    refused
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((at, chunk));
                }
                Ok::<_, std::io::Error>(())
            });
            if let Err(e) = written {
                let [z, y, x] = block.origin();
                return Err(Error::Storage {
                    path: self.path.clone(),
                    what: format!(
                        "writing /{name} at (z, y, x) = ({z}, {y}, {x}), every timepoint"
                    ),
                    cause: crate::one_line(&e.to_string()),
                    source: Box::new(e),
                });
            }
            let refused = refused.into_inner().unwrap_or_else(|p| p.into_inner());
            self.written_directly += direct.len() - refused.len();
            if !refused.is_empty() {
                // The file system refused direct I/O: HDF5 writes the rest, as without it.
                self.direct = None;
                rest.extend(refused);
            }
        } else {
            rest.extend(block.chunks());
        }
        let written = rest.into_iter().try_for_each(|(at, chunk)| {
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

    /// The file opened for direct writes of "data"'s chunks of shape `chunk`, when their size suits
    /// direct I/O and the file system takes it; else `None`.
    fn direct_chunks(&self, chunk: [usize; 4]) -> Result<Option<DirectChunks>> {
        let bytes = chunk.iter().product::<usize>() * std::mem::size_of::<f32>();
        if !crate::direct::suits(bytes) {
            return Ok(None);
        }
        let file = crate::direct::open(&self.temp, false).map_err(|e| Error::Output {
            path: self.path.clone(),
            message: format!("opening the temporary output for direct writes ({e})"),
        })?;
        Ok(file.map(|file| DirectChunks { file, bytes }))
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
