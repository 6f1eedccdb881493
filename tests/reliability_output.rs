//! The output side under faults: planted links, special files, long names, signals, full disks and full
//! stdout leave no damage, no leftovers and one clear line.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gpuprep_io::Sink;

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/io")
        .join(rel)
        .display()
        .to_string()
}

fn gpuprep() -> Command {
    crate::support::gpuprep_command()
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `gpuprep run SERIES -o OUT --backend cpu -q EXTRA`.
fn run_series(out: &Path, extra: &[&str]) -> Output {
    gpuprep()
        .args(["run", &fixture("series"), "-o"])
        .arg(out)
        .args(["--backend", "cpu", "-q"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn an_output_name_of_255_bytes_works() {
    let tmp = tempfile::tempdir().unwrap();
    for len in [250, 255] {
        let name = format!("{}.h5", "n".repeat(len - 3));
        let out = tmp.path().join(&name);
        let o = run_series(&out, &[]);
        assert!(o.status.success(), "{len}: {}", stderr_of(&o));
        assert!(hdf5::File::open(&out).is_ok());
        assert_eq!(names(tmp.path()), vec![name.clone()], "{len}: leftovers");
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn too_long_names_and_paths_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let long_name = tmp.path().join(format!("{}.h5", "n".repeat(253)));
    let o = run_series(&long_name, &[]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("name too long") && err.contains("255"),
        "{err}"
    );
    // A path beyond PATH_MAX made of legal names.
    let mut deep = tmp.path().to_path_buf();
    while deep.as_os_str().len() < 4200 {
        deep.push("d".repeat(200));
    }
    let o = run_series(&deep.join("out.h5"), &[]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("name too long") && err.contains("4095"),
        "{err}"
    );
    assert!(!err.contains("does not exist"), "{err}");
    // The same for inputs: too long, not "missing".
    for input in [long_name.clone(), deep.join("in.h5")] {
        let o = gpuprep()
            .arg("run")
            .arg(&input)
            .arg("-o")
            .arg(tmp.path().join("out.h5"))
            .args(["--backend", "cpu", "-q"])
            .output()
            .unwrap();
        let err = stderr_of(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("name too long"), "{err}");
        assert!(!err.contains("no such file"), "{err}");
    }
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn the_temporary_directory_is_private_random_and_beside_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.h5");
    let a = Sink::create(&out, false, &[], 1, [1, 1, 1], &["data"]).unwrap();
    let b = Sink::create(&out, false, &[], 1, [1, 1, 1], &["data"]).unwrap();
    for s in [&a, &b] {
        let dir = s.temp_dir();
        assert_eq!(dir.parent(), Some(tmp.path()));
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".gpuprep-") && name.len() >= 19, "{name}");
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        assert!(s.temp_path().starts_with(dir));
    }
    assert_ne!(a.temp_dir(), b.temp_dir());
    drop(a);
    drop(b);
    assert!(names(tmp.path()).is_empty());
}

/// Links planted at every `.NAME.partial-PID` name the old scheme could pick for the next few hundred
/// processes: the old code truncated their target, an input included.
#[test]
fn planted_links_are_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim.h5");
    std::fs::copy(fixture("series/ind_00000.h5"), &victim).unwrap();
    let before = std::fs::read(&victim).unwrap();
    let out = tmp.path().join("out.h5");
    // PIDs are handed out in increasing order: the next ones follow a fresh child's.
    let next = Command::new("true").spawn().unwrap();
    let pid = next.id();
    let mut child = next;
    child.wait().unwrap();
    let planted: Vec<PathBuf> = (pid..pid + 400)
        .map(|p| tmp.path().join(format!(".out.h5.partial-{p}")))
        .collect();
    for link in &planted {
        std::os::unix::fs::symlink(&victim, link).unwrap();
    }
    let o = run_series(&out, &[]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        before,
        "the victim changed"
    );
    for link in &planted {
        let m = std::fs::symlink_metadata(link).unwrap();
        assert!(m.file_type().is_symlink(), "{}", link.display());
    }
    assert!(std::fs::symlink_metadata(&out).unwrap().is_file());
    assert_eq!(names(tmp.path()).len(), 400 + 2);
}

#[test]
fn force_replaces_only_regular_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let fifo = d.join("fifo.h5");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let devnull = d.join("devnull.h5");
    std::os::unix::fs::symlink("/dev/null", &devnull).unwrap();
    let target = d.join("target.txt");
    std::fs::write(&target, b"keep me").unwrap();
    let link = d.join("link.h5");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = d.join("dangling.h5");
    std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
    let sub = d.join("sub.h5");
    std::fs::create_dir(&sub).unwrap();
    let sock = d.join("sock.h5");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let before = names(d);
    for (path, what) in [
        (&fifo, "a FIFO"),
        (&devnull, "a symbolic link (to /dev/null)"),
        (&link, "a symbolic link"),
        (&dangling, "a symbolic link"),
        (&sub, "a directory"),
        (&sock, "a socket"),
    ] {
        for force in [true, false] {
            let o = run_series(path, if force { &["--force"] } else { &[] });
            let err = stderr_of(&o);
            assert_eq!(o.status.code(), Some(2), "{}: {err}", path.display());
            assert!(
                err.contains(&path.display().to_string())
                    && err.contains(what)
                    && err.contains("--force, over a regular file"),
                "{err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        std::fs::read_link(&devnull).unwrap(),
        Path::new("/dev/null")
    );
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_socket());
    assert_eq!(names(d), before, "nothing added or removed");
    // A regular file is still replaced with --force.
    let regular = d.join("regular.h5");
    std::fs::write(&regular, b"old").unwrap();
    let o = run_series(&regular, &["--force"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(hdf5::File::open(&regular).is_ok());
}

/// Synthesises a series big enough for a CPU run of a few seconds; returns its directory.
fn synth_series(root: &Path, shape: &str) -> PathBuf {
    let data = root.join("data");
    let o = gpuprep()
        .args(["synth"])
        .arg(&data)
        .args(["--shape", shape, "--dtype", "float32"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr_of(&o));
    data
}

fn temp_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".gpuprep-")
        })
        .collect()
}

/// The z-score scratch file in `outdir`'s temporary directory and its size, if there is one yet.
fn scratch_size(outdir: &Path) -> Option<(PathBuf, u64)> {
    let temp = temp_dirs(outdir).pop()?;
    let scratch = std::fs::read_dir(&temp)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("scratch"))?;
    Some((temp, scratch.metadata().ok()?.len()))
}

#[test]
fn signals_stop_the_run_and_remove_every_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    // 60 volumes of 1 MiB: about 1.5-4 s on one CPU thread here, depending on the load.
    let (t, volume_bytes) = (60u64, 64 * 64 * 64 * 4);
    let data = synth_series(tmp.path(), "60,64,64,64");
    let outdir = tmp.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    for (sig, name, code) in [
        (libc::SIGINT, "SIGINT", 130),
        (libc::SIGTERM, "SIGTERM", 143),
        (libc::SIGHUP, "SIGHUP", 129),
    ] {
        let mut child = gpuprep()
            .arg("run")
            .arg(&data)
            .arg("-o")
            .arg(outdir.join("out.h5"))
            .args(["--backend", "cpu", "--threads", "1", "-q"])
            // The scratch file is how the test sees pass 1 half done.
            .args(["--memory-budget", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Half-way by progress, not by a clock the machine's load would skew: the first pass has put half
        // of the volumes into the scratch file.
        let started = Instant::now();
        let temp = loop {
            if let Some((temp, size)) = scratch_size(&outdir) {
                if size >= t / 2 * volume_bytes {
                    break temp;
                }
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{name}: the run ended first"
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{name}: stuck"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        let inside = names(&temp);
        assert!(unsafe { libc::kill(child.id() as i32, sig) } == 0);
        let o = child.wait_with_output().unwrap();
        let err = stderr_of(&o);
        assert_eq!(o.status.code(), Some(code), "{name}: {err}");
        assert_eq!(
            err.trim_end(),
            format!(
                "gpuprep: interrupted ({name}); removed the temporary files in {}",
                temp.display()
            ),
            "{name}"
        );
        // Both the partial output and the z-score scratch were there when the signal came.
        assert!(
            inside.iter().any(|n| n == "out.h5") && inside.iter().any(|n| n.starts_with("scratch")),
            "{name}: {inside:?}"
        );
        assert!(names(&outdir).is_empty(), "{name}: {:?}", names(&outdir));
    }
}

#[test]
fn stale_temporary_directories_are_named_not_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let stale = tmp.path().join(".gpuprep-AbCdEfGhIj");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("out.h5"), vec![0u8; 5000]).unwrap();
    let o = run_series(&tmp.path().join("out.h5"), &[]);
    let err = stderr_of(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("warning: {} (4.9 KiB)", stale.display())),
        "{err}"
    );
    assert!(stale.join("out.h5").exists());
}

/// Opens /dev/full as the child's stdout.
fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    )
}

#[test]
fn a_full_stdout_is_one_line_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let private_tmp = tmp.path().join("tmp");
    std::fs::create_dir(&private_tmp).unwrap();
    let out = tmp.path().join("out.h5").display().to_string();
    let synth_dir = tmp.path().join("synth").display().to_string();
    let report = tmp.path().join("demo.html").display().to_string();
    let series = fixture("series");
    let cases: Vec<Vec<&str>> = vec![
        vec!["info", &series],
        vec!["run", &series, "-o", &out, "--backend", "cpu"],
        vec!["synth", &synth_dir, "--shape", "2,4,5,6"],
        vec![
            "demo",
            "--shape",
            "3,8,16,16",
            "--backend",
            "cpu",
            "--report",
            &report,
        ],
    ];
    for args in cases {
        let o = gpuprep()
            .args(&args)
            .env("TMPDIR", &private_tmp)
            .stdout(dev_full())
            .output()
            .unwrap();
        let err = stderr_of(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            err, "gpuprep: cannot write to standard output: No space left on device\n",
            "{args:?}"
        );
        assert!(names(&private_tmp).is_empty(), "{args:?}: demo left files");
    }
    // `run` prints only after its output is complete and in place.
    assert!(hdf5::File::open(&out).is_ok());
}

#[test]
fn no_xdg_runtime_dir_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let private_tmp = tmp.path().join("tmp");
    std::fs::create_dir(&private_tmp).unwrap();
    let out = tmp.path().join("out.h5").display().to_string();
    let series = fixture("series");
    for args in [
        vec!["info", series.as_str()],
        vec!["run", &series, "-o", &out, "--backend", "auto", "-q"],
    ] {
        let o = gpuprep()
            .args(&args)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("WAYLAND_DISPLAY")
            .env("TMPDIR", &private_tmp)
            .output()
            .unwrap();
        let err = stderr_of(&o);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(!err.contains("XDG_RUNTIME_DIR"), "{args:?}: {err}");
        assert!(!err.contains("error"), "{args:?}: {err}");
        assert!(names(&private_tmp).is_empty(), "{args:?}: runtime dir left");
    }
}

/// Runs with the file size limit at `limit` bytes (and SIGXFSZ ignored), so writes past it fail with
/// EFBIG as they would on a full disk with ENOSPC.
fn run_with_file_size_limit(data: &Path, out: &Path, limit: u64, extra: &[&str]) -> Output {
    let mut cmd = gpuprep();
    cmd.arg("run")
        .arg(data)
        .arg("-o")
        .arg(out)
        .args(["--backend", "cpu", "-q"])
        .args(extra);
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn write_errors_are_one_line_naming_the_output_and_timepoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_series(tmp.path(), "24,16,64,64");
    let outdir = tmp.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("out.h5");
    for (extra, needle) in [
        (&["--no-zscore"][..], "while writing /data at timepoint "),
        // Pass 1's results in the scratch file, and (the default for a series this small) in memory.
        (&["--memory-budget", "0"][..], "while writing timepoint "),
        // In memory, the z-score writes blocks of chunks, every timepoint at once.
        (
            &[][..],
            "while writing /data at (z, y, x) = (0, 0, 0), every timepoint",
        ),
    ] {
        let o = run_with_file_size_limit(&data, &out, 1 << 20, extra);
        let err = stderr_of(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
        assert!(
            err.starts_with(&format!("gpuprep: {}: File too large", out.display())),
            "{extra:?}: {err}"
        );
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("18446744073709551615"), "{err}");
        assert!(!err.contains("HDF5"), "{err}");
        assert!(names(&outdir).is_empty(), "{extra:?}: {:?}", names(&outdir));
    }
}

#[test]
fn hdf5_read_errors_are_one_line() {
    // A gzip-compressed chunk overwritten with garbage: HDF5 fails deep in its filter pipeline.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("bad.h5");
    {
        let f = hdf5::File::create(&input).unwrap();
        let v = ndarray::Array3::<f32>::from_shape_fn((4, 8, 8), |(z, y, x)| {
            ((z * 64 + y * 8 + x) as f32).sin()
        });
        f.new_dataset_builder()
            .with_data(&v)
            .chunk((4, 8, 8))
            .deflate(4)
            .create("default")
            .unwrap();
    }
    let mut bytes = std::fs::read(&input).unwrap();
    let n = bytes.len();
    // The chunk is written last; its compressed bytes end the file.
    for b in &mut bytes[n - 200..n - 20] {
        *b = 0x5a;
    }
    std::fs::write(&input, &bytes).unwrap();
    let o = gpuprep()
        .arg("run")
        .arg(&input)
        .arg("-o")
        .arg(tmp.path().join("out.h5"))
        .args(["--backend", "cpu", "-q"])
        .output()
        .unwrap();
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.h5") && err.contains("while reading"),
        "{err}"
    );
    assert_eq!(names(tmp.path()), vec!["bad.h5".to_string()]);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_one_line_naming_the_output_and_timepoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_series(tmp.path(), "24,16,64,64");
    let Some(fs) = Tmpfs::mount(&tmp.path().join("small"), "2m") else {
        eprintln!(
            "SKIPPED a_full_disk_is_one_line_naming_the_output_and_timepoint: cannot mount a tmpfs \
             (needs root); the RLIMIT_FSIZE test covers the same path with EFBIG"
        );
        return;
    };
    let out = fs.0.join("out.h5");
    for (extra, needle) in [
        (&["--no-zscore"][..], "while writing /data at timepoint "),
        // Pass 1's results in the scratch file, and (the default for a series this small) in memory.
        (&["--memory-budget", "0"][..], "while writing timepoint "),
        // In memory, the z-score writes blocks of chunks, every timepoint at once.
        (&[][..], "while writing /data at (z, y, x) = ("),
    ] {
        let o = gpuprep()
            .arg("run")
            .arg(&data)
            .arg("-o")
            .arg(&out)
            .args(["--backend", "cpu", "-q"])
            .args(extra)
            .output()
            .unwrap();
        let err = stderr_of(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
        assert!(
            err.starts_with(&format!(
                "gpuprep: {}: No space left on device",
                out.display()
            )),
            "{extra:?}: {err}"
        );
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("18446744073709551615"), "{err}");
        assert!(names(&fs.0).is_empty(), "{extra:?}: {:?}", names(&fs.0));
    }
}
