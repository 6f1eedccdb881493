//! 3-D median filter on the CPU; CPU twin of `shaders/median3d.wgsl`.
//!
//! Matches `scipy.ndimage.median_filter(vol, size=(sz, sy, sx), mode, cval)` on float32 exactly: the
//! median of an odd window is one of its values, so there is no rounding to disagree about. Values are
//! ordered as `f32::total_cmp` orders them, as the shader does, so CPU and GPU agree bit for bit: -0.0
//! below +0.0, NaN above +Inf. Against scipy that leaves two edge cases, both outside what the pipeline
//! feeds it: where the median is a tie of -0.0 and +0.0, scipy may return the other zero (they compare
//! equal); NaN, whose place scipy leaves unspecified, never gets here, because the pipeline rejects
//! non-finite input or replaces it with 0 before filtering.
//!
//! Every path below computes the shader's result, the element of rank n/2 of the boundary-extended
//! window; the paths are CPU-only specialisations of it. Windows of up to 125 elements run comparator
//! networks, whose min/max steps have no data-dependent branch and run over contiguous rows along x,
//! so LLVM vectorises them:
//!
//! - 3x3x3, the default, reuses work between neighbouring windows. Each source row of the plane
//!   triple is sorted along z once for the three output rows that read it; three of those give each
//!   padded x its sorted 3x3 (z, y) column, 16 more comparators, once for the three voxels that read
//!   it; per voxel, the columns at x and x+1 are merged (Batcher, ranks 4..=13 kept) and rank 13 of
//!   that and the column at x-1 is a min of maxes, exact for two sorted lists. Its row loops take
//!   lane groups of 16, 8 or 4 consecutive x (one vector at AVX-512, AVX2, SSE2: `simd::dispatch!`),
//!   written as fixed-size arrays and plain loops that LLVM keeps in vector registers.
//! - 1x3x3 (a 3x3 window in each plane, common for anisotropic stacks): per output row the three
//!   source rows sorted along y at each padded x, then per voxel med3(largest low, median middle,
//!   smallest high) of its three columns, in the same lane groups.
//! - Other sizes gather, per block of x, one row per window element and run Batcher's merge-exchange
//!   network pruned to the median over the rows.
//! - Larger windows gather each voxel's window and use `select_nth_unstable`.
//!
//! The networks order plain f32 where the volume holds no NaN and no -0.0 (there `<` is the total
//! order, and cheapest), else `total_cmp`'s i32 keys; selection always orders keys.

use crate::simd::{self, Level};
use gpuprep_core::boundary::filter_index;
use gpuprep_core::params::{BoundaryMode, MedianParams};
use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

pub fn median3d(input: ArrayView3<f32>, p: &MedianParams) -> Array3<f32> {
    median3d_at(simd::level(), input, p)
}

/// `median3d` with the 3x3x3 path's row loops at `level`.
pub(crate) fn median3d_at(level: Level, input: ArrayView3<f32>, p: &MedianParams) -> Array3<f32> {
    let (nz, ny, nx) = input.dim();
    let n: usize = p.size.iter().product();
    if n == 1 || input.is_empty() {
        return input.to_owned();
    }
    let input = input.as_standard_layout();
    let src = input.as_slice().expect("standard layout");
    let grid = Grid::new([nz, ny, nx], p);
    let mut out = vec![0.0f32; src.len()];
    if n > NETWORK_MAX {
        grid.run(&mut out, |rows, y0, s| {
            by_selection(src, &grid, rows, y0, s)
        });
    } else if float_order_is_total_order(src, p) {
        by_networks::<f32>(level, src, &grid, &mut out);
    } else {
        by_networks::<i32>(level, src, &grid, &mut out);
    }
    Array3::from_shape_vec((nz, ny, nx), out).expect("shape of the input")
}

/// Windows larger than this (5x5x5) select with `select_nth_unstable`: beyond it a network's
/// O(n log² n) passes stop paying for their lack of branches (at 7x7x7 they were already slower).
const NETWORK_MAX: usize = 125;

/// Median by comparator networks over rows of `T`, for windows of at most `NETWORK_MAX`.
fn by_networks<T: Lane>(level: Level, src: &[f32], g: &Grid, out: &mut [f32]) {
    if g.size == [3, 3, 3] {
        g.run(out, |rows, zy, s: &mut Scratch<T>| {
            simd::dispatch!(level, median27_at, [T: Lane], (level: Level, src: &[f32], g: &Grid, rows: &mut [f32], zy: [usize; 2], s: &mut Scratch<T>))
        });
    } else if g.size == [1, 3, 3] {
        g.run(out, |rows, zy, s: &mut Scratch<T>| {
            simd::dispatch!(level, median9_at, [T: Lane], (level: Level, src: &[f32], g: &Grid, rows: &mut [f32], zy: [usize; 2], s: &mut Scratch<T>))
        });
    } else {
        let net = median_network(g.size.iter().product());
        let net = net.as_slice();
        g.run(out, |rows, zy, s: &mut Rows<T>| {
            simd::dispatch!(level, by_network, [T: Lane], (src: &[f32], g: &Grid, net: &[Comparator], rows: &mut [f32], zy: [usize; 2], s: &mut Rows<T>))
        });
    }
}

/// What the comparators order: either the f32 itself or its `total_cmp` key.
trait Lane: Copy + PartialOrd + Send + Sync + Default + MinMax {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Lane for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// `f32::total_cmp`'s key: flipping the magnitude bits of negatives makes signed integer order the total
/// order. The map is its own inverse.
impl Lane for i32 {
    #[inline(always)]
    fn from_f32(v: f32) -> i32 {
        let b = v.to_bits() as i32;
        b ^ (((b >> 31) as u32) >> 1) as i32
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self ^ (((self >> 31) as u32) >> 1) as i32) as u32)
    }
}

/// What a comparator orders: one value, or `L` of them side by side (a lane group, which the row loops
/// of the 3x3x3 path hand to LLVM as one vector per group at the level they are compiled for).
trait MinMax: Copy {
    fn lo(a: Self, b: Self) -> Self;
    fn hi(a: Self, b: Self) -> Self;
}

impl MinMax for f32 {
    #[inline(always)]
    fn lo(a: f32, b: f32) -> f32 {
        min(a, b)
    }
    #[inline(always)]
    fn hi(a: f32, b: f32) -> f32 {
        max(a, b)
    }
}

impl MinMax for i32 {
    #[inline(always)]
    fn lo(a: i32, b: i32) -> i32 {
        min(a, b)
    }
    #[inline(always)]
    fn hi(a: i32, b: i32) -> i32 {
        max(a, b)
    }
}

// Loops, not `array::from_fn` or `map`: those stay out-of-line calls, compiled at the baseline rather
// than in the `#[target_feature]` copy (as closures are).
impl<T: Lane, const L: usize> MinMax for [T; L] {
    #[inline(always)]
    fn lo(mut a: Self, b: Self) -> Self {
        for i in 0..L {
            a[i] = min(a[i], b[i]);
        }
        a
    }
    #[inline(always)]
    fn hi(mut a: Self, b: Self) -> Self {
        for i in 0..L {
            a[i] = max(a[i], b[i]);
        }
        a
    }
}

/// Whether `<` on the values the windows can hold is `total_cmp`: it is unless a NaN or a -0.0 is among
/// them. Chunked so that the scan vectorises and still stops early.
fn float_order_is_total_order(src: &[f32], p: &MedianParams) -> bool {
    let odd = |v: f32| v.is_nan() || v.to_bits() == (-0.0f32).to_bits();
    let odd_cval = p.mode == BoundaryMode::Constant && odd(p.cval);
    !odd_cval
        && !src
            .chunks(4096)
            .any(|c| c.iter().fold(false, |acc, &v| acc | odd(v)))
}

// `if a < b` rather than `f32::min`: it is one minps/maxps (no NaN handling) and the same for i32 keys.
#[inline(always)]
fn min<T: Lane>(a: T, b: T) -> T {
    if a < b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn max<T: Lane>(a: T, b: T) -> T {
    if a < b {
        b
    } else {
        a
    }
}

/// Compare-exchange: smaller to `i`, larger to `j`. Both sides test `a < b` (`min`, `max`), so the
/// pair stays a permutation of its inputs even for values `<` cannot order.
#[inline(always)]
fn cx<E: MinMax, const N: usize>(v: &mut [E; N], i: usize, j: usize) {
    let (a, b) = (v[i], v[j]);
    v[i] = E::lo(a, b);
    v[j] = E::hi(a, b);
}

/// A comparator network as a table (checked by the 0-1 principle in the tests below) and the same
/// pairs as straight-line code, so that the values live in registers and unused outputs are dropped.
macro_rules! network {
    ($(#[$doc:meta])* $table:ident, $apply:ident, $n:literal: $(($i:literal, $j:literal)),* $(,)?) => {
        #[cfg(test)]
        const $table: &[(usize, usize)] = &[$(($i, $j)),*];
        $(#[$doc])*
        #[inline(always)]
        fn $apply<E: MinMax>(v: &mut [E; $n]) {
            $(cx(v, $i, $j);)*
        }
    };
}

network!(
    /// Sorts 3.
    SORT3, sort3, 3: (0, 1), (1, 2), (0, 1)
);

network!(
    /// Sorts 9 whose triples 0..3, 3..6, 6..9 are each sorted already: Floyd's 25-comparator 9-sorter
    /// (Knuth, TAOCP 5.3.4) less the 9 comparators that sort those triples.
    SORT9_SORTED_TRIPLES, sort9_sorted_triples, 9:
    (2, 5), (0, 3), (1, 4), (5, 8), (3, 6), (4, 7), (2, 5), (0, 3), (1, 4), (5, 7), (2, 6), (1, 3),
    (4, 6), (2, 4), (5, 6), (2, 3)
);

network!(
    /// Batcher's odd-even merge of sorted 0..9 and 9..18; rank k ends on wire `MERGE9_RANK[k]`.
    MERGE9, merge9, 18:
    (0, 9), (8, 17), (8, 9), (4, 13), (4, 8), (13, 9), (2, 11), (6, 15), (6, 11), (2, 4), (6, 8),
    (11, 13), (15, 9), (1, 10), (5, 14), (5, 10), (3, 12), (7, 16), (7, 12), (3, 5), (7, 10),
    (12, 14), (1, 2), (3, 4), (5, 6), (7, 8), (10, 11), (12, 13), (14, 15), (16, 9)
);

const MERGE9_RANK: [usize; 18] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 9, 17];

/// Rank 13 of 27 given the 18 merged values `m` (through `MERGE9_RANK`) and the sorted 9 `s`: the
/// smallest, over ways of taking 14 values from the fronts of both lists, of the largest taken. Only
/// ranks 4..=13 of `m` can be it, since at most 9 of the 14 come from `s`.
#[inline(always)]
fn rank13<E: MinMax>(m: &[E; 18], s: &[E; 9]) -> E {
    let mut r = m[MERGE9_RANK[13]];
    for i in 0..9 {
        r = E::lo(r, E::hi(m[MERGE9_RANK[4 + i]], s[8 - i]));
    }
    r
}

/// Sizes and boundary extension of one volume and window, and how the work is cut for rayon.
struct Grid {
    n: [usize; 3],
    size: [usize; 3],
    cval: f32,
    /// Per axis, the source index of padded position `i` (output index `i - radius`); `None` is cval.
    index: [Vec<Option<usize>>; 3],
    /// Output rows per task.
    block: usize,
    /// `nx` copies of cval: the row read where a z or y index falls outside in constant mode.
    cval_row: Vec<f32>,
}

impl Grid {
    fn new(n: [usize; 3], p: &MedianParams) -> Grid {
        let index = [0, 1, 2].map(|a| {
            let r = (p.size[a] / 2) as isize;
            (-r..n[a] as isize + r)
                .map(|i| filter_index(i, n[a], p.mode))
                .collect()
        });
        // Enough tasks to balance the threads; the 3x3x3 path re-sorts two extra rows per task.
        let tasks = 8 * rayon::current_num_threads();
        let block = (n[0] * n[1]).div_ceil(tasks).max(4).min(n[1]).max(1);
        Grid {
            n,
            size: p.size,
            cval: p.cval,
            index,
            block,
            cval_row: vec![p.cval; n[2]],
        }
    }

    /// Source row `(z, y)` given as padded positions, or the cval row.
    fn row<'a>(&'a self, src: &'a [f32], zp: usize, yp: usize) -> &'a [f32] {
        let [_, ny, nx] = self.n;
        match (self.index[0][zp], self.index[1][yp]) {
            (Some(z), Some(y)) => &src[(z * ny + y) * nx..][..nx],
            _ => &self.cval_row,
        }
    }

    /// Value at padded x position `xp` of a row from `row`.
    fn at(&self, row: &[f32], xp: usize) -> f32 {
        self.index[2][xp].map_or(self.cval, |x| row[x])
    }

    /// Calls `f(rows, [z, y0], scratch)` in parallel for blocks of output rows `y0..` of plane `z`,
    /// `rows` being the block's part of `out`.
    fn run<S: Default + Send, F>(&self, out: &mut [f32], f: F)
    where
        F: Fn(&mut [f32], [usize; 2], &mut S) + Send + Sync,
    {
        let [_, ny, nx] = self.n;
        out.par_chunks_mut(ny * nx)
            .enumerate()
            .for_each(|(z, plane)| {
                plane
                    .par_chunks_mut(self.block * nx)
                    .enumerate()
                    .for_each_init(S::default, |s, (b, rows)| f(rows, [z, b * self.block], s));
            });
    }
}

/// Working rows of the 3x3x3 path: z-sorted source rows for three padded y (a ring, by `yp % 3`),
/// then the sorted 9-columns of the current output row; each row `nx + 2` long.
#[derive(Default)]
struct Scratch<T> {
    tri: Vec<T>,
    col: Vec<T>,
}

/// Runs `$group::<T, L>($args.., x)` for the lane groups `x..x + L` covering `0..$n`, the last one
/// ending at `$n` (it may overlap the one before, harmless as each position's result depends on the
/// inputs alone), or `$group::<T, 1>` per position where `$n < L`. A loop rather than a closure: a
/// closure is compiled apart from the `#[target_feature]` copy it sits in, at the baseline.
macro_rules! lane_groups {
    ($n:expr, $group:ident::<$t:ty, $l:ident>($($arg:expr),*)) => {{
        let n = $n;
        if n >= $l {
            let mut x = 0;
            loop {
                $group::<$t, $l>($($arg,)* x);
                if x + $l >= n {
                    break;
                }
                x = (x + $l).min(n - $l);
            }
        } else {
            for x in 0..n {
                $group::<$t, 1>($($arg,)* x);
            }
        }
    }};
}

/// Calls `$kernel::<T, L>(args)` with lane groups as wide as `level`'s vectors: 16 values (one AVX-512
/// register of f32 or i32), 8 (AVX2), 4 (SSE2). The groups' values are independent, so every width
/// gives the same bits.
macro_rules! at_lane_width {
    ($level:expr, $kernel:ident::<$t:ident>($($arg:expr),*)) => {
        match $level {
            Level::Avx512 => $kernel::<$t, 16>($($arg),*),
            Level::Avx2 => $kernel::<$t, 8>($($arg),*),
            Level::Scalar => $kernel::<$t, 4>($($arg),*),
        }
    };
}

/// `median27` with lane groups as wide as `level`'s vectors (`at_lane_width!`).
#[inline(always)]
fn median27_at<T: Lane>(
    level: Level,
    src: &[f32],
    g: &Grid,
    out: &mut [f32],
    zy: [usize; 2],
    s: &mut Scratch<T>,
) {
    at_lane_width!(level, median27::<T>(src, g, out, zy, s))
}

/// The 3x3x3 median of output rows `y0..` of plane `z` into `out`, `L` voxels along x at a time.
#[inline(always)]
fn median27<T: Lane, const L: usize>(
    src: &[f32],
    g: &Grid,
    out: &mut [f32],
    [z, y0]: [usize; 2],
    s: &mut Scratch<T>,
) {
    let nx = g.n[2];
    let w = nx + 2;
    s.tri.resize(9 * w, T::default());
    s.col.resize(9 * w, T::default());
    let rows = out.len() / nx;
    let along_z = |yp: usize| {
        [
            g.row(src, z, yp),
            g.row(src, z + 1, yp),
            g.row(src, z + 2, yp),
        ]
    };
    for yp in y0..y0 + 2 {
        sort3_rows::<T, L>(along_z(yp), g, &mut s.tri[(yp % 3) * 3 * w..][..3 * w]);
    }
    for (y, out) in (y0..y0 + rows).zip(out.chunks_exact_mut(nx)) {
        sort3_rows::<T, L>(
            along_z(y + 2),
            g,
            &mut s.tri[((y + 2) % 3) * 3 * w..][..3 * w],
        );
        let tri: [&[T]; 9] = std::array::from_fn(|k| {
            let yp = y + k / 3;
            &s.tri[((yp % 3) * 3 + k % 3) * w..][..w]
        });
        let mut cols = s.col.chunks_exact_mut(w);
        let col: [&mut [T]; 9] = std::array::from_fn(|_| cols.next().expect("9 rows"));
        sort_columns::<T, L>(tri, col);
        let col: [&[T]; 9] = std::array::from_fn(|k| &s.col[k * w..][..w]);
        select_row::<T, L>(col, out);
    }
}

/// `median9` with lane groups as wide as `level`'s vectors (`at_lane_width!`).
#[inline(always)]
fn median9_at<T: Lane>(
    level: Level,
    src: &[f32],
    g: &Grid,
    out: &mut [f32],
    zy: [usize; 2],
    s: &mut Scratch<T>,
) {
    at_lane_width!(level, median9::<T>(src, g, out, zy, s))
}

/// The 1x3x3 median (a 3x3 window in each plane) of output rows `y0..` of plane `z` into `out`: per
/// output row, the three source rows sorted along y at every padded x (each such column serves three
/// outputs), then per voxel the median of its three columns, med3(largest low, median middle, smallest
/// high): exact for three sorted columns (checked on every 0-1 input below).
#[inline(always)]
fn median9<T: Lane, const L: usize>(
    src: &[f32],
    g: &Grid,
    out: &mut [f32],
    [z, y0]: [usize; 2],
    s: &mut Scratch<T>,
) {
    let nx = g.n[2];
    let w = nx + 2;
    s.tri.resize(3 * w, T::default());
    let rows = out.len() / nx;
    for (y, out) in (y0..y0 + rows).zip(out.chunks_exact_mut(nx)) {
        // Padded z of a size-1 axis is z; padded y..y + 3 are source rows y - 1..=y + 1.
        let r = [g.row(src, z, y), g.row(src, z, y + 1), g.row(src, z, y + 2)];
        sort3_rows::<T, L>(r, g, &mut s.tri);
        let (lo, rest) = s.tri.split_at(w);
        let (mid, hi) = rest.split_at(w);
        select9_row::<T, L>([lo, mid, hi], out);
    }
}

/// Median of three, `max(min(a, b), min(max(a, b), c))`.
#[inline(always)]
fn med3<E: MinMax>(a: E, b: E, c: E) -> E {
    E::hi(E::lo(a, b), E::lo(E::hi(a, b), c))
}

/// Median of each output voxel of a row from the y-sorted columns (low, middle, high rows) at padded
/// x, x + 1, x + 2.
#[inline(always)]
fn select9_row<T: Lane, const L: usize>(c: [&[T]; 3], out: &mut [f32]) {
    #[inline(always)]
    fn group<T: Lane, const L: usize>(c: &[&[T]; 3], out: &mut [f32], x: usize) {
        // Columns at x, x + 1, x + 2 of each sorted row (no closure: see `lane_groups!`).
        let [l, m, h] = [
            [load::<T, L>(c[0], x), load(c[0], x + 1), load(c[0], x + 2)],
            [load::<T, L>(c[1], x), load(c[1], x + 1), load(c[1], x + 2)],
            [load::<T, L>(c[2], x), load(c[2], x + 1), load(c[2], x + 2)],
        ];
        let lo = MinMax::hi(MinMax::hi(l[0], l[1]), l[2]);
        let mid = med3(m[0], m[1], m[2]);
        let hi = MinMax::lo(MinMax::lo(h[0], h[1]), h[2]);
        let r = med3(lo, mid, hi);
        let out = &mut out[x..x + L];
        for i in 0..L {
            out[i] = r[i].to_f32();
        }
    }
    lane_groups!(out.len(), group::<T, L>(&c, out));
}

/// `L` consecutive values of `row` from `x`.
#[inline(always)]
fn load<T: Lane, const L: usize>(row: &[T], x: usize) -> [T; L] {
    let mut a = [T::default(); L];
    a.copy_from_slice(&row[x..x + L]);
    a
}

/// `L` consecutive values of `row` from `x`, as `T`.
#[inline(always)]
fn load_f32<T: Lane, const L: usize>(row: &[f32], x: usize) -> [T; L] {
    let row = &row[x..x + L];
    let mut a = [T::default(); L];
    for i in 0..L {
        a[i] = T::from_f32(row[i]);
    }
    a
}

/// Lane group `x` of each of `N` rows.
#[inline(always)]
fn load_rows<T: Lane, const L: usize, const N: usize>(rows: &[&[T]; N], x: usize) -> [[T; L]; N] {
    let mut v = [[T::default(); L]; N];
    for k in 0..N {
        v[k] = load(rows[k], x);
    }
    v
}

/// Three source rows (from `Grid::row`), sorted position by position, into `out` as 3 rows (low,
/// middle, high) of `nx + 2` padded x.
#[inline(always)]
fn sort3_rows<T: Lane, const L: usize>(r: [&[f32]; 3], g: &Grid, out: &mut [T]) {
    let nx = g.n[2];
    let w = nx + 2;
    let r = [&r[0][..nx], &r[1][..nx], &r[2][..nx]];
    for xp in [0, w - 1] {
        let mut v = r.map(|row| T::from_f32(g.at(row, xp)));
        sort3(&mut v);
        [out[xp], out[w + xp], out[2 * w + xp]] = v;
    }
    // Padded x = source x + 1.
    #[inline(always)]
    fn group<T: Lane, const L: usize>(r: [&[f32]; 3], out: &mut [T], w: usize, x: usize) {
        let mut v = [[T::default(); L]; 3];
        for k in 0..3 {
            v[k] = load_f32(r[k], x);
        }
        sort3(&mut v);
        for (k, v) in v.iter().enumerate() {
            out[k * w + x + 1..][..L].copy_from_slice(v);
        }
    }
    lane_groups!(nx, group::<T, L>(r, out, w));
}

/// Three consecutive z-sorted rows (as 9: row-major by y, then z-rank) into the sorted 3x3 column at
/// every padded x.
#[inline(always)]
fn sort_columns<T: Lane, const L: usize>(tri: [&[T]; 9], mut col: [&mut [T]; 9]) {
    #[inline(always)]
    fn group<T: Lane, const L: usize>(tri: &[&[T]; 9], col: &mut [&mut [T]; 9], x: usize) {
        let mut v: [[T; L]; 9] = load_rows(tri, x);
        sort9_sorted_triples(&mut v);
        for (c, v) in col.iter_mut().zip(&v) {
            c[x..x + L].copy_from_slice(v);
        }
    }
    lane_groups!(col[0].len(), group::<T, L>(&tri, &mut col));
}

/// Median of each output voxel of a row from the sorted columns at padded x, x + 1, x + 2.
#[inline(always)]
fn select_row<T: Lane, const L: usize>(col: [&[T]; 9], out: &mut [f32]) {
    #[inline(always)]
    fn group<T: Lane, const L: usize>(col: &[&[T]; 9], out: &mut [f32], x: usize) {
        let mut m = [[T::default(); L]; 18];
        for k in 0..9 {
            m[k] = load(col[k], x + 1);
            m[9 + k] = load(col[k], x + 2);
        }
        merge9(&mut m);
        let s: [[T; L]; 9] = load_rows(col, x);
        let r = rank13(&m, &s);
        let out = &mut out[x..x + L];
        for i in 0..L {
            out[i] = r[i].to_f32();
        }
    }
    lane_groups!(out.len(), group::<T, L>(&col, out));
}

/// A comparator of a row network: rows `i < j` get the smaller and the larger value, each only where
/// the selected rank still depends on it.
#[derive(Clone, Copy, Debug)]
struct Comparator {
    i: usize,
    j: usize,
    min: bool,
    max: bool,
}

/// Batcher's merge-exchange sort of `n` (Knuth, TAOCP 5.2.2 Algorithm M; any `n >= 2`) less everything
/// rank `n / 2` does not depend on: about 60% of a sort, and no data-dependent branch.
fn median_network(n: usize) -> Vec<Comparator> {
    let t = usize::BITS - (n - 1).leading_zeros();
    let mut net = Vec::new();
    let mut p = 1usize << (t - 1);
    while p > 0 {
        let (mut q, mut r, mut d) = (1usize << (t - 1), 0, p);
        loop {
            net.extend((0..n - d).filter(|i| i & p == r).map(|i| (i, i + d)));
            if q == p {
                break;
            }
            (d, q, r) = (q - p, q >> 1, p);
        }
        p >>= 1;
    }
    let mut need = vec![false; n];
    need[n / 2] = true;
    let mut kept = Vec::new();
    for &(i, j) in net.iter().rev() {
        if need[i] || need[j] {
            kept.push(Comparator {
                i,
                j,
                min: need[i],
                max: need[j],
            });
            need[i] = true;
            need[j] = true;
        }
    }
    kept.reverse();
    kept
}

/// Applies `net` to rows of `b` values, each comparator one pass over two contiguous rows. Plain
/// loops, no closures: `by_network` runs in `simd::dispatch!`'s copies, and a closure would be
/// compiled apart from them, at the baseline.
#[inline(always)]
fn apply_rows<T: Lane>(net: &[Comparator], rows: &mut [T], b: usize) {
    for c in net {
        let (head, tail) = rows.split_at_mut(c.j * b);
        let (lo, hi) = (&mut head[c.i * b..][..b], &mut tail[..b]);
        match (c.min, c.max) {
            (true, true) => {
                for k in 0..b {
                    let (l, h) = (lo[k], hi[k]);
                    lo[k] = min(l, h);
                    hi[k] = max(l, h);
                }
            }
            (true, false) => {
                for k in 0..b {
                    lo[k] = min(lo[k], hi[k]);
                }
            }
            _ => {
                for k in 0..b {
                    hi[k] = max(lo[k], hi[k]);
                }
            }
        }
    }
}

/// Working rows of the generic paths: the window's boundary-extended source rows for one output row,
/// then the window(s) being selected from.
#[derive(Default)]
struct Rows<T> {
    padded: Vec<T>,
    window: Vec<T>,
}

/// The `sz * sy` source rows of output row `y` of plane `z`, each extended by `sx / 2` on both sides.
#[inline(always)]
fn padded_rows<T: Lane>(src: &[f32], g: &Grid, [z, y]: [usize; 2], out: &mut Vec<T>) {
    let [sz, sy, sx] = g.size;
    let w = g.n[2] + sx - 1;
    let h = sx / 2;
    out.resize(sz * sy * w, T::default());
    let mut rows = out.chunks_exact_mut(w);
    for zp in z..z + sz {
        for yp in y..y + sy {
            let row = g.row(src, zp, yp);
            let dst = rows.next().expect("sz * sy rows");
            // The interior straight from the row; the extended ends through the boundary map.
            for (xp, d) in dst.iter_mut().enumerate().take(h) {
                *d = T::from_f32(g.at(row, xp));
            }
            let inner = &mut dst[h..w - h];
            for x in 0..inner.len() {
                inner[x] = T::from_f32(row[x]);
            }
            for (xp, d) in dst.iter_mut().enumerate().skip(w - h) {
                *d = T::from_f32(g.at(row, xp));
            }
        }
    }
}

/// Per block of x, gathers the windows as one row per window element and runs `net` over the rows.
#[inline(always)]
fn by_network<T: Lane>(
    src: &[f32],
    g: &Grid,
    net: &[Comparator],
    out: &mut [f32],
    [z, y0]: [usize; 2],
    s: &mut Rows<T>,
) {
    let sx = g.size[2];
    let nx = g.n[2];
    let w = nx + sx - 1;
    let n: usize = g.size.iter().product();
    // Each comparator costs a pass, so rows as long as possible while the block stays within
    // ~64 KiB (measured: longer ones fall out of cache and get slower); equal blocks, no short tail.
    let max_block = (16384 / n).clamp(16, 256);
    let block = nx.div_ceil(nx.div_ceil(max_block));
    for (y, out) in (y0..).zip(out.chunks_exact_mut(nx)) {
        padded_rows(src, g, [z, y], &mut s.padded);
        for (x0, out) in (0..).step_by(block).zip(out.chunks_mut(block)) {
            let b = out.len();
            s.window.resize(n * b, T::default());
            let mut rows = s.window.chunks_exact_mut(b);
            for row in s.padded.chunks_exact(w) {
                for dx in 0..sx {
                    let dst = rows.next().expect("n rows");
                    dst.copy_from_slice(&row[x0 + dx..][..b]);
                }
            }
            apply_rows(net, &mut s.window[..n * b], b);
            for (o, v) in out.iter_mut().zip(&s.window[n / 2 * b..][..b]) {
                *o = v.to_f32();
            }
        }
    }
}

/// Values of the padded rows above which `by_selection` gathers straight from the source: windows
/// far longer than the volume (which scipy allows) would otherwise make them much larger than it.
const PADDED_MAX: usize = 1 << 20;

/// Windows beyond `NETWORK_MAX`: gathers each window's total-order keys and selects.
fn by_selection(src: &[f32], g: &Grid, out: &mut [f32], [z, y0]: [usize; 2], s: &mut Rows<i32>) {
    let [sz, sy, sx] = g.size;
    let nx = g.n[2];
    let w = nx + sx - 1;
    let rank = g.size.iter().product::<usize>() / 2;
    if sz * sy * w > PADDED_MAX {
        for (y, out) in (y0..).zip(out.chunks_exact_mut(nx)) {
            for (x, o) in out.iter_mut().enumerate() {
                s.window.clear();
                for zp in z..z + sz {
                    for yp in y..y + sy {
                        let row = g.row(src, zp, yp);
                        s.window
                            .extend((x..x + sx).map(|xp| i32::from_f32(g.at(row, xp))));
                    }
                }
                *o = s.window.select_nth_unstable(rank).1.to_f32();
            }
        }
        return;
    }
    for (y, out) in (y0..).zip(out.chunks_exact_mut(nx)) {
        padded_rows(src, g, [z, y], &mut s.padded);
        for (x, o) in out.iter_mut().enumerate() {
            s.window.clear();
            for row in s.padded.chunks_exact(w) {
                s.window.extend_from_slice(&row[x..x + sx]);
            }
            *o = s.window.select_nth_unstable(rank).1.to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(net: &[(usize, usize)], v: &mut [u8]) {
        for &(i, j) in net {
            if v[i] > v[j] {
                v.swap(i, j);
            }
        }
    }

    /// 0-1 principle: a comparator network sorts (or selects) every input iff it does so for every
    /// input of 0s and 1s satisfying its precondition.
    #[test]
    fn networks_sort_all_zero_one_inputs() {
        for bits in 0u32..8 {
            let mut v: Vec<u8> = (0..3).map(|i| (bits >> i) as u8 & 1).collect();
            apply(SORT3, &mut v);
            assert!(v.is_sorted(), "sort3 {bits:03b}");
        }
        for bits in 0u32..512 {
            let mut v: Vec<u8> = (0..9).map(|i| (bits >> i) as u8 & 1).collect();
            if !v.chunks(3).all(|t| t.is_sorted()) {
                continue;
            }
            let mut want = v.clone();
            want.sort();
            apply(SORT9_SORTED_TRIPLES, &mut v);
            assert_eq!(v, want, "sort9 {bits:09b}");
        }
        for ones_a in 0..=9 {
            for ones_b in 0..=9 {
                let mut v: Vec<u8> = (0..9).map(|i| (i >= 9 - ones_a) as u8).collect();
                v.extend((0..9).map(|i| (i >= 9 - ones_b) as u8));
                let mut want = v.clone();
                want.sort();
                apply(MERGE9, &mut v);
                let got: Vec<u8> = MERGE9_RANK.iter().map(|&w| v[w]).collect();
                assert_eq!(got, want, "merge9 {ones_a} {ones_b}");
            }
        }
    }

    impl MinMax for u8 {
        fn lo(a: u8, b: u8) -> u8 {
            a.min(b)
        }
        fn hi(a: u8, b: u8) -> u8 {
            a.max(b)
        }
    }

    /// The 1x3x3 path's rule, by the 0-1 principle (min and max only): for three columns of three,
    /// each sorted, med3(largest low, median middle, smallest high) is the median of the nine.
    #[test]
    fn median_of_three_sorted_columns_is_the_median_of_nine() {
        for bits in 0u32..512 {
            let mut cols: Vec<[u8; 3]> = (0..3)
                .map(|c| std::array::from_fn(|k| (bits >> (3 * c + k)) as u8 & 1))
                .collect();
            cols.iter_mut().for_each(|c| c.sort());
            let lo = cols.iter().map(|c| c[0]).max().unwrap();
            let hi = cols.iter().map(|c| c[2]).min().unwrap();
            let mid = med3(cols[0][1], cols[1][1], cols[2][1]);
            let mut all: Vec<u8> = cols.concat();
            all.sort();
            assert_eq!(med3(lo, mid, hi), all[4], "{bits:09b}");
        }
    }

    #[test]
    fn median_network_selects_the_median() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for n in (3..=NETWORK_MAX).step_by(2) {
            let net: Vec<(usize, usize)> = median_network(n).iter().map(|c| (c.i, c.j)).collect();
            // Exhaustive 0-1 inputs while that is cheap, then random ones with ties.
            let cases = if n <= 15 { 1u64 << n } else { 2000 };
            for case in 0..cases {
                let mut v: Vec<u8> = (0..n)
                    .map(|i| {
                        if n <= 15 {
                            (case >> i) as u8 & 1
                        } else {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            (rng % 5) as u8
                        }
                    })
                    .collect();
                let mut want = v.clone();
                want.sort();
                apply(&net, &mut v);
                assert_eq!(v[n / 2], want[n / 2], "n {n}, case {case}");
            }
        }
    }

    /// The network paths give the same bits at every level the machine has: the 3x3x3 path's lane
    /// groups (16, 8 or 4 wide, the last overlapping, single voxels in rows shorter than a group) and
    /// the other windows' row networks, on both orders (plain f32, and keys where a NaN or -0.0 is
    /// present), in every mode, rows shorter and longer than the widest group.
    #[test]
    fn every_vector_level_gives_the_scalar_bits() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 7) as f32 * 0.5 - 1.5
        };
        for (nz, ny, nx) in [
            (3, 3, 3),
            (4, 5, 67),
            (2, 9, 17),
            (3, 4, 16),
            (1, 3, 1),
            (5, 2, 33),
        ] {
            let v = Array3::from_shape_fn((nz, ny, nx), |_| next());
            let mut odd = v.clone();
            odd[[0, 0, 0]] = -0.0;
            odd[[nz - 1, ny - 1, nx - 1]] = f32::NAN;
            for v in [v, odd] {
                for (mode, size) in BoundaryMode::ALL
                    .into_iter()
                    .flat_map(|m| [[3, 3, 3], [1, 3, 3], [3, 1, 5], [5, 5, 5]].map(|s| (m, s)))
                {
                    let p = MedianParams::new(size, mode, 0.25).unwrap();
                    let want = median3d_at(Level::Scalar, v.view(), &p);
                    for level in simd::available() {
                        let got = median3d_at(level, v.view(), &p);
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "({nz}, {ny}, {nx}) {size:?} {mode:?} {level:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn keys_order_as_total_cmp_and_round_trip() {
        let v = [
            f32::NEG_INFINITY,
            -3.5,
            -f32::MIN_POSITIVE,
            -1e-45,
            -0.0,
            0.0,
            1e-45,
            2.0,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
        ];
        for a in v {
            assert_eq!(i32::from_f32(a).to_f32().to_bits(), a.to_bits());
            for b in v {
                assert_eq!(
                    i32::from_f32(a).cmp(&i32::from_f32(b)),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
    }
}
