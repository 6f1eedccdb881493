//! The whole pipeline on synthetic data with known shifts, through the library and the output file.

use gpuprep_core::backend::{
    stream_by_frame, Accumulation, Backend, FrameOutput, FramePlan, Moments, Reference,
};
use gpuprep_core::error::Result;
use gpuprep_core::params::{
    MedianParams, Normalization, RegisterParams, Registration, ShiftParams, ZscoreParams,
};
use gpuprep_core::zscore::normalize;
use gpuprep_cpu::reference::zscore_in_memory;
use gpuprep_cpu::CpuBackend;
use gpuprep_io::Dtype;
use gpuprep_pipeline::driver::{run, RunConfig};
use gpuprep_pipeline::synth::{synth, SynthLayout, SynthMode, SynthSpec};
use ndarray::{Array3, ArrayView3};
use std::cell::Cell;
use std::rc::Rc;

fn dataset(dir: &std::path::Path, subpixel: bool, shape: [usize; 4]) -> Vec<[f64; 3]> {
    let spec = SynthSpec {
        shape,
        mode: SynthMode::Realistic,
        layout: SynthLayout::Files,
        max_shift: 3.0,
        subpixel,
        noise: if subpixel { 0.05 } else { 0.02 },
        seed: 11,
        dtype: Dtype::U16,
    };
    synth(dir, &spec, false).unwrap().true_shifts.unwrap()
}

fn shifts_of(path: &std::path::Path) -> ndarray::Array2<f64> {
    hdf5::File::open(path)
        .unwrap()
        .dataset("shifts")
        .unwrap()
        .read_2d::<f64>()
        .unwrap()
}

#[test]
fn integer_shifts_are_recovered_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = dataset(&tmp.path().join("in"), false, [6, 20, 33, 28]);
    let out = tmp.path().join("out.h5");
    let cfg = RunConfig::new(
        vec![tmp.path().join("in").display().to_string()],
        out.clone(),
    );
    let report = run(&cfg, &mut CpuBackend::new()).unwrap();
    assert_eq!(report.timepoints, 6);
    let found = shifts_of(&out);
    for (t, s) in truth.iter().enumerate() {
        assert_eq!(
            [found[[t, 0]], found[[t, 1]], found[[t, 2]]],
            *s,
            "timepoint {t}"
        );
    }
}

#[test]
fn subpixel_shifts_within_a_tenth_of_a_voxel_at_upsample_10() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = dataset(&tmp.path().join("in"), true, [6, 24, 40, 36]);
    let out = tmp.path().join("out.h5");
    let mut cfg = RunConfig::new(
        vec![tmp.path().join("in").display().to_string()],
        out.clone(),
    );
    // Normalization none: phase whitening amplifies the noise of this data (scikit-image misses by
    // ~0.8 voxel with it on the same volumes).
    cfg.register = Some(RegisterParams::new(10, Normalization::None).unwrap());
    cfg.save_filtered = true;
    cfg.save_registered = true;
    run(&cfg, &mut CpuBackend::new()).unwrap();
    let found = shifts_of(&out);
    for (t, s) in truth.iter().enumerate() {
        for a in 0..3 {
            assert!(
                (found[[t, a]] - s[a]).abs() <= 0.1,
                "timepoint {t}: found {:?}, true {s:?}",
                found.row(t)
            );
        }
    }
    let f = hdf5::File::open(&out).unwrap();
    for name in ["data", "filtered", "registered"] {
        assert_eq!(
            f.dataset(name).unwrap().shape(),
            vec![6, 24, 40, 36],
            "{name}"
        );
    }
    assert_eq!(f.dataset("mean").unwrap().shape(), vec![24, 40, 36]);
}

/// Names in `dir`, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn read4(f: &hdf5::File, name: &str) -> ndarray::Array4<f32> {
    f.dataset(name)
        .unwrap()
        .read::<f32, ndarray::Ix4>()
        .unwrap()
}

fn read3(f: &hdf5::File, name: &str) -> Array3<f32> {
    f.dataset(name)
        .unwrap()
        .read::<f32, ndarray::Ix3>()
        .unwrap()
}

/// Synthetic input of `shape` in `TMP/in` and the default job writing `TMP/out/out.h5`, alone in
/// its directory so that leftovers show.
fn run_in_own_dir(shape: [usize; 4]) -> (tempfile::TempDir, std::path::PathBuf, RunConfig) {
    let tmp = tempfile::tempdir().unwrap();
    dataset(&tmp.path().join("in"), false, shape);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let cfg = RunConfig::new(
        vec![tmp.path().join("in").display().to_string()],
        out_dir.join("out.h5"),
    );
    (tmp, out_dir, cfg)
}

#[test]
fn zscored_run_leaves_only_the_output_and_matches_normalizing_the_registered_volumes() {
    let (_tmp, out_dir, mut cfg) = run_in_own_dir([7, 12, 21, 18]);
    let out = cfg.output.clone();
    cfg.save_registered = true;
    cfg.save_filtered = true;
    let report = run(&cfg, &mut CpuBackend::new()).unwrap();
    // The scratch file and the sink's temporary name are both gone.
    assert_eq!(listing(&out_dir), vec!["out.h5".to_string()]);
    for stage in ["reference", "read", "compute", "write", "normalize"] {
        assert!(
            report.stage_times.iter().any(|(n, _)| *n == stage),
            "{stage} missing from {:?}",
            report.stage_times
        );
    }

    let f = hdf5::File::open(&out).unwrap();
    let (data, registered) = (read4(&f, "data"), read4(&f, "registered"));
    // The pipeline normalized with the f64 moments of these volumes, accumulated in this order;
    // `/mean` and `/std` store their f32 roundings.
    let mut acc = gpuprep_core::zscore::Accumulator::new([12, 21, 18]);
    for v in registered.outer_iter() {
        acc.add(v);
    }
    let moments: Moments = acc.moments(&ZscoreParams::default());
    assert_eq!(moments.mean(), read3(&f, "mean"));
    assert_eq!(moments.std(), read3(&f, "std"));
    let series: Vec<Array3<f32>> = registered.outer_iter().map(|v| v.to_owned()).collect();
    let in_memory = zscore_in_memory(&series, 0);
    for (t, v) in series.iter().enumerate() {
        let got = data.index_axis(ndarray::Axis(0), t);
        // The single-pass-to-HDF5 design normalized exactly these f32 volumes with these moments, so the
        // scratch round trip must reproduce it bit for bit.
        let want = normalize(v.view(), &moments, &ZscoreParams::default());
        assert!(
            got.iter()
                .zip(want.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())),
            "timepoint {t} differs from normalizing the registered volume"
        );
        // And the streamed statistics agree with the textbook in-memory z-score, up to the rounding of
        // mean and std to f32 (relative eps_f32 of |mean| / std). NaN marks scipy's constant voxels.
        for (((&a, &b), &m), &sd) in got
            .iter()
            .zip(in_memory[t].iter())
            .zip(moments.mean().iter())
            .zip(moments.std().iter())
        {
            if a.is_nan() {
                continue;
            }
            let tol = 4.0 * f32::EPSILON * (m.abs() / sd + b.abs() + 1.0);
            assert!(
                (a - b).abs() <= tol,
                "timepoint {t}: {a} vs {b} (tolerance {tol})"
            );
        }
    }
    let nans = data
        .index_axis(ndarray::Axis(0), 0)
        .iter()
        .filter(|v| v.is_nan())
        .count();
    assert_eq!(nans, report.constant_voxels);
}

/// Pass 1's results kept in memory (within the budget) or in the scratch file (budget 0) give the same
/// output, bit for bit, and leave nothing behind either way.
#[test]
fn pass_one_in_memory_and_in_the_scratch_file_write_the_same_output() {
    let (_tmp, out_dir, mut cfg) = run_in_own_dir([6, 9, 14, 11]);
    let mut outputs = Vec::new();
    for (budget, place) in [
        (Some(0), "file"),
        (Some(6 * 9 * 14 * 11 * 4), "memory"),
        (None, "memory"),
    ] {
        cfg.memory_budget = budget;
        cfg.force = true;
        let report = run(&cfg, &mut CpuBackend::new()).unwrap();
        assert_eq!(report.scratch, Some(place), "budget {budget:?}");
        assert_eq!(listing(&out_dir), vec!["out.h5".to_string()]);
        let f = hdf5::File::open(&cfg.output).unwrap();
        outputs.push((read4(&f, "data"), read3(&f, "mean"), read3(&f, "std")));
    }
    // One byte short of the results: the file.
    cfg.memory_budget = Some(6 * 9 * 14 * 11 * 4 - 1);
    assert_eq!(
        run(&cfg, &mut CpuBackend::new()).unwrap().scratch,
        Some("file")
    );
    let bits = |a: &ndarray::Array4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for o in &outputs[1..] {
        assert_eq!(bits(&o.0), bits(&outputs[0].0));
        assert_eq!((&o.1, &o.2), (&outputs[0].1, &outputs[0].2));
    }
    cfg.zscore = None;
    assert_eq!(run(&cfg, &mut CpuBackend::new()).unwrap().scratch, None);
}

#[test]
fn no_zscore_run_writes_the_registered_volumes_as_data() {
    let (_tmp, out_dir, mut cfg) = run_in_own_dir([4, 12, 16, 20]);
    let out = cfg.output.clone();
    cfg.zscore = None;
    cfg.save_registered = true;
    run(&cfg, &mut CpuBackend::new()).unwrap();
    assert_eq!(listing(&out_dir), vec!["out.h5".to_string()]);
    let f = hdf5::File::open(&out).unwrap();
    assert_eq!(read4(&f, "data"), read4(&f, "registered"));
    assert!(f.dataset("mean").is_err());
}

#[test]
fn a_failure_midway_leaves_neither_output_nor_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let spec = SynthSpec {
        shape: [6, 10, 14, 12],
        mode: SynthMode::Realistic,
        seed: 5,
        dtype: Dtype::F32,
        ..SynthSpec::default()
    };
    synth(&input, &spec, false).unwrap();
    let bad = input.join("ind_00003.h5");
    {
        let f = hdf5::File::open_rw(&bad).unwrap();
        let ds = f.dataset("default").unwrap();
        let mut v = ds.read::<f32, ndarray::Ix3>().unwrap();
        v[[5, 7, 6]] = f32::NAN;
        ds.write(&v).unwrap();
    }
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for save in [false, true] {
        let mut cfg = RunConfig::new(vec![input.display().to_string()], out_dir.join("out.h5"));
        cfg.save_registered = save;
        let err = run(&cfg, &mut CpuBackend::new()).unwrap_err().to_string();
        assert!(
            err.contains("ind_00003.h5") && err.contains("timepoint 3"),
            "{err}"
        );
        assert_eq!(
            listing(&out_dir),
            Vec::<String>::new(),
            "save {save}: {err}"
        );
    }
}

/// The CPU backend, recording how far into the pipeline's stream it had read when it computed each
/// volume. With `ahead` it takes volume t + 1 before computing t, as the GPU backend does to stage
/// its upload; without, it runs the trait's default (`stream_by_frame`).
#[derive(Default)]
struct Lookahead {
    cpu: CpuBackend,
    /// Per computed volume: the volume, and how many volumes had been taken from the stream.
    calls: Vec<(Array3<f32>, usize)>,
    taken: Rc<Cell<usize>>,
    ahead: bool,
}

/// The stream, counting the volumes taken from it.
struct Counting<'a> {
    inner: &'a mut dyn Iterator<Item = Result<Array3<f32>>>,
    taken: Rc<Cell<usize>>,
}

impl Iterator for Counting<'_> {
    type Item = Result<Array3<f32>>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next();
        self.taken.set(self.taken.get() + item.is_some() as usize);
        item
    }
}

impl Backend for Lookahead {
    fn describe(&self) -> String {
        self.cpu.describe()
    }
    fn median3d(&mut self, vol: ArrayView3<f32>, p: &MedianParams) -> Result<Array3<f32>> {
        self.cpu.median3d(vol, p)
    }
    fn set_reference(
        &mut self,
        reference: ArrayView3<f32>,
        p: &RegisterParams,
    ) -> Result<Reference> {
        self.cpu.set_reference(reference, p)
    }
    fn register(&mut self, r: &Reference, vol: ArrayView3<f32>) -> Result<Registration> {
        self.cpu.register(r, vol)
    }
    fn shift(&mut self, vol: ArrayView3<f32>, s: [f64; 3], p: &ShiftParams) -> Result<Array3<f32>> {
        self.cpu.shift(vol, s, p)
    }
    fn reset_moments(&mut self, shape: [usize; 3]) -> Result<Accumulation> {
        self.cpu.reset_moments(shape)
    }
    fn accumulate(&mut self, a: &Accumulation, vol: ArrayView3<f32>) -> Result<()> {
        self.cpu.accumulate(a, vol)
    }
    fn moments(&mut self, a: &Accumulation, p: &ZscoreParams) -> Result<Moments> {
        self.cpu.moments(a, p)
    }
    fn normalize(
        &mut self,
        vol: ArrayView3<f32>,
        m: &Moments,
        p: &ZscoreParams,
    ) -> Result<Array3<f32>> {
        self.cpu.normalize(vol, m, p)
    }
    fn process_frame(&mut self, raw: ArrayView3<f32>, plan: &FramePlan) -> Result<FrameOutput> {
        self.calls.push((raw.to_owned(), self.taken.get()));
        self.cpu.process_frame(raw, plan)
    }
    fn process_stream(
        &mut self,
        plan: &FramePlan,
        frames: &mut dyn Iterator<Item = Result<Array3<f32>>>,
        emit: &mut dyn FnMut(FrameOutput) -> Result<()>,
    ) -> Result<()> {
        let mut frames = Counting {
            inner: frames,
            taken: self.taken.clone(),
        };
        if !self.ahead {
            return stream_by_frame(self, plan, &mut frames, emit);
        }
        let Some(mut current) = frames.next().transpose()? else {
            return Ok(());
        };
        loop {
            let next = frames.next().transpose()?;
            let out = self.process_frame(current.view(), plan)?;
            emit(out)?;
            match next {
                Some(n) => current = n,
                None => return Ok(()),
            }
        }
    }
}

/// Issue 3: pass 1 hands the backend the stream of volumes, which it may read ahead in (as the GPU
/// backend does to stage uploads) or not (the default takes one volume per frame); either way the
/// output is the CPU backend's bit for bit.
#[test]
fn pass_one_streams_the_volumes_to_the_backend() {
    let (_tmp, _out_dir, cfg) = run_in_own_dir([5, 8, 11, 13]);
    let cpu_out = cfg.output.with_file_name("cpu.h5");
    run(
        &RunConfig::new(cfg.inputs.clone(), cpu_out.clone()),
        &mut CpuBackend::new(),
    )
    .unwrap();
    let want = read4(&hdf5::File::open(&cpu_out).unwrap(), "data");
    for ahead in [false, true] {
        let mut backend = Lookahead {
            ahead,
            ..Lookahead::default()
        };
        let cfg = RunConfig {
            force: true,
            ..cfg.clone()
        };
        run(&cfg, &mut backend).unwrap();
        let taken: Vec<usize> = backend.calls.iter().map(|c| c.1).collect();
        if ahead {
            assert_eq!(taken, [2, 3, 4, 5, 5], "one volume ahead");
        } else {
            assert_eq!(
                taken,
                [1, 2, 3, 4, 5],
                "the default takes one volume per frame"
            );
        }
        // Each timepoint's volume once, in order.
        for (t, pair) in backend.calls.windows(2).enumerate() {
            assert_ne!(pair[0].0, pair[1].0, "timepoints {t} and {}", t + 1);
        }
        let got = read4(&hdf5::File::open(&cfg.output).unwrap(), "data");
        assert!(
            got.iter()
                .zip(want.iter())
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "ahead {ahead}"
        );
    }
}

/// The last volume is read as the lookahead of the one before; an error there still stops the run
/// cleanly (no hung reader or writer, nothing left behind).
#[test]
fn a_bad_last_volume_stops_the_run_while_it_is_the_lookahead() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let spec = SynthSpec {
        shape: [4, 8, 11, 13],
        mode: SynthMode::Realistic,
        seed: 3,
        dtype: Dtype::F32,
        ..SynthSpec::default()
    };
    synth(&input, &spec, false).unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let cfg = RunConfig::new(vec![input.display().to_string()], out_dir.join("out.h5"));
    let bad = input.join("ind_00003.h5");
    {
        let f = hdf5::File::open_rw(&bad).unwrap();
        let ds = f.dataset("default").unwrap();
        let mut v = ds.read::<f32, ndarray::Ix3>().unwrap();
        v[[1, 2, 3]] = f32::INFINITY;
        ds.write(&v).unwrap();
    }
    let mut backend = Lookahead {
        ahead: true,
        ..Lookahead::default()
    };
    let err = run(&cfg, &mut backend).unwrap_err().to_string();
    assert!(
        err.contains("ind_00003.h5") && err.contains("timepoint 3"),
        "{err}"
    );
    // Timepoints 0 and 1 were computed; 2 never was, since its lookahead failed first.
    assert_eq!(backend.calls.len(), 2);
    assert_eq!(listing(&out_dir), Vec::<String>::new());
}

/// `process_frame_into` (the CPU's shift written straight into the caller's array, as a block of
/// timepoints is filled) gives `process_frame`'s volume, filtered volume, registration and moments
/// bit for bit: into a contiguous view, into one whose planes are not contiguous (the copying route),
/// with and without registration. An output of another shape is refused, naming both shapes.
#[test]
fn process_frame_into_equals_process_frame_bit_for_bit() {
    use gpuprep_core::backend::FrameParts;
    use ndarray::{s, Array4, Axis};
    let shape = [7, 13, 29];
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let reference = Array3::from_shape_fn(shape, |_| next());
    let frames: Vec<Array3<f32>> = (0..3)
        .map(|i| {
            let mut v = reference.clone();
            v.accumulate_axis_inplace(Axis(2), |&a, b| *b = 0.7 * *b + 0.3 * a);
            v.mapv(|x| x + 0.05 * next() + 0.1 * i as f32)
        })
        .collect();
    let same = |a: ArrayView3<f32>, b: ArrayView3<f32>| {
        a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    let reg = RegisterParams::new(4, Normalization::Phase).unwrap();
    for registering in [true, false] {
        let (mut a, mut b) = (CpuBackend::new(), CpuBackend::new());
        let plan_of = |be: &mut CpuBackend| FramePlan {
            median: Some(MedianParams::default()),
            register: registering.then(|| be.set_reference(reference.view(), &reg).unwrap()),
            register_on_raw: false,
            shift: ShiftParams::default(),
            accumulate: Some(be.reset_moments(shape).unwrap()),
            keep_filtered: true,
        };
        let (pa, pb) = (plan_of(&mut a), plan_of(&mut b));
        // Planes not contiguous: every other x of a wider array.
        let mut wide = Array4::<f32>::zeros((frames.len(), shape[0], shape[1], 2 * shape[2]));
        let mut block = Array4::<f32>::zeros((frames.len(), shape[0], shape[1], shape[2]));
        for (t, raw) in frames.iter().enumerate() {
            let want = a.process_frame(raw.view(), &pa).unwrap();
            let out = if t % 2 == 0 {
                block.index_axis_mut(Axis(0), t)
            } else {
                wide.slice_mut(s![t, .., .., ..;2])
            };
            let FrameParts {
                filtered,
                registration,
            } = b.process_frame_into(raw.view(), &pb, out).unwrap();
            let got = if t % 2 == 0 {
                block.index_axis(Axis(0), t)
            } else {
                wide.slice(s![t, .., .., ..;2])
            };
            let ctx = format!("registering {registering}, t {t}");
            assert!(same(want.volume.view(), got), "{ctx}: volume");
            assert!(
                same(want.filtered.unwrap().view(), filtered.unwrap().view()),
                "{ctx}: filtered"
            );
            assert_eq!(
                want.registration.map(|r| r.shift),
                registration.map(|r| r.shift),
                "{ctx}"
            );
            assert_eq!(registration.is_some(), registering, "{ctx}");
        }
        let zp = ZscoreParams::default();
        let (ma, mb) = (
            a.moments(&pa.accumulate.unwrap(), &zp).unwrap(),
            b.moments(&pb.accumulate.unwrap(), &zp).unwrap(),
        );
        assert!(same(ma.mean().view(), mb.mean().view()) && same(ma.std().view(), mb.std().view()));
        let mut small = Array3::<f32>::zeros([7, 13, 28]);
        let err = b
            .process_frame_into(frames[0].view(), &pb, small.view_mut())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(7, 13, 28)") && err.contains("(7, 13, 29)"),
            "{err}"
        );
    }
}
