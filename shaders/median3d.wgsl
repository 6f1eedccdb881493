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
// CPU twin does, instead of Wirth's partitioning per window; the 1x3x3 window (a 3x3 window in each
// plane) too, `median3d_9`; every other window of at most 27 elements, `median3d_small`, a pruned
// selection network specialised per window (both at the end of this file).
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
//      triples (`sort_column`), once for the three outputs that read it;
//   3. each output merges the sorted columns at x and x + 1 (Batcher) and takes rank 13 of that and
//      the column at x - 1 as a min of maxes, exact for two sorted lists (`median_of_columns`).
// About 70 compare-exchanges and 5 reads of the volume per output, against some 200 and 27 for a
// selection over each window alone. Same result, bit for bit, as `median3d` with size (3, 3, 3) and
// as the CPU twin (a selection: the 14th smallest key, whatever the network).
// Straight-line code: keys live in named scalars, never in a private array (which shader compilers
// zero-fill, bounds-clamp and may spill), and each invocation's share of steps 1 and 2 is at most two
// calls, not a loop (tests/shaders.rs checks both in naga's IR).
const TX: u32 = 16u;
const TY: u32 = 4u;
const HX: u32 = 18u; // TX + 2
const HY: u32 = 6u;  // TY + 2
const_assert TX * TY == 64u;
const_assert HX * HY <= 128u && HX * TY <= 128u;
// Sorted z triples of the tile's (HY, HX) columns (low, middle, high), then the sorted 3x3 columns
// of its TY rows at each padded x (9 keys, ascending).
var<workgroup> tri: array<u32, 324>;
var<workgroup> col: array<u32, 648>;

// Compare-exchange: the smaller key to `a`, the larger to `b`.
fn cx(a: ptr<function, u32>, b: ptr<function, u32>) {
    let x = *a;
    let y = *b;
    *a = min(x, y);
    *b = max(x, y);
}

// Step 1 for the tile's padded column `c` (row c / HX, x c % HX): its z triple, sorted, into `tri`.
fn load_triple(c: u32, z0: i32, z1: i32, z2: i32, x0: i32, y0: i32) {
    let iy = extend_index(y0 + i32(c / HX) - 1, i32(p.ny), p.mode);
    let ix = extend_index(x0 + i32(c % HX) - 1, i32(p.nx), p.mode);
    var a = key3(z0, iy, ix);
    var b = key3(z1, iy, ix);
    var d = key3(z2, iy, ix);
    cx(&a, &b); cx(&b, &d); cx(&a, &b);
    tri[c * 3u] = a;
    tri[c * 3u + 1u] = b;
    tri[c * 3u + 2u] = d;
}

// Step 2 for output row c / HX at padded x c % HX: the triples of padded rows r, r + 1, r + 2
// (`tri` entries c, c + HX, c + 2 HX), sorted into `col`. The network is the CPU twin's
// `SORT9_SORTED_TRIPLES`, which sorts 9 keys whose triples 0..3, 3..6, 6..9 are sorted.
fn sort_column(c: u32) {
    let t0 = c * 3u;
    let t1 = t0 + 3u * HX;
    let t2 = t1 + 3u * HX;
    var s0 = tri[t0]; var s1 = tri[t0 + 1u]; var s2 = tri[t0 + 2u];
    var s3 = tri[t1]; var s4 = tri[t1 + 1u]; var s5 = tri[t1 + 2u];
    var s6 = tri[t2]; var s7 = tri[t2 + 1u]; var s8 = tri[t2 + 2u];
    cx(&s2, &s5); cx(&s0, &s3); cx(&s1, &s4); cx(&s5, &s8); cx(&s3, &s6); cx(&s4, &s7);
    cx(&s2, &s5); cx(&s0, &s3); cx(&s1, &s4); cx(&s5, &s7); cx(&s2, &s6); cx(&s1, &s3);
    cx(&s4, &s6); cx(&s2, &s4); cx(&s5, &s6); cx(&s2, &s3);
    let o = c * 9u;
    col[o] = s0; col[o + 1u] = s1; col[o + 2u] = s2;
    col[o + 3u] = s3; col[o + 4u] = s4; col[o + 5u] = s5;
    col[o + 6u] = s6; col[o + 7u] = s7; col[o + 8u] = s8;
}

// Step 3: rank 13 of the 27 keys in the sorted columns at `left` (x - 1), `left` + 9 (x) and
// `left` + 18 (x + 1). The last two are merged by the CPU twin's `MERGE9` (Batcher's odd-even merge
// of sorted m0..m8 and m9..m17; rank k ends on wire MERGE9_RANK[k] =
// [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 9, 17][k]); rank 13 is then the smallest,
// over ways of taking 14 keys from the fronts of the merged 18 and the left 9, of the largest taken
// (ranks 4..=13 of the merged, through MERGE9_RANK).
fn median_of_columns(left: u32) -> u32 {
    var m0 = col[left + 9u]; var m1 = col[left + 10u]; var m2 = col[left + 11u];
    var m3 = col[left + 12u]; var m4 = col[left + 13u]; var m5 = col[left + 14u];
    var m6 = col[left + 15u]; var m7 = col[left + 16u]; var m8 = col[left + 17u];
    var m9 = col[left + 18u]; var m10 = col[left + 19u]; var m11 = col[left + 20u];
    var m12 = col[left + 21u]; var m13 = col[left + 22u]; var m14 = col[left + 23u];
    var m15 = col[left + 24u]; var m16 = col[left + 25u]; var m17 = col[left + 26u];
    cx(&m0, &m9); cx(&m8, &m17); cx(&m8, &m9); cx(&m4, &m13); cx(&m4, &m8); cx(&m13, &m9);
    cx(&m2, &m11); cx(&m6, &m15); cx(&m6, &m11); cx(&m2, &m4); cx(&m6, &m8); cx(&m11, &m13);
    cx(&m15, &m9); cx(&m1, &m10); cx(&m5, &m14); cx(&m5, &m10); cx(&m3, &m12); cx(&m7, &m16);
    cx(&m7, &m12); cx(&m3, &m5); cx(&m7, &m10); cx(&m12, &m14); cx(&m1, &m2); cx(&m3, &m4);
    cx(&m5, &m6); cx(&m7, &m8); cx(&m10, &m11); cx(&m12, &m13); cx(&m14, &m15); cx(&m16, &m9);
    var r = m14;
    r = min(r, max(m4, col[left + 8u]));
    r = min(r, max(m5, col[left + 7u]));
    r = min(r, max(m6, col[left + 6u]));
    r = min(r, max(m7, col[left + 5u]));
    r = min(r, max(m8, col[left + 4u]));
    r = min(r, max(m10, col[left + 3u]));
    r = min(r, max(m11, col[left + 2u]));
    r = min(r, max(m12, col[left + 1u]));
    r = min(r, max(m13, col[left]));
    return r;
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
    if (l < HX * HY) {
        load_triple(l, z0, z1, z2, x0, y0);
    }
    if (l + 64u < HX * HY) {
        load_triple(l + 64u, z0, z1, z2, x0, y0);
    }
    workgroupBarrier();
    if (l < HX * TY) {
        sort_column(l);
    }
    if (l + 64u < HX * TY) {
        sort_column(l + 64u);
    }
    workgroupBarrier();
    let ox = x0 + i32(l % TX);
    let oy = y0 + i32(l / TX);
    if (ox >= i32(p.nx) || oy >= i32(p.ny)) {
        return;
    }
    // Columns at padded x = h (left), h + 1 (the output's own), h + 2 (right).
    let left = ((l / TX) * HX + l % TX) * 9u;
    dst[(u32(z) * p.ny + u32(oy)) * p.nx + u32(ox)] = from_key(median_of_columns(left));
}

// The 1x3x3 median (a 3x3 window in each plane), the CPU twin's `median9`: the three columns of the
// window (each three y at one x) sorted, then med3(largest low, median middle, smallest high), exact
// for three sorted columns (the twin checks the rule on every 0-1 input). One invocation per output
// voxel, 9 reads and 21 min/max, straight-line code in named scalars (tests/shaders.rs checks naga's IR
// as for `median3d_27`). Bit-identical to `median3d` with size (1, 3, 3) and to the CPU twin.
fn med3(a: u32, b: u32, c: u32) -> u32 {
    return max(min(a, b), min(max(a, b), c));
}

@compute @workgroup_size(64)
fn median3d_9(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= p.total) {
        return;
    }
    let c = voxel(idx);
    let iz = source_z(c.x, 0);
    let y0 = extend_index(c.y - 1, i32(p.ny), p.mode);
    let y1 = extend_index(c.y, i32(p.ny), p.mode);
    let y2 = extend_index(c.y + 1, i32(p.ny), p.mode);
    let x0 = extend_index(c.z - 1, i32(p.nx), p.mode);
    let x1 = extend_index(c.z, i32(p.nx), p.mode);
    let x2 = extend_index(c.z + 1, i32(p.nx), p.mode);
    // Column k (x = xk) as (ak, bk, dk) along y, sorted by three compare-exchanges.
    var a0 = key3(iz, y0, x0); var b0 = key3(iz, y1, x0); var d0 = key3(iz, y2, x0);
    var a1 = key3(iz, y0, x1); var b1 = key3(iz, y1, x1); var d1 = key3(iz, y2, x1);
    var a2 = key3(iz, y0, x2); var b2 = key3(iz, y1, x2); var d2 = key3(iz, y2, x2);
    cx(&a0, &b0); cx(&b0, &d0); cx(&a0, &b0);
    cx(&a1, &b1); cx(&b1, &d1); cx(&a1, &b1);
    cx(&a2, &b2); cx(&b2, &d2); cx(&a2, &b2);
    let lo = max(max(a0, a1), a2);
    let mid = med3(b0, b1, b2);
    let hi = min(min(d0, d1), d2);
    dst[idx] = from_key(med3(lo, mid, hi));
}

// The window of `median3d_small`, set at load time to one of `SMALL_WINDOWS` (crates/gpu/src/median3d.rs,
// through `KernelDecl::source`): sz | sy << 8 | sx << 16, odd sides, at most 27 elements.
const SMALL: u32 = 65795u;
const SMALL_Z: u32 = SMALL & 255u;
const SMALL_Y: u32 = (SMALL >> 8u) & 255u;
const SMALL_X: u32 = SMALL >> 16u;

// Every other window of at most 27 elements (1x1x3, 3x3x1, 1x5x5, 1x1x27, ...): the window's n keys
// in an array of 27 filled by loops of constant bounds (which shader compilers unroll, so that every
// index is a constant and the array stays in registers), after 13 - n / 2 keys no key is below (0)
// and before the rest, above every key (0xffffffff), so that rank 13 of the 27 is rank n / 2 of the
// window whatever ties there are; then `select27`, straight-line code on named scalars, instead of
// Wirth's selection in a private array that `median3d` runs.
@compute @workgroup_size(64)
fn median3d_small(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= p.total) {
        return;
    }
    let c = voxel(idx);
    let below = 13u - SMALL_Z * SMALL_Y * SMALL_X / 2u;
    var w: array<u32, 27>;
    for (var i = 0u; i < 27u; i++) {
        w[i] = select(0xffffffffu, 0u, i < below);
    }
    for (var dz = 0u; dz < SMALL_Z; dz++) {
        let iz = source_z(c.x, i32(dz) - i32(SMALL_Z / 2u));
        for (var dy = 0u; dy < SMALL_Y; dy++) {
            let iy = extend_index(c.y + i32(dy) - i32(SMALL_Y / 2u), i32(p.ny), p.mode);
            for (var dx = 0u; dx < SMALL_X; dx++) {
                let ix = extend_index(c.z + i32(dx) - i32(SMALL_X / 2u), i32(p.nx), p.mode);
                w[below + (dz * SMALL_Y + dy) * SMALL_X + dx] = key3(iz, iy, ix);
            }
        }
    }
    dst[idx] = from_key(select27(w));
}

// The key of rank 13 of the 27 keys in `w`: Batcher's merge-exchange network pruned to position 13,
// generated by `select27_wgsl` in crates/gpu/src/median3d.rs (do not edit by hand).
fn select27(w: array<u32, 27>) -> u32 {
    var k0 = w[0];
    var k1 = w[1];
    var k2 = w[2];
    var k3 = w[3];
    var k4 = w[4];
    var k5 = w[5];
    var k6 = w[6];
    var k7 = w[7];
    var k8 = w[8];
    var k9 = w[9];
    var k10 = w[10];
    var k11 = w[11];
    var k12 = w[12];
    var k13 = w[13];
    var k14 = w[14];
    var k15 = w[15];
    var k16 = w[16];
    var k17 = w[17];
    var k18 = w[18];
    var k19 = w[19];
    var k20 = w[20];
    var k21 = w[21];
    var k22 = w[22];
    var k23 = w[23];
    var k24 = w[24];
    var k25 = w[25];
    var k26 = w[26];
    { let t = min(k0, k16); k16 = max(k0, k16); k0 = t; }
    { let t = min(k1, k17); k17 = max(k1, k17); k1 = t; }
    { let t = min(k2, k18); k18 = max(k2, k18); k2 = t; }
    { let t = min(k3, k19); k19 = max(k3, k19); k3 = t; }
    { let t = min(k4, k20); k20 = max(k4, k20); k4 = t; }
    { let t = min(k5, k21); k21 = max(k5, k21); k5 = t; }
    { let t = min(k6, k22); k22 = max(k6, k22); k6 = t; }
    { let t = min(k7, k23); k23 = max(k7, k23); k7 = t; }
    { let t = min(k8, k24); k24 = max(k8, k24); k8 = t; }
    { let t = min(k9, k25); k25 = max(k9, k25); k9 = t; }
    { let t = min(k10, k26); k26 = max(k10, k26); k10 = t; }
    { let t = min(k0, k8); k8 = max(k0, k8); k0 = t; }
    { let t = min(k1, k9); k9 = max(k1, k9); k1 = t; }
    { let t = min(k2, k10); k10 = max(k2, k10); k2 = t; }
    { let t = min(k3, k11); k11 = max(k3, k11); k3 = t; }
    { let t = min(k4, k12); k12 = max(k4, k12); k4 = t; }
    { let t = min(k5, k13); k13 = max(k5, k13); k5 = t; }
    { let t = min(k6, k14); k14 = max(k6, k14); k6 = t; }
    { let t = min(k7, k15); k15 = max(k7, k15); k7 = t; }
    { let t = min(k16, k24); k24 = max(k16, k24); k16 = t; }
    { let t = min(k17, k25); k25 = max(k17, k25); k17 = t; }
    { let t = min(k18, k26); k26 = max(k18, k26); k18 = t; }
    { let t = min(k8, k16); k16 = max(k8, k16); k8 = t; }
    { let t = min(k9, k17); k17 = max(k9, k17); k9 = t; }
    { let t = min(k10, k18); k18 = max(k10, k18); k10 = t; }
    { let t = min(k11, k19); k19 = max(k11, k19); k11 = t; }
    { let t = min(k12, k20); k20 = max(k12, k20); k12 = t; }
    { let t = min(k13, k21); k21 = max(k13, k21); k13 = t; }
    { let t = min(k14, k22); k22 = max(k14, k22); k14 = t; }
    { let t = min(k15, k23); k23 = max(k15, k23); k15 = t; }
    { let t = min(k0, k4); k4 = max(k0, k4); k0 = t; }
    { let t = min(k1, k5); k5 = max(k1, k5); k1 = t; }
    { let t = min(k2, k6); k6 = max(k2, k6); k2 = t; }
    { let t = min(k3, k7); k7 = max(k3, k7); k3 = t; }
    { let t = min(k8, k12); k12 = max(k8, k12); k8 = t; }
    { let t = min(k9, k13); k13 = max(k9, k13); k9 = t; }
    { let t = min(k10, k14); k14 = max(k10, k14); k10 = t; }
    { let t = min(k11, k15); k15 = max(k11, k15); k11 = t; }
    { let t = min(k16, k20); k20 = max(k16, k20); k16 = t; }
    { let t = min(k17, k21); k21 = max(k17, k21); k17 = t; }
    { let t = min(k18, k22); k22 = max(k18, k22); k18 = t; }
    { let t = min(k19, k23); k23 = max(k19, k23); k19 = t; }
    { let t = min(k4, k16); k16 = max(k4, k16); k4 = t; }
    { let t = min(k5, k17); k17 = max(k5, k17); k5 = t; }
    { let t = min(k6, k18); k18 = max(k6, k18); k6 = t; }
    { let t = min(k7, k19); k19 = max(k7, k19); k7 = t; }
    { let t = min(k12, k24); k24 = max(k12, k24); k12 = t; }
    { let t = min(k13, k25); k25 = max(k13, k25); k13 = t; }
    { let t = min(k14, k26); k26 = max(k14, k26); k14 = t; }
    { let t = min(k4, k8); k8 = max(k4, k8); k4 = t; }
    { let t = min(k5, k9); k9 = max(k5, k9); k5 = t; }
    { let t = min(k6, k10); k10 = max(k6, k10); k6 = t; }
    { let t = min(k7, k11); k11 = max(k7, k11); k7 = t; }
    { let t = min(k12, k16); k16 = max(k12, k16); k12 = t; }
    { let t = min(k13, k17); k17 = max(k13, k17); k13 = t; }
    { let t = min(k14, k18); k18 = max(k14, k18); k14 = t; }
    { let t = min(k15, k19); k19 = max(k15, k19); k15 = t; }
    { let t = min(k20, k24); k24 = max(k20, k24); k20 = t; }
    { let t = min(k21, k25); k25 = max(k21, k25); k21 = t; }
    { let t = min(k22, k26); k26 = max(k22, k26); k22 = t; }
    { let t = min(k0, k2); k2 = max(k0, k2); k0 = t; }
    { let t = min(k1, k3); k3 = max(k1, k3); k1 = t; }
    { let t = min(k4, k6); k6 = max(k4, k6); k4 = t; }
    { let t = min(k5, k7); k7 = max(k5, k7); k5 = t; }
    { let t = min(k8, k10); k10 = max(k8, k10); k8 = t; }
    { let t = min(k9, k11); k11 = max(k9, k11); k9 = t; }
    { let t = min(k12, k14); k14 = max(k12, k14); k12 = t; }
    { let t = min(k13, k15); k15 = max(k13, k15); k13 = t; }
    { let t = min(k16, k18); k18 = max(k16, k18); k16 = t; }
    { let t = min(k17, k19); k19 = max(k17, k19); k17 = t; }
    { let t = min(k20, k22); k22 = max(k20, k22); k20 = t; }
    { let t = min(k21, k23); k23 = max(k21, k23); k21 = t; }
    { let t = min(k24, k26); k26 = max(k24, k26); k24 = t; }
    { let t = min(k2, k16); k16 = max(k2, k16); k2 = t; }
    { let t = min(k3, k17); k17 = max(k3, k17); k3 = t; }
    { let t = min(k6, k20); k20 = max(k6, k20); k6 = t; }
    { let t = min(k7, k21); k21 = max(k7, k21); k7 = t; }
    { let t = min(k10, k24); k24 = max(k10, k24); k10 = t; }
    { let t = min(k11, k25); k25 = max(k11, k25); k11 = t; }
    { let t = min(k2, k8); k8 = max(k2, k8); k2 = t; }
    { let t = min(k3, k9); k9 = max(k3, k9); k3 = t; }
    { let t = min(k6, k12); k12 = max(k6, k12); k6 = t; }
    { let t = min(k7, k13); k13 = max(k7, k13); k7 = t; }
    { let t = min(k10, k16); k16 = max(k10, k16); k10 = t; }
    { let t = min(k11, k17); k17 = max(k11, k17); k11 = t; }
    { let t = min(k14, k20); k20 = max(k14, k20); k14 = t; }
    { let t = min(k15, k21); k21 = max(k15, k21); k15 = t; }
    { let t = min(k18, k24); k24 = max(k18, k24); k18 = t; }
    { let t = min(k19, k25); k25 = max(k19, k25); k19 = t; }
    { let t = min(k2, k4); k4 = max(k2, k4); k2 = t; }
    { let t = min(k3, k5); k5 = max(k3, k5); k3 = t; }
    { let t = min(k6, k8); k8 = max(k6, k8); k6 = t; }
    { let t = min(k7, k9); k9 = max(k7, k9); k7 = t; }
    { let t = min(k10, k12); k12 = max(k10, k12); k10 = t; }
    { let t = min(k11, k13); k13 = max(k11, k13); k11 = t; }
    { let t = min(k14, k16); k16 = max(k14, k16); k14 = t; }
    { let t = min(k15, k17); k17 = max(k15, k17); k15 = t; }
    { let t = min(k18, k20); k20 = max(k18, k20); k18 = t; }
    { let t = min(k19, k21); k21 = max(k19, k21); k19 = t; }
    { let t = min(k22, k24); k24 = max(k22, k24); k22 = t; }
    { let t = min(k23, k25); k25 = max(k23, k25); k23 = t; }
    k1 = max(k0, k1);
    k3 = max(k2, k3);
    k5 = max(k4, k5);
    k7 = max(k6, k7);
    k9 = max(k8, k9);
    k11 = max(k10, k11);
    k13 = max(k12, k13);
    k14 = min(k14, k15);
    k16 = min(k16, k17);
    k18 = min(k18, k19);
    k20 = min(k20, k21);
    k22 = min(k22, k23);
    k24 = min(k24, k25);
    k16 = max(k1, k16);
    k18 = max(k3, k18);
    k20 = max(k5, k20);
    k7 = min(k7, k22);
    k9 = min(k9, k24);
    k11 = min(k11, k26);
    k14 = max(k7, k14);
    k16 = max(k9, k16);
    k11 = min(k11, k18);
    k13 = min(k13, k20);
    k14 = max(k11, k14);
    k13 = min(k13, k16);
    k13 = min(k13, k14);
    return k13;
}
