//! Host side of `shaders/median3d.wgsl` (CPU twin: `src/cpu/median3d.rs`).

use super::device::{Bind, GpuContext, Recorder};
use crate::error::{Error, Result};
use crate::params::MedianParams;
use bytemuck::{Pod, Zeroable};

/// Uniforms of `median3d.wgsl`; keep in sync with `struct Params` in shaders/median3d.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct MedianUniform {
    pub nz: u32,
    pub ny: u32,
    pub nx: u32,
    pub mode: u32,
    pub sz: u32,
    pub sy: u32,
    pub sx: u32,
    pub cval: f32,
    pub total: u32,
    pub rank: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}
const _: () = assert!(std::mem::size_of::<MedianUniform>() == 48);

/// Window size classes: the private array of the shader is sized to the smallest class that holds
/// the window. Larger windows are refused with an error naming the limit.
pub const WINDOW_CLASSES: [usize; 5] = [27, 125, 343, 729, 1331];
pub const MAX_WINDOW: usize = 1331;

/// Record the median filter of the `shape` volume in `src` into `dst`.
pub fn record(
    ctx: &GpuContext,
    rec: &mut Recorder<'_>,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    shape: [usize; 3],
    p: &MedianParams,
) -> Result<()> {
    let window: usize = p.size.iter().product();
    let class = WINDOW_CLASSES
        .iter()
        .copied()
        .find(|&c| c >= window)
        .ok_or_else(|| Error::InvalidParameter {
            flag: "--median-size".into(),
            message: format!(
            "the GPU median filter holds at most {MAX_WINDOW} window elements (e.g. 11x11x11); \
             {:?} has {window}: use --backend cpu",
            p.size
        ),
        })?;
    for (i, &s) in p.size.iter().enumerate() {
        if s % 2 == 0 {
            return Err(Error::InvalidParameter {
                flag: "--median-size".into(),
                message: format!("size along axis {i} is {s}; the median filter needs odd sizes"),
            });
        }
    }
    // The 3x3x3 window (the default) has a branch-free entry point; see the shader.
    let entry = if p.size == [3, 3, 3] {
        "median3d_27"
    } else {
        "median3d"
    };
    let k = ctx.kernel(
        "median3d",
        entry,
        &[(
            "const MAX_WINDOW: u32 = 343u;",
            format!("const MAX_WINDOW: u32 = {class}u;"),
        )],
        &[Bind::Uniform, Bind::Read, Bind::ReadWrite],
    )?;
    let total = shape.iter().product::<usize>();
    let u = MedianUniform {
        nz: shape[0] as u32,
        ny: shape[1] as u32,
        nx: shape[2] as u32,
        mode: p.mode.code(),
        sz: p.size[0] as u32,
        sy: p.size[1] as u32,
        sx: p.size[2] as u32,
        cval: p.cval,
        total: total as u32,
        rank: (window / 2) as u32,
        _pad0: 0,
        _pad1: 0,
    };
    rec.dispatch(&k, &u, &[src, dst], total as u64);
    Ok(())
}
