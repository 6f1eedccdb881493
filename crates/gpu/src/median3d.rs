//! Host side of `shaders/median3d.wgsl` (CPU twin: `crates/cpu/src/median3d.rs`), resident or tiled in
//! z-slabs for volumes over the tile limit.

use super::device::{GpuContext, Recorder};
use super::shaders::{MEDIAN3D, MEDIAN3D_27, MEDIAN3D_9};
use bytemuck::{Pod, Zeroable};
use gpuprep_core::boundary::filter_index;
use gpuprep_core::error::{Error, Result};
use gpuprep_core::params::MedianParams;
use ndarray::{s, Array3, ArrayView3};

/// Uniforms of `median3d.wgsl`: the layout of its `struct Params` (checked by `tests/shaders.rs`,
/// `uniform_structs_match_wgsl`).
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
    pub z_prepadded: u32,
    pub _pad1: u32,
}
const _: () = assert!(std::mem::size_of::<MedianUniform>() == 48);

/// Window size classes, the values of the shader's `MAX_WINDOW`: its private array is sized to the
/// smallest class that holds the window. Larger windows are refused with an error naming the limit.
pub const WINDOW_CLASSES: [u32; 5] = [27, 125, 343, 729, 1331];
pub const MAX_WINDOW: usize = 1331;

/// The (x, y) output tile of one workgroup of `median3d_27`: `TX` and `TY` of the shader (checked by
/// `tests/shaders.rs`), 64 invocations as every kernel's workgroup.
pub const TILE_27: [usize; 2] = [16, 4];

/// Record the median filter of the `shape` volume in `src` into `dst`.
pub fn record(
    ctx: &GpuContext,
    rec: &mut Recorder<'_>,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    shape: [usize; 3],
    p: &MedianParams,
) -> Result<()> {
    record_slab(ctx, rec, src, dst, shape, p, false)
}

/// As `record`; with `z_prepadded`, `src` holds `shape[0] + 2 (size_z / 2)` planes, the output's
/// planes with their z halo already boundary-extended by the host.
fn record_slab(
    ctx: &GpuContext,
    rec: &mut Recorder<'_>,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    shape: [usize; 3],
    p: &MedianParams,
    z_prepadded: bool,
) -> Result<()> {
    let window: usize = p.size.iter().product();
    let class = WINDOW_CLASSES
        .iter()
        .copied()
        .find(|&c| c as usize >= window)
        .ok_or_else(|| Error::InvalidParameter {
            name: "median size".into(),
            message: format!(
            "the GPU median filter holds at most {MAX_WINDOW} window elements (e.g. 11x11x11); \
             {:?} has {window}: use --backend cpu",
            p.size
        ),
        })?;
    for (i, &s) in p.size.iter().enumerate() {
        if s % 2 == 0 {
            return Err(Error::InvalidParameter {
                name: "median size".into(),
                message: format!("size along axis {i} is {s}; the median filter needs odd sizes"),
            });
        }
    }
    // The 3x3x3 window (the default) and the 1x3x3 have straight-line entry points; see the shader.
    let decl = match p.size {
        [3, 3, 3] => &MEDIAN3D_27,
        [1, 3, 3] => &MEDIAN3D_9,
        _ => &MEDIAN3D,
    };
    let k = ctx.pipeline_variant(decl, &[("MAX_WINDOW", class)])?;
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
        z_prepadded: z_prepadded as u32,
        _pad1: 0,
    };
    // `median3d_27` runs one workgroup per tile of TILE output voxels of a plane (see the shader).
    let invocations = if p.size == [3, 3, 3] {
        let [tx, ty] = TILE_27;
        shape[0] * shape[1].div_ceil(ty) * shape[2].div_ceil(tx) * tx * ty
    } else {
        total
    };
    rec.dispatch(&k, &u, &[src, dst], invocations as u64);
    Ok(())
}

/// The median filter of a volume over the tile limit, in z-slabs: the host builds each slab with
/// `size_z / 2` halo planes on both sides, taken through the boundary mode in global z (the CPU's
/// `filter_index`, so wrap, mirror, reflect, nearest and constant behave as on the whole volume);
/// the shader extends only x and y. Bit-identical to the resident route. Returns the slab count.
pub fn run_tiled(
    ctx: &GpuContext,
    vol: ArrayView3<f32>,
    p: &MedianParams,
) -> Result<(Array3<f32>, usize)> {
    let (nz, ny, nx) = vol.dim();
    let h = p.size[0] / 2;
    let plane = ny * nx;
    let max_planes = (ctx.max_tile_bytes() / (plane as u64 * 4)) as usize;
    if max_planes < 2 * h + 1 {
        return Err(Error::Gpu(format!(
            "median filter: one z-plane of {ny}x{nx} with its {h}-plane halos on each side needs {} \
             bytes, over the GPU tile limit of {} bytes (tiles split z only): use --backend cpu",
            (2 * h + 1) * plane * 4,
            ctx.max_tile_bytes()
        )));
    }
    let step = max_planes - 2 * h;
    let src = ctx.tile_buffer(
        "median.slab_in",
        (max_planes.min(nz + 2 * h) * plane * 4) as u64,
    )?;
    let dst = ctx.tile_buffer("median.slab_out", (step.min(nz) * plane * 4) as u64)?;
    let mut out = Array3::<f32>::zeros((nz, ny, nx));
    let mut slab = Vec::with_capacity(max_planes.min(nz + 2 * h) * plane);
    let mut tiles = 0;
    for z0 in (0..nz).step_by(step) {
        let z1 = (z0 + step).min(nz);
        slab.clear();
        for z in z0 as isize - h as isize..(z1 + h) as isize {
            match filter_index(z, nz, p.mode) {
                Some(iz) => slab.extend(vol.slice(s![iz, .., ..]).iter()),
                None => slab.extend(std::iter::repeat_n(p.cval, plane)),
            }
        }
        ctx.upload(&src, &slab);
        let mut rec = ctx.recorder();
        record_slab(ctx, &mut rec, &src, &dst, [z1 - z0, ny, nx], p, true)?;
        rec.submit()?;
        let v = ctx.read::<f32>(&dst, (z1 - z0) * plane)?;
        let v = ArrayView3::from_shape((z1 - z0, ny, nx), &v)
            .map_err(|e| Error::Gpu(format!("median slab shape: {e}")))?;
        out.slice_mut(s![z0..z1, .., ..]).assign(&v);
        tiles += 1;
    }
    ctx.count_tiles(tiles, |s| &mut s.median);
    Ok((out, tiles))
}
