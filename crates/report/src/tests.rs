//! Unit tests of the report's pieces: paths, scales and pictures that are not blank.

use super::*;

/// How many pixels of `image` are not white, and whether any is coloured (not grey).
fn ink(image: &Rgb) -> (usize, bool) {
    let mut n = 0;
    let mut coloured = false;
    for p in image.pixels.chunks(3) {
        if p != [255, 255, 255] {
            n += 1;
        }
        if p[0] != p[1] || p[1] != p[2] {
            coloured = true;
        }
    }
    (n, coloured)
}

#[test]
fn default_paths_sit_beside_the_output() {
    let p = |s: &str| default_path(Path::new(s), Format::Html);
    assert_eq!(p("/d/out.h5"), Path::new("/d/out.report.html"));
    assert_eq!(p("/d/out.ome.zarr"), Path::new("/d/out.report.html"));
    assert_eq!(p("/d/run.1.hdf5"), Path::new("/d/run.1.report.html"));
    assert_eq!(p("out.zarr"), Path::new("out.report.html"));
    assert_eq!(p("/d/.h5"), Path::new("/d/.h5.report.html"));
    assert_eq!(
        default_path(Path::new("a/b.h5"), Format::Png),
        Path::new("a/b.report.png")
    );
    assert_eq!(Format::from_path(Path::new("r.PNG")), Format::Png);
    assert_eq!(Format::from_path(Path::new("r.htm")), Format::Html);
}

#[test]
fn html_is_escaped() {
    assert_eq!(
        escape("<a href=\"x\">&</a>"),
        "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
    );
}

#[test]
fn pairs_share_a_grey_scale() {
    let a = Array2::from_shape_fn((4, 5), |(y, x)| (y * 5 + x) as f32);
    let b = a.mapv(|v| v + 100.0);
    let (lo, hi) = quantiles(&[a.view(), b.view()], 0.0, 1.0);
    assert_eq!((lo, hi), (0.0, 119.0));
    let g = grey(a.view(), (lo, hi), (2.0, 3.0));
    assert_eq!((g.width, g.height), (10, 12));
    // Nearest neighbour: the first pixel is the smallest value (black), the last below mid-grey.
    assert_eq!(&g.pixels[..3], &[0, 0, 0]);
    let last = *g.pixels.last().unwrap();
    assert_eq!(last, ((19.0f32 / 119.0) * 255.0).round() as u8);
    let (lo, hi) = quantiles(&[Array2::from_elem((2, 2), f32::NAN).view()], 0.0, 1.0);
    assert_eq!((lo, hi), (0.0, 1.0));
}

#[test]
fn thin_planes_are_stretched_to_be_seen() {
    let p = Array3::from_shape_fn((4, 2, 300), |(k, a, b)| (k + a + b) as f32);
    let images = projection_images(p.view(), 256);
    assert!(images.iter().all(|i| i.height >= 24 && i.width <= 257));
    assert_eq!(images.len(), 4);
}

#[test]
fn line_plots_draw_lines_labels_and_shading() {
    draw::register_font();
    let series = [("z", vec![0.0, 1.0, f64::NAN, 2.0, 1.5])];
    let plain = draw::lines("shift", 5, &series, &[]).unwrap();
    let shaded = draw::lines("shift", 5, &series, &[2]).unwrap();
    let (n, coloured) = ink(&plain);
    // Axes, tick labels (text needs the embedded font) and a coloured line.
    assert!(n > 2000, "only {n} pixels drawn");
    assert!(coloured);
    let (m, _) = ink(&shaded);
    assert!(
        m > n + 1000,
        "the flagged frame's shading is missing ({m} vs {n})"
    );
    // Only NaN: an empty plot, not an error.
    draw::lines("error", 3, &[("error", vec![f64::NAN; 3])], &[]).unwrap();
    // One frame.
    draw::lines("shift", 1, &[("z", vec![0.5])], &[0]).unwrap();
}

#[test]
fn text_is_drawn_with_the_embedded_font() {
    draw::register_font();
    let mut image = Rgb::white(200, 40);
    {
        let root = BitMapBackend::with_buffer(&mut image.pixels, (200, 40)).into_drawing_area();
        root.draw(&Text::new(
            "gpuprep",
            (5, 5),
            ("sans-serif", 20).into_font().color(&BLACK),
        ))
        .unwrap();
        root.present().unwrap();
    }
    let (n, _) = ink(&image);
    assert!(n > 100, "text drew {n} pixels");
}

#[test]
fn projection_rows_hold_four_images() {
    draw::register_font();
    let p = Array3::from_shape_fn((4, 16, 20), |(k, a, b)| ((k * 7 + a * 3 + b) % 11) as f32);
    let row = draw::projections(p.view()).unwrap();
    let (n, _) = ink(&row);
    assert!(n as u32 > 4 * 200 * 150, "projection row mostly blank: {n}");
    let png = row.png().unwrap();
    assert_eq!(&png[1..4], b"PNG");
}
