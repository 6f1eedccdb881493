#!/usr/bin/env python3
"""scipy / scikit-image on the volumes of `cargo bench --bench kernels` (the peers of its CPU kernels).

A benchmark, not a test: each function runs once to warm up, then `--repeat` times; the median wall
time is printed in ms. The peers run single-threaded (OMP/OPENBLAS/MKL threads pinned to 1 before numpy
loads), as scipy.ndimage and scikit-image have no threads of their own; the FFT rows are scipy.fft with
`workers=1` and `workers=2`, the floor to compare gpuprep's transforms against; a numpy copy of the
volume (the floor of a kernel that reads and writes it once); SimpleITK's median and FFTW's transforms
(pyFFTW) where installed.

    python3 scripts/bench_peers.py [--shapes 100,100,100 64,256,256] [--repeat 3]
"""

import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402
import scipy.ndimage as ndi  # noqa: E402
from skimage.registration import phase_cross_correlation  # noqa: E402


def volume(shape):
    """benches/kernels.rs's deterministic volume."""
    z, y, x = np.indices(shape, dtype=np.int64)
    return (((z * 7919 + y * 104729 + x * 1299709) % 1000) / 1000.0).astype(np.float32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["100,100,100", "64,256,256"])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    def timed(f):
        f()
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    for s in args.shapes:
        shape = tuple(int(v) for v in s.split(","))
        v = volume(shape)
        name = "x".join(map(str, shape))
        spec = scipy.fft.rfftn(v)
        out = np.empty_like(v)
        cases = [
            ("median3x3x3", lambda: ndi.median_filter(v, 3)),
            ("shift_order3", lambda: ndi.shift(v, (0.4, -1.3, 2.7))),
            ("register_u1", lambda: phase_cross_correlation(v, v)),
            ("register_u10", lambda: phase_cross_correlation(v, v, upsample_factor=10)),
            ("copy (numpy, the floor)", lambda: np.copyto(out, v)),
            ("rfftn_workers1", lambda: scipy.fft.rfftn(v, workers=1)),
            ("rfftn_workers2", lambda: scipy.fft.rfftn(v, workers=2)),
            ("irfftn_workers2", lambda: scipy.fft.irfftn(spec, shape, workers=2)),
        ]
        # SimpleITK's median (ITK's, radius 1: 3x3x3; its edges repeat the border, scipy's reflect: the
        # same work), on one and two threads, where it is installed (`pip install SimpleITK`).
        try:
            import SimpleITK as sitk
        except ImportError:
            sitk = None
            print("SimpleITK is not installed (pip install SimpleITK): its median is not timed")
        if sitk is not None:
            img = sitk.GetImageFromArray(v)
            for threads in (1, 2):
                def med(threads=threads):
                    f = sitk.MedianImageFilter()
                    f.SetRadius(1)
                    f.SetNumberOfThreads(threads)
                    return f.Execute(img)

                cases.append((f"median3x3x3_simpleitk_threads{threads}", med))
        # FFTW (through pyFFTW, where installed: `pip install pyFFTW`) on one and two threads: the
        # fastest FFT library that runs here, so rfftn + irfftn of the volume on two threads is the
        # floor of a phase correlation's two transforms (the moving volume's forward and the
        # cross-power spectrum's inverse; the reference's spectrum is computed once).
        try:
            import pyfftw
        except ImportError:
            pyfftw = None
            print("pyFFTW is not installed (pip install pyFFTW): FFTW's transforms are not timed")
        if pyfftw is not None:
            for threads in (1, 2):
                a = pyfftw.empty_aligned(shape, dtype="float32")
                b = pyfftw.empty_aligned(shape[:2] + (shape[2] // 2 + 1,), dtype="complex64")
                c = pyfftw.empty_aligned(shape, dtype="float32")
                # The forward keeps its input; the inverse may overwrite its (the forward's
                # output, rewritten each call), as a multi-dimensional c2r does.
                fwd = pyfftw.FFTW(a, b, axes=(0, 1, 2), threads=threads, flags=("FFTW_MEASURE",))
                inv = pyfftw.FFTW(
                    b,
                    c,
                    axes=(0, 1, 2),
                    direction="FFTW_BACKWARD",
                    threads=threads,
                    flags=("FFTW_MEASURE", "FFTW_DESTROY_INPUT"),
                )
                a[:] = v  # after planning: FFTW_MEASURE overwrites the arrays

                def both(fwd=fwd, inv=inv):
                    fwd()
                    inv()

                cases.append((f"rfftn_fftw_threads{threads}", fwd))
                cases.append((f"rfftn+irfftn_fftw_threads{threads} (registration's floor)", both))
        for label, f in cases:
            print(f"{label}/{name}: {timed(f):.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
