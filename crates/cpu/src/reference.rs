//! Plain, obviously-correct references that the fast kernels are tested against (RustFFT's `dft.rs`,
//! imageproc's `reference_median_filter`): written to be simple, not fast.

use gpuprep_core::boundary::filter_index;
use gpuprep_core::complex::C32;
use gpuprep_core::params::MedianParams;
use ndarray::{Array3, ArrayView3};
use rustfft::num_complex::Complex64;

/// Median by sorting the whole window of every voxel.
pub fn median3d_sorted(input: ArrayView3<f32>, p: &MedianParams) -> Array3<f32> {
    let (nz, ny, nx) = input.dim();
    let r = p.size.map(|s| (s / 2) as isize);
    Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
        let mut window = Vec::new();
        for dz in -r[0]..=r[0] {
            for dy in -r[1]..=r[1] {
                for dx in -r[2]..=r[2] {
                    let iz = filter_index(z as isize + dz, nz, p.mode);
                    let iy = filter_index(y as isize + dy, ny, p.mode);
                    let ix = filter_index(x as isize + dx, nx, p.mode);
                    window.push(match (iz, iy, ix) {
                        (Some(a), Some(b), Some(c)) => input[[a, b, c]],
                        _ => p.cval,
                    });
                }
            }
        }
        window.sort_by(|a, b| a.total_cmp(b));
        window[window.len() / 2]
    })
}

/// The 3-D DFT straight from its definition, in f64: `X[k] = Σ x[n] exp(∓2πi k·n / N)`, with the
/// inverse divided by N. O(N²): small volumes only.
pub fn dft3(input: &Array3<C32>, inverse: bool) -> Array3<C32> {
    let (nz, ny, nx) = input.dim();
    let sign = if inverse { 1.0 } else { -1.0 };
    let scale = if inverse {
        1.0 / input.len() as f64
    } else {
        1.0
    };
    Array3::from_shape_fn((nz, ny, nx), |(kz, ky, kx)| {
        let mut acc = Complex64::default();
        for ((z, y, x), v) in input.indexed_iter() {
            let phase = (kz * z) as f64 / nz as f64
                + (ky * y) as f64 / ny as f64
                + (kx * x) as f64 / nx as f64;
            let w = Complex64::from_polar(1.0, sign * 2.0 * std::f64::consts::PI * phase);
            acc += w * Complex64::new(v.re as f64, v.im as f64);
        }
        let acc = acc * scale;
        C32::new(acc.re as f32, acc.im as f32)
    })
}

/// Integer translation by index arithmetic: `out[i] = input[i - s]`, `cval` outside. What
/// `scipy.ndimage.shift` must give for integer shifts with mode `constant` at any order.
pub fn shift_integer_constant(input: ArrayView3<f32>, s: [i64; 3], cval: f32) -> Array3<f32> {
    let (nz, ny, nx) = input.dim();
    Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
        let src = [z as i64 - s[0], y as i64 - s[1], x as i64 - s[2]];
        if src
            .iter()
            .zip([nz, ny, nx])
            .all(|(&i, n)| i >= 0 && i < n as i64)
        {
            input[[src[0] as usize, src[1] as usize, src[2] as usize]]
        } else {
            cval
        }
    })
}

/// Mean and population/sample standard deviation of each voxel over a whole in-memory series, by the
/// two-pass textbook formula in f64.
pub fn zscore_in_memory(series: &[Array3<f32>], ddof: u32) -> Vec<Array3<f32>> {
    let n = series.len() as f64;
    let shape = series[0].raw_dim();
    let mean = Array3::from_shape_fn(shape, |i| {
        series.iter().map(|v| v[i] as f64).sum::<f64>() / n
    });
    let std = Array3::from_shape_fn(shape, |i| {
        (series
            .iter()
            .map(|v| (v[i] as f64 - mean[i]).powi(2))
            .sum::<f64>()
            / (n - ddof as f64))
            .sqrt()
    });
    series
        .iter()
        .map(|v| Array3::from_shape_fn(v.raw_dim(), |i| ((v[i] as f64 - mean[i]) / std[i]) as f32))
        .collect()
}
