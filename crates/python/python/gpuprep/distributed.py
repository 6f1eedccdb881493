"""``python -m gpuprep.distributed``: ``gpuprep run`` on a dask.distributed cluster.

This module owns the command line only: it parses the CLI's run flags (same names and defaults as
``gpuprep run --help``), connects to a scheduler (``--scheduler ADDRESS``) or starts a ``LocalCluster`` of
``--local N`` worker processes, and calls ``gpuprep.dask.preprocess`` with dask's progress bar (unless
``-q``). The graph, the output and their guarantees are ``gpuprep.dask``'s.

    python -m gpuprep.distributed raw/ -o out.ome.zarr --local 4 --backend cpu
    python -m gpuprep.distributed 'raw/*.h5' -o out.ome.zarr --scheduler tcp://head:8786 --upsample-factor 10

Exit status: 0 on success, 1 on an error (one line on stderr naming what failed), 2 on bad arguments,
130 on Ctrl-C. A failed or interrupted run leaves no output.
"""

from __future__ import annotations

import argparse
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpuprep.distributed",
        description="gpuprep run on a dask.distributed cluster: median filter, registration, shift and "
        "z-score of (t, z, y, x) data into an OME-Zarr store.",
    )
    p.add_argument("inputs", nargs="+", help="a directory, glob or files of HDF5 or TIFF volumes, or one Zarr/OME-Zarr store")
    p.add_argument("-o", "--output", required=True, help="the output store (.ome.zarr or .zarr)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--local", metavar="N", type=int, help="start a LocalCluster of N worker processes")
    p.add_argument("--threads-per-worker", type=int, default=1, help="with --local (default 1)")
    p.add_argument("--block-size", type=int, default=None, help="timepoints per task (default: the output's chunking, <= 8)")
    p.add_argument("--dataset", default="default", help="the HDF5 dataset or Zarr array/image (default: default)")
    p.add_argument("--axes", choices=["tzyx", "tyx", "zyx"], default=None)
    p.add_argument("--format", choices=["hdf5", "zarr", "tiff"], default=None, help="the inputs' format (default: detected)")
    p.add_argument("--channel", type=int, default=0, help="the channel read from an input with several (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing Zarr store or regular file")
    p.add_argument("--median-size", default="3,3,3")
    p.add_argument("--median-mode", default="reflect", choices=["reflect", "nearest", "mirror", "constant", "wrap"])
    p.add_argument("--median-cval", type=float, default=0.0)
    p.add_argument("--no-median", action="store_true")
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--upsample-factor", type=int, default=1)
    p.add_argument("--normalization", default="phase", choices=["phase", "none"])
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference", type=int, default=0)
    ref.add_argument("--reference-mean", metavar="START:END", default=None)
    p.add_argument("--register-raw", action="store_true")
    p.add_argument("--order", type=int, default=3, choices=[0, 1, 3])
    p.add_argument("--shift-mode", default="constant", choices=["constant", "nearest", "reflect", "mirror", "wrap"])
    p.add_argument("--shift-cval", type=float, default=0.0)
    p.add_argument("--no-zscore", action="store_true")
    p.add_argument("--ddof", type=int, default=0)
    p.add_argument("--constant-voxels", default="nan", choices=["nan", "zero"])
    p.add_argument("--nonfinite", default="error", choices=["error", "zero"])
    p.add_argument("--compression", default="none", choices=["none", "zstd", "blosc-lz4"])
    p.add_argument("--shard", action="store_true", help="store each block's time slab as one Zarr v3 shard")
    p.add_argument("--memory-budget", default=None,
                   help="bytes of registered volumes the workers may hold between the passes (e.g. 8G; "
                   "default a quarter of their memory; 0: a scratch array)")
    p.add_argument("--max-shift", default=None, help="largest |shift| searched per axis: Z,Y,X (or one number)")
    p.add_argument("--smooth-sigma", default="0", help="Gaussian smoothing of the correlation: S or Z,Y,X voxels")
    p.add_argument("--reference-iterations", type=int, default=0)
    p.add_argument("--reference-top", type=int, default=None)
    p.add_argument("--save", default="", help="extra stages to keep in the output: filtered, registered (comma-separated)")
    p.add_argument("--backend", default="auto", choices=["auto", "gpu", "cpu"])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.local is not None and args.local < 1:
        print("python -m gpuprep.distributed: error: --local: expected at least 1 worker", file=sys.stderr)
        return 2
    from distributed import Client, LocalCluster

    import gpuprep.dask as gd

    cluster = None
    started = time.perf_counter()
    try:
        if args.local is not None:
            cluster = LocalCluster(
                n_workers=args.local, threads_per_worker=args.threads_per_worker, processes=True,
                dashboard_address=":0" if not args.quiet else None,
            )
            client = Client(cluster)
        else:
            client = Client(args.scheduler, timeout="30s")
        with client:
            if not args.quiet and client.dashboard_link:
                print(f"gpuprep: dask dashboard at {client.dashboard_link}", file=sys.stderr)
            report = gd.preprocess(
                args.inputs,
                args.output,
                dataset=args.dataset,
                axes=args.axes,
                format=args.format,
                channel=args.channel,
                force=args.force,
                block_size=args.block_size,
                no_median=args.no_median,
                median_size=args.median_size,
                median_mode=args.median_mode,
                median_cval=args.median_cval,
                no_register=args.no_register,
                upsample_factor=args.upsample_factor,
                normalization=args.normalization,
                reference=args.reference,
                reference_mean=args.reference_mean,
                register_raw=args.register_raw,
                order=args.order,
                shift_mode=args.shift_mode,
                shift_cval=args.shift_cval,
                no_zscore=args.no_zscore,
                ddof=args.ddof,
                constant_voxels=args.constant_voxels,
                nonfinite=args.nonfinite,
                compression=args.compression,
                shard=args.shard,
                memory_budget=args.memory_budget,
                save=args.save,
                max_shift=args.max_shift,
                smooth_sigma=args.smooth_sigma,
                reference_iterations=args.reference_iterations,
                reference_top=args.reference_top,
                backend=args.backend,
                client=client,
                progress=not args.quiet,
            )
    except KeyboardInterrupt:
        print("\ngpuprep: interrupted; no output written", file=sys.stderr)
        return 130
    except (ValueError, OSError, TypeError, RuntimeError, NotImplementedError) as e:
        print(f"gpuprep: error: {e}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.close()
    if not args.quiet:
        t, shape = report["timepoints"], "x".join(map(str, report["shape"]))
        print(
            f"\ngpuprep: wrote {args.output} ({t} timepoints of {shape}) with {report['backend']} in "
            f"{time.perf_counter() - started:.2f} s; {report['tasks_per_pass']} tasks per pass, "
            f"reduction depth {report['reduction_depth']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
