//! CPU kernel benchmarks per size (criterion); throughput is volume bytes processed per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gpuprep_core::params::*;
use gpuprep_cpu::{
    fft::RealFft3, median3d::median3d, register::Registrar, shift::shift3d, zscore::Accumulator,
};
use ndarray::Array3;
use std::time::Duration;

fn volume(shape: [usize; 3]) -> Array3<f32> {
    // Deterministic pseudo-random values without an RNG dependency in the hot loop.
    Array3::from_shape_fn(shape, |(z, y, x)| {
        (((z * 7919 + y * 104729 + x * 1299709) % 1000) as f32) / 1000.0
    })
}

fn kernels(c: &mut Criterion) {
    let sizes: &[[usize; 3]] = &[
        [32, 64, 64],
        [64, 128, 128],
        [100, 100, 100],
        [64, 256, 256],
    ];
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for &shape in sizes {
        let v = volume(shape);
        let name = format!("{}x{}x{}", shape[0], shape[1], shape[2]);
        g.throughput(Throughput::Bytes((v.len() * 4) as u64));
        // The floor of a kernel that reads its volume once and writes one: a copy on the same threads.
        let mut out = Array3::<f32>::zeros(shape);
        g.bench_with_input(BenchmarkId::new("copy", &name), &v, |b, v| {
            b.iter(|| {
                use rayon::prelude::*;
                let src = v.as_slice().expect("standard layout");
                out.as_slice_mut()
                    .expect("standard layout")
                    .par_chunks_mut(1 << 16)
                    .zip(src.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.copy_from_slice(s))
            })
        });
        g.bench_with_input(BenchmarkId::new("median3x3x3", &name), &v, |b, v| {
            b.iter(|| median3d(v.view(), &MedianParams::default()))
        });
        let reg = Registrar::new(v.view(), &RegisterParams::default());
        g.bench_with_input(BenchmarkId::new("register_u1", &name), &v, |b, v| {
            b.iter(|| reg.register(v.view()))
        });
        let reg10 = Registrar::new(
            v.view(),
            &RegisterParams::new(10, Normalization::Phase).unwrap(),
        );
        g.bench_with_input(BenchmarkId::new("register_u10", &name), &v, |b, v| {
            b.iter(|| reg10.register(v.view()))
        });
        // The forward transform alone (scipy.fft.rfftn's work), into a reused spectrum.
        let fft = RealFft3::new(shape);
        let mut spectrum = fft.forward(v.view());
        g.bench_with_input(BenchmarkId::new("rfftn", &name), &v, |b, v| {
            b.iter(|| fft.forward_into(v.view(), spectrum.as_slice_mut().expect("standard layout")))
        });
        g.bench_with_input(BenchmarkId::new("shift_order3", &name), &v, |b, v| {
            b.iter(|| shift3d(v.view(), [0.4, -1.3, 2.7], &ShiftParams::default()))
        });
        // The per-frame QC on the writer's thread: two correlations with the reference (before
        // and after the shift) and the projections of both volumes.
        let w = v.mapv(|x| 1.0 - x);
        g.bench_with_input(BenchmarkId::new("qc_correlation", &name), &v, |b, v| {
            b.iter(|| gpuprep_pipeline::qc::correlation(v.view(), w.view()))
        });
        let mut projections = gpuprep_pipeline::qc::Projections::new(shape);
        g.bench_with_input(BenchmarkId::new("qc_projections", &name), &v, |b, v| {
            b.iter(|| projections.add(v.view(), w.view()))
        });
        let mut acc = Accumulator::new(shape);
        g.bench_with_input(BenchmarkId::new("zscore_accumulate", &name), &v, |b, v| {
            b.iter(|| acc.add(v.view()))
        });
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
