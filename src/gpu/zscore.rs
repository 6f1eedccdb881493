//! Host side of `shaders/zscore.wgsl` (CPU twin: `src/cpu/zscore.rs`).

use super::device::{Bind, GpuContext, Recorder};
use crate::error::Result;
use crate::params::{ConstantVoxels, ZscoreParams};
use bytemuck::{Pod, Zeroable};

/// Uniforms of `zscore.wgsl`; keep in sync with `struct Params` in shaders/zscore.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ZscoreUniform {
    pub total: u32,
    pub count: u32,
    pub ddof: u32,
    pub constant_zero: u32,
}
const _: () = assert!(std::mem::size_of::<ZscoreUniform>() == 16);

/// Per-voxel Welford state on the device: f64 mean and sum of squared deviations.
pub struct GpuAccumulator {
    pub shape: [usize; 3],
    pub count: u32,
    pub mean: wgpu::Buffer,
    pub m2: wgpu::Buffer,
}

impl GpuAccumulator {
    pub fn new(ctx: &GpuContext, shape: [usize; 3]) -> Result<Self> {
        let n = shape.iter().product::<usize>() as u64;
        // Fresh buffers are zero-initialised by wgpu.
        Ok(GpuAccumulator {
            shape,
            count: 0,
            mean: ctx.storage("zscore.mean_f64", n * 8)?,
            m2: ctx.storage("zscore.m2_f64", n * 8)?,
        })
    }

    /// Record adding the volume in `src`.
    pub fn record_add(
        &mut self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        src: &wgpu::Buffer,
    ) -> Result<()> {
        let k = ctx.kernel(
            "zscore",
            "accumulate",
            &[],
            &[Bind::Uniform, Bind::Read, Bind::ReadWrite, Bind::ReadWrite],
        )?;
        self.count += 1;
        let total = self.shape.iter().product::<usize>();
        let u = ZscoreUniform {
            total: total as u32,
            count: self.count,
            ddof: 0,
            constant_zero: 0,
        };
        rec.dispatch(&k, &u, &[src, &self.mean, &self.m2], total as u64);
        Ok(())
    }

    /// Record mean and std (f32) into `mean_out`, `std_out`.
    pub fn record_finalize(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        p: &ZscoreParams,
        mean_out: &wgpu::Buffer,
        std_out: &wgpu::Buffer,
    ) -> Result<()> {
        let k = ctx.kernel(
            "zscore",
            "finalize",
            &[],
            &[
                Bind::Uniform,
                Bind::Read,
                Bind::Read,
                Bind::ReadWrite,
                Bind::ReadWrite,
            ],
        )?;
        let total = self.shape.iter().product::<usize>();
        let u = ZscoreUniform {
            total: total as u32,
            count: self.count,
            ddof: p.ddof,
            constant_zero: 0,
        };
        rec.dispatch(
            &k,
            &u,
            &[&self.mean, &self.m2, mean_out, std_out],
            total as u64,
        );
        Ok(())
    }
}

/// Record `(src - mean) / std` into `dst`.
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
    let k = ctx.kernel(
        "zscore",
        "normalize",
        &[],
        &[
            Bind::Uniform,
            Bind::Read,
            Bind::Read,
            Bind::Read,
            Bind::ReadWrite,
        ],
    )?;
    let u = ZscoreUniform {
        total: total as u32,
        count: 0,
        ddof: p.ddof,
        constant_zero: (p.constant == ConstantVoxels::Zero) as u32,
    };
    rec.dispatch(&k, &u, &[src, mean, std, dst], total as u64);
    Ok(())
}
