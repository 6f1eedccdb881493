"""gpuprep: the preprocessing of 4-D (t, z, y, x) imaging data on the GPU or CPU, from numpy.

Four drop-in functions with scipy's and scikit-image's signatures and numbers:

- ``median_filter``  = ``scipy.ndimage.median_filter``       (exact)
- ``shift``          = ``scipy.ndimage.shift``               (float32 rounding of scipy's float64 result)
- ``phase_cross_correlation`` = ``skimage.registration.phase_cross_correlation`` (same shift; error and
  phasediff to float32 precision)
- ``zscore``         = ``scipy.stats.zscore``                (float64 moments; float64 data stays float64)

the whole job of the ``gpuprep run`` command (``preprocess``), and the pieces a distributed front end
needs: ``Reference`` (a registration target transformed once), ``process_block`` (median, register,
shift over a block of timepoints), ``Moments`` (mergeable, picklable z-score statistics) and
``normalize``.

Every function takes ``backend='auto'|'cpu'|'gpu'``: ``auto`` uses a hardware GPU when there is one
(software adapters such as lavapipe are slower than the CPU path) and the CPU otherwise; ``gpu`` takes
any adapter and raises ``RuntimeError`` when there is none. The GPU device is opened once per process.
The GIL is released while gpuprep computes. Kernels compute in float32 (the spline and the moments in
float64): each function's docstring says what that means for its dtypes.
"""

from __future__ import annotations

import numbers
import os
import pathlib
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from . import _gpuprep
from ._gpuprep import Moments

__version__ = _gpuprep.__version__

__all__ = [
    "median_filter",
    "shift",
    "apply_shift",
    "phase_cross_correlation",
    "zscore",
    "normalize",
    "Registration",
    "Reference",
    "Moments",
    "process_block",
    "preprocess",
    "report",
    "backend_name",
]

# Integers whose every value float32 holds exactly: gpuprep's kernels compute in float32, so an
# integer input beyond this range would come back changed.
_EXACT_INT = 1 << 24

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def backend_name(backend: str = "auto") -> str:
    """What ``backend=`` resolves to on this machine: ``'cpu'`` or the GPU adapter's description."""
    return _gpuprep.backend_name(backend)


def _refuse_masked(a: Any, name: str) -> None:
    """A masked array's mask would be dropped by np.asarray: refuse it rather than ignore it."""
    if isinstance(a, np.ma.MaskedArray):
        raise NotImplementedError(f"{name}: masked arrays are not supported; fill or drop the masked values first")


def _aligned(a: np.ndarray) -> np.ndarray:
    """``a``, copied if its data is not aligned for its dtype (an array dask.distributed deserialised
    from a byte buffer can be): Rust reads elements in place and requires alignment."""
    return a if a.flags.aligned else a.copy()


def _check_dtype(a: np.ndarray, name: str) -> None:
    if a.dtype.kind not in "fiu" or a.dtype.itemsize > 8:
        raise TypeError(
            f"{name}: dtype {a.dtype} is not supported; gpuprep takes float16/32/64 and the integer dtypes"
        )


def _check_exact_ints(a: np.ndarray, name: str) -> None:
    """Integers beyond float32's exact range would not survive gpuprep's float32 kernels."""
    if a.dtype.kind in "iu" and a.dtype.itemsize >= 4 and a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < -_EXACT_INT or hi > _EXACT_INT:
            raise ValueError(
                f"{name}: values from {lo} to {hi} are not all exact in float32, which gpuprep computes in "
                f"(|value| <= {_EXACT_INT}); scale the data or use scipy for them"
            )


def _as_volume(a: Any, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``a`` as a float32 (z, y, x) array (1-D and 2-D arrays get leading axes of length 1), with its
    own shape. A C-contiguous float32 array is not copied."""
    a = np.asarray(a)
    _check_dtype(a, name)
    if not 1 <= a.ndim <= 3:
        raise NotImplementedError(
            f"{name}: {a.ndim}-D arrays are not supported; gpuprep's kernels take 1-D, 2-D and 3-D arrays"
        )
    _check_exact_ints(a, name)
    shape = a.shape
    v = _aligned(a) if a.dtype == np.float32 else a.astype(np.float32)
    return v.reshape((1,) * (3 - a.ndim) + shape), shape


def _per_axis(value: Any, ndim: int, name: str, cast: Callable[[Any], Any]) -> list:
    """A scalar or a sequence of ``ndim`` values, as scipy's ``size=`` and ``shift=`` take them."""
    if isinstance(value, (numbers.Number, np.generic)):
        return [cast(value)] * ndim
    values = [cast(v) for v in value]
    if len(values) != ndim:
        raise RuntimeError(
            f"{name}: sequence argument must have length equal to input rank ({len(values)} given for {ndim}-D input)"
        )
    return values


def _padded(values: list, pad: Any) -> list:
    return [pad] * (3 - len(values)) + values


def _finish(result: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, output: Any, round_ints: bool):
    """The float32 result in scipy's output dtype (``output``'s, or the input's), written into an
    ``output`` array when one is given."""
    result = result.reshape(shape)
    out_dtype = np.dtype(dtype)
    if isinstance(output, np.ndarray):
        out_dtype = output.dtype
    elif output is not None:
        out_dtype = np.dtype(output)
    if out_dtype.kind in "iu":
        if round_ints:
            # scipy.ndimage rounds interpolated values half away from zero into integer outputs.
            result = np.trunc(result.astype(np.float64) + np.copysign(0.5, result))
        info = np.iinfo(out_dtype)
        result = np.clip(result, info.min, info.max)
    if out_dtype.kind not in "fiu":
        raise TypeError(f"output: dtype {out_dtype} is not supported")
    converted = result if result.dtype == out_dtype else result.astype(out_dtype)
    if isinstance(output, np.ndarray):
        if output.shape != shape:
            raise RuntimeError(f"output: shape {output.shape} differs from the input's {shape}")
        output[...] = converted
        return output
    return converted


_FILTER_MODES = {
    "reflect": "reflect",
    "grid-mirror": "reflect",
    "nearest": "nearest",
    "mirror": "mirror",
    "constant": "constant",
    "grid-constant": "constant",
    "wrap": "wrap",
    "grid-wrap": "wrap",
}


def _check_axes(axes: Any, ndim: int) -> None:
    """scipy's checks of ``axes=`` (TypeError for non-integers, ValueError for out of range or repeated),
    so a bad value fails as it does in scipy before gpuprep refuses the feature."""
    axes = (axes,) if isinstance(axes, (numbers.Integral, np.integer)) else tuple(axes)
    if not all(isinstance(ax, (numbers.Integral, np.integer)) for ax in axes):
        raise TypeError("axes must be an integer or a sequence of integers")
    if any(not -ndim <= ax < ndim for ax in axes):
        raise ValueError("axes must be in the range [-ndim, ndim)")
    if len({ax % ndim for ax in axes}) != len(axes):
        raise ValueError("axes must be unique")


def median_filter(
    input: Any,
    size: Any = 3,
    footprint: Any = None,
    output: Any = None,
    mode: str = "reflect",
    cval: float = 0.0,
    origin: Any = 0,
    *,
    axes: Any = None,
    backend: str = "auto",
) -> np.ndarray:
    """``scipy.ndimage.median_filter(input, size, mode=mode, cval=cval)`` of a 1-D, 2-D or 3-D array.

    Exactly scipy's values: the median is one of the window's values, and float32 computation
    changes none of them for float16/float32 and integers of magnitude up to 2**24 (larger ones raise
    ``ValueError``). float64 input gives the float32 rounding of scipy's result (relative error at
    most 2**-24: rounding commutes with the median), returned as float64. The output dtype is the
    input's (or ``output``'s), as in scipy. A footprint of all True is its box ``size``; other
    footprints, ``origin`` other than 0, ``axes`` and per-axis modes raise ``NotImplementedError``.
    """
    _refuse_masked(input, "input")
    a = np.asarray(input)
    _check_dtype(a, "input")
    if axes is not None:
        _check_axes(axes, a.ndim)
        raise NotImplementedError("axes: filtering a subset of the axes is not supported")
    if footprint is not None:
        fp = np.asarray(footprint)
        if fp.ndim != a.ndim or not fp.all():
            raise NotImplementedError(
                "footprint: only a full box footprint (all True) is supported; pass size= instead"
            )
        size = fp.shape
    if not isinstance(mode, str):
        raise NotImplementedError("mode: one mode for all axes is supported, not a sequence")
    if mode not in _FILTER_MODES:
        raise RuntimeError(f"mode: boundary mode not supported: {mode!r}")
    if size is None:
        raise RuntimeError("size: no footprint or filter size provided")
    sizes_given = _per_axis(size, a.ndim, "size", int)
    origins = _per_axis(origin, a.ndim, "origin", int)
    for o, n in zip(origins, sizes_given):
        if not -(n // 2) <= o <= (n - 1) // 2:
            raise ValueError("invalid origin")
    if any(origins):
        raise NotImplementedError("origin: only origin=0 (the centred window) is supported")
    if a.size == 0:
        return _finish(a.astype(np.float32), a.shape, a.dtype, output, round_ints=False)
    v, shape = _as_volume(a, "input")
    sizes = _padded(sizes_given, 1)
    even = [s for s in sizes if s % 2 == 0 or s < 1]
    if even:
        raise NotImplementedError(
            f"size: windows of even (or non-positive) size {even[0]} are not supported; gpuprep's windows are odd"
        )
    r = _gpuprep.median_filter(v, sizes, _FILTER_MODES[mode], float(cval), backend)
    return _finish(r, shape, a.dtype, output, round_ints=False)


_SHIFT_MODES = {
    "reflect": "reflect",
    "grid-mirror": "reflect",
    "nearest": "nearest",
    "mirror": "mirror",
    "constant": "constant",
    "wrap": "wrap",
}


def shift(
    input: Any,
    shift: Any,
    output: Any = None,
    order: int = 3,
    mode: str = "constant",
    cval: float = 0.0,
    prefilter: bool = True,
    *,
    backend: str = "auto",
) -> np.ndarray:
    """``scipy.ndimage.shift(input, shift, order=order, mode=mode, cval=cval)`` of a 1-D, 2-D or 3-D
    array.

    On the CPU the spline prefilter and interpolation run in float64, as scipy's, on float32 values,
    and the result is rounded to float32: for float32 input it equals scipy's to float32 rounding
    (within an ulp of the largest magnitude). The GPU computes in float32: within about 2e-6 of the
    largest magnitude (scipy's own tests at 6 decimals fail there by 3e-6 on 8.0). float64 input is
    rounded to float32 first (relative error about 1e-7), returned as float64. Integer outputs are rounded half away from zero and
    clipped, as scipy does. Orders 0, 1 and 3; modes reflect (grid-mirror), nearest, mirror,
    constant, wrap (scipy's legacy wrap). Orders 2, 4, 5, ``grid-constant``, ``grid-wrap``,
    ``prefilter=False`` with order 3 and complex input raise ``NotImplementedError``.
    """
    _refuse_masked(input, "input")
    a = np.asarray(input)
    if a.dtype.kind == "c":
        raise NotImplementedError("input: complex arrays are not supported")
    _check_dtype(a, "input")
    if not isinstance(order, (numbers.Integral, np.integer)) or not 0 <= order <= 5:
        raise RuntimeError("order: spline order not supported")
    if order not in (0, 1, 3):
        raise NotImplementedError(f"order: spline order {order} is not supported; gpuprep has orders 0, 1 and 3")
    if order > 1 and not prefilter:
        raise NotImplementedError("prefilter: prefilter=False with order 3 is not supported")
    if not isinstance(mode, str):
        raise NotImplementedError("mode: one mode for all axes is supported, not a sequence")
    if mode in ("grid-constant", "grid-wrap"):
        raise NotImplementedError(f"mode: {mode!r} is not supported; gpuprep has scipy's {sorted(_SHIFT_MODES)}")
    if mode not in _SHIFT_MODES:
        raise RuntimeError(f"mode: boundary mode not supported: {mode!r}")
    shifts = _padded(_per_axis(shift, a.ndim, "shift", float), 0.0)
    if a.size == 0:
        return _finish(a.astype(np.float32), a.shape, a.dtype, output, round_ints=True)
    v, shape = _as_volume(a, "input")
    r = _gpuprep.shift(v, shifts, int(order), _SHIFT_MODES[mode], float(cval), backend)
    return _finish(r, shape, a.dtype, output, round_ints=True)


class Registration(NamedTuple):
    """What registering a volume gives, in scikit-image's order: ``shift, error, phasediff =
    registration``. ``shift`` (float64, one entry per axis) moves the volume onto the reference with
    ``scipy.ndimage.shift``."""

    shift: np.ndarray
    error: np.floating
    phasediff: np.floating


def _registration(raw: tuple, ndim: int, dtype: Any = np.float64) -> Registration:
    """The Rust triple for an ``ndim``-D input, in scikit-image's float type for the input's dtype
    (float32 for float16/float32 input, float64 otherwise)."""
    s, error, phasediff = raw
    t = np.float32 if np.dtype(dtype) in (np.float16, np.float32) else np.float64
    return Registration(np.asarray(s[3 - ndim :], dtype=t), t(error), t(phasediff))


def _normalization(normalization: str | None) -> str:
    if normalization is None:
        return "none"
    if normalization != "phase":
        raise ValueError(f"normalization: got {normalization!r}; expected 'phase' or None")
    return "phase"


def phase_cross_correlation(
    reference_image: Any,
    moving_image: Any,
    *,
    upsample_factor: int = 1,
    space: str = "real",
    disambiguate: bool = False,
    reference_mask: Any = None,
    moving_mask: Any = None,
    overlap_ratio: float = 0.3,
    normalization: str | None = "phase",
    backend: str = "auto",
) -> Registration:
    """``skimage.registration.phase_cross_correlation(reference_image, moving_image,
    upsample_factor=upsample_factor, normalization=normalization)`` of 1-D, 2-D or 3-D real arrays:
    ``(shift, error, phasediff)``.

    The shift equals scikit-image's (float64 arithmetic on float32 spectra: ties between equal
    peaks aside, identical; the sub-pixel refinement to within 1/upsample_factor). ``error`` and
    ``phasediff`` agree to about 1e-5; all three come in scikit-image's float type (float32 for
    float16/float32 input, else float64). Non-finite inputs raise ``ValueError``, as in scikit-image.
    An all-zero image gives shift 0 and error NaN. ``disambiguate=True`` chooses each axis's shift
    among its candidates modulo the image size as scikit-image 0.26 does (``_disambiguate_shift``:
    the Pearson correlation of each tile of the moving image shifted with scipy's ``grid-wrap``).
    ``space='fourier'`` and masks raise ``NotImplementedError``.
    ``upsample_factor`` is from 1 to 1000.
    """
    norm = _normalization(normalization)
    if not isinstance(space, str) or space.lower() not in ("real", "fourier"):
        raise ValueError('space argument must be "real" of "fourier"')
    if space.lower() != "real":
        raise NotImplementedError("space: only space='real' is supported")
    if reference_mask is not None or moving_mask is not None:
        raise NotImplementedError("reference_mask, moving_mask: masked registration is not supported")
    _refuse_masked(reference_image, "reference_image")
    _refuse_masked(moving_image, "moving_image")
    ref, moving = np.asarray(reference_image), np.asarray(moving_image)
    for a, name in ((ref, "reference_image"), (moving, "moving_image")):
        if a.dtype.kind == "c":
            raise NotImplementedError(f"{name}: complex arrays are not supported")
    if ref.shape != moving.shape:
        raise ValueError("images must be same shape")
    r, _ = _as_volume(ref, "reference_image")
    m, _ = _as_volume(moving, "moving_image")
    *raw, degenerate = _gpuprep.phase_cross_correlation(
        r, m, int(upsample_factor), norm, backend, bool(disambiguate)
    )
    result = _registration(tuple(raw), ref.ndim, np.result_type(ref.dtype, moving.dtype))
    if degenerate:
        warnings.warn(
            f"Could not determine real-space shift for periodic shift {result.shift!r} as requested by "
            "`disambiguate=True` (disambiguation is degenerate).",
            UserWarning,
            stacklevel=2,
        )
    if np.isnan(result.error):
        warnings.warn(
            "Could not determine RMS error between images: the reference or moving image is empty (all zero)",
            UserWarning,
            stacklevel=2,
        )
    return result


def _series(a: np.ndarray) -> np.ndarray:
    """A (t, ...) array as (t, z, y, x): trailing axes padded, or leading ones merged, to three."""
    rest = a.shape[1:]
    if len(rest) <= 3:
        return a.reshape((a.shape[0],) + (1,) * (3 - len(rest)) + rest)
    return a.reshape((a.shape[0], -1) + rest[-2:])


def zscore(
    a: Any,
    axis: int | None = 0,
    ddof: int = 0,
    nan_policy: str = "propagate",
    *,
    constant_voxels: str = "nan",
    backend: str = "auto",
) -> np.ndarray:
    """``scipy.stats.zscore(a, axis=axis, ddof=ddof)`` of an array of any shape.

    Mean and standard deviation are computed in float64 (Welford), so float32 input gives the float32
    rounding of scipy's result on ``a.astype(float64)`` (scipy's own float32 computation is less
    accurate); float64 and integer input is computed and returned in float64 (on the CPU: the GPU
    z-score is float32 only, so ``backend='gpu'`` with them raises ``NotImplementedError``). A constant
    series gives NaN, as scipy's (``constant_voxels='zero'`` gives 0). ``nan_policy`` other than
    ``'propagate'`` raises ``NotImplementedError``.
    """
    if nan_policy != "propagate":
        raise NotImplementedError("nan_policy: only 'propagate' is supported")
    _refuse_masked(a, "a")
    arr = np.asarray(a)
    if arr.dtype.kind == "c":
        raise NotImplementedError("a: complex arrays are not supported")
    _check_dtype(arr, "a")
    if ddof < 0:
        raise ValueError(f"ddof: got {ddof}; expected an integer >= 0")
    if axis is None:
        moved = arr.reshape(-1)
    else:
        if arr.ndim == 0:
            raise ValueError("a: a 0-d array has no axis to z-score along")
        moved = np.moveaxis(arr, axis, 0)
    work = np.float32 if arr.dtype in (np.float32, np.float16) else np.float64
    if work == np.float64 and backend == "gpu":
        # Checked here too so that empty arrays, which never reach the kernels, are refused alike.
        raise NotImplementedError(
            "a: the GPU z-score computes in float32; float64 data would lose small variations around a "
            "large mean there. Use backend='cpu' (or 'auto', which keeps float64 on the CPU), or cast to float32"
        )
    if arr.size == 0:
        return np.empty(arr.shape, np.float16 if arr.dtype == np.float16 else work)
    series = _series(_aligned(np.ascontiguousarray(moved, dtype=work)))
    z, constant = _gpuprep.zscore(series, int(ddof), constant_voxels, backend)
    if constant_voxels == "nan" and (constant or series.shape[0] <= ddof):
        warnings.warn(
            "Precision loss occurred in moment calculation due to catastrophic cancellation: some series "
            "are constant (or have at most ddof values), and their z-scores are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    z = z.reshape(moved.shape)
    if axis is not None:
        z = np.moveaxis(z, 0, axis)
    else:
        z = z.reshape(arr.shape)
    return z.astype(np.float16) if arr.dtype == np.float16 else z


def normalize(
    volumes: Any,
    mean: Any,
    std: Any,
    *,
    constant_voxels: str = "nan",
    backend: str = "auto",
) -> np.ndarray:
    """``(volumes - mean) / std`` of a (z, y, x) float32 volume or a (t, z, y, x) block, with the
    float64 moments of ``Moments.finalize`` and ``zscore``'s constant-voxel rule: the second pass of a
    z-score computed block by block. Returns float32."""
    _refuse_masked(volumes, "volumes")
    v = np.asarray(volumes, dtype=np.float32)
    if v.ndim not in (3, 4):
        raise ValueError(f"volumes: expected a (z, y, x) volume or a (t, z, y, x) block, got shape {v.shape}")
    block = v if v.ndim == 4 else v[np.newaxis]
    out = _gpuprep.normalize(
        _aligned(block),
        _aligned(np.asarray(mean, dtype=np.float64)),
        _aligned(np.asarray(std, dtype=np.float64)),
        constant_voxels,
        backend,
    )
    return out if v.ndim == 4 else out[0]


class Reference:
    """The reference of a registration, transformed once: ``register(volume)`` is
    ``phase_cross_correlation(reference, volume, upsample_factor=..., normalization=...)`` without
    recomputing the reference's spectrum. Picklable (as its volume and parameters): a copy sent to a
    worker process transforms it once there. ``max_shift`` and ``smooth_sigma`` (per axis, or one number)
    are ``gpuprep run``'s ``--max-shift`` and ``--smooth-sigma``: the peak searched within the bound, the
    correlation smoothed by a Gaussian (suite2p's); by default neither (scikit-image's)."""

    def __init__(
        self,
        volume: Any,
        upsample_factor: int = 1,
        normalization: str | None = "phase",
        *,
        backend: str = "auto",
        max_shift: Any = None,
        smooth_sigma: Any = 0.0,
    ) -> None:
        _refuse_masked(volume, "volume")
        arr = np.asarray(volume)
        v, shape = _as_volume(arr, "volume")
        self._shape = shape
        self._dtype = arr.dtype
        # Per axis of the volume as given; the leading axes a 1-D or 2-D volume gets do not move.
        bound = None if max_shift is None else _padded(_per_axis(max_shift, arr.ndim, "max_shift", float), 0.0)
        sigma = _padded(_per_axis(smooth_sigma, arr.ndim, "smooth_sigma", float), 0.0)
        self._ref = _gpuprep.Reference(
            v, int(upsample_factor), _normalization(normalization), backend, bound, sigma
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def upsample_factor(self) -> int:
        return self._ref.upsample_factor

    @property
    def backend(self) -> str:
        """The backend in use: ``'cpu'`` or ``'gpu'``."""
        return self._ref.backend[1]

    def register(self, moving_image: Any) -> Registration:
        """``(shift, error, phasediff)`` registering ``moving_image`` onto the reference."""
        _refuse_masked(moving_image, "moving_image")
        m = np.asarray(moving_image)
        if m.shape != self._shape:
            raise ValueError(f"moving_image: shape {m.shape} differs from the reference's {self._shape}")
        v, _ = _as_volume(m, "moving_image")
        return _registration(self._ref.register(v), len(self._shape), np.result_type(self._dtype, m.dtype))

    def __repr__(self) -> str:
        return f"gpuprep.Reference(shape={self._shape}, upsample_factor={self.upsample_factor}, backend={self.backend!r})"


def apply_shift(
    volume: Any,
    shift: Any,
    order: int = 3,
    mode: str = "constant",
    cval: float = 0.0,
    *,
    backend: str = "auto",
) -> np.ndarray:
    """Moves ``volume`` onto the reference by a registration's shift: ``shift(volume, s, order, mode,
    cval)`` where ``shift`` is a ``Registration`` or the shift itself."""
    s = shift.shift if isinstance(shift, Registration) else shift
    return globals()["shift"](volume, s, order=order, mode=mode, cval=cval, backend=backend)


def _triple(value: Any, name: str) -> list[int]:
    """``median_size``: one number, three, or the CLI's "z,y,x" text."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (numbers.Integral, np.integer)):
        parts = [value]
    else:
        parts = list(value)
    try:
        values = [int(p) for p in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or any(v < 0 for v in values) or any(
        not isinstance(p, (str, numbers.Integral, np.integer)) for p in parts
    ):
        raise ValueError(f"{name}: got {value!r}; expected 3 comma-separated non-negative integers")
    return values


def process_block(
    block: Any,
    reference: Reference | None = None,
    *,
    no_median: bool = False,
    median_size: Any = 3,
    median_mode: str = "reflect",
    median_cval: float = 0.0,
    register_raw: bool = False,
    order: int = 3,
    shift_mode: str = "constant",
    shift_cval: float = 0.0,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first pass of ``gpuprep run`` over a (t, z, y, x) block: per timepoint the median filter,
    registration onto ``reference`` (skipped when None) and the shift, with ``preprocess``'s
    parameters. Returns ``(volumes, shifts, error, phasediff)``: float32 volumes, (t, 3) shifts and
    per-timepoint error and phasediff (NaN without registration). With a reference, the reference's
    backend computes (``backend`` is then unused)."""
    _refuse_masked(block, "block")
    b = np.asarray(block)
    _check_dtype(b, "block")
    if b.ndim != 4:
        raise ValueError(f"block: expected a (t, z, y, x) array, got shape {b.shape}")
    _check_exact_ints(b, "block")
    b = _aligned(b) if b.dtype == np.float32 else b.astype(np.float32)
    median = None if no_median else (_triple(median_size, "median_size"), median_mode, float(median_cval))
    ref = None if reference is None else reference._ref
    if reference is not None and len(reference.shape) != 3:
        raise ValueError("reference: a block's reference is a (z, y, x) volume")
    return _gpuprep.process_block(
        b, ref, median, int(order), shift_mode, float(shift_cval), bool(register_raw), backend
    )[:4]


def run_params(
    *,
    dataset: str = "default",
    axes: str | None = None,
    format: str | None = None,
    channel: int = 0,
    force: bool = False,
    no_median: bool = False,
    median_size: Any = 3,
    median_mode: str = "reflect",
    median_cval: float = 0.0,
    no_register: bool = False,
    upsample_factor: int = 1,
    normalization: str | None = "phase",
    reference: int = 0,
    reference_mean: str | tuple[int, int] | None = None,
    register_raw: bool = False,
    order: int = 3,
    shift_mode: str = "constant",
    shift_cval: float = 0.0,
    no_zscore: bool = False,
    ddof: int = 0,
    constant_voxels: str = "nan",
    nonfinite: str = "error",
    compression: str = "none",
    shard: bool = False,
    save: str | Sequence[str] = (),
    memory_budget: int | str | None = None,
    max_shift: Any = None,
    smooth_sigma: Any = 0,
    reference_iterations: int = 0,
    reference_top: int | None = None,
    disambiguate: bool = False,
    shifts: str | os.PathLike | None = None,
    apply_to_channels: str | Sequence[int] | None = None,
) -> dict:
    """``preprocess``'s keywords in the types the extension takes (the CLI's text forms accepted:
    ``median_size="3,3,3"``, ``reference_mean="0:10"``, ``save="filtered,registered"``)."""
    if isinstance(reference_mean, str):
        start, sep, end = reference_mean.partition(":")
        try:
            reference_mean = (int(start), int(end)) if sep else None
        except ValueError:
            reference_mean = None
        if reference_mean is None:
            raise ValueError(f'reference_mean: got "{start + sep + end}"; expected START:END with START < END')
    elif reference_mean is not None:
        try:
            reference_mean = tuple(int(v) for v in reference_mean)
        except (TypeError, ValueError):
            reference_mean = ()
        if len(reference_mean) != 2 or min(reference_mean) < 0:
            raise ValueError(f"reference_mean: got {reference_mean!r}; expected START:END with START < END")
    if isinstance(save, str):
        save = save.split(",")
    for name, value in (
        ("reference", reference),
        ("ddof", ddof),
        ("order", order),
        ("channel", channel),
        ("reference_iterations", reference_iterations),
        ("reference_top", 0 if reference_top is None else reference_top),
    ):
        if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < 0:
            raise ValueError(f"{name}: got {value!r}; expected a non-negative integer")
    if isinstance(upsample_factor, bool) or not isinstance(upsample_factor, (numbers.Integral, np.integer)):
        raise ValueError(f"upsample_factor: got {upsample_factor!r}; expected an integer from 1 to 1000")
    return dict(
        dataset=dataset,
        axes=axes,
        format=format,
        channel=int(channel),
        force=bool(force),
        no_median=bool(no_median),
        median_size=_triple(median_size, "median_size"),
        median_mode=median_mode,
        median_cval=float(median_cval),
        no_register=bool(no_register),
        upsample_factor=int(upsample_factor),
        normalization=_normalization(normalization),
        reference=int(reference),
        reference_mean=reference_mean,
        register_raw=bool(register_raw),
        order=int(order),
        shift_mode=shift_mode,
        shift_cval=float(shift_cval),
        no_zscore=bool(no_zscore),
        ddof=int(ddof),
        constant_voxels=constant_voxels,
        nonfinite=nonfinite,
        compression=compression,
        shard=bool(shard),
        save=[str(s) for s in save],
        memory_budget=None if memory_budget is None else str(memory_budget),
        max_shift=None if max_shift is None else _floats3(max_shift, "max_shift"),
        smooth_sigma=_floats3(smooth_sigma, "smooth_sigma"),
        reference_iterations=int(reference_iterations),
        reference_top=None if reference_top is None else int(reference_top),
        disambiguate=bool(disambiguate),
        shifts=None if shifts is None else os.fspath(shifts),
        apply_to_channels=_channel_list(apply_to_channels),
    )


def _floats3(value: Any, name: str) -> list[float]:
    """``max_shift`` / ``smooth_sigma``: one number, three (z, y, x), or the CLI's "z,y,x" text; the
    values themselves are checked by the library, as the CLI's."""
    if isinstance(value, str):
        parts: list[Any] = [p.strip() for p in value.split(",")]
    elif isinstance(value, (numbers.Real, np.number)) and not isinstance(value, bool):
        parts = [value]
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = []
    try:
        values = [float(p) for p in parts if not isinstance(p, bool)]
    except (TypeError, ValueError):
        values = []
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or len(parts) not in (1, 3):
        raise ValueError(f"{name}: got {value!r}; expected one number or three (z, y, x)")
    return values


def _channel_list(value: Any) -> str | None:
    """``apply_to_channels``: "all", the CLI's "1,2" text, or a sequence of channel numbers."""
    if value is None or isinstance(value, str):
        return value
    try:
        return ",".join(str(int(v)) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f'apply_to_channels: got {value!r}; expected "all" or channel numbers') from None


def _tqdm_progress() -> Callable[[str, int, int], None]:
    try:
        from tqdm.auto import tqdm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("progress=True draws a tqdm bar: pip install tqdm (or pass a callable)") from e
    bars: dict[str, Any] = {}

    def report(pass_name: str, done: int, total: int) -> None:
        bar = bars.get(pass_name)
        if bar is None:
            bar = bars[pass_name] = tqdm(total=total, desc=pass_name, unit="volume")
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    return report


def preprocess(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    dataset: str = "default",
    axes: str | None = None,
    format: str | None = None,
    channel: int = 0,
    force: bool = False,
    no_median: bool = False,
    median_size: Any = 3,
    median_mode: str = "reflect",
    median_cval: float = 0.0,
    no_register: bool = False,
    upsample_factor: int = 1,
    normalization: str | None = "phase",
    reference: int = 0,
    reference_mean: str | tuple[int, int] | None = None,
    register_raw: bool = False,
    order: int = 3,
    shift_mode: str = "constant",
    shift_cval: float = 0.0,
    no_zscore: bool = False,
    ddof: int = 0,
    constant_voxels: str = "nan",
    nonfinite: str = "error",
    compression: str = "none",
    shard: bool = False,
    save: str | Sequence[str] = (),
    memory_budget: int | str | None = None,
    max_shift: Any = None,
    smooth_sigma: Any = 0,
    reference_iterations: int = 0,
    reference_top: int | None = None,
    disambiguate: bool = False,
    shifts: str | os.PathLike | None = None,
    apply_to_channels: str | Sequence[int] | None = None,
    backend: str = "auto",
    progress: bool | Callable[[str, int, int], Any] | None = None,
) -> dict:
    """``gpuprep run INPUTS -o OUTPUT`` from Python: the same job, the same output file.

    Each keyword is the CLI flag of the same name (``--median-size`` is ``median_size``), validated the
    same way, with the same messages naming the keyword (``ValueError``; missing or bad files are
    ``OSError``). ``progress`` is a callable ``(pass_name, done, total)`` or True for a tqdm bar; an
    exception it raises, or Ctrl-C, stops the run and leaves no output. Returns the run's report: the
    output path, backend, timepoints, shape, ``shifts`` (t, 3), ``error``, ``phasediff``, counts and
    timings.

    Registration options (``gpuprep run --help`` has each flag): ``max_shift`` (one number or z, y, x
    voxels; None: unbounded), ``smooth_sigma`` (one number or z, y, x; 0: none),
    ``reference_iterations`` (N refinements of the reference), ``reference_top`` (each refinement
    averages only the N best-correlated frames of the reference range), ``disambiguate``
    (scikit-image's ``disambiguate=True``), ``shifts`` (apply a file's shifts instead of registering)
    and ``apply_to_channels`` ("all" or channel numbers, written to ``OUTPUT_c<N>``).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if progress is True:
        progress = _tqdm_progress()
    elif progress is False:
        progress = None
    if progress is not None and not callable(progress):
        raise TypeError("progress: expected a callable (pass_name, done, total), True or None")
    params = run_params(
        dataset=dataset, axes=axes, format=format, channel=channel, force=force, no_median=no_median,
        median_size=median_size, median_mode=median_mode, median_cval=median_cval, no_register=no_register,
        upsample_factor=upsample_factor, normalization=normalization, reference=reference,
        reference_mean=reference_mean, register_raw=register_raw, order=order, shift_mode=shift_mode,
        shift_cval=shift_cval, no_zscore=no_zscore, ddof=ddof, constant_voxels=constant_voxels,
        nonfinite=nonfinite, compression=compression, shard=shard, save=save, memory_budget=memory_budget,
        max_shift=max_shift, smooth_sigma=smooth_sigma, reference_iterations=reference_iterations,
        reference_top=reference_top, disambiguate=disambiguate, shifts=shifts,
        apply_to_channels=apply_to_channels,
    )
    return _gpuprep.preprocess([os.fspath(p) for p in inputs], os.fspath(output), params, backend, progress)


def report(output: Any, path: Any = None, *, format: str | None = None, force: bool = False) -> pathlib.Path:
    """``gpuprep report``: writes the registration QC report of a finished output (``.h5`` or ``.ome.zarr``,
    from ``gpuprep run``, ``preprocess`` or ``gpuprep.dask``) and returns its path: the shifts and framewise
    displacement over time, the registration error and correlations, the flagged frames, and the mean and
    max projections before and after registration. ``path`` defaults to beside the output
    (``OUT.report.html``); ``format`` is ``"html"`` (one self-contained page: inlined images, no network,
    no JavaScript) or ``"png"``, by default from the path's extension. An existing report is replaced only
    with ``force=True`` (else ``FileExistsError``); an output without shifts raises ``OSError``."""
    return pathlib.Path(_gpuprep.report(os.fspath(output), None if path is None else os.fspath(path), format, bool(force)))
