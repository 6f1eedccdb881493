#!/usr/bin/env python3
"""Generate the golden test fixtures for gpuprep (deterministic, seeded).

Run from the repository root:

    python3 scripts/make_fixtures.py

Every run overwrites its outputs; with the same library versions the array
contents are identical from run to run (numpy.random.default_rng with fixed
seeds).  The outputs are committed, so the Rust tests need no Python.

Generated with: Python 3.11, numpy 2.4.6, scipy 1.17.1, scikit-image 0.26.0,
h5py 3.16.0 (the versions actually used are also stored as root attributes
``numpy_version``, ``scipy_version``, ``skimage_version``, ``h5py_version``
of golden.h5, and ``generator`` names this script).

Conventions in tests/fixtures/golden.h5 (all uncompressed, contiguous):
  * string attributes are h5py's default: variable-length UTF-8 scalars;
  * integer attributes are int64 scalars; array attributes are int64 / float64
    1-D arrays; float attributes are float64 scalars;
  * scalar results (``error``, ``phasediff``) are 0-d (scalar) float64 datasets.

Layout of tests/fixtures/golden.h5
----------------------------------
/median/case_NNN    attrs: size (int64[3], z,y,x window), mode (str: reflect,
                    nearest, mirror, constant, wrap), cval (float64);
                    datasets: input (float32 3-D),
                    output = scipy.ndimage.median_filter(input, size=tuple(size),
                             mode=mode, cval=cval)            (float32)
                    attr ``kind`` (str) says how the input was drawn
                    (uniform / ties / negative).  Cases 029 on have windows
                    longer than some axis (5 on 1, 2, 4 samples; 15 on 8;
                    15 and 17 on 2; z = 1 with 3x3x3 in every mode); every output is
                    also checked against a sort of windows gathered through
                    ``filter_index`` (scipy's extension, repeated
                    periodically).
/shift/case_NNN     attrs: shift (float64[3]), order (int64: 0, 1, 3),
                    mode (str: constant, nearest, reflect, mirror, wrap),
                    cval (float64);
                    datasets: input (float32 3-D),
                    output = scipy.ndimage.shift(input, shift, order=order,
                             mode=mode, cval=cval)  (float32; prefilter=True)
/register/case_NNN  attrs: upsample_factor (int64), normalization (str:
                    "phase" or "none"; "none" means normalization=None);
                    datasets: reference, moving (float32 3-D),
                    shifts (float64[3]), error (float64, 0-d),
                    phasediff (float64, 0-d) =
                      skimage.registration.phase_cross_correlation(
                          reference, moving, upsample_factor=u,
                          normalization=n)
                    (reference first: ``scipy.ndimage.shift(moving, shifts)``
                    aligns moving onto reference), and true_shift (float64[3]):
                    the circular (Fourier) translation applied to the
                    reference structure to make ``moving`` (so the expected
                    ``shifts`` is about -true_shift, modulo the axis length).
/zscore/case_NNN    attr: ddof (int64, 0 or 1); datasets: input (float32 4-D,
                    t,z,y,x), output = scipy.stats.zscore(input, axis=0,
                    ddof=ddof) computed by scipy on the float32 input
                    (float32; NaN where a voxel's time series is constant),
                    output_f64 = the same on input.astype(float64), cast to
                    float32 (the "exact" answer; it differs from ``output`` by
                    up to ~3e-4 in the large-offset cases).
/pipeline/case_NNN  attrs: upsample_factor (int64), reference_index (int64 0);
                    datasets: input (float32 t,z,y,x), true_shifts
                    (float64[t,3], translation applied per timepoint),
                    filtered = median_filter(input[t], size=(3,3,3),
                               mode='reflect') per volume (float32),
                    shifts (float64[t,3]) = phase_cross_correlation(
                               filtered[0], filtered[t], upsample_factor=u,
                               normalization='phase'),
                    registered = scipy.ndimage.shift(filtered[t], shifts[t],
                               order=3, mode='constant', cval=0) (float32),
                    output = scipy.stats.zscore(registered, axis=0) (float32,
                               computed by scipy in float32),
                    output_f64 = the same computed in float64, cast to float32.
                    case_000: t=5, (9,14,11), sub-pixel shifts, u=10;
                    case_001: t=4, (8,10,12), integer shifts, u=1.

tests/fixtures/io/ (written by h5py, for the HDF5 reader tests)
---------------------------------------------------------------
u8.h5 u16.h5 i16.h5 i32.h5 f32.h5 f64.h5  dataset ``default`` (3,4,5) =
                                          np.arange(60).reshape(3,4,5) cast
gzip_chunked.h5     float32 (4,6,5) ``default`` = arange, chunks (2,3,5), gzip 4
series4d.h5         float32 (3,4,5,6) ``data`` = arange reshaped
series/ind_0000{0,1,2}.h5  float64 (4,5,6) ``default`` = t*1000 + arange(120)
wrong_rank.h5       float32 (4,5) ``default`` (rank 2)
other_name.h5       float32 (3,4,5) ``volume`` (no ``default``)
not_hdf5.h5         the text "this is not an HDF5 file\\n"
truncated.h5        valid file (float32 (8,8,8) ``default`` = arange,
                    contiguous) cut to half its length
shape_mismatch/ind_00000.h5 float32 (4,5,6), ind_00001.h5 float32 (4,5,7)
dtype_mismatch/ind_00000.h5 float32 (4,5,6), ind_00001.h5 uint16 (4,5,6)
"""

import os
import shutil
import sys
import warnings

import h5py
import numpy as np
import scipy
import scipy.ndimage as ndi
import scipy.stats
import skimage
from skimage.registration import phase_cross_correlation

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
IO = os.path.join(FIX, "io")

F32 = np.float32


def dset(group, name, data):
    return group.create_dataset(name, data=data, track_times=False)


# ----------------------------------------------------------------------------
# golden.h5
# ----------------------------------------------------------------------------

def smooth(rng, shape, sigma=1.5):
    """Smooth random structure (gaussian-filtered noise, wrap), unit-ish std."""
    v = ndi.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return v / v.std()


def fourier_translate(vol, shift):
    """Circular sub-pixel translation of vol by shift (positive = towards higher index)."""
    return np.fft.ifftn(ndi.fourier_shift(np.fft.fftn(vol), shift)).real


def check_stable(name, ref, mov, u, norm, shifts):
    """Warn when the peak is fragile: float64 inputs with 1e-6 jitter must give the same shift."""
    jitter = np.random.default_rng(7).standard_normal(ref.shape) * 1e-6
    s64 = phase_cross_correlation(ref.astype(np.float64) + jitter, mov.astype(np.float64),
                                  upsample_factor=u, normalization=norm)[0]
    if not np.allclose(s64, shifts, atol=1e-6):
        print(f"WARNING: {name}: fragile registration peak {shifts} vs {s64}")


def filter_index(i, n, mode):
    """Source index of sample ``i`` (maybe outside ``0..n``) of a filter window on an axis of ``n``,
    or None for cval: scipy.ndimage's filter extension repeated periodically (crates/core/src/boundary.rs)."""
    if 0 <= i < n:
        return i
    if mode == "constant":
        return None
    if mode == "nearest":
        return min(max(i, 0), n - 1)
    if mode == "wrap":
        return i % n
    if mode == "reflect":
        j = i % (2 * n)
        return 2 * n - 1 - j if j >= n else j
    if n == 1:  # mirror on one sample
        return 0
    j = i % (2 * n - 2)
    return 2 * n - 2 - j if j >= n else j


def median_by_index_map(inp, size, mode, cval):
    """The median by sorting each window gathered through ``filter_index``. scipy's rank filter
    reads outside the line in ``reflect`` for a tap at -2n·k, k >= 2 (n >= 2, half-width >= 4n):
    refuse such cases."""
    r = [s // 2 for s in size]
    for n, h in zip(inp.shape, r):
        assert not (mode == "reflect" and n >= 2 and h >= 4 * n), "scipy reflect defect"
    idx = [[[filter_index(c + d, n, mode) for d in range(-h, h + 1)] for c in range(n)]
           for n, h in zip(inp.shape, r)]
    out = np.empty_like(inp)
    for z, y, x in np.ndindex(*inp.shape):
        w = [cval if None in (a, b, c) else inp[a, b, c]
             for a in idx[0][z] for b in idx[1][y] for c in idx[2][x]]
        out[z, y, x] = np.sort(np.array(w, dtype=F32))[len(w) // 2]
    return out


def median_cases(g):
    rng = np.random.default_rng(1001)
    shapes = [(7, 9, 11), (8, 12, 10), (5, 13, 6), (1, 9, 10), (6, 7, 8)]
    sizes = [(3, 3, 3), (1, 3, 3), (3, 1, 5), (5, 5, 3), (1, 1, 1)]
    modes = ["reflect", "nearest", "mirror", "constant", "wrap"]
    kinds = ["uniform", "ties", "negative"]

    def draw(kind, shape):
        if kind == "uniform":
            return rng.random(shape).astype(F32)
        if kind == "ties":  # few distinct levels, many ties
            return (np.round(rng.random(shape) * 3.0) / 2.0).astype(F32)
        return (rng.standard_normal(shape) * 2.0 - 1.0).astype(F32)  # negative values

    cases = []
    i = 0
    for mode in modes:
        for size in sizes:
            shape = shapes[i % len(shapes)]
            kind = kinds[i % len(kinds)]
            cval = 2.5 if (mode == "constant" and i % 2 == 0) else 0.0
            cases.append((shape, size, mode, cval, kind))
            i += 1
    # extras: constant with negative cval on tie-heavy data, big window on a thin volume
    cases.append(((6, 7, 8), (3, 3, 3), "constant", -1.0, "ties"))
    cases.append(((5, 13, 6), (5, 5, 3), "reflect", 0.0, "ties"))
    cases.append(((1, 9, 10), (3, 3, 3), "mirror", 0.0, "negative"))
    cases.append(((1, 9, 10), (3, 3, 3), "wrap", 0.0, "negative"))

    inputs = [draw(kind, shape) for shape, _, _, _, kind in cases]

    # Windows longer than the axis (issue 8, item 14), drawn from their own generator so that the
    # cases above keep their data: scipy repeats the boundary extension periodically.
    rng = np.random.default_rng(1014)
    short = []
    for mode in modes:
        short.append(((1, 2, 4), (5, 5, 5), mode, 2.5 if mode == "constant" else 0.0, "uniform"))
        short.append(((3, 8, 6), (5, 15, 3), mode, -0.5 if mode == "constant" else 0.0, "ties"))
        # a two-photon movie frame (z = 1) with the default window
        short.append(((1, 12, 13), (3, 3, 3), mode, 0.5 if mode == "constant" else 0.0, "negative"))
    for mode in ["mirror", "wrap"]:
        short.append(((2, 1, 2), (9, 1, 17), mode, 0.0, "uniform"))
    # reflect stays below scipy's defect (a half-width of 4n; see median_by_index_map)
    short.append(((2, 1, 2), (7, 1, 15), "reflect", 0.0, "uniform"))
    short.append(((2, 3, 1), (3, 5, 7), "constant", -0.5, "ties"))
    short.append(((1, 1, 5), (3, 3, 3), "constant", 1.5, "negative"))
    short.append(((1, 1, 6), (1, 1, 5), "mirror", 0.0, "uniform"))
    for shape, size, mode, cval, kind in short:
        cases.append((shape, size, mode, cval, kind))
        inputs.append(draw(kind, shape))

    for n, ((shape, size, mode, cval, kind), inp) in enumerate(zip(cases, inputs)):
        out = ndi.median_filter(inp, size=tuple(size), mode=mode, cval=cval)
        assert out.dtype == F32
        assert np.array_equal(out, median_by_index_map(inp, size, mode, cval)), (shape, size, mode)
        if shape[0] == 1 and size[0] == 3 and mode != "constant":
            # on one plane, reflect/nearest/mirror/wrap repeat it: the (1, 3, 3) window
            one = ndi.median_filter(inp, size=(1,) + tuple(size[1:]), mode=mode, cval=cval)
            assert np.array_equal(out, one), (shape, size, mode)
        c = g.create_group(f"case_{n:03d}")
        c.attrs["size"] = np.array(size, dtype=np.int64)
        c.attrs["mode"] = mode
        c.attrs["cval"] = np.float64(cval)
        c.attrs["kind"] = kind
        dset(c, "input", inp)
        dset(c, "output", out)
    return len(cases)


def shift_cases(g):
    rng = np.random.default_rng(2002)
    shapes = [(7, 9, 11), (8, 12, 10), (5, 13, 6), (6, 7, 8), (9, 10, 7)]
    modes = ["constant", "nearest", "reflect", "mirror", "wrap"]
    # sub-pixel, mixed signs, no fractional part equal to .5 (order-0 rounding ambiguity)
    subpix = [(1.3, -2.6, 0.7), (-0.4, 1.85, -3.2), (2.2, 0.35, -1.1),
              (-1.7, -0.8, 2.45), (0.6, 3.3, -0.25)]
    cases = []
    i = 0
    for order in (0, 1, 3):
        for mode in modes:
            s = subpix[i % len(subpix)]
            cval = 0.75 if mode == "constant" and order != 3 else 0.0
            cases.append((shapes[i % len(shapes)], s, order, mode, cval))
            i += 1
    # extras
    cases += [
        ((7, 9, 11), (2.0, -3.0, 1.0), 3, "constant", 0.0),     # integer shift
        ((8, 12, 10), (1.0, 2.0, -4.0), 1, "wrap", 0.0),        # integer shift
        ((6, 7, 8), (-2.0, 3.0, 0.0), 0, "reflect", 0.0),       # integer shift
        ((7, 9, 11), (0.0, 0.0, 0.0), 3, "constant", 0.0),      # zero shift
        ((5, 13, 6), (0.0, 0.0, 0.0), 0, "nearest", 0.0),       # zero shift
        ((5, 13, 6), (3.4, -8.3, 4.2), 3, "wrap", 0.0),         # > half the axis
        ((8, 12, 10), (-5.6, 7.1, 6.3), 1, "reflect", 0.0),     # > half the axis
        ((7, 9, 11), (4.2, -6.7, 7.9), 3, "constant", -1.5),    # > half, cval != 0
        ((6, 7, 8), (-1.25, -2.6, -0.3), 3, "mirror", 0.0),     # all negative
        ((6, 7, 8), (1.2, 0.3, 2.9), 3, "nearest", 0.0),        # all positive
        ((9, 10, 7), (-0.7, 1.4, -2.2), 3, "constant", 3.0),    # order 3, cval != 0
        ((1, 9, 10), (0.0, 1.3, -2.4), 3, "reflect", 0.0),      # singleton z axis
        ((1, 9, 10), (0.4, -1.6, 0.9), 1, "wrap", 0.0),         # shift along a singleton axis
    ]
    for n, (shape, s, order, mode, cval) in enumerate(cases):
        inp = (ndi.gaussian_filter(rng.standard_normal(shape), 0.7) * 3.0
               + 0.5 * rng.standard_normal(shape)).astype(F32)
        out = ndi.shift(inp, s, order=order, mode=mode, cval=cval)
        assert out.dtype == F32
        c = g.create_group(f"case_{n:03d}")
        c.attrs["shift"] = np.array(s, dtype=np.float64)
        c.attrs["order"] = np.int64(order)
        c.attrs["mode"] = mode
        c.attrs["cval"] = np.float64(cval)
        dset(c, "input", inp)
        dset(c, "output", out)
    return len(cases)


def register_cases(g):
    rng = np.random.default_rng(3003)
    P, N = "phase", "none"
    cases = [
        # shape, true_shift, upsample, normalization
        ((7, 9, 11), (2.0, -3.0, 4.0), 1, P),
        ((7, 9, 11), (-1.0, 2.0, -5.0), 1, N),
        ((6, 10, 14), (4.0, -6.0, 9.0), 1, P),      # larger than half: wraps
        ((8, 12, 10), (1.3, -2.6, 0.7), 1, P),
        ((8, 12, 10), (1.3, -2.6, 0.7), 4, P),
        ((8, 12, 10), (1.3, -2.6, 0.7), 10, N),
        ((5, 13, 6), (-0.8, 3.35, 1.55), 10, P),
        ((9, 16, 15), (2.15, -1.45, 3.7), 20, P),
        ((9, 16, 15), (-1.6, 0.25, -2.9), 20, N),
        ((1, 9, 10), (0.0, 2.4, -1.7), 10, P),      # singleton axis
        ((1, 9, 10), (0.0, -3.0, 2.0), 1, N),       # singleton axis, integer
        ((7, 12, 9), (0.0, 0.0, 0.0), 10, P),       # zero shift
        ((11, 8, 13), (-2.3, 1.1, -4.6), 4, N),
    ]
    for n, (shape, ts, u, norm) in enumerate(cases):
        base = smooth(rng, shape, sigma=1.0)
        ref = (base + 0.01 * rng.standard_normal(shape)).astype(F32)
        mov = (fourier_translate(base, ts) + 0.01 * rng.standard_normal(shape)).astype(F32)
        shifts, err, pdiff = phase_cross_correlation(
            ref, mov, upsample_factor=u, normalization=(None if norm == N else norm))
        check_stable(f"register/case_{n:03d}", ref, mov, u, None if norm == N else norm, shifts)
        c = g.create_group(f"case_{n:03d}")
        c.attrs["upsample_factor"] = np.int64(u)
        c.attrs["normalization"] = norm
        dset(c, "reference", ref)
        dset(c, "moving", mov)
        dset(c, "shifts", np.asarray(shifts, dtype=np.float64))
        dset(c, "error", np.float64(err))
        dset(c, "phasediff", np.float64(pdiff))
        dset(c, "true_shift", np.array(ts, dtype=np.float64))
    return len(cases)


def zscore_cases(g):
    rng = np.random.default_rng(4004)
    specs = [((6, 4, 5, 3), 0, 0.0), ((6, 4, 5, 3), 1, 0.0),
             ((11, 3, 4, 5), 0, 1000.0), ((11, 3, 4, 5), 1, 1000.0),
             ((2, 3, 3, 2), 0, -5.0)]
    for n, (shape, ddof, offset) in enumerate(specs):
        x = (offset + rng.standard_normal(shape)).astype(F32)
        # exactly constant time series at a few voxels (scipy gives NaN there)
        x[:, 0, 0, 0] = F32(offset + 2.0)
        x[:, -1, 1, -1] = F32(0.0)
        x[:, 1, -1, 0] = F32(offset + 0.3)  # not exactly representable: still constant
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = scipy.stats.zscore(x, axis=0, ddof=ddof)
            out64 = scipy.stats.zscore(x.astype(np.float64), axis=0, ddof=ddof)
        assert out.dtype == F32
        assert np.isnan(out[:, 0, 0, 0]).all() and np.isnan(out64[:, 1, -1, 0]).all()
        c = g.create_group(f"case_{n:03d}")
        c.attrs["ddof"] = np.int64(ddof)
        dset(c, "input", x)
        dset(c, "output", out)
        dset(c, "output_f64", out64.astype(F32))
    return len(specs)


def pipeline_cases(g):
    rng = np.random.default_rng(5005)
    specs = [
        ((9, 14, 11), 10, [(0, 0, 0), (0.6, -1.3, 0.9), (-1.2, 0.4, 2.3),
                           (1.7, 2.1, -0.6), (-0.3, -2.4, -1.8)]),
        ((8, 10, 12), 1, [(0, 0, 0), (1, -2, 0), (-1, 1, 3), (2, 0, -2)]),
    ]
    for n, (shape, u, tshifts) in enumerate(specs):
        base = smooth(rng, shape, sigma=1.5) * 10.0 + 100.0
        vols = [fourier_translate(base, s) + 0.1 * rng.standard_normal(shape) for s in tshifts]
        inp = np.stack(vols).astype(F32)
        filtered = np.stack([ndi.median_filter(v, size=(3, 3, 3), mode="reflect") for v in inp])
        shifts = np.stack([
            phase_cross_correlation(filtered[0], filtered[t], upsample_factor=u,
                                    normalization="phase")[0]
            for t in range(inp.shape[0])]).astype(np.float64)
        for t in range(inp.shape[0]):
            check_stable(f"pipeline/case_{n:03d}[t={t}]", filtered[0], filtered[t], u, "phase",
                         shifts[t])
        registered = np.stack([
            ndi.shift(filtered[t], shifts[t], order=3, mode="constant", cval=0.0)
            for t in range(inp.shape[0])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = scipy.stats.zscore(registered, axis=0)
            out64 = scipy.stats.zscore(registered.astype(np.float64), axis=0)
        assert filtered.dtype == registered.dtype == out.dtype == F32
        c = g.create_group(f"case_{n:03d}")
        c.attrs["upsample_factor"] = np.int64(u)
        c.attrs["reference_index"] = np.int64(0)
        dset(c, "input", inp)
        dset(c, "true_shifts", np.array(tshifts, dtype=np.float64))
        dset(c, "filtered", filtered)
        dset(c, "shifts", shifts)
        dset(c, "registered", registered)
        dset(c, "output", out)
        dset(c, "output_f64", out64.astype(F32))
    return len(specs)


def write_golden():
    path = os.path.join(FIX, "golden.h5")
    with h5py.File(path, "w", track_order=False) as f:
        f.attrs["numpy_version"] = np.__version__
        f.attrs["scipy_version"] = scipy.__version__
        f.attrs["skimage_version"] = skimage.__version__
        f.attrs["h5py_version"] = h5py.__version__
        f.attrs["generator"] = "scripts/make_fixtures.py"
        counts = {}
        for name, fn in [("median", median_cases), ("shift", shift_cases),
                         ("register", register_cases), ("zscore", zscore_cases),
                         ("pipeline", pipeline_cases)]:
            counts[name] = fn(f.create_group(name))
    return path, counts


# ----------------------------------------------------------------------------
# io/
# ----------------------------------------------------------------------------

def write_one(path, name, data, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=data, track_times=False, **kw)
    return path


def write_io():
    if os.path.isdir(IO):
        shutil.rmtree(IO)
    os.makedirs(IO)
    written = []
    ramp = np.arange(60).reshape(3, 4, 5)
    for tag, dt in [("u8", np.uint8), ("u16", np.uint16), ("i16", np.int16),
                    ("i32", np.int32), ("f32", np.float32), ("f64", np.float64)]:
        written.append(write_one(os.path.join(IO, f"{tag}.h5"), "default", ramp.astype(dt)))
    written.append(write_one(os.path.join(IO, "gzip_chunked.h5"), "default",
                             np.arange(120, dtype=np.float32).reshape(4, 6, 5),
                             chunks=(2, 3, 5), compression="gzip", compression_opts=4))
    written.append(write_one(os.path.join(IO, "series4d.h5"), "data",
                             np.arange(360, dtype=np.float32).reshape(3, 4, 5, 6)))
    for t in range(3):
        written.append(write_one(os.path.join(IO, "series", f"ind_{t:05d}.h5"), "default",
                                 t * 1000.0 + np.arange(120, dtype=np.float64).reshape(4, 5, 6)))
    written.append(write_one(os.path.join(IO, "wrong_rank.h5"), "default",
                             np.arange(20, dtype=np.float32).reshape(4, 5)))
    written.append(write_one(os.path.join(IO, "other_name.h5"), "volume",
                             np.arange(60, dtype=np.float32).reshape(3, 4, 5)))
    p = os.path.join(IO, "not_hdf5.h5")
    with open(p, "wb") as fh:
        fh.write(b"this is not an HDF5 file\n")
    written.append(p)
    p = write_one(os.path.join(IO, "truncated.h5"), "default",
                  np.arange(512, dtype=np.float32).reshape(8, 8, 8))
    full = os.path.getsize(p)
    with open(p, "r+b") as fh:
        fh.truncate(full // 2)
    written.append(p)
    written.append(write_one(os.path.join(IO, "shape_mismatch", "ind_00000.h5"), "default",
                             np.zeros((4, 5, 6), np.float32)))
    written.append(write_one(os.path.join(IO, "shape_mismatch", "ind_00001.h5"), "default",
                             np.ones((4, 5, 7), np.float32)))
    written.append(write_one(os.path.join(IO, "dtype_mismatch", "ind_00000.h5"), "default",
                             np.arange(120, dtype=np.float32).reshape(4, 5, 6)))
    written.append(write_one(os.path.join(IO, "dtype_mismatch", "ind_00001.h5"), "default",
                             np.arange(120, dtype=np.uint16).reshape(4, 5, 6)))
    return written


README = """\
# Test fixtures

`golden.h5` holds golden input/output pairs computed by `scripts/make_fixtures.py`
(seeded, deterministic; regenerate with `python3 scripts/make_fixtures.py` from the
repository root) with numpy / scipy / scikit-image (versions stored as root attributes):
`/median/case_NNN` (`scipy.ndimage.median_filter`, attrs `size`, `mode`, `cval`),
`/shift/case_NNN` (`scipy.ndimage.shift`, attrs `shift`, `order`, `mode`, `cval`),
`/register/case_NNN` (`skimage.registration.phase_cross_correlation(reference, moving)`,
attrs `upsample_factor`, `normalization` = "phase"/"none"; datasets `shifts`, 0-d `error`
and `phasediff`, plus the applied `true_shift`), `/zscore/case_NNN` (`scipy.stats.zscore`
along axis 0, attr `ddof`; `output` computed by scipy in float32, `output_f64` in float64)
and `/pipeline/case_NNN` (median 3x3x3 reflect -> phase correlation against filtered
timepoint 0 -> cubic shift, constant mode -> z-score, with every intermediate stored);
inputs are float32 and the exact layout is documented in the generator's docstring.
`io/` holds small HDF5 files written by h5py for the reader tests: one `default` ramp
(`arange(60)` as (3,4,5)) per dtype (u8, u16, i16, i32, f32, f64), a gzip-compressed
chunked file, a 4-D `data` series, a three-file `series/ind_0000N.h5` directory
(t*1000 + arange), and failure cases: rank-2 data, a dataset with another name
(`volume`), a text file, a truncated file, and directories whose files disagree in
shape or dtype.
"""


def main():
    os.makedirs(FIX, exist_ok=True)
    path, counts = write_golden()
    io_files = write_io()
    with open(os.path.join(FIX, "README.md"), "w") as fh:
        fh.write(README)

    # check: reopen and list
    print(f"wrote {os.path.relpath(path, ROOT)}")
    with h5py.File(path, "r") as f:
        for k, v in f.attrs.items():
            print(f"  @{k} = {v}")
        for gname in f:
            print(f"  /{gname}: {len(f[gname])} cases")
            for cname in f[gname]:
                c = f[gname][cname]
                attrs = ", ".join(f"{k}={np.asarray(v).tolist()}" for k, v in c.attrs.items())
                dsets = ", ".join(f"{d}{list(c[d].shape)}" for d in c)
                print(f"    {cname}: {attrs} | {dsets}")
    for p in io_files:
        print(f"wrote {os.path.relpath(p, ROOT)} ({os.path.getsize(p)} bytes)")
    print(f"wrote {os.path.relpath(os.path.join(FIX, 'README.md'), ROOT)}")
    total = 0
    for dp, _, fns in os.walk(FIX):
        for fn in fns:
            total += os.path.getsize(os.path.join(dp, fn))
    print(f"golden.h5: {os.path.getsize(path)} bytes; tests/fixtures total: {total} bytes "
          f"({total / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
