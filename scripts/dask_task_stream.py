#!/usr/bin/env python3
"""Where a gpuprep.dask run spends its time (a diagnostic, not a test): one run on a LocalCluster of N
worker processes (bench_dask.py's: one dask thread and RAYON_NUM_THREADS=1 each) under dask's task
stream, printing the run's time, the CPU seconds of the client (with the scheduler) and of each worker,
each worker's busy time, and with --rows every task's start, end and duration.

    python scripts/dask_task_stream.py --workers 2 --shape 24,64,256,256 --block-size 4 [--runs 2] [--rows]
        [--gpuprep target/release/gpuprep] [--workdir bench-dask]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_dask import cluster, ensure_data, parse_shape  # noqa: E402


def cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shape", type=parse_shape, default=(24, 64, 256, 256))
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--runs", type=int, default=2, help="runs, each on a fresh cluster (the first warms up)")
    ap.add_argument("--rows", action="store_true", help="every task of the last run")
    ap.add_argument("--gpuprep", default=os.environ.get("GPUPREP_CLI", "target/debug/gpuprep"))
    ap.add_argument("--workdir", default="bench-dask")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    data = ensure_data(args.gpuprep, args.workdir, args.shape)
    import gpuprep.dask as gd
    from distributed import get_task_stream

    for run in range(args.runs):
        out = os.path.join(args.workdir, "stream.ome.zarr")
        shutil.rmtree(out, ignore_errors=True)
        lc, client, _ = cluster(args.workers)
        try:
            w0, c0 = client.run(cpu_seconds), cpu_seconds()
            with get_task_stream(client) as ts:
                t0, tp = time.time(), time.perf_counter()
                gd.preprocess(data, out, backend="cpu", block_size=args.block_size, client=client)
                seconds = time.perf_counter() - tp
            c1, w1 = cpu_seconds(), client.run(cpu_seconds)
        finally:
            client.close()
            lc.close()
        workers = {w: f"w{i}" for i, w in enumerate(sorted(w1))}
        cpu = ", ".join(f"{workers[w]} {w1[w] - w0[w]:.2f} s" for w in sorted(w1))
        print(f"run {run}: {seconds:.2f} s; CPU: client and scheduler {c1 - c0:.2f} s, {cpu}")
        busy: dict = collections.Counter()
        rows = []
        for task in ts.data:
            for s in task["startstops"]:
                a, b = s["start"] - t0, s["stop"] - t0
                busy[(workers.get(task["worker"], task["worker"]), s["action"])] += b - a
                rows.append((a, b, workers.get(task["worker"], task["worker"]), s["action"], str(task["key"])))
        print("  busy: " + ", ".join(f"{w} {action} {v:.2f} s" for (w, action), v in sorted(busy.items())))
        if args.rows and run == args.runs - 1:
            for a, b, w, action, key in sorted(rows):
                if not key.startswith(("getitem", "block_source", "_side_only")):
                    print(f"  {a:6.2f} {b:6.2f} {b - a:5.2f} {w} {action:9s} {key[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
