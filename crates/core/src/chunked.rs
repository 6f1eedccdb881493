//! `ChunkedBlock`: a block of a (t, z, y, x) dataset held chunk by chunk, in the layout the output
//! formats store, so that the z-score writes its results straight into chunks and a sink hands each
//! one to HDF5 or Zarr as it is, with no gather between them.
//!
//! A block spans every timepoint and one chunk along z and y, and a run of chunks along x. Each chunk
//! is whole and contiguous in C order, (ct, cz, cy, cx); those cut by the dataset's edge are padded
//! with zeros, as both formats store edge chunks.

use crate::error::{Error, Result};
use crate::fmt::fmt_shape;
use ndarray::{s, Array4, Array6, ArrayView4, ArrayViewMut5, Axis};

/// The alignment of a block's first element (`ChunkedBlock::new`).
const PAGE: usize = 4096;

#[derive(Debug, Clone)]
pub struct ChunkedBlock<T> {
    /// (t chunks, x chunks, ct, cz, cy, cx).
    data: Array6<T>,
    /// The (z, y, x) index of the block's first voxel in the dataset.
    origin: [usize; 3],
    /// (t, z, y, x) held; the rest of each chunk is padding.
    extent: [usize; 4],
}

impl<T: Copy + Default> ChunkedBlock<T> {
    /// A block of zeros of `extent` (t, z, y, x) at `origin` (z, y, x), in chunks of `chunk`
    /// (t, z, y, x). Every chunk axis must be at least 1, and the extent along z and y at most one
    /// chunk.
    pub fn new(chunk: [usize; 4], origin: [usize; 3], extent: [usize; 4]) -> Result<Self> {
        let grid = Self::grid(chunk, extent)?;
        let [ct, cz, cy, cx] = chunk;
        let dim = (grid[0], grid[1], ct, cz, cy, cx);
        let n = grid[0] * grid[1] * ct * cz * cy * cx;
        // `vec![default; _]`, not a loop: zeros come from the allocator (calloc: pages zeroed on
        // first touch, once) rather than written by a loop and then again by the sweep. The block
        // starts on a page boundary (one page more is allocated): chunks of whole pages can then
        // be written straight from it with direct I/O (the Zarr sink's `O_DIRECT` writes).
        let size = std::mem::size_of::<T>().max(1);
        let pad = PAGE.div_ceil(size);
        let mut all = ndarray::Array1::from_vec(vec![T::default(); n + pad]);
        let off = (all.as_ptr() as usize).wrapping_neg() % PAGE / size;
        let off = if off < pad { off } else { 0 };
        all.slice_collapse(s![off..off + n]);
        let data = all
            .into_shape_with_order(dim)
            .expect("a contiguous run of the block's length");
        Ok(ChunkedBlock {
            data,
            origin,
            extent,
        })
    }

    /// This block's buffer as a block of `extent` at `origin`, when the chunk grid is the same (its
    /// padding zeroed again if the extent differs); else a new one.
    pub fn reuse(
        mut self,
        chunk: [usize; 4],
        origin: [usize; 3],
        extent: [usize; 4],
    ) -> Result<Self> {
        let grid = Self::grid(chunk, extent)?;
        let (a, b, ct, cz, cy, cx) = self.data.dim();
        if [a, b, ct, cz, cy, cx] != [grid[0], grid[1], chunk[0], chunk[1], chunk[2], chunk[3]] {
            return Self::new(chunk, origin, extent);
        }
        if self.extent != extent {
            // Every held element is written by its user; the padding must read as zero.
            self.data.fill(T::default());
        }
        self.origin = origin;
        self.extent = extent;
        Ok(self)
    }

    /// The block as a copy of `data`, (t, z, y, x) at `origin` (tests, and callers holding a plain
    /// array).
    pub fn from_array(chunk: [usize; 4], origin: [usize; 3], data: ArrayView4<T>) -> Result<Self> {
        let (t, z, y, x) = data.dim();
        let mut block = Self::new(chunk, origin, [t, z, y, x])?;
        let [ct, _, _, cx] = chunk;
        for tc in 0..t.div_ceil(ct) {
            for xc in 0..x.div_ceil(cx) {
                let (t0, x0) = (tc * ct, xc * cx);
                let (t1, x1) = ((t0 + ct).min(t), (x0 + cx).min(x));
                block
                    .data
                    .slice_mut(s![tc, xc, ..t1 - t0, ..z, ..y, ..x1 - x0])
                    .assign(&data.slice(s![t0..t1, .., .., x0..x1]));
            }
        }
        Ok(block)
    }

    fn grid(chunk: [usize; 4], extent: [usize; 4]) -> Result<[usize; 2]> {
        if chunk.contains(&0) || extent[1] > chunk[1] || extent[2] > chunk[2] {
            return Err(Error::Data(format!(
                "a block of {} cannot be held in chunks of {}: chunks must be non-empty and the \
                 block one chunk deep along z and y",
                fmt_shape(&extent),
                fmt_shape(&chunk)
            )));
        }
        Ok([extent[0].div_ceil(chunk[0]), extent[3].div_ceil(chunk[3])])
    }

    /// The block as a plain (t, z, y, x) array (tests).
    pub fn to_array(&self) -> Array4<T> {
        let [t, z, y, x] = self.extent;
        let [ct, _, _, cx] = self.chunk();
        let mut out = Array4::default((t, z, y, x));
        for tc in 0..t.div_ceil(ct) {
            for xc in 0..x.div_ceil(cx) {
                let (t0, x0) = (tc * ct, xc * cx);
                let (t1, x1) = ((t0 + ct).min(t), (x0 + cx).min(x));
                out.slice_mut(s![t0..t1, .., .., x0..x1])
                    .assign(&self.data.slice(s![tc, xc, ..t1 - t0, ..z, ..y, ..x1 - x0]));
            }
        }
        out
    }
}

impl<T> ChunkedBlock<T> {
    /// (t, z, y, x) of one chunk.
    pub fn chunk(&self) -> [usize; 4] {
        let (_, _, ct, cz, cy, cx) = self.data.dim();
        [ct, cz, cy, cx]
    }

    /// The (z, y, x) index of the block's first voxel in the dataset.
    pub fn origin(&self) -> [usize; 3] {
        self.origin
    }

    /// (t, z, y, x) held.
    pub fn extent(&self) -> [usize; 4] {
        self.extent
    }

    /// Each chunk, whole (padding included), with the (t, z, y, x) index of its first element in the
    /// dataset: in C order of (t, x).
    pub fn chunks(&self) -> impl Iterator<Item = ([usize; 4], &[T])> + '_ {
        let [ct, _, _, cx] = self.chunk();
        let [z0, y0, x0] = self.origin;
        self.data
            .outer_iter()
            .enumerate()
            .flat_map(move |(tc, row)| {
                row.into_outer_iter().enumerate().map(move |(xc, c)| {
                    let at = [tc * ct, z0, y0, x0 + xc * cx];
                    (
                        at,
                        c.to_slice().expect("a chunk of a standard-layout array"),
                    )
                })
            })
    }

    /// One view per z plane held, (t chunks, x chunks, ct, cy, cx): disjoint, for one task each.
    pub(crate) fn planes_mut(&mut self) -> Vec<ArrayViewMut5<'_, T>> {
        let nz = self.extent[1];
        self.data.axis_iter_mut(Axis(3)).take(nz).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    /// A block goes into chunks and comes back out whole; each chunk holds its part of the block
    /// at its place in C order and zeros past the edges; `reuse` clears padding when the extent
    /// changes.
    #[test]
    fn chunks_hold_their_part_and_pad_with_zeros() {
        let (chunk, origin) = ([2, 3, 4, 5], [6, 3, 10]);
        let extent = [5, 2, 3, 12];
        let data = Array4::from_shape_fn((5, 2, 3, 12), |(t, z, y, x)| {
            1.0 + (((t * 2 + z) * 3 + y) * 12 + x) as f32
        });
        let block = ChunkedBlock::from_array(chunk, origin, data.view()).unwrap();
        assert_eq!(block.to_array(), data);
        assert_eq!(
            (block.chunk(), block.origin(), block.extent()),
            (chunk, origin, extent)
        );
        let chunks: Vec<_> = block.chunks().collect();
        assert_eq!(chunks.len(), 3 * 3);
        for (k, (at, c)) in chunks.iter().enumerate() {
            let (tc, xc) = (k / 3, k % 3);
            assert_eq!(*at, [tc * 2, 6, 3, 10 + xc * 5]);
            assert_eq!(c.len(), 2 * 3 * 4 * 5);
            let c = ndarray::ArrayView4::from_shape(chunk, c).unwrap();
            for ((t, z, y, x), &v) in c.indexed_iter() {
                let (t, x) = (tc * 2 + t, xc * 5 + x);
                let want = if t < 5 && z < 2 && y < 3 && x < 12 {
                    data[[t, z, y, x]]
                } else {
                    0.0
                };
                assert_eq!(v, want, "chunk {k} at {:?}", (t, z, y, x));
            }
        }
        // Smaller extent on the same grid: the old values past it are cleared.
        let small = block.reuse(chunk, [0, 0, 0], [5, 1, 3, 12]).unwrap();
        assert!(small.chunks().all(|(_, c)| c.iter().all(|&v| v == 0.0)));
        assert!(ChunkedBlock::<f32>::new(chunk, origin, [5, 4, 3, 12]).is_err());
        // Every new block starts on a page, so page-sized chunks are pages themselves.
        for extent in [[5, 2, 3, 12], [50, 32, 64, 256], [1, 1, 1, 1]] {
            let b = ChunkedBlock::<f32>::new([2, 32, 64, 64], origin, extent).unwrap();
            let (_, first) = b.chunks().next().unwrap();
            assert_eq!(first.as_ptr() as usize % PAGE, 0, "{extent:?}");
            assert!(b.chunks().all(|(_, c)| c.iter().all(|&v| v == 0.0)));
        }
        assert!(ChunkedBlock::<f32>::new([2, 0, 4, 5], origin, [5, 0, 3, 12]).is_err());
    }
}
