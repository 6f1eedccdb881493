//! Per-call wall and CPU time of the CPU kernels on one volume: a steadier measure than wall time
//! alone on a machine shared with other work (criterion's medians move with the neighbours' load).
//!
//!     cargo run --release -p gpuprep-cpu --example cpu_time -- [nz ny nx] [calls]
//!
//! `CPU_TIME_CASES=register_u1,shift_order3` times only the cases named.

use gpuprep_core::params::*;
use gpuprep_cpu::{median3d::median3d, register::Registrar, shift::shift3d};
use ndarray::Array3;
use std::time::Instant;

/// User + system CPU seconds of this process so far (Linux /proc; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0
}

/// A kernel's name and one call of it.
type Case<'a> = (&'static str, Box<dyn Fn() + 'a>);

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let shape = if a.len() >= 3 {
        [a[0], a[1], a[2]]
    } else {
        [64, 256, 256]
    };
    let calls = a.get(3).copied().unwrap_or(20);
    let v = Array3::from_shape_fn(shape, |(z, y, x)| {
        (((z * 7919 + y * 104729 + x * 1299709) % 1000) as f32) / 1000.0
    });
    let r1 = Registrar::new(v.view(), &RegisterParams::default());
    let r10 = Registrar::new(
        v.view(),
        &RegisterParams::new(10, Normalization::Phase).unwrap(),
    );
    let cases: Vec<Case> = vec![
        (
            "register_u1",
            Box::new(|| {
                std::hint::black_box(r1.register(v.view()));
            }),
        ),
        (
            "register_u10",
            Box::new(|| {
                std::hint::black_box(r10.register(v.view()));
            }),
        ),
        (
            "median3x3x3",
            Box::new(|| drop(median3d(v.view(), &MedianParams::default()))),
        ),
        (
            "median1x3x3",
            Box::new(|| {
                let p = MedianParams::new([1, 3, 3], BoundaryMode::Reflect, 0.0).unwrap();
                drop(median3d(v.view(), &p))
            }),
        ),
        (
            "median5x5x5",
            Box::new(|| {
                let p = MedianParams::new([5, 5, 5], BoundaryMode::Reflect, 0.0).unwrap();
                drop(median3d(v.view(), &p))
            }),
        ),
        (
            "shift_order3",
            Box::new(|| drop(shift3d(v.view(), [0.4, -1.3, 2.7], &ShiftParams::default()))),
        ),
    ];
    println!("simd level: {:?}", gpuprep_cpu::simd::level());
    // `CPU_TIME_CASES=register_u1,shift_order3` times only those (for a profiler's sake).
    let only = std::env::var("CPU_TIME_CASES").ok();
    for (name, f) in cases {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|c| c == name))
        {
            continue;
        }
        f();
        let (t0, c0) = (Instant::now(), cpu_seconds());
        for _ in 0..calls {
            f();
        }
        let wall = t0.elapsed().as_secs_f64() / calls as f64;
        let cpu = (cpu_seconds() - c0) / calls as f64;
        println!(
            "{name}/{}x{}x{}: wall {:.1} ms, cpu {:.1} ms",
            shape[0],
            shape[1],
            shape[2],
            wall * 1e3,
            cpu * 1e3
        );
    }
}
