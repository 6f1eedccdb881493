//! Host side of `shaders/zscore.wgsl` (CPU twin: `src/cpu/zscore.rs`).

use super::device::{GpuContext, Recorder};
use crate::shaders;
use bytemuck::{Pod, Zeroable};
use gpuprep_core::error::Result;
use gpuprep_core::params::{ConstantVoxels, ZscoreParams};

/// Uniforms of `zscore.wgsl` (`struct Params`); `tests/shaders.rs` (`uniform_structs_match_wgsl`) checks the layout.
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
        let k = ctx.pipeline(&shaders::ZSCORE_ACCUMULATE)?;
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

    /// Record the f64 mean and std into `mean_out`, `std_out` (8 bytes a voxel each).
    pub fn record_finalize(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder<'_>,
        p: &ZscoreParams,
        mean_out: &wgpu::Buffer,
        std_out: &wgpu::Buffer,
    ) -> Result<()> {
        let k = ctx.pipeline(&shaders::ZSCORE_FINALIZE)?;
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

/// Record `(src - mean) / std` into `dst` (`mean`, `std`: f64 buffers).
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
    let k = ctx.pipeline(&shaders::ZSCORE_NORMALIZE)?;
    let u = ZscoreUniform {
        total: total as u32,
        count: 0,
        ddof: p.ddof,
        constant_zero: (p.constant == ConstantVoxels::Zero) as u32,
    };
    rec.dispatch(&k, &u, &[src, mean, std, dst], total as u64);
    Ok(())
}

/// Welford state of a volume over the tile limit, kept on the host (f64 mean and M2, 16 bytes a
/// voxel of host memory) and updated by the same `accumulate` kernel one element range at a time, so
/// the device holds only a few tile buffers whatever the volume's size. Every pass moves the state
/// up and back down: slower than the resident accumulator, but bounded.
pub struct TiledAccumulator {
    pub shape: [usize; 3],
    pub count: u32,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

/// Element ranges of a volume of `total` voxels for buffers of `bytes_per_elem` under the tile limit.
fn chunks(ctx: &GpuContext, total: usize, bytes_per_elem: u64) -> Vec<std::ops::Range<usize>> {
    let step = ((ctx.max_tile_bytes() / bytes_per_elem) as usize).max(1);
    (0..total)
        .step_by(step)
        .map(|a| a..(a + step).min(total))
        .collect()
}

impl TiledAccumulator {
    pub fn new(shape: [usize; 3]) -> Self {
        let n = shape.iter().product();
        TiledAccumulator {
            shape,
            count: 0,
            mean: vec![0.0; n],
            m2: vec![0.0; n],
        }
    }

    /// Add the volume `vol` (C order); returns the number of chunks.
    pub fn add(&mut self, ctx: &GpuContext, vol: &[f32]) -> Result<usize> {
        let k = ctx.pipeline(&shaders::ZSCORE_ACCUMULATE)?;
        self.count += 1;
        let ranges = chunks(ctx, vol.len(), 8);
        let len = ranges[0].len() as u64;
        let src = ctx.tile_buffer("zscore.tile_src", len * 4)?;
        let mean = ctx.tile_buffer("zscore.tile_mean", len * 8)?;
        let m2 = ctx.tile_buffer("zscore.tile_m2", len * 8)?;
        for r in &ranges {
            ctx.upload(&src, &vol[r.clone()]);
            ctx.upload(&mean, &self.mean[r.clone()]);
            ctx.upload(&m2, &self.m2[r.clone()]);
            let u = ZscoreUniform {
                total: r.len() as u32,
                count: self.count,
                ddof: 0,
                constant_zero: 0,
            };
            let mut rec = ctx.recorder();
            rec.dispatch(&k, &u, &[&src, &mean, &m2], r.len() as u64);
            rec.submit()?;
            self.mean[r.clone()].copy_from_slice(&ctx.read::<f64>(&mean, r.len())?);
            self.m2[r.clone()].copy_from_slice(&ctx.read::<f64>(&m2, r.len())?);
        }
        ctx.count_tiles(ranges.len(), |s| &mut s.zscore);
        Ok(ranges.len())
    }

    /// Mean and std (f64, C order) by the `finalize` kernel, chunk by chunk.
    pub fn finalize(&self, ctx: &GpuContext, p: &ZscoreParams) -> Result<(Vec<f64>, Vec<f64>)> {
        let k = ctx.pipeline(&shaders::ZSCORE_FINALIZE)?;
        let ranges = chunks(ctx, self.mean.len(), 8);
        let len = ranges[0].len() as u64;
        let mean = ctx.tile_buffer("zscore.tile_mean", len * 8)?;
        let m2 = ctx.tile_buffer("zscore.tile_m2", len * 8)?;
        let mean_out = ctx.tile_buffer("zscore.tile_out0", len * 8)?;
        let std_out = ctx.tile_buffer("zscore.tile_out1", len * 8)?;
        let (mut mean_all, mut std_all) = (Vec::new(), Vec::new());
        for r in &ranges {
            ctx.upload(&mean, &self.mean[r.clone()]);
            ctx.upload(&m2, &self.m2[r.clone()]);
            let u = ZscoreUniform {
                total: r.len() as u32,
                count: self.count,
                ddof: p.ddof,
                constant_zero: 0,
            };
            let mut rec = ctx.recorder();
            rec.dispatch(&k, &u, &[&mean, &m2, &mean_out, &std_out], r.len() as u64);
            rec.submit()?;
            mean_all.extend(ctx.read::<f64>(&mean_out, r.len())?);
            std_all.extend(ctx.read::<f64>(&std_out, r.len())?);
        }
        ctx.count_tiles(ranges.len(), |s| &mut s.zscore);
        Ok((mean_all, std_all))
    }
}

/// `record_normalize` over element ranges of a volume over the tile limit (all inputs on the host,
/// C order; the moments f64); returns the z-scores.
pub fn normalize_tiled(
    ctx: &GpuContext,
    p: &ZscoreParams,
    vol: &[f32],
    mean: &[f64],
    std: &[f64],
) -> Result<Vec<f32>> {
    let ranges = chunks(ctx, vol.len(), 8);
    let len = ranges[0].len() as u64;
    let bufs = [
        ctx.tile_buffer("zscore.tile_src", len * 4)?,
        ctx.tile_buffer("zscore.tile_mean", len * 8)?,
        ctx.tile_buffer("zscore.tile_m2", len * 8)?,
        ctx.tile_buffer("zscore.tile_z", len * 4)?,
    ];
    let mut out = Vec::with_capacity(vol.len());
    for r in &ranges {
        ctx.upload(&bufs[0], &vol[r.clone()]);
        ctx.upload(&bufs[1], &mean[r.clone()]);
        ctx.upload(&bufs[2], &std[r.clone()]);
        let mut rec = ctx.recorder();
        record_normalize(
            ctx,
            &mut rec,
            r.len(),
            p,
            &bufs[0],
            &bufs[1],
            &bufs[2],
            &bufs[3],
        )?;
        rec.submit()?;
        out.extend(ctx.read::<f32>(&bufs[3], r.len())?);
    }
    ctx.count_tiles(ranges.len(), |s| &mut s.zscore);
    Ok(out)
}
