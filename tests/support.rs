//! Shared test helpers: golden-fixture access, seeded random volumes, comparison with messages.

#![allow(dead_code)]

use hdf5::types::VarLenUnicode;
use ndarray::{Array3, Array4, ArrayD, ArrayView3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub struct Golden(hdf5::File);

impl Golden {
    pub fn open() -> Golden {
        Golden(
            hdf5::File::open(fixture("golden.h5"))
                .expect("tests/fixtures/golden.h5 (run scripts/make_fixtures.py)"),
        )
    }
    /// (name, group) of every case under `kind`, in order.
    pub fn cases(&self, kind: &str) -> Vec<(String, hdf5::Group)> {
        let g = self.0.group(kind).unwrap();
        let mut names = g.member_names().unwrap();
        names.sort();
        names
            .into_iter()
            .map(|n| (format!("{kind}/{n}"), g.group(&n).unwrap()))
            .collect()
    }
}

pub fn attr_str(g: &hdf5::Group, name: &str) -> String {
    g.attr(name)
        .unwrap()
        .read_scalar::<VarLenUnicode>()
        .unwrap()
        .as_str()
        .to_string()
}
pub fn attr_f64(g: &hdf5::Group, name: &str) -> f64 {
    g.attr(name).unwrap().read_scalar::<f64>().unwrap()
}
pub fn attr_i64(g: &hdf5::Group, name: &str) -> i64 {
    g.attr(name).unwrap().read_scalar::<i64>().unwrap()
}
pub fn attr_vec_f64(g: &hdf5::Group, name: &str) -> Vec<f64> {
    g.attr(name).unwrap().read_raw::<f64>().unwrap()
}
pub fn attr_vec_i64(g: &hdf5::Group, name: &str) -> Vec<i64> {
    g.attr(name).unwrap().read_raw::<i64>().unwrap()
}
pub fn ds3(g: &hdf5::Group, name: &str) -> Array3<f32> {
    g.dataset(name)
        .unwrap()
        .read::<f32, ndarray::Ix3>()
        .unwrap()
}
pub fn ds4(g: &hdf5::Group, name: &str) -> Array4<f32> {
    g.dataset(name)
        .unwrap()
        .read::<f32, ndarray::Ix4>()
        .unwrap()
}
pub fn ds_f64(g: &hdf5::Group, name: &str) -> ArrayD<f64> {
    g.dataset(name).unwrap().read_dyn::<f64>().unwrap()
}

/// A seed from the clock unless `GPUPREP_SEED` is set; printed so a failure can be replayed.
pub fn fresh_seed() -> u64 {
    let seed = std::env::var("GPUPREP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (replay with GPUPREP_SEED={seed})");
    seed
}

pub fn random_volume(rng: &mut StdRng, shape: [usize; 3]) -> Array3<f32> {
    Array3::from_shape_fn(shape, |_| rng.random_range(-1.0f32..1.0))
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Largest |a - b| over elements; NaN in exactly one of them counts as infinite, NaN in both as equal.
pub fn max_abs_diff(a: ArrayView3<f32>, b: ArrayView3<f32>) -> (f32, [usize; 3]) {
    assert_eq!(a.shape(), b.shape());
    let mut worst = (0.0f32, [0, 0, 0]);
    for ((i, &x), &y) in a.indexed_iter().zip(b.iter()) {
        let d = match (x.is_nan(), y.is_nan()) {
            (true, true) => 0.0,
            (false, false) => (x - y).abs(),
            _ => f32::INFINITY,
        };
        if d > worst.0 {
            worst = (d, [i.0, i.1, i.2]);
        }
    }
    worst
}

/// Two gpuprep output files (e.g. CPU and GPU backends): asserts `/shifts` are equal and returns the
/// largest |difference| of `/data` (voxels NaN in both count as equal).
pub fn same_shifts_worst_data_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (hdf5::File::open(a).unwrap(), hdf5::File::open(b).unwrap());
    assert_eq!(
        a.dataset("shifts").unwrap().read_2d::<f64>().unwrap(),
        b.dataset("shifts").unwrap().read_2d::<f64>().unwrap()
    );
    let (x, y) = (
        a.dataset("data").unwrap().read_dyn::<f32>().unwrap(),
        b.dataset("data").unwrap().read_dyn::<f32>().unwrap(),
    );
    x.iter()
        .zip(y.iter())
        .map(|(p, q)| {
            if p.is_nan() && q.is_nan() {
                0.0
            } else {
                (p - q).abs()
            }
        })
        .fold(0.0f32, f32::max)
}

/// The `gpuprep` binary, ready to spawn from a test. HDF5 opens files without O_CLOEXEC and locks them:
/// a child forked while another test thread of this process has a file open would hold that lock for
/// its whole run, and the other test's next open of the file fails ("unable to lock file, errno = 11").
/// Every inherited descriptor is therefore closed on exec.
pub fn gpuprep_command() -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_gpuprep"));
    c.env("XDG_RUNTIME_DIR", "/tmp");
    // SAFETY: only async-signal-safe calls (close_range / fcntl) between fork and exec.
    unsafe {
        c.pre_exec(|| {
            #[cfg(target_os = "linux")]
            let done = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) == 0;
            #[cfg(not(target_os = "linux"))]
            let done = false;
            if !done {
                for fd in 3..4096 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
    c
}

/// A bad value of the environment variable `var` is the user's mistake, not a missing GPU: a
/// `--backend auto` run of a small synthetic input with `var=value` exits 2 with one line naming the
/// variable and the value (no mention of an adapter: it is read before any is opened, so this needs
/// no GPU), and writes nothing.
pub fn assert_bad_env_stops_an_auto_run(var: &str, value: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data").display().to_string();
    let out = tmp.path().join("out.h5");
    let (code, _, err) = gpuprep_output(&["synth", &data, "--shape", "3,4,6,5"]);
    assert_eq!(code, 0, "{err}");
    let o = gpuprep_command()
        .env(var, value)
        .args(["run", &data, "-o"])
        .arg(&out)
        .args(["--backend", "auto", "-q"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(var) && err.contains(&format!("{value:?}")) && !err.contains("adapter"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Runs the binary with `args`: (exit code, stdout, stderr).
pub fn gpuprep_output<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = gpuprep_command().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
