#!/usr/bin/env python3
"""gpuprep's Python functions against scipy / scikit-image on one volume (default 64 x 256 x 256 float32).

A benchmark, not a test: each function is run `--repeat` times after one warm-up call, and the median
wall time is printed with the ratio to the peer and the largest difference between the two results.
Build the package in release mode first (`pip install ./crates/python`); a `maturin develop` build is
unoptimised. The peers run single-threaded (scipy.ndimage and scikit-image have no threads);
gpuprep uses every core, or `--threads N` (RAYON_NUM_THREADS, set before the import).

    python3 scripts/bench_python.py [--shape 64,256,256] [--repeat 3] [--backend cpu] [--threads N]
"""

import argparse
import os
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="64,256,256")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--backend", default="cpu", choices=["cpu", "gpu", "auto"])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    import numpy as np
    import scipy.ndimage as ndi
    import scipy.stats
    from skimage.registration import phase_cross_correlation as sk_pcc

    import gpuprep

    shape = tuple(int(s) for s in args.shape.split(","))
    rng = np.random.default_rng(0)
    vol = ndi.gaussian_filter(rng.standard_normal(shape), 2, mode="wrap").astype(np.float32)
    vol += rng.standard_normal(shape).astype(np.float32) * np.float32(0.1 * vol.std())
    moving = ndi.shift(vol, (1.3, -2.6, 3.2), order=1, mode="wrap").astype(np.float32)
    series = np.stack([vol, moving, vol * 0.9, moving * 1.1] * 4)  # 16 timepoints for the z-score

    def timed(f):
        f()  # warm-up: first-call costs (a GPU device, FFT plans) are not what is measured
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            r = f()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), r

    b = args.backend
    cases = [
        ("median_filter size 3", lambda: ndi.median_filter(vol, 3), lambda: gpuprep.median_filter(vol, 3, backend=b)),
        ("shift order 3", lambda: ndi.shift(vol, (1.3, -2.6, 3.2)), lambda: gpuprep.shift(vol, (1.3, -2.6, 3.2), backend=b)),
        ("phase_cross_correlation u=1", lambda: sk_pcc(vol, moving)[0],
         lambda: gpuprep.phase_cross_correlation(vol, moving, backend=b).shift),
        ("phase_cross_correlation u=10", lambda: sk_pcc(vol, moving, upsample_factor=10)[0],
         lambda: gpuprep.phase_cross_correlation(vol, moving, upsample_factor=10, backend=b).shift),
        ("zscore (16 volumes)", lambda: scipy.stats.zscore(series, axis=0),
         lambda: gpuprep.zscore(series, backend=b)),
    ]
    print(f"shape {shape} float32, gpuprep backend {gpuprep.backend_name(b)}, median of {args.repeat}")
    print(f"{'function':32s} {'scipy/skimage':>14s} {'gpuprep':>10s} {'ratio':>8s} {'max |diff|':>11s}")
    for name, peer, ours in cases:
        t_peer, r_peer = timed(peer)
        t_ours, r_ours = timed(ours)
        diff = float(np.nanmax(np.abs(np.asarray(r_ours, np.float64) - np.asarray(r_peer, np.float64))))
        print(f"{name:32s} {t_peer * 1e3:11.1f} ms {t_ours * 1e3:7.1f} ms {t_peer / t_ours:7.1f}x {diff:11.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
