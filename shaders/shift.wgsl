// Translation by spline interpolation: scipy.ndimage.shift(vol, s, order, mode, cval), prefilter on.
// CPU twin: crates/cpu/src/shift.rs. A translation samples every line along an axis at the same offsets, so
// the 3-D tensor-product interpolation is three 1-D passes (axis 0, 1, 2), each:
//   `prefilter` (order 3 only): one invocation per line copies the line (edge-padded by `pad` samples
//     for `nearest`, as scipy's `_prepad_for_spline_filter`) into `scratch` and runs the cubic B-spline
//     IIR filter of ni_splines.c in place, with its mirror or reflect initialisation;
//   `gather`: one invocation per output voxel sums up to 4 taps. The taps (source index along the line
//     and weight per output index) are computed on the host by `gpuprep_core::spline::AxisPlan`, which mirrors
//     the set-up loop of NI_ZoomShift (map_coordinate, spline boundary mode, weights) in f64.
// The last pass writes `cval` where any axis is outside the input (constant mode).
// Tolerance: the CPU runs in f64 and rounds once; here the filter and sums are f32:
// |gpu - cpu| <= 1e-5 * (1 + max|input|) for order 3 (2e-6 for orders 0, 1).

// The layout of `ShiftUniform` in crates/gpu/src/shift.rs
// (checked by tests/shaders.rs, `uniform_structs_match_wgsl`).
struct Params {
    n: u32,            // length of the axis
    stride: u32,       // element stride of the axis in the volume
    lines: u32,        // number of lines along the axis
    len: u32,          // padded line length in `scratch` (n + 2 pad)
    pad: u32,
    reflect_init: u32, // 1: reflect initialisation (reflect, nearest); 0: mirror
    order: u32,
    from_scratch: u32, // gather reads prefiltered lines from scratch (order 3)
    total: u32,        // voxels in the volume
    tap_offset: u32,   // first tap of this axis in `taps`
    final_pass: u32,   // apply the constant-mode mask of all three axes
    use_mask: u32,
    nz: u32,
    ny: u32,
    nx: u32,
    cval: f32,
    z_len: f32,        // pole^len
    z_len1: f32,       // pole^(len - 1)
    _pad0: u32,
    _pad1: u32,
}

// Cubic B-spline pole sqrt(3) - 2 and the filter gain (1 - z)(1 - 1/z).
const POLE: f32 = -0.26794919243112270;
const GAIN: f32 = 6.0;

// The layout of `Tap` in crates/gpu/src/shift.rs
// (checked by tests/shaders.rs, `uniform_structs_match_wgsl`).
struct Tap {
    idx: vec4<u32>,
    w: vec4<f32>,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> pf_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>;

@compute @workgroup_size(64)
fn prefilter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = linear_index(wid, nwg, lid);
    if (b >= p.lines) {
        return;
    }
    let base = line_base(b, p.n, p.stride);
    let o = b * p.len;
    let n = p.len;
    let gain = select(1.0, GAIN, n > 1u);
    for (var i = 0u; i < n; i++) {
        let j = u32(clamp(i32(i) - i32(p.pad), 0, i32(p.n) - 1));
        scratch[o + i] = pf_src[base + j * p.stride] * gain;
    }
    if (n <= 1u) {
        return;
    }
    let z = POLE;
    // Causal initialisation.
    if (p.reflect_init != 0u) {
        let z_n = p.z_len;
        let c0 = scratch[o];
        var acc = c0 + z_n * scratch[o + n - 1u];
        var z_i = z;
        for (var i = 1u; i < n; i++) {
            // As ni_splines.c updates c[0] in place, the last term (i = n - 1) reads the running
            // c[0], not the input's.
            let other = select(scratch[o + n - 1u - i], acc, i == n - 1u);
            acc += z_i * (scratch[o + i] + z_n * other);
            z_i *= z;
        }
        scratch[o] = acc * (z / (1.0 - z_n * z_n)) + c0;
    } else {
        let z_n_1 = p.z_len1;
        var acc = scratch[o] + z_n_1 * scratch[o + n - 1u];
        var z_i = z;
        for (var i = 1u; i + 1u < n; i++) {
            acc += z_i * (scratch[o + i] + z_n_1 * scratch[o + n - 1u - i]);
            z_i *= z;
        }
        scratch[o] = acc / (1.0 - z_n_1 * z_n_1);
    }
    var prev = scratch[o];
    for (var i = 1u; i < n; i++) {
        prev = scratch[o + i] + z * prev;
        scratch[o + i] = prev;
    }
    // Anticausal initialisation.
    if (p.reflect_init != 0u) {
        prev = scratch[o + n - 1u] * (z / (z - 1.0));
    } else {
        prev = (z * scratch[o + n - 2u] + scratch[o + n - 1u]) * z / (z * z - 1.0);
    }
    scratch[o + n - 1u] = prev;
    for (var i = i32(n) - 2; i >= 0; i--) {
        prev = z * (prev - scratch[o + u32(i)]);
        scratch[o + u32(i)] = prev;
    }
}

@group(0) @binding(1) var<storage, read> g_src: array<f32>;
@group(0) @binding(2) var<storage, read> taps: array<Tap>;
@group(0) @binding(3) var<storage, read> outside: array<u32>;
@group(0) @binding(4) var<storage, read_write> g_dst: array<f32>;

@compute @workgroup_size(64)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= p.total) {
        return;
    }
    if (p.final_pass != 0u && p.use_mask != 0u) {
        let x = idx % p.nx;
        let y = (idx / p.nx) % p.ny;
        let z = idx / (p.nx * p.ny);
        if (outside[z] != 0u || outside[p.nz + y] != 0u || outside[p.nz + p.ny + x] != 0u) {
            g_dst[idx] = p.cval;
            return;
        }
    }
    let s = p.stride;
    let o = (idx / s) % p.n;
    let b = (idx / (s * p.n)) * s + idx % s;
    let t = taps[p.tap_offset + o];
    var acc = 0.0;
    if (p.from_scratch != 0u) {
        let base = b * p.len;
        for (var h = 0u; h <= p.order; h++) {
            acc += t.w[h] * g_src[base + t.idx[h]];
        }
    } else {
        let base = line_base(b, p.n, s);
        for (var h = 0u; h <= p.order; h++) {
            acc += t.w[h] * g_src[base + t.idx[h] * s];
        }
    }
    g_dst[idx] = acc;
}
