#!/usr/bin/env python3
"""Generate tests/fixtures/disambiguate.h5: scipy's grid-wrap shift and scikit-image's
phase_cross_correlation(..., disambiguate=True), for gpuprep's --disambiguate (issue 12).

Run from the repository root with the venv that has numpy, scipy, scikit-image and h5py:

    python3 scripts/make_disambiguate_fixture.py

Deterministic (numpy.random.default_rng with fixed seeds); separate from make_fixtures.py so that
golden.h5 is not regenerated for it. Versions are root attributes.

Layout:
  /gridwrap/case_NNN   attrs: shift (float64[3]), order (int64)
                       datasets: input float32 (z, y, x); output float32 =
                       scipy.ndimage.shift(input, shift, order=order, mode='grid-wrap')
                       Odd and prime shapes, a singleton axis, shifts past the volume's size, exact
                       multiples of it and half-voxel ties.
  /disambiguate/case_NNN
                       attrs: true_shift (float64[3], the shift that registers moving onto
                       reference), upsample_factor (int64), normalization ("phase" / "none")
                       datasets: reference, moving float32 (z, y, x): two windows of one textured
                       field, offset by true_shift, beyond half the field of view along some axes
                       (scikit-image's test_disambiguate_2d, in 3-D);
                       plain float64[3]: phase_cross_correlation(reference, moving, ...)[0];
                       disambiguated float64[3]: the same with disambiguate=True.
"""

import h5py
import numpy as np
import scipy
import scipy.ndimage as ndi
import skimage
from skimage.registration import phase_cross_correlation

OUT = "tests/fixtures/disambiguate.h5"

GRIDWRAP = [
    ((5, 7, 11), (0.4, -1.3, 2.7)),
    ((5, 7, 11), (-6.5, 9.25, -13.0)),
    ((3, 13, 6), (1.5, -0.5, 2.5)),
    ((3, 13, 6), (-3.0, 13.0, -6.0)),
    ((1, 17, 19), (0.0, 8.6, -9.4)),
    ((2, 2, 9), (0.7, -2.2, 31.1)),
]

# (field shape, window shape, true shift, upsample factor, normalization)
DISAMBIGUATE = [
    ((1, 90, 90), (1, 47, 43), (0, -31, 28), 1, "phase"),
    ((1, 90, 90), (1, 47, 43), (0, 27, -30), 1, "phase"),
    ((8, 64, 64), (5, 32, 30), (0, 20, -17), 1, "phase"),
    ((10, 64, 64), (7, 32, 30), (-2, -18, 17), 1, "phase"),
    ((10, 64, 64), (7, 32, 30), (2, 18, -17), 4, "phase"),
    ((1, 90, 90), (1, 45, 45), (0, -26, 28), 10, "phase"),
    ((8, 64, 64), (5, 32, 30), (1, -19, 16), 1, "none"),
    ((8, 64, 64), (5, 32, 30), (0, 5, -3), 1, "phase"),
    ((8, 64, 64), (5, 32, 30), (-3, -22, 20), 1, "phase"),
]
# Sub-voxel: the moving window of these is the field shifted by (0, 0.5, -0.25) first (cubic,
# wrap), so the upsampled shift is not whole and the disambiguation shifts with order 3.
SUBVOXEL = {4, 5}


def textured(rng, shape):
    """Uniform noise, as scikit-image's stand-in for a highly textured image, plus a slow ramp so
    that the tiles' correlations are not all alike."""
    ramp = np.linspace(0, 0.5, shape[-1])[None, None, :]
    return (rng.random(shape) + ramp).astype(np.float32)


def main():
    with h5py.File(OUT, "w") as h:
        h.attrs["numpy_version"] = np.__version__
        h.attrs["scipy_version"] = scipy.__version__
        h.attrs["skimage_version"] = skimage.__version__
        g = h.create_group("gridwrap")
        rng = np.random.default_rng(1212)
        k = 0
        for shape, shift in GRIDWRAP:
            vol = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
            for order in (0, 1, 3):
                c = g.create_group(f"case_{k:03d}")
                c.attrs["shift"] = np.array(shift, dtype=np.float64)
                c.attrs["order"] = order
                c.create_dataset("input", data=vol)
                c.create_dataset("output", data=ndi.shift(vol, shift, order=order, mode="grid-wrap"))
                k += 1
        g = h.create_group("disambiguate")
        for k, (field_shape, win, shift, u, norm) in enumerate(DISAMBIGUATE):
            field = textured(np.random.default_rng(100 + k), field_shape)
            origin0 = [0 if s > 0 else -s for s in shift]
            origin1 = [o + s for o, s in zip(origin0, shift)]
            assert all(o1 >= 0 and o1 + w <= n for o1, w, n in zip(origin1, win, field_shape))
            reference = field[tuple(slice(o, o + w) for o, w in zip(origin0, win))]
            moved = field
            if k in SUBVOXEL:
                moved = ndi.shift(field, (0, 0.5, -0.25), order=3, mode="wrap")
                shift = tuple(np.array(shift, dtype=np.float64) - (0, 0.5, -0.25))
            moving = moved[tuple(slice(o, o + w) for o, w in zip(origin1, win))]
            assert reference.shape == tuple(win) and moving.shape == tuple(win)
            normalization = None if norm == "none" else "phase"
            plain = phase_cross_correlation(
                reference, moving, upsample_factor=u, normalization=normalization
            )[0]
            amb = phase_cross_correlation(
                reference, moving, upsample_factor=u, normalization=normalization, disambiguate=True
            )[0]
            c = g.create_group(f"case_{k:03d}")
            c.attrs["true_shift"] = np.array(shift, dtype=np.float64)
            c.attrs["upsample_factor"] = u
            c.attrs["normalization"] = norm
            c.create_dataset("reference", data=np.ascontiguousarray(reference), compression="gzip")
            c.create_dataset("moving", data=np.ascontiguousarray(moving), compression="gzip")
            c.create_dataset("plain", data=np.asarray(plain, dtype=np.float64))
            c.create_dataset("disambiguated", data=np.asarray(amb, dtype=np.float64))
            print(k, shift, "plain", plain, "disambiguated", amb)


if __name__ == "__main__":
    main()
