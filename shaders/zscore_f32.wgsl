// Streaming per-voxel z-score over time with float32 arithmetic only, to f64 accuracy: the path for
// devices without SHADER_F64 (wgpu's Metal, DX12 and GL backends, Intel GPUs). Same results as
// zscore.wgsl (scipy.stats.zscore in f64) within the tolerance below. CPU twin, operation for
// operation and in the same order: crates/cpu/src/zscore_f32.rs (each function here has its namesake
// there).
//
// Method: the first sample K of each voxel is the shift; accumulate S1 = Σ(x − K) and
// S2 = Σ(x − K)² as double-float (hi, lo) f32 pairs: x − K exactly by TwoSum, (x − K)² exactly by
// Dekker's product with a bit-mask split (no multiplication by 4097, so fused multiply-adds cannot
// break it: every partial product is exact), sums by TwoSum + Fast2Sum. Finalize in double-float:
// mean = K + S1/n, M2 = S2 − S1·(S1/n), std = sqrt(M2 / (n − ddof)), each division and square root
// corrected by an exact residual, so the device's 2.5-ulp f32 division and sqrt do not matter.
// Normalize: (x − mean) / std as a double-float quotient, rounded once to f32 (q1 + q2).
// WGSL's `fma` is not used: the spec lets it round twice ("inherited from e1 * e2 + e3").
//
// The only assumption is IEEE round-to-nearest f32 addition and multiplication that the compiler does
// not reassociate. Compilers do: Mesa's NIR (lavapipe, RADV, ANV) rewrites (a + b) - a to b, which
// zeroes TwoSum's error term, as SPIR-V from naga carries no NoContraction/exact marks. So every
// intermediate whose algebra a compiler could simplify goes through `o`, an XOR with a uniform that is
// 0 at run time but unknown to the compiler (`Params::opaque_zero`): the value is unchanged, the
// identity unprovable. `selftest` checks the primitives on the device at start-up
// (crates/gpu/src/zscore_f32.rs, `self_test`) and the backend falls back to the CPU when it fails.
//
// Tolerance (tests/zscore_f32.rs): the double-float moments carry about 44 bits, so against the f64
// path (Welford, crates/core/src/zscore.rs) |z32 − z64| <= 2 ulp_f32(z64) + 2^-36 · (|x| + |mean|) / std
// (the second term bounds the cancellation in x − mean of both paths' mean errors); GPU against this
// file's CPU twin the same bound. NaN and constant voxels are identical: constant when
// std <= |eps_f64 · mean| (scipy's rule, eps of f64 = 2^-52, exact in f32), which for float32 data is
// exactly the voxels whose samples are all equal (S1 = S2 = 0 exactly, std 0); NaN std for
// n <= ddof; a NaN sample makes the voxel's z NaN.

// The layout of `ZscoreF32Uniform` in crates/gpu/src/zscore_f32.rs (checked by tests/shaders.rs,
// `uniform_structs_match_wgsl`).
struct Params {
    total: u32,
    // Number of volumes including the one being added (accumulate), or accumulated (finalize).
    count: u32,
    ddof: u32,
    constant_zero: u32,
    // Always 0: see `o`.
    opaque_zero: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// scipy's eps for the constant rule: f64's machine epsilon, 2^-52 (a power of two: exact in f32).
const EPS_F64: f32 = 2.220446049250313e-16;

// 1: `o` is opaque. 0 only in the self-test's variant that shows the guard is needed (a test runs it
// on lavapipe, which then fails the self-test).
const OPAQUE: u32 = 1u;

// x unchanged, through an operation the compiler cannot see through (no algebraic rewriting across it).
fn o(x: f32) -> f32 {
    if (OPAQUE == 0u) {
        return x;
    }
    return bitcast<f32>(bitcast<u32>(x) ^ p.opaque_zero);
}

// a + b = s + e exactly (Knuth's TwoSum; any magnitudes).
fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = o(a + b);
    let bb = o(s - a);
    let e = o(a - o(s - bb)) + o(b - bb);
    return vec2<f32>(s, e);
}

// a + b = s + e exactly when |a| >= |b| or a == 0 (Dekker's Fast2Sum).
fn fast_two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = o(a + b);
    let e = b - o(s - a);
    return vec2<f32>(s, e);
}

// a = hi + lo with hi the top 12 significand bits (a mask: immune to contraction), lo exact.
fn split(a: f32) -> vec2<f32> {
    let hi = bitcast<f32>(bitcast<u32>(a) & 0xfffff000u);
    return vec2<f32>(hi, a - hi);
}

// a * b = p + e exactly (Dekker's TwoProduct; each partial product has at most 24 bits).
fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let pr = o(a * b);
    let sa = split(a);
    let sb = split(b);
    let e = o(o(o(sa.x * sb.x - pr) + sa.x * sb.y) + sa.y * sb.x) + sa.y * sb.y;
    return vec2<f32>(pr, e);
}

// Double-float sum (the accurate variant: two TwoSums, renormalized twice).
fn df_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = two_sum(a.x, b.x);
    let t = two_sum(a.y, b.y);
    var r = fast_two_sum(s.x, s.y + t.x);
    r = fast_two_sum(r.x, r.y + t.y);
    return r;
}

// Double-float product.
fn df_mul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let pr = two_prod(a.x, b.x);
    let lo = pr.y + (a.x * b.y + a.y * b.x);
    return fast_two_sum(pr.x, lo);
}

// Double-float a / d for an f32 d (the count or the degrees of freedom, exact integers).
fn df_div_f(a: vec2<f32>, d: f32) -> vec2<f32> {
    let q1 = o(a.x / d);
    let pr = two_prod(q1, d);
    let r = o(o(a.x - pr.x) - pr.y) + a.y;
    return fast_two_sum(q1, r / d);
}

// Double-float square root of a >= 0 (0 for a <= 0).
fn df_sqrt(a: vec2<f32>) -> vec2<f32> {
    if (a.x <= 0.0) {
        return vec2<f32>(0.0, 0.0);
    }
    let s = o(sqrt(a.x));
    let sq = two_prod(s, s);
    let r = o(o(a.x - sq.x) - sq.y) + a.y;
    return fast_two_sum(s, r / (2.0 * s));
}

// accumulate: src (f32), k (the shift), s1, s2 (double-float). Bindings 1..4.
@group(0) @binding(1) var<storage, read> acc_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> acc_k: array<f32>;
@group(0) @binding(3) var<storage, read_write> acc_s1: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> acc_s2: array<vec2<f32>>;

@compute @workgroup_size(64)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let x = acc_src[i];
    if (p.count == 1u) {
        // The first sample is the shift: the state is set, whatever the buffers held. x - x is 0,
        // or NaN for a NaN or infinite sample, whose std is then NaN as in the f64 path.
        let z = o(x) - x;
        acc_k[i] = x;
        acc_s1[i] = vec2<f32>(z, 0.0);
        acc_s2[i] = vec2<f32>(z, 0.0);
        return;
    }
    let d = two_sum(x, -acc_k[i]);
    acc_s1[i] = df_add(acc_s1[i], d);
    let sq = two_prod(d.x, d.x);
    // (d.x + d.y)² = d.x² + 2·d.x·d.y + d.y²; the last term is below the pair's precision.
    let d2 = fast_two_sum(sq.x, sq.y + 2.0 * d.x * d.y);
    acc_s2[i] = df_add(acc_s2[i], d2);
}

// finalize: k, s1, s2 -> mean, std (double-float). Bindings 1..5.
@group(0) @binding(1) var<storage, read> fin_k: array<f32>;
@group(0) @binding(2) var<storage, read> fin_s1: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> fin_s2: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> fin_mean: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> fin_std: array<vec2<f32>>;

@compute @workgroup_size(64)
fn finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let n = f32(p.count);
    let s1 = fin_s1[i];
    let offset = df_div_f(s1, n);
    fin_mean[i] = df_add(vec2<f32>(fin_k[i], 0.0), offset);
    var m2 = df_add(fin_s2[i], -df_mul(s1, offset));
    // M2 >= 0 exactly; a rounding below 0 (never seen) would make sqrt NaN.
    if (m2.x < 0.0) {
        m2 = vec2<f32>(0.0, 0.0);
    }
    let dof = f32(p.count) - f32(p.ddof);
    if (p.count > p.ddof) {
        fin_std[i] = df_sqrt(df_div_f(m2, dof));
    } else {
        // numpy's NaN for n <= ddof.
        fin_std[i] = vec2<f32>(bitcast<f32>(0x7fc00000u), 0.0);
    }
}

// normalize: (x - mean) / std with the constant-voxel rule. Bindings 1..4.
@group(0) @binding(1) var<storage, read> nrm_src: array<f32>;
@group(0) @binding(2) var<storage, read> nrm_mean: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> nrm_std: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> nrm_dst: array<f32>;

@compute @workgroup_size(64)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    nrm_dst[i] = normalized(nrm_src[i], nrm_mean[i], nrm_std[i], p.constant_zero != 0u);
}

fn normalized(x: f32, mean: vec2<f32>, sd: vec2<f32>, constant_zero: bool) -> f32 {
    // scipy: constant when std <= |eps * mean| (false for a NaN std).
    if (sd.x <= abs(mean.x) * EPS_F64) {
        return select(bitcast<f32>(0x7fc00000u), 0.0, constant_zero);
    }
    let d = two_sum(x, -mean.x);
    let num = fast_two_sum(d.x, d.y - mean.y);
    let q1 = o(num.x / sd.x);
    let pr = two_prod(q1, sd.x);
    let r = o(o(o(num.x - pr.x) - pr.y) + num.y) - q1 * sd.y;
    return q1 + r / sd.x;
}

// selftest: for each input pair (a, b), TwoSum and TwoProduct as (s, e_sum, p, e_prod), then
// Fast2Sum of the larger and the smaller magnitude and the split of a, as (s, e, hi, lo). The host
// compares them with the exact values: a compiler that reassociates or contracts gets them wrong.
@group(0) @binding(1) var<storage, read> st_in: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> st_out: array<vec4<f32>>;

@compute @workgroup_size(64)
fn selftest(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let ab = st_in[i];
    st_out[2u * i] = vec4<f32>(two_sum(ab.x, ab.y), two_prod(ab.x, ab.y));
    let big = select(ab.y, ab.x, abs(ab.x) >= abs(ab.y));
    let small = select(ab.x, ab.y, abs(ab.x) >= abs(ab.y));
    st_out[2u * i + 1u] = vec4<f32>(fast_two_sum(big, small), split(ab.x));
}
