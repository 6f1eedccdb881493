//! The registration QC report of a finished gpuprep output (`gpuprep report`, `run --report`): the
//! shifts and framewise displacement over time, the registration error and correlations, the flagged
//! frames, and the mean and max projections before and after registration, as one self-contained HTML
//! page (PNG images inlined as data URIs: no network, no JavaScript) or one PNG.
//!
//! Plots are drawn with plotters into RGB buffers, text in the DejaVu Sans font compiled into the
//! binary, so a report looks the same on a headless cluster node with no fonts installed.

use base64::Engine as _;
use gpuprep_core::error::{Error, Result};
use gpuprep_io::arrays;
use ndarray::{Array2, Array3, ArrayView2, Axis};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::io::Write as _;
use std::path::{Path, PathBuf};

mod draw;

/// What a report is written as.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// One HTML page with the plots inlined.
    Html,
    /// One PNG image of every panel, stacked.
    Png,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Html, Format::Png];

    pub fn name(self) -> &'static str {
        match self {
            Format::Html => "html",
            Format::Png => "png",
        }
    }

    /// The format a report path's extension names (`.png`; anything else is HTML).
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("png") => Format::Png,
            _ => Format::Html,
        }
    }
}

/// The report's default path: beside the output, its name without the output's extension(s) plus
/// `.report.html` (`out.h5` → `out.report.html`, `out.ome.zarr` → `out.report.html`).
pub fn default_path(output: &Path, format: Format) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gpuprep".into());
    let lower = name.to_ascii_lowercase();
    let stem = [".ome.zarr", ".zarr", ".hdf5", ".h5"]
        .iter()
        .find(|ext| lower.ends_with(*ext) && lower.len() > ext.len())
        .map_or(name.as_str(), |ext| &name[..name.len() - ext.len()]);
    output.with_file_name(format!("{stem}.report.{}", format.name()))
}

/// The arrays of a gpuprep output a report shows.
#[derive(Clone, Debug)]
pub struct ReportData {
    pub output: PathBuf,
    /// (t, 3) z, y, x shifts in voxels.
    pub shifts: Array2<f64>,
    pub framewise_displacement: Vec<f64>,
    pub framewise_displacement_um: Option<Vec<f64>>,
    pub error: Option<Vec<f64>>,
    pub correlation_before: Option<Vec<f64>>,
    pub correlation_after: Option<Vec<f64>>,
    pub suspicious: Vec<bool>,
    /// `/projection_z`, `_y`, `_x`: (4, a, b) planes in the order mean before, mean after, max
    /// before, max after.
    pub projections: Option<[Array3<f32>; 3]>,
    /// The run's attributes (parameters, inputs, version), sorted by name.
    pub attributes: Vec<(String, String)>,
}

impl ReportData {
    pub fn timepoints(&self) -> usize {
        self.shifts.nrows()
    }

    pub fn flagged(&self) -> Vec<usize> {
        (0..self.timepoints())
            .filter(|&t| self.suspicious[t])
            .collect()
    }
}

fn input_err(path: &Path, message: String) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        message,
    }
}

/// A per-frame array of the output, when present, checked to hold one value per timepoint.
fn per_frame(path: &Path, name: &str, t: usize) -> Result<Option<Vec<f64>>> {
    if !arrays::exists(path, name)? {
        return Ok(None);
    }
    let a = arrays::read_f64(path, name)?;
    if a.shape() != [t] {
        return Err(input_err(
            path,
            format!(
                "/{name} has shape {:?}; expected ({t},), one value per timepoint of /shifts",
                a.shape()
            ),
        ));
    }
    Ok(Some(a.iter().copied().collect()))
}

/// Reads what the report shows from a finished output (HDF5 file or Zarr store). `/shifts` is
/// required; the QC arrays an older output (or another tool's) lacks are shown as missing.
pub fn load(output: &Path) -> Result<ReportData> {
    if !output.exists() {
        return Err(input_err(
            output,
            "does not exist; expected a gpuprep output (.h5 or .ome.zarr)".into(),
        ));
    }
    if !arrays::exists(output, "shifts")? {
        return Err(input_err(
            output,
            "has no /shifts: the report shows a registration, and this run neither registered \
             nor applied given shifts"
                .into(),
        ));
    }
    let shifts = arrays::read_f64(output, "shifts")?;
    let t = match shifts.shape() {
        [t, 3] if *t > 0 => *t,
        s => {
            return Err(input_err(
                output,
                format!("/shifts has shape {s:?}; expected (t, 3) with t ≥ 1"),
            ))
        }
    };
    let shifts = shifts
        .into_dimensionality::<ndarray::Ix2>()
        .expect("checked to be 2-D");
    let framewise_displacement = match per_frame(output, "framewise_displacement", t)? {
        Some(fd) => fd,
        // Outputs without QC arrays (older ones): the same definition, from the shifts.
        None => (0..t)
            .map(|i| match i {
                0 => 0.0,
                _ => (0..3)
                    .map(|a| (shifts[(i, a)] - shifts[(i - 1, a)]).powi(2))
                    .sum::<f64>()
                    .sqrt(),
            })
            .collect(),
    };
    let suspicious = per_frame(output, "suspicious", t)?
        .map(|v| v.iter().map(|&f| f != 0.0).collect())
        .unwrap_or_else(|| vec![false; t]);
    let mut projections = Vec::new();
    for name in ["projection_z", "projection_y", "projection_x"] {
        if !arrays::exists(output, name)? {
            break;
        }
        let p = arrays::read_f32(output, name)?;
        if p.ndim() != 3 || p.shape()[0] != 4 || p.shape()[1] == 0 || p.shape()[2] == 0 {
            return Err(input_err(
                output,
                format!(
                    "/{name} has shape {:?}; expected (4, a, b): mean and max before and after",
                    p.shape()
                ),
            ));
        }
        projections.push(p.into_dimensionality().expect("checked to be 3-D"));
    }
    let projections = <[Array3<f32>; 3]>::try_from(projections).ok();
    Ok(ReportData {
        output: output.to_path_buf(),
        framewise_displacement,
        framewise_displacement_um: per_frame(output, "framewise_displacement_um", t)?,
        error: per_frame(output, "error", t)?,
        correlation_before: per_frame(output, "correlation_before", t)?,
        correlation_after: per_frame(output, "correlation_after", t)?,
        suspicious,
        projections,
        attributes: arrays::read_attributes(output)?,
        shifts,
    })
}

/// An RGB image.
#[derive(Clone, Debug)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Rgb {
    fn white(width: u32, height: u32) -> Rgb {
        Rgb {
            width,
            height,
            pixels: vec![255; (width * height * 3) as usize],
        }
    }

    /// The image as PNG bytes.
    pub fn png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| Error::Data(format!("encoding the report's PNG: {e}")))?;
        w.write_image_data(&self.pixels)
            .map_err(|e| Error::Data(format!("encoding the report's PNG: {e}")))?;
        drop(w);
        Ok(out)
    }
}

/// One panel of the report: its title, what it shows, and its picture.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub caption: String,
    pub image: Rgb,
}

/// Every panel of the report, in order.
pub fn panels(data: &ReportData) -> Result<Vec<Panel>> {
    draw::register_font();
    let t = data.timepoints();
    let flagged = data.flagged();
    let mut out = Vec::new();
    let shifts: Vec<(&str, Vec<f64>)> = ["z", "y", "x"]
        .iter()
        .enumerate()
        .map(|(a, &n)| (n, data.shifts.column(a).to_vec()))
        .collect();
    out.push(Panel {
        title: "Shifts".into(),
        caption: "The shift applied to each frame (z, y, x, voxels); flagged frames shaded red."
            .into(),
        image: draw::lines("shift (voxels)", t, &shifts, &flagged)?,
    });
    let mut fd = vec![("voxels", data.framewise_displacement.clone())];
    let mut fd_caption =
        "Framewise displacement: the change of the shift from the previous frame (voxels"
            .to_string();
    if let Some(um) = &data.framewise_displacement_um {
        fd.push(("µm", um.clone()));
        fd_caption.push_str("; and µm from the input's voxel size");
    }
    fd_caption.push_str(").");
    out.push(Panel {
        title: "Framewise displacement".into(),
        caption: fd_caption,
        image: draw::lines("displacement", t, &fd, &flagged)?,
    });
    if let Some(e) = &data.error {
        out.push(Panel {
            title: "Registration error".into(),
            caption: "scikit-image's translation-invariant normalized RMS error per frame \
                      (NaN for an empty frame, not drawn)."
                .into(),
            image: draw::lines("error", t, &[("error", e.clone())], &flagged)?,
        });
    }
    if let (Some(b), Some(a)) = (&data.correlation_before, &data.correlation_after) {
        out.push(Panel {
            title: "Correlation with the reference".into(),
            caption:
                "Pearson's correlation of each frame with the reference, before and after its \
                      shift."
                    .into(),
            image: draw::lines(
                "correlation",
                t,
                &[("before", b.clone()), ("after", a.clone())],
                &flagged,
            )?,
        });
    }
    if let Some(p) = &data.projections {
        for (axis, name) in ["z", "y", "x"].iter().enumerate() {
            // A 2-D movie (z = 1) has nothing to see along y or x.
            if axis > 0 && p[0].shape()[1] == 1 {
                continue;
            }
            out.push(Panel {
                title: format!("Projections along {name}"),
                caption: format!(
                    "Mean and maximum over time and {name} of the frames before (as filtered) and \
                     after registration; each pair on one grey scale (0.5th to 99.5th percentile)."
                ),
                image: draw::projections(p[axis].view())?,
            });
        }
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn summary_lines(data: &ReportData) -> Vec<String> {
    let flagged = data.flagged();
    let worst = data
        .framewise_displacement
        .iter()
        .copied()
        .fold(0.0f64, f64::max);
    let mut lines = vec![
        format!("Output: {}", data.output.display()),
        format!(
            "{} frames; largest framewise displacement {worst:.3} voxels",
            data.timepoints()
        ),
    ];
    lines.push(match flagged.len() {
        0 => "No frame flagged as suspicious.".into(),
        n => format!(
            "{n} frame{} flagged as suspicious (timepoints {}): an empty frame, a shift at the \
             max-shift bound, or a correlation after registration far below the median.",
            if n == 1 { "" } else { "s" },
            flagged
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    if data.projections.is_none() {
        lines.push(
            "This output has no projections (written by an older gpuprep or another tool).".into(),
        );
    }
    lines
}

/// The report as one HTML page: every panel a PNG inlined as a data URI, the summary and the run's
/// parameters as text.
pub fn html(data: &ReportData) -> Result<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let name = data
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str(&format!(
        "<title>gpuprep registration report: {}</title>\n",
        escape(&name)
    ));
    s.push_str(
        "<style>body{font-family:sans-serif;max-width:1300px;margin:1em auto;padding:0 1em;color:#222}\
         img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}\
         figcaption{color:#555;margin-top:.3em}table{border-collapse:collapse}\
         td{border:1px solid #ddd;padding:.2em .5em;vertical-align:top;font-family:monospace}</style>\n",
    );
    s.push_str("</head>\n<body>\n");
    s.push_str(&format!(
        "<h1>Registration report: {}</h1>\n",
        escape(&name)
    ));
    for line in summary_lines(data) {
        s.push_str(&format!("<p>{}</p>\n", escape(&line)));
    }
    for p in panels(data)? {
        s.push_str(&format!(
            "<figure>\n<h2>{}</h2>\n<img alt=\"{}\" width=\"{}\" height=\"{}\" src=\"data:image/png;base64,{}\">\n<figcaption>{}</figcaption>\n</figure>\n",
            escape(&p.title),
            escape(&p.title),
            p.image.width,
            p.image.height,
            b64.encode(p.image.png()?),
            escape(&p.caption)
        ));
    }
    s.push_str("<h2>Run</h2>\n<table>\n");
    for (k, v) in &data.attributes {
        s.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>\n",
            escape(k),
            escape(v)
        ));
    }
    s.push_str("</table>\n</body>\n</html>\n");
    Ok(s)
}

/// The report as one PNG: a title and the summary, then every panel stacked.
pub fn png(data: &ReportData) -> Result<Vec<u8>> {
    let panels = panels(data)?;
    let lines = summary_lines(data);
    let width = panels.iter().map(|p| p.image.width).max().unwrap_or(800);
    let header = 40 + 22 * lines.len() as u32;
    let title = 30;
    let height = header + panels.iter().map(|p| title + p.image.height).sum::<u32>();
    let mut page = Rgb::white(width, height);
    {
        let root =
            BitMapBackend::with_buffer(&mut page.pixels, (width, height)).into_drawing_area();
        let text = |area: &DrawingArea<BitMapBackend, Shift>, s: &str, y: u32, size: u32| {
            area.draw(&Text::new(
                s.to_string(),
                (10, y as i32),
                ("sans-serif", size).into_font().color(&BLACK),
            ))
            .map_err(draw::err)
        };
        text(&root, "gpuprep registration report", 8, 24)?;
        for (i, l) in lines.iter().enumerate() {
            text(&root, l, 40 + 22 * i as u32, 15)?;
        }
        let mut y = header;
        for p in &panels {
            text(&root, &p.title, y + 6, 18)?;
            y += title;
            root.draw(
                &BitMapElement::<(i32, i32)>::with_owned_buffer(
                    (0, y as i32),
                    (p.image.width, p.image.height),
                    p.image.pixels.clone(),
                )
                .ok_or_else(|| Error::Data("a report panel's buffer has the wrong size".into()))?,
            )
            .map_err(draw::err)?;
            y += p.image.height;
        }
        root.present().map_err(draw::err)?;
    }
    page.png()
}

/// Writes the report of `output` to `report` in `format`: the whole file under a temporary name in
/// the same directory, renamed when complete, so an interrupted report leaves nothing that looks
/// finished. An existing report is replaced only with `force` (front ends check first, to name their
/// own spelling of it).
pub fn write(output: &Path, report: &Path, format: Format, force: bool) -> Result<PathBuf> {
    if report.exists() && !force {
        return Err(Error::Output {
            path: report.to_path_buf(),
            message: "already exists; it is replaced only when forced".into(),
        });
    }
    let data = load(output)?;
    let bytes = match format {
        Format::Html => html(&data)?.into_bytes(),
        Format::Png => png(&data)?,
    };
    let dir = match report.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |e: std::io::Error| Error::Output {
        path: report.to_path_buf(),
        message: format!("cannot be written ({e})"),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".gpuprep-report-");
    // A report is a document for people: readable by all, as `cp` would leave it, not the temporary
    // file's private 0600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder.tempfile_in(&dir).map_err(io)?;
    tmp.write_all(&bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(report).map_err(|e| io(e.error))?;
    Ok(report.to_path_buf())
}

/// The `lo`–`hi` quantiles of the finite values of several images together (a pair shares a scale).
fn quantiles(images: &[ArrayView2<f32>], lo: f64, hi: f64) -> (f32, f32) {
    let mut v: Vec<f32> = images
        .iter()
        .flat_map(|i| i.iter().copied())
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_by(f32::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(lo), at(hi))
}

/// `image` as grey levels between `range`, scaled by `scale` (x, y) (nearest neighbour).
fn grey(image: ArrayView2<f32>, range: (f32, f32), scale: (f64, f64)) -> Rgb {
    let (h, w) = image.dim();
    let (ow, oh) = (
        ((w as f64 * scale.0).round() as u32).max(1),
        ((h as f64 * scale.1).round() as u32).max(1),
    );
    let mut out = Rgb::white(ow, oh);
    let span = (range.1 - range.0).max(f32::MIN_POSITIVE);
    for oy in 0..oh {
        let y = ((oy as f64 / scale.1) as usize).min(h - 1);
        for ox in 0..ow {
            let x = ((ox as f64 / scale.0) as usize).min(w - 1);
            let v = image[(y, x)];
            let g = if v.is_finite() {
                (((v - range.0) / span).clamp(0.0, 1.0) * 255.0).round() as u8
            } else {
                0
            };
            let i = ((oy * ow + ox) * 3) as usize;
            out.pixels[i..i + 3].copy_from_slice(&[g, g, g]);
        }
    }
    out
}

/// The planes of a (4, a, b) projection array as images at most `cell` pixels on their larger side,
/// each pair (means, maxima) on one grey scale.
fn projection_images(p: ndarray::ArrayView3<f32>, cell: u32) -> Vec<Rgb> {
    let (a, b) = (p.shape()[1], p.shape()[2]);
    let s = cell as f64 / a.max(b) as f64;
    // A thin plane (a few z-planes) is stretched across to stay visible.
    let min_side = 24.0;
    let scale = (s.max(min_side / b as f64), s.max(min_side / a as f64));
    let plane = |k: usize| p.index_axis(Axis(0), k);
    let mean = quantiles(&[plane(0), plane(1)], 0.005, 0.995);
    let max = quantiles(&[plane(2), plane(3)], 0.005, 0.995);
    (0..4)
        .map(|k| grey(plane(k), if k < 2 { mean } else { max }, scale))
        .collect()
}

#[cfg(test)]
mod tests;
