//! The registration QC report: the projections a run stores, `gpuprep report` and `run --report` in
//! HTML and PNG, what it refuses, and the page as a headless browser shows it.

use crate::formats::{run, run_ok, series, write_h5};
use crate::support::gpuprep_output;
use base64::Engine as _;
use ndarray::{Array2, ArrayD, Axis};
use std::path::{Path, PathBuf};

fn f32s(path: &Path, name: &str) -> ArrayD<f32> {
    gpuprep_io::arrays::read_f32(path, name).unwrap()
}

/// A drifting blob with a blank frame (5): something to register and something to flag.
fn input(dir: &Path) -> PathBuf {
    let mut data = series(11, [9, 4, 20, 24]);
    data.slice_mut(ndarray::s![5, .., .., ..]).fill(0);
    let path = dir.join("in.h5");
    write_h5(&path, &data);
    path
}

/// A decoded PNG: (width, height, RGB or RGBA bytes, channels).
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>, usize) {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    (info.width, info.height, buf, channels)
}

/// Of an image's pixels: the fraction not white, the fraction coloured (not grey), and the number of
/// distinct grey levels.
fn ink(rgb: &[u8], channels: usize) -> (f64, f64, usize) {
    let (mut inked, mut coloured, mut greys) = (0usize, 0usize, [false; 256]);
    let n = rgb.len() / channels;
    for p in rgb.chunks(channels) {
        let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
        if (r, g, b) != (255, 255, 255) {
            inked += 1;
        }
        if (r - g).abs() > 30 || (g - b).abs() > 30 {
            coloured += 1;
        } else if r == g && g == b {
            greys[r as usize] = true;
        }
    }
    (
        inked as f64 / n as f64,
        coloured as f64 / n as f64,
        greys.iter().filter(|&&g| g).count(),
    )
}

/// `/projection_<axis>` against the saved stages it summarizes: the mean and max over time and axis
/// of `/filtered` (the volumes entering the shift) and `/registered` (the shifted ones), in both
/// output formats.
#[test]
fn projections_summarize_the_volumes_before_and_after_their_shift() {
    let tmp = tempfile::tempdir().unwrap();
    let input = input(tmp.path());
    for name in ["p.h5", "p.ome.zarr"] {
        let out = tmp.path().join(name);
        run_ok(
            &input,
            &out,
            &["--dataset", "data", "--save", "filtered,registered"],
        );
        let (filtered, registered) = (f32s(&out, "filtered"), f32s(&out, "registered"));
        for (axis, array) in ["projection_z", "projection_y", "projection_x"]
            .iter()
            .enumerate()
        {
            let p = f32s(&out, array);
            for (k, stage) in [&filtered, &registered].into_iter().enumerate() {
                let f64s = stage.mapv(|v| v as f64);
                let mean = f64s
                    .mean_axis(Axis(axis + 1))
                    .unwrap()
                    .mean_axis(Axis(0))
                    .unwrap();
                let max = stage
                    .fold_axis(Axis(axis + 1), f32::NEG_INFINITY, |m, &v| m.max(v))
                    .fold_axis(Axis(0), f32::NEG_INFINITY, |m, &v| m.max(v));
                let got_mean = p.index_axis(Axis(0), k);
                let got_max = p.index_axis(Axis(0), 2 + k);
                assert_eq!(got_mean.shape(), mean.shape(), "{name} {array}");
                for (g, w) in got_mean.iter().zip(mean.iter()) {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{name} {array} plane {k}: {g} vs {w}"
                    );
                }
                assert_eq!(got_max, max.view(), "{name} {array} plane {}", 2 + k);
            }
        }
    }
    // Given shifts are shifts too: their run has projections; a run without a shift has none.
    let given = tmp.path().join("given.h5");
    run_ok(
        &input,
        &given,
        &[
            "--dataset",
            "data",
            "--shifts",
            tmp.path().join("p.h5").to_str().unwrap(),
        ],
    );
    assert_eq!(f32s(&given, "projection_z").shape(), &[4, 20, 24]);
    let none = tmp.path().join("none.h5");
    run_ok(&input, &none, &["--dataset", "data", "--no-register"]);
    assert!(!gpuprep_io::arrays::exists(&none, "projection_z").unwrap());
}

/// The images inlined in an HTML report, decoded.
fn inlined_images(html: &str) -> Vec<(u32, u32, Vec<u8>, usize)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    html.split("src=\"data:image/png;base64,")
        .skip(1)
        .map(|rest| {
            let end = rest.find('"').unwrap();
            decode_png(&b64.decode(&rest[..end]).unwrap())
        })
        .collect()
}

/// `run --report` writes the page beside the output; every panel is an inlined PNG with ink on it
/// (plots in colour, projections in many grey levels); nothing on the page needs the network or
/// JavaScript; the flagged frame and the run's parameters are stated. `gpuprep report` writes the same
/// panels as one PNG, from HDF5 and Zarr outputs.
#[test]
fn the_report_shows_every_panel_in_html_and_png() {
    let tmp = tempfile::tempdir().unwrap();
    let input = input(tmp.path());
    let out = tmp.path().join("run.h5");
    let (code, stderr) = run(
        &input,
        &out,
        &["--dataset", "data", "--max-shift", "1,4,4", "--report"],
    );
    assert_eq!(code, 0, "{stderr}");
    let page = tmp.path().join("run.report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for banned in ["<script", "http://", "https://", "<link", "@import"] {
        assert!(!html.contains(banned), "the page has {banned}");
    }
    assert!(
        html.contains("timepoints 5"),
        "the blank frame is not named"
    );
    assert!(html.contains("<td>max_shift</td><td>1,4,4</td>"));
    let images = inlined_images(&html);
    // Shifts, displacement, error, correlations; projections along z, y and x.
    assert_eq!(images.len(), 7);
    for (i, (w, h, px, ch)) in images.iter().enumerate() {
        let (inked, coloured, greys) = ink(px, *ch);
        assert!(*w >= 400 && *h >= 50, "image {i}: {w}x{h}");
        if i < 4 {
            assert!(
                inked > 0.03 && coloured > 0.002,
                "plot {i}: {inked} {coloured}"
            );
        } else {
            assert!(
                inked > 0.5 && greys > 50,
                "projections {i}: {inked} {greys}"
            );
        }
    }
    // Zarr output, PNG format chosen by the extension; and --format over the extension.
    let zarr = tmp.path().join("z.ome.zarr");
    run_ok(&input, &zarr, &["--dataset", "data"]);
    let png_path = tmp.path().join("r.png");
    let (code, stdout, stderr) = gpuprep_output(&[
        "report".as_ref(),
        zarr.as_os_str(),
        "-o".as_ref(),
        png_path.as_os_str(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("r.png"));
    let (w, h, px, ch) = decode_png(&std::fs::read(&png_path).unwrap());
    let tall: u32 = images.iter().map(|i| i.1).sum();
    assert!(w >= 1000 && h > tall, "{w}x{h}");
    let (inked, coloured, greys) = ink(&px, ch);
    assert!(inked > 0.1 && coloured > 0.005 && greys > 50);
    let forced = tmp.path().join("forced.out");
    let (code, _, stderr) = gpuprep_output(&[
        "report".as_ref(),
        zarr.as_os_str(),
        "-o".as_ref(),
        forced.as_os_str(),
        "--format".as_ref(),
        "png".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(&std::fs::read(&forced).unwrap()[1..4], b"PNG");
    // The default path: beside the output.
    let (code, _, stderr) = gpuprep_output(&["report".as_ref(), zarr.as_os_str()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(tmp.path().join("z.report.html").exists());
}

/// What cannot be reported is refused in one line naming the path, before any work: an output that
/// did not register, one that does not exist, a report that exists (without --force, left as it was),
/// `run --report` with nothing to show or over an existing report (no output written).
#[test]
fn the_report_refuses_what_it_cannot_show() {
    let tmp = tempfile::tempdir().unwrap();
    let input = input(tmp.path());
    let plain = tmp.path().join("plain.h5");
    run_ok(&input, &plain, &["--dataset", "data", "--no-register"]);
    let one_line = |stderr: &str| stderr.trim().lines().count() == 1;
    let (code, _, stderr) = gpuprep_output(&["report".as_ref(), plain.as_os_str()]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("plain.h5") && stderr.contains("/shifts") && one_line(&stderr),
        "{stderr}"
    );
    assert!(!tmp.path().join("plain.report.html").exists());
    let missing = tmp.path().join("missing.h5");
    let (code, _, stderr) = gpuprep_output(&["report".as_ref(), missing.as_os_str()]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("missing.h5") && one_line(&stderr),
        "{stderr}"
    );

    let out = tmp.path().join("reg.h5");
    run_ok(&input, &out, &["--dataset", "data"]);
    let existing = tmp.path().join("kept.html");
    std::fs::write(&existing, "mine").unwrap();
    let (code, _, stderr) = gpuprep_output(&[
        "report".as_ref(),
        out.as_os_str(),
        "-o".as_ref(),
        existing.as_os_str(),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("kept.html") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "mine");
    let (code, _, stderr) = gpuprep_output(&[
        "report".as_ref(),
        out.as_os_str(),
        "-o".as_ref(),
        existing.as_os_str(),
        "--force".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(std::fs::read_to_string(&existing)
        .unwrap()
        .starts_with("<!DOCTYPE html>"));

    let (code, stderr) = crate::formats::run_err(
        &input,
        &tmp.path().join("x.h5"),
        &["--dataset", "data", "--no-register", "--report"],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("--report") && one_line(&stderr), "{stderr}");
    assert!(!tmp.path().join("x.h5").exists());
    std::fs::write(tmp.path().join("y.report.html"), "mine").unwrap();
    let (_, stderr) = crate::formats::run_err(
        &input,
        &tmp.path().join("y.h5"),
        &["--dataset", "data", "--report"],
    );
    assert!(stderr.contains("y.report.html"), "{stderr}");
    assert!(!tmp.path().join("y.h5").exists());
    // Nothing half-written is left in the directory.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".gpuprep"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A headless Chromium: `GPUPREP_BROWSER`, else the first of the usual names on PATH.
fn browser() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("GPUPREP_BROWSER") {
        return Some(PathBuf::from(b));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
        "google-chrome",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
    .find(|p| p.is_file())
}

/// The HTML page as a headless browser renders it (the page has no script and no link: checked
/// above): a screenshot of the
/// whole page shows the plots' colours and the projections' grey levels, which only decoded images
/// give (a page whose images failed shows alt texts and empty boxes). Without a browser the test
/// fails when GPUPREP_REQUIRE_BROWSER=1 (the README's test command sets it and installs one) and
/// otherwise skips saying so.
#[test]
fn the_report_opens_in_a_headless_browser() {
    let Some(browser) = browser() else {
        assert!(
            std::env::var("GPUPREP_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "GPUPREP_REQUIRE_BROWSER=1 but no headless Chromium was found \
             (chromium-headless-shell, chromium; or set GPUPREP_BROWSER)"
        );
        eprintln!(
            "SKIPPED: no headless Chromium on this machine: the report's page was not rendered"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = input(tmp.path());
    let out = tmp.path().join("b.h5");
    run_ok(&input, &out, &["--dataset", "data", "--report"]);
    let page = tmp.path().join("b.report.html");
    let shot = tmp.path().join("shot.png");
    let url = format!("file://{}", page.display());
    let mut child = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1400,3600",
            &format!("--screenshot={}", shot.display()),
            &url,
        ])
        .env("HOME", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", browser.display()));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(120) {
            child.kill().ok();
            panic!(
                "{} did not finish the screenshot in 120 s",
                browser.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).ok();
    assert!(
        status.success() && shot.exists(),
        "{}: {err}",
        browser.display()
    );
    let (w, h, px, ch) = decode_png(&std::fs::read(&shot).unwrap());
    assert_eq!((w, h), (1400, 3600));
    let (inked, coloured, greys) = ink(&px, ch);
    // The plots' series colours (a few thousand pixels) and the projections' grey levels.
    assert!(
        coloured > 0.002,
        "no plot colours on the rendered page: {coloured}"
    );
    assert!(
        greys > 100,
        "no projection greys on the rendered page: {greys}"
    );
    assert!(inked > 0.1, "the rendered page is mostly blank: {inked}");
    // Each projection sits in the screenshot as drawn: find the first projection image's rows.
    let images = inlined_images(&std::fs::read_to_string(&page).unwrap());
    let (pw, ph, ppx, pch) = &images[4];
    let row = |y: u32| -> Vec<[u8; 3]> {
        (0..*pw)
            .map(|x| {
                let i = ((y * pw + x) as usize) * pch;
                [ppx[i], ppx[i + 1], ppx[i + 2]]
            })
            .collect()
    };
    let wanted = row(ph / 2);
    let screen = Array2::from_shape_fn((h as usize, w as usize), |(y, x)| {
        let i = (y * w as usize + x) * ch;
        [px[i], px[i + 1], px[i + 2]]
    });
    let found = screen.rows().into_iter().any(|r| {
        let r = r.to_vec();
        r.windows(wanted.len()).any(|win| win == wanted.as_slice())
    });
    assert!(
        found,
        "the projections' pixels are not on the rendered page"
    );
}

/// The demo keeps its report where `--report` says and prints that path.
#[test]
fn the_demo_keeps_its_report_and_says_where() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("demo.html");
    let (code, stdout, stderr) = gpuprep_output(&[
        "demo".as_ref(),
        "--shape".as_ref(),
        "4,4,16,16".as_ref(),
        "--backend".as_ref(),
        "cpu".as_ref(),
        "--report".as_ref(),
        report.as_os_str(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&report.display().to_string()), "{stdout}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert_eq!(inlined_images(&html).len(), 7);
}

/// An output whose side arrays do not fit together is one error naming the file and the array, and no
/// report is written: shifts that are not (t, 3), a per-frame array of another length, projections of
/// another layout.
#[test]
fn the_report_refuses_malformed_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, arrays: &[(&str, ndarray::ArrayD<f64>)]| {
        let path = tmp.path().join(name);
        let f = hdf5::File::create(&path).unwrap();
        for (n, a) in arrays {
            f.new_dataset_builder().with_data(a).create(*n).unwrap();
        }
        path
    };
    let shifts = ndarray::Array2::<f64>::zeros((4, 3)).into_dyn();
    let cases = [
        (
            write(
                "two.h5",
                &[("shifts", ndarray::Array2::<f64>::zeros((4, 2)).into_dyn())],
            ),
            "/shifts has shape [4, 2]",
        ),
        (
            write(
                "short.h5",
                &[
                    ("shifts", shifts.clone()),
                    ("error", ndarray::Array1::<f64>::zeros(3).into_dyn()),
                ],
            ),
            "/error has shape [3]",
        ),
        (
            write(
                "proj.h5",
                &[
                    ("shifts", shifts.clone()),
                    (
                        "projection_z",
                        ndarray::Array3::<f64>::zeros((3, 4, 5)).into_dyn(),
                    ),
                ],
            ),
            "/projection_z has shape [3, 4, 5]",
        ),
    ];
    for (path, want) in cases {
        let out = tmp.path().join("r.html");
        let (code, _, stderr) = gpuprep_output(&[
            "report".as_ref(),
            path.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(path.file_name().unwrap().to_str().unwrap()) && stderr.contains(want),
            "{want}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!out.exists());
    }
    // The minimum a report needs: shifts alone (an output of another tool, or an older gpuprep's).
    let minimal = write("minimal.h5", &[("shifts", shifts)]);
    let out = tmp.path().join("m.html");
    let (code, _, stderr) = gpuprep_output(&[
        "report".as_ref(),
        minimal.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let html = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        inlined_images(&html).len(),
        2,
        "shifts and displacement only"
    );
    assert!(html.contains("no projections"));
}
