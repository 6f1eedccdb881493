//! Streaming per-voxel z-score over time on the CPU; CPU twin of `shaders/zscore.wgsl`.
//!
//! Pass 1 feeds each volume to a Welford accumulator (f64 mean and sum of squared deviations per voxel,
//! so memory is two f64 volumes whatever the number of timepoints); pass 2 normalizes each volume with
//! those f64 moments (`Moments::mean64`, `std64`), never their float32 roundings. Matches
//! `scipy.stats.zscore(data.astype(float64), axis=0, ddof)` to float32 rounding, including its rule
//! (scipy 1.17 `zmap`: `std <= abs(eps * mean)` with `eps = finfo(z.dtype).eps`) that a voxel is
//! constant and becomes NaN (or 0 on request): here with the f64 eps, as the moments are f64. For
//! float32 data that set is exactly the voxels whose values are all equal: their f64 sum is exact, so
//! scipy's mean is the value and its std 0, as Welford's; a series that differs by one float32 ulp
//! has `std / |mean|` of order 1e-8, far above `eps_f64`.

use crate::backend::Moments;
use crate::params::{ConstantVoxels, ZscoreParams};
use ndarray::{Array3, ArrayView3, Zip};

pub struct Accumulator {
    count: u64,
    mean: Array3<f64>,
    m2: Array3<f64>,
}

impl Accumulator {
    pub fn new(shape: [usize; 3]) -> Self {
        Accumulator {
            count: 0,
            mean: Array3::zeros(shape),
            m2: Array3::zeros(shape),
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn add(&mut self, vol: ArrayView3<f32>) {
        self.count += 1;
        let n = self.count as f64;
        Zip::from(&mut self.mean)
            .and(&mut self.m2)
            .and(vol)
            .par_for_each(|mean, m2, &x| {
                let x = x as f64;
                let delta = x - *mean;
                *mean += delta / n;
                *m2 += delta * (x - *mean);
            });
    }

    /// Mean and standard deviation with `ddof`; NaN std when `count <= ddof`, as numpy gives.
    pub fn moments(&self, p: &ZscoreParams) -> Moments {
        let dof = self.count as f64 - p.ddof as f64;
        let std = self.m2.mapv(|m2| std_from_m2(m2, dof));
        Moments::from_f64(self.mean.clone(), std)
    }
}

/// `sqrt(m2 / dof)`, NaN when `dof <= 0` (numpy's answer for `n <= ddof`).
#[inline]
pub fn std_from_m2(m2: f64, dof: f64) -> f64 {
    if dof > 0.0 {
        (m2 / dof).sqrt()
    } else {
        f64::NAN
    }
}

/// scipy's test for a constant time series on f64 moments: `std <= |eps_f64 · mean|` (false for a
/// NaN std).
#[inline]
pub fn is_constant(mean: f64, std: f64) -> bool {
    std <= (f64::EPSILON * mean).abs()
}

pub fn normalize(vol: ArrayView3<f32>, m: &Moments, p: &ZscoreParams) -> Array3<f32> {
    let mut out = Array3::<f32>::zeros(vol.raw_dim());
    Zip::from(&mut out)
        .and(vol)
        .and(m.mean64())
        .and(m.std64())
        .par_for_each(|o, &x, &mean, &std| {
            *o = if is_constant(mean, std) {
                match p.constant {
                    ConstantVoxels::Nan => f32::NAN,
                    ConstantVoxels::Zero => 0.0,
                }
            } else {
                ((x as f64 - mean) / std) as f32
            };
        });
    out
}
