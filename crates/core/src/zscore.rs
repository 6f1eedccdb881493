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
use crate::chunked::ChunkedBlock;
use crate::error::{Error, Result};
use crate::params::{ConstantVoxels, ZscoreParams};
use ndarray::{
    s, Array2, Array3, Array4, ArrayBase, ArrayView2, ArrayView3, ArrayView4, ArrayViewMut5, Axis,
    Ix3, Zip,
};
use rayon::prelude::*;

#[derive(Clone, Debug)]
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

    /// Adds one volume (float32 from the pipeline; float64 from the Python package's `zscore`).
    pub fn add<T: Copy + Into<f64> + Sync>(&mut self, vol: ArrayView3<T>) {
        self.count += 1;
        let n = self.count as f64;
        Zip::from(&mut self.mean)
            .and(&mut self.m2)
            .and(vol)
            .par_for_each(|mean, m2, &x| {
                let x: f64 = x.into();
                let delta = x - *mean;
                *mean += delta / n;
                *m2 += delta * (x - *mean);
            });
    }

    /// Adds each volume of a (t, z, y, x) block in time order: `add` per volume, bit for bit, but each
    /// run of voxels' state stays in cache across the block's timepoints instead of streaming through
    /// memory once per volume. Errors when the block's volumes have another shape.
    pub fn add_block<T: Copy + Into<f64> + Send + Sync>(
        &mut self,
        block: ArrayView4<T>,
    ) -> Result<()> {
        let (t, z, y, x) = block.dim();
        if (z, y, x) != self.mean.dim() {
            return Err(Error::Data(format!(
                "cannot add volumes {} to moments of volumes {}",
                fmt_dim((z, y, x)),
                fmt_dim(self.mean.dim())
            )));
        }
        let Some(data) = block.as_slice() else {
            block.outer_iter().for_each(|v| self.add(v));
            return Ok(());
        };
        let voxels = z * y * x;
        let first = self.count;
        let means = self
            .mean
            .as_slice_mut()
            .expect("owned moments are contiguous");
        let m2s = self
            .m2
            .as_slice_mut()
            .expect("owned moments are contiguous");
        means
            .par_chunks_mut(SERIES_CHUNK)
            .zip(m2s.par_chunks_mut(SERIES_CHUNK))
            .enumerate()
            .for_each(|(r, (mean, m2))| {
                let start = r * SERIES_CHUNK;
                for i in 0..t {
                    let count = (first + i as u64 + 1) as f64;
                    let row = &data[i * voxels + start..i * voxels + start + mean.len()];
                    for ((mean, m2), &x) in mean.iter_mut().zip(m2.iter_mut()).zip(row) {
                        let x: f64 = x.into();
                        let delta = x - *mean;
                        *mean += delta / count;
                        *m2 += delta * (x - *mean);
                    }
                }
            });
        self.count += t as u64;
        Ok(())
    }

    /// Folds in `other`'s volumes (Chan, Golub and LeVeque's pairwise update): the moments of the two
    /// series concatenated, equal to one pass over both to f64 rounding. Errors for another shape.
    pub fn merge(&mut self, other: &Accumulator) -> Result<()> {
        if self.mean.dim() != other.mean.dim() {
            return Err(Error::Data(format!(
                "cannot merge moments of volumes {} into moments of volumes {}",
                fmt_dim(other.mean.dim()),
                fmt_dim(self.mean.dim())
            )));
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        if other.count == 0 {
            return Ok(());
        }
        let n = na + nb;
        Zip::from(&mut self.mean)
            .and(&mut self.m2)
            .and(&other.mean)
            .and(&other.m2)
            .par_for_each(|mean, m2, &mb, &m2b| {
                let delta = mb - *mean;
                *mean += delta * (nb / n);
                *m2 += m2b + delta * delta * (na * nb / n);
            });
        self.count += other.count;
        Ok(())
    }

    /// `self` and `other` merged into the memory of `mean` and `m2` (buffers reused, of this shape),
    /// neither changed: a copy of `self` then `merge(other)`, bit for bit, in one pass over the
    /// three arrays instead of two.
    pub fn merged_in(
        &self,
        other: &Accumulator,
        mut mean: Array3<f64>,
        mut m2: Array3<f64>,
    ) -> Result<Accumulator> {
        if self.mean.dim() != other.mean.dim() {
            return Err(Error::Data(format!(
                "cannot merge moments of volumes {} into moments of volumes {}",
                fmt_dim(other.mean.dim()),
                fmt_dim(self.mean.dim())
            )));
        }
        assert!(
            mean.dim() == self.mean.dim() && m2.dim() == self.m2.dim(),
            "merged_in: buffers of the accumulator's shape"
        );
        if other.count == 0 {
            return Ok(self.copy_in(mean, m2));
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        Zip::from(&mut mean)
            .and(&mut m2)
            .and(&self.mean)
            .and(&self.m2)
            .and(&other.mean)
            .and(&other.m2)
            .par_for_each(|mean, m2, &ma, &m2a, &mb, &m2b| {
                let delta = mb - ma;
                *mean = ma + delta * (nb / n);
                *m2 = m2a + (m2b + delta * delta * (na * nb / n));
            });
        Ok(Accumulator {
            count: self.count + other.count,
            mean,
            m2,
        })
    }

    /// The running state: count, per-voxel mean and sum of squared deviations (M2).
    pub fn parts(&self) -> (u64, &Array3<f64>, &Array3<f64>) {
        (self.count, &self.mean, &self.m2)
    }

    /// The running state, consumed (its arrays for reuse).
    pub fn into_parts(self) -> (u64, Array3<f64>, Array3<f64>) {
        (self.count, self.mean, self.m2)
    }

    /// An empty accumulator in the memory of `mean` and `m2` (buffers reused: zero-filled here),
    /// which must have one shape.
    pub fn new_in(mut mean: Array3<f64>, mut m2: Array3<f64>) -> Self {
        assert_eq!(mean.dim(), m2.dim(), "new_in: mean and M2 of one shape");
        mean.fill(0.0);
        m2.fill(0.0);
        Accumulator { count: 0, mean, m2 }
    }

    /// A copy of this accumulator in the memory of `mean` and `m2` (buffers reused), which must
    /// have its shape.
    pub fn copy_in(&self, mut mean: Array3<f64>, mut m2: Array3<f64>) -> Self {
        assert!(
            mean.dim() == self.mean.dim() && m2.dim() == self.m2.dim(),
            "copy_in: buffers of the accumulator's shape"
        );
        mean.assign(&self.mean);
        m2.assign(&self.m2);
        Accumulator {
            count: self.count,
            mean,
            m2,
        }
    }

    /// An accumulator from `parts` (a pickled one): mean and M2 must have one shape, M2 no negative
    /// value, and a zero count all-zero arrays.
    pub fn from_parts(count: u64, mean: Array3<f64>, m2: Array3<f64>) -> Result<Self> {
        if mean.dim() != m2.dim() {
            return Err(Error::Data(format!(
                "moments: mean is {} but M2 is {}",
                fmt_dim(mean.dim()),
                fmt_dim(m2.dim())
            )));
        }
        if m2.iter().any(|&v| v < 0.0) {
            return Err(Error::Data("moments: M2 has negative values".into()));
        }
        if count == 0 && (mean.iter().any(|&v| v != 0.0) || m2.iter().any(|&v| v != 0.0)) {
            return Err(Error::Data(
                "moments: a count of 0 with non-zero mean or M2".into(),
            ));
        }
        Ok(Accumulator { count, mean, m2 })
    }

    /// Mean and standard deviation with `ddof`; NaN std when `count <= ddof`, as numpy gives.
    pub fn moments(&self, p: &ZscoreParams) -> Moments {
        let dof = self.count as f64 - p.ddof as f64;
        let std = self.m2.mapv(|m2| std_from_m2(m2, dof));
        Moments::from_f64(self.mean.clone(), std)
    }
}

/// The mean and standard deviation (with `ddof`) of partial moments `(count, mean, m2)` of the same
/// voxels merged in order: what `Accumulator::merge` of each into a copy of the first, then
/// `moments`, give, bit for bit, in one pass and without the copy (the dask front end's slab of the
/// stats from the workers' partials).
pub fn merged_stats(
    parts: &[(u64, ArrayView3<'_, f64>, ArrayView3<'_, f64>)],
    ddof: u32,
) -> Result<(Array3<f64>, Array3<f64>)> {
    let Some((_, first, _)) = parts.first() else {
        return Err(Error::Data("merged stats of no moments".into()));
    };
    let dim = first.dim();
    if let Some((_, m, m2)) = parts
        .iter()
        .find(|(_, m, m2)| m.dim() != dim || m2.dim() != dim)
    {
        return Err(Error::Data(format!(
            "cannot merge moments of volumes {} and {} with moments of volumes {}",
            fmt_dim(m.dim()),
            fmt_dim(m2.dim()),
            fmt_dim(dim)
        )));
    }
    let total: u64 = parts.iter().map(|p| p.0).sum();
    let dof = total as f64 - ddof as f64;
    let mut mean = Array3::<f64>::zeros(dim);
    let mut std = Array3::<f64>::zeros(dim);
    let standard: Vec<_> = parts
        .iter()
        .map(|(c, m, m2)| (*c, m.as_standard_layout(), m2.as_standard_layout()))
        .collect();
    let (mean_out, std_out) = (
        mean.as_slice_mut().expect("a new array is contiguous"),
        std.as_slice_mut().expect("a new array is contiguous"),
    );
    mean_out
        .par_chunks_mut(SERIES_CHUNK)
        .zip(std_out.par_chunks_mut(SERIES_CHUNK))
        .enumerate()
        .for_each(|(r, (mean_out, std_out))| {
            let at = r * SERIES_CHUNK;
            let len = mean_out.len();
            let part = |k: usize| {
                let (c, m, m2) = &standard[k];
                let (m, m2) = (
                    m.as_slice().expect("standard layout"),
                    m2.as_slice().expect("standard layout"),
                );
                (*c, &m[at..at + len], &m2[at..at + len])
            };
            let (mut na, m, m2) = part(0);
            mean_out.copy_from_slice(m);
            std_out.copy_from_slice(m2);
            for k in 1..standard.len() {
                let (nb, mb, m2b) = part(k);
                if nb == 0 {
                    continue;
                }
                let (fa, fb) = (na as f64, nb as f64);
                let n = fa + fb;
                for (((mean, m2), &mb), &m2b) in
                    mean_out.iter_mut().zip(std_out.iter_mut()).zip(mb).zip(m2b)
                {
                    let delta = mb - *mean;
                    *mean += delta * (fb / n);
                    *m2 += m2b + delta * delta * (fa * fb / n);
                }
                na += nb;
            }
            std_out.iter_mut().for_each(|s| *s = std_from_m2(*s, dof));
        });
    Ok((mean, std))
}

/// `sqrt(m2 / dof)`, NaN when `dof <= 0` (numpy's answer for `n <= ddof`).
#[inline(always)]
pub fn std_from_m2(m2: f64, dof: f64) -> f64 {
    if dof > 0.0 {
        (m2 / dof).sqrt()
    } else {
        f64::NAN
    }
}

/// scipy's test for a constant time series on f64 moments: `std <= |eps_f64 · mean|` (false for a
/// NaN std).
#[inline(always)]
pub fn is_constant(mean: f64, std: f64) -> bool {
    std <= (f64::EPSILON * mean).abs()
}

fn fmt_dim((z, y, x): (usize, usize, usize)) -> String {
    crate::fmt::fmt_shape(&[z, y, x])
}

/// A sample type the z-score reads and writes: float32 (the pipeline) or float64 (the Python
/// package's `zscore` of float64 data, which would lose small variations around a large mean in
/// float32).
pub trait Sample: Copy + Into<f64> + Send + Sync + Default {
    fn from_f64(v: f64) -> Self;
    const NAN: Self;
}

impl Sample for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    const NAN: f32 = f32::NAN;
}

impl Sample for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> f64 {
        v
    }
    const NAN: f64 = f64::NAN;
}

/// Voxels per task of `zscore_series`: their running state (two f64) and a few timepoints of samples
/// stay in the core's cache while the series is swept in time order.
const SERIES_CHUNK: usize = 2048;

/// The z-score of a whole (t, voxels) series held in memory: for each run of voxels, Welford over
/// time then normalization, so each sample is read twice from cache rather than the f64 state
/// streamed through memory once per timepoint. The arithmetic per voxel is `Accumulator::add`'s in
/// time order and `normalize`'s, so the values are those of an `Accumulator` over the same volumes,
/// bit for bit. Returns the z-scores and the number of constant voxels.
pub fn zscore_series<T: Sample>(series: ArrayView2<T>, p: &ZscoreParams) -> (Array2<T>, usize) {
    let (t, _) = series.dim();
    let mut out = Array2::<T>::default(series.raw_dim());
    let dof = t as f64 - p.ddof as f64;
    let constant = out
        .axis_chunks_iter_mut(Axis(1), SERIES_CHUNK)
        .into_par_iter()
        .zip(
            series
                .axis_chunks_iter(Axis(1), SERIES_CHUNK)
                .into_par_iter(),
        )
        .map(|(mut out, input)| {
            let n = input.dim().1;
            let (mut mean, mut m2) = (vec![0.0f64; n], vec![0.0f64; n]);
            for (i, row) in input.axis_iter(Axis(0)).enumerate() {
                let count = (i + 1) as f64;
                for ((mean, m2), &x) in mean.iter_mut().zip(&mut m2).zip(row) {
                    let x: f64 = x.into();
                    let delta = x - *mean;
                    *mean += delta / count;
                    *m2 += delta * (x - *mean);
                }
            }
            let std: Vec<f64> = m2.iter().map(|&m2| std_from_m2(m2, dof)).collect();
            for (row, mut o) in input.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
                for (((o, &x), &mean), &std) in o.iter_mut().zip(row).zip(&mean).zip(&std) {
                    *o = normalized(x, mean, std, p);
                }
            }
            mean.iter()
                .zip(&std)
                .filter(|(&m, &s)| is_constant(m, s))
                .count()
        })
        .sum();
    (out, constant)
}

/// The shape all `volumes` share; an error for an empty series or one volume of another shape.
fn common_shape<S: ndarray::RawData>(volumes: &[ArrayBase<S, Ix3>]) -> Result<Ix3> {
    let Some(first) = volumes.first() else {
        return Err(Error::Data("z-score of an empty series".into()));
    };
    match volumes.iter().position(|v| v.raw_dim() != first.raw_dim()) {
        Some(t) => Err(Error::Data(format!(
            "z-score: volume {t} has shape {}, volume 0 {}",
            fmt_dim(volumes[t].dim()),
            fmt_dim(first.dim())
        ))),
        None => Ok(first.raw_dim()),
    }
}

/// One task of `zscore_volumes_in_place`: a run of the mean and std volumes and that run of each volume.
type Run<'a, T> = (&'a mut [f64], &'a mut [f64], Vec<&'a mut [T]>);

/// The z-score of a series held in memory as separate volumes (pass 1's results, when they fit the
/// memory budget), in place: `zscore_series`'s cache-blocked sweep (Welford over time, then
/// normalization, per run of voxels) over the volumes' common voxel runs, so the f64 state never
/// streams through memory once per timepoint. The arithmetic per voxel is `Accumulator::add`'s in time
/// order and `normalize`'s, so the values are those of an `Accumulator` over the same volumes, bit for
/// bit; the moments it returns are that accumulator's. Errors when the volumes' shapes differ.
pub fn zscore_volumes_in_place<T: Sample>(
    volumes: &mut [Array3<T>],
    p: &ZscoreParams,
) -> Result<Moments> {
    let shape = common_shape(volumes)?;
    let dof = volumes.len() as f64 - p.ddof as f64;
    let mut mean64 = Array3::<f64>::zeros(shape);
    let mut std64 = Array3::<f64>::zeros(shape);
    // One task per run of voxels: that run of every volume, and of the moments.
    let mut runs: Vec<Run<'_, T>> = mean64
        .as_slice_mut()
        .expect("a new array is contiguous")
        .chunks_mut(SERIES_CHUNK)
        .zip(
            std64
                .as_slice_mut()
                .expect("a new array is contiguous")
                .chunks_mut(SERIES_CHUNK),
        )
        .map(|(m, s)| (m, s, Vec::with_capacity(volumes.len())))
        .collect();
    for v in volumes.iter_mut() {
        let v = v
            .as_slice_mut()
            .ok_or_else(|| Error::Data("z-score: a volume is not contiguous".into()))?;
        for (run, part) in runs.iter_mut().zip(v.chunks_mut(SERIES_CHUNK)) {
            run.2.push(part);
        }
    }
    runs.into_par_iter().for_each(|(mean, std, mut samples)| {
        let m2 = std;
        for (i, row) in samples.iter().enumerate() {
            let count = (i + 1) as f64;
            for ((mean, m2), &x) in mean.iter_mut().zip(m2.iter_mut()).zip(row.iter()) {
                let x: f64 = x.into();
                let delta = x - *mean;
                *mean += delta / count;
                *m2 += delta * (x - *mean);
            }
        }
        let std = m2;
        std.iter_mut().for_each(|s| *s = std_from_m2(*s, dof));
        for row in samples.iter_mut() {
            for ((x, &mean), &std) in row.iter_mut().zip(mean.iter()).zip(std.iter()) {
                *x = normalized(*x, mean, std, p);
            }
        }
    });
    Ok(Moments::from_f64(mean64, std64))
}

/// The z-score of volumes held in memory, one block of voxels at a time, written straight into the
/// output's chunks: for each block of one chunk along z and y and every voxel along x (whole rows:
/// the sweep then reads each volume in long contiguous runs, where a chunk's short rows cost it a
/// third of its speed in cache and TLB misses), in z, y order, Welford over time and then
/// normalization of the block's voxels, handed to `emit` as a `ChunkedBlock` (every timepoint, in
/// chunks of `chunk` (t, z, y, x)) before the next block is computed. The caller can thus store each
/// block while the next is computed, rather than after the whole series, and stores its chunks as
/// they are. Per voxel the arithmetic is `zscore_volumes_in_place`'s (an `Accumulator`'s in time
/// order, then `normalize`'s), bit for bit; the volumes are not changed. Returns the moments.
///
/// `spare` may hand back a block already emitted, once the caller is done with it: its buffer is
/// filled again rather than a new one allocated (fresh memory costs a page fault and zeroing per
/// page, as much as the z-score itself).
pub fn zscore_volumes_by_block<T: Sample>(
    volumes: &[ArrayView3<'_, T>],
    p: &ZscoreParams,
    chunk: [usize; 4],
    spare: impl FnMut() -> Option<ChunkedBlock<T>>,
    emit: impl FnMut(ChunkedBlock<T>) -> Result<()>,
) -> Result<Moments> {
    by_block_at(crate::simd::level(), volumes, p, chunk, spare, emit)
}

/// `zscore_volumes_by_block` at a given vector level (every level gives the same bits).
fn by_block_at<T: Sample>(
    level: crate::simd::Level,
    volumes: &[ArrayView3<'_, T>],
    p: &ZscoreParams,
    chunk: [usize; 4],
    mut spare: impl FnMut() -> Option<ChunkedBlock<T>>,
    mut emit: impl FnMut(ChunkedBlock<T>) -> Result<()>,
) -> Result<Moments> {
    let shape = common_shape(volumes)?;
    let [nz, ny, nx] = [shape[0], shape[1], shape[2]];
    let data: Vec<&[T]> = volumes
        .iter()
        .map(|v| {
            v.to_slice()
                .ok_or_else(|| Error::Data("z-score: a volume is not contiguous".into()))
        })
        .collect::<Result<_>>()?;
    let chunk = chunk.map(|c| c.max(1));
    let t = volumes.len();
    let dof = t as f64 - p.ddof as f64;
    let mut mean64 = Array3::<f64>::zeros(shape);
    let mut std64 = Array3::<f64>::zeros(shape);
    for z0 in (0..nz).step_by(chunk[1]) {
        for y0 in (0..ny).step_by(chunk[2]) {
            let (z1, y1) = ((z0 + chunk[1]).min(nz), (y0 + chunk[2]).min(ny));
            let (by, bx) = (y1 - y0, nx);
            let (origin, extent) = ([z0, y0, 0], [t, z1 - z0, by, bx]);
            // Every held element is written below; `reuse` keeps the padding zero.
            let mut out = match spare() {
                Some(b) => b.reuse(chunk, origin, extent)?,
                None => ChunkedBlock::new(chunk, origin, extent)?,
            };
            let mut means = mean64.slice_mut(s![z0..z1, y0..y1, ..]);
            let mut stds = std64.slice_mut(s![z0..z1, y0..y1, ..]);
            // One task per z plane of the block: its state (two f64 planes) stays in cache while
            // the block's samples are read twice, in time order.
            out.planes_mut()
                .into_par_iter()
                .zip(means.axis_iter_mut(Axis(0)).into_par_iter())
                .zip(stds.axis_iter_mut(Axis(0)).into_par_iter())
                .enumerate()
                .for_each(|(dz, ((out, mut mean_out), mut std_out))| {
                    let mut mean = vec![0.0f64; by * bx];
                    let mut std = vec![0.0f64; by * bx];
                    let plane = Plane {
                        data: &data,
                        first: (z0 + dz) * ny * nx + y0 * nx,
                        stride: nx,
                        width: bx,
                        rows: by,
                        dof,
                        p,
                        mean: &mut mean,
                        std: &mut std,
                        out,
                    };
                    crate::simd::dispatch!(level, sweep_plane, [T: Sample], (plane: Plane<'_, T>));
                    for (dst, src) in mean_out.iter_mut().zip(&mean) {
                        *dst = *src;
                    }
                    for (dst, src) in std_out.iter_mut().zip(&std) {
                        *dst = *src;
                    }
                });
            emit(out)?;
        }
    }
    Ok(Moments::from_f64(mean64, std64))
}

/// One z plane of one block of `zscore_volumes_by_block`: `rows` rows of `width` voxels starting at
/// element `first` of each volume, `stride` apart.
struct Plane<'a, T> {
    data: &'a [&'a [T]],
    first: usize,
    stride: usize,
    width: usize,
    rows: usize,
    dof: f64,
    p: &'a ZscoreParams,
    /// The plane's mean and std (rows of `width`), written here.
    mean: &'a mut [f64],
    std: &'a mut [f64],
    /// The plane's z-scores in the block's chunks: (t chunks, x chunks, ct, cy, cx).
    out: ArrayViewMut5<'a, T>,
}

/// Welford over time, then normalization, for one `Plane`: compiled once per vector level
/// (`simd::dispatch!`), so every helper it calls is inlined.
#[inline(always)]
fn sweep_plane<T: Sample>(a: Plane<'_, T>) {
    let Plane {
        data,
        first,
        stride,
        width,
        rows: nrows,
        dof,
        p,
        mean,
        std,
        mut out,
    } = a;
    #[inline(always)]
    fn rows<T>(v: &[T], first: usize, stride: usize, width: usize, y: usize) -> &[T] {
        let at = first + y * stride;
        &v[at..at + width]
    }
    let row = |v, y| rows(v, first, stride, width, y);
    let m2 = std;
    for (i, v) in data.iter().enumerate() {
        let count = (i + 1) as f64;
        for (y, (mean, m2)) in mean
            .chunks_exact_mut(width)
            .zip(m2.chunks_exact_mut(width))
            .enumerate()
        {
            for ((mean, m2), &x) in mean.iter_mut().zip(m2.iter_mut()).zip(row(v, y)) {
                let x: f64 = x.into();
                let delta = x - *mean;
                *mean += delta / count;
                *m2 += delta * (x - *mean);
            }
        }
    }
    let std = m2;
    std.iter_mut().for_each(|s| *s = std_from_m2(*s, dof));
    normalize_rows(data, first, stride, width, nrows, mean, std, p, &mut out);
}

/// The z-scores of one z plane of a block, written into its chunks: `out` (t chunks, x chunks, ct,
/// cy, cx), from `nrows` rows of `width` voxels starting at element `first` of each volume of
/// `data`, `stride` apart, and the plane's f64 `mean` and `std` (rows of `width`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize_rows<T: Sample>(
    data: &[&[T]],
    first: usize,
    stride: usize,
    width: usize,
    nrows: usize,
    mean: &[f64],
    std: &[f64],
    p: &ZscoreParams,
    out: &mut ArrayViewMut5<'_, T>,
) {
    let (_, nxc, ct, _, cx) = out.dim();
    for (t, v) in data.iter().enumerate() {
        for xc in 0..nxc {
            let (x0, len) = (xc * cx, cx.min(width - xc * cx));
            // The chunk's (cy, cx) slab of this plane at this timepoint: contiguous.
            let mut slab = out.slice_mut(s![t / ct, xc, t % ct, .., ..]);
            let slab = slab
                .as_slice_mut()
                .expect("a slab of a standard-layout chunk");
            for y in 0..nrows {
                let o = &mut slab[y * cx..][..len];
                let at = first + y * stride + x0;
                let x = &v[at..at + len];
                let m = &mean[y * width + x0..][..len];
                let s = &std[y * width + x0..][..len];
                for (((o, &x), &mean), &std) in o.iter_mut().zip(x).zip(m).zip(s) {
                    *o = normalized(x, mean, std, p);
                }
            }
        }
    }
}

/// The second pass of a z-score whose moments are known (the dask front end's, merged from its
/// blocks): `volumes`, some timepoints (t, z, y, x), normalized by the f64 `mean` and `std` straight
/// into chunks of `chunk` (t, z, y, x), one `ChunkedBlock` per chunk along z and y (every timepoint
/// given, whole rows along x) handed to `emit` in order, as `zscore_volumes_by_block` hands its own.
/// The values are `normalize_block_with`'s, bit for bit; no (t, z, y, x) array is made and none
/// gathered into chunks.
pub fn normalize_volumes_by_block<T: Sample>(
    volumes: ArrayView4<'_, T>,
    mean: ArrayView3<'_, f64>,
    std: ArrayView3<'_, f64>,
    p: &ZscoreParams,
    chunk: [usize; 4],
    spare: impl FnMut() -> Option<ChunkedBlock<T>>,
    emit: impl FnMut(ChunkedBlock<T>) -> Result<()>,
) -> Result<()> {
    normalize_by_block_at(
        crate::simd::level(),
        volumes,
        mean,
        std,
        p,
        chunk,
        spare,
        emit,
    )
}

/// `normalize_volumes_by_block` at a given vector level (every level gives the same bits).
#[allow(clippy::too_many_arguments)]
fn normalize_by_block_at<T: Sample>(
    level: crate::simd::Level,
    volumes: ArrayView4<'_, T>,
    mean: ArrayView3<'_, f64>,
    std: ArrayView3<'_, f64>,
    p: &ZscoreParams,
    chunk: [usize; 4],
    mut spare: impl FnMut() -> Option<ChunkedBlock<T>>,
    mut emit: impl FnMut(ChunkedBlock<T>) -> Result<()>,
) -> Result<()> {
    let (t, nz, ny, nx) = volumes.dim();
    if (nz, ny, nx) != mean.dim() || (nz, ny, nx) != std.dim() {
        return Err(Error::Data(format!(
            "cannot normalize volumes {} with moments of volumes {} and {}",
            fmt_dim((nz, ny, nx)),
            fmt_dim(mean.dim()),
            fmt_dim(std.dim())
        )));
    }
    let contiguous = "z-score: the volumes, mean and std must be contiguous (C order)";
    let (Some(all), Some(means), Some(stds)) =
        (volumes.as_slice(), mean.as_slice(), std.as_slice())
    else {
        return Err(Error::Data(contiguous.into()));
    };
    if t == 0 || nz * ny * nx == 0 {
        return Ok(());
    }
    let data: Vec<&[T]> = all.chunks_exact(nz * ny * nx).collect();
    let chunk = chunk.map(|c| c.max(1));
    for z0 in (0..nz).step_by(chunk[1]) {
        for y0 in (0..ny).step_by(chunk[2]) {
            let (z1, y1) = ((z0 + chunk[1]).min(nz), (y0 + chunk[2]).min(ny));
            let (origin, extent) = ([z0, y0, 0], [t, z1 - z0, y1 - y0, nx]);
            let mut out = match spare() {
                Some(b) => b.reuse(chunk, origin, extent)?,
                None => ChunkedBlock::new(chunk, origin, extent)?,
            };
            out.planes_mut()
                .into_par_iter()
                .enumerate()
                .for_each(|(dz, out)| {
                    let first = (z0 + dz) * ny * nx + y0 * nx;
                    let rows = (y1 - y0) * nx;
                    let plane = NormalizePlane {
                        data: &data,
                        first,
                        width: nx,
                        rows: y1 - y0,
                        mean: &means[first..first + rows],
                        std: &stds[first..first + rows],
                        p,
                        out,
                    };
                    crate::simd::dispatch!(level, normalize_plane, [T: Sample], (plane: NormalizePlane<'_, T>));
                });
            emit(out)?;
        }
    }
    Ok(())
}

/// One z plane of one block of `normalize_volumes_by_block`.
struct NormalizePlane<'a, T> {
    data: &'a [&'a [T]],
    first: usize,
    width: usize,
    rows: usize,
    mean: &'a [f64],
    std: &'a [f64],
    p: &'a ZscoreParams,
    out: ArrayViewMut5<'a, T>,
}

/// `normalize_rows` of one `NormalizePlane`, compiled once per vector level (`simd::dispatch!`).
#[inline(always)]
fn normalize_plane<T: Sample>(a: NormalizePlane<'_, T>) {
    let NormalizePlane {
        data,
        first,
        width,
        rows,
        mean,
        std,
        p,
        mut out,
    } = a;
    normalize_rows(data, first, width, width, rows, mean, std, p, &mut out);
}

/// One sample's z-score under the constant-voxel rule.
#[inline(always)]
fn normalized<T: Sample>(x: T, mean: f64, std: f64, p: &ZscoreParams) -> T {
    let fill = match p.constant {
        ConstantVoxels::Nan => T::NAN,
        ConstantVoxels::Zero => T::from_f64(0.0),
    };
    // Both computed and one selected, with no branch: loops over rows of voxels then vectorize
    // (the quotient of a constant voxel is discarded, whatever it is).
    let z = T::from_f64((x.into() - mean) / std);
    if is_constant(mean, std) {
        fill
    } else {
        z
    }
}

/// `normalize` of each volume of a (t, z, y, x) block, bit for bit, reading the f64 moments once per
/// block rather than once per volume (runs of voxels across the block's timepoints).
pub fn normalize_block<T: Sample>(
    block: ArrayView4<T>,
    m: &Moments,
    p: &ZscoreParams,
) -> Result<Array4<T>> {
    normalize_block_with(block, m.mean64().view(), m.std64().view(), p)
}

/// `normalize_block` with the f64 mean and std borrowed (the Python package's, not copied).
pub fn normalize_block_with<T: Sample>(
    block: ArrayView4<T>,
    mean: ArrayView3<f64>,
    std: ArrayView3<f64>,
    p: &ZscoreParams,
) -> Result<Array4<T>> {
    let (t, z, y, x) = block.dim();
    if (z, y, x) != mean.dim() || (z, y, x) != std.dim() {
        return Err(Error::Data(format!(
            "cannot normalize volumes {} with moments of volumes {} and {}",
            fmt_dim((z, y, x)),
            fmt_dim(mean.dim()),
            fmt_dim(std.dim())
        )));
    }
    let mut out = Array4::<T>::default(block.raw_dim());
    let (Some(data), Some(means), Some(stds)) = (block.as_slice(), mean.as_slice(), std.as_slice())
    else {
        for (v, mut o) in block.outer_iter().zip(out.outer_iter_mut()) {
            Zip::from(&mut o)
                .and(v)
                .and(mean)
                .and(std)
                .par_for_each(|o, &x, &mean, &std| *o = normalized(x, mean, std, p));
        }
        return Ok(out);
    };
    let voxels = z * y * x;
    if voxels == 0 || t == 0 {
        return Ok(out);
    }
    let mut runs: Vec<Vec<&mut [T]>> = (0..voxels.div_ceil(SERIES_CHUNK))
        .map(|_| Vec::with_capacity(t))
        .collect();
    for o in out
        .as_slice_mut()
        .expect("a new array is contiguous")
        .chunks_mut(voxels)
    {
        for (run, part) in runs.iter_mut().zip(o.chunks_mut(SERIES_CHUNK)) {
            run.push(part);
        }
    }
    runs.into_par_iter().enumerate().for_each(|(r, mut outs)| {
        let start = r * SERIES_CHUNK;
        for (i, o) in outs.iter_mut().enumerate() {
            let row = &data[i * voxels + start..i * voxels + start + o.len()];
            let (mean, std) = (
                &means[start..start + o.len()],
                &stds[start..start + o.len()],
            );
            for (((o, &x), &mean), &std) in o.iter_mut().zip(row).zip(mean).zip(std) {
                *o = normalized(x, mean, std, p);
            }
        }
    });
    Ok(out)
}

pub fn normalize<T: Sample>(vol: ArrayView3<T>, m: &Moments, p: &ZscoreParams) -> Array3<T> {
    let mut out = Array3::<T>::default(vol.raw_dim());
    Zip::from(&mut out)
        .and(vol)
        .and(m.mean64())
        .and(m.std64())
        .par_for_each(|o, &x, &mean, &std| *o = normalized(x, mean, std, p));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn series(values: &[f64], t: usize) -> Vec<Array3<f64>> {
        let voxels = values.len() / t;
        (0..t)
            .map(|i| {
                Array3::from_shape_vec(
                    (1, 1, voxels),
                    values[i * voxels..(i + 1) * voxels].to_vec(),
                )
                .unwrap()
            })
            .collect()
    }

    /// A known answer: the series 1, 2, 3, 4 has mean 2.5 and M2 5, however it is split.
    #[test]
    fn merge_of_halves_is_the_known_answer() {
        let vols = series(&[1.0, 2.0, 3.0, 4.0], 4);
        let (mut a, mut b) = (Accumulator::new([1, 1, 1]), Accumulator::new([1, 1, 1]));
        vols[..1].iter().for_each(|v| a.add(v.view()));
        vols[1..].iter().for_each(|v| b.add(v.view()));
        a.merge(&b).unwrap();
        let (n, mean, m2) = a.parts();
        assert_eq!((n, mean[[0, 0, 0]], m2[[0, 0, 0]]), (4, 2.5, 5.0));
        let merged_into_empty = {
            let mut e = Accumulator::new([1, 1, 1]);
            e.merge(&a).unwrap();
            e
        };
        assert_eq!(merged_into_empty.parts().2[[0, 0, 0]], 5.0);
    }

    #[test]
    fn merge_and_from_parts_refuse_mismatches() {
        let mut a = Accumulator::new([1, 2, 3]);
        let e = a
            .merge(&Accumulator::new([1, 3, 2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("(1, 3, 2)"), "{e}");
        assert!(
            Accumulator::from_parts(1, Array3::zeros([1, 1, 2]), Array3::zeros([1, 2, 1])).is_err()
        );
        assert!(Accumulator::from_parts(
            1,
            Array3::zeros([1, 1, 1]),
            Array3::from_elem([1, 1, 1], -1.0)
        )
        .is_err());
        assert!(
            Accumulator::from_parts(0, Array3::ones([1, 1, 1]), Array3::zeros([1, 1, 1])).is_err()
        );
    }

    /// The block kernels are the per-volume ones bit for bit, contiguous or not, across run
    /// boundaries and after earlier volumes; other shapes are refused.
    #[test]
    fn block_kernels_equal_per_volume_ones() {
        let shape = [2, 3, SERIES_CHUNK / 5 + 7];
        let block =
            ndarray::Array4::from_shape_fn([5, shape[0], shape[1], shape[2]], |(t, z, y, x)| {
                (((t * 31 + z * 7 + y * 3 + x) * 7919) % 1009) as f32 * 0.25 - 100.0
            });
        let p = ZscoreParams::default();
        for view in [block.view(), block.slice(ndarray::s![.., .., .., ..;2])] {
            let dim = [view.dim().1, view.dim().2, view.dim().3];
            let (mut a, mut b) = (Accumulator::new(dim), Accumulator::new(dim));
            a.add(view.index_axis(Axis(0), 4));
            b.add(view.index_axis(Axis(0), 4));
            view.outer_iter().for_each(|v| a.add(v));
            b.add_block(view).unwrap();
            assert_eq!(a.count(), b.count());
            assert!(a
                .mean
                .iter()
                .zip(&b.mean)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(a
                .m2
                .iter()
                .zip(&b.m2)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
            let m = a.moments(&p);
            let got = normalize_block(view, &m, &p).unwrap();
            for (v, g) in view.outer_iter().zip(got.outer_iter()) {
                let want = normalize(v, &m, &p);
                assert!(want
                    .iter()
                    .zip(g.iter())
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
        let mut other = Accumulator::new([1, 1, 1]);
        assert!(other.add_block(block.view()).is_err());
        let m = Accumulator::new([1, 1, 1]).moments(&p);
        assert!(normalize_block(block.view(), &m, &p).is_err());
    }

    /// The in-place kernel over separate volumes is the streaming accumulator and `normalize`, bit for
    /// bit, across run boundaries, with its moments and constant voxels; other shapes are refused.
    #[test]
    fn zscore_volumes_in_place_equals_accumulator_and_normalize() {
        let shape = [3, 5, SERIES_CHUNK / 7 + 11];
        let voxels: usize = shape.iter().product();
        for (t, p) in [
            (6, ZscoreParams::default()),
            (
                4,
                ZscoreParams {
                    ddof: 1,
                    constant: ConstantVoxels::Zero,
                },
            ),
            (1, ZscoreParams::default()),
        ] {
            let volumes: Vec<Array3<f32>> = (0..t)
                .map(|k| {
                    Array3::from_shape_fn(shape, |(z, y, x)| {
                        let i = (z * shape[1] + y) * shape[2] + x;
                        if i % 97 == 3 {
                            -2.5
                        } else {
                            ((i * 7919 + k * 104729) % 1013) as f32 * 0.37 - 50.0
                        }
                    })
                })
                .collect();
            let mut acc = Accumulator::new(shape);
            volumes.iter().for_each(|v| acc.add(v.view()));
            let want_m = acc.moments(&p);
            let mut got = volumes.clone();
            let m = zscore_volumes_in_place(&mut got, &p).unwrap();
            assert_eq!(m.constant_voxels(), want_m.constant_voxels());
            assert!(t == 1 || m.constant_voxels() == voxels.div_ceil(97));
            let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            for (a, b) in m.mean64().iter().zip(want_m.mean64()) {
                assert!(same(*a, *b));
            }
            for (a, b) in m.std64().iter().zip(want_m.std64()) {
                assert!(same(*a, *b));
            }
            for (v, g) in volumes.iter().zip(&got) {
                let want = normalize(v.view(), &want_m, &p);
                for (a, b) in g.iter().zip(want.iter()) {
                    assert!(same(*a as f64, *b as f64), "{a} {b}");
                }
            }
        }
        let mut odd = vec![Array3::<f32>::zeros([2, 2, 2]), Array3::zeros([2, 2, 3])];
        let e = zscore_volumes_in_place(&mut odd, &ZscoreParams::default()).unwrap_err();
        assert!(e.to_string().contains("volume 1 has shape"), "{e}");
        assert!(zscore_volumes_in_place::<f32>(&mut [], &ZscoreParams::default()).is_err());
    }

    /// Volume `k` of a deterministic test series of `shape`.
    fn test_volume(shape: [usize; 3], k: usize) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(z, y, x)| {
            (((z * shape[1] + y) * shape[2] + x) * 7919 + k * 104729) as f32 % 1013.0 * 0.37 - 50.0
        })
    }

    /// The bits of each value, for comparisons bit for bit.
    fn bits(a: &Array3<f64>) -> Vec<u64> {
        a.iter().map(|v| v.to_bits()).collect()
    }

    /// `merged_in` is a copy then `merge`, bit for bit (an empty side either way), and changes neither.
    #[test]
    fn merged_in_equals_copy_then_merge() {
        let shape = [3, 4, 5];
        let vol = |k: usize| test_volume(shape, k);
        let acc = |ks: std::ops::Range<usize>| {
            let mut a = Accumulator::new(shape);
            ks.for_each(|k| a.add(vol(k).view()));
            a
        };
        for (a, b) in [
            (acc(0..3), acc(3..8)),
            (acc(0..0), acc(0..2)),
            (acc(0..2), acc(0..0)),
        ] {
            let (before_a, before_b) = (bits(a.parts().1), bits(b.parts().2));
            let mut want = a.copy_in(Array3::zeros(shape), Array3::zeros(shape));
            want.merge(&b).unwrap();
            let got = a
                .merged_in(
                    &b,
                    Array3::from_elem(shape, 9.0),
                    Array3::from_elem(shape, 9.0),
                )
                .unwrap();
            assert_eq!(got.count(), want.count());
            assert_eq!(bits(got.parts().1), bits(want.parts().1));
            assert_eq!(bits(got.parts().2), bits(want.parts().2));
            assert_eq!((bits(a.parts().1), bits(b.parts().2)), (before_a, before_b));
        }
        let other = Accumulator::new([3, 4, 6]);
        let e = acc(0..1).merged_in(&other, Array3::zeros(shape), Array3::zeros(shape));
        assert!(e.unwrap_err().to_string().contains("cannot merge"));
    }

    /// `merged_stats` of partials is a copy of the first with the others merged into it in order, then
    /// finalized, bit for bit (an empty partial among them, uneven counts, ddof 0 and 1); shapes that
    /// differ are refused.
    #[test]
    fn merged_stats_equal_merge_then_moments() {
        let shape = [3, 4, 5];
        let vol = |k: usize| test_volume(shape, k);
        let mut parts = Vec::new();
        for (start, n) in [(0, 3), (3, 0), (3, 1), (4, 5)] {
            let mut a = Accumulator::new(shape);
            (start..start + n).for_each(|k| a.add(vol(k).view()));
            parts.push(a);
        }
        for ddof in [0, 1] {
            let p = ZscoreParams {
                ddof,
                ..Default::default()
            };
            let mut want = parts[0].copy_in(Array3::zeros(shape), Array3::zeros(shape));
            parts[1..].iter().for_each(|o| want.merge(o).unwrap());
            let want = want.moments(&p);
            let views: Vec<_> = parts
                .iter()
                .map(|a| {
                    let (c, m, m2) = a.parts();
                    (c, m.view(), m2.view())
                })
                .collect();
            let (mean, std) = merged_stats(&views, ddof).unwrap();
            assert_eq!(bits(&mean), bits(want.mean64()));
            assert_eq!(bits(&std), bits(want.std64()));
        }
        let other = Array3::<f64>::zeros([3, 4, 6]);
        let (c, m, m2) = parts[0].parts();
        let e = merged_stats(
            &[(c, m.view(), m2.view()), (1, other.view(), other.view())],
            0,
        );
        assert!(e.unwrap_err().to_string().contains("cannot merge"));
        assert!(merged_stats(&[], 0).is_err());
    }

    /// The known-moments pass (the dask front end's) is `normalize_block_with`, bit for bit, on every
    /// vector level and chunking (clipped at the edges, larger than the block, one voxel, chunks of
    /// more timepoints than the block has): its blocks come in z, y order, tile the volume once, and
    /// their chunks are those of the plain normalized block, padded with zeros; garbage in a spare
    /// block does not leak; a shape mismatch and an error from `emit` are returned.
    #[test]
    fn normalize_volumes_by_block_equals_normalize_block_with() {
        let shape = (5, 7, 13);
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for (t, p, chunk) in [
            (4, ZscoreParams::default(), [4, 2, 3, 5]),
            (
                3,
                ZscoreParams {
                    ddof: 1,
                    constant: ConstantVoxels::Zero,
                },
                [4, 5, 7, 13],
            ),
            (2, ZscoreParams::default(), [1, 1, 1, 1]),
            (1, ZscoreParams::default(), [8, 64, 64, 64]),
        ] {
            let block = Array4::from_shape_fn((t, shape.0, shape.1, shape.2), |(k, z, y, x)| {
                let i = (z * shape.1 + y) * shape.2 + x;
                match i % 97 {
                    5 if k == 0 => f32::NAN,
                    _ => ((i * 7919 + k * 104729) % 1013) as f32 * 0.37 - 50.0,
                }
            });
            // Moments of other volumes too (a block is part of a series), some voxels constant.
            let mut acc = Accumulator::new([shape.0, shape.1, shape.2]);
            acc.add_block(block.view()).unwrap();
            acc.add(Array3::from_shape_fn(shape, |(z, y, x)| (z + y * x) as f32).view());
            let m = acc.moments(&p);
            let (mean, mut std) = (m.mean64().clone(), m.std64().clone());
            std.slice_mut(s![0, 0, ..4]).fill(0.0);
            let want = normalize_block_with(block.view(), mean.view(), std.view(), &p).unwrap();
            for level in crate::simd::available() {
                let mut seen = Array3::<u8>::zeros(shape);
                let mut origins = Vec::new();
                let garbage = Array4::from_elem((t, chunk[1].min(5), chunk[2].min(7), 13), 7.5f32);
                let garbage = ChunkedBlock::from_array(chunk, [0; 3], garbage.view()).unwrap();
                let pool = std::cell::RefCell::new(vec![garbage]);
                normalize_by_block_at(
                    level,
                    block.view(),
                    mean.view(),
                    std.view(),
                    &p,
                    chunk,
                    || pool.borrow_mut().pop(),
                    |b| {
                        let o = b.origin();
                        let [bt, bz, by, bx] = b.extent();
                        assert_eq!((bt, o[2], bx, b.chunk()), (t, 0, 13, chunk));
                        origins.push(o);
                        let part = want.slice(s![.., o[0]..o[0] + bz, o[1]..o[1] + by, ..]);
                        let plain = ChunkedBlock::from_array(chunk, o, part).unwrap();
                        for ((at, c), (want_at, w)) in b.chunks().zip(plain.chunks()) {
                            assert_eq!(at, want_at);
                            assert!(c.iter().zip(w).all(|(a, b)| same(*a, *b)), "{level:?}");
                        }
                        seen.slice_mut(s![o[0]..o[0] + bz, o[1]..o[1] + by, ..])
                            .mapv_inplace(|c| c + 1);
                        pool.borrow_mut().push(b);
                        Ok(())
                    },
                )
                .unwrap();
                assert!(seen.iter().all(|&c| c == 1));
                let mut sorted = origins.clone();
                sorted.sort();
                assert_eq!(origins, sorted);
            }
        }
        let block = Array4::<f32>::zeros((2, 4, 4, 4));
        let (mean, std) = (
            Array3::<f64>::zeros((4, 4, 4)),
            Array3::<f64>::ones((4, 4, 5)),
        );
        let e = normalize_volumes_by_block(
            block.view(),
            mean.view(),
            std.view(),
            &ZscoreParams::default(),
            [1, 2, 4, 4],
            || None,
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("moments of volumes"), "{e}");
        let std = Array3::<f64>::ones((4, 4, 4));
        let mut calls = 0;
        let e = normalize_volumes_by_block(
            block.view(),
            mean.view(),
            std.view(),
            &ZscoreParams::default(),
            [1, 2, 4, 4],
            || None,
            |_| {
                calls += 1;
                Err(Error::Data("disk full".into()))
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("disk full") && calls == 1, "{e}");
    }

    /// The block-wise kernel is the streaming accumulator and `normalize`, bit for bit, whatever the
    /// chunking (clipped at the edges, larger than the volume, one voxel): its blocks come in z, y
    /// order, tile the volume exactly once, carry the normalized values of their voxels in their
    /// chunks, padded with zeros; the volumes are left unchanged.
    #[test]
    fn zscore_volumes_by_block_equals_accumulator_and_normalize() {
        let shape = [5, 7, 13];
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for (t, p, chunk) in [
            (6, ZscoreParams::default(), [4, 2, 3, 5]),
            (
                4,
                ZscoreParams {
                    ddof: 1,
                    constant: ConstantVoxels::Zero,
                },
                [4, 5, 7, 13],
            ),
            (3, ZscoreParams::default(), [1, 1, 1, 1]),
            (1, ZscoreParams::default(), [8, 64, 64, 64]),
        ] {
            let volumes: Vec<Array3<f32>> = (0..t)
                .map(|k| {
                    Array3::from_shape_fn(shape, |(z, y, x)| {
                        let i = (z * shape[1] + y) * shape[2] + x;
                        match i % 97 {
                            3 => -2.5,
                            5 if k == 0 => f32::NAN,
                            _ => ((i * 7919 + k * 104729) % 1013) as f32 * 0.37 - 50.0,
                        }
                    })
                })
                .collect();
            let before = volumes.clone();
            let mut acc = Accumulator::new(shape);
            volumes.iter().for_each(|v| acc.add(v.view()));
            let want_m = acc.moments(&p);
            let want: Vec<Array3<f32>> = volumes
                .iter()
                .map(|v| normalize(v.view(), &want_m, &p))
                .collect();
            let views: Vec<_> = volumes.iter().map(|v| v.view()).collect();
            // Every vector level gives the same bits.
            for level in crate::simd::available() {
                let mut seen = Array3::<u8>::zeros(shape);
                let mut origins = Vec::new();
                // Blocks come back as spares (a garbage-filled one first), as a writer would return them.
                let dim = (t, chunk[1].min(5), chunk[2].min(7), 13);
                let garbage = Array4::from_elem(dim, 7.5f32);
                let garbage = ChunkedBlock::from_array(chunk, [0; 3], garbage.view()).unwrap();
                let pool = std::cell::RefCell::new(vec![garbage]);
                let m = by_block_at(
                    level,
                    &views,
                    &p,
                    chunk,
                    || pool.borrow_mut().pop(),
                    |b| {
                        let (o, a) = (b.origin(), b.to_array());
                        let (bt, bz, by, bx) = a.dim();
                        assert_eq!((bt, o[2], bx), (t, 0, 13));
                        assert_eq!(b.chunk(), chunk);
                        origins.push(o);
                        for ((i, z, y, x), &got) in a.indexed_iter() {
                            let w = want[i][[o[0] + z, o[1] + y, o[2] + x]];
                            assert!(same(got as f64, w as f64), "{got} {w}");
                        }
                        // The padding is zero: the chunks are those of the plain block.
                        let plain = ChunkedBlock::from_array(chunk, o, a.view()).unwrap();
                        for ((at, c), (want_at, w)) in b.chunks().zip(plain.chunks()) {
                            assert_eq!(at, want_at);
                            assert!(c.iter().zip(w).all(|(a, b)| same(*a as f64, *b as f64)));
                        }
                        seen.slice_mut(s![o[0]..o[0] + bz, o[1]..o[1] + by, o[2]..o[2] + bx])
                            .mapv_inplace(|c| c + 1);
                        pool.borrow_mut().push(b);
                        Ok(())
                    },
                )
                .unwrap();
                assert!(seen.iter().all(|&c| c == 1));
                let mut sorted = origins.clone();
                sorted.sort();
                assert_eq!(origins, sorted);
                assert_eq!(m.constant_voxels(), want_m.constant_voxels());
                for (a, b) in m.mean64().iter().zip(want_m.mean64()) {
                    assert!(same(*a, *b));
                }
                for (a, b) in m.std64().iter().zip(want_m.std64()) {
                    assert!(same(*a, *b));
                }
            }
            for (a, b) in volumes.iter().zip(&before) {
                assert!(a.iter().zip(b).all(|(a, b)| same(*a as f64, *b as f64)));
            }
        }
        // An error from `emit` ends the sweep with it.
        let volumes = vec![Array3::<f32>::zeros([4, 4, 4]); 2];
        let views: Vec<_> = volumes.iter().map(|v| v.view()).collect();
        let mut calls = 0;
        let e = zscore_volumes_by_block(
            &views,
            &ZscoreParams::default(),
            [1, 2, 4, 4],
            || None,
            |_| {
                calls += 1;
                Err(Error::Data("disk full".into()))
            },
        )
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(e.to_string().contains("disk full"));
        let odd = [Array3::<f32>::zeros([2, 2, 2]), Array3::zeros([2, 2, 3])];
        let odd: Vec<_> = odd.iter().map(|v| v.view()).collect();
        let e = zscore_volumes_by_block(
            &odd,
            &ZscoreParams::default(),
            [1, 1, 1, 1],
            || None,
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("volume 1 has shape"), "{e}");
        assert!(zscore_volumes_by_block::<f32>(
            &[],
            &ZscoreParams::default(),
            [1, 1, 1, 1],
            || None,
            |_| Ok(())
        )
        .is_err());
    }

    /// The in-memory series kernel is the streaming accumulator, bit for bit, in both precisions,
    /// across chunk boundaries, and counts the constant voxels as `Moments` does.
    #[test]
    fn zscore_series_equals_accumulator_and_normalize() {
        let (t, voxels) = (7, 2 * SERIES_CHUNK + 37);
        let data: Vec<f64> = (0..t * voxels)
            .map(|i| {
                if i % voxels < 5 {
                    3.0
                } else {
                    ((i * 7919) % 1013) as f64 * 0.37 - 50.0
                }
            })
            .collect();
        for p in [
            ZscoreParams::default(),
            ZscoreParams {
                ddof: 1,
                constant: ConstantVoxels::Zero,
            },
        ] {
            let series = ndarray::Array2::from_shape_vec((t, voxels), data.clone()).unwrap();
            let (z, constant) = zscore_series(series.view(), &p);
            let mut acc = Accumulator::new([1, 1, voxels]);
            for row in series.rows() {
                acc.add(row.into_shape_with_order((1, 1, voxels)).unwrap());
            }
            let m = acc.moments(&p);
            assert_eq!(constant, m.constant_voxels());
            assert_eq!(constant, 5);
            for (row, zrow) in series.rows().into_iter().zip(z.rows()) {
                let want = normalize(row.into_shape_with_order((1, 1, voxels)).unwrap(), &m, &p);
                for (a, b) in zrow.iter().zip(want.iter()) {
                    assert!(
                        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                        "{a} {b}"
                    );
                }
            }
            let series32 = series.mapv(|v| v as f32);
            let (z32, _) = zscore_series(series32.view(), &p);
            let mut acc = Accumulator::new([1, 1, voxels]);
            for row in series32.rows() {
                acc.add(row.into_shape_with_order((1, 1, voxels)).unwrap());
            }
            let m = acc.moments(&p);
            for (row, zrow) in series32.rows().into_iter().zip(z32.rows()) {
                let want = normalize(row.into_shape_with_order((1, 1, voxels)).unwrap(), &m, &p);
                for (a, b) in zrow.iter().zip(want.iter()) {
                    assert!(
                        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                        "{a} {b}"
                    );
                }
            }
        }
    }

    proptest! {
        /// Chan's pairwise update over any split into blocks equals one Welford pass to f64 rounding.
        #[test]
        fn merged_blocks_equal_one_pass(
            values in prop::collection::vec(-1e6f64..1e6, 2 * 3..=40 * 3),
            cuts in prop::collection::vec(0usize..40, 0..5),
        ) {
            let t = values.len() / 3;
            let vols = series(&values[..t * 3], t);
            let mut one = Accumulator::new([1, 1, 3]);
            vols.iter().for_each(|v| one.add(v.view()));
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % (t + 1)).collect();
            bounds.extend([0, t]);
            bounds.sort();
            let mut merged = Accumulator::new([1, 1, 3]);
            for w in bounds.windows(2) {
                let mut block = Accumulator::new([1, 1, 3]);
                vols[w[0]..w[1]].iter().for_each(|v| block.add(v.view()));
                merged.merge(&block).unwrap();
            }
            let (n1, mean1, m21) = one.parts();
            let (n2, mean2, m22) = merged.parts();
            prop_assert_eq!(n1, n2);
            for (a, b) in mean1.iter().zip(mean2) {
                prop_assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "{} {}", a, b);
            }
            for (a, b) in m21.iter().zip(m22) {
                prop_assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "{} {}", a, b);
            }
        }
    }
}
