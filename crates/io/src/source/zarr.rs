//! Zarr inputs (v2 and v3 on the local file system): a plain 3-D or 4-D array, or an OME-Zarr image
//! (OME-NGFF 0.4 or 0.5), level 0 of its multiscales with the axes its metadata names.
//!
//! A chunk absent from the store reads as the array's fill value, as the Zarr spec says: zarr-python
//! does not write chunks holding only the fill value (`write_empty_chunks=False`, its default). An
//! absent chunk can also be lost data (a copy or a write cut short), which no reader can tell apart
//! in general; so every absent chunk is counted when the store is opened and reported (a warning at
//! run time, a note in `info`), and a timepoint with *every* chunk absent is an error: a volume made
//! only of the fill value is not a recorded image, and a store cut short ends in such volumes. A chunk
//! present at open and gone at read is an error too.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::Array3;
use serde_json::{Map, Value};
use zarrs::array::{data_type, Array, ArrayMetadata, ElementOwned};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::Group;
use zarrs::storage::{ListableStorageTraits, ReadableStorageTraits, StorePrefix};

use super::{Axes, Dtype, OutOfRange};
use crate::fmt_shape;
use crate::VoxelSize;
use gpuprep_core::error::{Error, Result};

/// What one axis of the stored array is to the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    T,
    /// A channel axis: the channel read.
    C(u64),
    Z,
    Y,
    X,
    /// Any other axis of length 1.
    One,
}

/// An opened Zarr array and how its axes map onto (t, z, y, x).
pub(crate) struct ZarrInput {
    store_path: PathBuf,
    /// The array's path in the store ("/" when the store is the array).
    array_path: String,
    array: Array<FilesystemStore>,
    dims: Vec<Dim>,
    dtype: Dtype,
    /// "Zarr v3", "Zarr v2", with the OME-NGFF version where the array is an OME image's level 0.
    kind: String,
    /// The OME axis names, in the array's order.
    axis_names: Vec<String>,
    /// Scale of level 0 per (t, z, y, x) axis with its unit, where the OME metadata says.
    voxel: Vec<(char, f64, Option<String>)>,
    channels: Option<u64>,
    /// Keys of the chunks the store lacked when it was opened (read as the fill value).
    absent: HashSet<String>,
    /// Chunks in the array's grid.
    total_chunks: u64,
}

impl fmt::Debug for ZarrInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZarrInput")
            .field("store", &self.store_path)
            .field("array", &self.array_path)
            .field("dims", &self.dims)
            .finish_non_exhaustive()
    }
}

/// Whether `dir` is a Zarr store or array: a directory with Zarr metadata at its root.
pub fn is_zarr(dir: &Path) -> bool {
    dir.is_dir() && crate::sink::is_zarr_store(dir)
}

/// The element type gpuprep reads for a Zarr data type, if it takes it.
fn dtype_of(dt: &zarrs::array::DataType) -> Option<Dtype> {
    [
        (data_type::uint8(), Dtype::U8),
        (data_type::uint16(), Dtype::U16),
        (data_type::int16(), Dtype::I16),
        (data_type::int32(), Dtype::I32),
        (data_type::float32(), Dtype::F32),
        (data_type::float64(), Dtype::F64),
    ]
    .into_iter()
    .find(|(d, _)| d == dt)
    .map(|(_, t)| t)
}

/// The OME multiscales list of a group's attributes: 0.5 nests it under "ome", 0.4 has it at the top.
fn multiscales(attrs: &Map<String, Value>) -> Option<(String, &Vec<Value>)> {
    if let Some(ome) = attrs.get("ome").and_then(Value::as_object) {
        let version = ome.get("version").and_then(Value::as_str).unwrap_or("?");
        return ome
            .get("multiscales")
            .and_then(Value::as_array)
            .map(|m| (version.to_string(), m));
    }
    let m = attrs.get("multiscales")?.as_array()?;
    let version = m
        .first()
        .and_then(|m| m.get("version"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    Some((version.to_string(), m))
}

impl ZarrInput {
    /// The scale and unit of the (t, z, y, x) axes where the OME metadata gives a scale (an axis it
    /// does not name: 1, no unit); `None` without OME scale metadata.
    pub fn voxel_size(&self) -> Option<VoxelSize> {
        if self.voxel.is_empty() {
            return None;
        }
        Some(std::array::from_fn(|i| {
            let axis = ['t', 'z', 'y', 'x'][i];
            (self.voxel.iter().find(|(c, _, _)| *c == axis))
                .map_or((1.0, None), |(_, s, u)| (*s, u.clone()))
        }))
    }

    /// Opens the array of the store at `path`: `dataset` names an array or OME image inside it, or is
    /// "default" for the store itself (an array, or an OME image's level 0).
    /// `channel`: the channel read from an image with a c axis (`--channel`).
    pub(crate) fn open(
        path: &Path,
        dataset: &str,
        requested: Option<Axes>,
        channel: usize,
    ) -> Result<ZarrInput> {
        let err = |message: String| Error::Input {
            path: path.to_path_buf(),
            message,
        };
        let store = Arc::new(
            FilesystemStore::new(path)
                .map_err(|e| err(format!("cannot be opened as a Zarr store ({e})")))?,
        );
        let node = match dataset {
            "default" => "/".to_string(),
            d => format!("/{}", d.trim_matches('/')),
        };
        // An array there is read as it is; a group must be an OME image.
        let (array_path, ome) = match Array::open(store.clone(), &node) {
            Ok(_) => (node.clone(), None),
            Err(array_err) => {
                let group = Group::open(store.clone(), &node).map_err(|_| {
                    err(format!(
                        "{}: neither an array nor a group can be read there ({})",
                        describe_node(&node),
                        crate::one_line(&crate::error_chain(&array_err))
                    ))
                })?;
                let Some((version, ms)) = multiscales(group.attributes()) else {
                    return Err(err(format!(
                        "{} is a group without OME-NGFF multiscales metadata; name the array to read \
                         with --dataset (its arrays: {})",
                        describe_node(&node),
                        child_arrays(&group)
                    )));
                };
                let (level0, axes, scale) = parse_multiscale(ms).map_err(|m| {
                    err(format!("{}: OME-NGFF metadata: {m}", describe_node(&node)))
                })?;
                let array_path = format!("{}/{}", node.trim_end_matches('/'), level0);
                (array_path, Some((version, axes, scale)))
            }
        };
        let array = Array::open(store.clone(), &array_path).map_err(|e| {
            err(format!(
                "{}: cannot be opened ({})",
                describe_node(&array_path),
                crate::one_line(&crate::error_chain(&e))
            ))
        })?;
        let name = describe_node(&array_path);
        let shape = array.shape().to_vec();
        let dtype = dtype_of(array.data_type()).ok_or_else(|| {
            err(format!(
                "{name} has unsupported type {}; expected one of {}",
                array.data_type(),
                Dtype::ALL.map(Dtype::name).join(", ")
            ))
        })?;
        if shape.contains(&0) {
            return Err(err(format!(
                "{name} has shape {}; every axis must be nonzero",
                fmt_u64(&shape)
            )));
        }
        let version = match array.metadata() {
            ArrayMetadata::V3(_) => "Zarr v3",
            ArrayMetadata::V2(_) => "Zarr v2",
        };
        let (dims, axis_names, voxel, kind) = match ome {
            Some((ome_version, axes, scale)) => {
                if axes.len() != shape.len() {
                    return Err(err(format!(
                        "{name} has {} axes but the OME-NGFF metadata names {} ({})",
                        shape.len(),
                        axes.len(),
                        axes.iter()
                            .map(|a| a.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                let dims = ome_dims(&axes, &shape).map_err(|m| err(format!("{name}: {m}")))?;
                let derived = derived_axes(&dims);
                if let Some(r) = requested.filter(|&r| r != derived) {
                    return Err(err(format!(
                        "{name}: --axes {r} contradicts the OME-NGFF axes ({}), which read as {derived}",
                        axes.iter().map(|a| a.0.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                }
                let mut voxel = Vec::new();
                if let Some(scale) = &scale {
                    if scale.len() != axes.len() {
                        return Err(err(format!(
                            "{name}: OME-NGFF metadata has a scale of {} values for {} axes",
                            scale.len(),
                            axes.len()
                        )));
                    }
                    for ((a, unit), s) in axes.iter().zip(scale) {
                        if let Some(c) = a
                            .chars()
                            .next()
                            .filter(|_| ["t", "z", "y", "x"].contains(&a.as_str()))
                        {
                            voxel.push((c, *s, unit.clone()));
                        }
                    }
                }
                let names = axes.iter().map(|a| a.0.clone()).collect();
                (
                    dims,
                    names,
                    voxel,
                    format!("{version}, OME-NGFF {ome_version} image"),
                )
            }
            None => {
                let names: Option<Vec<String>> = array
                    .dimension_names()
                    .as_ref()
                    .and_then(|n| n.iter().cloned().collect());
                let dims = plain_dims(&shape, names.as_deref(), requested)
                    .map_err(|m| err(format!("{name}: {m}")))?;
                let names = names.unwrap_or_default();
                (dims, names, Vec::new(), version.to_string())
            }
        };
        let channels = dims
            .iter()
            .zip(&shape)
            .find(|(d, _)| matches!(d, Dim::C(_)))
            .map(|(_, &n)| n);
        if channel as u64 >= channels.unwrap_or(1) {
            return Err(super::channel_err(
                path,
                channel,
                channels.unwrap_or(1) as usize,
            ));
        }
        let dims = dims
            .into_iter()
            .map(|d| match d {
                Dim::C(_) => Dim::C(channel as u64),
                d => d,
            })
            .collect();
        let (absent, total_chunks) = absent_chunks(&array, &array_path).map_err(|m| {
            err(format!(
                "{}: its chunks cannot be listed ({m})",
                describe_node(&array_path)
            ))
        })?;
        let input = ZarrInput {
            store_path: path.to_path_buf(),
            array_path,
            array,
            dims,
            dtype,
            kind,
            axis_names,
            voxel,
            channels,
            absent,
            total_chunks,
        };
        Ok(input)
    }

    /// Refuses a store in which some timepoint has no chunk at all (see the module's note); a run
    /// checks it, `info` describes such a store.
    pub(crate) fn check_whole_volumes(&self) -> Result<()> {
        if self.absent.is_empty() {
            return Ok(());
        }
        for t in 0..self.len() {
            let chunks = self.chunk_indices(&self.volume_ranges(t));
            let keys: Vec<_> = chunks.iter().map(|i| self.array.chunk_key(i)).collect();
            if !keys.is_empty() && keys.iter().all(|k| self.absent.contains(k.as_str())) {
                return Err(self.input_err(format!(
                    "{}, chunk {} ({}) is missing, and so is every other chunk of timepoint {t}: the \
                     store was cut short or not fully written ({} of {} chunks absent); a volume made \
                     only of the fill value is not a recorded image",
                    describe_node(&self.array_path),
                    fmt_u64(&chunks[0]),
                    keys[0],
                    self.absent.len(),
                    self.total_chunks
                )));
            }
        }
        Ok(())
    }

    /// One line on the chunks read as the fill value, where there are any: the run's warning and
    /// `info`'s note.
    pub(crate) fn absent_note(&self) -> Option<String> {
        if self.absent.is_empty() {
            return None;
        }
        let meta = serde_json::to_value(self.array.metadata()).unwrap_or(Value::Null);
        let mut first: Vec<&String> = self.absent.iter().collect();
        first.sort();
        Some(format!(
            "{} of {} chunks of {} are absent and read as the fill value {} (Zarr writers skip chunks \
             holding only the fill value; if the store was copied or written incompletely, they are lost \
             data), e.g. {}",
            self.absent.len(),
            self.total_chunks,
            describe_node(&self.array_path),
            meta.get("fill_value").unwrap_or(&Value::Null),
            first[0]
        ))
    }

    /// The array's path in the store, as `--dataset` names it.
    pub(crate) fn dataset(&self) -> String {
        match self.array_path.trim_matches('/') {
            "" => "/".to_string(),
            p => p.to_string(),
        }
    }

    pub(crate) fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// How the array's axes read: `tzyx` with a z axis, `tyx` without one.
    pub(crate) fn axes(&self) -> Axes {
        derived_axes(&self.dims)
    }

    fn extent(&self, which: Dim) -> usize {
        self.dims
            .iter()
            .zip(self.array.shape())
            .find(|(d, _)| **d == which)
            .map_or(1, |(_, &n)| n as usize)
    }

    /// Timepoints.
    pub(crate) fn len(&self) -> usize {
        self.extent(Dim::T)
    }

    /// (z, y, x) of one volume.
    pub(crate) fn shape(&self) -> [usize; 3] {
        [
            self.extent(Dim::Z),
            self.extent(Dim::Y),
            self.extent(Dim::X),
        ]
    }

    /// How many volumes' worth of elements the chunks one volume touches hold: the chunk extents along
    /// the axes a read takes one index of (t, c, length-1 axes), multiplied.
    pub(crate) fn chunk_span(&self) -> usize {
        let Some(chunks) = self.chunks() else {
            return 1;
        };
        self.dims
            .iter()
            .zip(chunks)
            .filter(|(d, _)| matches!(d, Dim::T | Dim::C(_) | Dim::One))
            .fold(1usize, |a, (_, c)| a.saturating_mul(c))
    }

    pub(crate) fn chunks(&self) -> Option<Vec<usize>> {
        let zero = vec![0; self.array.dimensionality()];
        self.array
            .chunk_shape(&zero)
            .ok()
            .map(|c| c.iter().map(|n| n.get() as usize).collect())
    }

    /// One line for `info`: the store, array, kind, shape, type, chunks, codecs, axes, voxel size.
    pub(crate) fn describe(&self) -> String {
        let chunks = self.chunks().map_or("irregular chunks".to_string(), |c| {
            format!("chunks {}", fmt_shape(&c))
        });
        let axes = if self.axis_names.is_empty() {
            String::new()
        } else {
            format!(", axes {}", self.axis_names.join(","))
        };
        let voxel = if self.voxel.is_empty() {
            String::new()
        } else {
            let v: Vec<String> = self
                .voxel
                .iter()
                .map(|(a, s, u)| {
                    format!(
                        "{a} {s}{}",
                        u.as_ref().map_or(String::new(), |u| format!(" {u}"))
                    )
                })
                .collect();
            format!(", voxel size {}", v.join(", "))
        };
        let absent = match self.absent.len() {
            0 => String::new(),
            n => format!(
                ", {n} of {} chunks absent (read as the fill value)",
                self.total_chunks
            ),
        };
        format!(
            "{}: {}, array '{}' shape {} {}, {chunks}, {}{axes}{voxel}{absent}",
            self.store_path.display(),
            self.kind,
            self.dataset(),
            fmt_u64(self.array.shape()),
            self.dtype,
            codecs(self.array.metadata()),
        )
    }

    /// The summary's words for what is read ("channel 0 of 3").
    pub(crate) fn summary(&self) -> String {
        let read = self.dims.iter().find_map(|d| match d {
            Dim::C(c) => Some(*c),
            _ => None,
        });
        let channel = match (self.channels, read) {
            (Some(n), Some(c)) => format!(", channel {c} of {n}"),
            _ => String::new(),
        };
        format!(
            "{} ({}), array '{}'{channel}",
            self.store_path.file_name().map_or_else(
                || self.store_path.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            ),
            self.kind,
            self.dataset()
        )
    }

    /// Volume `t` as float32; `check` turns float64 values beyond float32's range into the error.
    pub(super) fn read(
        &self,
        t: usize,
        check: impl FnOnce(OutOfRange) -> Result<()>,
    ) -> Result<Array3<f32>> {
        let ranges = self.volume_ranges(t);
        self.check_chunks(&ranges, t)?;
        let shape = self.shape();
        let mut vol = Array3::<f32>::zeros(shape);
        let dst = vol.as_slice_mut().expect("standard layout");
        fn conv<T: ElementOwned + Copy + Into<f64>>(
            z: &ZarrInput,
            ranges: &[std::ops::Range<u64>],
            t: usize,
            dst: &mut [f32],
        ) -> Result<()> {
            let v: Vec<T> = z.retrieve(ranges, t)?;
            for (d, s) in dst.iter_mut().zip(v) {
                *d = s.into() as f32;
            }
            Ok(())
        }
        match self.dtype {
            Dtype::U8 => conv::<u8>(self, &ranges, t, dst)?,
            Dtype::U16 => conv::<u16>(self, &ranges, t, dst)?,
            Dtype::I16 => conv::<i16>(self, &ranges, t, dst)?,
            Dtype::I32 => conv::<i32>(self, &ranges, t, dst)?,
            Dtype::F32 => {
                let v: Vec<f32> = self.retrieve(&ranges, t)?;
                dst.copy_from_slice(&v);
            }
            Dtype::F64 => {
                let v: Vec<f64> = self.retrieve(&ranges, t)?;
                let mut bad = OutOfRange::default();
                bad.convert(v.into_iter(), dst, 0);
                check(bad)?;
            }
        }
        Ok(vol)
    }

    /// Decodes `ranges` (chunks on several threads); on failure finds the chunk at fault to name it.
    fn retrieve<T: ElementOwned>(
        &self,
        ranges: &[std::ops::Range<u64>],
        t: usize,
    ) -> Result<Vec<T>> {
        let expected: u64 = ranges.iter().map(|r| r.end - r.start).product();
        match self.array.retrieve_array_subset::<Vec<T>>(&ranges) {
            Ok(v) if v.len() as u64 == expected => Ok(v),
            Ok(v) => Err(self.input_err(format!(
                "reading {} at timepoint {t} gave {} values, expected {expected}",
                describe_node(&self.array_path),
                v.len()
            ))),
            Err(e) => {
                let cause = crate::one_line(&crate::error_chain(&e));
                // Decoded one by one to name the chunk that fails; the whole subset's error otherwise.
                let chunk = self.chunk_indices(ranges).into_iter().find_map(|idx| {
                    self.array
                        .retrieve_chunk::<Vec<T>>(&idx)
                        .err()
                        .map(|e| (idx, crate::one_line(&crate::error_chain(&e))))
                });
                Err(match chunk {
                    Some((idx, cause)) => self.input_err(format!(
                        "{}, chunk {} ({}) cannot be decoded at timepoint {t}: {cause}",
                        describe_node(&self.array_path),
                        fmt_u64(&idx),
                        self.array.chunk_key(&idx)
                    )),
                    None => self.input_err(format!(
                        "reading {} at timepoint {t}: {cause}",
                        describe_node(&self.array_path)
                    )),
                })
            }
        }
    }

    /// The region of the array volume `t` is.
    fn volume_ranges(&self, t: usize) -> Vec<std::ops::Range<u64>> {
        self.dims
            .iter()
            .zip(self.array.shape())
            .map(|(d, &n)| match d {
                Dim::T => t as u64..t as u64 + 1,
                Dim::C(c) => *c..c + 1,
                Dim::One => 0..1,
                Dim::Z | Dim::Y | Dim::X => 0..n,
            })
            .collect()
    }

    fn chunk_indices(&self, ranges: &[std::ops::Range<u64>]) -> Vec<Vec<u64>> {
        match self.array.chunks_in_array_subset(&ranges) {
            Ok(Some(chunks)) => chunks.indices().into_iter().map(|i| i.to_vec()).collect(),
            _ => Vec::new(),
        }
    }

    /// Refuses a read touching a chunk that was in the store when it was opened and is gone now.
    fn check_chunks(&self, ranges: &[std::ops::Range<u64>], t: usize) -> Result<()> {
        let store = self.array.storage();
        for idx in self.chunk_indices(ranges) {
            let key = self.array.chunk_key(&idx);
            match store.size_key(&key) {
                Ok(Some(_)) => {}
                Ok(None) if self.absent.contains(key.as_str()) => {}
                Ok(None) => {
                    return Err(self.input_err(format!(
                    "{}, chunk {} ({key}) is missing, needed for timepoint {t}; it was there when \
                         the store was opened (the store changed during the run)",
                    describe_node(&self.array_path),
                    fmt_u64(&idx)
                )))
                }
                Err(e) => {
                    return Err(self.input_err(format!(
                        "{}, chunk {} ({key}) cannot be read at timepoint {t}: {}",
                        describe_node(&self.array_path),
                        fmt_u64(&idx),
                        crate::one_line(&crate::error_chain(&e))
                    )))
                }
            }
        }
        Ok(())
    }

    fn input_err(&self, message: String) -> Error {
        Error::Input {
            path: self.store_path.clone(),
            message,
        }
    }
}

/// The keys of the chunks of `array` (at `array_path`) its store does not hold, and the chunk count.
fn absent_chunks(
    array: &Array<FilesystemStore>,
    array_path: &str,
) -> std::result::Result<(HashSet<String>, u64), String> {
    let prefix = match array_path.trim_matches('/') {
        "" => StorePrefix::root(),
        p => StorePrefix::new(format!("{p}/")).map_err(|e| e.to_string())?,
    };
    let present: HashSet<String> = array
        .storage()
        .list_prefix(&prefix)
        .map_err(|e| crate::one_line(&crate::error_chain(&e)))?
        .into_iter()
        .map(|k| k.as_str().to_string())
        .collect();
    let grid: Vec<usize> = array
        .chunk_grid_shape()
        .iter()
        .map(|&n| n as usize)
        .collect();
    let mut absent = HashSet::new();
    let mut total = 0u64;
    for idx in ndarray::indices(grid.as_slice()) {
        let idx: Vec<u64> = ndarray::Dimension::slice(&idx)
            .iter()
            .map(|&i| i as u64)
            .collect();
        total += 1;
        let key = array.chunk_key(&idx);
        if !present.contains(key.as_str()) {
            absent.insert(key.as_str().to_string());
        }
    }
    Ok((absent, total))
}

fn fmt_u64(shape: &[u64]) -> String {
    fmt_shape(&shape.iter().map(|&n| n as usize).collect::<Vec<_>>())
}

fn describe_node(path: &str) -> String {
    match path.trim_matches('/') {
        "" => "the store's root".to_string(),
        p => format!("array '{p}'"),
    }
}

fn child_arrays(group: &Group<FilesystemStore>) -> String {
    match group.child_array_paths() {
        Ok(p) if !p.is_empty() => p
            .iter()
            .map(|p| p.as_str().trim_start_matches('/').to_string())
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".to_string(),
    }
}

/// The codecs (v3) or compressor and filters (v2) of an array, by name.
fn codecs(meta: &ArrayMetadata) -> String {
    let v = serde_json::to_value(meta).unwrap_or(Value::Null);
    let name = |c: &Value| {
        c.get("name")
            .or_else(|| c.get("id"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let mut names: Vec<String> = Vec::new();
    if let Some(cs) = v.get("codecs").and_then(Value::as_array) {
        names.extend(cs.iter().map(name));
    }
    if let Some(fs) = v.get("filters").and_then(Value::as_array) {
        names.extend(fs.iter().map(name));
    }
    if let Some(c) = v.get("compressor").filter(|c| !c.is_null()) {
        names.push(name(c));
    }
    match names.as_slice() {
        [] => "no compression".to_string(),
        n => format!("codecs {}", n.join("+")),
    }
}

type OmeAxes = Vec<(String, Option<String>)>;

/// Level 0's path, the axes (name, unit) and level 0's scale from the first multiscale.
fn parse_multiscale(
    ms: &[Value],
) -> std::result::Result<(String, OmeAxes, Option<Vec<f64>>), String> {
    let m = ms.first().ok_or("'multiscales' is empty")?;
    let axes = m
        .get("axes")
        .and_then(Value::as_array)
        .ok_or("the multiscale has no 'axes' list")?
        .iter()
        .map(|a| match a {
            // OME-NGFF 0.3 names the axes by strings.
            Value::String(s) => Ok((s.clone(), None)),
            a => a
                .get("name")
                .and_then(Value::as_str)
                .map(|n| {
                    (
                        n.to_string(),
                        a.get("unit").and_then(Value::as_str).map(str::to_string),
                    )
                })
                .ok_or_else(|| format!("an axis without a name: {a}")),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let d0 = m
        .get("datasets")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .ok_or("the multiscale has no 'datasets'")?;
    let path = d0
        .get("path")
        .and_then(Value::as_str)
        .ok_or("the first dataset has no 'path'")?
        .to_string();
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "the first dataset's path '{path}' is not a path inside the store"
        ));
    }
    let scale = d0
        .get("coordinateTransformations")
        .and_then(Value::as_array)
        .and_then(|ts| {
            ts.iter()
                .find(|t| t.get("type").and_then(Value::as_str) == Some("scale"))
        })
        .and_then(|t| t.get("scale"))
        .map(|s| {
            s.as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                .ok_or_else(|| format!("the scale {s} is not a list of numbers"))
        })
        .transpose()?;
    Ok((path, axes, scale))
}

/// The dims of an OME image: t, c, z, y, x by name; y and x required; other axes must be of length 1.
fn ome_dims(axes: &OmeAxes, shape: &[u64]) -> std::result::Result<Vec<Dim>, String> {
    let mut dims = Vec::with_capacity(axes.len());
    for ((name, _), &n) in axes.iter().zip(shape) {
        let d = match name.as_str() {
            "t" => Dim::T,
            "c" => Dim::C(0),
            "z" => Dim::Z,
            "y" => Dim::Y,
            "x" => Dim::X,
            _ if n == 1 => Dim::One,
            other => {
                return Err(format!(
                    "axis '{other}' of length {n} is not one gpuprep reads (t, c, z, y, x; others only of \
                     length 1)"
                ))
            }
        };
        if dims.contains(&d) && d != Dim::One {
            return Err(format!("axis '{name}' appears twice in the OME-NGFF axes"));
        }
        dims.push(d);
    }
    check_order(&dims)?;
    Ok(dims)
}

/// t before z before y before x (OME-NGFF's order; any other would need a transposed read).
fn check_order(dims: &[Dim]) -> std::result::Result<(), String> {
    let pos = |d: Dim| dims.iter().position(|&e| e == d);
    for d in [Dim::Y, Dim::X] {
        if pos(d).is_none() {
            return Err(format!(
                "has no {} axis",
                if d == Dim::Y { "y" } else { "x" }
            ));
        }
    }
    let order: Vec<usize> = [Dim::T, Dim::Z, Dim::Y, Dim::X]
        .into_iter()
        .filter_map(pos)
        .collect();
    if order.windows(2).any(|w| w[0] > w[1]) {
        return Err("the axes are not in the order t, z, y, x".into());
    }
    Ok(())
}

/// The dims of a plain array: by its dimension names (v3) where it has t/z/y/x ones, else by rank and
/// `--axes` (4-D: t, z, y, x; 3-D: t, y, x unless `--axes zyx`).
fn plain_dims(
    shape: &[u64],
    names: Option<&[String]>,
    requested: Option<Axes>,
) -> std::result::Result<Vec<Dim>, String> {
    if let Some(names) = names {
        if names
            .iter()
            .all(|n| ["t", "c", "z", "y", "x"].contains(&n.as_str()))
            && names.len() == shape.len()
        {
            let axes: OmeAxes = names.iter().map(|n| (n.clone(), None)).collect();
            let dims = ome_dims(&axes, shape)?;
            if let Some(r) = requested.filter(|&r| r != derived_axes(&dims)) {
                return Err(format!(
                    "--axes {r} contradicts the array's dimension names ({})",
                    names.join(", ")
                ));
            }
            return Ok(dims);
        }
    }
    let axes = requested.unwrap_or(match shape.len() {
        4 => Axes::Tzyx,
        _ => Axes::Tyx,
    });
    if shape.len() != axes.rank() {
        let expected = match requested {
            Some(r) => format!("{} (--axes {r})", r.layout()),
            None => "4-D (t, z, y, x) or 3-D (t, y, x)".to_string(),
        };
        return Err(format!(
            "is {}-D with shape {}; expected {expected}, or an OME-Zarr image whose metadata names its axes",
            shape.len(),
            fmt_u64(shape),
        ));
    }
    Ok(match axes {
        Axes::Tzyx => vec![Dim::T, Dim::Z, Dim::Y, Dim::X],
        Axes::Tyx => vec![Dim::T, Dim::Y, Dim::X],
        Axes::Zyx => vec![Dim::Z, Dim::Y, Dim::X],
    })
}

fn derived_axes(dims: &[Dim]) -> Axes {
    match (dims.contains(&Dim::T), dims.contains(&Dim::Z)) {
        (true, true) => Axes::Tzyx,
        (true, false) => Axes::Tyx,
        (false, _) => Axes::Zyx,
    }
}
