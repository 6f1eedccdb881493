//! The report's pictures, drawn with plotters into RGB buffers: line plots over time with the flagged
//! frames shaded, and the grid of projections before and after registration.

use crate::{projection_images, Rgb};
use gpuprep_core::error::{Error, Result};
use plotters::prelude::*;
use std::sync::OnceLock;

/// The font every label is drawn in, registered with plotters once per process.
pub(crate) fn register_font() {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
}

/// A plotters drawing error as gpuprep's.
pub(crate) fn err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> Error {
    Error::Data(format!("drawing the report: {e}"))
}

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 300;
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// The range a plot's y axis spans: the finite values with a margin (0 to 1 when there are none).
fn y_range(series: &[(&str, Vec<f64>)]) -> (f64, f64) {
    let finite = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.06).max(1e-3 * hi.abs().max(1.0));
    (lo - pad, hi + pad)
}

/// Each series over timepoints 0..t (NaN values leave gaps), the `flagged` timepoints shaded red.
pub(crate) fn lines(
    y_label: &str,
    t: usize,
    series: &[(&str, Vec<f64>)],
    flagged: &[usize],
) -> Result<Rgb> {
    let mut image = Rgb::white(WIDTH, HEIGHT);
    {
        let root =
            BitMapBackend::with_buffer(&mut image.pixels, (WIDTH, HEIGHT)).into_drawing_area();
        let (lo, hi) = y_range(series);
        let x_range = -0.5..(t as f64 - 0.5).max(0.5);
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range, lo..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("timepoint")
            // Timepoints are whole: a tick between two has no label.
            .x_label_formatter(&|x| match x.fract() == 0.0 {
                true => format!("{x:.0}"),
                false => String::new(),
            })
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        let shade = RGBColor(214, 39, 40).mix(0.18).filled();
        chart
            .draw_series(
                flagged
                    .iter()
                    .map(|&f| Rectangle::new([(f as f64 - 0.5, lo), (f as f64 + 0.5, hi)], shade)),
            )
            .map_err(err)?;
        for (i, (name, values)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            // Runs of finite values: a NaN (an empty frame's error) is a gap, not a drop to zero.
            let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for (x, &v) in values.iter().enumerate() {
                match v.is_finite() {
                    true => runs.last_mut().expect("never empty").push((x as f64, v)),
                    false if !runs.last().expect("never empty").is_empty() => runs.push(Vec::new()),
                    false => {}
                }
            }
            for (k, run) in runs.into_iter().enumerate() {
                let drawn = chart
                    .draw_series(LineSeries::new(run.clone(), colour.stroke_width(2)))
                    .map_err(err)?;
                if k == 0 {
                    drawn.label(*name).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                }
                // Points mark single frames between gaps, which a line alone would not show.
                if t <= 400 {
                    chart
                        .draw_series(run.into_iter().map(|p| Circle::new(p, 2, colour.filled())))
                        .map_err(err)?;
                }
            }
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(image)
}

/// A (4, a, b) projection array as one row: mean before, mean after, max before, max after.
pub(crate) fn projections(p: ndarray::ArrayView3<f32>) -> Result<Rgb> {
    let images = projection_images(p, 256);
    let (pad, label) = (12u32, 26u32);
    let (w, h) = (images[0].width, images[0].height);
    let width = (4 * (w + pad) + pad).max(400);
    let height = label + h + pad;
    let mut out = Rgb::white(width, height);
    {
        let root = BitMapBackend::with_buffer(&mut out.pixels, (width, height)).into_drawing_area();
        let names = ["mean, before", "mean, after", "max, before", "max, after"];
        for (k, (img, name)) in images.iter().zip(names).enumerate() {
            let x = (pad + k as u32 * (w + pad)) as i32;
            root.draw(&Text::new(
                name,
                (x, 4),
                ("sans-serif", 15).into_font().color(&BLACK),
            ))
            .map_err(err)?;
            root.draw(
                &BitMapElement::<(i32, i32)>::with_owned_buffer(
                    (x, label as i32),
                    (img.width, img.height),
                    img.pixels.clone(),
                )
                .ok_or_else(|| Error::Data("a projection's buffer has the wrong size".into()))?,
            )
            .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}
