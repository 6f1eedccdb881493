#!/usr/bin/env python3
"""Generate tests/fixtures/zscore_edge.h5: scipy.stats.zscore edge cases for gpuprep (issue 8, item 7).

Run from the repository root with the venv that has numpy, scipy and h5py:

    python3 scripts/make_zscore_fixture.py

Deterministic (numpy.random.default_rng with fixed seeds); separate from make_fixtures.py so that
golden.h5 is not regenerated for it.

Layout: one group per case, /<case>, with
  attrs:    ddof (int64), scipy_version, numpy_version (str)
  datasets: input   float32 (t, z, y, x): the series
            zscore  float64 (t, z, y, x): scipy.stats.zscore(input.astype(float64), axis=0, ddof=ddof)
                    (what gpuprep promises to float32 rounding, NaN set included)
            zscore_f32 float64: scipy.stats.zscore(input, axis=0, ddof=ddof) computed in float32, for
                    contrast (its eps and rounding are float32's; not what gpuprep matches)

Cases:
  two_timepoints   2 timepoints, mean 500, small differences: the exact z-score is +-1 everywhere
                   (float32 moments gave 0.5 and 1.5 at a large mean / std), a few equal pairs (NaN).
  near_constant    3 timepoints of 1e4 + 1e-3 noise in float32 (the noise is about one float32 ulp at
                   1e4, so many voxels are exactly constant and the others differ by an ulp or two).
  large_mean       4 timepoints of 1000 + tiny noise (a few float32 ulps).
  constant         5 timepoints; exactly constant voxels (0, 1e-30, -7.5, 3e38) among random ones.
  ddof1            4 timepoints with constant voxels, ddof=1.
"""

import warnings

import h5py
import numpy as np
import scipy
import scipy.stats

OUT = "tests/fixtures/zscore_edge.h5"
SHAPE = (3, 4, 5)


def case_two_timepoints():
    rng = np.random.default_rng(801)
    a = (500 + rng.standard_normal(SHAPE) * 1e-2).astype(np.float32)
    # Differences of 1..8 float32 ulps (2**-15 at 500): for odd ones the mean is not a float32.
    b = (a + rng.choice([-1, 1], SHAPE) * rng.integers(1, 9, SHAPE) * 2.0**-15).astype(np.float32)
    b[0, 0, :2] = a[0, 0, :2]  # equal pairs: constant voxels
    return np.stack([a, b]), 0


def case_near_constant():
    rng = np.random.default_rng(802)
    return (1e4 + 1e-3 * rng.standard_normal((3,) + SHAPE)).astype(np.float32), 0


def case_large_mean():
    rng = np.random.default_rng(803)
    return (1000 + 1e-4 * rng.standard_normal((4,) + SHAPE)).astype(np.float32), 0


def constant_series(t, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, (t,) + SHAPE).astype(np.float32)
    for i, c in enumerate([0.0, 1e-30, -7.5, 3e38, 0.1]):
        x[:, 0, 0, i] = np.float32(c)
    x[:, 1, 1, 1] = np.float32(12345.678)
    return x


def main():
    # scipy warns of catastrophic cancellation on the near-constant cases: they are the point.
    warnings.simplefilter("ignore", RuntimeWarning)
    cases = {
        "two_timepoints": case_two_timepoints(),
        "near_constant": case_near_constant(),
        "large_mean": case_large_mean(),
        "constant": (constant_series(5, 804), 0),
        "ddof1": (constant_series(4, 805), 1),
    }
    with h5py.File(OUT, "w") as f:
        f.attrs["generator"] = "scripts/make_zscore_fixture.py"
        for name, (x, ddof) in cases.items():
            assert x.dtype == np.float32
            with np.errstate(all="ignore"):
                z64 = scipy.stats.zscore(x.astype(np.float64), axis=0, ddof=ddof)
                z32 = scipy.stats.zscore(x, axis=0, ddof=ddof)
            g = f.create_group(name)
            g.attrs["ddof"] = np.int64(ddof)
            g.attrs["scipy_version"] = scipy.__version__
            g.attrs["numpy_version"] = np.__version__
            g.create_dataset("input", data=x)
            g.create_dataset("zscore", data=z64)
            g.create_dataset("zscore_f32", data=z32.astype(np.float64))
            nan64 = np.isnan(z64[0]).sum()
            nan32 = np.isnan(z32[0]).sum()
            print(f"{name}: shape {x.shape} ddof {ddof}: NaN voxels float64 {nan64}, float32 {nan32}; "
                  f"max |z64 - z32| {np.nanmax(np.abs(z64 - z32)):.3g}")


if __name__ == "__main__":
    main()
