//! TIFF and BigTIFF inputs: a series of files holding one 3-D stack each (a page per z plane, one
//! timepoint per file), or multi-page stacks whose pages map onto (t, c, z) by ImageJ hyperstack
//! metadata, OME-XML, or `--axes`.
//!
//! Every page of every file is checked when the source is opened (size, sample type, and that its
//! data lies inside the file), so a stack cut short or holding a page of another shape fails before
//! any work starts. Pages are decoded by the `tiff` crate (uncompressed, LZW, deflate, PackBits, zstd).

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::Array3;
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

use super::{Axes, Dtype, OutOfRange};
use crate::fmt_shape;
use crate::VoxelSize;
use gpuprep_core::error::{Error, Result};

type Dec = Decoder<BufReader<File>>;

/// Where a file's page layout came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    ImageJ,
    Ome,
    /// tifffile's own JSON description (`{"shape": [...], "axes": "TZYX"}`).
    Tifffile,
    /// No usable metadata: all pages along one axis, by `--axes` or the input rule.
    Plain,
}

/// One page's element type as the file states it, for messages about types gpuprep does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PageType {
    dtype: Option<Dtype>,
    text: String,
}

/// What one file holds, after walking all its pages.
#[derive(Clone, Debug)]
struct Probe {
    pages: usize,
    /// (y, x) of every page.
    page: [usize; 2],
    ptype: PageType,
    bigtiff: bool,
    compression: String,
    /// Sizes of the t, c, z axes of the file's pages, and the page stride of each.
    sizes: [usize; 3],
    strides: [usize; 3],
    origin: Origin,
    voxel: Option<VoxelSize>,
}

/// Validated TIFF files and how their pages map onto (t, z, y, x).
pub(crate) struct TiffInput {
    files: Vec<PathBuf>,
    probes: Vec<Probe>,
    axes: Axes,
    dtype: Dtype,
    channel: usize,
    /// The decoders of the file read last (one per decoding thread), kept for a file of many
    /// timepoints (see `read`).
    held: Mutex<Vec<(usize, Dec)>>,
}

impl fmt::Debug for TiffInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TiffInput")
            .field("files", &self.files.len())
            .field("axes", &self.axes)
            .finish_non_exhaustive()
    }
}

/// Whether `path` starts with a TIFF or BigTIFF signature.
pub fn has_tiff_signature(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    let read = File::open(path).and_then(|mut f| f.read_exact(&mut head));
    read.is_ok() && matches!(&head, b"II*\0" | b"MM\0*" | b"II+\0" | b"MM\0+")
}

/// Whether a file name says TIFF (`.tif`, `.tiff`, `.btf`, `.tf8`, any case).
pub fn is_tiff_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["tif", "tiff", "btf", "tf8"].contains(&e.to_ascii_lowercase().as_str()))
}

fn input_err(path: &Path, message: String) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        message,
    }
}

fn open_decoder(path: &Path) -> std::result::Result<Dec, String> {
    let file = File::open(path).map_err(|e| format!("cannot be read ({e})"))?;
    let mut limits = Limits::default();
    // A page is decoded whole: allow pages up to 4 GiB (the memory check bounds the run as a whole).
    limits.decoding_buffer_size = 4 << 30;
    limits.ifd_value_size = 64 << 20;
    Decoder::new(BufReader::new(file))
        .map(|d| d.with_limits(limits))
        .map_err(|e| {
            format!(
                "is not a readable TIFF file ({})",
                crate::one_line(&e.to_string())
            )
        })
}

fn page_type(dec: &mut Dec) -> std::result::Result<PageType, String> {
    use tiff::ColorType;
    let ct = dec.colortype().map_err(|e| e.to_string())?;
    let format = dec
        .find_tag_unsigned_vec::<u16>(Tag::SampleFormat)
        .map_err(|e| e.to_string())?
        .and_then(|v| v.first().copied())
        .unwrap_or(1);
    let dtype = match (ct, format) {
        (ColorType::Gray(8), 1) => Some(Dtype::U8),
        (ColorType::Gray(16), 1) => Some(Dtype::U16),
        (ColorType::Gray(16), 2) => Some(Dtype::I16),
        (ColorType::Gray(32), 2) => Some(Dtype::I32),
        (ColorType::Gray(32), 3) => Some(Dtype::F32),
        (ColorType::Gray(64), 3) => Some(Dtype::F64),
        _ => None,
    };
    let text = match (dtype, ct) {
        (Some(d), _) => d.name().to_string(),
        (None, ColorType::Gray(bits)) => match format {
            1 => format!("uint{bits}"),
            2 => format!("int{bits}"),
            3 => format!("float{bits}"),
            f => format!("{bits}-bit samples of format {f}"),
        },
        (None, other) => format!("{other:?} (more than one sample per pixel)"),
    };
    Ok(PageType { dtype, text })
}

fn compression_name(dec: &mut Dec) -> String {
    use tiff::tags::CompressionMethod as C;
    let code = dec
        .find_tag_unsigned::<u16>(Tag::Compression)
        .ok()
        .flatten()
        .unwrap_or(1);
    match C::from_u16(code) {
        Some(C::None) => "no compression".into(),
        Some(C::LZW) => "LZW".into(),
        Some(C::Deflate) | Some(C::OldDeflate) => "deflate".into(),
        Some(C::PackBits) => "PackBits".into(),
        Some(C::ZSTD) => "zstd".into(),
        Some(other) => format!("{other:?}"),
        None => format!("compression {code}"),
    }
}

/// The end of the page's data (strips or tiles): the file must be at least this long.
fn data_end(dec: &mut Dec) -> std::result::Result<u64, String> {
    let (offsets, counts) = match dec
        .find_tag_unsigned_vec::<u64>(Tag::TileOffsets)
        .map_err(|e| e.to_string())?
    {
        Some(o) => (o, dec.find_tag_unsigned_vec::<u64>(Tag::TileByteCounts)),
        None => (
            dec.find_tag_unsigned_vec::<u64>(Tag::StripOffsets)
                .map_err(|e| e.to_string())?
                .unwrap_or_default(),
            dec.find_tag_unsigned_vec::<u64>(Tag::StripByteCounts),
        ),
    };
    let counts = counts
        .map_err(|e| e.to_string())?
        .ok_or("it has no byte counts for its strips or tiles")?;
    Ok(offsets
        .iter()
        .zip(&counts)
        .map(|(&o, &c)| o.saturating_add(c))
        .max()
        .unwrap_or(0))
}

/// The ImageDescription of the first page: UTF-8, or Latin-1 as older microscope software writes it
/// (its "µm" is byte 0xB5), rather than dropping the axes metadata for one byte. Too long to be
/// metadata (past 64 MiB, the decoder's limit) reads as none.
fn description(dec: &mut Dec) -> std::result::Result<Option<String>, String> {
    let mut ifd = dec.image_ifd();
    let Some(entry) = ifd.find_entry(Tag::ImageDescription) else {
        return Ok(None);
    };
    let Ok(len) = usize::try_from(entry.count()) else {
        return Ok(None);
    };
    if len > 64 << 20 {
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    ifd.find_tag_bytes(Tag::ImageDescription, &mut buf, 0)
        .map_err(|e| format!("its ImageDescription cannot be read ({e})"))?;
    if let Some(nul) = buf.iter().position(|&b| b == 0) {
        buf.truncate(nul);
    }
    Ok(Some(match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => e.into_bytes().into_iter().map(char::from).collect(),
    }))
}

fn rational(dec: &mut Dec, tag: Tag) -> Option<f64> {
    use tiff::decoder::ifd::Value;
    match dec.find_tag(tag).ok().flatten()? {
        Value::Rational(n, d) if n > 0 && d > 0 => Some(f64::from(n) / f64::from(d)),
        Value::Float(f) if f > 0.0 => Some(f64::from(f)),
        Value::Double(f) if f > 0.0 => Some(f),
        _ => None,
    }
}

/// A unit name as OME-NGFF writes it (UDUNITS-2), for the spellings microscopes and ImageJ use.
fn ngff_unit(u: &str) -> Option<String> {
    let name = match u.trim() {
        "micron" | "microns" | "um" | "µm" | "μm" | "\\u00B5m" | "micrometer" => "micrometer",
        "nm" | "nanometer" => "nanometer",
        "mm" | "millimeter" => "millimeter",
        "cm" | "centimeter" => "centimeter",
        "m" | "meter" => "meter",
        "s" | "sec" | "second" | "seconds" => "second",
        "ms" | "millisecond" => "millisecond",
        "min" | "minute" => "minute",
        "h" | "hour" => "hour",
        _ => return None,
    };
    Some(name.to_string())
}

/// Layout read from the first page's ImageDescription, where it has one: (t, c, z) sizes and page
/// strides, and the voxel size.
struct Meta {
    origin: Origin,
    sizes: [usize; 3],
    strides: [usize; 3],
    voxel: Option<VoxelSize>,
}

/// ImageJ's `key=value` lines: pages in (t, z, c) order, c fastest. `None` for a plain stack (only
/// `images=`), which says nothing about what its pages are.
fn imagej_meta(
    desc: &str,
    xres: Option<f64>,
    yres: Option<f64>,
) -> std::result::Result<Option<Meta>, String> {
    let kv: Vec<(&str, &str)> = desc
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let count = |k: &str| -> std::result::Result<Option<usize>, String> {
        get(k)
            .map(|v| {
                v.parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("ImageJ metadata has {k}={v}, not a positive count"))
            })
            .transpose()
    };
    let (c, z, t) = (count("channels")?, count("slices")?, count("frames")?);
    if c.is_none() && z.is_none() && t.is_none() {
        return Ok(None);
    }
    let (c, z, t) = (c.unwrap_or(1), z.unwrap_or(1), t.unwrap_or(1));
    if let Some(images) = count("images")? {
        if images != c * z * t {
            return Err(format!(
                "ImageJ metadata says images={images} but channels × slices × frames = {c} × {z} × {t}"
            ));
        }
    }
    let unit = get("unit").and_then(ngff_unit);
    let spacing = get("spacing").and_then(|v| v.parse::<f64>().ok());
    let finterval = get("finterval").and_then(|v| v.parse::<f64>().ok());
    let voxel = (unit.is_some() || spacing.is_some() || finterval.is_some()).then(|| {
        let space = |s: Option<f64>| (s.unwrap_or(1.0), unit.clone());
        [
            (
                finterval.unwrap_or(1.0),
                finterval.map(|_| "second".to_string()),
            ),
            space(spacing),
            space(yres.map(|r| 1.0 / r)),
            space(xres.map(|r| 1.0 / r)),
        ]
    });
    Ok(Some(Meta {
        origin: Origin::ImageJ,
        sizes: [t, c, z],
        strides: [c * z, 1, c],
        voxel,
    }))
}

/// The first image's `Pixels` element of OME-XML: sizes, DimensionOrder and physical sizes.
fn ome_meta(desc: &str) -> std::result::Result<Meta, String> {
    let doc = roxmltree::Document::parse(desc)
        .map_err(|e| format!("its OME-XML cannot be parsed ({e})"))?;
    let px = doc
        .descendants()
        .find(|n| n.tag_name().name() == "Pixels")
        .ok_or("its OME-XML has no Pixels element")?;
    let size = |a: &str| -> std::result::Result<usize, String> {
        let v = px.attribute(a).unwrap_or("1");
        v.parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("its OME-XML has {a}=\"{v}\", not a positive size"))
    };
    let (t, c, z) = (size("SizeT")?, size("SizeC")?, size("SizeZ")?);
    let order = px.attribute("DimensionOrder").unwrap_or("XYZCT");
    let rest: Vec<char> = order.chars().skip(2).collect();
    let valid = order.len() == 5 && order.starts_with("XY") && {
        let mut r = rest.clone();
        r.sort_unstable();
        r == ['C', 'T', 'Z']
    };
    if !valid {
        return Err(format!(
            "its OME-XML has DimensionOrder \"{order}\"; expected XY followed by Z, C and T in some order"
        ));
    }
    let mut strides = [0; 3];
    let mut step = 1;
    for ch in rest {
        let (i, n) = match ch {
            'T' => (0, t),
            'C' => (1, c),
            _ => (2, z),
        };
        strides[i] = step;
        step *= n;
    }
    let physical = |a: &str, default_unit: &str| {
        let v = px.attribute(a).and_then(|v| v.parse::<f64>().ok())?;
        let unit = px.attribute(&*format!("{a}Unit")).unwrap_or(default_unit);
        Some((v, ngff_unit(unit)))
    };
    let axes = [
        physical("TimeIncrement", "s"),
        physical("PhysicalSizeZ", "µm"),
        physical("PhysicalSizeY", "µm"),
        physical("PhysicalSizeX", "µm"),
    ];
    let voxel = axes
        .iter()
        .any(Option::is_some)
        .then(|| axes.map(|a| a.unwrap_or((1.0, None))));
    Ok(Meta {
        origin: Origin::Ome,
        sizes: [t, c, z],
        strides,
        voxel,
    })
}

/// tifffile's JSON description of the array it wrote: the leading axes of `shape` (before the pages'
/// y and x) split the pages, row-major, named by `axes` where it has them (T, C, Z; others only of length
/// 1), else a single leading axis says nothing (the plain-stack rule applies) and two are (t, z), as
/// numpy's (t, z, y, x). A description that is not such JSON, or whose shape ends in other than the
/// page size (samples per pixel), is no metadata.
fn tifffile_meta(
    desc: &str,
    page: [usize; 2],
    pages: usize,
) -> std::result::Result<Option<Meta>, String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(desc) else {
        return Ok(None);
    };
    let Some(shape) = v.get("shape").and_then(|s| s.as_array()).and_then(|a| {
        a.iter()
            .map(|n| n.as_u64().map(|n| n as usize))
            .collect::<Option<Vec<_>>>()
    }) else {
        return Ok(None);
    };
    let n = shape.len();
    if n < 3 || shape[n - 2..] != page || shape[..n - 2].iter().product::<usize>() != pages {
        return Ok(None);
    }
    let lead = &shape[..n - 2];
    let names: Vec<char> = match v.get("axes").and_then(|a| a.as_str()) {
        Some(a) if a.chars().count() == n => a.chars().take(n - 2).collect(),
        Some(a) => {
            return Err(format!(
                "its tifffile description has axes \"{a}\" for a shape of {n} axes"
            ))
        }
        None if lead.len() == 1 => return Ok(None),
        None if lead.len() == 2 => vec!['T', 'Z'],
        None => {
            return Err(format!(
                "its tifffile description has shape {} without axis names, so its pages cannot be \
                 split into t, c and z; write it with ImageJ or OME metadata",
                fmt_shape(&shape)
            ))
        }
    };
    let (mut sizes, mut strides) = ([1; 3], [0; 3]);
    // An axis not named keeps stride 0: its only index is 0.
    let mut step = 1;
    for (&ch, &len) in names.iter().zip(lead).rev() {
        let i = match ch.to_ascii_uppercase() {
            'T' => 0,
            'C' => 1,
            'Z' => 2,
            _ if len == 1 => continue,
            other => {
                return Err(format!(
                    "its tifffile description has axis '{other}' of length {len}; gpuprep reads t, c and z"
                ))
            }
        };
        if sizes[i] != 1 || strides[i] != 0 {
            return Err(format!("its tifffile description names axis '{ch}' twice"));
        }
        sizes[i] = len;
        strides[i] = step;
        step *= len;
    }
    Ok(Some(Meta {
        origin: Origin::Tifffile,
        sizes,
        strides,
        voxel: None,
    }))
}

/// Opens `path` and walks every page, checking each against the first; then reads the layout.
fn probe(path: &Path, requested: Option<Axes>) -> Result<Probe> {
    let err = |m: String| input_err(path, m);
    let mut dec = open_decoder(path).map_err(err)?;
    let len = std::fs::metadata(path)
        .map_err(|e| err(format!("cannot be read ({e})")))?
        .len();
    let page_err = |i: usize, m: String| err(format!("page {i}: {m}"));
    let dims = |dec: &mut Dec, i: usize| -> Result<[usize; 2]> {
        let (w, h) = dec.dimensions().map_err(|e| page_err(i, e.to_string()))?;
        Ok([h as usize, w as usize])
    };
    let page = dims(&mut dec, 0)?;
    let ptype = page_type(&mut dec).map_err(|m| page_err(0, m))?;
    let compression = compression_name(&mut dec);
    let desc = description(&mut dec).map_err(|m| page_err(0, m))?;
    let (xres, yres) = (
        rational(&mut dec, Tag::XResolution),
        rational(&mut dec, Tag::YResolution),
    );
    let mut pages = 0;
    loop {
        let i = pages;
        if i > 0 {
            let d = dims(&mut dec, i)?;
            if d != page {
                return Err(page_err(
                    i,
                    format!(
                        "its (y, x) size is {} but page 0's is {}; every page must have the same size",
                        fmt_shape(&d),
                        fmt_shape(&page)
                    ),
                ));
            }
            let t = page_type(&mut dec).map_err(|m| page_err(i, m))?;
            if t != ptype {
                return Err(page_err(
                    i,
                    format!(
                        "its type is {} but page 0's is {}; every page must have the same type",
                        t.text, ptype.text
                    ),
                ));
            }
        }
        let end = data_end(&mut dec).map_err(|m| page_err(i, m))?;
        if end > len {
            return Err(page_err(
                i,
                format!("its data ends at byte {end} but the file is {len} bytes: truncated?"),
            ));
        }
        pages += 1;
        if !dec.more_images() {
            break;
        }
        dec.next_image().map_err(|e| {
            page_err(
                pages,
                format!(
                    "cannot be read ({}): a truncated or damaged file?",
                    crate::one_line(&e.to_string())
                ),
            )
        })?;
    }
    let bigtiff = {
        use std::io::{Read, Seek, SeekFrom};
        let r = dec.inner();
        let mut h = [0u8; 4];
        r.seek(SeekFrom::Start(0)).is_ok()
            && r.read_exact(&mut h).is_ok()
            && (h[2] == 43 || h[3] == 43)
    };
    let meta = match desc.as_deref() {
        Some(d) if d.starts_with("ImageJ=") => imagej_meta(d, xres, yres).map_err(err)?,
        Some(d) if d.trim_start().starts_with("<?xml") || d.trim_start().starts_with("<OME") => {
            Some(ome_meta(d).map_err(err)?)
        }
        Some(d) if d.starts_with('{') => tifffile_meta(d, page, pages).map_err(err)?,
        _ => None,
    };
    let (origin, sizes, strides, voxel) = match meta {
        Some(m) => {
            let want: usize = m.sizes.iter().product();
            if want != pages {
                let what = match m.origin {
                    Origin::Ome => "OME-XML (SizeT × SizeC × SizeZ)",
                    Origin::ImageJ => "ImageJ metadata (frames × channels × slices)",
                    _ => "tifffile shape (t × c × z)",
                };
                return Err(err(format!(
                    "its {what} describes {} = {want} pages but the file has {pages}; OME-TIFF series \
                     spread over several files, several series in one file and ImageJ stacks past \
                     4 GiB without a page directory each are not read",
                    m.sizes.map(|n| n.to_string()).join(" × ")
                )));
            }
            (m.origin, m.sizes, m.strides, m.voxel)
        }
        None => {
            let sizes = match requested {
                Some(Axes::Tyx) => [pages, 1, 1],
                Some(Axes::Tzyx) => {
                    return Err(err(format!(
                        "--axes tzyx needs ImageJ hyperstack or OME-XML metadata to split its {pages} pages \
                         into timepoints and z planes, and it has none"
                    )))
                }
                // A plain stack without --axes: z planes here; the caller decides for a lone file.
                _ => [1, 1, pages],
            };
            (
                Origin::Plain,
                sizes,
                [sizes[1] * sizes[2], sizes[2], 1],
                None,
            )
        }
    };
    Ok(Probe {
        pages,
        page,
        ptype,
        bigtiff,
        compression,
        sizes,
        strides,
        origin,
        voxel,
    })
}

/// The axes a file's layout reads as: with a t axis of several frames, `tzyx` where z has several
/// planes too, else `tyx`; otherwise one volume (`zyx`).
fn derived(p: &Probe) -> Axes {
    match (p.sizes[0] > 1, p.sizes[2] > 1) {
        (true, true) => Axes::Tzyx,
        (true, false) => Axes::Tyx,
        (false, _) => Axes::Zyx,
    }
}

impl Probe {
    fn describe_layout(&self) -> String {
        let [t, c, z] = self.sizes;
        let from = match self.origin {
            Origin::ImageJ => "ImageJ hyperstack",
            Origin::Ome => "OME-XML",
            Origin::Tifffile => "tifffile shape",
            Origin::Plain => "no axes metadata",
        };
        format!("t {t}, c {c}, z {z} ({from})")
    }
}

impl TiffInput {
    /// Opens `files` (in time order). `lone`: one file named alone, whose plain stack is a movie
    /// (`tyx`) unless `--axes zyx` says otherwise, as for a 3-D HDF5 dataset.
    pub(crate) fn open(
        files: Vec<PathBuf>,
        lone: bool,
        requested: Option<Axes>,
        channel: usize,
    ) -> Result<TiffInput> {
        let requested_plain = requested.or(if lone { Some(Axes::Tyx) } else { None });
        let mut probes = Vec::with_capacity(files.len());
        for f in &files {
            probes.push(probe(f, requested_plain)?);
        }
        let first = &probes[0];
        let axes = derived(first);
        for (f, p) in files.iter().zip(&probes) {
            let a = derived(p);
            if let (Some(r), true) = (requested, p.origin != Origin::Plain) {
                // A single-page-per-axis layout is both zyx and tyx; only a real contradiction counts.
                if r != a && !(p.sizes[0] == 1 && p.sizes[2] == 1) {
                    return Err(input_err(
                        f,
                        format!(
                            "--axes {r} contradicts its metadata ({}), which reads as {a}",
                            p.describe_layout()
                        ),
                    ));
                }
            }
            if a == Axes::Tzyx && files.len() > 1 {
                return Err(input_err(
                    f,
                    format!(
                        "holds several timepoints of several z planes ({}); such a stack must be the only \
                         input, not one of {} files",
                        p.describe_layout(),
                        files.len()
                    ),
                ));
            }
            if p.ptype.dtype.is_none() {
                return Err(input_err(
                    f,
                    format!(
                        "has pages of type {}; supported: single-sample {}",
                        p.ptype.text,
                        Dtype::ALL.map(Dtype::name).join(", ")
                    ),
                ));
            }
        }
        for (f, p) in files.iter().zip(&probes).skip(1) {
            let (zs, z0) = (p.sizes[2], first.sizes[2]);
            if p.page != first.page || zs != z0 {
                return Err(input_err(
                    f,
                    format!(
                        "holds {zs} pages of (y, x) = {} per volume but {} holds {z0} of {}; every input \
                         must have the same shape",
                        fmt_shape(&p.page),
                        files[0].display(),
                        fmt_shape(&first.page)
                    ),
                ));
            }
            if derived(p) != axes {
                return Err(input_err(
                    f,
                    format!(
                        "reads as {} ({}) but {} reads as {axes}; every input must hold the same axes",
                        derived(p),
                        p.describe_layout(),
                        files[0].display()
                    ),
                ));
            }
            if p.ptype != first.ptype {
                return Err(input_err(
                    f,
                    format!(
                        "has pages of type {} but {} has {}; every input must have the same type",
                        p.ptype.text,
                        files[0].display(),
                        first.ptype.text
                    ),
                ));
            }
            if p.sizes[1] != first.sizes[1] {
                return Err(input_err(
                    f,
                    format!(
                        "has {} channels but {} has {}; every input must have the same channels",
                        p.sizes[1],
                        files[0].display(),
                        first.sizes[1]
                    ),
                ));
            }
        }
        let channels = first.sizes[1];
        if channel >= channels {
            return Err(super::channel_err(&files[0], channel, channels));
        }
        let dtype = first.ptype.dtype.expect("checked above");
        Ok(TiffInput {
            files,
            probes,
            axes,
            dtype,
            channel,
            held: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub(crate) fn axes(&self) -> Axes {
        self.axes
    }

    pub(crate) fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Timepoints in each file.
    pub(crate) fn lens(&self) -> Vec<usize> {
        self.probes.iter().map(|p| p.sizes[0]).collect()
    }

    /// (z, y, x) of one volume.
    pub(crate) fn shape(&self) -> [usize; 3] {
        let p = &self.probes[0];
        [p.sizes[2], p.page[0], p.page[1]]
    }

    pub(crate) fn voxel_size(&self) -> Option<VoxelSize> {
        self.probes[0].voxel.clone()
    }

    /// The summary's words for what is read: the files, the format, and the channel where there are several.
    pub(crate) fn summary(&self) -> String {
        let name = |p: &Path| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        let files = match self.files.len() {
            1 => format!("1 file, {}", name(&self.files[0])),
            n => format!(
                "{n} files, {} … {}",
                name(&self.files[0]),
                name(&self.files[n - 1])
            ),
        };
        let p = &self.probes[0];
        let channel = match p.sizes[1] {
            1 => String::new(),
            n => format!(", channel {} of {n}", self.channel),
        };
        format!("{files} ({}){channel}", self.kind())
    }

    fn kind(&self) -> String {
        let p = &self.probes[0];
        let base = if p.bigtiff { "BigTIFF" } else { "TIFF" };
        match p.origin {
            Origin::ImageJ => format!("{base}, ImageJ hyperstack"),
            Origin::Ome => format!("OME-{base}"),
            Origin::Tifffile => format!("{base}, tifffile shape"),
            Origin::Plain => base.to_string(),
        }
    }

    /// Volume `local` of file `i` as float32, naming the file and page on failure; `t` is the series'
    /// timepoint (for messages), `check` turns float64 values beyond float32's range into the error.
    /// Its planes are decoded on several threads (compressed pages are CPU-bound), each with a decoder
    /// of its own.
    pub(super) fn read(
        &self,
        i: usize,
        local: usize,
        t: &str,
        check: impl FnOnce(OutOfRange) -> Result<()>,
    ) -> Result<Array3<f32>> {
        let shape = self.shape();
        let plane = shape[1] * shape[2];
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(shape[0].div_ceil(PAGES_PER_WORKER))
            .max(1);
        let per = shape[0].div_ceil(workers);
        // Decoders kept from the last read of this file; any others belong to a file done with.
        let mut pool: Vec<Dec> = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *held)
                .into_iter()
                .filter(|(f, _)| *f == i)
                .map(|(_, d)| d)
                .collect()
        };
        let mut vol = Array3::<f32>::zeros(shape);
        let dst = vol.as_slice_mut().expect("standard layout");
        let results: Vec<Result<(OutOfRange, Dec)>> = if workers == 1 {
            vec![self.read_planes(i, local, t, 0, dst, pool.pop())]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = dst
                    .chunks_mut(per * plane)
                    .enumerate()
                    .map(|(w, out)| {
                        let dec = pool.pop();
                        s.spawn(move || self.read_planes(i, local, t, w * per, out, dec))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(input_err(
                                &self.files[i],
                                format!("decoding {t} failed (a decoding thread panicked)"),
                            ))
                        })
                    })
                    .collect()
            })
        };
        let mut bad = OutOfRange::default();
        let mut decoders = Vec::with_capacity(results.len());
        // In z order, so the first error and the first bad value are the lowest plane's.
        for r in results {
            let (b, dec) = r?;
            bad.count += b.count;
            if bad.first.is_none() {
                bad.first = b.first;
            }
            decoders.push((i, dec));
        }
        check(bad)?;
        // A decoder knows the offsets of the pages it passed: a stack of many timepoints is walked
        // once per worker, not once per volume.
        if self.probes[i].sizes[0] > 1 {
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) = decoders;
        }
        Ok(vol)
    }

    /// Decodes the planes from `z0` into `out` (whole planes), with `dec` or a decoder of its own.
    fn read_planes(
        &self,
        i: usize,
        local: usize,
        t: &str,
        z0: usize,
        out: &mut [f32],
        dec: Option<Dec>,
    ) -> Result<(OutOfRange, Dec)> {
        let path = &self.files[i];
        let p = &self.probes[i];
        let mut dec = match dec {
            Some(d) => d,
            None => open_decoder(path)
                .map_err(|m| input_err(path, format!("{m} any more, reading {t}")))?,
        };
        let plane = p.page[0] * p.page[1];
        let mut bad = OutOfRange::default();
        for (k, out) in out.chunks_mut(plane).enumerate() {
            let z = z0 + k;
            let page = local * p.strides[0] + self.channel * p.strides[1] + z * p.strides[2];
            let fail = |m: String| input_err(path, format!("page {page} ({t}, z {z}): {m}"));
            dec.seek_to_image(page).map_err(|e| {
                fail(format!(
                    "cannot be found any more ({})",
                    crate::one_line(&e.to_string())
                ))
            })?;
            // The files were checked at open; a file replaced mid-run must be an error, not misread.
            let (w, h) = dec.dimensions().map_err(|e| fail(e.to_string()))?;
            let ty = page_type(&mut dec).map_err(fail)?;
            if [h as usize, w as usize] != p.page || ty != p.ptype {
                return Err(fail(format!(
                    "it is now {} {} where {} {} was opened; the file changed during the run",
                    fmt_shape(&[h as usize, w as usize]),
                    ty.text,
                    fmt_shape(&p.page),
                    p.ptype.text
                )));
            }
            let data = dec.read_image().map_err(|e| {
                fail(format!(
                    "cannot be decoded ({}): a truncated or damaged file?",
                    crate::one_line(&e.to_string())
                ))
            })?;
            let n = convert(data, out, &mut bad, z * plane);
            if n != plane {
                return Err(fail(format!("decoded {n} values, expected {plane}")));
            }
        }
        Ok((bad, dec))
    }
}

/// Fewest planes a decoding thread is given: below that, starting a thread costs more than it saves.
const PAGES_PER_WORKER: usize = 4;

/// Converts a decoded page into `out`; returns how many values it held.
fn convert(data: DecodingResult, out: &mut [f32], bad: &mut OutOfRange, base: usize) -> usize {
    fn into<T: Copy + Into<f64>>(v: Vec<T>, out: &mut [f32]) -> usize {
        for (d, s) in out.iter_mut().zip(&v) {
            *d = (*s).into() as f32;
        }
        v.len()
    }
    match data {
        DecodingResult::U8(v) => into(v, out),
        DecodingResult::U16(v) => into(v, out),
        DecodingResult::I16(v) => into(v, out),
        DecodingResult::I32(v) => into(v, out),
        DecodingResult::F32(v) => {
            let n = v.len();
            if n == out.len() {
                out.copy_from_slice(&v);
            }
            n
        }
        DecodingResult::F64(v) => {
            let n = v.len();
            bad.convert(v.into_iter(), out, base);
            n
        }
        // page_type admits none of the others.
        _ => 0,
    }
}

fn describe_probe(f: &Path, p: &Probe) -> String {
    let kind = if p.bigtiff { "BigTIFF" } else { "TIFF" };
    let voxel = match &p.voxel {
        None => String::new(),
        Some(v) => {
            let parts: Vec<String> = ['t', 'z', 'y', 'x']
                .iter()
                .zip(v)
                .map(|(a, (s, u))| {
                    format!(
                        "{a} {s}{}",
                        u.as_ref().map_or(String::new(), |u| format!(" {u}"))
                    )
                })
                .collect();
            format!(", voxel size {}", parts.join(", "))
        }
    };
    let dtype = match p.ptype.dtype {
        Some(_) => p.ptype.text.clone(),
        None => format!("{} (unsupported)", p.ptype.text),
    };
    format!(
        "{}: {kind}, {} pages of (y, x) = {} {dtype}, {}, axes {}{voxel}",
        f.display(),
        p.pages,
        fmt_shape(&p.page),
        p.compression,
        p.describe_layout()
    )
}

/// `info`'s lines for TIFF files: each one probed on its own (`requested`: the axes a plain stack is
/// read with), or why it cannot be read.
pub(crate) fn describe_files(files: &[PathBuf], requested: Option<Axes>) -> Vec<String> {
    files
        .iter()
        .map(|f| match probe(f, requested) {
            Ok(p) => describe_probe(f, &p),
            Err(e) => format!("unusable: {e}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagej_hyperstack_pages_are_c_fastest_then_z_then_t() {
        let m = imagej_meta(
            "ImageJ=1.11a\nimages=24\nchannels=2\nslices=3\nframes=4\nhyperstack=true\nunit=micron\nspacing=2.5\n",
            Some(2.0),
            Some(4.0),
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.sizes, [4, 2, 3]);
        assert_eq!(m.strides, [6, 1, 2]);
        let v = m.voxel.unwrap();
        assert_eq!(v[1], (2.5, Some("micrometer".into())));
        assert_eq!(v[2], (0.25, Some("micrometer".into())));
        assert_eq!(v[3], (0.5, Some("micrometer".into())));
        assert!(imagej_meta("ImageJ=1.11a\nimages=5\n", None, None)
            .unwrap()
            .is_none());
        let e = imagej_meta("ImageJ=1\nimages=5\nslices=2\n", None, None)
            .err()
            .unwrap();
        assert!(e.contains("images=5"), "{e}");
    }

    #[test]
    fn tifffile_shapes_split_pages_row_major() {
        let m = tifffile_meta(r#"{"shape": [2, 3, 4, 6, 5], "axes": "CTZYX"}"#, [6, 5], 24)
            .unwrap()
            .unwrap();
        assert_eq!((m.sizes, m.strides), ([3, 2, 4], [4, 12, 1]));
        let m = tifffile_meta(r#"{"shape": [3, 4, 6, 5]}"#, [6, 5], 12)
            .unwrap()
            .unwrap();
        assert_eq!((m.sizes, m.strides), ([3, 1, 4], [4, 0, 1]));
        // One leading axis, samples per pixel, another page count, not JSON: no metadata.
        for (d, pages) in [
            (r#"{"shape": [4, 6, 5]}"#, 4),
            (r#"{"shape": [4, 6, 5, 3]}"#, 4),
            (r#"{"shape": [3, 4, 6, 5]}"#, 11),
            ("{not json", 4),
        ] {
            assert!(tifffile_meta(d, [6, 5], pages).unwrap().is_none(), "{d}");
        }
        for (d, want) in [
            (r#"{"shape": [2, 3, 4, 6, 5]}"#, "without axis names"),
            (
                r#"{"shape": [2, 12, 6, 5], "axes": "QZYX"}"#,
                "axis 'Q' of length 2",
            ),
            (r#"{"shape": [2, 12, 6, 5], "axes": "ZZYX"}"#, "twice"),
        ] {
            let e = tifffile_meta(d, [6, 5], 24).err().unwrap();
            assert!(e.contains(want), "{d}: {e}");
        }
    }

    #[test]
    fn ome_dimension_order_gives_page_strides() {
        let xml = r#"<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
            <Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" SizeC="2" SizeT="5" SizeZ="3"
            SizeX="8" SizeY="6" Type="uint16" PhysicalSizeX="0.5" PhysicalSizeZ="2" PhysicalSizeZUnit="nm"/></Image></OME>"#;
        let m = ome_meta(xml).unwrap();
        assert_eq!(m.sizes, [5, 2, 3]);
        assert_eq!(m.strides, [6, 1, 2]);
        let v = m.voxel.unwrap();
        assert_eq!(v[1], (2.0, Some("nanometer".into())));
        assert_eq!(v[3], (0.5, Some("micrometer".into())));
        assert_eq!(v[2], (1.0, None));
        let e = ome_meta(&xml.replace("XYCZT", "XYCZQ")).err().unwrap();
        assert!(e.contains("DimensionOrder"), "{e}");
    }
}
