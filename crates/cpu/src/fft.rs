//! 3-D FFTs on the CPU (rustfft / realfft along each axis): `Fft3`, the complex transform that is the CPU
//! twin of `shaders/fft.wgsl`, and `RealFft3`, the real-input transform the CPU registration uses.
//!
//! numpy's conventions: the forward transform is unnormalized, the inverse divides by N.

use crate::cross_power::{ArgMax, CoarseWindow};
use ndarray::{Array3, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;
use realfft::{ComplexToReal, FftError, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftDirection, FftPlanner};
use std::sync::Arc;

pub type C32 = Complex<f32>;

/// Lines along y (within a plane, in cache) are gathered this many at a time: 16 complex f32 are two
/// cache lines, so every line of memory touched by the gather is used whole.
const LINE_BLOCK: usize = 16;
/// Lines along z are gathered this many at a time: rows a plane apart come from memory, and longer
/// contiguous runs per row let the hardware prefetcher stream them.
const Z_BLOCK: usize = 64;

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
            fft_axis(data.view_mut(), axis, &plans[axis]);
        }
    }
}

/// Complex FFT of every line along `axis` of a standard-layout array, in place.
fn fft_axis(mut data: ArrayViewMut3<C32>, axis: usize, fft: &Arc<dyn Fft<f32>>) {
    let (nz, ny, nx) = data.dim();
    let n = data.shape()[axis];
    if n <= 1 {
        return;
    }
    let scratch = || vec![C32::default(); fft.get_inplace_scratch_len()];
    match axis {
        2 => {
            // Rows are contiguous: transform a few thousand samples' worth of rows per call.
            let slice = data.as_slice_mut().expect("standard layout");
            let rows_per_task = (4096 / n).max(1) * n;
            slice
                .par_chunks_mut(rows_per_task)
                .for_each_init(scratch, |s, chunk| fft.process_with_scratch(chunk, s));
        }
        1 => data.axis_iter_mut(Axis(0)).into_par_iter().for_each_init(
            || (Vec::new(), scratch()),
            |(buf, s), plane| fft_columns(plane, LINE_BLOCK, fft, buf, s),
        ),
        _ => {
            let mut cols = data
                .view_mut()
                .into_shape_with_order((nz, ny * nx))
                .expect("standard layout");
            cols.axis_chunks_iter_mut(Axis(1), Z_BLOCK)
                .into_par_iter()
                .for_each_init(
                    || (Vec::new(), scratch()),
                    |(buf, s), block| fft_columns(block, Z_BLOCK, fft, buf, s),
                );
        }
    }
}

/// FFT of every column of `m` (rows contiguous), through `through_lines`.
fn fft_columns(
    m: ArrayViewMut2<C32>,
    block: usize,
    fft: &Arc<dyn Fft<f32>>,
    buf: &mut Vec<C32>,
    s: &mut [C32],
) {
    let n = m.dim().0;
    through_lines(m, block, buf, |lines, stride, _, w| {
        for c in 0..w {
            fft.process_with_scratch(&mut lines[c * stride..][..n], s);
        }
    });
}

/// Columns of `m` (rows contiguous) are gathered `block` at a time into lines of `buf`, handed to
/// `f(lines, stride, x0, w)` (columns `x0..x0 + w`, line `c` at `c * stride`) and scattered back.
/// The lines sit `n + LINE_PAD` apart so that, for power-of-two `n`, the lines written by each
/// row's gather do not all fall on one cache set. Both copies go in `TILE`² tiles, so the rows
/// and the lines a tile touches stay in L1 while it is copied.
fn through_lines(
    mut m: ArrayViewMut2<C32>,
    block: usize,
    buf: &mut Vec<C32>,
    mut f: impl FnMut(&mut [C32], usize, usize, usize),
) {
    const LINE_PAD: usize = 8;
    const TILE: usize = 8;
    let (n, width) = m.dim();
    let stride = n + LINE_PAD;
    buf.resize(block * stride, C32::default());
    let mut rows: Vec<&mut [C32]> = m
        .rows_mut()
        .into_iter()
        .map(|r| r.into_slice().expect("rows are contiguous"))
        .collect();
    for x0 in (0..width).step_by(block) {
        let w = block.min(width - x0);
        for i0 in (0..n).step_by(TILE) {
            for c0 in (0..w).step_by(TILE) {
                let (ih, cw) = (TILE.min(n - i0), TILE.min(w - c0));
                if ih == TILE && cw == TILE {
                    // A whole tile through registers: eight row loads, eight line stores.
                    let t: [[C32; TILE]; TILE] = std::array::from_fn(|i| {
                        rows[i0 + i][x0 + c0..][..TILE]
                            .try_into()
                            .expect("TILE long")
                    });
                    for c in 0..TILE {
                        let line: &mut [C32; TILE] = (&mut buf[(c0 + c) * stride + i0..][..TILE])
                            .try_into()
                            .expect("TILE long");
                        *line = std::array::from_fn(|i| t[i][c]);
                    }
                    continue;
                }
                for (i, row) in rows[i0..i0 + ih].iter().enumerate() {
                    for (c, &v) in row[x0 + c0..][..cw].iter().enumerate() {
                        buf[(c0 + c) * stride + i0 + i] = v;
                    }
                }
            }
        }
        f(buf, stride, x0, w);
        for i0 in (0..n).step_by(TILE) {
            for c0 in (0..w).step_by(TILE) {
                let (ih, cw) = (TILE.min(n - i0), TILE.min(w - c0));
                if ih == TILE && cw == TILE {
                    let t: [[C32; TILE]; TILE] = std::array::from_fn(|c| {
                        buf[(c0 + c) * stride + i0..][..TILE]
                            .try_into()
                            .expect("TILE long")
                    });
                    for i in 0..TILE {
                        let row: &mut [C32; TILE] = (&mut rows[i0 + i][x0 + c0..][..TILE])
                            .try_into()
                            .expect("TILE long");
                        *row = std::array::from_fn(|c| t[c][i]);
                    }
                    continue;
                }
                for (i, row) in rows[i0..i0 + ih].iter_mut().enumerate() {
                    for (c, v) in row[x0 + c0..][..cw].iter_mut().enumerate() {
                        *v = buf[(c0 + c) * stride + i0 + i];
                    }
                }
            }
        }
    }
}

/// The 3-D FFT of a real volume as its non-redundant half, `(nz, ny, nx/2 + 1)` (numpy's `rfftn`): a
/// real-to-complex transform along x, then complex transforms along y and z. Half the work and memory of
/// `Fft3` on the same volume. The inverse (`irfftn`) returns the real part of the full inverse, which is all
/// of it for a Hermitian spectrum, such as the cross-power spectrum of two real volumes.
pub struct RealFft3 {
    shape: [usize; 3],
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    forward: [Arc<dyn Fft<f32>>; 2],
    inverse: [Arc<dyn Fft<f32>>; 2],
}

impl RealFft3 {
    pub fn new(shape: [usize; 3]) -> Self {
        let mut planner = FftPlanner::new();
        let forward = [0, 1].map(|a| planner.plan_fft(shape[a], FftDirection::Forward));
        let inverse = [0, 1].map(|a| planner.plan_fft(shape[a], FftDirection::Inverse));
        let mut real = RealFftPlanner::new();
        RealFft3 {
            shape,
            r2c: real.plan_fft_forward(shape[2]),
            c2r: real.plan_fft_inverse(shape[2]),
            forward,
            inverse,
        }
    }

    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Shape of the half spectrum.
    pub fn spectrum_shape(&self) -> [usize; 3] {
        [self.shape[0], self.shape[1], self.shape[2] / 2 + 1]
    }

    pub fn forward(&self, input: ArrayView3<f32>) -> Array3<C32> {
        let mut out = Array3::<C32>::default(self.spectrum_shape());
        self.forward_into(input, out.as_slice_mut().expect("standard layout"));
        out
    }

    /// `forward` into `out`, the half spectrum in C order: a caller that keeps `out` between
    /// volumes maps its pages once (a fresh 17 MiB spectrum per volume costs more in page faults
    /// and zeroing than its y pass).
    pub fn forward_into(&self, input: ArrayView3<f32>, out: &mut [C32]) {
        self.forward_xy(input, out);
        let out = ArrayViewMut3::from_shape(self.spectrum_shape(), out).expect("sized above");
        fft_axis(out, 0, &self.forward[0]);
    }

    /// `forward_into` less its last pass, the transforms along z (see `z_round_trip`).
    pub(crate) fn forward_xy(&self, input: ArrayView3<f32>, out: &mut [C32]) {
        assert_eq!(
            input.shape(),
            &self.shape[..],
            "RealFft3 planned for another shape"
        );
        let input = input.as_standard_layout();
        let [nz, ny, nx] = self.shape;
        let nh = nx / 2 + 1;
        let input = input.as_slice().expect("standard layout");
        assert_eq!(
            out.len(),
            nz * ny * nh,
            "out has the half spectrum's length"
        );
        let r2c_row = |src: &[f32], dst: &mut [C32], line: &mut Vec<f32>, s: &mut Vec<C32>| {
            line.copy_from_slice(src);
            self.r2c
                .process_with_scratch(line, dst, s)
                .expect("buffers sized by the plan");
        };
        if nz < 2 * rayon::current_num_threads() {
            // Too few planes to share out: rows, then planes, as two parallel passes.
            out.par_chunks_mut(nh)
                .zip(input.par_chunks(nx))
                .for_each_init(
                    || (vec![0.0; nx], self.r2c.make_scratch_vec()),
                    |(line, s), (dst, src)| r2c_row(src, dst, line, s),
                );
            let out = ArrayViewMut3::from_shape(self.spectrum_shape(), out).expect("sized above");
            fft_axis(out, 1, &self.forward[1]);
            return;
        }
        // Plane by plane: its rows' transforms and then its columns' while it is in cache, rather
        // than a second pass over the whole spectrum.
        let fft = &self.forward[1];
        out.par_chunks_mut(ny * nh)
            .zip(input.par_chunks(ny * nx))
            .for_each_init(
                || {
                    let s = vec![C32::default(); fft.get_inplace_scratch_len()];
                    (vec![0.0; nx], self.r2c.make_scratch_vec(), Vec::new(), s)
                },
                |(line, s, buf, sy), (dst, src)| {
                    for (d, r) in dst.chunks_exact_mut(nh).zip(src.chunks_exact(nx)) {
                        r2c_row(r, d, line, s);
                    }
                    if ny > 1 {
                        let plane = ArrayViewMut2::from_shape((ny, nh), dst).expect("one plane");
                        fft_columns(plane, LINE_BLOCK, fft, buf, sy);
                    }
                },
            );
    }

    /// The forward transform's z pass, `between` on each block of z-lines, and the inverse
    /// transform's z pass, fused: each block of lines is gathered and scattered once instead of
    /// twice per pass, and `between` runs on it while it is in cache. `data` is `forward_xy`'s
    /// result; `inverse_argmax_yx` finishes. `between(lines, stride, col0, w, kept)` gets the block's
    /// `w` lines (z order, `stride` apart), the columns `col0..col0 + w` of the (nz, ny·nh) matrix,
    /// and, when `kept` is given, the part of it holding those lines (`kept` stores the spectrum's
    /// lines along z one after another, `nz` apart); its results are combined with `reduce`.
    pub(crate) fn z_round_trip<T, B>(
        &self,
        data: &mut [C32],
        kept: Option<&mut [C32]>,
        identity: impl Fn() -> T + Sync + Send,
        reduce: impl Fn(T, T) -> T + Sync + Send,
        between: B,
    ) -> T
    where
        T: Send,
        B: Fn(&mut [C32], usize, usize, usize, Option<&mut [C32]>) -> T + Sync,
    {
        let [nz, ny, nx] = self.shape;
        let plane = ny * (nx / 2 + 1);
        let (fwd, inv) = (&self.forward[0], &self.inverse[0]);
        let scratch_len = fwd
            .get_inplace_scratch_len()
            .max(inv.get_inplace_scratch_len());
        let init = || (Vec::new(), vec![C32::default(); scratch_len]);
        let run = |(buf, s): &mut (Vec<C32>, Vec<C32>),
                   block: ArrayViewMut2<C32>,
                   col0: usize,
                   mut kept: Option<&mut [C32]>| {
            let mut out = None;
            through_lines(block, Z_BLOCK, buf, |lines, stride, _, w| {
                if nz > 1 {
                    for c in 0..w {
                        fwd.process_with_scratch(&mut lines[c * stride..][..nz], s);
                    }
                }
                out = Some(between(lines, stride, col0, w, kept.take()));
                if nz > 1 {
                    for c in 0..w {
                        inv.process_with_scratch(&mut lines[c * stride..][..nz], s);
                    }
                }
            });
            out.unwrap_or_else(&identity)
        };
        let mut cols = ArrayViewMut2::from_shape((nz, plane), data)
            .expect("data has the half spectrum's length");
        let blocks = cols.axis_chunks_iter_mut(Axis(1), Z_BLOCK).into_par_iter();
        match kept {
            Some(kept) => {
                assert_eq!(
                    kept.len(),
                    nz * plane,
                    "kept has the half spectrum's length"
                );
                blocks
                    .zip(kept.par_chunks_mut(Z_BLOCK * nz))
                    .enumerate()
                    .map_init(init, |st, (i, (b, k))| run(st, b, i * Z_BLOCK, Some(k)))
                    .reduce(&identity, &reduce)
            }
            None => blocks
                .enumerate()
                .map_init(init, |st, (i, b)| run(st, b, i * Z_BLOCK, None))
                .reduce(&identity, &reduce),
        }
    }

    /// The index (C order) of the largest |value| of `irfftn(spectrum)` within `window` and that
    /// value, as `argmax_abs_real_within(&self.inverse(spectrum), ..)` finds them (the first
    /// largest; NaN above all), without storing the volume: each row is transformed, scaled and
    /// searched while in cache (rows outside the window are not transformed at all). The spectrum
    /// (C order) is consumed as scratch.
    pub fn inverse_argmax(&self, spectrum: &mut [C32], window: &CoarseWindow) -> ([usize; 3], f32) {
        let view = ArrayViewMut3::from_shape(self.spectrum_shape(), &mut *spectrum)
            .expect("spectrum has the half spectrum's length");
        fft_axis(view, 0, &self.inverse[0]);
        self.inverse_argmax_yx(spectrum, window)
    }

    /// `inverse_argmax` less its first pass, the transforms along z.
    pub(crate) fn inverse_argmax_yx(
        &self,
        spectrum: &mut [C32],
        window: &CoarseWindow,
    ) -> ([usize; 3], f32) {
        let [nz, ny, nx] = self.shape;
        let nh = nx / 2 + 1;
        assert_eq!(
            spectrum.len(),
            nz * ny * nh,
            "spectrum has the half spectrum's length"
        );
        let scale = 1.0 / self.shape.iter().product::<usize>() as f32;
        let unbounded = window.is_unbounded();
        // Row `row` of the inverse (C order over (z, y)), searched where the window reaches it.
        let search_row = |row: usize,
                          src: &mut [C32],
                          dst: &mut Vec<f32>,
                          s: &mut Vec<C32>,
                          best: &mut ArgMax| {
            if unbounded {
                self.c2r_unscaled(src, dst, s);
                best.offer_scaled(dst, scale, row * nx);
            } else if let Some(parts) = window.row(row) {
                self.c2r_unscaled(src, dst, s);
                for xs in parts {
                    best.offer_scaled(&dst[xs.clone()], scale, row * nx + xs.start);
                }
            }
        };
        let best = if nz < 2 * rayon::current_num_threads() {
            // Too few planes to share out: planes, then rows, as two parallel passes.
            let view = ArrayViewMut3::from_shape(self.spectrum_shape(), &mut *spectrum)
                .expect("sized above");
            fft_axis(view, 1, &self.inverse[1]);
            spectrum
                .par_chunks_mut(nh)
                .enumerate()
                .fold(
                    || (vec![0.0f32; nx], self.c2r.make_scratch_vec(), ArgMax::NONE),
                    |(mut dst, mut s, mut best), (row, src)| {
                        search_row(row, src, &mut dst, &mut s, &mut best);
                        (dst, s, best)
                    },
                )
                .map(|(_, _, best)| best)
                .reduce(|| ArgMax::NONE, ArgMax::merge)
        } else {
            // Plane by plane: its columns' inverse and then its rows' while it is in cache, and
            // a plane the window does not reach is not transformed at all.
            let fft = &self.inverse[1];
            spectrum
                .par_chunks_mut(ny * nh)
                .enumerate()
                .fold(
                    || {
                        let sy = vec![C32::default(); fft.get_inplace_scratch_len()];
                        let s = self.c2r.make_scratch_vec();
                        (vec![0.0f32; nx], s, Vec::new(), sy, ArgMax::NONE)
                    },
                    |(mut dst, mut s, mut buf, mut sy, mut best), (z, plane)| {
                        if unbounded || (0..ny).any(|y| window.row(z * ny + y).is_some()) {
                            if ny > 1 {
                                let view = ArrayViewMut2::from_shape((ny, nh), &mut *plane)
                                    .expect("one plane");
                                fft_columns(view, LINE_BLOCK, fft, &mut buf, &mut sy);
                            }
                            for (y, src) in plane.chunks_exact_mut(nh).enumerate() {
                                search_row(z * ny + y, src, &mut dst, &mut s, &mut best);
                            }
                        }
                        (dst, s, buf, sy, best)
                    },
                )
                .map(|(.., best)| best)
                .reduce(|| ArgMax::NONE, ArgMax::merge)
        };
        let i = best.index();
        ([i / (ny * nx), (i / nx) % ny, i % nx], best.value)
    }

    /// One row of the inverse: c2r of `src` (consumed) into `dst`, times `scale`.
    fn c2r_row(&self, src: &mut [C32], dst: &mut [f32], s: &mut [C32], scale: f32) {
        self.c2r_unscaled(src, dst, s);
        dst.iter_mut().for_each(|v| *v *= scale);
    }

    /// `c2r_row` less the scaling (the peak search scales only what can rank).
    fn c2r_unscaled(&self, src: &mut [C32], dst: &mut [f32], s: &mut [C32]) {
        match self.c2r.process_with_scratch(src, dst, s) {
            // The imaginary parts of the DC and Nyquist bins of a Hermitian spectrum are
            // rounding noise; realfft drops them, which is taking the real part.
            Ok(()) | Err(FftError::InputValues(..)) => {}
            Err(e) => panic!("buffers sized by the plan: {e}"),
        }
    }

    /// `irfftn` of a half spectrum (consumed as scratch), scaled by 1/N as numpy does.
    pub fn inverse(&self, mut spectrum: Array3<C32>) -> Array3<f32> {
        assert_eq!(
            spectrum.shape(),
            &self.spectrum_shape()[..],
            "RealFft3 planned for another shape"
        );
        fft_axis(spectrum.view_mut(), 0, &self.inverse[0]);
        fft_axis(spectrum.view_mut(), 1, &self.inverse[1]);
        let [_, _, nx] = self.shape;
        let nh = nx / 2 + 1;
        let scale = 1.0 / self.shape.iter().product::<usize>() as f32;
        let mut out = Array3::<f32>::zeros(self.shape);
        out.as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(nx)
            .zip(
                spectrum
                    .as_slice_mut()
                    .expect("standard layout")
                    .par_chunks_mut(nh),
            )
            .for_each_init(
                || self.c2r.make_scratch_vec(),
                |s, (dst, src)| self.c2r_row(src, dst, s, scale),
            );
        out
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
