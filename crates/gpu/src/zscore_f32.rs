//! Host side of `shaders/zscore_f32.wgsl` (CPU twin: `crates/cpu/src/zscore_f32.rs`): the float32-only
//! z-score of f64 accuracy for devices without SHADER_F64, the choice of the z-score's path
//! (`ZscorePath`, `GPUPREP_GPU_ZSCORE`) and the start-up self-test that the device keeps TwoSum and
//! TwoProduct exact.

use super::device::{GpuContext, Recorder};
use crate::shaders;
use bytemuck::{Pod, Zeroable};
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::{ConstantVoxels, ZscoreParams};

/// Uniforms of `zscore_f32.wgsl` (`struct Params`); `tests/shaders.rs` (`uniform_structs_match_wgsl`)
/// checks the layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ZscoreF32Uniform {
    pub total: u32,
    pub count: u32,
    pub ddof: u32,
    pub constant_zero: u32,
    /// Always 0; the shader XORs intermediates with it so the compiler cannot rewrite their algebra.
    pub opaque_zero: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}
const _: () = assert!(std::mem::size_of::<ZscoreF32Uniform>() == 32);

impl ZscoreF32Uniform {
    fn new(total: usize, count: u32, ddof: u32, constant_zero: bool) -> Self {
        ZscoreF32Uniform {
            total: total as u32,
            count,
            ddof,
            constant_zero: constant_zero as u32,
            ..Zeroable::zeroed()
        }
    }
}

/// Environment variable forcing the z-score's path: `f64`, `f32` or `cpu` (unset or `auto`: f64 where
/// the device has SHADER_F64, else f32 when the self-test passes, else the CPU).
pub const ZSCORE_ENV: &str = "GPUPREP_GPU_ZSCORE";

/// Where the GPU backend computes the z-score (accumulation, moments and normalization).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZscorePath {
    /// `zscore.wgsl`: Welford in f64 on the device.
    F64,
    /// `zscore_f32.wgsl`: shifted double-float sums in f32 on the device.
    F32,
    /// The CPU twin (`gpuprep_core::zscore`, f64) after the readback.
    Cpu,
}

/// What chose the path, for `describe()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZscoreChoice {
    /// The device's features and the self-test chose.
    Auto,
    /// `ZSCORE_ENV` or `GpuBackend::set_zscore_path` asked for this path.
    Forced(ZscorePath),
}

impl ZscoreChoice {
    /// The choice `ZSCORE_ENV` makes (`Auto` when unset or empty).
    pub fn from_env() -> Result<ZscoreChoice> {
        match std::env::var(ZSCORE_ENV) {
            Ok(v) => ZscoreChoice::parse(&v),
            Err(_) => Ok(ZscoreChoice::Auto),
        }
    }

    pub fn parse(v: &str) -> Result<ZscoreChoice> {
        Ok(match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => ZscoreChoice::Auto,
            "f64" => ZscoreChoice::Forced(ZscorePath::F64),
            "f32" => ZscoreChoice::Forced(ZscorePath::F32),
            "cpu" => ZscoreChoice::Forced(ZscorePath::Cpu),
            _ => {
                return Err(Error::InvalidParameter {
                    name: ZSCORE_ENV.into(),
                    message: format!("{v:?} is not one of auto, f64, f32, cpu"),
                })
            }
        })
    }
}

/// The path `choice` gives on `ctx`, and why (for `describe()`). Runs the self-test when the f32
/// path is a candidate; a forced path the device cannot run is an error.
pub fn choose(ctx: &GpuContext, choice: ZscoreChoice) -> Result<(ZscorePath, String)> {
    match choice {
        ZscoreChoice::Forced(ZscorePath::F64) if !ctx.has_f64() => Err(Error::InvalidParameter {
            name: ZSCORE_ENV.into(),
            message: "f64 asks for SHADER_F64, which this device lacks (use f32 or cpu)".into(),
        }),
        ZscoreChoice::Forced(ZscorePath::F32) => match self_test(ctx)? {
            None => Ok((ZscorePath::F32, format!("forced by {ZSCORE_ENV}"))),
            Some(why) => Err(Error::Gpu(format!(
                "{ZSCORE_ENV}=f32, but the device fails the float32 z-score's self-test: {why}"
            ))),
        },
        ZscoreChoice::Forced(path) => Ok((path, format!("forced by {ZSCORE_ENV}"))),
        ZscoreChoice::Auto if ctx.has_f64() => Ok((ZscorePath::F64, "SHADER_F64".into())),
        ZscoreChoice::Auto => match self_test(ctx)? {
            None => Ok((
                ZscorePath::F32,
                "device lacks SHADER_F64; self-test passed".into(),
            )),
            Some(why) => Ok((
                ZscorePath::Cpu,
                format!("device lacks SHADER_F64 and fails the float32 self-test ({why})"),
            )),
        },
    }
}

/// Input pairs of the self-test: TwoSum's error term is non-zero for each (0 under reassociation),
/// TwoProduct's too (0 when the compiler folds the split away), and the range covers the
/// magnitudes the z-score meets (values near 1e4 with small deviations, large and small products).
fn self_test_pairs() -> Vec<[f32; 2]> {
    let mut v = vec![
        [1.0, 1e-8],
        [1e4, 3.0e-4],
        [-1e4, 1.0 + f32::EPSILON],
        [1.0 + f32::EPSILON, 1.0 + f32::EPSILON],
        [16777215.0, 16777213.0],
        [3.0e-3, -7.0e-11],
        [1.0e19, 3.0e18],
        [0.1, 0.3],
    ];
    // A fixed pseudo-random spread of signs and exponents.
    let mut s = 0x9e37_79b9_u32;
    for _ in 0..56 {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        // Exponents 2^-10 .. 2^15: sums of two such values are exact in f64.
        let a =
            f32::from_bits(0x3a80_0000 + (s % 0x0c80_0000)) * if s & 1 == 0 { 1.0 } else { -1.0 };
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        let b = f32::from_bits(0x3a80_0000 + (s % 0x0c80_0000));
        v.push([a, b]);
    }
    v
}

/// Runs the `selftest` kernel on `self_test_pairs` and checks each result against the exact sum and
/// product (computed in f64, where both are exact for these pairs): `None` when all match, else what
/// failed.
pub fn self_test(ctx: &GpuContext) -> Result<Option<String>> {
    run_self_test(ctx, true)
}

/// `self_test` of the shader built with `o` the identity (`OPAQUE = 0`): what the kernels would
/// compute without the guard against reassociation. Tests show that lavapipe fails it.
pub fn self_test_unguarded(ctx: &GpuContext) -> Result<Option<String>> {
    run_self_test(ctx, false)
}

fn run_self_test(ctx: &GpuContext, guarded: bool) -> Result<Option<String>> {
    let pairs = self_test_pairs();
    let k = ctx.pipeline_variant(&shaders::ZSCORE_F32_SELFTEST, &[("OPAQUE", guarded as u32)])?;
    let input = ctx.storage_init("zscore_f32.selftest_in", &pairs)?;
    let out = ctx.storage("zscore_f32.selftest_out", pairs.len() as u64 * 32)?;
    let mut rec = ctx.recorder();
    let u = ZscoreF32Uniform::new(pairs.len(), 0, 0, false);
    rec.dispatch(&k, &u, &[&input, &out], pairs.len() as u64);
    rec.submit()?;
    let got = ctx.read::<[[f32; 4]; 2]>(&out, pairs.len())?;
    for (&[a32, b32], [[s, es, pr, ep], [fs, fe, hi, lo]]) in pairs.iter().zip(&got) {
        let (a, b) = (a32 as f64, b32 as f64);
        if *fs as f64 + *fe as f64 != a + b || *fs != (a + b) as f32 {
            return Ok(Some(format!(
                "Fast2Sum({a:e}, {b:e}) gave ({fs:e}, {fe:e}), not exact"
            )));
        }
        if hi + lo != a32 || hi.to_bits() & 0xfff != 0 {
            return Ok(Some(format!("split({a:e}) gave ({hi:e}, {lo:e})")));
        }
        if *s as f64 + *es as f64 != a + b || *s != (a + b) as f32 {
            return Ok(Some(format!(
                "TwoSum({a:e}, {b:e}) gave ({s:e}, {es:e}), not exact"
            )));
        }
        if *pr as f64 + *ep as f64 != a * b || *pr != (a * b) as f32 {
            return Ok(Some(format!(
                "TwoProduct({a:e}, {b:e}) gave ({pr:e}, {ep:e}), not exact"
            )));
        }
    }
    Ok(None)
}

/// Per-voxel state of the f32 path on the device: the shift (the first sample) and the double-float
/// sums of the shifted samples and of their squares.
pub struct F32Accumulator {
    pub shape: [usize; 3],
    pub count: u32,
    pub k: wgpu::Buffer,
    pub s1: wgpu::Buffer,
    pub s2: wgpu::Buffer,
}

impl F32Accumulator {
    /// Its largest buffer: a double-float per voxel.
    pub fn largest_buffer(shape: [usize; 3]) -> u64 {
        shape.iter().product::<usize>() as u64 * 8
    }

    pub fn new(ctx: &GpuContext, shape: [usize; 3]) -> Result<Self> {
        let n = shape.iter().product::<usize>() as u64;
        // The first `accumulate` sets the state, so the buffers need no initialisation.
        Ok(F32Accumulator {
            shape,
            count: 0,
            k: ctx.storage("zscore_f32.k", n * 4)?,
            s1: ctx.storage("zscore_f32.s1", n * 8)?,
            s2: ctx.storage("zscore_f32.s2", n * 8)?,
        })
    }

    fn total(&self) -> usize {
        self.shape.iter().product()
    }

    /// Record adding the volume in `src`.
    pub fn record_add(
        &mut self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        src: &wgpu::Buffer,
    ) -> Result<()> {
        let k = ctx.pipeline(&shaders::ZSCORE_F32_ACCUMULATE)?;
        self.count = self
            .count
            .checked_add(1)
            .ok_or_else(|| Error::Gpu("z-score: more than 2^32 volumes".into()))?;
        let total = self.total();
        let u = ZscoreF32Uniform::new(total, self.count, 0, false);
        rec.dispatch(&k, &u, &[src, &self.k, &self.s1, &self.s2], total as u64);
        Ok(())
    }

    /// Record the double-float mean and std into `mean_out`, `std_out` (8 bytes a voxel each).
    pub fn record_finalize(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        p: &ZscoreParams,
        mean_out: &wgpu::Buffer,
        std_out: &wgpu::Buffer,
    ) -> Result<()> {
        if self.count == 0 {
            return Err(Error::Data("z-score moments of no volume".into()));
        }
        if self.count > 1 << 24 {
            // The count is converted to f32 exactly only up to 2^24.
            return Err(Error::Gpu(format!(
                "the float32 z-score takes at most 2^24 volumes, got {} (use {ZSCORE_ENV}=cpu)",
                self.count
            )));
        }
        let k = ctx.pipeline(&shaders::ZSCORE_F32_FINALIZE)?;
        let total = self.total();
        let u = ZscoreF32Uniform::new(total, self.count, p.ddof, false);
        rec.dispatch(
            &k,
            &u,
            &[&self.k, &self.s1, &self.s2, mean_out, std_out],
            total as u64,
        );
        Ok(())
    }
}

/// Record `(src - mean) / std` into `dst` (`mean`, `std`: double-float buffers).
#[allow(clippy::too_many_arguments)]
pub fn record_normalize(
    ctx: &GpuContext,
    rec: &mut Recorder<'_>,
    total: usize,
    p: &ZscoreParams,
    src: &wgpu::Buffer,
    mean: &wgpu::Buffer,
    std: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) -> Result<()> {
    let k = ctx.pipeline(&shaders::ZSCORE_F32_NORMALIZE)?;
    let u = ZscoreF32Uniform::new(total, 0, p.ddof, p.constant == ConstantVoxels::Zero);
    rec.dispatch(&k, &u, &[src, mean, std, dst], total as u64);
    Ok(())
}

/// The double-float nearest `v` (to about 2^-48 relative), as the shader reads moments.
pub fn df_from_f64(v: f64) -> [f32; 2] {
    let hi = v as f32;
    [hi, (v - hi as f64) as f32]
}

/// A double-float's value in f64 (exact).
pub fn df_to_f64(a: [f32; 2]) -> f64 {
    a[0] as f64 + a[1] as f64
}
