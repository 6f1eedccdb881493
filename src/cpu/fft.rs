//! 3-D complex FFT on the CPU (rustfft along each axis); CPU twin of `shaders/fft.wgsl`.
//!
//! numpy's conventions: the forward transform is unnormalized, the inverse divides by N.

use ndarray::{Array3, Axis};
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftDirection, FftPlanner};
use std::sync::Arc;

pub type C32 = Complex<f32>;

/// Plans for one volume shape, made once and reused for every timepoint.
pub struct Fft3 {
    shape: [usize; 3],
    forward: [Arc<dyn Fft<f32>>; 3],
    inverse: [Arc<dyn Fft<f32>>; 3],
}

impl Fft3 {
    pub fn new(shape: [usize; 3]) -> Self {
        let mut planner = FftPlanner::new();
        let plan =
            |planner: &mut FftPlanner<f32>, dir| [0, 1, 2].map(|a| planner.plan_fft(shape[a], dir));
        let forward = plan(&mut planner, FftDirection::Forward);
        let inverse = plan(&mut planner, FftDirection::Inverse);
        Fft3 {
            shape,
            forward,
            inverse,
        }
    }

    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    pub fn forward(&self, data: &mut Array3<C32>) {
        self.run(data, &self.forward);
    }

    pub fn inverse(&self, data: &mut Array3<C32>) {
        self.run(data, &self.inverse);
        let scale = 1.0 / data.len() as f32;
        data.par_mapv_inplace(|v| v * scale);
    }

    fn run(&self, data: &mut Array3<C32>, plans: &[Arc<dyn Fft<f32>>; 3]) {
        assert_eq!(
            data.shape(),
            &self.shape[..],
            "Fft3 planned for another shape"
        );
        for axis in (0..3).rev() {
            let n = self.shape[axis];
            if n <= 1 {
                continue;
            }
            let fft = &plans[axis];
            if axis == 2 && data.is_standard_layout() {
                // Rows are contiguous: transform a plane's worth of rows per call.
                let slice = data.as_slice_mut().expect("standard layout");
                let rows_per_task = (4096 / n).max(1) * n;
                slice.par_chunks_mut(rows_per_task).for_each_init(
                    || vec![C32::default(); fft.get_inplace_scratch_len()],
                    |scratch, chunk| fft.process_with_scratch(chunk, scratch),
                );
                continue;
            }
            // Axis 0 or 1: each 2-D slice across the other outer axis holds whole lanes along
            // `axis` as its first axis; transpose it into rows, transform, transpose back.
            let outer = 1 - axis;
            data.axis_iter_mut(Axis(outer))
                .into_par_iter()
                .for_each_init(
                    || {
                        (
                            Vec::new(),
                            vec![C32::default(); fft.get_inplace_scratch_len()],
                        )
                    },
                    |(buf, scratch): &mut (Vec<C32>, Vec<C32>), mut slab| {
                        let (len, width) = slab.dim();
                        buf.resize(len * width, C32::default());
                        for ((i, j), v) in slab.indexed_iter() {
                            buf[j * len + i] = *v;
                        }
                        fft.process_with_scratch(buf, scratch);
                        for ((i, j), v) in slab.indexed_iter_mut() {
                            *v = buf[j * len + i];
                        }
                    },
                );
        }
    }
}

/// Real volume to complex, the input of the forward transform.
pub fn to_complex(v: ndarray::ArrayView3<f32>) -> Array3<C32> {
    let mut out = Array3::<C32>::default(v.raw_dim());
    ndarray::Zip::from(&mut out)
        .and(&v)
        .par_for_each(|o, &x| *o = C32::new(x, 0.0));
    out
}
