//! An input read in place (memory-mapped) that is truncated during the run: the process ends with
//! one line naming the file and exit status 2, its temporary paths removed, instead of dying of
//! SIGBUS. Its own process, without libtest's harness: the signal setup must come before any
//! other thread, and the process ends.

#[cfg(unix)]
fn main() {
    use gpuprep_io::cleanup::{install_signal_cleanup, Registered};
    use gpuprep_io::source::Volume;
    use gpuprep_io::Source;

    const CHILD: &str = "GPUPREP_TEST_MAPPED_CHILD";
    if let Some(dir) = std::env::var_os(CHILD) {
        // The child: map a volume, truncate its file, touch the map.
        let dir = std::path::PathBuf::from(dir);
        install_signal_cleanup().unwrap();
        let temp = dir.join(".gpuprep-test");
        std::fs::create_dir(&temp).unwrap();
        std::fs::write(temp.join("out.h5"), b"partial").unwrap();
        let _registered = Registered::new(&temp);
        let input = dir.join("in.h5");
        let source = Source::open(&[input.display().to_string()], "data").unwrap();
        let vol = source.read_in_place(1).unwrap();
        assert!(matches!(vol, Volume::Mapped(_)), "not mapped: {vol:?}");
        assert_eq!(vol.view()[[1, 2, 3]], 100123.0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&input)
            .unwrap()
            .set_len(0)
            .unwrap();
        let sum: f32 = vol.view().sum();
        println!("unreachable: read {sum} from a truncated file");
        std::process::exit(0);
    }

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.h5");
    {
        let f = hdf5::File::create(&input).unwrap();
        let v = ndarray::Array4::from_shape_fn((2, 16, 64, 64), |(t, z, y, x)| {
            (t * 100000 + z * 100 + y * 10 + x) as f32
        });
        f.new_dataset_builder()
            .with_data(&v)
            .create("data")
            .unwrap();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout {stdout} stderr {stderr}"
    );
    let want = format!(
        "gpuprep: {}: the input shrank while it was being read",
        input.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(
        stderr.contains("removed the temporary files in"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!dir.path().join(".gpuprep-test").exists());
    println!(
        "mapped_input_shrinks: ok (the child exited 2 with: {})",
        stderr.trim()
    );
}

#[cfg(not(unix))]
fn main() {
    println!("mapped_input_shrinks: inputs are never mapped on this platform");
}
