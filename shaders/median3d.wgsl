// 3-D median filter: scipy.ndimage.median_filter(vol, size=(sz, sy, sx), mode=mode, cval=cval).
// CPU twin: crates/cpu/src/median3d.rs. Tolerance: none, the output is bit-identical to the CPU (the median
// is a selection: the element of rank size/2 of the window). Values are ordered as Rust's
// `f32::total_cmp` orders them (the CPU twin's order): -0.0 before +0.0, NaN above +Inf.
//
// One invocation per output voxel (`nz` counts output planes): the window (boundary-extended with
// `extend_index`) is gathered into a private array as total-order keys (`order_key`), then Wirth's selection finds the element
// of rank `rank`.
// The default 3x3x3 window has its own entry point, `median3d_27`: a branch-free forgetful selection
// (min/max exchanges only, written out on scalars, so neighbouring invocations never diverge and the
// keys live in registers) instead of Wirth's data-dependent partitioning.
// `MAX_WINDOW` is set at load time to the smallest size class that holds the window
// (crates/gpu/src/median3d.rs, through `KernelDecl::source`, which needs the declaration below: one
// `const` of type u32 with a literal). A constant, not an `override`, as it sizes a private array.
const MAX_WINDOW: u32 = 343u;

// The layout of `MedianUniform` in crates/gpu/src/median3d.rs
// (checked by tests/shaders.rs, `uniform_structs_match_wgsl`).
struct Params {
    nz: u32,
    ny: u32,
    nx: u32,
    mode: u32,
    sz: u32,
    sy: u32,
    sx: u32,
    cval: f32,
    total: u32,
    rank: u32,
    // 1: `src` is a z-slab already extended by sz/2 planes on each side (tiled route, the host
    // applied the boundary mode in global z): z is read at z + dz + sz/2, never extended here.
    z_prepadded: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Unsigned key with the order of `f32::total_cmp`: flip all bits of negatives, the sign bit of positives.
fn order_key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn from_key(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// Source plane of output plane `z` displaced by `dz` (see `z_prepadded`).
fn source_z(z: i32, dz: i32) -> i32 {
    if (p.z_prepadded != 0u) {
        return z + dz + i32(p.sz / 2u);
    }
    return extend_index(z + dz, i32(p.nz), p.mode);
}

// (z, y, x) of voxel `idx` in C order.
fn voxel(idx: u32) -> vec3<i32> {
    return vec3<i32>(i32(idx / (p.nx * p.ny)), i32((idx / p.nx) % p.ny), i32(idx % p.nx));
}

@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(64)
fn median3d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= p.total) {
        return;
    }
    let c = voxel(idx);
    let z = c.x;
    let y = c.y;
    let x = c.z;
    let hz = i32(p.sz / 2u);
    let hy = i32(p.sy / 2u);
    let hx = i32(p.sx / 2u);
    var w: array<u32, MAX_WINDOW>;
    var n = 0u;
    for (var dz = -hz; dz <= hz; dz++) {
        let iz = source_z(z, dz);
        for (var dy = -hy; dy <= hy; dy++) {
            let iy = extend_index(y + dy, i32(p.ny), p.mode);
            for (var dx = -hx; dx <= hx; dx++) {
                let ix = extend_index(x + dx, i32(p.nx), p.mode);
                var v = p.cval;
                if (iz >= 0 && iy >= 0 && ix >= 0) {
                    v = src[(u32(iz) * p.ny + u32(iy)) * p.nx + u32(ix)];
                }
                w[n] = order_key(v);
                n++;
            }
        }
    }
    // Wirth's selection of the element of rank k.
    let k = i32(p.rank);
    var l = 0;
    var m = i32(n) - 1;
    while (l < m) {
        let pivot = w[k];
        var i = l;
        var j = m;
        loop {
            while (w[i] < pivot) { i++; }
            while (pivot < w[j]) { j--; }
            if (i <= j) {
                let t = w[i];
                w[i] = w[j];
                w[j] = t;
                i++;
                j--;
            }
            if (i > j) { break; }
        }
        if (j < k) { l = i; }
        if (k < i) { m = j; }
    }
    dst[idx] = from_key(w[k]);
}

// Key of the window element at source indices (iz, iy, ix), the boundary mode already applied
// (a negative index: outside the volume in constant mode, cval).
fn key3(iz: i32, iy: i32, ix: i32) -> u32 {
    var v = p.cval;
    if (iz >= 0 && iy >= 0 && ix >= 0) {
        v = src[(u32(iz) * p.ny + u32(iy)) * p.nx + u32(ix)];
    }
    return order_key(v);
}

// Median of a 3x3x3 window by forgetful selection: hold the first 15 keys (half the window plus
// two); each step moves the minimum of the held keys to the front and the maximum to the back,
// forgets both (neither can be the median: each has at least 14 keys on its other side), and
// takes the next window key into the back slot. After the 27th key, the 3 held keys' middle one
// is the median. Same result as `median3d` with size (3, 3, 3), and as the CPU twin.
// The network is written out as straight-line code on scalars h0..h14 (generated, see the markers):
// no array is indexed, so the keys stay in registers instead of spilling to local memory.
@compute @workgroup_size(64)
fn median3d_27(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= p.total) {
        return;
    }
    let c = voxel(idx);
    let z0 = source_z(c.x, -1);
    let z1 = source_z(c.x, 0);
    let z2 = source_z(c.x, 1);
    let y0 = extend_index(c.y - 1, i32(p.ny), p.mode);
    let y1 = extend_index(c.y, i32(p.ny), p.mode);
    let y2 = extend_index(c.y + 1, i32(p.ny), p.mode);
    let x0 = extend_index(c.z - 1, i32(p.nx), p.mode);
    let x1 = extend_index(c.z, i32(p.nx), p.mode);
    let x2 = extend_index(c.z + 1, i32(p.nx), p.mode);
    // BEGIN median27_network (generated by `median27_network` in tests/shaders.rs; GPUPREP_REGEN=1 rewrites it)
    var h0 = key3(z0, y0, x0);
    var h1 = key3(z0, y0, x1);
    var h2 = key3(z0, y0, x2);
    var h3 = key3(z0, y1, x0);
    var h4 = key3(z0, y1, x1);
    var h5 = key3(z0, y1, x2);
    var h6 = key3(z0, y2, x0);
    var h7 = key3(z0, y2, x1);
    var h8 = key3(z0, y2, x2);
    var h9 = key3(z1, y0, x0);
    var h10 = key3(z1, y0, x1);
    var h11 = key3(z1, y0, x2);
    var h12 = key3(z1, y1, x0);
    var h13 = key3(z1, y1, x1);
    var h14 = key3(z1, y1, x2);
    var lo: u32;
    var hi: u32;
    var m: u32;
    lo = min(h0, h14);
    hi = max(h0, h14);
    m = max(lo, h1);
    lo = min(lo, h1);
    h1 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h2);
    lo = min(lo, h2);
    h2 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h3);
    lo = min(lo, h3);
    h3 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h4);
    lo = min(lo, h4);
    h4 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h5);
    lo = min(lo, h5);
    h5 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h6);
    lo = min(lo, h6);
    h6 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h7);
    lo = min(lo, h7);
    h7 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h8);
    lo = min(lo, h8);
    h8 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h9);
    lo = min(lo, h9);
    h9 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z1, y2, x0);
    lo = min(h1, h14);
    hi = max(h1, h14);
    m = max(lo, h2);
    lo = min(lo, h2);
    h2 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h3);
    lo = min(lo, h3);
    h3 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h4);
    lo = min(lo, h4);
    h4 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h5);
    lo = min(lo, h5);
    h5 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h6);
    lo = min(lo, h6);
    h6 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h7);
    lo = min(lo, h7);
    h7 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h8);
    lo = min(lo, h8);
    h8 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h9);
    lo = min(lo, h9);
    h9 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z1, y2, x1);
    lo = min(h2, h14);
    hi = max(h2, h14);
    m = max(lo, h3);
    lo = min(lo, h3);
    h3 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h4);
    lo = min(lo, h4);
    h4 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h5);
    lo = min(lo, h5);
    h5 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h6);
    lo = min(lo, h6);
    h6 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h7);
    lo = min(lo, h7);
    h7 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h8);
    lo = min(lo, h8);
    h8 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h9);
    lo = min(lo, h9);
    h9 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z1, y2, x2);
    lo = min(h3, h14);
    hi = max(h3, h14);
    m = max(lo, h4);
    lo = min(lo, h4);
    h4 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h5);
    lo = min(lo, h5);
    h5 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h6);
    lo = min(lo, h6);
    h6 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h7);
    lo = min(lo, h7);
    h7 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h8);
    lo = min(lo, h8);
    h8 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h9);
    lo = min(lo, h9);
    h9 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z2, y0, x0);
    lo = min(h4, h14);
    hi = max(h4, h14);
    m = max(lo, h5);
    lo = min(lo, h5);
    h5 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h6);
    lo = min(lo, h6);
    h6 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h7);
    lo = min(lo, h7);
    h7 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h8);
    lo = min(lo, h8);
    h8 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h9);
    lo = min(lo, h9);
    h9 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z2, y0, x1);
    lo = min(h5, h14);
    hi = max(h5, h14);
    m = max(lo, h6);
    lo = min(lo, h6);
    h6 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h7);
    lo = min(lo, h7);
    h7 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h8);
    lo = min(lo, h8);
    h8 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h9);
    lo = min(lo, h9);
    h9 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z2, y0, x2);
    lo = min(h6, h14);
    hi = max(h6, h14);
    m = max(lo, h7);
    lo = min(lo, h7);
    h7 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h8);
    lo = min(lo, h8);
    h8 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h9);
    lo = min(lo, h9);
    h9 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z2, y1, x0);
    lo = min(h7, h14);
    hi = max(h7, h14);
    m = max(lo, h8);
    lo = min(lo, h8);
    h8 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h9);
    lo = min(lo, h9);
    h9 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z2, y1, x1);
    lo = min(h8, h14);
    hi = max(h8, h14);
    m = max(lo, h9);
    lo = min(lo, h9);
    h9 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z2, y1, x2);
    lo = min(h9, h14);
    hi = max(h9, h14);
    m = max(lo, h10);
    lo = min(lo, h10);
    h10 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z2, y2, x0);
    lo = min(h10, h14);
    hi = max(h10, h14);
    m = max(lo, h11);
    lo = min(lo, h11);
    h11 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z2, y2, x1);
    lo = min(h11, h14);
    hi = max(h11, h14);
    m = max(lo, h12);
    lo = min(lo, h12);
    h12 = min(m, hi);
    hi = max(m, hi);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    h14 = key3(z2, y2, x2);
    lo = min(h12, h14);
    hi = max(h12, h14);
    m = max(lo, h13);
    lo = min(lo, h13);
    h13 = min(m, hi);
    hi = max(m, hi);
    // END median27_network
    dst[idx] = from_key(h13);
}
