//! The OME-Zarr output format: an OME-NGFF 0.5 image on Zarr v3, the result at "0" and every other
//! dataset an array beside it in the same store, the run's attributes on the root group.
//!
//! The root group's `zarr.json`, which makes the directory a Zarr store (and an OME image), is written
//! last, by `close`: a store left behind by a killed run lacks it, so no reader takes it for a result.

use crate::VoxelSize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{s, Array3, Array4, ArrayView3, ArrayView4, ArrayViewD};
use serde::Serialize;
use serde_json::{Map, Value};
use zarrs::array::{data_type, Array, ArrayBuilder, Element};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::GroupBuilder;

use super::store::OutputStore;
use super::{volume_chunking, Compression};
use gpuprep_core::chunked::ChunkedBlock;
use gpuprep_core::error::{Error, Result};

/// The array the 4-D dataset "data" is stored as: level 0 of the OME multiscales.
pub const IMAGE_KEY: &str = "0";
/// The dataset stored at [`IMAGE_KEY`].
const IMAGE_DATASET: &str = "data";
/// The OME-NGFF version written.
pub const NGFF_VERSION: &str = "0.5";

/// One 4-D float32 array and the chunk-aligned slabs of timepoints not yet stored.
///
/// A chunk spans `ct` timepoints while the pipeline writes one volume at a time: writing each volume
/// straight to the store would read back, decode and rewrite every chunk `ct` times. The volumes of a
/// slab are gathered here instead (at most `volume_chunking`'s cache budget) and stored once, whole
/// chunks only, when the slab is complete. Volumes arrive in order, so one slab per array is pending.
struct Volume {
    name: String,
    array: Array<OutputStore>,
    ct: usize,
    pending: BTreeMap<usize, Slab>,
    /// Slabs already stored: a volume written again there goes to the store (read, merge, write).
    stored: BTreeSet<usize>,
}

struct Slab {
    data: Array4<f32>,
    filled: Vec<bool>,
}

/// An OME-Zarr store being written (in the sink's private temporary directory).
pub(super) struct ZarrOut {
    /// The user's path, which errors name.
    path: PathBuf,
    store: Arc<OutputStore>,
    t: usize,
    shape: [usize; 3],
    volumes: Vec<Volume>,
    attrs: Map<String, Value>,
    closed: bool,
    compression: Compression,
    /// Whether the 4-D arrays are sharded (whole volumes per shard: no block writes).
    sharded: bool,
    /// Scale and units of the OME metadata (`Sink::set_voxel_size`); scale 1 without.
    pub(super) voxel_size: Option<VoxelSize>,
}

/// OME-NGFF 0.5 `multiscales` metadata (typed, so a misspelt key is a compile error).
#[derive(Serialize)]
struct Ome {
    version: &'static str,
    multiscales: Vec<Multiscale>,
}

#[derive(Serialize)]
struct Multiscale {
    name: String,
    axes: Vec<Axis>,
    datasets: Vec<Dataset>,
}

#[derive(Serialize)]
struct Axis {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
}

#[derive(Serialize)]
struct Dataset {
    path: &'static str,
    #[serde(rename = "coordinateTransformations")]
    transforms: Vec<Transform>,
}

#[derive(Serialize)]
struct Transform {
    #[serde(rename = "type")]
    kind: &'static str,
    scale: Vec<f64>,
}

/// The store key of dataset `name`, refusing names that are not one plain path component (they would
/// write outside the array's directory or clash with Zarr's own files).
pub(super) fn key_of(name: &str) -> std::result::Result<&str, String> {
    if name == IMAGE_DATASET {
        return Ok(IMAGE_KEY);
    }
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name != "zarr.json"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !plain {
        return Err(format!(
            "dataset name '{name}' cannot be a Zarr array here; use letters, digits, '_', '-' and '.'"
        ));
    }
    if name == IMAGE_KEY {
        return Err(format!(
            "dataset name '{name}' is where the Zarr output keeps '{IMAGE_DATASET}'; choose another name"
        ));
    }
    Ok(name)
}

impl ZarrOut {
    /// Creates the store directory `temp` with one 4-D float32 array per name in `volumes`.
    pub(super) fn create(
        path: &Path,
        temp: &Path,
        t: usize,
        shape: [usize; 3],
        volumes: &[&str],
        options: super::SinkOptions,
    ) -> Result<ZarrOut> {
        let compression = options.compression;
        std::fs::create_dir(temp).map_err(|e| Error::Output {
            path: temp.to_path_buf(),
            message: format!("cannot create the temporary output store ({e})"),
        })?;
        let store = FilesystemStore::new(temp).map_err(|e| Error::Output {
            path: temp.to_path_buf(),
            message: format!("cannot open the temporary output store ({e})"),
        })?;
        let mut out = ZarrOut {
            path: path.to_path_buf(),
            store: Arc::new(OutputStore::new(store)),
            t,
            shape,
            volumes: Vec::new(),
            attrs: Map::new(),
            closed: false,
            compression,
            sharded: options.shard,
            voxel_size: None,
        };
        let (chunk, ..) = volume_chunking(t, shape);
        let array_shape = [t, shape[0], shape[1], shape[2]].map(|n| n as u64).to_vec();
        for &name in volumes {
            let key = key_of(name).map_err(|m| out.out_err(m))?;
            let chunk64 = chunk.map(|n| n as u64).to_vec();
            // A shard is the time slab the sink writes at once: one writer each, the chunks inside.
            let shard = [chunk[0], shape[0], shape[1], shape[2]]
                .map(|n| n as u64)
                .to_vec();
            let mut builder = ArrayBuilder::new(
                array_shape.clone(),
                if options.shard {
                    shard
                } else {
                    chunk64.clone()
                },
                data_type::float32(),
                0.0f32,
            );
            builder
                .dimension_names(Some(["t", "z", "y", "x"]))
                .bytes_to_bytes_codecs(codecs(compression, 4).map_err(|m| out.out_err(m))?);
            if options.shard {
                builder.subchunk_shape(chunk64);
            }
            let array = builder
                .build(out.store.clone(), &format!("/{key}"))
                .map_err(|e| out.zarr_err(format!("creating /{name}"), e))?;
            crate::cleanup::gated(|| array.store_metadata())
                .map_err(|e| out.zarr_err(format!("creating /{name}"), e))?;
            out.volumes.push(Volume {
                name: name.to_string(),
                array,
                ct: chunk[0],
                pending: BTreeMap::new(),
                stored: BTreeSet::new(),
            });
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
        let (total, shape, path) = (self.t, self.shape, self.path.clone());
        let v = self.volume_mut(name)?;
        let slab = t / v.ct;
        if v.stored.contains(&slab) {
            let array = &v.array;
            let start = [t as u64, 0, 0, 0];
            let data = vol.insert_axis(ndarray::Axis(0));
            return store(array, &start, data.as_standard_layout().to_owned())
                .map_err(|e| zarr_error(&path, format!("writing /{name} at timepoint {t}"), e));
        }
        let t0 = slab * v.ct;
        let len = v.ct.min(total - t0);
        let entry = v.pending.entry(slab).or_insert_with(|| Slab {
            data: Array4::zeros([len, shape[0], shape[1], shape[2]]),
            filled: vec![false; len],
        });
        entry.data.slice_mut(s![t - t0, .., .., ..]).assign(&vol);
        entry.filled[t - t0] = true;
        if entry.filled.iter().all(|&f| f) {
            let slab_data = v.pending.remove(&slab).expect("just filled").data;
            v.stored.insert(slab);
            store_chunks(&v.array, [t0 as u64, 0, 0, 0], slab_data.view()).map_err(|e| {
                zarr_error(
                    &path,
                    format!("writing /{name} at timepoints {t0}-{}", t0 + len - 1),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// Chunk files written with `O_DIRECT` so far.
    pub(super) fn written_directly(&self) -> usize {
        self.store.written_directly()
    }

    /// The chunk shape; `None` when sharded (a shard spans whole volumes).
    pub(super) fn block_chunk(&self) -> Option<[usize; 4]> {
        (!self.sharded).then_some(volume_chunking(self.t, self.shape).0)
    }

    /// Writes every timepoint over `block`, its chunks encoded and written on several threads as
    /// the block holds them; the caller has checked the name and shapes.
    pub(super) fn write_block(&mut self, name: &str, block: &ChunkedBlock<f32>) -> Result<()> {
        let (path, t) = (self.path.clone(), self.t);
        let v = self.volume_mut(name)?;
        if !v.pending.is_empty() {
            // Their slab, stored when complete, would overwrite this block with its zeros.
            return Err(Error::Output {
                path,
                message: format!("/{name} has volumes waiting for their slab; blocks cannot be written into it now"),
            });
        }
        // Every slab now has stored chunks: a volume written later merges into them.
        v.stored.extend(0..t.div_ceil(v.ct));
        store_block_chunks(&v.array, 0, block).map_err(|e| {
            let [z, y, x] = block.origin();
            zarr_error(
                &path,
                format!("writing /{name} at (z, y, x) = ({z}, {y}, {x}), every timepoint"),
                e,
            )
        })
    }

    pub(super) fn read_volume(&self, name: &str, t: usize) -> Result<Array3<f32>> {
        let v = self
            .volumes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| self.closed_err())?;
        let slab = t / v.ct;
        if let Some(p) = v.pending.get(&slab) {
            return Ok(p.data.slice(s![t - slab * v.ct, .., .., ..]).to_owned());
        }
        let [z, y, x] = self.shape.map(|n| n as u64);
        let t = t as u64;
        let data: ndarray::ArrayD<f32> = v
            .array
            .retrieve_array_subset(&[t..t + 1, 0..z, 0..y, 0..x])
            .map_err(|e| self.zarr_err(format!("reading /{name} at timepoint {t}"), e))?;
        data.into_shape_with_order(self.shape)
            .map_err(|e| Error::Data(format!("reading /{name} at timepoint {t}: {e}")))
    }

    /// Writes `data` as array `name` in one chunk, replacing one of that name.
    pub(super) fn write_array<T: Element + Copy>(
        &mut self,
        name: &str,
        data: ArrayViewD<T>,
        dtype: zarrs::array::DataType,
        fill: impl Into<zarrs::array::builder::ArrayBuilderFillValue>,
    ) -> Result<()> {
        let key = key_of(name).map_err(|m| self.out_err(m))?;
        // Replaced whole: an older array of another shape must leave no chunk behind.
        let dir = self.store.prefix_to_fs_path(
            &zarrs::storage::StorePrefix::new(format!("{key}/"))
                .map_err(|e| self.out_err(e.to_string()))?,
        );
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(self.out_err(format!("cannot replace /{name} ({e})")));
            }
        }
        let shape: Vec<u64> = data.shape().iter().map(|&n| n as u64).collect();
        // A zero-length axis still needs a chunk extent of at least 1.
        let chunk: Vec<u64> = shape.iter().map(|&n| n.max(1)).collect();
        let what = || format!("writing /{name}");
        let array = ArrayBuilder::new(shape, chunk, dtype, fill)
            .bytes_to_bytes_codecs(
                codecs(self.compression, std::mem::size_of::<T>()).map_err(|m| self.out_err(m))?,
            )
            .build(self.store.clone(), &format!("/{key}"))
            .map_err(|e| self.zarr_err(what(), e))?;
        crate::cleanup::gated(|| array.store_metadata()).map_err(|e| self.zarr_err(what(), e))?;
        if data.is_empty() {
            return Ok(());
        }
        let start = vec![0u64; data.ndim()];
        store(&array, &start, data.as_standard_layout().to_owned())
            .map_err(|e| self.zarr_err(what(), e))
    }

    pub(super) fn set_attr(&mut self, name: &str, value: Value) -> Result<()> {
        if name == "ome" {
            return Err(self.out_err(
                "attribute 'ome' is the OME-NGFF metadata of the Zarr output; choose another name"
                    .into(),
            ));
        }
        self.attrs.insert(name.to_string(), value);
        Ok(())
    }

    /// Stores the slabs still pending (timepoints never written keep the fill value, 0, as in HDF5)
    /// and then the root group's metadata, which completes the store.
    pub(super) fn close(&mut self, name: &str) -> Result<()> {
        if self.closed {
            return Err(self.closed_err());
        }
        for v in &mut self.volumes {
            for (slab, p) in std::mem::take(&mut v.pending) {
                let t0 = slab * v.ct;
                store(&v.array, &[t0 as u64, 0, 0, 0], p.data).map_err(|e| {
                    zarr_error(
                        &self.path,
                        format!("writing /{} at timepoint {t0}", v.name),
                        e,
                    )
                })?;
                v.stored.insert(slab);
            }
        }
        let mut attrs = self.attrs.clone();
        if self.volumes.iter().any(|v| v.name == IMAGE_DATASET) {
            let ome = Ome {
                version: NGFF_VERSION,
                multiscales: vec![Multiscale {
                    name: name.to_string(),
                    axes: ["t", "z", "y", "x"]
                        .iter()
                        .enumerate()
                        .map(|(i, &name)| Axis {
                            name,
                            kind: if i == 0 { "time" } else { "space" },
                            unit: self.voxel_size.as_ref().and_then(|v| v[i].1.clone()),
                        })
                        .collect(),
                    datasets: vec![Dataset {
                        path: IMAGE_KEY,
                        // Without a known voxel size: one unit per voxel and per timepoint.
                        transforms: vec![Transform {
                            kind: "scale",
                            scale: match &self.voxel_size {
                                Some(v) => v.iter().map(|(s, _)| *s).collect(),
                                None => vec![1.0; 4],
                            },
                        }],
                    }],
                }],
            };
            let ome = serde_json::to_value(ome)
                .map_err(|e| self.out_err(format!("cannot encode the OME metadata ({e})")))?;
            attrs.insert("ome".into(), ome);
        }
        let what = || "writing the root group's metadata".to_string();
        let group = GroupBuilder::new()
            .attributes(attrs)
            .build(self.store.clone(), "/")
            .map_err(|e| self.zarr_err(what(), e))?;
        crate::cleanup::gated(|| group.store_metadata()).map_err(|e| self.zarr_err(what(), e))?;
        self.closed = true;
        Ok(())
    }

    fn volume_mut(&mut self, name: &str) -> Result<&mut Volume> {
        if self.closed {
            return Err(self.closed_err());
        }
        let err = self.closed_err();
        self.volumes.iter_mut().find(|v| v.name == name).ok_or(err)
    }

    fn closed_err(&self) -> Error {
        self.out_err("the output store is already closed".into())
    }

    fn out_err(&self, message: String) -> Error {
        Error::Output {
            path: self.path.clone(),
            message,
        }
    }

    fn zarr_err(&self, what: String, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        zarr_error(&self.path, what, e)
    }
}

/// The bytes-to-bytes codecs of an array of `typesize`-byte elements (blosc's shuffle needs it).
fn codecs(
    compression: Compression,
    typesize: usize,
) -> std::result::Result<Vec<Arc<dyn zarrs::array::codec::api::BytesToBytesCodecTraits>>, String> {
    use zarrs::array::codec::bytes_to_bytes::blosc::{
        BloscCodec, BloscCompressionLevel, BloscCompressor, BloscShuffleMode,
    };
    Ok(match compression {
        Compression::None => Vec::new(),
        Compression::Zstd => vec![Arc::new(zarrs::array::codec::ZstdCodec::new(3, false))],
        Compression::BloscLz4 => {
            let level = BloscCompressionLevel::try_from(5u8).expect("5 is a blosc level");
            let codec = BloscCodec::new(
                BloscCompressor::LZ4,
                level,
                None,
                BloscShuffleMode::Shuffle,
                Some(typesize),
            )
            .map_err(|e| format!("blosc-lz4 is not available in this build ({e})"))?;
            vec![Arc::new(codec)]
        }
    })
}

/// Stores `data` at `start`, its chunks encoded and written on several threads.
fn store<T: Element, D: ndarray::Dimension>(
    array: &Array<OutputStore>,
    start: &[u64],
    data: ndarray::Array<T, D>,
) -> std::result::Result<(), zarrs::array::ArrayError> {
    let subset: Vec<std::ops::Range<u64>> = start
        .iter()
        .zip(data.shape())
        .map(|(&s, &n)| s..s + n as u64)
        .collect();
    crate::cleanup::gated(|| array.store_array_subset(&subset, data))
}

/// Stores the 4-D `data` at `start`, chunk by chunk on rayon's threads: each chunk gathered from
/// `data` (one copy; edge chunks padded with the fill value 0) and encoded and written by one thread.
/// zarrs' `store_array_subset` would first copy the whole region into bytes and gather each chunk
/// from that copy. Needs `start` on the chunk grid and the region ending on it or at the array's
/// edge; any other region goes through `store`.
fn store_chunks(
    array: &Array<OutputStore>,
    start: [u64; 4],
    data: ArrayView4<f32>,
) -> std::result::Result<(), zarrs::array::ArrayError> {
    use rayon::prelude::*;
    let shape = array.shape().to_vec();
    let chunk: [u64; 4] = std::array::from_fn({
        let c = array.chunk_shape(&[0; 4])?;
        move |i| c[i].get()
    });
    let extent: Vec<u64> = data.shape().iter().map(|&n| n as u64).collect();
    let aligned = (0..4).all(|i| {
        start[i].is_multiple_of(chunk[i])
            && start[i] + extent[i] <= shape[i]
            && (extent[i].is_multiple_of(chunk[i]) || start[i] + extent[i] == shape[i])
    });
    if !aligned || data.is_empty() {
        return store(array, &start, data.as_standard_layout().into_owned());
    }
    let c = chunk.map(|c| c as usize);
    let chunks: Vec<_> = super::chunks_of(data, c).collect();
    let raw = raw_chunks(array);
    let store = array.storage();
    // One chunk buffer per task chain, refilled: fresh memory costs a fault per page.
    chunks
        .into_par_iter()
        .try_for_each_init(Vec::<f32>::new, |buf, (lo, part)| {
            let indices: Vec<u64> = (0..4)
                .map(|i| (start[i] as usize + lo[i]) as u64 / chunk[i])
                .collect();
            super::gather_chunk(part, c, buf);
            if raw {
                // The gathered chunk is its own encoding: written as it is (`ZarrOut::write_block`).
                let key = array.chunk_key(&indices);
                return crate::cleanup::gated(|| {
                    store.write_whole(&key, bytemuck::cast_slice(buf))
                })
                .map_err(|e| zarrs::array::ArrayError::StorageError(e.into()));
            }
            crate::cleanup::gated(|| array.store_chunk(&indices, &buf[..]))
        })
}

/// Stores each chunk of `block` whole, timepoint `t0` of the array at the block's first: raw chunks
/// are their own encoding, so each is written from the block as it is, no copy made (zarrs would
/// encode it into a fresh buffer), directly to the device where the store can (`OutputStore`), on
/// the direct-write threads; other codecs encode on rayon's threads.
fn store_block_chunks(
    array: &Array<OutputStore>,
    t0: usize,
    block: &ChunkedBlock<f32>,
) -> std::result::Result<(), zarrs::array::ArrayError> {
    use rayon::prelude::*;
    let (chunk, raw, store) = (block.chunk(), raw_chunks(array), array.storage());
    let chunks: Vec<_> = block.chunks().collect();
    let put = |&(at, data): &([usize; 4], &[f32])| {
        let indices: Vec<u64> = (0..4)
            .map(|i| ((at[i] + if i == 0 { t0 } else { 0 }) / chunk[i]) as u64)
            .collect();
        if raw {
            let key = array.chunk_key(&indices);
            return crate::cleanup::gated(|| store.write_whole(&key, bytemuck::cast_slice(data)))
                .map_err(|e| zarrs::array::ArrayError::StorageError(e.into()));
        }
        crate::cleanup::gated(|| array.store_chunk(&indices, data))
    };
    if raw {
        crate::direct::on_write_threads(&chunks, put)
    } else {
        chunks.par_iter().try_for_each(put)
    }
}

/// Whether `array`'s chunks are stored raw: float32 through the `bytes` codec alone, little-endian
/// like this machine, so a chunk's elements are its encoding.
fn raw_chunks(array: &Array<OutputStore>) -> bool {
    let zarrs::metadata::ArrayMetadata::V3(m) = array.metadata() else {
        return false;
    };
    let codecs = serde_json::to_value(&m.codecs).unwrap_or_default();
    let bytes = |c: &Value| {
        c["name"] == "bytes"
            && (c
                .get("configuration")
                .is_none_or(|c| c.get("endian").is_none_or(|e| e == "little")))
    };
    cfg!(target_endian = "little")
        && array.data_type() == &data_type::float32()
        && codecs
            .as_array()
            .is_some_and(|c| c.len() == 1 && bytes(&c[0]))
}

/// A Zarr failure at `path` while doing `what`, its cause in one line.
pub fn zarr_error(
    path: &Path,
    what: String,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Storage {
        path: path.to_path_buf(),
        what,
        cause: crate::one_line(&crate::error_chain(&e)),
        source: Box::new(e),
    }
}

/// The existing Zarr array at `array_dir` (made by another process), opened for writing through an
/// `OutputStore`; failures name the array and `what` was being done.
fn open_existing(array_dir: &Path, what: &str) -> Result<Array<OutputStore>> {
    let fs = FilesystemStore::new(array_dir).map_err(|e| zarr_error(array_dir, what.into(), e))?;
    Array::open(Arc::new(OutputStore::new(fs)), "/")
        .map_err(|e| zarr_error(array_dir, what.into(), e))
}

/// "writing timepoints a-b", for the errors of writes of `n` timepoints from `t0`.
fn writing_timepoints(t0: usize, n: usize) -> String {
    format!(
        "writing timepoints {t0}-{}",
        (t0 + n).saturating_sub(1).max(t0)
    )
}

/// Stores `block` as timepoints `t0 ..` of the existing 4-D float32 Zarr array at `array_dir` (one
/// that another process created, e.g. the dask front end's client), its chunks encoded with the array's
/// codecs and written on several threads, without a sync per chunk. The block should cover whole chunks
/// along t (each chunk one writer); errors name the array and the timepoints.
pub fn store_block(array_dir: &Path, t0: usize, block: ArrayView4<f32>) -> Result<()> {
    let n = block.dim().0;
    let what = || writing_timepoints(t0, n);
    let array = open_existing(array_dir, &what())?;
    let shape = array.shape().to_vec();
    let (_, z, y, x) = block.dim();
    let fits = shape.len() == 4
        && shape[1..] == [z as u64, y as u64, x as u64]
        && (t0 + n) as u64 <= shape[0];
    if !fits || array.data_type() != &data_type::float32() {
        return Err(Error::Output {
            path: array_dir.to_path_buf(),
            message: format!(
                "{}: the array is {} of shape {shape:?}; the block is float32 timepoints {t0}..{} of volumes ({z}, {y}, {x})",
                what(),
                array.data_type(),
                t0 + n
            ),
        });
    }
    store_chunks(&array, [t0 as u64, 0, 0, 0], block).map_err(|e| zarr_error(array_dir, what(), e))
}

/// Stores `volume` as the whole of the existing 3-D float32 Zarr array at `array_dir` (the dask front
/// end's `mean` and `std`, written by a worker), encoded with the array's codecs.
pub fn store_volume(array_dir: &Path, volume: ArrayView3<f32>) -> Result<()> {
    let what = || "writing the volume".to_string();
    let array = open_existing(array_dir, &what())?;
    let shape = array.shape().to_vec();
    let (z, y, x) = volume.dim();
    if shape != [z as u64, y as u64, x as u64] || array.data_type() != &data_type::float32() {
        return Err(Error::Output {
            path: array_dir.to_path_buf(),
            message: format!(
                "{}: the array is {} of shape {shape:?}; the volume is float32 ({z}, {y}, {x})",
                what(),
                array.data_type()
            ),
        });
    }
    store(&array, &[0, 0, 0], volume.as_standard_layout().into_owned())
        .map_err(|e| zarr_error(array_dir, what(), e))
}

/// Timepoints `t0 .. t0 + n` of the existing 4-D float32 Zarr array at `array_dir` (one that another
/// process created: the dask front end's output), written as `ChunkedBlock`s (the z-scores of
/// `gpuprep_core::zscore::normalize_volumes_by_block`, computed in the chunks' own layout): the array
/// opened once, each chunk handed over as it is held (raw chunks written from the block, directly to
/// the device where the store can, on threads of their own), no (t, z, y, x) array gathered.
pub struct BlockWriter {
    path: PathBuf,
    array: Array<OutputStore>,
    /// The array's chunk (t, z, y, x).
    chunk: [usize; 4],
    t0: usize,
    n: usize,
}

impl BlockWriter {
    /// Opens the array for blocks of `n` timepoints from `t0` of volumes `volume` (z, y, x): its shape,
    /// data type and chunking along t must suit them (the block covers whole chunks along t, so each
    /// chunk has one writer).
    pub fn open(array_dir: &Path, t0: usize, n: usize, volume: [usize; 3]) -> Result<BlockWriter> {
        let what = writing_timepoints(t0, n);
        let array = open_existing(array_dir, &what)?;
        let shape = array.shape().to_vec();
        let fits = shape.len() == 4
            && shape[1..] == volume.map(|v| v as u64)
            && (t0 + n) as u64 <= shape[0]
            && array.data_type() == &data_type::float32();
        let mismatch = |why: String| Error::Output {
            path: array_dir.to_path_buf(),
            message: format!("{what}: {why}"),
        };
        if !fits {
            return Err(mismatch(format!(
                "the array is {} of shape {shape:?}; the block is float32 timepoints {t0}..{} of volumes {volume:?}",
                array.data_type(),
                t0 + n
            )));
        }
        let c = array
            .chunk_shape(&[0; 4])
            .map_err(|e| zarr_error(array_dir, what.clone(), e))?;
        let chunk: [usize; 4] = std::array::from_fn(|i| c[i].get() as usize);
        let ct = chunk[0];
        if !t0.is_multiple_of(ct) || !(n.is_multiple_of(ct) || (t0 + n) as u64 == shape[0]) {
            return Err(mismatch(format!(
                "the array's chunks span {ct} timepoints; a block must start and end on their bounds"
            )));
        }
        Ok(BlockWriter {
            path: array_dir.to_path_buf(),
            array,
            chunk,
            t0,
            n,
        })
    }

    /// The array's chunk (t, z, y, x): the blocks' chunking.
    pub fn chunk(&self) -> [usize; 4] {
        self.chunk
    }

    /// Stores `block` (timepoints `0 .. n` of it are the writer's `t0 ..`), each chunk whole.
    pub fn write(&self, block: &ChunkedBlock<f32>) -> Result<()> {
        let chunk = block.chunk();
        if chunk != self.chunk || block.extent()[0] != self.n {
            return Err(Error::Output {
                path: self.path.clone(),
                message: format!(
                    "a block of {:?} in chunks of {chunk:?}: expected {} timepoints in the array's chunks {:?}",
                    block.extent(),
                    self.n,
                    self.chunk
                ),
            });
        }
        store_block_chunks(&self.array, self.t0, block).map_err(|e| {
            let [z, y, x] = block.origin();
            let what = writing_timepoints(self.t0, self.n);
            zarr_error(
                &self.path,
                format!("{what} at (z, y, x) = ({z}, {y}, {x})"),
                e,
            )
        })
    }
}
