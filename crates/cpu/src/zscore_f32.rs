//! CPU twin of `shaders/zscore_f32.wgsl`: the float32-only z-score of f64 accuracy (shifted,
//! compensated double-float sums) that the GPU backend runs on devices without SHADER_F64. Every
//! function here is its namesake in the shader, the same f32 operations in the same order (Rust
//! neither reassociates nor contracts f32 arithmetic), so the two read side by side; the method and
//! the tolerance against the f64 path (`gpuprep_core::zscore`) are written at the top of the shader.
//! The production CPU path stays the f64 one: this twin exists to test the GPU kernel against, and
//! to show (tests/zscore_f32.rs) that its arithmetic reaches the f64 path's accuracy where a naive
//! float32 sum does not.

use gpuprep_core::params::{ConstantVoxels, ZscoreParams};
use ndarray::{Array3, ArrayView3, Zip};

/// A double-float: the unevaluated sum `hi + lo` of two f32 with `|lo| <= ulp(hi) / 2`.
pub type Df = [f32; 2];

/// scipy's eps for the constant rule: f64's machine epsilon, 2^-52 (exact in f32).
pub const EPS_F64: f32 = f64::EPSILON as f32;

const _: () = assert!(EPS_F64 as f64 == f64::EPSILON);

/// The shader's `o`: there an XOR with a run-time zero that stops the GPU compiler rewriting the
/// algebra (Mesa turns `(a + b) - a` into `b`); here the identity, as Rust never rewrites f32 algebra.
#[inline]
fn o(x: f32) -> f32 {
    x
}

/// `a + b = s + e` exactly (Knuth's TwoSum; any magnitudes).
#[inline]
pub fn two_sum(a: f32, b: f32) -> Df {
    let s = o(a + b);
    let bb = o(s - a);
    let e = o(a - o(s - bb)) + o(b - bb);
    [s, e]
}

/// `a + b = s + e` exactly when `|a| >= |b|` or `a == 0` (Dekker's Fast2Sum).
#[inline]
pub fn fast_two_sum(a: f32, b: f32) -> Df {
    let s = o(a + b);
    let e = b - o(s - a);
    [s, e]
}

/// `a = hi + lo`, `hi` the top 12 significand bits (a mask), `lo` exact.
#[inline]
pub fn split(a: f32) -> Df {
    let hi = f32::from_bits(a.to_bits() & 0xffff_f000);
    [hi, a - hi]
}

/// `a * b = p + e` exactly (Dekker's TwoProduct).
#[inline]
pub fn two_prod(a: f32, b: f32) -> Df {
    let pr = o(a * b);
    let sa = split(a);
    let sb = split(b);
    let e = o(o(o(sa[0] * sb[0] - pr) + sa[0] * sb[1]) + sa[1] * sb[0]) + sa[1] * sb[1];
    [pr, e]
}

/// Double-float sum.
#[inline]
pub fn df_add(a: Df, b: Df) -> Df {
    let s = two_sum(a[0], b[0]);
    let t = two_sum(a[1], b[1]);
    let r = fast_two_sum(s[0], s[1] + t[0]);
    fast_two_sum(r[0], r[1] + t[1])
}

/// Double-float product.
#[inline]
pub fn df_mul(a: Df, b: Df) -> Df {
    let pr = two_prod(a[0], b[0]);
    let lo = pr[1] + (a[0] * b[1] + a[1] * b[0]);
    fast_two_sum(pr[0], lo)
}

/// Double-float `a / d` for an f32 `d`.
#[inline]
pub fn df_div_f(a: Df, d: f32) -> Df {
    let q1 = o(a[0] / d);
    let pr = two_prod(q1, d);
    let r = o(o(a[0] - pr[0]) - pr[1]) + a[1];
    fast_two_sum(q1, r / d)
}

/// Double-float square root of `a >= 0` (0 for `a <= 0`).
#[inline]
pub fn df_sqrt(a: Df) -> Df {
    if a[0] <= 0.0 {
        return [0.0, 0.0];
    }
    let s = o(a[0].sqrt());
    let sq = two_prod(s, s);
    let r = o(o(a[0] - sq[0]) - sq[1]) + a[1];
    fast_two_sum(s, r / (2.0 * s))
}

fn neg(a: Df) -> Df {
    [-a[0], -a[1]]
}

/// One voxel's running state: the shift `k` (its first sample) and the double-float sums
/// `s1 = Σ(x − k)`, `s2 = Σ(x − k)²`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct State {
    pub k: f32,
    pub s1: Df,
    pub s2: Df,
}

/// The shader's `accumulate` for one voxel: add sample `x`, the `count`-th (from 1).
#[inline]
pub fn accumulate(st: &mut State, x: f32, count: u32) {
    if count == 1 {
        // 0, or NaN for a NaN or infinite sample (whose std is then NaN, as in the f64 path).
        let z = o(x) - x;
        *st = State {
            k: x,
            s1: [z, 0.0],
            s2: [z, 0.0],
        };
        return;
    }
    let d = two_sum(x, -st.k);
    st.s1 = df_add(st.s1, d);
    let sq = two_prod(d[0], d[0]);
    let d2 = fast_two_sum(sq[0], sq[1] + 2.0 * d[0] * d[1]);
    st.s2 = df_add(st.s2, d2);
}

/// The shader's `finalize` for one voxel: the double-float mean and std of `count` samples.
#[inline]
pub fn finalize(st: &State, count: u32, ddof: u32) -> (Df, Df) {
    let n = count as f32;
    let offset = df_div_f(st.s1, n);
    let mean = df_add([st.k, 0.0], offset);
    let mut m2 = df_add(st.s2, neg(df_mul(st.s1, offset)));
    if m2[0] < 0.0 {
        m2 = [0.0, 0.0];
    }
    let dof = count as f32 - ddof as f32;
    let std = if count > ddof {
        df_sqrt(df_div_f(m2, dof))
    } else {
        [f32::NAN, 0.0]
    };
    (mean, std)
}

/// The shader's `normalized`: `(x − mean) / std` rounded once to f32, or the constant voxels' value.
#[inline]
pub fn normalized(x: f32, mean: Df, sd: Df, constant_zero: bool) -> f32 {
    if sd[0] <= mean[0].abs() * EPS_F64 {
        return if constant_zero { 0.0 } else { f32::NAN };
    }
    let d = two_sum(x, -mean[0]);
    let num = fast_two_sum(d[0], d[1] - mean[1]);
    let q1 = o(num[0] / sd[0]);
    let pr = two_prod(q1, sd[0]);
    let r = o(o(o(num[0] - pr[0]) - pr[1]) + num[1]) - q1 * sd[1];
    q1 + r / sd[0]
}

/// A double-float's value in f64 (exact: the pair's bits fit f64's significand).
pub fn df_to_f64(a: Df) -> f64 {
    a[0] as f64 + a[1] as f64
}

/// The double-float nearest `v` (to about 2^-48 relative): what the GPU uploads for moments
/// computed elsewhere.
pub fn df_from_f64(v: f64) -> Df {
    let hi = v as f32;
    [hi, (v - hi as f64) as f32]
}

/// The f32 path over whole volumes, voxel by voxel in the shader's order (for tests).
#[derive(Clone, Debug)]
pub struct Accumulator {
    count: u32,
    state: Array3<State>,
}

impl Accumulator {
    pub fn new(shape: [usize; 3]) -> Self {
        Accumulator {
            count: 0,
            state: Array3::default(shape),
        }
    }

    pub fn add(&mut self, vol: ArrayView3<f32>) {
        self.count += 1;
        let count = self.count;
        Zip::from(&mut self.state)
            .and(vol)
            .for_each(|st, &x| accumulate(st, x, count));
    }

    /// The double-float mean and std of each voxel.
    pub fn moments(&self, p: &ZscoreParams) -> (Array3<Df>, Array3<Df>) {
        let pairs = self.state.mapv(|st| finalize(&st, self.count, p.ddof));
        (pairs.mapv(|(m, _)| m), pairs.mapv(|(_, s)| s))
    }
}

/// `normalized` of each voxel of `vol`.
pub fn normalize(
    vol: ArrayView3<f32>,
    mean: &Array3<Df>,
    std: &Array3<Df>,
    p: &ZscoreParams,
) -> Array3<f32> {
    let zero = p.constant == ConstantVoxels::Zero;
    let mut out = Array3::zeros(vol.raw_dim());
    Zip::from(&mut out)
        .and(vol)
        .and(mean)
        .and(std)
        .for_each(|o, &x, &m, &s| *o = normalized(x, m, s, zero));
    out
}
