// Translation by spline interpolation: scipy.ndimage.shift(vol, s, order, mode, cval), prefilter on.
// CPU twin: crates/cpu/src/shift.rs. A translation samples every line along an axis at the same offsets, so
// the 3-D tensor-product interpolation is three 1-D passes (axis 0, 1, 2). Each pass is linear in its input
// line: the edge padding (`nearest`), the cubic B-spline prefilter with its boundary initialisation and the
// 1-4 interpolation taps compose into one short row of weights per output sample, whose entries decay as
// 0.268^k away from the sample. The host builds those rows in f64 from the CPU twin's own prefilter
// (`gpuprep_core::spline::FilterRows`, `AxisPlan::operator`: about 38 weights for order 3, 1-2 for
// orders 0 and 1), so every mode's quirks are the CPU's by construction, and `axis` applies them: one
// invocation per output voxel, no recursion, no scratch lines. Along z and y neighbouring invocations read
// neighbouring addresses (the lines are interleaved in the volume's layout) and share one row of weights;
// along x they read neighbouring samples and, the weights stored weight-major, neighbouring weights.
// The last pass writes `cval` where any axis is outside the input (constant mode).
// Tolerance: the CPU runs in f64 and rounds once; here the weights and sums are f32:
// |gpu - cpu| <= 1e-5 * (1 + max|input|) for order 3 (2e-6 for orders 0, 1).

// The layout of `ShiftUniform` in crates/gpu/src/shift.rs
// (checked by tests/shaders.rs, `uniform_structs_match_wgsl`).
struct Params {
    n: u32,            // length of the axis
    stride: u32,       // element stride of the axis in the volume
    width: u32,        // weights per output sample
    total: u32,        // voxels in the volume
    tap_offset: u32,   // first weight of this axis in `taps` (n x width, weight-major)
    final_pass: u32,   // apply the constant-mode mask of all three axes
    use_mask: u32,
    nz: u32,
    ny: u32,
    nx: u32,
    cval: f32,
    _pad0: u32,
}

// The layout of `Tap` in crates/gpu/src/shift.rs
// (checked by tests/shaders.rs, `uniform_structs_match_wgsl`): input sample `idx` of the line, times `w`.
struct Tap {
    idx: u32,
    w: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> g_src: array<f32>;
@group(0) @binding(2) var<storage, read> taps: array<Tap>;
@group(0) @binding(3) var<storage, read> outside: array<u32>;
@group(0) @binding(4) var<storage, read_write> g_dst: array<f32>;

@compute @workgroup_size(64)
fn axis(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
    // The line's first sample: this voxel with its coordinate along the axis set to 0.
    let base = idx - o * s;
    // Weight k of output o is `taps[tap_offset + k n + o]` (weight-major: neighbouring outputs,
    // the invocations of a warp along x, read neighbouring taps).
    var acc = 0.0;
    for (var k = 0u; k < p.width; k++) {
        let t = taps[p.tap_offset + k * p.n + o];
        acc += t.w * g_src[base + t.idx * s];
    }
    g_dst[idx] = acc;
}
