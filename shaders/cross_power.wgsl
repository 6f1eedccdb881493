// Phase correlation around the FFTs (crates/gpu/src/register.rs; CPU twins: crates/cpu/src/cross_power.rs and
// crates/cpu/src/register.rs, scikit-image 0.26's phase_cross_correlation).
//   `to_complex`: real volume -> complex (imaginary 0).
//   `cross_power`: R = F * conj(G); with phase normalization R /= max(|R|, 100 eps_f32). f32 as the CPU,
//     but the product is formed from F and G divided by their largest component (when over 1), so
//     |F·G*| past f32's range (values ~1e17 and up) still gives the unit phasor (the CPU uses f64);
//     unnormalized, R is stored times the host's power of two `scale_bits` (1 unless the reference's
//     power says R could pass f32's range; the CPU twin scales likewise, from both volumes), and is inf
//     where it still is not an f32 (the host then reports the registration as not finite).
//   `argmax_abs`: per-workgroup argmax of |c| (first index in C order on ties, as np.argmax) plus the
//     value there; the host reduces the partials. `sum_sq`: per-workgroup sums of |c|^2 as (scale,
//     sum of (|c|/scale)^2) with scale >= 1 the largest component seen, so that spectra of |c| past
//     1.8e19 do not overflow (LAPACK's nrm2 scheme; the host sums scale^2 * sum in f64). For |c| <= 1
//     it is the plain f32 sum. A NaN or inf component makes the sum NaN: the host reports it.
//   `gaussian_smooth`: R times the Fourier transform of a Gaussian (--smooth-sigma), the host's table
//     [gz | gy | gx] multiplied as (gz * gy) * gx in f32, as the CPU twin.
//   `contract`: one axis of scikit-image's upsampled DFT (matrix-multiply DFT): out[.., i, ..] =
//     sum_k K[i, k] in[.., k, ..]; the host passes the conjugated kernels so that three contractions
//     of R give `_upsampled_dft(conj(R), ...).conj()` directly.
// Tolerances: cross_power elementwise within 4 ulp of the CPU (|.| rounding); integer shifts identical
// to the CPU (argmax of the same correlation up to f32 FFT rounding); sub-pixel shifts within 1/u of
// the CPU (the upsampled DFT sums in f32 here, f64 there); error and phasediff within 1e-3.

// The layout of `CrossUniform` in crates/gpu/src/register.rs
// (checked by tests/shaders.rs, `uniform_structs_match_wgsl`).
struct Params {
    total: u32,
    phase: u32,
    // contract: input dims, contracted axis, output length along it, kernel offset.
    d0: u32,
    d1: u32,
    d2: u32,
    axis: u32,
    r: u32,
    // cross_power, unnormalized: f32 bits of the power of two R is stored times (0: 1).
    scale_bits: u32,
    // argmax_abs: window != 0 ranks only shifts within (wz, wy, wx) voxels (--max-shift) of a
    // d0 x d1 x d2 correlation whose buffer starts at plane z0.
    window: u32,
    wz: u32,
    wy: u32,
    wx: u32,
    z0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> real_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> cplx_out: array<vec2<f32>>;

@compute @workgroup_size(64)
fn to_complex(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    cplx_out[i] = vec2<f32>(real_in[i], 0.0);
}

@group(0) @binding(1) var<storage, read> cp_f: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> cp_g: array<vec2<f32>>;

@compute @workgroup_size(64)
fn cross_power(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    cp_g[i] = cross_value(cp_f[i], cp_g[i], p.phase, p.scale_bits);
}

@group(0) @binding(1) var<storage, read> red_in: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(3) var<storage, read_write> sums: array<vec2<f32>>;

var<workgroup> wg_val: array<f32, 64>;
var<workgroup> wg_scale: array<f32, 64>;
var<workgroup> wg_idx: array<u32, 64>;

fn in_window(i: u32) -> bool {
    return in_shift_window(i, vec3<u32>(p.d0, p.d1, p.d2), p.z0, vec3<u32>(p.wz, p.wy, p.wx), p.window);
}

// Grid-stride over all elements; partial per workgroup. The order (val desc, idx asc) is total, so
// the visiting order does not change the result.
@compute @workgroup_size(64)
fn argmax_abs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let groups = nwg.x * nwg.y;
    let g = wid.x + wid.y * nwg.x;
    var best = -1.0;
    var best_i = 0xffffffffu;
    for (var i = g * WG + lid.x; i < p.total; i += groups * WG) {
        if (!in_window(i)) {
            continue;
        }
        let v = safe_length(red_in[i]);
        if (peak_beats(v, i, best, best_i)) {
            best = v;
            best_i = i;
        }
    }
    wg_val[lid.x] = best;
    wg_idx[lid.x] = best_i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if (lid.x < s) {
            let v = wg_val[lid.x + s];
            let j = wg_idx[lid.x + s];
            if (peak_beats(v, j, wg_val[lid.x], wg_idx[lid.x])) {
                wg_val[lid.x] = v;
                wg_idx[lid.x] = j;
            }
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        let j = wg_idx[0];
        var c = vec2<f32>(0.0, 0.0);
        if (j < p.total) {
            c = red_in[j];
        }
        partials[g] = Partial(wg_val[0], j, c.x, c.y);
    }
}

@compute @workgroup_size(64)
fn sum_sq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let groups = nwg.x * nwg.y;
    let g = wid.x + wid.y * nwg.x;
    var s = vec2<f32>(1.0, 0.0);
    for (var i = g * WG + lid.x; i < p.total; i += groups * WG) {
        s = sq_add(s, red_in[i]);
    }
    wg_val[lid.x] = s.y;
    wg_scale[lid.x] = s.x;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h /= 2u) {
        if (lid.x < h) {
            let m = sq_merge(vec2<f32>(wg_scale[lid.x], wg_val[lid.x]),
                             vec2<f32>(wg_scale[lid.x + h], wg_val[lid.x + h]));
            wg_scale[lid.x] = m.x;
            wg_val[lid.x] = m.y;
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        sums[g] = vec2<f32>(wg_scale[0], wg_val[0]);
    }
}

@group(0) @binding(1) var<storage, read> ct_in: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> ct_kernel: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> ct_out: array<vec2<f32>>;

@compute @workgroup_size(64)
fn contract(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = linear_index(wid, nwg, lid);
    if (t >= p.total) {
        return;
    }
    var d = array<u32, 3>(p.d0, p.d1, p.d2);
    var o = d;
    o[p.axis] = p.r;
    var c = array<u32, 3>(t / (o[1] * o[2]), (t / o[2]) % o[1], t % o[2]);
    let i = c[p.axis];
    let n = d[p.axis];
    let stride = select(select(1u, d[2], p.axis == 1u), d[1] * d[2], p.axis == 0u);
    c[p.axis] = 0u;
    let base = (c[0] * d[1] + c[1]) * d[2] + c[2];
    var acc = vec2<f32>(0.0, 0.0);
    for (var k = 0u; k < n; k++) {
        acc += cmul(ct_kernel[i * n + k], ct_in[base + k * stride]);
    }
    ct_out[t] = acc;
}

@group(0) @binding(1) var<storage, read_write> sm_c: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> sm_table: array<f32>;

@compute @workgroup_size(64)
fn gaussian_smooth(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let z = i / (p.d1 * p.d2);
    let y = (i / p.d2) % p.d1;
    let x = i % p.d2;
    let g = (sm_table[z] * sm_table[p.d0 + y]) * sm_table[p.d0 + p.d1 + x];
    sm_c[i] = sm_c[i] * g;
}
