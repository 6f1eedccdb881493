// 3-D median filter: scipy.ndimage.median_filter(vol, size=(sz, sy, sx), mode=mode, cval=cval).
// CPU twin: src/cpu/median3d.rs. Tolerance: none, the output is bit-identical to the CPU (the median
// is a selection: the element of rank size/2 of the window). Values are ordered as Rust's
// `f32::total_cmp` orders them (the CPU twin's order): -0.0 before +0.0, NaN above +Inf.
//
// One invocation per output voxel (`nz` counts output planes): the window (boundary-extended with
// `extend_index`) is gathered into a private array as total-order keys (`order_key`), then Wirth's selection finds the element
// of rank `rank`.
// The default 3x3x3 window has its own entry point, `median3d_27`: a branch-free forgetful selection
// (min/max exchanges only, so neighbouring invocations never diverge and the keys can live in
// registers) instead of Wirth's data-dependent partitioning.
// `MAX_WINDOW` is replaced at load time (src/gpu/median3d.rs) by the smallest size class that holds
// the window; the text below must stay exactly `const MAX_WINDOW: u32 = 343u;`.
const MAX_WINDOW: u32 = 343u;

// Keep in sync with `MedianUniform` in src/gpu/median3d.rs.
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

// Median of a 3x3x3 window by forgetful selection: hold the first 15 keys (half the window plus
// two); each step moves the minimum of the held keys to the front and the maximum to the back,
// forgets both (neither can be the median: each has at least 14 keys on its other side), and
// takes the next window key into the back slot. After the 27th key, the 3 held keys' middle one
// is the median. Same result as `median3d` with size (3, 3, 3), and as the CPU twin.
@compute @workgroup_size(64)
fn median3d_27(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= p.total) {
        return;
    }
    let c = voxel(idx);
    var iz: array<i32, 3>;
    var iy: array<i32, 3>;
    var ix: array<i32, 3>;
    for (var d = 0; d < 3; d++) {
        iz[d] = source_z(c.x, d - 1);
        iy[d] = extend_index(c.y + d - 1, i32(p.ny), p.mode);
        ix[d] = extend_index(c.z + d - 1, i32(p.nx), p.mode);
    }
    var win: array<u32, 27>;
    for (var d = 0u; d < 27u; d++) {
        let a = iz[d / 9u];
        let b = iy[(d / 3u) % 3u];
        let c = ix[d % 3u];
        var v = p.cval;
        if (a >= 0 && b >= 0 && c >= 0) {
            v = src[(u32(a) * p.ny + u32(b)) * p.nx + u32(c)];
        }
        win[d] = order_key(v);
    }
    var h: array<u32, 15>;
    for (var i = 0u; i < 15u; i++) {
        h[i] = win[i];
    }
    // The exchanges are written out: naga 30's SPIR-V writer fails on pointers to array elements
    // passed to a helper function.
    for (var s = 0u; s < 13u; s++) {
        var lo = min(h[s], h[14]);
        var hi = max(h[s], h[14]);
        for (var i = s + 1u; i < 14u; i++) {
            let v = h[i];
            let l = min(lo, v);
            let m = max(lo, v);
            h[i] = min(m, hi);
            hi = max(m, hi);
            lo = l;
        }
        h[s] = lo;
        h[14] = hi;
        if (s < 12u) {
            h[14] = win[15u + s];
        }
    }
    dst[idx] = from_key(h[13]);
}
