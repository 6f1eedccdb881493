//! Host side of `shaders/median3d.wgsl` (CPU twin: `crates/cpu/src/median3d.rs`), resident or tiled in
//! z-slabs for volumes over the tile limit.

use super::device::{GpuContext, Recorder};
use super::shaders::{MEDIAN3D, MEDIAN3D_27, MEDIAN3D_9, MEDIAN3D_SMALL};
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
    // The 3x3x3 window (the default) and the 1x3x3 have straight-line entry points, other windows
    // of at most 27 elements a selection network specialised per window; see the shader.
    let k = match p.size {
        [3, 3, 3] => ctx.pipeline_variant(&MEDIAN3D_27, &[("MAX_WINDOW", class)])?,
        [1, 3, 3] => ctx.pipeline_variant(&MEDIAN3D_9, &[("MAX_WINDOW", class)])?,
        _ if window <= 27 => {
            ctx.pipeline_variant(&MEDIAN3D_SMALL, &[("SMALL", small_code(p.size))])?
        }
        _ => ctx.pipeline_variant(&MEDIAN3D, &[("MAX_WINDOW", class)])?,
    };
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

/// The windows `median3d_small` is specialised for (`SMALL` = sz | sy << 8 | sx << 16): odd sides,
/// at most 27 elements. Every other window of at most 27 elements but 3x3x3 and 1x3x3 (which have
/// entry points of their own) takes it; larger ones take the generic `median3d`.
pub const SMALL_WINDOWS: [u32; SMALL_COUNT] = small_windows();

const SMALL_COUNT: usize = small_windows_into(&mut []);

/// `SMALL`'s code for a window of `size`.
pub fn small_code(size: [usize; 3]) -> u32 {
    (size[0] | size[1] << 8 | size[2] << 16) as u32
}

const fn small_windows() -> [u32; SMALL_COUNT] {
    let mut out = [0u32; SMALL_COUNT];
    small_windows_into(&mut out);
    out
}

/// Counts the windows of `SMALL_WINDOWS`, writing the codes of as many as `out` holds.
const fn small_windows_into(out: &mut [u32]) -> usize {
    let mut n = 0;
    let mut z = 1;
    while z <= 27 {
        let mut y = 1;
        while y <= 27 {
            let mut x = 1;
            while x <= 27 {
                if z * y * x <= 27 {
                    if n < out.len() {
                        out[n] = (z | y << 8 | x << 16) as u32;
                    }
                    n += 1;
                }
                x += 2;
            }
            y += 2;
        }
        z += 2;
    }
    n
}

/// A compare-exchange of a selection network: after it, key `lo` holds the smaller of keys `lo`
/// and `hi` and key `hi` the larger, each only where later steps read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub lo: usize,
    pub hi: usize,
    pub keep_min: bool,
    pub keep_max: bool,
}

/// Batcher's merge-exchange sorting network for `n` keys (Knuth, TAOCP 5.2.2, Algorithm M), with
/// every step that cannot reach position `m` removed (walking back from `m`, a step is kept when a
/// kept later step or `m` itself reads one of its outputs, and then both its inputs are read): the
/// network that leaves the key of rank `m` at position `m`.
pub fn selection_network(n: usize, m: usize) -> Vec<Exchange> {
    let mut steps = Vec::new();
    let t = usize::BITS - (n.max(2) - 1).leading_zeros();
    let mut p = 1usize << (t - 1);
    while p > 0 {
        let (mut q, mut r, mut d) = (1usize << (t - 1), 0usize, p);
        loop {
            for i in 0..n.saturating_sub(d) {
                if i & p == r {
                    steps.push((i, i + d));
                }
            }
            if q == p {
                break;
            }
            d = q - p;
            q /= 2;
            r = p;
        }
        p /= 2;
    }
    let mut needed = vec![false; n];
    needed[m] = true;
    let mut kept = Vec::new();
    for &(lo, hi) in steps.iter().rev() {
        let (keep_min, keep_max) = (needed[lo], needed[hi]);
        if keep_min || keep_max {
            kept.push(Exchange {
                lo,
                hi,
                keep_min,
                keep_max,
            });
            needed[lo] = true;
            needed[hi] = true;
        }
    }
    kept.reverse();
    kept
}

/// The WGSL of `select27` in `shaders/median3d.wgsl`: the key of rank 13 of 27 keys through
/// `selection_network(27, 13)`, straight-line on named scalars (tests check the shader holds this
/// text).
pub fn select27_wgsl() -> String {
    let mut s = String::from(
        "// The key of rank 13 of the 27 keys in `w`: Batcher's merge-exchange network pruned to \
         position 13,\n// generated by `select27_wgsl` in crates/gpu/src/median3d.rs (do not edit by \
         hand).\nfn select27(w: array<u32, 27>) -> u32 {\n",
    );
    for i in 0..27 {
        s.push_str(&format!("    var k{i} = w[{i}];\n"));
    }
    for e in selection_network(27, 13) {
        let (a, b) = (e.lo, e.hi);
        match (e.keep_min, e.keep_max) {
            (true, true) => s.push_str(&format!(
                "    {{ let t = min(k{a}, k{b}); k{b} = max(k{a}, k{b}); k{a} = t; }}\n"
            )),
            (true, false) => s.push_str(&format!("    k{a} = min(k{a}, k{b});\n")),
            (false, true) => s.push_str(&format!("    k{b} = max(k{a}, k{b});\n")),
            (false, false) => unreachable!("pruned steps are dropped"),
        }
    }
    s.push_str("    return k13;\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// The network's rank-`m` key against a sort, on random keys with many ties and on random
    /// 0-1 inputs (the 0-1 principle holds for selection networks too), for 27 keys and for a few
    /// other sizes and ranks.
    #[test]
    fn the_pruned_network_selects_the_rank() {
        let mut rng = StdRng::seed_from_u64(11);
        for (n, m) in [
            (27, 13),
            (27, 0),
            (27, 26),
            (9, 4),
            (8, 4),
            (2, 1),
            (1, 0),
            (25, 12),
        ] {
            let net = selection_network(n, m);
            for case in 0..20_000 {
                let keys: Vec<u32> = (0..n)
                    .map(|_| match case % 2 {
                        0 => rng.random_range(0..2),
                        _ => rng.random_range(0..9),
                    })
                    .collect();
                let mut k = keys.clone();
                for e in &net {
                    let (a, b) = (k[e.lo], k[e.hi]);
                    k[e.lo] = a.min(b);
                    k[e.hi] = a.max(b);
                }
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                assert_eq!(k[m], sorted[m], "n {n} rank {m}: {keys:?}");
            }
        }
        // The median of 27 keeps 127 compare-exchanges (some only a min or a max) of the sort's
        // more; the extremes need far fewer.
        assert_eq!(selection_network(27, 13).len(), 127);
        assert!(selection_network(27, 0).len() < 40);
    }

    #[test]
    fn the_shader_holds_the_generated_network() {
        let shader = include_str!("../../../shaders/median3d.wgsl");
        assert!(
            shader.contains(&select27_wgsl()),
            "shaders/median3d.wgsl's select27 differs from select27_wgsl(); paste:\n{}",
            select27_wgsl()
        );
    }

    #[test]
    fn small_windows_are_every_odd_window_of_at_most_27() {
        assert!(SMALL_WINDOWS.contains(&small_code([1, 1, 27])));
        assert!(SMALL_WINDOWS.contains(&small_code([3, 3, 3])));
        assert!(SMALL_WINDOWS.contains(&small_code([1, 5, 5])));
        assert!(!SMALL_WINDOWS.contains(&small_code([3, 3, 5])));
        assert!(!SMALL_WINDOWS.contains(&small_code([1, 2, 3])));
        assert!(SMALL_WINDOWS.iter().all(|&c| {
            let s = [c & 255, (c >> 8) & 255, c >> 16];
            s.iter().all(|v| v % 2 == 1) && s.iter().product::<u32>() <= 27
        }));
    }
}
