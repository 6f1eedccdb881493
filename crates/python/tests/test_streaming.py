"""The streaming pieces (Reference, process_block, Moments, normalize) and the package's contract: what is
refused and how, results without a copy, the GIL released while Rust computes."""

import pickle
import threading
import time

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.stats

import gpuprep


def series(seed=0, shape=(9, 5, 12, 11)):
    """Smooth volumes moved by known integer shifts, plus noise."""
    rng = np.random.default_rng(seed)
    base = ndi.gaussian_filter(rng.standard_normal(shape[1:]), 1.5, mode="wrap")
    vols = [np.roll(base, (0, int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), (0, 1, 2)) for _ in range(shape[0])]
    return (np.stack(vols) * 100 + rng.standard_normal(shape) + 50).astype(np.float32)


def test_moments_merged_over_blocks_equal_one_pass():
    data = series(1).astype(np.float64)
    one = gpuprep.Moments(data.shape[1:])
    one.update(data)
    blocks = [gpuprep.Moments(data.shape[1:]) for _ in range(4)]
    for m, part in zip(blocks, np.array_split(data, 4)):
        m.update(part)
    merged = blocks[0].copy()
    for m in blocks[1:]:
        merged.merge(m)
    assert merged.count == one.count == data.shape[0]
    for ddof in (0, 1):
        (mean1, std1), (mean2, std2) = one.finalize(ddof), merged.finalize(ddof)
        # Chan's pairwise formula against one Welford pass: equal to float64 rounding.
        np.testing.assert_allclose(mean2, mean1, rtol=1e-13)
        np.testing.assert_allclose(std2, std1, rtol=1e-11)
        np.testing.assert_allclose(mean1, data.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(std1, data.std(axis=0, ddof=ddof), rtol=1e-11)


def test_moments_merged_is_copy_then_merge_and_changes_neither():
    data = series(2)
    a, b = gpuprep.Moments(data.shape[1:]), gpuprep.Moments(data.shape[1:])
    a.update(data[:3])
    b.update(data[3:])
    before = (a.mean, a.m2, b.mean, b.m2)
    want = a.copy()
    want.merge(b)
    got = a.merged(b)
    assert got.count == want.count == data.shape[0]
    np.testing.assert_array_equal(got.mean, want.mean)  # bit for bit
    np.testing.assert_array_equal(got.m2, want.m2)
    for x, y in zip(before, (a.mean, a.m2, b.mean, b.m2)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match=r"\(3, 2, 4\)"):
        gpuprep.Moments((2, 3, 4)).merged(gpuprep.Moments((3, 2, 4)))


def test_moments_pickle_and_refuse_mismatches():
    m = gpuprep.Moments((2, 3, 4))
    m.update(np.ones((2, 3, 4), np.float32))
    m.update(np.zeros((2, 3, 4), np.float64))
    copy = pickle.loads(pickle.dumps(m))
    assert copy.count == 2 and copy.shape == (2, 3, 4)
    np.testing.assert_array_equal(copy.mean, m.mean)
    np.testing.assert_array_equal(copy.m2, m.m2)
    with pytest.raises(ValueError, match=r"\(3, 2, 4\)"):
        m.merge(gpuprep.Moments((3, 2, 4)))
    with pytest.raises(ValueError, match="volume shape"):
        m.update(np.ones((3, 3, 4), np.float32))
    with pytest.raises(ValueError, match="negative"):
        gpuprep.Moments.from_parts(1, np.zeros((1, 1, 1)), -np.ones((1, 1, 1)))
    with pytest.raises(NotImplementedError, match="masked"):
        m.update(np.ma.masked_array(np.ones((2, 3, 4)), mask=np.zeros((2, 3, 4), bool)))


def test_moments_reuse_the_memory_of_dropped_ones_as_new():
    """Moments dropped give their arrays to the next ones of their shape (a pool, bounded): a new
    Moments, a copy and an unpickled one are exactly what they would be in fresh memory, whatever the
    recycled arrays held."""
    shape = (3, 5, 7)
    rng = np.random.default_rng(9)
    for _ in range(3):  # fill the pool with arrays holding values
        junk = gpuprep.Moments(shape)
        junk.update(rng.standard_normal((4,) + shape) * 1e6)
        junk.copy()
        del junk
    fresh = gpuprep.Moments(shape)
    assert fresh.count == 0
    assert not fresh.mean.any() and not fresh.m2.any()
    data = rng.standard_normal((6,) + shape)
    fresh.update(data)
    np.testing.assert_allclose(fresh.mean, data.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(fresh.m2, ((data - data.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-11)
    for _ in range(2):
        gpuprep.Moments(shape).update(rng.standard_normal(shape))  # dropped at once
    copy = fresh.copy()
    unpickled = pickle.loads(pickle.dumps(fresh))
    for m in (copy, unpickled):
        assert m.count == 6
        np.testing.assert_array_equal(m.mean, fresh.mean)
        np.testing.assert_array_equal(m.m2, fresh.m2)
    # Another shape takes nothing of these.
    other = gpuprep.Moments((5, 3, 7))
    assert other.count == 0 and not other.mean.any() and not other.m2.any()
    del copy, unpickled, other
    assert gpuprep.Moments.release_pool() > 0
    assert gpuprep.Moments.release_pool() == 0


def test_blockwise_zscore_equals_zscore(backend):
    data = series(2)
    moments = gpuprep.Moments(data.shape[1:])
    for part in np.array_split(data, 3):
        moments.update(part)
    mean, std = moments.finalize(ddof=1)
    z = np.concatenate([gpuprep.normalize(part, mean, std, backend=backend) for part in np.array_split(data, 3)])
    np.testing.assert_allclose(z, gpuprep.zscore(data, ddof=1, backend="cpu"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z, scipy.stats.zscore(data.astype(np.float64), ddof=1), rtol=1e-5, atol=1e-5)


def test_reference_registers_as_phase_cross_correlation(backend):
    data = series(3)
    ref = gpuprep.Reference(data[0], upsample_factor=10, backend=backend)
    assert ref.backend == backend and ref.shape == data.shape[1:]
    other = gpuprep.Reference(data[1], backend=backend)  # a second reference in the same process
    for v in data[1:4]:
        got = ref.register(v)
        want = gpuprep.phase_cross_correlation(data[0], v, upsample_factor=10, backend=backend)
        np.testing.assert_array_equal(got.shift, want.shift)
        assert got.error == pytest.approx(want.error, abs=1e-6)
        np.testing.assert_array_equal(other.register(v).shift,
                                      gpuprep.phase_cross_correlation(data[1], v, backend=backend).shift)
    back = pickle.loads(pickle.dumps(ref))
    np.testing.assert_array_equal(back.register(data[2]).shift, ref.register(data[2]).shift)
    with pytest.raises(ValueError, match="shape"):
        ref.register(data[0, :, :-1])


def test_process_block_equals_the_functions_in_turn(backend):
    data = series(4)
    filtered_ref = gpuprep.median_filter(data[0], 3, backend="cpu")
    ref = gpuprep.Reference(filtered_ref, upsample_factor=4, backend=backend)
    volumes, shifts, error, phasediff = gpuprep.process_block(data[:5], ref, backend=backend)
    assert volumes.shape == (5,) + data.shape[1:] and volumes.dtype == np.float32 and shifts.shape == (5, 3)
    for t in range(5):
        f = gpuprep.median_filter(data[t], 3, backend="cpu")
        reg = gpuprep.phase_cross_correlation(filtered_ref, f, upsample_factor=4, backend="cpu")
        np.testing.assert_array_equal(shifts[t], reg.shift)
        want = gpuprep.shift(f, reg.shift, backend="cpu")
        # CPU: the same kernels, bit for bit. GPU: its shift kernel's tolerance against the CPU twin.
        tol = 0 if backend == "cpu" else 2e-5 * np.abs(f).max()
        np.testing.assert_allclose(volumes[t], want, rtol=0, atol=tol)
    vols, shifts, error, _ = gpuprep.process_block(data[:2], None, no_median=True, backend=backend)
    np.testing.assert_array_equal(vols, data[:2])
    assert np.isnan(shifts).all() and np.isnan(error).all()


NOT_IMPLEMENTED = [
    (lambda a: gpuprep.median_filter(a, footprint=np.array([[[1, 0, 1]]])), "footprint"),
    (lambda a: gpuprep.median_filter(a, 3, origin=1), "origin"),
    (lambda a: gpuprep.median_filter(a, 3, axes=(0, 1)), "axes"),
    (lambda a: gpuprep.median_filter(a, 4), "size"),
    (lambda a: gpuprep.median_filter(a, 3, mode=["reflect"] * 3), "mode"),
    (lambda a: gpuprep.shift(a, 1, order=2), "order"),
    (lambda a: gpuprep.shift(a, 1, order=5), "order"),
    (lambda a: gpuprep.shift(a, 1, mode="grid-wrap"), "mode"),
    (lambda a: gpuprep.shift(a, 1, mode="grid-constant"), "mode"),
    (lambda a: gpuprep.shift(a, 1, prefilter=False), "prefilter"),
    (lambda a: gpuprep.shift(a.astype(np.complex64), 1), "complex"),
    (lambda a: gpuprep.phase_cross_correlation(a, a, space="fourier"), "space"),
    (lambda a: gpuprep.phase_cross_correlation(a, a, reference_mask=a > 0), "mask"),
    (lambda a: gpuprep.zscore(a, nan_policy="omit"), "nan_policy"),
    (lambda a: gpuprep.median_filter(a[np.newaxis], 3), "4-D"),
]


def test_disambiguate_is_scikit_images_on_a_3d_shift_beyond_half_the_volume(backend):
    """disambiguate=True (once NotImplementedError here) gives live scikit-image's shift, the true
    one, where the plain shift is aliased."""
    from skimage.registration import phase_cross_correlation as skimage_pcc

    field = np.random.default_rng(5).random((9, 60, 60)).astype(np.float32)
    reference, moving = field[:6, :34, 20:52], field[2:8, 21:55, :32]
    got = gpuprep.phase_cross_correlation(reference, moving, disambiguate=True, backend=backend)
    want = skimage_pcc(reference, moving, disambiguate=True)
    np.testing.assert_array_equal(got.shift, want[0])
    np.testing.assert_array_equal(got.shift, [2, 21, -20])
    plain = gpuprep.phase_cross_correlation(reference, moving, backend=backend)
    np.testing.assert_array_equal(plain.shift, [2, -13, 12])


@pytest.mark.parametrize("call, word", NOT_IMPLEMENTED, ids=[w for _, w in NOT_IMPLEMENTED])
def test_unsupported_arguments_raise_not_implemented_naming_them(call, word):
    with pytest.raises(NotImplementedError, match=word):
        call(series(5)[0])


def test_invalid_values_raise_as_scipy_does_or_name_the_argument():
    a = series(6)[0]
    with pytest.raises(RuntimeError, match="mode"):
        gpuprep.median_filter(a, 3, mode="bogus")
    with pytest.raises(RuntimeError, match="order"):
        gpuprep.shift(a, 1, order=7)
    with pytest.raises(RuntimeError, match="sequence argument"):
        gpuprep.shift(a, [1, 2])
    with pytest.raises(ValueError, match="same shape"):
        gpuprep.phase_cross_correlation(a, a[:-1])
    with pytest.raises(ValueError, match="upsample_factor: got 0"):
        gpuprep.phase_cross_correlation(a, a, upsample_factor=0)
    with pytest.raises(ValueError, match="not a finite"):
        gpuprep.shift(a, [np.nan, 0, 0])
    with pytest.raises(ValueError, match='backend: unknown backend "tpu"'):
        gpuprep.median_filter(a, 3, backend="tpu")
    with pytest.raises(ValueError, match="not all exact in float32"):
        gpuprep.median_filter(np.array([0, 2**40], np.int64), 3)
    with pytest.raises(ValueError, match="finite|NaN"):
        gpuprep.phase_cross_correlation(a, np.full_like(a, np.nan))
    with pytest.raises(TypeError, match="dtype"):
        gpuprep.median_filter(a.astype(object), 3)


def test_results_come_back_without_a_copy():
    a = series(7)[0]
    r = gpuprep.median_filter(a, 3, backend="cpu")
    # numpy wraps the Rust allocation: no array in the chain owns the data; a Rust container does.
    base = r
    while isinstance(base, np.ndarray):
        assert not base.flags.owndata
        base = base.base
    assert type(base).__name__ == "PySliceContainer"


def test_the_gil_is_released_while_rust_computes():
    a = np.random.default_rng(8).standard_normal((48, 96, 96)).astype(np.float32)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (gpuprep.median_filter(a, 5, backend="cpu"), done.set()))
    ticks = 0
    worker.start()
    t0 = time.perf_counter()
    while not done.is_set():
        ticks += 1
    elapsed = time.perf_counter() - t0
    worker.join()
    # With the GIL held for the whole filter this loop could not run at all while it computes (Python
    # switches threads only between bytecodes); released, it spins freely.
    assert elapsed > 0.02, "the filter was too quick to tell"
    assert ticks > 10_000, f"{ticks} iterations in {elapsed:.3f} s"


def unaligned(shape, dtype=np.float32, seed=9):
    """An array whose data starts one byte past an aligned address, as dask.distributed can hand over."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(n + 1, np.uint8)[1:]
    a = raw.view(dtype).reshape(shape)
    a[...] = np.random.default_rng(seed).standard_normal(shape)
    assert not a.flags.aligned
    return a


def test_unaligned_arrays_are_read_correctly(backend):
    a = unaligned((3, 8, 9, 10))
    b = np.array(a)  # aligned copy
    np.testing.assert_array_equal(gpuprep.median_filter(a[0], 3, backend=backend), gpuprep.median_filter(b[0], 3, backend=backend))
    np.testing.assert_array_equal(gpuprep.shift(a[0], 0.5, backend=backend), gpuprep.shift(b[0], 0.5, backend=backend))
    np.testing.assert_array_equal(gpuprep.zscore(a, backend=backend), gpuprep.zscore(b, backend=backend))
    ref = gpuprep.Reference(a[0], backend=backend)
    np.testing.assert_array_equal(ref.register(a[1]).shift, gpuprep.Reference(b[0], backend=backend).register(b[1]).shift)
    got = gpuprep.process_block(a, ref, backend=backend)
    want = gpuprep.process_block(b, ref, backend=backend)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    m1, m2 = gpuprep.Moments((8, 9, 10)), gpuprep.Moments((8, 9, 10))
    m1.update(a)
    m2.update(b)
    np.testing.assert_array_equal(m1.mean, m2.mean)
    back = gpuprep.Moments.from_parts(3, unaligned((8, 9, 10), np.float64), np.abs(unaligned((8, 9, 10), np.float64, 1)))
    assert back.count == 3
    mean, std = m1.finalize()
    np.testing.assert_array_equal(
        gpuprep.normalize(a, unaligned((8, 9, 10), np.float64) * 0 + mean, std, backend=backend),
        gpuprep.normalize(b, mean, std, backend=backend),
    )


def test_reference_max_shift_and_smooth_sigma_are_the_clis(backend, cli, tmp_path):
    """``Reference(max_shift=, smooth_sigma=)`` registers as ``gpuprep run --max-shift --smooth-sigma`` (the CLI
    on the raw frames against frame 0: --no-median), keeps its parameters through pickling, and refuses a
    negative bound naming it."""
    import h5py
    import subprocess

    data = series(5)
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f["default"] = data
    out = tmp_path / "out.h5"
    subprocess.run([cli, "run", path, "-o", out, "--no-median", "--no-zscore", "-q", "--backend", backend,
                    "--upsample-factor", "4", "--max-shift", "1,2,2", "--smooth-sigma", "0.5,1,1"],
                   check=True, capture_output=True)
    with h5py.File(out, "r") as f:
        want = f["shifts"][()]
    ref = gpuprep.Reference(data[0], upsample_factor=4, backend=backend, max_shift=(1, 2, 2), smooth_sigma=(0.5, 1, 1))
    back = pickle.loads(pickle.dumps(ref))
    for t, v in enumerate(data):
        np.testing.assert_array_equal(ref.register(v).shift, want[t], err_msg=f"t={t}")
        np.testing.assert_array_equal(back.register(v).shift, want[t], err_msg=f"t={t}, unpickled")
    assert (np.abs(want) <= [1, 2, 2]).all() and (np.abs(want) == 2).any(), want
    with pytest.raises(ValueError, match="max"):
        gpuprep.Reference(data[0], max_shift=(0, -1, 2))
