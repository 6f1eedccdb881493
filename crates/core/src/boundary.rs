//! Index extension beyond the volume's edges, as scipy.ndimage does it for filters and splines.

use crate::params::BoundaryMode;

/// Where sample `i` (possibly outside `0..n`) of a filter window reads from, as scipy.ndimage's rank
/// filters do (`NI_InitFilterOffsets`); `None` means the constant `cval`. Mirrors `extend_index` in
/// `shaders/common.wgsl`, and the median's naive reference, fast kernel and shader all go through it.
///
/// A window may be longer than the axis: the extension then repeats periodically (period `2n` for
/// `reflect`, `2n - 2` for `mirror`, `n` for `wrap`), so any odd window runs on any shape, as in scipy.
/// On one sample every mode but `constant` repeats it (`mirror` included, whose period would be 0).
/// One scipy defect is not copied: in `reflect` on an axis of `n >= 2`, scipy 1.17 maps the taps
/// `i = -2n·k`, `k >= 2`, to `-1` (its reduction lands on 0 and reflects once more) and reads the sample
/// before the line, outside the volume for the first line; only windows with a half-width of at least
/// `4n` reach such a tap. Here they read sample 0, the period's value.
pub fn filter_index(i: isize, n: usize, mode: BoundaryMode) -> Option<usize> {
    let n = n as isize;
    if (0..n).contains(&i) {
        return Some(i as usize);
    }
    let j = match mode {
        BoundaryMode::Constant => return None,
        BoundaryMode::Nearest => i.clamp(0, n - 1),
        BoundaryMode::Wrap => i.rem_euclid(n),
        BoundaryMode::Reflect => {
            let j = i.rem_euclid(2 * n);
            if j >= n {
                2 * n - 1 - j
            } else {
                j
            }
        }
        BoundaryMode::Mirror => {
            if n == 1 {
                0
            } else {
                let j = i.rem_euclid(2 * n - 2);
                if j >= n {
                    2 * n - 2 - j
                } else {
                    j
                }
            }
        }
    };
    Some(j as usize)
}

/// scipy's `map_coordinate` (ni_interpolation.c) for the spline interpolators: maps a coordinate
/// outside `[0, len-1]` back inside; `-1.0` flags "outside" for `constant`. The branches copy the C
/// code, including legacy `wrap` with period `len - 1` and the integer truncations.
pub fn map_coordinate(mut x: f64, len: usize, mode: BoundaryMode) -> f64 {
    let len_i = len as i64;
    let lenf = len as f64;
    if x < 0.0 {
        match mode {
            BoundaryMode::Mirror => {
                if len <= 1 {
                    x = 0.0;
                } else {
                    let sz2 = (2 * len_i - 2) as f64;
                    x += sz2 * ((-x / sz2) as i64) as f64;
                    x = if x <= 1.0 - lenf { x + sz2 } else { -x };
                }
            }
            BoundaryMode::Reflect => {
                if len <= 1 {
                    x = 0.0;
                } else {
                    let sz2 = (2 * len_i) as f64;
                    if x < -sz2 {
                        x += sz2 * ((-x / sz2) as i64) as f64;
                    }
                    x = if x < -lenf {
                        x + sz2
                    } else {
                        (if x > -1e-15 { 1e-15 } else { -x }) - 1.0
                    };
                }
            }
            BoundaryMode::Wrap => {
                if len <= 1 {
                    x = 0.0;
                } else {
                    let sz = (len_i - 1) as f64;
                    x += sz * (((-x / sz) as i64) + 1) as f64;
                }
            }
            BoundaryMode::Nearest => x = 0.0,
            BoundaryMode::Constant => x = -1.0,
        }
    } else if x > lenf - 1.0 {
        match mode {
            BoundaryMode::Mirror => {
                if len <= 1 {
                    x = 0.0;
                } else {
                    let sz2 = (2 * len_i - 2) as f64;
                    x -= sz2 * ((x / sz2) as i64) as f64;
                    if x >= lenf {
                        x = sz2 - x;
                    }
                }
            }
            BoundaryMode::Reflect => {
                if len <= 1 {
                    x = 0.0;
                } else {
                    let sz2 = (2 * len_i) as f64;
                    x -= sz2 * ((x / sz2) as i64) as f64;
                    if x >= lenf {
                        x = sz2 - x - 1.0;
                    }
                }
            }
            BoundaryMode::Wrap => {
                if len <= 1 {
                    x = 0.0;
                } else {
                    let sz = (len_i - 1) as f64;
                    x -= sz * ((x / sz) as i64) as f64;
                }
            }
            BoundaryMode::Nearest => x = lenf - 1.0,
            BoundaryMode::Constant => x = -1.0,
        }
    }
    x
}

/// scipy's `map_coordinate` for `grid-wrap` (`NI_EXTEND_GRID_WRAP`, which `BoundaryMode` does not
/// offer: only scikit-image's disambiguation uses it): a coordinate outside `[0, len-1]` wraps with
/// period `len`, the integer truncations as in the C code.
pub fn map_coordinate_grid_wrap(mut x: f64, len: usize) -> f64 {
    let lenf = len as f64;
    if x < 0.0 {
        if len <= 1 {
            x = 0.0;
        } else {
            x += lenf * (((-1.0 - x) / lenf) as i64 + 1) as f64;
        }
    } else if x > lenf - 1.0 {
        if len <= 1 {
            x = 0.0;
        } else {
            x -= lenf * ((x / lenf) as i64) as f64;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_modes_match_scipy_documentation() {
        // scipy.ndimage docs, input `a b c d` = 0 1 2 3, three samples each side.
        let ext = |mode| {
            (-3..7)
                .map(|i| filter_index(i, 4, mode).map(|j| j as i32).unwrap_or(-1))
                .collect::<Vec<_>>()
        };
        assert_eq!(ext(BoundaryMode::Reflect), [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
        assert_eq!(ext(BoundaryMode::Mirror), [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(ext(BoundaryMode::Nearest), [0, 0, 0, 0, 1, 2, 3, 3, 3, 3]);
        assert_eq!(ext(BoundaryMode::Wrap), [1, 2, 3, 0, 1, 2, 3, 0, 1, 2]);
        assert_eq!(
            ext(BoundaryMode::Constant),
            [-1, -1, -1, 0, 1, 2, 3, -1, -1, -1]
        );
    }

    /// Windows longer than the axis: the source of every tap `-8..n + 8` (half-width 8 around each
    /// sample) on axes of 1 to 4 samples, as scipy 1.17.1 reads them (printed by
    /// `scipy.ndimage.generic_filter(a, f, size=(1, 1, 17), mode=mode, cval=-1)` on
    /// `a = 1000 * arange(3)[:, None] + arange(n)`, middle row; -1 is cval). One entry is not scipy's:
    /// `reflect`, n = 2, tap -8 (first entry) is 0 here, where scipy reads the sample before the line
    /// (the defect in `filter_index`'s doc).
    #[test]
    fn windows_longer_than_the_axis_match_scipy() {
        type Taps = &'static [(usize, &'static [i32])];
        #[rustfmt::skip]
        let known: [(BoundaryMode, Taps); 5] = [
            (BoundaryMode::Reflect, &[
                (1, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                (2, &[0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1]),
                (3, &[1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1]),
                (4, &[0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3]),
            ]),
            (BoundaryMode::Nearest, &[
                (1, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                (2, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
                (3, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]),
                (4, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3]),
            ]),
            (BoundaryMode::Mirror, &[
                (1, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                (2, &[0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]),
                (3, &[0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2]),
                (4, &[2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]),
            ]),
            (BoundaryMode::Constant, &[
                (1, &[-1, -1, -1, -1, -1, -1, -1, -1, 0, -1, -1, -1, -1, -1, -1, -1, -1]),
                (2, &[-1, -1, -1, -1, -1, -1, -1, -1, 0, 1, -1, -1, -1, -1, -1, -1, -1, -1]),
                (3, &[-1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 2, -1, -1, -1, -1, -1, -1, -1, -1]),
                (4, &[-1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, -1, -1, -1, -1]),
            ]),
            (BoundaryMode::Wrap, &[
                (1, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                (2, &[0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]),
                (3, &[1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]),
                (4, &[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]),
            ]),
        ];
        for (mode, rows) in known {
            for &(n, want) in rows {
                let got: Vec<i32> = (-8..n as isize + 8)
                    .map(|i| filter_index(i, n, mode).map_or(-1, |j| j as i32))
                    .collect();
                assert_eq!(got, want, "{mode}, n = {n}");
            }
        }
    }
}
