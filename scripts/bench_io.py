#!/usr/bin/env python3
"""Benchmark of gpuprep's I/O path (a script, not a test): the z-score-only run (`--no-median --no-register`)
against a plain copy of the same bytes, on HDF5 and OME-Zarr outputs.

Each round runs, in turn: `cat` of the input files into one file (the issue's plain copy: coreutils copies
in the kernel), a read-then-write copy in Python (each file read into memory, written to one file: what any
program that looks at the data must at least do), the same bytes written as one file per MiB (the Zarr
output's layout, one file per chunk: the file system's own cost of that many files), gpuprep into HDF5,
gpuprep into OME-Zarr (whose raw chunks are written with O_DIRECT), the same with buffered chunk writes
(`GPUPREP_DIRECT_WRITES=0`); and after `cat`, the same copy written with O_DIRECT (`dd oflag=direct`), the
plain copy at the device's own pace. Every command is
followed by `sync` inside its timing (so written data reaching the device counts for all alike). A one-file
output is then deleted (and synced), so each case starts with the same free memory; the outputs made of
many files (the 1 MiB files, the OME-Zarr store) are moved aside, their pages dropped from the page cache,
and deleted after the last round: on ext4
without a journal (this VM's disk) a file created soon after others were deleted in the same block group
skips each recently deleted inode in turn, so deleting 800 files made every later file creation there
slower than the writes themselves (800 empty files: 0.02 s in a quiet group, 0.47 s after such deletions).
`--delete-each` deletes them at once as well, to show that. The medians over the rounds are printed with
their ratios to `cat`, and the median of each round's own ratio.

    python3 scripts/bench_io.py [--shape 50,64,256,256] [--rounds 3] [--gpuprep target/release/gpuprep]
        [--workdir bench-io] [--backend cpu] [--delete-each]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import time


def sync() -> None:
    subprocess.run(["sync"], check=True)


def timed(cmd) -> float:
    t0 = time.perf_counter()
    if callable(cmd):
        cmd()
    else:
        subprocess.run(cmd, check=True, capture_output=True)
    sync()
    return time.perf_counter() - t0


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)
    sync()


def drop_cached(path: str) -> None:
    """Evicts the (synced, clean) pages of every file under `path` from the page cache, so an output
    kept aside holds no more memory than a deleted one."""
    for root, _, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="50,64,256,256")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gpuprep", default="target/release/gpuprep")
    ap.add_argument("--workdir", default="bench-io")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--delete-each", action="store_true",
                    help="delete the many-file outputs right after each case too (see above)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    data = os.path.join(args.workdir, "in_" + args.shape.replace(",", "_"))
    t = int(args.shape.split(",")[0])
    if len(glob.glob(os.path.join(data, "*.h5"))) != t:
        shutil.rmtree(data, ignore_errors=True)
        subprocess.run([args.gpuprep, "synth", data, "--shape", args.shape, "--dtype", "float32"], check=True,
                       capture_output=True)
    files = sorted(glob.glob(os.path.join(data, "*.h5")))
    size = sum(os.path.getsize(f) for f in files)
    out = {name: os.path.join(args.workdir, name)
           for name in ("copy.bin", "dcopy.bin", "pycopy.bin", "pyfiles", "out.h5", "out.ome.zarr",
                        "buffered.ome.zarr")}

    def py_copy() -> None:
        with open(out["pycopy.bin"], "wb") as dst:
            for f in files:
                with open(f, "rb") as src:
                    dst.write(src.read())

    def py_files() -> None:
        # The same bytes as one file per 1 MiB (the Zarr output's layout: one file per chunk): what the
        # file system alone charges for that many files.
        os.makedirs(out["pyfiles"])
        k = 0
        for f in files:
            with open(f, "rb") as src:
                data = src.read()
            for i in range(0, len(data), 1 << 20):
                with open(os.path.join(out["pyfiles"], str(k)), "wb") as dst:
                    dst.write(data[i:i + (1 << 20)])
                k += 1

    run = [args.gpuprep, "run", data, "--no-median", "--no-register", "--backend", args.backend, "-q"]
    cases = {
        "cat (plain copy)": (["sh", "-c", f"cat {' '.join(files)} > {out['copy.bin']}"], out["copy.bin"]),
        # The plain copy at the device's pace: written with O_DIRECT, as the OME-Zarr output's raw chunks
        # are (GNU dd writes its last, partial block buffered).
        "direct copy (dd oflag=direct)": (["sh", "-c", f"cat {' '.join(files)} | dd of={out['dcopy.bin']} bs=1M "
                                                        "iflag=fullblock oflag=direct status=none"], out["dcopy.bin"]),
        "read + write copy (Python)": (py_copy, out["pycopy.bin"]),
        "the same into 1 MiB files (Py)": (py_files, out["pyfiles"]),
        "gpuprep, HDF5 output": (run + ["-o", out["out.h5"]], out["out.h5"]),
        "gpuprep, OME-Zarr output": (run + ["-o", out["out.ome.zarr"]], out["out.ome.zarr"]),
        "  the same, chunks buffered": (["env", "GPUPREP_DIRECT_WRITES=0", *run, "-o", out["buffered.ome.zarr"]],
                                        out["buffered.ome.zarr"]),
    }
    many_files = {out["pyfiles"], out["out.ome.zarr"], out["buffered.ome.zarr"]}
    aside = os.path.join(args.workdir, "aside")
    for path in [*out.values(), aside]:
        remove(path)
    keep = not args.delete_each
    if keep and shutil.disk_usage(args.workdir).free < args.rounds * 2 * size + (4 << 30):
        print("not enough free disk to keep the many-file outputs until the end: deleting each at once",
              file=sys.stderr)
        keep = False
    os.makedirs(aside)
    # warm the page cache with the inputs, as every case will find them
    subprocess.run(["sh", "-c", f"cat {' '.join(files)} > /dev/null"], check=True)
    times: dict[str, list[float]] = {k: [] for k in cases}
    try:
        for r in range(args.rounds):
            for name, (cmd, path) in cases.items():
                times[name].append(timed(cmd))
                if keep and path in many_files:
                    os.rename(path, os.path.join(aside, f"{r}-{os.path.basename(path)}"))
                    drop_cached(os.path.join(aside, f"{r}-{os.path.basename(path)}"))
                else:
                    remove(path)
    finally:
        remove(aside)
    base = statistics.median(times["cat (plain copy)"])
    how = "many-file outputs deleted after the last round" if keep else "every output deleted at once"
    print(f"inputs: {len(files)} files, {size / 2**20:.0f} MiB ({args.shape} float32); {args.rounds} rounds; "
          f"{os.cpu_count()} cores; {how}; medians, and the median of the rounds' own ratios")
    for name, ts in times.items():
        m = statistics.median(ts)
        own = statistics.median(t / c for t, c in zip(ts, times["cat (plain copy)"]))
        print(f"  {name:30s} {m:6.2f} s  ({m / base:.2f}x cat; per round {own:.2f}x)   "
              f"[{', '.join(f'{x:.2f}' for x in ts)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
