//! Index extension beyond the volume's edges, as scipy.ndimage does it for filters and splines.

use crate::params::BoundaryMode;

/// Where sample `i` (possibly outside `0..n`) of a filter window reads from, following scipy's
/// `NI_ExtendLine`; `None` means the constant `cval`. Mirrors `extend_index` in `shaders/common.wgsl`.
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
}
