//! Criterion benches per kernel: CPU path against GPU path, the GPU with transfers (the `Backend`
//! call: upload, compute, read back) and without (`resident`: the kernel on buffers already on the
//! device). `resident` records `BATCH` dispatches per submission and waits once, so the figure is
//! the kernel's own time with the submit-and-wait round trip (tens of microseconds) amortised.
//! Throughput is bytes of f32 volume processed per call.
//!
//! Sizes: 16x64x64 and 64x128x128 by default; GPUPREP_BENCH_LARGE=1 adds 64x256x256;
//! GPUPREP_BENCH_SHAPES=64x256x256,100x100x100 replaces them (scripts/gpu_device_check.sh). On lavapipe
//! (software Vulkan) these numbers measure the CPU running SPIR-V, not a GPU.
//!
//! `frame_counters` runs first, whatever the filter: per size, one resident frame of the standard
//! pipeline's counters (dispatches, submits, blocking reads: `GpuCounters`) and the wall time of a
//! frame with transfers (mean of 10 after two warm-up frames), printed as `frame_counters <size>: …`, then
//! each kernel's GPU time per frame from timestamp queries where the adapter has them
//! (`kernel_times <size>: …`, `GpuContext::time_kernels`).
//! Run: `XDG_RUNTIME_DIR=/tmp cargo bench --bench gpu [-- filter]`.
//!
//! `frame_sequence` (issue 3) runs `SEQUENCE` whole frames back to back, each volume uploaded by
//! its own frame (`sync`, `process_frame`) or staged during the previous frame's compute (`ahead`,
//! `process_stream`, which also submits each next frame's median and registration before waiting
//! for the current frame's readback); the difference is the host work (the upload's copy, the
//! readback's copy out) hidden behind GPU work.
//!
//! `transfer` times a frame's two transfers alone: a volume uploaded (`write_buffer` and a wait)
//! and read back (`GpuContext::read`).
//! It only means something on a real GPU: on lavapipe the "GPU" is the same CPU cores doing the copy.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use gpuprep_core::backend::{Backend, FramePlan};
use gpuprep_core::params::*;
use gpuprep_cpu::{self as cpu, CpuBackend};
use gpuprep_gpu::{self as gpu, Api, GpuBackend, GpuContext};
use ndarray::Array3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn sizes() -> Vec<[usize; 3]> {
    if let Ok(list) = std::env::var("GPUPREP_BENCH_SHAPES") {
        return list
            .split(',')
            .map(|d| {
                let v: Vec<usize> = d
                    .split('x')
                    .map(|n| n.trim().parse().expect("GPUPREP_BENCH_SHAPES: ZxYxX,…"))
                    .collect();
                [v[0], v[1], v[2]]
            })
            .collect();
    }
    let mut s = vec![[16, 64, 64], [64, 128, 128]];
    if std::env::var("GPUPREP_BENCH_LARGE").as_deref() == Ok("1") {
        s.push([64, 256, 256]);
    }
    s
}

fn label(s: [usize; 3]) -> String {
    format!("{}x{}x{}", s[0], s[1], s[2])
}

fn volume(shape: [usize; 3]) -> Array3<f32> {
    let mut rng = StdRng::seed_from_u64(1);
    Array3::from_shape_simple_fn(shape, || rng.random::<f32>())
}

fn wait(ctx: &GpuContext, idx: wgpu::SubmissionIndex) {
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(idx),
            timeout: None,
        })
        .unwrap();
}

/// Dispatches per submission in the `resident` benches.
const BATCH: u64 = 16;

/// Times `record` on resident buffers, `BATCH` recordings per submission.
fn resident(
    b: &mut criterion::Bencher,
    ctx: &GpuContext,
    mut record: impl FnMut(&mut gpu::device::Recorder<'_>),
) {
    b.iter_custom(|iters| {
        let t0 = Instant::now();
        let mut left = iters;
        while left > 0 {
            let k = left.min(BATCH);
            let mut rec = ctx.recorder();
            for _ in 0..k {
                record(&mut rec);
            }
            wait(ctx, rec.submit().unwrap());
            left -= k;
        }
        t0.elapsed()
    })
}

fn gpu_backend() -> Option<GpuBackend> {
    match GpuBackend::new(Api::Any) {
        Ok(g) => {
            eprintln!("GPU bench device: {}", g.describe());
            Some(g)
        }
        Err(e) => {
            eprintln!("SKIPPED GPU benches: {e}");
            None
        }
    }
}

fn bench_kernels(c: &mut Criterion) {
    let mut gpu = gpu_backend();
    let mut cpu = CpuBackend::new();
    let median = MedianParams::new([3, 3, 3], BoundaryMode::Reflect, 0.0).unwrap();
    let shift = ShiftParams::new(3, BoundaryMode::Constant, 0.0).unwrap();
    let s = [0.4, -1.3, 2.7];
    for shape in sizes() {
        let v = volume(shape);
        let bytes = (v.len() * 4) as u64;
        let id = label(shape);

        let mut g = c.benchmark_group("median3d_3x3x3");
        g.throughput(Throughput::Bytes(bytes))
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
        g.bench_function(BenchmarkId::new("cpu", &id), |b| {
            b.iter(|| cpu.median3d(v.view(), &median).unwrap())
        });
        if let Some(gb) = gpu.as_mut() {
            g.bench_function(BenchmarkId::new("gpu_with_transfers", &id), |b| {
                b.iter(|| gb.median3d(v.view(), &median).unwrap())
            });
            let ctx = gb.context();
            let src = ctx
                .storage_init("bench.src", v.as_slice().unwrap())
                .unwrap();
            let dst = ctx.storage("bench.dst", bytes).unwrap();
            g.bench_function(BenchmarkId::new("gpu_resident", &id), |b| {
                resident(b, ctx, |rec| {
                    gpu::median3d::record(ctx, rec, &src, &dst, shape, &median).unwrap();
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group("shift_order3");
        g.throughput(Throughput::Bytes(bytes))
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
        g.bench_function(BenchmarkId::new("cpu", &id), |b| {
            b.iter(|| cpu.shift(v.view(), s, &shift).unwrap())
        });
        if let Some(gb) = gpu.as_mut() {
            g.bench_function(BenchmarkId::new("gpu_with_transfers", &id), |b| {
                b.iter(|| gb.shift(v.view(), s, &shift).unwrap())
            });
            let ctx = gb.context();
            let src = ctx
                .storage_init("bench.src", v.as_slice().unwrap())
                .unwrap();
            let dst = ctx.storage("bench.dst", bytes).unwrap();
            let bufs = gpu::shift::ShiftBuffers::new(ctx, shape).unwrap();
            g.bench_function(BenchmarkId::new("gpu_resident", &id), |b| {
                resident(b, ctx, |rec| {
                    gpu::shift::record(ctx, rec, &bufs, &src, &dst, s, &shift).unwrap();
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group("zscore_accumulate");
        g.throughput(Throughput::Bytes(bytes))
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
        let cpu_acc = cpu.reset_moments(shape).unwrap();
        g.bench_function(BenchmarkId::new("cpu", &id), |b| {
            b.iter(|| cpu.accumulate(&cpu_acc, v.view()).unwrap())
        });
        if let Some(gb) = gpu.as_mut() {
            let gb_acc = gb.reset_moments(shape).unwrap();
            g.bench_function(BenchmarkId::new("gpu_with_transfers", &id), |b| {
                b.iter(|| gb.accumulate(&gb_acc, v.view()).unwrap())
            });
            let ctx = gb.context();
            if ctx.has_f64() {
                let src = ctx
                    .storage_init("bench.src", v.as_slice().unwrap())
                    .unwrap();
                let mut acc = gpu::zscore::GpuAccumulator::new(ctx, shape).unwrap();
                g.bench_function(BenchmarkId::new("gpu_resident", &id), |b| {
                    resident(b, ctx, |rec| {
                        acc.record_add(ctx, rec, &src).unwrap();
                    })
                });
            }
        }
        g.finish();

        let mut g = c.benchmark_group("fft3_forward");
        g.throughput(Throughput::Bytes(bytes))
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
        let cv = v.mapv(|x| cpu::fft::C32::new(x, 0.0));
        let plan = cpu::fft::Fft3::new(shape);
        g.bench_function(BenchmarkId::new("cpu", &id), |b| {
            b.iter(|| {
                let mut d = cv.clone();
                plan.forward(&mut d);
                d
            })
        });
        if let Some(gb) = gpu.as_mut() {
            g.bench_function(BenchmarkId::new("gpu_with_transfers", &id), |b| {
                b.iter(|| gb.fft3(&cv, false).unwrap())
            });
            let ctx = gb.context();
            let gplan = gpu::fft::Fft3Plan::new(ctx, shape).unwrap();
            let flat: Vec<[f32; 2]> = cv.iter().map(|z| [z.re, z.im]).collect();
            let x = ctx.storage_init("bench.x", &flat).unwrap();
            let y = ctx.storage("bench.y", bytes * 2).unwrap();
            g.bench_function(BenchmarkId::new("gpu_resident", &id), |b| {
                resident(b, ctx, |rec| {
                    gplan.record(ctx, rec, &x, &y, false).unwrap();
                })
            });
            // The same transform one pass per stage (the route of axes too long for one pass).
            ctx.set_fft_one_pass(false);
            let staged = gpu::fft::Fft3Plan::new(ctx, shape).unwrap();
            ctx.set_fft_one_pass(true);
            g.bench_function(BenchmarkId::new("gpu_resident_per_stage", &id), |b| {
                resident(b, ctx, |rec| {
                    staged.record(ctx, rec, &x, &y, false).unwrap();
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group("register_phase");
        g.throughput(Throughput::Bytes(bytes))
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
        let rp = RegisterParams::default();
        let cpu_ref = cpu.set_reference(v.view(), &rp).unwrap();
        g.bench_function(BenchmarkId::new("cpu", &id), |b| {
            b.iter(|| cpu.register(&cpu_ref, v.view()).unwrap())
        });
        let mut gb_ref = None;
        if let Some(gb) = gpu.as_mut() {
            let r = gb.set_reference(v.view(), &rp).unwrap();
            g.bench_function(BenchmarkId::new("gpu_with_transfers", &id), |b| {
                b.iter(|| gb.register(&r, v.view()).unwrap())
            });
            gb_ref = Some(r);
        }
        g.finish();

        let mut g = c.benchmark_group("process_frame");
        g.throughput(Throughput::Bytes(bytes))
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
        let plan = |reference, acc| FramePlan {
            median: Some(median),
            register: Some(reference),
            register_on_raw: false,
            shift,
            accumulate: Some(acc),
            keep_filtered: false,
        };
        let cpu_plan = plan(cpu_ref, cpu.reset_moments(shape).unwrap());
        g.bench_function(BenchmarkId::new("cpu", &id), |b| {
            b.iter(|| cpu.process_frame(v.view(), &cpu_plan).unwrap())
        });
        if let (Some(gb), Some(gb_ref)) = (gpu.as_mut(), gb_ref) {
            let gb_plan = plan(gb_ref, gb.reset_moments(shape).unwrap());
            g.bench_function(BenchmarkId::new("gpu_with_transfers", &id), |b| {
                b.iter(|| gb.process_frame(v.view(), &gb_plan).unwrap())
            });
        }
        g.finish();

        // A frame's two transfers on their own: the volume written to the device and read back
        // (`GpuContext::read`: copy to staging, wait, map, copy out).
        if let Some(gb) = gpu.as_ref() {
            let ctx = gb.context();
            let flat = v.as_slice().expect("standard layout");
            let buf = ctx.storage_init("bench.transfer", flat).unwrap();
            let mut g = c.benchmark_group("transfer");
            g.throughput(Throughput::Bytes(bytes));
            g.bench_function(BenchmarkId::new("upload", &id), |b| {
                b.iter(|| {
                    ctx.upload(&buf, flat);
                    wait(ctx, ctx.queue.submit([]));
                })
            });
            g.bench_function(BenchmarkId::new("readback", &id), |b| {
                b.iter(|| ctx.read::<f32>(&buf, flat.len()).unwrap())
            });
            g.finish();
        }
    }
}

/// One resident frame's counters and the mean wall time of a frame with transfers, per size.
fn frame_counters(_: &mut Criterion) {
    let Some(mut gb) = gpu_backend() else { return };
    for shape in sizes() {
        let id = label(shape);
        let v = volume(shape);
        let plan = FramePlan {
            median: Some(MedianParams::default()),
            register: Some(
                gb.set_reference(v.view(), &RegisterParams::default())
                    .unwrap(),
            ),
            register_on_raw: false,
            shift: ShiftParams::default(),
            accumulate: Some(gb.reset_moments(shape).unwrap()),
            keep_filtered: false,
        };
        // Two warm-up frames: the first makes a buffer after some bind groups, which empties the
        // bind-group cache (`GpuContext::bind_group`).
        gb.process_frame(v.view(), &plan).unwrap();
        gb.process_frame(v.view(), &plan).unwrap();
        let before = gb.counters();
        gb.process_frame(v.view(), &plan).unwrap();
        let c = gb.counters() - before;
        let t0 = Instant::now();
        for _ in 0..10 {
            gb.process_frame(v.view(), &plan).unwrap();
        }
        let ms = t0.elapsed().as_secs_f64() * 100.0;
        eprintln!(
            "frame_counters {id}: {} dispatches, {} submits, {} blocking reads, {} waits, {} writes, \
             {} B read, {} B written, {} bind groups made; frame with transfers {ms:.2} ms (mean of 10)",
            c.dispatches,
            c.submits,
            c.blocking_reads,
            c.waits,
            c.writes,
            c.read_bytes,
            c.written_bytes,
            c.bind_groups
        );
        kernel_times(&mut gb, &id, v.view(), &plan);
    }
}

/// Frames timed per kernel by `kernel_times`.
const TIMED_FRAMES: usize = 10;

/// Per kernel, its GPU time per frame from timestamp queries over `TIMED_FRAMES` frames (each
/// dispatch in a pass of its own: compare kernels with each other, not with the wall times above),
/// printed as `kernel_times <size>: <label> <dispatches per frame> × <µs per frame> (<share>)`.
fn kernel_times(gb: &mut GpuBackend, id: &str, v: ndarray::ArrayView3<f32>, plan: &FramePlan) {
    if let Err(e) = gb.context().time_kernels(true) {
        eprintln!("kernel_times {id}: not measured: {e}");
        return;
    }
    for _ in 0..TIMED_FRAMES {
        gb.process_frame(v, plan).unwrap();
    }
    let times = gb.context().kernel_times();
    gb.context().time_kernels(false).unwrap();
    let total: f64 = times.iter().map(|t| t.nanos).sum();
    let n = TIMED_FRAMES as f64;
    eprintln!(
        "kernel_times {id}: {:.1} µs of GPU time per frame in {} kernels",
        total / n / 1e3,
        times.len()
    );
    for t in times {
        eprintln!(
            "kernel_times {id}: {:<44} {:>3} × {:>9.1} µs ({:>4.1}%)",
            t.label,
            t.dispatches / TIMED_FRAMES,
            t.nanos / n / 1e3,
            100.0 * t.nanos / total.max(f64::MIN_POSITIVE)
        );
    }
}

/// Frames per iteration of `frame_sequence`.
const SEQUENCE: usize = 8;

fn bench_frame_sequence(c: &mut Criterion) {
    let Some(mut gb) = gpu_backend() else { return };
    for shape in sizes() {
        // Distinct volumes, as a real series: nothing may be skipped by accident.
        let vols: Vec<Array3<f32>> = (0..SEQUENCE)
            .map(|t| {
                let mut rng = StdRng::seed_from_u64(t as u64);
                Array3::from_shape_simple_fn(shape, || rng.random::<f32>())
            })
            .collect();
        let id = label(shape);
        let plan = FramePlan {
            median: Some(MedianParams::new([3, 3, 3], BoundaryMode::Reflect, 0.0).unwrap()),
            register: Some(
                gb.set_reference(vols[0].view(), &RegisterParams::default())
                    .unwrap(),
            ),
            register_on_raw: false,
            shift: ShiftParams::new(3, BoundaryMode::Constant, 0.0).unwrap(),
            accumulate: Some(gb.reset_moments(shape).unwrap()),
            keep_filtered: false,
        };
        let before = gb.ahead_stats();
        let mut g = c.benchmark_group("frame_sequence");
        g.throughput(Throughput::Bytes((vols[0].len() * 4 * SEQUENCE) as u64))
            .sample_size(10)
            .measurement_time(Duration::from_secs(5));
        g.bench_function(BenchmarkId::new("sync", &id), |b| {
            b.iter(|| {
                for v in &vols {
                    gb.process_frame(v.view(), &plan).unwrap();
                }
            })
        });
        g.bench_function(BenchmarkId::new("ahead", &id), |b| {
            // The stream owns its volumes, as the pipeline's does; they are copied outside the
            // measurement.
            b.iter_batched(
                || vols.clone(),
                |vs| {
                    gb.process_stream(&plan, &mut vs.into_iter().map(Ok), &mut |_| Ok(()))
                        .unwrap()
                },
                BatchSize::LargeInput,
            )
        });
        g.finish();
        // Shows that `ahead` really skipped uploads (nothing when the filter left this size out).
        let after = gb.ahead_stats();
        if after != before {
            eprintln!(
                "frame_sequence {id}: {} frames prestaged, {} uploaded (both variants)",
                after.frames_prestaged - before.frames_prestaged,
                after.frames_uploaded - before.frames_uploaded
            );
        }
    }
}

criterion_group!(benches, frame_counters, bench_kernels, bench_frame_sequence);
criterion_main!(benches);
