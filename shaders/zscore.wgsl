// Streaming per-voxel z-score over time: scipy.stats.zscore(data, axis=0, ddof=ddof) of the float32
// data computed in float64. CPU twin: crates/core/src/zscore.rs. Needs SHADER_F64 (Welford accumulators,
// moments and normalization in f64, as the CPU); without it (wgpu's Metal, DX12 and GL backends) the GPU
// backend runs zscore_f32.wgsl (float32 double-float arithmetic of f64 accuracy), or the CPU twin when
// the device fails that path's self-test, and says which in `describe()`.
// Tolerance: accumulate/finalize are the CPU's f64 arithmetic in the same order, so the f64 mean and
// std agree to the device's f64 division/sqrt rounding (a few f64 ulp; their f32 roundings to 1 ulp);
// normalize computes (x - mean64) / std64 in f64 and rounds once: equal to the CPU up to device f64
// division rounding (tested: |gpu - cpu| <= 1 ulp of the f32 result, the same NaN/zero voxels).
// Constant voxels (scipy's rule on the f64 moments: std <= |eps_f64 * mean|) get NaN, or 0 when
// `constant_zero` is set.

// The layout of `ZscoreUniform` in crates/gpu/src/zscore.rs
// (checked by tests/shaders.rs, `uniform_structs_match_wgsl`).
struct Params {
    total: u32,
    // Number of volumes including the one being added (accumulate), or accumulated (finalize).
    count: u32,
    ddof: u32,
    constant_zero: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// accumulate: bindings 1..3
@group(0) @binding(1) var<storage, read> acc_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> acc_mean: array<f64>;
@group(0) @binding(3) var<storage, read_write> acc_m2: array<f64>;

@compute @workgroup_size(64)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let n = f64(p.count);
    let x = f64(acc_src[i]);
    var mean = acc_mean[i];
    let delta = x - mean;
    mean += delta / n;
    acc_mean[i] = mean;
    acc_m2[i] += delta * (x - mean);
}

// finalize: mean (f64), m2 (f64) -> mean (f64), std (f64). Bindings 1..4.
@group(0) @binding(1) var<storage, read> fin_mean: array<f64>;
@group(0) @binding(2) var<storage, read> fin_m2: array<f64>;
@group(0) @binding(3) var<storage, read_write> fin_mean_out: array<f64>;
@group(0) @binding(4) var<storage, read_write> fin_std_out: array<f64>;

@compute @workgroup_size(64)
fn finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let dof = f64(p.count) - f64(p.ddof);
    fin_mean_out[i] = fin_mean[i];
    if (dof > 0.0) {
        fin_std_out[i] = sqrt(fin_m2[i] / dof);
    } else {
        // numpy's NaN for n <= ddof (the f32 quiet NaN widened).
        fin_std_out[i] = f64(bitcast<f32>(0x7fc00000u));
    }
}

// normalize: (x - mean) / std in f64 with the constant-voxel rule. Bindings 1..4.
@group(0) @binding(1) var<storage, read> nrm_src: array<f32>;
@group(0) @binding(2) var<storage, read> nrm_mean: array<f64>;
@group(0) @binding(3) var<storage, read> nrm_std: array<f64>;
@group(0) @binding(4) var<storage, read_write> nrm_dst: array<f32>;

@compute @workgroup_size(64)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let mean = nrm_mean[i];
    let sd = nrm_std[i];
    // scipy: constant when std <= |eps * mean|, eps of the computation's dtype (f64 here); false for
    // a NaN std.
    if (sd <= abs(2.220446049250313e-16lf * mean)) {
        nrm_dst[i] = select(bitcast<f32>(0x7fc00000u), 0.0, p.constant_zero != 0u);
    } else {
        nrm_dst[i] = f32((f64(nrm_src[i]) - mean) / sd);
    }
}
