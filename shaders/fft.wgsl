// Batched 1-D complex FFTs along one axis of a C-ordered volume of vec2<f32> (re, im); three of them
// make the 3-D FFT (crates/gpu/src/fft.rs). numpy's conventions: forward unnormalized, inverse scaled by 1/N
// (`scale` on the last stage / the Bluestein post-chirp).
// CPU twin: crates/cpu/src/fft.rs (rustfft, f32). Tolerance: |gpu - cpu| <= 1e-5 * sqrt(N) * max|x|
// elementwise (both are f32 with O(log N) error growth; twiddles are computed in f64 on the host).
//
// `stockham`: one radix-R stage (R in 2, 3, 4, 5, 7, 8) of the self-sorting Stockham algorithm
//   (Govindaraju et al. 2008, mixed radix: `ns` is the product of the earlier radices), one invocation
//   per (line, butterfly), neighbouring lines on neighbouring invocations, ping-pong between two buffers.
// Bluestein (lengths with a prime factor > 7), per line of length n, with M >= 2n - 1 a power of two:
//   `chirp_pre`: a[m] = x[m] * w[m] for m < n, 0 up to M, with w[m] = exp(-/+ i pi m^2 / n);
//   Stockham FFT of length M; `pointwise`: A *= B, B = FFT_M(conj chirp) / M precomputed on the host;
//   inverse Stockham FFT of length M; `chirp_post`: X[k] = w[k] * a[k] * scale. M is the smallest
//   length >= 2n - 1 whose prime factors are all in {2, 3, 5, 7}.
// `cross_z_wg`, the registration's middle in one pass over lines along z: the forward z stages, the
//   cross-power with the reference spectrum (`src`, binding 1), optionally smoothed and kept (for the
//   upsampled DFT), and the inverse z stages; the x and y passes around it are `stockham_wg`'s.
// `stockham_wg_power`, `stockham_wg_peak`: `stockham_wg` and the registration's power sums or peak
//   search over what it writes (one result per workgroup), on the last forward / inverse pass.
// One pass per axis (`stockham_wg`, `bluestein_wg`), where a workgroup's lines fit in workgroup memory:
//   each workgroup loads `group` whole lines into `sh` once, runs every stage there (the same
//   butterflies and twiddles as `stockham`, alternating between the two halves of `sh`) and writes
//   them back in place: one read and one write of the volume per axis instead of one per stage and
//   no trailing copy. Bluestein's chirps, pointwise product and both transforms run in the same pass.

// The layout of `FftUniform` in crates/gpu/src/fft.rs
// (checked by tests/shaders.rs, `uniform_structs_match_wgsl`).
struct Params {
    n: u32,            // transform length (M for the Stockham stages of Bluestein)
    stride: u32,       // element stride of the axis
    lines: u32,
    radix: u32,
    ns: u32,           // Stockham: product of the radices of earlier stages
    tw_offset: u32,    // Stockham: twiddles exp(-/+ 2 pi i m / n), m < n, in `tables`
    m: u32,            // Bluestein: padded length M
    chirp_offset: u32, // Bluestein: chirp w[m], m < n, in `tables`
    bhat_offset: u32,  // Bluestein: B[m], m < M, in `tables`
    total: u32,        // invocations
    scale: f32,
    group: u32,        // one pass: lines per workgroup
    radices: u32,      // one pass: the stages' radices, four bits each, first stage lowest, 0 ends
    tw_inv_offset: u32, // `bluestein_wg`, `cross_z_wg`: inverse twiddles in `tables`
    phase: u32,        // `cross_z_wg`: the cross-power's normalization (`cross_value`)
    scale_bits: u32,   // `cross_z_wg`: its scale's f32 bits (0: 1)
    flags: u32,        // `cross_z_wg`: 1 smooth by `smooth_table`, 2 keep the cross-power in `kept`;
                       // `stockham_wg`: 4 load the real volume in `src` (pairs of f32) instead of `dst`
    nx: u32,           // `cross_z_wg`, `stockham_wg_peak`: the volume's x length (lines along z
                       // are stride = ny nx)
    window: u32,       // `stockham_wg_peak`: 1 ranks only shifts within (wz, wy, wx) (--max-shift)
    wz: u32,
    wy: u32,
    wx: u32,
    nz: u32,           // `stockham_wg_peak`: the volume's z and y lengths
    ny: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> tables: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> dst: array<vec2<f32>>;

// The radix of `stockham`, set at load time to the stage's radix (crates/gpu/src/fft.rs, through
// `KernelDecl::source`, which needs the declaration below: one `const` of type u32 with a literal) so
// that the loops have constant bounds and `small_dft`'s switch a constant selector, which shader
// compilers unroll and resolve, keeping `v` in registers.
const RADIX: u32 = 4u;

@compute @workgroup_size(64)
fn stockham(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = linear_index(wid, nwg, lid);
    if (t >= p.total) {
        return;
    }
    let r = RADIX;
    let nr = p.n / r;
    // Invocations in the order of memory: the position among lines that are `stride` apart varies
    // fastest (for y and z, neighbouring invocations read neighbouring addresses, as VkFFT groups
    // nearby transforms), then the butterfly, then the group of lines. Along x (stride 1) this is
    // line after line. Any order computes the same values.
    let st = p.stride;
    let j = (t / st) % nr;
    let b = (t / (st * nr)) * st + t % st;
    let base = line_base(b, p.n, st);
    let k = j % p.ns;
    // Twiddle exp(-2 pi i k q / (ns R)) = tw[k q n / (ns R)].
    let tw_step = p.n / (p.ns * r);
    var v: array<vec2<f32>, 8>;
    for (var q = 0u; q < r; q++) {
        let x = src[base + (j + q * nr) * p.stride];
        v[q] = cmul(x, tables[p.tw_offset + (k * q * tw_step) % p.n]);
    }
    let y = small_dft(v, r, direction(p.tw_offset, p.n), p.tw_offset, nr);
    let idx_d = (j / p.ns) * p.ns * r + k;
    for (var q = 0u; q < r; q++) {
        dst[base + (idx_d + q * p.ns) * p.stride] = y[q] * p.scale;
    }
}

@compute @workgroup_size(64)
fn chirp_pre(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = linear_index(wid, nwg, lid);
    if (t >= p.total) {
        return;
    }
    let b = t / p.m;
    let i = t % p.m;
    var a = vec2<f32>(0.0, 0.0);
    if (i < p.n) {
        a = cmul(src[line_base(b, p.n, p.stride) + i * p.stride], tables[p.chirp_offset + i]);
    }
    dst[t] = a;
}

// In place on `dst` (src unused but bound).
@compute @workgroup_size(64)
fn pointwise(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = linear_index(wid, nwg, lid);
    if (t >= p.total) {
        return;
    }
    dst[t] = cmul(dst[t], tables[p.bhat_offset + t % p.m]);
}

@compute @workgroup_size(64)
fn chirp_post(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = linear_index(wid, nwg, lid);
    if (t >= p.total) {
        return;
    }
    let b = t / p.n;
    let k = t % p.n;
    dst[line_base(b, p.n, p.stride) + k * p.stride] = cmul(src[b * p.m + k], tables[p.chirp_offset + k]) * p.scale;
}

// Two halves of WG_HALF elements (16 KiB in all, WebGPU's default workgroup storage limit).
const WG_HALF: u32 = 1024u;
var<workgroup> sh: array<vec2<f32>, 2048>;

// The direction of the length-`n` transform whose twiddles start at `tw` (-1 forward, 1 inverse),
// for the radix-4 and -8 butterflies, from tw[n / 4] = exp(-/+ i pi / 2) where 4 divides n (the
// only lengths with such stages).
fn direction(tw: u32, n: u32) -> f32 {
    if (n % 4u == 0u && tables[tw + n / 4u].y < 0.0) {
        return -1.0;
    }
    return 1.0;
}

// x times sgn * i.
fn mul_si(x: vec2<f32>, sgn: f32) -> vec2<f32> {
    return vec2<f32>(-sgn * x.y, sgn * x.x);
}

// The 4-point DFT of (a0, a1, a2, a3) with root sgn * i (sgn -1: forward).
fn dft4(a0: vec2<f32>, a1: vec2<f32>, a2: vec2<f32>, a3: vec2<f32>, sgn: f32) -> array<vec2<f32>, 4> {
    let t0 = a0 + a2;
    let t1 = a0 - a2;
    let t2 = a1 + a3;
    let t3 = mul_si(a1 - a3, sgn);
    return array<vec2<f32>, 4>(t0 + t2, t1 + t3, t0 - t2, t1 - t3);
}

// The r-point DFT of v[0..r] (root exp(sgn 2 pi i / r)): radices 2, 4 and 8 as butterflies (8 as
// two 4-point DFTs of the even and odd samples), 3, 5 and 7 from the stage's twiddles at `tw`
// (tw[m nr] = exp(sgn 2 pi i m / r)).
fn small_dft(v: array<vec2<f32>, 8>, r: u32, sgn: f32, tw: u32, nr: u32) -> array<vec2<f32>, 8> {
    var y: array<vec2<f32>, 8>;
    switch r {
        case 2u: {
            y[0] = v[0] + v[1];
            y[1] = v[0] - v[1];
        }
        case 4u: {
            let f = dft4(v[0], v[1], v[2], v[3], sgn);
            y[0] = f[0];
            y[1] = f[1];
            y[2] = f[2];
            y[3] = f[3];
        }
        case 8u: {
            let e = dft4(v[0], v[2], v[4], v[6], sgn);
            let o = dft4(v[1], v[3], v[5], v[7], sgn);
            let h = 0.70710678118654752;
            let o1 = cmul(o[1], vec2<f32>(h, sgn * h));
            let o2 = mul_si(o[2], sgn);
            let o3 = cmul(o[3], vec2<f32>(-h, sgn * h));
            y[0] = e[0] + o[0];
            y[4] = e[0] - o[0];
            y[1] = e[1] + o1;
            y[5] = e[1] - o1;
            y[2] = e[2] + o2;
            y[6] = e[2] - o2;
            y[3] = e[3] + o3;
            y[7] = e[3] - o3;
        }
        default: {
            for (var q = 0u; q < r; q++) {
                var acc = vec2<f32>(0.0, 0.0);
                for (var t = 0u; t < r; t++) {
                    acc += cmul(v[t], tables[tw + ((t * q) % r) * nr]);
                }
                y[q] = acc;
            }
        }
    }
    return y;
}

// Every Stockham stage of a length-`n` transform of the `nl` lines held one after another in the
// half of `sh` starting at `start` (radices in `packed`, twiddles at `tw`), the last stage times
// `scale`; returns the start of the half holding the result. Called by the whole workgroup.
fn wg_stages(lid: u32, n: u32, nl: u32, packed: u32, tw: u32, start: u32, scale: f32) -> u32 {
    var cur = start;
    var ns = 1u;
    var s = 0u;
    loop {
        let r = (packed >> (4u * s)) & 15u;
        if (r == 0u) {
            break;
        }
        let nr = n / r;
        let sc = select(1.0, scale, ((packed >> (4u * s + 4u)) & 15u) == 0u);
        let out = WG_HALF - cur;
        let tw_step = n / (ns * r);
        let sgn = direction(tw, n);
        for (var bi = lid; bi < nl * nr; bi += WG) {
            let l = bi / nr;
            let j = bi % nr;
            let k = j % ns;
            var v: array<vec2<f32>, 8>;
            for (var q = 0u; q < r; q++) {
                v[q] = cmul(sh[cur + l * n + j + q * nr], tables[tw + (k * q * tw_step) % n]);
            }
            let y = small_dft(v, r, sgn, tw, nr);
            let o = out + l * n + (j / ns) * ns * r + k;
            for (var q = 0u; q < r; q++) {
                sh[o + q * ns] = y[q] * sc;
            }
        }
        workgroupBarrier();
        cur = out;
        ns *= r;
        s += 1u;
    }
    return cur;
}

// Sample `i` of line `l` of a workgroup's lines for element `e` of its loads and stores: along x
// (stride 1) consecutive invocations take consecutive samples of a line, along y and z the same
// sample of neighbouring lines, which are neighbours in memory.
fn wg_element(e: u32, len: u32, nl: u32) -> vec2<u32> {
    if (p.stride == 1u) {
        return vec2<u32>(e / len, e % len);
    }
    return vec2<u32>(e % nl, e / nl);
}

// Loads the workgroup's `nl` lines of length `p.n` from line `first` into `sh` (line l at l n):
// from `dst`, or with `reals` from the real volume bound at `src` as vec2 pairs (its buffer padded
// to 8 bytes), imaginary parts 0. Called by the whole workgroup.
fn wg_load(lid: u32, first: u32, nl: u32, reals: bool) {
    let n = p.n;
    for (var e = lid; e < nl * n; e += WG) {
        let li = wg_element(e, n, nl);
        let at = line_base(first + li.x, n, p.stride) + li.y * p.stride;
        if (reals) {
            let pair = src[at / 2u];
            sh[li.x * n + li.y] = vec2<f32>(select(pair.x, pair.y, (at & 1u) == 1u), 0.0);
        } else {
            sh[li.x * n + li.y] = dst[at];
        }
    }
    workgroupBarrier();
}

// Writes `wg_load`'s lines back to `dst` from the half of `sh` starting at `res`.
fn wg_store(lid: u32, first: u32, nl: u32, res: u32) {
    let n = p.n;
    for (var e = lid; e < nl * n; e += WG) {
        let li = wg_element(e, n, nl);
        dst[line_base(first + li.x, n, p.stride) + li.y * p.stride] = sh[res + li.x * n + li.y];
    }
}

// A Stockham transform of `group` lines per workgroup in one pass, in place on `dst`.
@compute @workgroup_size(64)
fn stockham_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let first = (wid.x + wid.y * nwg.x) * p.group;
    if (first >= p.lines) {
        return;
    }
    let nl = min(p.group, p.lines - first);
    wg_load(lid.x, first, nl, (p.flags & 4u) != 0u);
    let res = wg_stages(lid.x, p.n, nl, p.radices, p.tw_offset, 0u, p.scale);
    wg_store(lid.x, first, nl, res);
}

// `stockham_wg` with the registration's reductions over what each workgroup writes, one result per
// workgroup at binding 4, as cross_power.wgsl's `sum_sq` and `argmax_abs` write theirs (the host
// reduces them the same way): `stockham_wg_power` on the last forward pass (the moving volume's power),
// `stockham_wg_peak` on the last inverse pass (the correlation's peak). Each saves a dispatch and a
// read of the volume. The results go through `sh` once the lines are stored: 16 KiB is all the
// workgroup memory a device must have, and `sh` fills it.
@group(0) @binding(4) var<storage, read_write> wg_sums: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> wg_peaks: array<Partial>;

@compute @workgroup_size(64)
fn stockham_wg_power(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x;
    let first = g * p.group;
    if (first >= p.lines) {
        return;
    }
    let n = p.n;
    let nl = min(p.group, p.lines - first);
    wg_load(lid.x, first, nl, (p.flags & 4u) != 0u);
    let res = wg_stages(lid.x, n, nl, p.radices, p.tw_offset, 0u, p.scale);
    var s = vec2<f32>(1.0, 0.0);
    for (var e = lid.x; e < nl * n; e += WG) {
        let li = wg_element(e, n, nl);
        let c = sh[res + li.x * n + li.y];
        dst[line_base(first + li.x, n, p.stride) + li.y * p.stride] = c;
        s = sq_add(s, c);
    }
    workgroupBarrier();
    sh[lid.x] = s;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h /= 2u) {
        if (lid.x < h) {
            sh[lid.x] = sq_merge(sh[lid.x], sh[lid.x + h]);
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        wg_sums[g] = sh[0];
    }
}

@compute @workgroup_size(64)
fn stockham_wg_peak(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x;
    let first = g * p.group;
    if (first >= p.lines) {
        return;
    }
    let n = p.n;
    let nl = min(p.group, p.lines - first);
    wg_load(lid.x, first, nl, false);
    let res = wg_stages(lid.x, n, nl, p.radices, p.tw_offset, 0u, p.scale);
    let d = vec3<u32>(p.nz, p.ny, p.nx);
    let w = vec3<u32>(p.wz, p.wy, p.wx);
    var best = -1.0;
    var best_i = 0xffffffffu;
    var best_c = vec2<f32>(0.0, 0.0);
    for (var e = lid.x; e < nl * n; e += WG) {
        let li = wg_element(e, n, nl);
        let c = sh[res + li.x * n + li.y];
        let at = line_base(first + li.x, n, p.stride) + li.y * p.stride;
        dst[at] = c;
        if (in_shift_window(at, d, 0u, w, p.window)) {
            let v = safe_length(c);
            if (peak_beats(v, at, best, best_i)) {
                best = v;
                best_i = at;
                best_c = c;
            }
        }
    }
    // Per invocation in `sh`: (|c|, the index's high 16 bits) at lid, (its low 16 bits, 0) at
    // WG + lid, c at 2 WG + lid; halves of 16 bits are exact in f32 and never subnormal.
    workgroupBarrier();
    sh[lid.x] = vec2<f32>(best, f32(best_i >> 16u));
    sh[WG + lid.x] = vec2<f32>(f32(best_i & 0xffffu), 0.0);
    sh[2u * WG + lid.x] = best_c;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h /= 2u) {
        if (lid.x < h) {
            let o = lid.x + h;
            let j = (u32(sh[o].y) << 16u) | u32(sh[WG + o].x);
            let bj = (u32(sh[lid.x].y) << 16u) | u32(sh[WG + lid.x].x);
            if (peak_beats(sh[o].x, j, sh[lid.x].x, bj)) {
                sh[lid.x] = sh[o];
                sh[WG + lid.x] = sh[WG + o];
                sh[2u * WG + lid.x] = sh[2u * WG + o];
            }
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        let j = (u32(sh[0].y) << 16u) | u32(sh[WG].x);
        wg_peaks[g] = Partial(sh[0].x, j, sh[2u * WG].x, sh[2u * WG].y);
    }
}

// Bluestein's transform of `group` lines per workgroup in one pass, in place on `dst`: the
// chirped line zero-padded to M, its forward transform, times B, the inverse transform, chirped.
@compute @workgroup_size(64)
fn bluestein_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let first = (wid.x + wid.y * nwg.x) * p.group;
    if (first >= p.lines) {
        return;
    }
    let n = p.n;
    let m = p.m;
    let nl = min(p.group, p.lines - first);
    for (var e = lid.x; e < nl * m; e += WG) {
        let li = wg_element(e, m, nl);
        var a = vec2<f32>(0.0, 0.0);
        if (li.y < n) {
            a = cmul(dst[line_base(first + li.x, n, p.stride) + li.y * p.stride],
                     tables[p.chirp_offset + li.y]);
        }
        sh[li.x * m + li.y] = a;
    }
    workgroupBarrier();
    let fa = wg_stages(lid.x, m, nl, p.radices, p.tw_offset, 0u, 1.0);
    for (var e = lid.x; e < nl * m; e += WG) {
        sh[fa + e] = cmul(sh[fa + e], tables[p.bhat_offset + e % m]);
    }
    workgroupBarrier();
    let res = wg_stages(lid.x, m, nl, p.radices, p.tw_inv_offset, fa, 1.0);
    for (var e = lid.x; e < nl * n; e += WG) {
        let li = wg_element(e, n, nl);
        dst[line_base(first + li.x, n, p.stride) + li.y * p.stride] =
            cmul(sh[res + li.x * m + li.y], tables[p.chirp_offset + li.y]) * p.scale;
    }
}

@group(0) @binding(4) var<storage, read_write> kept: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> smooth_table: array<f32>;

// The forward transform along z of `group` lines of `dst` (the moving volume, transformed along x and
// y), each bin replaced by its cross-power with the reference's `src` (`cross_value`; times the
// Gaussian `smooth_table` [gz | gy | gx] as (gz gy) gx when flags & 1, as `gaussian_smooth`; copied
// to `kept` when flags & 2), then the inverse transform along z, in place on `dst`.
@compute @workgroup_size(64)
fn cross_z_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let first = (wid.x + wid.y * nwg.x) * p.group;
    if (first >= p.lines) {
        return;
    }
    let n = p.n;
    let nl = min(p.group, p.lines - first);
    wg_load(lid.x, first, nl, false);
    let fz = wg_stages(lid.x, n, nl, p.radices, p.tw_offset, 0u, 1.0);
    let ny = p.stride / p.nx;
    for (var e = lid.x; e < nl * n; e += WG) {
        let li = wg_element(e, n, nl);
        let b = first + li.x;
        let at = line_base(b, n, p.stride) + li.y * p.stride;
        var c = cross_value(src[at], sh[fz + li.x * n + li.y], p.phase, p.scale_bits);
        if ((p.flags & 1u) != 0u) {
            let yx = b % p.stride;
            c = c * ((smooth_table[li.y] * smooth_table[n + yx / p.nx]) * smooth_table[n + ny + yx % p.nx]);
        }
        if ((p.flags & 2u) != 0u) {
            kept[at] = c;
        }
        sh[fz + li.x * n + li.y] = c;
    }
    workgroupBarrier();
    let res = wg_stages(lid.x, n, nl, p.radices, p.tw_inv_offset, fz, p.scale);
    wg_store(lid.x, first, nl, res);
}
