//! Streaming per-voxel z-score over time on the CPU; CPU twin of `shaders/zscore.wgsl`.
//!
//! Pass 1 feeds each volume to a Welford accumulator (f64 mean and sum of squared deviations per voxel,
//! so memory is two f64 volumes whatever the number of timepoints); pass 2 normalizes each volume.
//! Matches `scipy.stats.zscore(data, axis=0, ddof)`, including its rule that a voxel whose standard
//! deviation is at most `|eps_f32 · mean|` is constant and becomes NaN (or 0 on request). Tolerance
//! against scipy: scipy sums in float32; we sum in f64, so ours is the more accurate of the two and they
//! differ by about `eps_f32 · |mean| / std` (written beside the golden test).

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
        let mean = self.mean.mapv(|m| m as f32);
        let std = self.m2.mapv(|m2| {
            if dof > 0.0 {
                (m2 / dof).sqrt() as f32
            } else {
                f32::NAN
            }
        });
        let constant_voxels = Zip::from(&mean)
            .and(&std)
            .fold(0, |acc, &m, &s| acc + is_constant(m, s) as usize);
        Moments {
            mean,
            std,
            constant_voxels,
            id: Moments::next_id(),
        }
    }
}

/// scipy's test for a constant time series: `std <= |eps · mean|` (false for NaN std).
#[inline]
pub fn is_constant(mean: f32, std: f32) -> bool {
    std <= (f32::EPSILON * mean).abs()
}

pub fn normalize(vol: ArrayView3<f32>, m: &Moments, p: &ZscoreParams) -> Array3<f32> {
    let mut out = Array3::<f32>::zeros(vol.raw_dim());
    Zip::from(&mut out)
        .and(vol)
        .and(&m.mean)
        .and(&m.std)
        .par_for_each(|o, &x, &mean, &std| {
            *o = if is_constant(mean, std) {
                match p.constant {
                    ConstantVoxels::Nan => f32::NAN,
                    ConstantVoxels::Zero => 0.0,
                }
            } else {
                ((x as f64 - mean as f64) / std as f64) as f32
            };
        });
    out
}
