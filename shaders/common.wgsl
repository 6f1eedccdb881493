// Shared by every kernel: concatenated in front of each shader at load time (crates/gpu/src/shaders.rs),
// and validated that way in tests/shaders.rs.

// Boundary modes: `BoundaryMode::code()` of crates/core/src/params.rs (checked by tests/shaders.rs,
// `boundary_mode_codes_match_wgsl`).
const MODE_REFLECT: u32 = 0u;
const MODE_NEAREST: u32 = 1u;
const MODE_MIRROR: u32 = 2u;
const MODE_CONSTANT: u32 = 3u;
const MODE_WRAP: u32 = 4u;

// Workgroup size of every 1-D kernel: `WORKGROUP` of crates/gpu/src/device/recorder.rs and every
// `@workgroup_size` (checked by tests/shaders.rs, `workgroup_size_matches_wgsl`).
const WG: u32 = 64u;

// Linear invocation index of a dispatch split into (x, y) workgroups when it has more than 65535
// workgroups (crates/gpu/src/device/recorder.rs `split_groups`).
fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

// Euclidean remainder for possibly negative i (n > 0). `%` is only applied to non-negative operands:
// on the GL backend a negative operand of `%` is undefined in GLSL (it broke `reflect` there).
fn pmod(i: i32, n: i32) -> i32 {
    if (i >= 0) {
        return i % n;
    }
    return n - 1 - ((-i - 1) % n);
}

// scipy.ndimage's boundary extension for filters (ni_support.c), index `i` on an axis of length `n`.
// Returns -1 for `constant` outside the axis (use cval).
//   reflect  (d c b a | a b c d | d c b a)
//   mirror   (d c b | a b c d | c b a)
//   nearest  (a a a | a b c d | d d d)
//   wrap     (a b c d | a b c d | a b c d)
fn extend_index(i: i32, n: i32, mode: u32) -> i32 {
    if (i >= 0 && i < n) {
        return i;
    }
    switch mode {
        case 0u: { // reflect
            let m = pmod(i, 2 * n);
            return select(m, 2 * n - 1 - m, m >= n);
        }
        case 1u: { // nearest
            return clamp(i, 0, n - 1);
        }
        case 2u: { // mirror
            if (n == 1) {
                return 0;
            }
            let m = pmod(i, 2 * n - 2);
            return select(m, 2 * n - 2 - m, m >= n);
        }
        case 4u: { // wrap
            return pmod(i, n);
        }
        default: { // constant
            return -1;
        }
    }
}

// Complex multiply and conjugate-multiply on vec2 (re, im).
fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

fn cconj(a: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x, -a.y);
}

// Start of line `b` of a batched 1-D operation along an axis of length `n` with element stride `s`
// inside a C-ordered volume: lines are enumerated so that `b % s` is the position inside the
// faster axes and `b / s` the position in the slower ones.
fn line_base(b: u32, n: u32, s: u32) -> u32 {
    return (b / s) * s * n + (b % s);
}

// |r| without the overflow of re² + im² past f32's range (|r| > 1.8e19, e.g. the DC bin of large
// integer volumes), as the CPU twin's f64 magnitude and numpy's hypot.
fn safe_length(r: vec2<f32>) -> f32 {
    let s = max(abs(r.x), abs(r.y));
    // Scaled at both ends: squares of components past 1e19 overflow, and under 1e-19 they underflow
    // (or flush to zero on devices without subnormals).
    if (s > 1e18 || (s > 0.0 && s < 1e-18)) {
        return length(r / s) * s;
    }
    return length(r);
}

// One bin of the cross-power spectrum R = F * conj(G) of the registration (`cross_power.wgsl` and the
// fused z pass of `fft.wgsl`; described in cross_power.wgsl's header): with `phase`, R / max(|R|,
// 100 eps_f32); without, R times the power of two whose f32 bits are `scale_bits` (0: 1).
fn cross_value(f: vec2<f32>, g: vec2<f32>, phase: u32, scale_bits: u32) -> vec2<f32> {
    // Dividing by a scale of 1 is exact: the product is bit for bit the plain one for |F|, |G| <= 1..
    let sf = max(max(abs(f.x), abs(f.y)), 1.0);
    let sg = max(max(abs(g.x), abs(g.y)), 1.0);
    // |r| >= 1 when either scale is over 1 (a component of each factor is then +-1).
    let r = cmul(f / sf, cconj(g / sg));
    if (phase != 0u && sf * sg >= 1e30) {
        // |R| = |r|·sf·sg, which is under the floor only when r is (nearly) zero: one factor has a zero
        // bin. The CPU's R / max(|R|, floor) then, without forming the overflowing R.
        let floor = 100.0 * 1.1920929e-7;
        let lr = safe_length(r);
        if (lr * sf >= floor / sg) {
            return r / lr;
        } else {
            return r * sf * sg / floor;
        }
    }
    let scale = select(bitcast<f32>(scale_bits), 1.0, scale_bits == 0u);
    var big = r * (sf * scale) * sg;
    if (phase != 0u) {
        big = big / max(safe_length(big), 100.0 * 1.1920929e-7);
    }
    return big;
}

// The peak search's per-workgroup result (`struct Partial` in crates/gpu/src/register/mod.rs; layout
// checked by tests/shaders.rs, `uniform_structs_match_wgsl`): written by `argmax_abs`
// (cross_power.wgsl) and by `stockham_wg_peak` (fft.wgsl).
struct Partial {
    val: f32,
    idx: u32,
    re: f32,
    im: f32,
}

// Whether |c| = `v` at index `j` beats the best so far (`bv` at `bj`): larger, or equal at a lower
// index (np.argmax's first index in C order). A NaN never beats. The order is total, so the order
// in which elements are visited does not change the result.
fn peak_beats(v: f32, j: u32, bv: f32, bj: u32) -> bool {
    return v > bv || (v == bv && j < bj);
}

// |shift| of index k along an axis of n (past the midpoint the shift is k - n), as
// gpuprep_core::register::within.
fn wrapped(k: u32, n: u32) -> u32 {
    return select(k, n - k, k > n / 2u);
}

// Whether element `i` of a correlation of `d` = (d0, d1, d2) whose buffer starts at plane `z0` lies
// within `w` = (wz, wy, wx) voxels of shift (--max-shift); every element when `on` is 0.
fn in_shift_window(i: u32, d: vec3<u32>, z0: u32, w: vec3<u32>, on: u32) -> bool {
    if (on == 0u) {
        return true;
    }
    let z = i / (d.y * d.z) + z0;
    let y = (i / d.z) % d.y;
    let x = i % d.z;
    return wrapped(z, d.x) <= w.x && wrapped(y, d.y) <= w.y && wrapped(x, d.z) <= w.z;
}

// A sum of |c|^2 kept as (scale, sum of (|c| / scale)^2) with scale >= 1 the largest component
// seen (LAPACK's nrm2 scheme, described in cross_power.wgsl's header): `sq_add` adds c, `sq_merge`
// merges two such sums.
fn sq_add(s: vec2<f32>, c: vec2<f32>) -> vec2<f32> {
    var scale = s.x;
    var acc = s.y;
    let a = max(abs(c.x), abs(c.y));
    if (a > scale) {
        let k = scale / a;
        acc = acc * k * k;
        scale = a;
    }
    let u = c / scale;
    return vec2<f32>(scale, acc + dot(u, u));
}

fn sq_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    let k1 = a.x / m;
    let k2 = b.x / m;
    return vec2<f32>(m, a.y * k1 * k1 + b.y * k2 * k2);
}
