"""Property tests: each drop-in function against live scipy / scikit-image on random shapes (odd, prime,
singleton axes), dtypes, modes and orders, on the CPU and GPU backends. The tolerance of each comparison
is written beside it, with the reason."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.registration import phase_cross_correlation as sk_pcc

import gpuprep

DTYPES = [np.float32, np.float64, np.float16, np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64]
MODES = ["reflect", "nearest", "mirror", "constant", "wrap"]
# Sizes along an axis: singletons, small odd and even ones, primes.
SIDE = st.sampled_from([1, 2, 3, 4, 5, 7, 8, 11, 13])


def examples(backend, cpu=40, gpu=12):
    """Fewer examples on the GPU: lavapipe runs shaders on the CPU, slowly."""
    return settings(
        max_examples=gpu if backend == "gpu" else cpu,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def random_array(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 10 + 3).astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -1000), min(info.max, 1000)
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)


shapes = st.lists(SIDE, min_size=1, max_size=3).map(tuple)


def scipy_median(a, size, mode, cval):
    """scipy's median; of a 1-D array, through its N-D code (a (1, n) array): scipy 1.17's 1-D fast path
    disagrees with it in mode 'mirror' when the half-window equals the length (it reads memory outside
    the line: [5.0] with size 3 gives 1.6e-322), a defect gpuprep does not copy
    (`test_median_filter_1d_mirror_follows_scipys_nd_path`)."""
    if a.dtype == np.float16:
        # scipy has no float16 median; float16 values are float32 values, and the median one of them.
        return scipy_median(a.astype(np.float32), size, mode, cval).astype(np.float16)
    if a.ndim == 1:
        return ndi.median_filter(a[np.newaxis], size=(1, *size), mode=mode, cval=cval)[0]
    return ndi.median_filter(a, size=size, mode=mode, cval=cval)


def test_median_filter_1d_mirror_follows_scipys_nd_path(backend):
    a = np.array([3.0, 7.0, 1.0], np.float32)
    # The window [-3, 3] around 0 mirrors to samples 1 2 1 0 1 2 1: values 7 1 7 3 7 1 7, median 7.
    np.testing.assert_array_equal(gpuprep.median_filter(a, 7, mode="mirror", backend=backend), [7, 3, 7])
    np.testing.assert_array_equal(ndi.median_filter(a[np.newaxis], (1, 7), mode="mirror")[0], [7, 3, 7])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_median_filter_matches_scipy(backend, dtype):
    @examples(backend)
    @given(shape=shapes, seed=st.integers(0, 2**32 - 1), data=st.data(), mode=st.sampled_from(MODES),
           cval=st.sampled_from([0.0, -2.5, 7.0]))
    def check(shape, seed, data, mode, cval):
        a = random_array(seed, shape, dtype)
        if a.dtype.kind == "u":
            cval = abs(cval)  # a negative cval in an unsigned image is undefined behaviour in scipy's C cast
        size = data.draw(st.lists(st.sampled_from([1, 3, 5]), min_size=len(shape), max_size=len(shape)))
        got = gpuprep.median_filter(a, size=size, mode=mode, cval=cval, backend=backend)
        want = scipy_median(a, size, mode, cval)
        assert got.dtype == want.dtype and got.shape == want.shape
        if a.dtype == np.float64:
            # Computed in float32: the median commutes with rounding, so gpuprep gives exactly the float32
            # rounding of scipy's float64 median.
            np.testing.assert_array_equal(got, want.astype(np.float32).astype(np.float64))
        else:
            # Exact: every value of these dtypes is a float32, and the median is one of them.
            np.testing.assert_array_equal(got, want)

    check()


def test_median_filter_scalar_size_and_footprint_box(backend):
    a = random_array(1, (5, 6, 7), np.float32)
    np.testing.assert_array_equal(gpuprep.median_filter(a, 3, backend=backend), ndi.median_filter(a, 3))
    box = np.ones((3, 1, 5), bool)
    np.testing.assert_array_equal(
        gpuprep.median_filter(a, footprint=box, backend=backend), ndi.median_filter(a, footprint=box)
    )


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16, np.int32], ids=lambda d: np.dtype(d).name)
def test_shift_matches_scipy(backend, order, dtype):
    @examples(backend, cpu=30, gpu=8)
    @given(shape=shapes, seed=st.integers(0, 2**32 - 1), data=st.data(), mode=st.sampled_from(MODES),
           cval=st.sampled_from([0.0, 1.5]))
    def check(shape, seed, data, mode, cval):
        a = random_array(seed, shape, dtype)
        s = data.draw(st.lists(st.floats(-4.5, 4.5, allow_nan=False).map(lambda v: round(v, 3)),
                               min_size=len(shape), max_size=len(shape)))
        got = gpuprep.shift(a, s, order=order, mode=mode, cval=cval, backend=backend)
        # scipy's float64 result on the same float32 values gpuprep computes on.
        exact = ndi.shift(a.astype(np.float32).astype(np.float64), s, order=order, mode=mode, cval=cval)
        assert got.dtype == a.dtype and got.shape == a.shape
        scale = max(1.0, float(np.abs(a.astype(np.float64)).max(initial=0)), abs(cval))
        if a.dtype.kind in "iu":
            # scipy rounds half away from zero into integers; a float32 rounding of the value can move a
            # result sitting at .5 by one.
            want = ndi.shift(a, s, order=order, mode=mode, cval=cval)
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), atol=1)
        else:
            # CPU: float64 arithmetic rounded once to float32 (half an ulp of the largest value, plus the
            # prefilter's float64 noise). GPU: float32 arithmetic, a few ulps of the largest value.
            tol = (1e-6 if backend == "cpu" else 2e-5) * scale
            np.testing.assert_allclose(got.astype(np.float64), exact, rtol=0, atol=tol)

    check()


def smooth_volume(seed, shape):
    """Structure registration can lock onto: smoothed noise, so the correlation has one clear peak."""
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.standard_normal(shape), 1.5, mode="wrap").astype(np.float32)


@pytest.mark.parametrize("normalization", ["phase", None])
def test_phase_cross_correlation_matches_skimage(backend, normalization):
    @examples(backend, cpu=30, gpu=10)
    @given(shape=st.lists(st.sampled_from([8, 9, 11, 13, 16]), min_size=2, max_size=3).map(tuple),
           seed=st.integers(0, 2**32 - 1), data=st.data(), upsample=st.sampled_from([1, 2, 10]))
    def check(shape, seed, data, upsample):
        ref = smooth_volume(seed, shape)
        roll = data.draw(st.lists(st.integers(-3, 3), min_size=len(shape), max_size=len(shape)))
        moving = np.roll(ref, roll, axis=tuple(range(len(shape))))
        noise = np.random.default_rng(seed + 1).standard_normal(shape).astype(np.float32)
        moving = moving + noise * np.float32(0.001 * ref.std())
        got = gpuprep.phase_cross_correlation(ref, moving, upsample_factor=upsample,
                                              normalization=normalization, backend=backend)
        want = sk_pcc(ref, moving, upsample_factor=upsample, normalization=normalization)
        assert got.shift.dtype == want[0].dtype
        # Same algorithm on float32 spectra: the integer peak is the same; the upsampled peak may move by
        # one grid step (1/upsample) where two neighbours are equal to float32 rounding.
        np.testing.assert_allclose(got.shift, want[0], rtol=0, atol=1.0 / upsample + 1e-6)
        if normalization is None:
            # Rolled smooth data: the peak is the roll itself (an integer, so on every upsampled grid).
            # (Whitened correlation on volumes this small can lock onto noise, as scikit-image's does.)
            np.testing.assert_allclose(got.shift, -np.array(roll), atol=1.0 / upsample + 1e-6)
        # error = sqrt(1 - |CCmax|² / (|F|²|G|²)): its square is what both compute, scikit-image in float32
        # sums (relative error ~1e-6 over these sizes), gpuprep in float64; the square root magnifies that
        # near a perfect match (error 1e-3 moves by 3e-4), so the squares are compared.
        np.testing.assert_allclose(np.float64(got.error) ** 2, np.float64(want[1]) ** 2, rtol=0, atol=2e-5)

    check()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.float16], ids=lambda d: np.dtype(d).name)
def test_zscore_matches_scipy(backend, dtype):
    if backend == "gpu" and np.dtype(dtype) not in (np.float32, np.float16):
        # The GPU z-score is float32 only: float64 and integer data (z-scored in float64) are refused.
        with pytest.raises(NotImplementedError, match="backend='cpu'"):
            gpuprep.zscore(random_array(0, (4, 3), dtype), backend=backend)
        return

    @examples(backend, cpu=40, gpu=10)
    @given(shape=st.lists(SIDE, min_size=1, max_size=5).map(tuple), seed=st.integers(0, 2**32 - 1),
           data=st.data(), ddof=st.sampled_from([0, 1]))
    def check(shape, seed, data, ddof):
        a = random_array(seed, shape, dtype)
        axis = data.draw(st.sampled_from([None] + list(range(-len(shape), len(shape)))))
        with np.errstate(all="ignore"):
            got = gpuprep.zscore(a, axis=axis, ddof=ddof, backend=backend)
            want = scipy.stats.zscore(a, axis=axis, ddof=ddof)
            exact = scipy.stats.zscore(a.astype(np.float64), axis=axis, ddof=ddof)
        assert got.dtype == want.dtype and got.shape == want.shape
        # NaN exactly where scipy gives NaN (constant series, n <= ddof).
        np.testing.assert_array_equal(np.isnan(got), np.isnan(exact))
        # float64 moments: float32 results are the rounding of scipy's float64 answer (a few ulps, as the
        # GPU divides in float32); float64 results agree to float64 rounding.
        rtol = 1e-12 if got.dtype == np.float64 else (4e-7 if backend == "cpu" else 2e-6)
        if got.dtype == np.float16:
            rtol = 1e-3
        np.testing.assert_allclose(got.astype(np.float64), exact, rtol=rtol, atol=rtol, equal_nan=True)

    check()


def test_zscore_float64_keeps_small_variations():
    # 1e6 + 1e-3·k: float32 would flatten this series to one value (z NaN); scipy and gpuprep keep it.
    a = 1e6 + 1e-3 * np.arange(6, dtype=np.float64)
    # float64 holds these values to 1.2e-10 absolute, about 1e-7 of the 1e-3 steps: both answers carry that.
    np.testing.assert_allclose(gpuprep.zscore(a, backend="cpu"), scipy.stats.zscore(a), rtol=1e-6)
    with pytest.raises(NotImplementedError, match="float32"):
        gpuprep.zscore(a, backend="gpu")
