#!/usr/bin/env python3
"""End-to-end comparison: the notebook's dask + scipy + scikit-image pipeline vs gpuprep.

Usage (from the repository root):

    python3 scripts/bench_e2e.py --shape 10,100,100,100 \
        [--gpuprep target/release/gpuprep] [--workdir bench-data] [--backend cpu] \
        [--keep] [--python-synth] [--scheduler distributed|threads] [--dask-persist] \
        [--skip-gpuprep]

Data: WORKDIR/randn_T_Z_Y_X/ind_00000.h5 ... (dataset ``default``, float64 randn, one
3-D volume per timepoint, as the notebook's ``make_fake_h5_data``), written once by
``gpuprep synth DIR --shape T,Z,Y,X --mode randn --seed 1`` and reused when the directory
already holds T files.  ``--python-synth`` (or a missing binary) writes them with h5py
instead (numpy.random.default_rng(1), float64 standard normal).

Dask side (a separate child process, so that its peak RSS is its own: the script
re-invokes itself with ``--dask-only DIR OUT``), the notebook's pipeline, modernised:
  data      = da.stack([da.from_array(H5Source(fn,'default'), chunks=(Z,Y,X)) ...])
              .astype(float32)                 # cast to float32 right after reading
              (H5Source: a picklable lazy h5py reader, since dask.distributed now pickles
               graphs and h5py objects cannot be pickled)
  filtered  = data.map_blocks(median_filter(v, size=(1,3,3,3)))          # mode reflect
  reference = filtered[0].compute()
  shifts    = filtered.map_blocks(phase_cross_correlation(reference, squeeze(block))[0])
              (reference first: fixes the notebook's reversed argument order;
               upsample_factor 1, normalization 'phase')
  registered= filtered.map_blocks(scipy.ndimage.shift(block[0], shifts[t], order=3,
                                                      mode='constant')[None])
  rechunked = registered.rechunk((T, Z//10, Y//10, X//10))   # as the notebook
  result    = rechunked.map_blocks(scipy.stats.zscore(v, axis=0))     # ddof 0
  da.store(result, H5Target(OUT, '/data'))  # = da.to_hdf5 with a picklable target
As in the notebook, ``filtered`` is not persisted, so the median filter is evaluated
again for the reference, the shifts and the final result; ``--dask-persist`` persists it
once instead (faster, more memory).  Scheduler: ``LocalCluster(n_workers=1,
processes=False)`` + ``Client`` as in the notebook (default), or dask's default threaded
scheduler with ``--scheduler threads``.

gpuprep side (a child process): ``gpuprep run DIR -o OUT.h5 --backend cpu --force --quiet``
(defaults: median 3,3,3 reflect; registration of filtered volumes against filtered
timepoint 0, upsample factor 1, phase normalization; cubic shift, mode constant; z-score
ddof 0; output dataset ``/data`` float32 (t,z,y,x)).

Wall time is measured around each child (interpreter start-up and imports included for
dask; the child also reports its own compute time); peak RSS is the child's
``ru_maxrss`` from ``os.wait4`` (KiB on Linux).  Finally both ``/data`` outputs are
compared: max |difference| over voxels finite in both, and the number of voxels where
exactly one side is NaN.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time


def parse_shape(s):
    dims = tuple(int(v) for v in s.replace("x", ",").split(","))
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError("shape must be T,Z,Y,X with positive entries")
    return dims


# ----------------------------------------------------------------------------
# child: the dask pipeline
# ----------------------------------------------------------------------------

# Modern dask.distributed pickles task graphs even for an in-process LocalCluster, and
# h5py objects cannot be pickled, so the notebook's ``da.from_array(File(fn,'r')['default'])``
# and ``da.to_hdf5`` fail there.  These two small picklable stand-ins keep the same
# behaviour: a lazily read dataset (opened per access) and a store target that writes
# each chunk into an HDF5 dataset through a per-process cached handle under a lock.
_H5_WRITE_HANDLES = {}


class H5Source:
    def __init__(self, fn, name="default"):
        from h5py import File
        self.fn, self.name = fn, name
        with File(fn, "r") as f:
            d = f[name]
            self.shape, self.dtype = d.shape, d.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        from h5py import File
        with File(self.fn, "r") as f:
            return f[self.name][key]


class H5Target:
    def __init__(self, fn, name, lock):
        self.fn, self.name, self.lock = fn, name, lock

    def __setitem__(self, key, value):
        from h5py import File
        with self.lock:
            f = _H5_WRITE_HANDLES.get(self.fn)
            if f is None:
                f = _H5_WRITE_HANDLES[self.fn] = File(self.fn, "r+")
            f[self.name][key] = value


def dask_only(data_dir, out_path, scheduler, persist):
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    import numpy as np
    import dask
    import dask.array as da
    from h5py import File
    from scipy.ndimage import median_filter, shift as nd_shift
    from scipy.stats import zscore
    from skimage.registration import phase_cross_correlation

    client = None
    if scheduler == "distributed":
        from dask.distributed import Client, LocalCluster
        lc = LocalCluster(n_workers=1, processes=False, dashboard_address=None)
        client = Client(lc)
        for name in ("distributed", "distributed.shuffle", "distributed.shuffle._scheduler_plugin"):
            logging.getLogger(name).setLevel(logging.ERROR)  # p2p-rechunk chatter
        nthreads = sum(client.nthreads().values())
        sched_desc = f"distributed LocalCluster(n_workers=1, processes=False), {nthreads} threads"
    else:
        dask.config.set(scheduler="threads")
        sched_desc = f"dask threaded scheduler, {os.cpu_count()} threads"
    t_ready = time.perf_counter()

    fnames = sorted(glob.glob(os.path.join(data_dir, "ind_*.h5")))
    with File(fnames[0], "r") as f:
        vol_shape = f["default"].shape
    dims = (len(fnames),) + tuple(vol_shape)
    data = da.stack([da.from_array(H5Source(fn, "default"), chunks=vol_shape)
                     for fn in fnames])
    data = data.astype(np.float32)

    filter_size = (1, 3, 3, 3)
    filtered = data.map_blocks(lambda v: median_filter(v, size=filter_size, mode="reflect"),
                               dtype=np.float32)
    if persist:
        filtered = filtered.persist()

    reference = filtered[0].compute()
    t_ref = time.perf_counter()

    def reg(im, reference=reference):
        return np.asarray(
            phase_cross_correlation(reference, np.squeeze(im), upsample_factor=1,
                                    normalization="phase")[0], dtype=np.float64).reshape(1, -1)

    shifts = filtered.map_blocks(reg, dtype=np.float64, drop_axis=(2, 3),
                                 chunks=(1, 3)).compute()
    t_shifts = time.perf_counter()

    def shifter(im, block_id=None):
        t = block_id[0]
        return nd_shift(im[0], shifts[t], order=3, mode="constant")[None]

    registered = filtered.map_blocks(shifter, dtype=np.float32)
    new_chunks = (dims[0],) + tuple(max(1, d // 10) for d in dims[1:])
    rechunked = registered.rechunk(chunks=new_chunks)
    result = rechunked.map_blocks(lambda v: zscore(v, axis=0), dtype=np.float32)

    # equivalent of da.to_hdf5(out_path, '/data', result): chunked dataset, chunk-wise store
    from dask.utils import SerializableLock
    with File(out_path, "w") as f:
        f.create_dataset("data", shape=result.shape, dtype=result.dtype,
                         chunks=tuple(c[0] for c in result.chunks))
    da.store(result, H5Target(out_path, "data", SerializableLock()), lock=False)
    for h in _H5_WRITE_HANDLES.values():
        h.close()
    _H5_WRITE_HANDLES.clear()
    t_end = time.perf_counter()

    if client is not None:
        client.close()
        lc.close()
    info = {
        "scheduler": sched_desc,
        "persist": persist,
        "startup_s": t_ready - t_start,
        "reference_s": t_ref - t_ready,
        "shifts_s": t_shifts - t_ref,
        "shift_zscore_store_s": t_end - t_shifts,
        "compute_s": t_end - t_ready,
        "shifts_first": shifts[: min(3, len(shifts))].tolist(),
    }
    print("DASK_INFO " + json.dumps(info), flush=True)


# ----------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------

def python_synth(data_dir, dims, seed=1):
    """The notebook's make_fake_h5_data, seeded: float64 randn volumes in ind_NNNNN.h5."""
    import numpy as np
    from h5py import File
    rng = np.random.default_rng(seed)
    os.makedirs(data_dir, exist_ok=True)
    for ind in range(dims[0]):
        with File(os.path.join(data_dir, f"ind_{ind:05d}.h5"), "w") as f:
            f["default"] = rng.standard_normal(dims[1:])


def ensure_data(args, dims, have_binary):
    data_dir = os.path.join(args.workdir, "randn_" + "_".join(str(d) for d in dims))
    existing = sorted(glob.glob(os.path.join(data_dir, "ind_*.h5")))
    if len(existing) == dims[0]:
        print(f"data: reusing {data_dir} ({dims[0]} files)")
        return data_dir
    if os.path.isdir(data_dir):
        shutil.rmtree(data_dir)
    os.makedirs(args.workdir, exist_ok=True)
    if have_binary and not args.python_synth:
        cmd = [args.gpuprep, "synth", data_dir, "--shape", ",".join(map(str, dims)),
               "--mode", "randn", "--seed", "1"]
        print("data: " + " ".join(cmd))
        r = subprocess.run(cmd)
        if r.returncode == 0 and len(glob.glob(os.path.join(data_dir, "ind_*.h5"))) == dims[0]:
            return data_dir
        print(f"data: gpuprep synth failed (exit {r.returncode}); falling back to h5py")
        if os.path.isdir(data_dir):
            shutil.rmtree(data_dir)
    print(f"data: writing {data_dir} with h5py (python synth, float64 randn, seed 1)")
    python_synth(data_dir, dims)
    return data_dir


def run_child(cmd):
    """Run cmd; return (exit code, wall seconds, peak RSS KiB, stdout text)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    return p.returncode, wall, ru.ru_maxrss, out.decode(errors="replace")


def compare(path_a, path_b):
    import numpy as np
    from h5py import File
    with File(path_a, "r") as fa, File(path_b, "r") as fb:
        a = fa["data"][()].astype(np.float32)
        b = fb["data"][()].astype(np.float32)
    if a.shape != b.shape:
        return {"shape_mismatch": (a.shape, b.shape)}
    na, nb = np.isnan(a), np.isnan(b)
    both = np.isfinite(a) & np.isfinite(b)
    diff = np.abs(a[both].astype(np.float64) - b[both])
    return {
        "max_abs_diff": float(diff.max()) if diff.size else float("nan"),
        "mean_abs_diff": float(diff.mean()) if diff.size else float("nan"),
        "nan_mismatch": int((na != nb).sum()),
        "nan_both": int((na & nb).sum()),
        "n": int(a.size),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=parse_shape, default=(10, 100, 100, 100))
    ap.add_argument("--gpuprep", default="target/release/gpuprep")
    ap.add_argument("--workdir", default="bench-data")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--keep", action="store_true", help="keep the two output HDF5 files")
    ap.add_argument("--python-synth", action="store_true",
                    help="write the input files with h5py instead of `gpuprep synth`")
    ap.add_argument("--scheduler", choices=["distributed", "threads"], default="distributed")
    ap.add_argument("--dask-persist", action="store_true",
                    help="persist the median-filtered array (not done in the notebook)")
    ap.add_argument("--skip-gpuprep", action="store_true", help="run the dask side only")
    ap.add_argument("--dask-only", nargs=2, metavar=("DIR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.dask_only:
        dask_only(args.dask_only[0], args.dask_only[1], args.scheduler, args.dask_persist)
        return 0

    dims = args.shape
    have_binary = os.path.isfile(args.gpuprep) and os.access(args.gpuprep, os.X_OK)
    if not have_binary:
        print(f"NOTE: gpuprep binary not found at {args.gpuprep!r} "
              f"(build it with `cargo build --release`, or pass --gpuprep PATH); "
              f"the gpuprep half will be skipped and the data written with h5py.")
    data_dir = ensure_data(args, dims, have_binary)
    out_dask = os.path.join(args.workdir, "out_dask.h5")
    out_gp = os.path.join(args.workdir, "out_gpuprep.h5")

    rows = []
    cmd = [sys.executable, os.path.abspath(__file__), "--dask-only", data_dir, out_dask,
           "--scheduler", args.scheduler] + (["--dask-persist"] if args.dask_persist else [])
    print("dask: running child process ...", flush=True)
    rc, wall, rss, out = run_child(cmd)
    info = {}
    for line in out.splitlines():
        if line.startswith("DASK_INFO "):
            info = json.loads(line[len("DASK_INFO "):])
    if rc != 0:
        print(out)
        print(f"dask child failed with exit code {rc}")
        return 1
    print(f"dask: {info.get('scheduler')}; filtered persisted: {info.get('persist')}; "
          f"compute {info.get('compute_s', float('nan')):.2f} s (reference "
          f"{info.get('reference_s', 0):.2f}, shifts {info.get('shifts_s', 0):.2f}, "
          f"shift+zscore+store {info.get('shift_zscore_store_s', 0):.2f}), "
          f"startup {info.get('startup_s', 0):.2f} s; first shifts {info.get('shifts_first')}")
    rows.append(("dask+scipy+skimage", wall, rss))

    gp_ok = False
    if have_binary and not args.skip_gpuprep:
        cmd = [args.gpuprep, "run", data_dir, "-o", out_gp, "--backend", args.backend,
               "--force", "--quiet"]
        print("gpuprep: " + " ".join(cmd), flush=True)
        rc, wall, rss, out = run_child(cmd)
        if out.strip():
            print(out.rstrip())
        if rc != 0:
            print(f"gpuprep failed with exit code {rc}")
        else:
            gp_ok = True
            rows.append((f"gpuprep ({args.backend})", wall, rss))
    elif not have_binary:
        print(f"gpuprep: SKIPPED, binary {args.gpuprep!r} does not exist")

    print()
    print(f"shape {dims} (t,z,y,x), {dims[0]} files in {data_dir}")
    print(f"{'pipeline':<24} {'wall s':>9} {'peak RSS MiB':>13}")
    for name, w, r in rows:
        print(f"{name:<24} {w:>9.2f} {r / 1024:>13.1f}")
    if gp_ok:
        (_, wd, rd), (_, wg, rg) = rows
        print(f"ratio = dask_time / gpuprep_time = {wd / wg:.2f}x")
        print(f"memory ratio = dask_peak_rss / gpuprep_peak_rss = {rd / rg:.2f}x")
        c = compare(out_dask, out_gp)
        if "shape_mismatch" in c:
            print(f"outputs differ in shape: dask {c['shape_mismatch'][0]} "
                  f"vs gpuprep {c['shape_mismatch'][1]}")
        else:
            print(f"output difference: max |dask - gpuprep| = {c['max_abs_diff']:.3g} "
                  f"(mean {c['mean_abs_diff']:.3g}) over finite voxels; "
                  f"NaN mismatches {c['nan_mismatch']} (NaN in both {c['nan_both']}) "
                  f"of {c['n']}")

    if not args.keep:
        for p in (out_dask, out_gp):
            if os.path.exists(p):
                os.remove(p)
    else:
        print(f"kept {out_dask}" + (f" and {out_gp}" if gp_ok else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
