//! The output: 4-D float32 volume datasets plus small arrays and root attributes, as one HDF5 file or an
//! OME-Zarr store (chosen by the output's extension), written inside a private temporary directory beside
//! the final path and moved into place only by `finish`, so a failed or interrupted run never leaves a
//! half-written output under the name the user asked for.

mod h5;
mod store;
mod zarr;

use crate::VoxelSize;
use std::fs::FileType;
use std::path::{Path, PathBuf};

use ndarray::{s, Array3, ArrayView3, ArrayView4, ArrayViewD};

use super::cleanup::{Registered, TEMP_PREFIX};
use super::fmt_shape;
use gpuprep_core::chunked::ChunkedBlock;
use gpuprep_core::error::{Error, Result};
use h5::Hdf5Out;
use zarr::ZarrOut;
pub use zarr::{
    store_block as store_zarr_block, store_volume as store_zarr_volume,
    BlockWriter as ZarrBlockWriter, IMAGE_KEY as ZARR_IMAGE_KEY, NGFF_VERSION,
};

/// Target bytes of one chunk of a 4-D dataset.
const CHUNK_BYTES: usize = 1 << 20;
/// Most timepoints in one chunk.
const MAX_CHUNK_T: usize = 8;
/// Most bytes of chunk cache per 4-D dataset; bounds the chunk's time extent for large volumes.
const CACHE_BUDGET: usize = 32 << 20;
/// Random characters in the temporary directory's name (62^10 choices): nobody can guess it in advance.
const TEMP_RANDOM: usize = 10;
/// Linux's limits on one path component and on a whole path (`NAME_MAX`, `PATH_MAX` with its NUL).
pub const NAME_MAX: usize = 255;
pub const PATH_MAX: usize = 4096;

/// The output's format, chosen by its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// `.h5`, `.hdf5` and any other name: one HDF5 file.
    Hdf5,
    /// `.zarr` (`.ome.zarr`): an OME-NGFF 0.5 image on Zarr v3, a directory.
    OmeZarr,
}

impl OutputFormat {
    pub fn of_path(path: &Path) -> OutputFormat {
        match path.extension() {
            Some(e) if e.eq_ignore_ascii_case("zarr") => OutputFormat::OmeZarr,
            _ => OutputFormat::Hdf5,
        }
    }

    /// The output's name inside the temporary directory: fixed and short, so any output name that the
    /// file system accepts (up to `NAME_MAX`) also works for the temporary one.
    fn temp_name(self) -> &'static str {
        match self {
            OutputFormat::Hdf5 => "out.h5",
            OutputFormat::OmeZarr => "out.zarr",
        }
    }
}

/// How the output's 4-D datasets and arrays are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Raw chunks: nothing is slower than HDF5's uncompressed output.
    #[default]
    None,
    /// Zstandard (level 3) on every chunk; Zarr outputs only (HDF5 has no built-in zstd filter).
    Zstd,
    /// Blosc with LZ4 (level 5, byte shuffle): zarr-python's long-time default, fast to decode;
    /// Zarr outputs only.
    BloscLz4,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Zstd, Compression::BloscLz4];

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::BloscLz4 => "blosc-lz4",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Compression> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| Error::InvalidParameter {
                name: "compression".into(),
                message: format!("unknown compression '{s}'; expected none, zstd or blosc-lz4"),
            })
    }
}

/// Choices for the output beyond its path and shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkOptions {
    pub compression: Compression,
    /// Zarr outputs: each time slab of chunks (what one write of the sink fills) stored as one shard
    /// holding those chunks, so a store has one file per slab rather than per chunk.
    pub shard: bool,
    /// The dataset "data" will be written block by block (`Sink::write_block`, every chunk once): the
    /// HDF5 output then allocates its chunks when it is created, aligned to 4 KiB, and writes them
    /// directly to the device (`crate::direct`).
    pub blocks: bool,
}

/// The format-specific writer.
enum Out {
    Hdf5(Hdf5Out),
    // Boxed: the Zarr writer's state is several times the HDF5 one's.
    Zarr(Box<ZarrOut>),
}

/// An output being written.
pub struct Sink {
    path: PathBuf,
    format: OutputFormat,
    /// `<parent>/.gpuprep-XXXXXXXXXX/out.h5` (or `out.zarr`, a directory).
    temp: PathBuf,
    // Mode 0700, created exclusively with an unpredictable name: no other user can plant a link in it, so
    // the temporary output cannot be redirected onto someone else's file. `None` once finished.
    dir: Option<tempfile::TempDir>,
    // Keeps `dir` in the list a SIGINT/SIGTERM/SIGHUP deletes.
    registered: Option<Registered>,
    force: bool,
    t: usize,
    shape: [usize; 3],
    volumes: Vec<String>,
    // `None` once closed; dropped before `dir`, so HDF5 writes nothing more into a deleted file.
    out: Option<Out>,
}

/// Why `path` cannot be used as a path on Linux, if it is too long: a component over `NAME_MAX` bytes or
/// the whole over `PATH_MAX - 1` (the system says ENAMETOOLONG, which would otherwise read as "missing").
pub fn name_too_long(path: &Path) -> Option<String> {
    if let Some(c) = path
        .components()
        .map(|c| c.as_os_str())
        .find(|c| c.as_encoded_bytes().len() > NAME_MAX)
    {
        let shown: String = c.to_string_lossy().chars().take(24).collect();
        return Some(format!(
            "name too long: the component '{shown}...' is {} bytes; file names are limited to {NAME_MAX} bytes",
            c.as_encoded_bytes().len()
        ));
    }
    let len = path.as_os_str().as_encoded_bytes().len();
    (len >= PATH_MAX).then(|| {
        format!(
            "name too long: the path is {len} bytes; paths are limited to {} bytes",
            PATH_MAX - 1
        )
    })
}

fn is_name_too_long(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    return e.raw_os_error() == Some(libc::ENAMETOOLONG);
    #[cfg(not(unix))]
    return false;
}

/// What a non-regular file is, for the message refusing to replace it.
fn kind_of(ft: FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        } else if ft.is_char_device() {
            return "a character device";
        } else if ft.is_block_device() {
            return "a block device";
        } else if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Refuses an existing `path` that is not a regular file: `--force` only ever replaces regular files.
fn check_replaceable(path: &Path, force: bool) -> std::result::Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {
            if force {
                Ok(())
            } else {
                Err("exists; pass --force to overwrite".into())
            }
        }
        Ok(m) => {
            let target = match std::fs::read_link(path) {
                Ok(t) if m.file_type().is_symlink() => format!(" (to {})", t.display()),
                _ => String::new(),
            };
            Err(format!(
                "exists and is {}{target}; gpuprep writes only to a new file or, with --force, over a \
                 regular file (remove it or choose another output path)",
                kind_of(m.file_type())
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if is_name_too_long(&e) => {
            Err(name_too_long(path).unwrap_or_else(|| format!("name too long ({e})")))
        }
        Err(e) => Err(format!("cannot be checked ({e})")),
    }
}

/// Whether `dir` holds Zarr metadata at its root (v3 `zarr.json`, v2 `.zgroup` or `.zarray`).
pub fn is_zarr_store(dir: &Path) -> bool {
    ["zarr.json", ".zgroup", ".zarray"]
        .iter()
        .any(|f| dir.join(f).is_file())
}

/// `check_replaceable` for a Zarr output: `--force` also replaces an existing Zarr store (a directory
/// with Zarr metadata at its root), never any other directory.
fn check_replaceable_store(path: &Path, force: bool) -> std::result::Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() && is_zarr_store(path) => {
            if force {
                Ok(())
            } else {
                Err("exists; pass --force to overwrite".into())
            }
        }
        Ok(m) if m.file_type().is_dir() => Err(
            "exists and is a directory that is not a Zarr store; gpuprep writes only to a new path or, \
             with --force, over a Zarr store or a regular file (remove it or choose another output path)"
                .into(),
        ),
        _ => check_replaceable(path, force),
    }
}

impl Sink {
    /// Checks the output path and creates the temporary output with `volume_datasets`, each a 4-D float32
    /// (t, z, y, x) dataset; the format follows the path's extension ([`OutputFormat::of_path`]).
    pub fn create(
        path: &Path,
        force: bool,
        inputs: &[PathBuf],
        t: usize,
        shape: [usize; 3],
        volume_datasets: &[&str],
    ) -> Result<Sink> {
        Sink::create_with(
            path,
            force,
            inputs,
            t,
            shape,
            volume_datasets,
            SinkOptions::default(),
        )
    }

    /// [`Sink::create`] with `options`.
    pub fn create_with(
        path: &Path,
        force: bool,
        inputs: &[PathBuf],
        t: usize,
        shape: [usize; 3],
        volume_datasets: &[&str],
        options: SinkOptions,
    ) -> Result<Sink> {
        let format = OutputFormat::of_path(path);
        let out_err = |message: String| Error::Output {
            path: path.to_path_buf(),
            message,
        };
        if t == 0 || shape.contains(&0) {
            return Err(out_err(format!(
                "cannot hold {t} volumes of shape {}; every size must be nonzero",
                fmt_shape(&shape)
            )));
        }
        if let Some(why) = name_too_long(path) {
            return Err(out_err(why));
        }
        if format == OutputFormat::Hdf5 && options.compression != Compression::None {
            return Err(Error::InvalidParameter {
                name: "compression".into(),
                message: format!(
                    "{} compression is available for Zarr outputs (.zarr, .ome.zarr) only; {} is HDF5",
                    options.compression.name(),
                    path.display()
                ),
            });
        }
        if format == OutputFormat::Hdf5 && options.shard {
            return Err(Error::InvalidParameter {
                name: "sharding".into(),
                message: format!(
                    "shards are a Zarr v3 feature, for .zarr and .ome.zarr outputs; {} is HDF5",
                    path.display()
                ),
            });
        }
        let name = path
            .file_name()
            .ok_or_else(|| out_err("is not a file name (it ends in '..' or '/')".into()))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // The temporary output's path is the parent's plus `/.gpuprep-XXXXXXXXXX/out.h5`.
        let temp_len = parent.as_os_str().len()
            + 2
            + TEMP_PREFIX.len()
            + TEMP_RANDOM
            + format.temp_name().len();
        if temp_len >= PATH_MAX {
            return Err(out_err(format!(
                "name too long: the temporary file beside it would have a path of {temp_len} bytes; paths are \
                 limited to {} bytes",
                PATH_MAX - 1
            )));
        }
        if !parent.is_dir() {
            return Err(out_err(format!(
                "parent directory {} does not exist",
                parent.display()
            )));
        }
        // Compare canonical paths so `./a.h5`, `dir/../a.h5` and symlinks to an input are all caught: writing
        // over an input would destroy it before it is read.
        let canonical_out = if path.exists() {
            path.canonicalize().ok()
        } else {
            parent.canonicalize().ok().map(|p| p.join(name))
        };
        if let Some(out) = &canonical_out {
            for input in inputs {
                if input.canonicalize().ok().as_ref() == Some(out) {
                    return Err(out_err(format!(
                        "is also an input file ({}); choose another output path",
                        input.display()
                    )));
                }
            }
        }
        match format {
            OutputFormat::Hdf5 => check_replaceable(path, force),
            OutputFormat::OmeZarr => check_replaceable_store(path, force),
        }
        .map_err(out_err)?;
        let mut seen = Vec::new();
        for &ds_name in volume_datasets {
            if seen.contains(&ds_name) {
                return Err(out_err(format!("dataset '{ds_name}' requested twice")));
            }
            seen.push(ds_name);
        }

        let mut builder = tempfile::Builder::new();
        builder.prefix(TEMP_PREFIX).rand_bytes(TEMP_RANDOM);
        // tempfile creates directories with the umask's mode (often 0755) unless told.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let dir = builder.tempdir_in(&parent).map_err(|e| {
            out_err(format!(
                "cannot create a temporary directory in {} ({e})",
                parent.display()
            ))
        })?;
        let registered = Registered::new(dir.path());
        let temp = dir.path().join(format.temp_name());
        // From here on, dropping `sink` on an error deletes the temporary directory.
        let mut sink = Sink {
            path: path.to_path_buf(),
            format,
            temp,
            dir: Some(dir),
            registered: Some(registered),
            force,
            t,
            shape,
            volumes: volume_datasets.iter().map(|s| s.to_string()).collect(),
            out: None,
        };
        sink.out = Some(match format {
            OutputFormat::Hdf5 => Out::Hdf5(Hdf5Out::create(
                path,
                &sink.temp,
                t,
                shape,
                volume_datasets,
                options.blocks,
            )?),
            OutputFormat::OmeZarr => Out::Zarr(Box::new(ZarrOut::create(
                path,
                &sink.temp,
                t,
                shape,
                volume_datasets,
                options,
            )?)),
        });
        Ok(sink)
    }

    /// The output's format.
    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// Writes volume `t` of the 4-D dataset `name`.
    pub fn write_volume(&mut self, name: &str, t: usize, vol: ArrayView3<f32>) -> Result<()> {
        self.check_volume(name, t)?;
        if vol.shape() != self.shape {
            return Err(Error::Data(format!(
                "volume {t} for dataset '{name}' has shape {}, expected {}",
                fmt_shape(vol.shape()),
                fmt_shape(&self.shape)
            )));
        }
        match self.out_mut()? {
            Out::Hdf5(o) => o.write_volume(name, t, vol),
            Out::Zarr(o) => o.write_volume(name, t, vol),
        }
    }

    /// The chunk shape (t, z, y, x) of the 4-D datasets, in which `write_block` takes its blocks
    /// (each chunk written once, by one writer). `None` where a block would be the whole series (a
    /// sharded Zarr output, whose shards span whole volumes).
    pub fn block_chunk(&self) -> Option<[usize; 4]> {
        match self.out.as_ref()? {
            Out::Hdf5(_) => Some(volume_chunking(self.t, self.shape).0),
            Out::Zarr(o) => o.block_chunk(),
        }
    }

    /// How many chunks (or whole chunk files) went straight to the device so far (`crate::direct`).
    pub fn written_directly(&self) -> usize {
        match self.out.as_ref() {
            Some(Out::Hdf5(o)) => o.written_directly(),
            Some(Out::Zarr(o)) => o.written_directly(),
            None => 0,
        }
    }

    /// Writes every timepoint of the 4-D dataset `name` over `block`: chunks of `block_chunk`, one
    /// along z and y, a run of them along x, each stored as it is held.
    pub fn write_block(&mut self, name: &str, block: &ChunkedBlock<f32>) -> Result<()> {
        self.check_volume(name, 0)?;
        let Some(chunk) = self.block_chunk() else {
            return Err(Error::Output {
                path: self.path.clone(),
                message: "this output stores whole volumes, not blocks".into(),
            });
        };
        let (origin, extent) = (block.origin(), block.extent());
        let [_, cz, cy, cx] = chunk;
        let [nz, ny, nx] = self.shape;
        let whole = block.chunk() == chunk
            && extent[0] == self.t
            && origin[0].is_multiple_of(cz)
            && origin[1].is_multiple_of(cy)
            && origin[2].is_multiple_of(cx)
            && origin[0] < nz
            && origin[1] < ny
            && origin[2] < nx
            && extent[1] == cz.min(nz - origin[0])
            && extent[2] == cy.min(ny - origin[1])
            && extent[3] > 0
            && origin[2] + extent[3] <= nx
            && (extent[3].is_multiple_of(cx) || origin[2] + extent[3] == nx);
        if !whole {
            return Err(Error::Data(format!(
                "block of dataset '{name}' at (z, y, x) = {} has shape {} in chunks of {}; \
                 expected {} timepoints and whole chunks of {} within {}",
                fmt_shape(&origin),
                fmt_shape(&extent),
                fmt_shape(&block.chunk()),
                self.t,
                fmt_shape(&chunk),
                fmt_shape(&self.shape)
            )));
        }
        match self.out_mut()? {
            Out::Hdf5(o) => o.write_block(name, block),
            Out::Zarr(o) => o.write_block(name, block),
        }
    }

    /// Reads volume `t` of the 4-D dataset `name` back from the output being written (tests; the
    /// z-score's second pass reads its own scratch file, not the output).
    pub fn read_volume(&self, name: &str, t: usize) -> Result<Array3<f32>> {
        self.check_volume(name, t)?;
        match self.out()? {
            Out::Hdf5(o) => o.read_volume(name, t),
            Out::Zarr(o) => o.read_volume(name, t),
        }
    }

    /// Writes a float64 array (e.g. "shifts" (t, 3), "error" (t,)), replacing one of that name.
    pub fn write_array_f64(&mut self, name: &str, data: ArrayViewD<f64>) -> Result<()> {
        self.check_array_name(name)?;
        let data = data.as_standard_layout();
        match self.out_mut()? {
            Out::Hdf5(o) => o.write_array(name, data.view()),
            Out::Zarr(o) => o.write_array(
                name,
                data.view(),
                zarrs::array::data_type::float64(),
                0.0f64,
            ),
        }
    }

    /// Writes a float32 array (e.g. "mean", "std" (z, y, x)), replacing one of that name.
    pub fn write_array_f32(&mut self, name: &str, data: ArrayViewD<f32>) -> Result<()> {
        self.check_array_name(name)?;
        let data = data.as_standard_layout();
        match self.out_mut()? {
            Out::Hdf5(o) => o.write_array(name, data.view()),
            Out::Zarr(o) => o.write_array(
                name,
                data.view(),
                zarrs::array::data_type::float32(),
                0.0f32,
            ),
        }
    }

    /// Sets a root attribute to a UTF-8 string (h5py reads it as `str`; a JSON string in Zarr).
    pub fn set_attr_str(&mut self, name: &str, value: &str) -> Result<()> {
        match self.out_mut()? {
            Out::Hdf5(o) => o.set_attr_str(name, value),
            Out::Zarr(o) => o.set_attr(name, value.into()),
        }
    }

    /// Sets a root attribute to a float64 (in Zarr a JSON number, or "NaN", "Infinity", "-Infinity" as
    /// Zarr v3 writes non-finite fill values).
    pub fn set_attr_f64(&mut self, name: &str, value: f64) -> Result<()> {
        match self.out_mut()? {
            Out::Hdf5(o) => o.set_attr_f64(name, value),
            Out::Zarr(o) => o.set_attr(name, json_f64(value)),
        }
    }

    pub fn set_attr_i64(&mut self, name: &str, value: i64) -> Result<()> {
        match self.out_mut()? {
            Out::Hdf5(o) => o.set_attr_i64(name, value),
            Out::Zarr(o) => o.set_attr(name, value.into()),
        }
    }

    /// Sets a root attribute to a 1-D array of UTF-8 strings (e.g. the input files).
    pub fn set_attr_strs(&mut self, name: &str, values: &[String]) -> Result<()> {
        match self.out_mut()? {
            Out::Hdf5(o) => o.set_attr_strs(name, values),
            Out::Zarr(o) => o.set_attr(name, values.into()),
        }
    }

    /// Where the output is being written until `finish` (a file, or a Zarr store's directory).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The private directory the output is written in until `finish`; other temporary files of the run (the
    /// z-score scratch) belong here too, so one removal takes them all.
    pub fn temp_dir(&self) -> &Path {
        self.temp
            .parent()
            .expect("the temporary output is inside its directory")
    }

    /// The voxel size the output records (OME-Zarr: its axes' units and scale transform; HDF5: the
    /// attributes `voxel_size` and `voxel_units`, per t, z, y, x). Unset: scale 1, no units.
    pub fn set_voxel_size(&mut self, v: &VoxelSize) -> Result<()> {
        match self.out_mut()? {
            Out::Zarr(o) => o.voxel_size = Some(v.clone()),
            Out::Hdf5(_) => {}
        }
        let scale = format!("{},{},{},{}", v[0].0, v[1].0, v[2].0, v[3].0);
        let units: Vec<&str> = v.iter().map(|(_, u)| u.as_deref().unwrap_or("")).collect();
        self.set_attr_str("voxel_size", &scale)?;
        self.set_attr_str("voxel_units", &units.join(","))
    }

    /// The path the output will have after `finish`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Completes and closes the output and moves it to the final path (over an existing regular file, or
    /// Zarr store for a Zarr output, only with force), then removes the temporary directory.
    pub fn finish(mut self) -> Result<PathBuf> {
        let mut out = self.out.take().ok_or_else(|| self.closed())?;
        match &mut out {
            Out::Hdf5(o) => o.close()?,
            Out::Zarr(o) => {
                let name = self.image_name();
                o.close(&name)?
            }
        }
        drop(out);

        let dir = self.dir.take().ok_or_else(|| self.closed())?;
        let registered = self.registered.take().ok_or_else(|| self.closed())?;
        // Deregistered and moved under the cleanup lock: an interrupt now either comes first and deletes
        // the unfinished output, or waits and finds the output complete and in place.
        registered.finish_with(|| match self.move_into_place(dir.path()) {
            Ok(()) => {
                let _ = dir.close();
                Ok(self.path.clone())
            }
            Err(e) => {
                // The output is complete: whatever stopped the move, keep it where the message says.
                let _ = dir.keep();
                Err(e)
            }
        })
    }

    /// The OME image's name: the output's file name without `.zarr` / `.ome.zarr`.
    fn image_name(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lower = name.to_ascii_lowercase();
        [".ome.zarr", ".zarr"]
            .iter()
            .find(|ext| lower.ends_with(*ext))
            .map_or(name.clone(), |ext| {
                name[..name.len() - ext.len()].to_string()
            })
    }

    /// Moves the closed output to the final path; every error names where the complete result stays.
    fn move_into_place(&self, dir: &Path) -> Result<()> {
        let kept = |message: String| Error::Output {
            path: self.path.clone(),
            message: format!("{message}; the result is in {}", self.temp.display()),
        };
        let io_err = |e: std::io::Error| kept(format!("cannot be put in place ({e})"));
        let appeared = || {
            kept(
                "appeared while gpuprep was writing; not overwritten (pass --force to overwrite)"
                    .into(),
            )
        };
        if self.format == OutputFormat::OmeZarr {
            return self.move_store_into_place(dir, &kept, &io_err, &appeared);
        }
        if self.force {
            // Checked again: a FIFO or link may have appeared at the output path while we were writing.
            check_replaceable(&self.path, true).map_err(kept)?;
            return std::fs::rename(&self.temp, &self.path).map_err(io_err);
        }
        // Without --force the output must still not exist: a hard link fails atomically if it does, where
        // a rename would silently replace a file that appeared while we were writing.
        match std::fs::hard_link(&self.temp, &self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(appeared()),
            // Filesystems without hard links: check, then rename.
            Err(_) => match std::fs::symlink_metadata(&self.path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::rename(&self.temp, &self.path).map_err(io_err)
                }
                Ok(_) => Err(appeared()),
                Err(e) => Err(io_err(e)),
            },
        }
    }

    /// A directory cannot be hard-linked, and a rename replaces an empty directory silently: the store is
    /// renamed with `RENAME_NOREPLACE`. With --force an existing store (or file) is first moved into the
    /// temporary directory, which `finish` then removes with it.
    fn move_store_into_place(
        &self,
        dir: &Path,
        kept: &dyn Fn(String) -> Error,
        io_err: &dyn Fn(std::io::Error) -> Error,
        appeared: &dyn Fn() -> Error,
    ) -> Result<()> {
        let mut replaced = None;
        if self.force {
            check_replaceable_store(&self.path, true).map_err(kept)?;
            if std::fs::symlink_metadata(&self.path).is_ok() {
                let aside = dir.join("replaced");
                std::fs::rename(&self.path, &aside).map_err(io_err)?;
                replaced = Some(aside);
            }
        }
        match rename_noreplace(&self.temp, &self.path) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Put back what --force moved aside: the old output stays if the new one cannot go there.
                if let Some(aside) = replaced {
                    let _ = rename_noreplace(&aside, &self.path);
                }
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Err(appeared())
                } else {
                    Err(io_err(e))
                }
            }
        }
    }

    fn check_volume(&self, name: &str, t: usize) -> Result<()> {
        if !self.volumes.iter().any(|n| n == name) {
            return Err(Error::Output {
                path: self.path.clone(),
                message: format!(
                    "has no volume dataset '{name}' (created: {})",
                    self.volumes.join(", ")
                ),
            });
        }
        if t >= self.t {
            return Err(Error::Data(format!(
                "timepoint {t} out of range for dataset '{name}' of {} timepoints",
                self.t
            )));
        }
        Ok(())
    }

    fn check_array_name(&self, name: &str) -> Result<()> {
        if self.volumes.iter().any(|n| n == name) {
            return Err(Error::Output {
                path: self.path.clone(),
                message: format!(
                    "dataset '{name}' is one of the 4-D volume datasets; choose another name"
                ),
            });
        }
        Ok(())
    }

    fn out(&self) -> Result<&Out> {
        self.out.as_ref().ok_or_else(|| self.closed())
    }

    fn out_mut(&mut self) -> Result<&mut Out> {
        let closed = self.closed();
        self.out.as_mut().ok_or(closed)
    }

    fn closed(&self) -> Error {
        Error::Output {
            path: self.path.clone(),
            message: "the output file is already closed".into(),
        }
    }
}

/// `rename(from, to)` failing with `AlreadyExists` if `to` exists, where the system can say so atomically
/// (Linux's `renameat2`); elsewhere, and on file systems without it, checked first.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: both are valid NUL-terminated paths, relative to the working directory.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(e);
        }
    }
    match std::fs::symlink_metadata(to) {
        Ok(_) => Err(std::io::ErrorKind::AlreadyExists.into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::rename(from, to),
        Err(e) => Err(e),
    }
}

/// A float64 attribute as JSON, non-finite values as Zarr v3 writes them in fill values.
fn json_f64(v: f64) -> serde_json::Value {
    match serde_json::Number::from_f64(v) {
        Some(n) => serde_json::Value::Number(n),
        None if v.is_nan() => "NaN".into(),
        None if v > 0.0 => "Infinity".into(),
        None => "-Infinity".into(),
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("temp", &self.temp)
            .field("t", &self.t)
            .field("shape", &self.shape)
            .field("volumes", &self.volumes)
            .finish_non_exhaustive()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Closed before the directory goes, so HDF5 writes nothing more into a deleted file. After a
        // successful `finish` there is nothing left to do: `dir` is `None`.
        drop(self.out.take());
        drop(self.dir.take());
    }
}

/// The origins (t, z, y, x) within `data` of the chunks of `chunk` that tile it, in C order, each
/// with its part of `data` (cut short where `data` ends).
fn chunks_of<'a>(
    data: ArrayView4<'a, f32>,
    chunk: [usize; 4],
) -> impl Iterator<Item = ([usize; 4], ArrayView4<'a, f32>)> + 'a {
    let extent: [usize; 4] = data.shape().try_into().expect("four axes");
    let counts = std::array::from_fn::<usize, 4, _>(|i| extent[i].div_ceil(chunk[i].max(1)));
    (0..counts.iter().product::<usize>()).map(move |k| {
        let mut rest = k;
        let mut lo = [0; 4];
        for i in (0..4).rev() {
            lo[i] = rest % counts[i] * chunk[i];
            rest /= counts[i];
        }
        let hi = std::array::from_fn::<usize, 4, _>(|i| (lo[i] + chunk[i]).min(extent[i]));
        let part = data.slice_move(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2], lo[3]..hi[3]]);
        (lo, part)
    })
}

/// `part` (one chunk of a 4-D dataset, cut short where it reaches the dataset's edge) into `buf` as
/// a whole chunk of `chunk`, in C order, padded with the fill value 0 as the formats store it.
fn gather_chunk(part: ArrayView4<f32>, chunk: [usize; 4], buf: &mut Vec<f32>) {
    buf.resize(chunk.iter().product(), 0.0);
    let mut dst = ndarray::ArrayViewMut4::from_shape(chunk, &mut buf[..])
        .expect("the buffer holds one chunk");
    let (pt, pz, py, px) = part.dim();
    if [pt, pz, py, px] != chunk {
        dst.fill(0.0);
    }
    // Row by row: ndarray's element-wise copy over four axes costs more than the copies.
    for (mut d, s) in dst
        .slice_mut(s![..pt, ..pz, ..py, ..px])
        .rows_mut()
        .into_iter()
        .zip(part.rows())
    {
        match (d.as_slice_mut(), s.as_slice()) {
            (Some(d), Some(s)) => d.copy_from_slice(s),
            _ => d.assign(&s),
        }
    }
}

/// Chunk shape, chunk-cache bytes and cache slots for a (t, z, y, x) float32 dataset.
///
/// Users read the output two ways: whole volumes (`f["data"][t]`) and voxel or small-region time series
/// (`f["data"][:, z, y, x]`). A chunk of one volume makes a time series read touch `t` chunks; a chunk spanning
/// all of t makes a volume read pull in the whole file. We take the middle: up to 8 timepoints per chunk and a
/// compact spatial block, about 1 MiB in all, so a time series costs t/8 chunk reads and a volume read reads at
/// most 8 volumes' worth of chunks (volumes up to 4 MiB; see below for larger ones). The spatial block halves the largest axis until it fits, which keeps it
/// near-cubic (good for regional time series) and tiles each axis into near-equal parts; on ties the slowest
/// axis is halved first, so x keeps the longest contiguous runs. E.g. 10 x 100³ -> (8, 25, 25, 50), 977 KiB.
///
/// The pipeline writes one volume at a time, which touches every chunk of the current t-slab once per volume;
/// the cache holds that whole slab so each chunk is written to disk once, when full, rather than read back and
/// rewritten per volume. The slab is `ct` volumes, so `ct` is lowered for large volumes to keep the cache within
/// `CACHE_BUDGET` per dataset whatever the number of timepoints (e.g. 2 for 16 MiB volumes: a time series
/// then costs t/2 chunk reads); at `ct = 1` every write covers whole chunks and one chunk of cache is enough.
pub fn volume_chunking(t: usize, shape: [usize; 3]) -> ([usize; 4], usize, usize) {
    let vol_bytes = shape.iter().product::<usize>() * 4;
    let max_ct = (CACHE_BUDGET / vol_bytes.max(1))
        .clamp(1, MAX_CHUNK_T)
        .min(t);
    // The largest ct whose slab, counting the chunks' overhang past the volume's edges, fits the cache.
    let mut ct = max_ct;
    loop {
        let c = spatial_chunk(shape, (CHUNK_BYTES / 4 / ct).max(1));
        let chunk = [ct, c[0], c[1], c[2]];
        let chunks_per_slab: usize = (0..3).map(|i| shape[i].div_ceil(c[i])).product();
        let chunk_bytes = chunk.iter().product::<usize>() * 4;
        let slab_bytes = chunks_per_slab * chunk_bytes;
        if ct > 1 && slab_bytes > CACHE_BUDGET {
            ct -= 1;
            continue;
        }
        let cache_bytes = if ct == 1 {
            CHUNK_BYTES.max(chunk_bytes)
        } else {
            slab_bytes.max(CHUNK_BYTES)
        };
        // HDF5 advises a prime number of hash slots, about 10-100 times the chunks that fit.
        let slots = next_prime((chunks_per_slab * 10).max(521));
        return (chunk, cache_bytes, slots);
    }
}

/// The spatial block of at most `budget` voxels: the largest axis halved until it fits (on ties the
/// slowest, so x keeps the longest contiguous runs).
fn spatial_chunk(shape: [usize; 3], budget: usize) -> [usize; 3] {
    let mut c = shape;
    while c.iter().product::<usize>() > budget {
        let i = (0..3)
            .max_by_key(|&i| (c[i], std::cmp::Reverse(i)))
            .unwrap();
        if c[i] == 1 {
            break;
        }
        c[i] = c[i].div_ceil(2);
    }
    c
}

fn next_prime(mut n: usize) -> usize {
    let is_prime = |n: usize| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    while !is_prime(n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::{volume_chunking, CACHE_BUDGET};

    #[test]
    fn chunks_are_about_a_mebibyte_and_cache_holds_a_slab() {
        for (t, shape) in [
            (10, [100, 100, 100]),
            (3, [4, 5, 6]),
            (1000, [64, 512, 512]),
            (50, [1, 2048, 2048]),
        ] {
            let (c, cache, slots) = volume_chunking(t, shape);
            let bytes = c.iter().product::<usize>() * 4;
            assert!(bytes <= 1 << 20, "{c:?}");
            assert!(c[0] <= t.min(8) && c[0] >= 1);
            for i in 0..3 {
                assert!(c[i + 1] >= 1 && c[i + 1] <= shape[i]);
            }
            let slab: usize = (0..3)
                .map(|i| shape[i].div_ceil(c[i + 1]))
                .product::<usize>()
                * bytes;
            if c[0] > 1 {
                assert!(cache >= slab, "{c:?} cache {cache} slab {slab}");
            }
            assert!(cache <= CACHE_BUDGET);
            assert!(slots >= 521);
        }
        assert_eq!(volume_chunking(10, [100, 100, 100]).0, [8, 25, 25, 50]);
        assert_eq!(volume_chunking(50, [64, 256, 256]).0[0], 2);
    }
}
