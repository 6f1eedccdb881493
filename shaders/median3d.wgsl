// 3-D median filter: scipy.ndimage.median_filter(vol, size=(sz, sy, sx), mode=mode, cval=cval).
// CPU twin: crates/cpu/src/median3d.rs. Tolerance: none, the output is bit-identical to the CPU (the median
// is a selection: the element of rank size/2 of the window). Values are ordered as Rust's
// `f32::total_cmp` orders them (the CPU twin's order): -0.0 before +0.0, NaN above +Inf.
//
// One invocation per output voxel (`nz` counts output planes): the window (boundary-extended with
// `extend_index`) is gathered into a private array as total-order keys (`order_key`), then Wirth's selection finds the element
// of rank `rank`.
// The default 3x3x3 window has its own entry point, `median3d_27`: workgroup tiles sharing sorted
// columns between neighbouring windows, min/max exchanges only (no data-dependent branch), as the
// CPU twin does, instead of Wirth's partitioning per window.
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

// The 3x3x3 median, the CPU twin's algorithm (`median27` in crates/cpu/src/median3d.rs) on a
// workgroup's tile of TX x TY output voxels of one plane, sharing work between neighbouring windows:
//   1. each (y, x) column of the tile and its one-voxel halo is read once, its three z samples
//      (boundary mode applied here, once per column, not per window element) sorted as keys;
//   2. each padded x of each output row gets its sorted 3x3 (z, y) column from three of those
//      triples (`sort9_sorted_triples`), once for the three outputs that read it;
//   3. each output merges the sorted columns at x and x + 1 (`merge9`, Batcher) and takes rank 13 of
//      that and the column at x - 1 as a min of maxes, exact for two sorted lists.
// About 70 compare-exchanges and 5 reads of the volume per output, against some 200 and 27 for a
// selection over each window alone. Same result, bit for bit, as `median3d` with size (3, 3, 3) and
// as the CPU twin (a selection: the 14th smallest key, whatever the network).
const TX: u32 = 16u;
const TY: u32 = 4u;
const HX: u32 = 18u; // TX + 2
const HY: u32 = 6u;  // TY + 2
// Sorted z triples of the tile's (HY, HX) columns (low, middle, high), then the sorted 3x3 columns
// of its TY rows at each padded x (9 keys, ascending).
var<workgroup> tri: array<u32, 324>;
var<workgroup> col: array<u32, 648>;

fn cx9(v: ptr<function, array<u32, 9>>, i: u32, j: u32) {
    let a = (*v)[i];
    let b = (*v)[j];
    (*v)[i] = min(a, b);
    (*v)[j] = max(a, b);
}

fn cx18(v: ptr<function, array<u32, 18>>, i: u32, j: u32) {
    let a = (*v)[i];
    let b = (*v)[j];
    (*v)[i] = min(a, b);
    (*v)[j] = max(a, b);
}

// Sorts 9 whose triples 0..3, 3..6, 6..9 are sorted: the CPU twin's `SORT9_SORTED_TRIPLES`.
fn sort9_sorted_triples(v: ptr<function, array<u32, 9>>) {
    cx9(v, 2u, 5u); cx9(v, 0u, 3u); cx9(v, 1u, 4u); cx9(v, 5u, 8u); cx9(v, 3u, 6u); cx9(v, 4u, 7u);
    cx9(v, 2u, 5u); cx9(v, 0u, 3u); cx9(v, 1u, 4u); cx9(v, 5u, 7u); cx9(v, 2u, 6u); cx9(v, 1u, 3u);
    cx9(v, 4u, 6u); cx9(v, 2u, 4u); cx9(v, 5u, 6u); cx9(v, 2u, 3u);
}

// Batcher's odd-even merge of sorted 0..9 and 9..18: the CPU twin's `MERGE9`. Rank k ends on wire
// MERGE9_RANK[k] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 9, 17][k].
fn merge9(v: ptr<function, array<u32, 18>>) {
    cx18(v, 0u, 9u); cx18(v, 8u, 17u); cx18(v, 8u, 9u); cx18(v, 4u, 13u); cx18(v, 4u, 8u); cx18(v, 13u, 9u);
    cx18(v, 2u, 11u); cx18(v, 6u, 15u); cx18(v, 6u, 11u); cx18(v, 2u, 4u); cx18(v, 6u, 8u); cx18(v, 11u, 13u);
    cx18(v, 15u, 9u); cx18(v, 1u, 10u); cx18(v, 5u, 14u); cx18(v, 5u, 10u); cx18(v, 3u, 12u); cx18(v, 7u, 16u);
    cx18(v, 7u, 12u); cx18(v, 3u, 5u); cx18(v, 7u, 10u); cx18(v, 12u, 14u); cx18(v, 1u, 2u); cx18(v, 3u, 4u);
    cx18(v, 5u, 6u); cx18(v, 7u, 8u); cx18(v, 10u, 11u); cx18(v, 12u, 13u); cx18(v, 14u, 15u); cx18(v, 16u, 9u);
}

@compute @workgroup_size(64)
fn median3d_27(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let tiles_x = (p.nx + TX - 1u) / TX;
    let tiles_y = (p.ny + TY - 1u) / TY;
    let tile = wid.x + wid.y * nwg.x;
    // Whole workgroups only (the barriers below need every invocation of one).
    if (tile >= tiles_x * tiles_y * p.nz) {
        return;
    }
    let z = i32(tile / (tiles_x * tiles_y));
    let x0 = i32((tile % tiles_x) * TX);
    let y0 = i32(((tile / tiles_x) % tiles_y) * TY);
    let l = lid.x;
    let z0 = source_z(z, -1);
    let z1 = source_z(z, 0);
    let z2 = source_z(z, 1);
    for (var c = l; c < HX * HY; c += 64u) {
        let iy = extend_index(y0 + i32(c / HX) - 1, i32(p.ny), p.mode);
        let ix = extend_index(x0 + i32(c % HX) - 1, i32(p.nx), p.mode);
        let a = key3(z0, iy, ix);
        let b = key3(z1, iy, ix);
        let d = key3(z2, iy, ix);
        let lo = min(a, b);
        let hi = max(a, b);
        let top = max(hi, d);
        let mid = min(hi, d);
        tri[c * 3u] = min(lo, mid);
        tri[c * 3u + 1u] = max(lo, mid);
        tri[c * 3u + 2u] = top;
    }
    workgroupBarrier();
    for (var c = l; c < HX * TY; c += 64u) {
        let r = c / HX;
        let h = c % HX;
        var v: array<u32, 9>;
        for (var k = 0u; k < 9u; k++) {
            v[k] = tri[((r + k / 3u) * HX + h) * 3u + k % 3u];
        }
        sort9_sorted_triples(&v);
        for (var k = 0u; k < 9u; k++) {
            col[c * 9u + k] = v[k];
        }
    }
    workgroupBarrier();
    let ox = x0 + i32(l % TX);
    let oy = y0 + i32(l / TX);
    if (ox >= i32(p.nx) || oy >= i32(p.ny)) {
        return;
    }
    // Columns at padded x = h (left), h + 1 (the output's own), h + 2 (right).
    let left = ((l / TX) * HX + l % TX) * 9u;
    var m: array<u32, 18>;
    for (var k = 0u; k < 9u; k++) {
        m[k] = col[left + 9u + k];
        m[9u + k] = col[left + 18u + k];
    }
    merge9(&m);
    // Rank 13 of the 27: the smallest, over ways of taking 14 keys from the fronts of the merged
    // 18 and the left 9, of the largest taken (ranks 4..=13 of the merged, through MERGE9_RANK).
    var r = m[14];
    r = min(r, max(m[4], col[left + 8u]));
    r = min(r, max(m[5], col[left + 7u]));
    r = min(r, max(m[6], col[left + 6u]));
    r = min(r, max(m[7], col[left + 5u]));
    r = min(r, max(m[8], col[left + 4u]));
    r = min(r, max(m[10], col[left + 3u]));
    r = min(r, max(m[11], col[left + 2u]));
    r = min(r, max(m[12], col[left + 1u]));
    r = min(r, max(m[13], col[left]));
    dst[(u32(z) * p.ny + u32(oy)) * p.nx + u32(ox)] = from_key(r);
}
