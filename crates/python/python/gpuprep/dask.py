"""gpuprep on dask: the ``gpuprep run`` job as a dask graph, on whichever scheduler is active (threads, a
``LocalCluster`` of worker processes, a ``SLURMCluster``), with the CLI's parameters and numbers.

This module owns the graph and the distributed OME-Zarr output:

- the reference volume, computed once by tasks at the head of the graph (the chosen timepoint or the mean
  of a range, median-filtered unless ``register_raw``; refined first and broadcast with
  ``client.scatter(..., broadcast=True)`` under ``reference_iterations``) and fetched once per worker; each
  worker process transforms it once, on first use, and keeps it across its tasks;
- one task per block of timepoints calling ``gpuprep.process_block`` (median → register → shift), returning
  the shifts and a ``gpuprep.Moments`` of the block;
- the z-score with no rechunk to time series: the blocks' Moments merged pairwise (Chan et al.): on a
  distributed cluster as they complete, on the worker holding both, then a reduce-scatter of the workers'
  last partials into the f64 stats file (``_paired_moments``, ``_save_stats_scattered``); on local schedulers
  in a balanced tree. Then a second map over the same blocks normalizing with the f64 mean and std;
- the output (``.ome.zarr``): created by the client in a private ``.gpuprep-XXXXXXXX`` directory beside it,
  each chunk written by exactly one task, the side arrays and the root metadata (``zarr.json``, which makes
  the store complete) written by the client once at the end, then moved into place. A failed or
  interrupted run removes the directory.

Blocks are whole volumes in (z, y, x) and ``block_size`` timepoints (default: the CLI's chunking, at most 8
timepoints and 32 MiB): a worker holds a few blocks at a time whatever the number of timepoints.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import numbers
import os
import shutil
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

import gpuprep
from gpuprep import _gpuprep

__all__ = ["preprocess", "open_input", "block_size_for", "SharedReference"]

# The Rust writer's chunking rule (crates/io/src/sink.rs, volume_chunking): about 1 MiB chunks of at most
# 8 timepoints, the time extent lowered so that one slab of chunks stays within 32 MiB.
_CHUNK_BYTES = 1 << 20
_MAX_CHUNK_T = 8
_CACHE_BUDGET = 32 << 20

_F32_MAX = float(np.finfo(np.float32).max)


def _spatial_chunk(shape: Sequence[int], budget: int) -> tuple[int, int, int]:
    """The largest axis halved until the block has at most ``budget`` voxels (ties: the slowest axis)."""
    c = list(shape)
    while c[0] * c[1] * c[2] > budget:
        i = max(range(3), key=lambda i: (c[i], -i))
        if c[i] == 1:
            break
        c[i] = -(-c[i] // 2)
    return tuple(c)


def _chunking(t: int, shape: Sequence[int]) -> tuple[int, int, int, int]:
    """The CLI's 4-D chunk shape for ``t`` volumes of ``shape``."""
    vol_bytes = max(int(np.prod(shape)) * 4, 1)
    ct = max(1, min(_CACHE_BUDGET // vol_bytes, _MAX_CHUNK_T, t))
    while True:
        c = _spatial_chunk(shape, max(_CHUNK_BYTES // 4 // ct, 1))
        per_slab = int(np.prod([-(-shape[i] // c[i]) for i in range(3)]))
        if ct > 1 and per_slab * ct * int(np.prod(c)) * 4 > _CACHE_BUDGET:
            ct -= 1
            continue
        return (ct,) + c


def block_size_for(t: int, shape: Sequence[int]) -> int:
    """The default timepoints per task: the time extent of the CLI's output chunks (8 for volumes up to
    4 MiB, fewer for larger ones, 1 above 16 MiB), so that output chunks and tasks coincide."""
    return _chunking(t, shape)[0]


# --------------------------------------------------------------------------------------------------------
# Parameters: validated on the client, with the CLI's names, before anything is computed or created.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Params:
    median: tuple[list[int], str, float] | None
    register: bool
    upsample_factor: int
    normalization: str
    reference: tuple[int, int]  # [start, end) of the volumes averaged (one for a timepoint)
    reference_text: str
    register_raw: bool
    order: int
    shift_mode: str
    shift_cval: float
    zscore: bool
    ddof: int
    constant_voxels: str
    nonfinite: str
    compression: str
    shard: bool
    memory_budget: int | None
    backend: str
    save_filtered: bool = False
    save_registered: bool = False
    max_shift: tuple | None = None
    smooth_sigma: tuple = (0.0, 0.0, 0.0)
    reference_iterations: int = 0
    reference_top: int | None = None


def _nonneg_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < 0:
        raise ValueError(f"{name}: got {value!r}; expected a non-negative integer")
    return int(value)


def _choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: got {value!r}; expected one of {', '.join(allowed)}")
    return value


def _params(
    t: int,
    *,
    no_median: bool,
    median_size: Any,
    median_mode: str,
    median_cval: float,
    no_register: bool,
    upsample_factor: int,
    normalization: str | None,
    reference: int,
    reference_mean: Any,
    register_raw: bool,
    order: int,
    shift_mode: str,
    shift_cval: float,
    no_zscore: bool,
    ddof: int,
    constant_voxels: str,
    nonfinite: str,
    compression: str,
    shard: bool,
    memory_budget: int | str | None,
    backend: str,
    save: Any = (),
    max_shift: Any = None,
    smooth_sigma: Any = 0,
    reference_iterations: int = 0,
    reference_top: int | None = None,
    disambiguate: bool = False,
    shifts: Any = None,
    apply_to_channels: Any = None,
) -> _Params:
    # One validation for every front end: the same rules and messages as `gpuprep run` and
    # gpuprep.preprocess (RunOptions in the pipeline crate); only what depends on the data is checked here.
    v = gpuprep._gpuprep.validate_run(
        gpuprep.run_params(
            no_median=no_median, median_size=median_size, median_mode=median_mode, median_cval=median_cval,
            no_register=no_register, upsample_factor=upsample_factor, normalization=normalization,
            reference=reference, reference_mean=reference_mean, register_raw=register_raw, order=order,
            shift_mode=shift_mode, shift_cval=shift_cval, no_zscore=no_zscore, ddof=ddof,
            constant_voxels=constant_voxels, nonfinite=nonfinite, compression=compression, shard=shard,
            memory_budget=memory_budget, save=save, max_shift=max_shift, smooth_sigma=smooth_sigma,
            reference_iterations=reference_iterations, reference_top=reference_top, disambiguate=disambiguate,
            shifts=shifts, apply_to_channels=apply_to_channels,
        )
    )
    # Validated as the CLI validates them, then refused where this front end does not offer them yet.
    for keyword, given in (("disambiguate", v["disambiguate"]), ("shifts", v["shifts"] is not None),
                           ("apply_to_channels", v["apply_to_channels"])):
        if given:
            raise NotImplementedError(
                f"{keyword}: not offered by gpuprep.dask yet; gpuprep run and gpuprep.preprocess offer it"
            )
    kind, start, end = v["reference"]
    if v["register"] is not None:
        # The driver's messages (crates/pipeline/src/driver.rs, check_config).
        if kind == "index" and start >= t:
            raise ValueError(
                f"reference: timepoint {start} is out of range; the input has {t} timepoints (0..{t})"
            )
        if kind == "mean" and end > t:
            raise ValueError(
                f"reference_mean: range {start}:{end} is empty or past the end; the input has {t} timepoints"
            )
    up, norm = v["register"] or (1, "phase")
    order, shift_mode, shift_cval = v["shift"]
    ddof, constant = v["zscore"] or (0, "nan")
    return _Params(
        median=None if v["median"] is None else (list(v["median"][0]), v["median"][1], float(v["median"][2])),
        register=v["register"] is not None,
        upsample_factor=up,
        normalization=norm,
        reference=(start, end),
        reference_text=f"timepoint {start}" if kind == "index" else f"mean of timepoints {start}:{end}",
        register_raw=v["register_raw"],
        order=order,
        shift_mode=shift_mode,
        shift_cval=shift_cval,
        zscore=v["zscore"] is not None,
        ddof=ddof,
        constant_voxels=constant,
        nonfinite=v["nonfinite"],
        compression=v["compression"],
        shard=bool(v["shard"]),
        memory_budget=v["memory_budget"],
        backend=_choice(backend, "backend", ("auto", "cpu", "gpu")),
        save_filtered=bool(v["save_filtered"]),
        save_registered=bool(v["save_registered"]),
        max_shift=None if not v["register_options"] or v["register_options"][0] is None
        else tuple(float(b) for b in v["register_options"][0]),
        smooth_sigma=tuple(float(x) for x in v["register_options"][1]) if v["register_options"] else (0.0, 0.0, 0.0),
        reference_iterations=int(v["reference_iterations"]),
        reference_top=None if v["reference_top"] is None else int(v["reference_top"]),
    )


# --------------------------------------------------------------------------------------------------------
# Inputs: dask/numpy arrays, Zarr stores, HDF5 files read lazily.
# --------------------------------------------------------------------------------------------------------


@dataclass
class Input:
    """A (t, z, y, x) dask array and what the output's attributes say about where it came from."""

    array: Any
    files: list[str]
    dataset: str
    dtype: str
    voxel_size: list[tuple[float, str | None]] | None = None


def _is_zarr(path: str) -> bool:
    p = path.rstrip("/").lower()
    if p.endswith(".zarr"):
        return True
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, m)) for m in ("zarr.json", ".zarray", ".zgroup")
    )


class _SourceVolumes:
    """A picklable, lazily read (t, z, y, x) float32 view of the inputs ``gpuprep run`` reads (HDF5, TIFF,
    Zarr), described once on the client (``_gpuprep.describe_input``). Each read opens only the files
    holding its timepoints, in Rust with the GIL released, converted and checked as the CLI reads them."""

    def __init__(self, desc: dict, dataset: str, channel: int):
        self.files, self.starts = list(desc["files"]), list(desc["starts"])
        # The dataset as given (the reader names TIFF pages "pages" but takes only "default" for them).
        self.dataset, self.axes, self.format = dataset, desc["axes"], desc["format"]
        self.channel = channel
        self.shape, self.ndim, self.dtype = tuple(desc["shape"]), 4, np.dtype(np.float32)

    def read(self, t0: int, n: int) -> np.ndarray:
        return _BlockRead(self, t0, n).read()

    def __getitem__(self, key: tuple) -> np.ndarray:
        key = tuple(key) + (slice(None),) * (4 - len(key))
        ts = range(*key[0].indices(self.shape[0]))
        if not len(ts):
            return np.empty((0,) + self.shape[1:], np.float32)[(slice(None),) + key[1:]]
        if ts.step != 1:
            return np.stack([self.read(t, 1)[0] for t in ts])[(slice(None),) + key[1:]]
        block = self.read(ts.start, len(ts))
        full = all(k == slice(None) for k in key[1:])
        return block if full else block[(slice(None),) + key[1:]]


class _BlockRead:
    """Timepoints ``t0 .. t0 + n`` of a ``_SourceVolumes``, read by the task that uses them: passed to
    ``register_block`` and ``reference_add`` in place of a block of the input's dask array, so a block is
    read on the worker that registers it (no read tasks run ahead of the registrations, no block moved
    between workers) and a rerun reads it again. Holds only its own files."""

    def __init__(self, src: _SourceVolumes, t0: int, n: int):
        import bisect

        first = bisect.bisect_right(src.starts, t0) - 1
        last = bisect.bisect_right(src.starts, t0 + n - 1) - 1
        self.files = src.files[first : last + 1]
        self.args = (src.dataset, src.axes, src.format, src.channel, t0 - src.starts[first], n)
        self.t0, self.n = t0, n

    def read(self) -> np.ndarray:
        dataset, axes, format, channel, skip, n = self.args
        return _gpuprep.read_block(self.files, dataset, axes, format, channel, skip, n)

    def __dask_tokenize__(self) -> tuple:
        return ("gpuprep._BlockRead", tuple(self.files), self.args)


def block_source(b: _BlockRead) -> _BlockRead:
    return b


def _read(block: Any) -> np.ndarray:
    return block.read() if isinstance(block, _BlockRead) else np.asarray(block)


def _to_float32(raw: np.ndarray, where: str) -> np.ndarray:
    """float32 as the CLI converts (round to nearest); a finite float64 beyond float32's range is an error."""
    if raw.dtype == np.float64 and raw.size:
        finite = np.abs(raw[np.isfinite(raw)])
        if finite.size and finite.max() > _F32_MAX:
            raise ValueError(f"{where}: value {finite.max():g} is beyond float32's range")
    return raw if raw.dtype == np.float32 else raw.astype(np.float32)


def _open_zarr(path: str, dataset: str | None) -> Input:
    """A 4-D or 3-D Zarr array, or an OME-Zarr image's level 0 with the axes its metadata names."""
    import dask.array as da
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as e:  # zarr raises several classes for a missing or broken store
        raise OSError(f"{path}: cannot open as Zarr ({e})") from None
    name = None
    if dataset not in (None, "", "default") and isinstance(node, zarr.Group):
        if dataset not in node:
            raise OSError(f"{path}: no array or image {dataset!r}")
        node, name = node[dataset], dataset
    voxel = None
    axis_names = None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
        if not ms:
            arrays = [k for k, v in node.arrays()]
            raise OSError(f"{path}: a group without OME multiscales; name an array with dataset= ({arrays})")
        level = ms[0]["datasets"][0]
        axes = ms[0].get("axes") or []
        axis_names = [a["name"] if isinstance(a, dict) else a for a in axes]
        scale = next(
            (tr["scale"] for tr in level.get("coordinateTransformations", []) if tr.get("type") == "scale"), None
        )
        units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
        node_path = level["path"]
        arr = node[node_path]
        name = f"{name}/{node_path}" if name else node_path
        if scale is not None:
            voxel = dict(zip(axis_names, zip(map(float, scale), units)))
    else:
        arr = node
    data = da.from_zarr(arr)
    if axis_names:
        if len(axis_names) != data.ndim:
            raise ValueError(f"{path}: its axes {axis_names} do not match its level 0's {data.ndim} dimensions")
        index = []
        for ax, n in zip(axis_names, data.shape):
            if ax == "c":
                index.append(0)
            elif ax in "tzyx":
                index.append(slice(None))
            elif n == 1:
                index.append(0)
            else:
                raise ValueError(f"{path}: axis {ax!r} of length {n} is not supported; gpuprep reads t, c, z, y, x")
        data = data[tuple(index)]
        kept = [a for a in axis_names if a in "tzyx"]
        if "t" not in kept or "y" not in kept or "x" not in kept:
            raise ValueError(f"{path}: axes {axis_names} lack t, y or x")
        if "z" not in kept:
            data, kept = data[:, np.newaxis] if kept[0] == "t" else data[np.newaxis], ["t", "z"] + kept[1:]
        data = data.transpose([kept.index(a) for a in "tzyx"])
        if voxel:
            voxel = [voxel.get(a, (1.0, None)) for a in "tzyx"]
    elif data.ndim == 3:
        data = data[:, np.newaxis]
    elif data.ndim != 4:
        raise ValueError(f"{path}: a {data.ndim}-D array; gpuprep reads (t, z, y, x) or (t, y, x)")
    return Input(data, [path], name or "", str(arr.dtype), voxel)


def _open_source(paths: list[str], dataset: str, axes: str | None, format: str | None, channel: int) -> Input:
    """Inputs read by gpuprep's own reader (HDF5, TIFF, Zarr): described here, read per block by tasks."""
    # The reader's warnings (an output of gpuprep skipped in a directory) go to stderr, as the CLI's.
    desc = _gpuprep.describe_input(paths, dataset, axes, format, channel)
    voxel = None
    if desc["voxel_size"] is not None:
        voxel = [(float(v), u) for v, u in desc["voxel_size"]]
    return Input(_SourceVolumes(desc, dataset, channel), list(desc["files"]), desc["dataset"], desc["dtype"], voxel)


def open_input(
    data: Any, dataset: str = "default", axes: str | None = None, format: str | None = None, channel: int = 0
) -> Input:
    """``data`` as a (t, z, y, x) dask array: a dask or numpy array, or paths ``gpuprep run`` reads (a
    Zarr/OME-Zarr store, HDF5 or TIFF files: a directory, glob, file or list of them) read lazily, each task
    opening its own files. ``format`` and ``channel`` as the CLI's ``--format`` and ``--channel``."""
    import dask.array as da

    is_paths = isinstance(data, (str, os.PathLike)) or (
        isinstance(data, (list, tuple)) and data and all(isinstance(p, (str, os.PathLike)) for p in data)
    )
    if not is_paths and (format is not None or channel != 0):
        raise ValueError("format, channel: apply to inputs given as paths; data is an array")
    if is_paths:
        paths = [os.fspath(p) for p in ([data] if isinstance(data, (str, os.PathLike)) else data)]
        if format is None and channel == 0 and len(paths) == 1 and _is_zarr(paths[0]):
            return _open_zarr(paths[0], dataset)
        return _open_source(paths, dataset, axes, format, channel)
    gpuprep._refuse_masked(data, "data")
    if not isinstance(data, da.Array):
        data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"data: expected a (t, z, y, x) array, got shape {data.shape}")
    if np.dtype(data.dtype).kind not in "fiu" or np.dtype(data.dtype).itemsize > 8:
        raise TypeError(f"data: dtype {data.dtype} is not supported; gpuprep takes integers and floats")
    return Input(data, [], "", str(data.dtype))


def _blocked(inp: Input, block: int | None) -> Any:
    """The input as a dask array of whole volumes in (z, y, x) and ``block`` timepoints per chunk (None:
    a dask array's own time chunks, even uneven ones). Only the time axis is regrouped: no chunk ever
    holds a time series of a sub-volume."""
    import dask.array as da

    a = inp.array
    t = a.shape[0]
    if block is None:
        block = a.chunks[0] if isinstance(a, da.Array) else block_size_for(t, a.shape[1:])
    else:
        block = min(block, t)
    chunks = (block,) + tuple(a.shape[1:])
    if isinstance(a, _SourceVolumes):
        # One task reads a block's files into one float32 array: no second copy for a merge.
        name = "gpuprep-read-" + da.core.tokenize(a.files, a.dataset, a.axes, a.format, a.channel, block)
        return da.from_array(a, chunks=chunks, name=name, fancy=False, meta=np.empty((0,) * 4, np.float32))
    if isinstance(a, np.ndarray):
        return da.from_array(a, chunks=chunks)
    # A no-op where the chunks are already these; otherwise a merge or split along t (and, for inputs
    # chunked in space, the assembly of whole volumes: each output chunk reads one block's volumes).
    return a.rechunk(chunks)


# --------------------------------------------------------------------------------------------------------
# Tasks (run on workers). Module-level functions so that workers import them rather than unpickle code.
# --------------------------------------------------------------------------------------------------------


# How many references this process has transformed (SharedReference.get): once per worker and run.
reference_transforms = 0


class SharedReference:
    """The registration reference as shipped to workers: its volume and parameters. ``get()`` builds the
    ``gpuprep.Reference`` (the transform of the volume) on first use in each process and keeps it, so a
    worker holding a copy transforms it once for all its tasks. The client never transforms
    it: it may have no GPU, nor room for the spectrum."""

    def __init__(self, volume: np.ndarray, upsample_factor: int, normalization: str, backend: str,
                 max_shift: tuple | None = None, smooth_sigma: tuple = (0.0, 0.0, 0.0)):
        self.volume = np.ascontiguousarray(volume, dtype=np.float32)
        self.params = (int(upsample_factor), normalization, backend, max_shift, tuple(smooth_sigma))
        self._lock = threading.Lock()
        self._ref: gpuprep.Reference | None = None

    def __getstate__(self) -> tuple:
        return (self.volume, self.params)

    def __setstate__(self, state: tuple) -> None:
        self.volume, self.params = state
        self._lock = threading.Lock()
        self._ref = None

    def __dask_tokenize__(self) -> tuple:
        from dask.base import tokenize

        return ("gpuprep.SharedReference", tokenize(self.volume), self.params)

    def get(self) -> gpuprep.Reference:
        with self._lock:  # worker threads share the object: one transform
            if self._ref is None:
                global reference_transforms
                reference_transforms += 1
                up, norm, backend, bound, sigma = self.params
                self._ref = gpuprep.Reference(
                    _aligned(self.volume, np.float32), upsample_factor=up, normalization=None if norm == "none" else norm,
                    backend=backend, max_shift=bound, smooth_sigma=sigma,
                )
            return self._ref


def _aligned(a: Any, dtype: Any) -> np.ndarray:
    """``a`` as a C-contiguous, aligned array. Arrays that dask.distributed deserializes may sit unaligned
    in its message frames, and the extension refuses (panics on) unaligned memory."""
    return np.require(a, dtype=dtype, requirements=["C", "A"])


def _moments(parts: Any) -> Any:
    """A ``gpuprep.Moments`` from itself or from (count, mean, M2). Moments travel between tasks as
    themselves (pickled as count, mean and M2, rebuilt aligned on the other side): no copies in between
    on the threaded scheduler."""
    if isinstance(parts, gpuprep.Moments):
        return parts
    count, mean, m2 = parts
    return gpuprep.Moments.from_parts(int(count), _aligned(mean, np.float64), _aligned(m2, np.float64))


def _sanitize(block: np.ndarray, t0: int, nonfinite: str) -> tuple[np.ndarray, int]:
    """The block as float32, with the CLI's rule for NaN/Inf: an error naming the timepoint, or zeros."""
    b = _aligned(_to_float32(np.asarray(block), f"timepoints {t0}-{t0 + len(block) - 1}"), np.float32)
    if b.dtype.kind != "f":
        return b, 0
    bad = ~np.isfinite(b)
    count = int(bad.sum())
    if count:
        if nonfinite == "error":
            t = t0 + int(np.argmax(bad.reshape(len(b), -1).any(axis=1)))
            raise ValueError(
                f"timepoint {t}: NaN or Inf in the input ({count} value(s) in timepoints {t0}-{t0 + len(b) - 1}); "
                "nonfinite='zero' replaces them with 0"
            )
        b = np.where(bad, np.float32(0), b)
    return b, count


def reference_add(acc: np.ndarray | None, volume: Any, t: int, p: _Params) -> np.ndarray:
    """One volume of the reference (a one-timepoint block), filtered as the CLI does, added to a float64
    sum in timepoint order."""
    v, _ = _sanitize(_read(volume), t, p.nonfinite)
    v = v[0]
    if p.median is not None and not p.register_raw:
        sizes, mode, cval = p.median
        v = gpuprep.median_filter(v, size=sizes, mode=mode, cval=cval, backend=p.backend)
    if acc is None:
        return v.astype(np.float64)
    acc = acc.copy()  # a task's input belongs to the scheduler: never mutate it
    acc += v
    return acc


def reference_finish(acc: np.ndarray, n: int) -> np.ndarray:
    return (acc / n).astype(np.float32) if n > 1 else acc.astype(np.float32)


def register_block(
    block: np.ndarray, t0: int, ref: SharedReference | None, p: _Params, scratch: str | None,
    saved: dict[str, str] | None = None,
) -> tuple[dict, Any]:
    """Pass 1 over a block: median → register → shift, the block's Moments, and the registered volumes
    (returned, or written to ``scratch`` (a Zarr array) at [t0, t0 + len)); the stages in ``saved`` (name →
    Zarr array: "filtered", "registered") written there at [t0, t0 + len)."""
    saved = saved or {}
    b, bad = _sanitize(_read(block), t0, p.nonfinite)
    reference = ref.get() if ref is not None else None
    m = p.median
    # With a reference, the CLI's per-frame QC (correlations with the reference before and after the
    # shift, the block's running projections: merged on the client, `_merge_qc`); the filtered volumes
    # when they are a saved stage.
    median = None if m is None else (tuple(int(v) for v in m[0]), m[1], float(m[2]))
    vols, shifts, error, phasediff, extras = _gpuprep.process_block(
        b, reference._ref if reference is not None else None, median, int(p.order), p.shift_mode,
        float(p.shift_cval), bool(p.register_raw), p.backend, reference is not None, "filtered" in saved,
    )
    qc = extras if reference is not None else None
    if "filtered" in saved:
        _write(saved["filtered"], t0, extras.pop("filtered"))
    if "registered" in saved:
        _write(saved["registered"], t0, vols)
    del b
    moments = None
    if p.zscore:
        moments = gpuprep.Moments(vols.shape[1:])
        moments.update(vols)
    # The adapter by name, as the CLI records it (a worker process opens its GPU once; later calls are cached).
    backend = gpuprep.backend_name(reference.backend if reference is not None else p.backend)
    side = {"t0": t0, "shifts": shifts, "error": error, "phasediff": phasediff, "nonfinite": bad, "backend": backend,
            "qc": qc}
    if scratch is not None:
        _write(scratch, t0, vols)
        vols = None
    side["volumes"] = vols
    return side, moments


def _merge_qc(sides: list[dict], shape: tuple, shifts: np.ndarray, error: np.ndarray, voxel: Any,
              max_shift: tuple | None) -> dict[str, np.ndarray]:
    """The CLI's per-frame QC arrays (crates/pipeline/src/qc.rs, written as `gpuprep run` writes them)
    from the blocks' parts: framewise displacement (voxels, and µm when the voxel size is in µm), the
    correlations before and after the shift, the suspicious flags, and the projections along z, y, x
    (sums added, maxima by fmax over the blocks, then the means divided as the CLI does)."""
    t = len(shifts)
    fd = np.zeros(t)
    fd[1:] = np.sqrt((np.diff(shifts, axis=0) ** 2).sum(axis=1))
    out = {"framewise_displacement": fd}
    um = ("micrometer", "micrometre", "micron", "um", "µm")
    if voxel and all(unit in um for _, unit in voxel[1:]):
        scale = np.array([float(v) for v, _ in voxel[1:]])
        d = np.zeros(t)
        d[1:] = np.sqrt(((np.diff(shifts, axis=0) * scale) ** 2).sum(axis=1))
        out["framewise_displacement_um"] = d
    before = np.concatenate([s["qc"]["correlation_before"] for s in sides])
    after = np.concatenate([s["qc"]["correlation_after"] for s in sides])
    out["correlation_before"] = before
    out["correlation_after"] = after
    out["suspicious"] = _gpuprep.qc_suspicious(
        np.ascontiguousarray(shifts), np.ascontiguousarray(error), after, max_shift
    ).astype(np.float64)
    for axis, name in enumerate(("projection_z", "projection_y", "projection_x")):
        parts = [s["qc"]["projections"][axis] for s in sides]
        sum_b = np.sum([q[0] for q in parts], axis=0)
        sum_a = np.sum([q[1] for q in parts], axis=0)
        max_b = functools.reduce(np.fmax, [q[2] for q in parts])
        max_a = functools.reduce(np.fmax, [q[3] for q in parts])
        count = float(t * shape[axis])
        out[name] = np.stack([(sum_b / count).astype(np.float32), (sum_a / count).astype(np.float32),
                              max_b.astype(np.float32), max_a.astype(np.float32)])
    return out


def block_volumes(side: dict) -> np.ndarray:
    return side["volumes"]


def block_shifts(side: dict) -> np.ndarray:
    return side["shifts"]


def merge_moments(a: Any, b: Any) -> Any:
    """Chan et al.'s pairwise merge of two Moments, into a new object: a task's inputs may be read again
    (or by a rerun)."""
    return _moments(a).merged(_moments(b))


def finalize_moments(m: Any, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """The f64 mean and std."""
    return _moments(m).finalize(ddof=ddof)


def save_moments_stats(m: Any, ddof: int, path: str) -> str:
    """``finalize_moments`` and ``save_stats`` in one task: the stats go from the merged moments to the
    file without travelling between tasks (64 MB for a 64 x 256 x 256 volume: dask's transfer of them
    cost more than their finalization)."""
    return save_stats(finalize_moments(m, ddof), path)


def write_stats(stats: tuple | str, store: str, name: str) -> int:
    """The output store's ``mean`` or ``std`` array (float32): a task each, beside the blocks'
    normalization rather than before it (every block waits for the moments, none for these writes), and
    two rather than one so that no worker's share of pass 2 carries both."""
    mean, std = _stats(stats)
    path = os.path.join(store, name)
    _check_running(path)
    # Through gpuprep's writer (zarr-python's first write in a worker cost it 0.2 s here).
    _gpuprep.write_zarr_volume(path, (mean if name == "mean" else std).astype(np.float32))
    return 1


def normalize_block(vols: np.ndarray, stats: tuple | str, p: _Params) -> np.ndarray:
    stats = _stats(stats)
    return gpuprep.normalize(
        _aligned(vols, np.float32),
        _aligned(stats[0], np.float64),
        _aligned(stats[1], np.float64),
        constant_voxels=p.constant_voxels,
        backend=p.backend,
    )


def save_stats(stats: tuple, path: str) -> str:
    """The f64 mean and std saved beside the output (``np.save``, one (2, z, y, x) array) for pass 2's
    tasks, which then depend on this path rather than on the 16 bytes a voxel of the stats themselves:
    dask runs each where its block's volumes are (a block of a few volumes is no larger than the stats,
    and the scheduler moved whichever was nearer), and each process maps the file once."""
    mean, std = (np.ascontiguousarray(a, dtype="<f8") for a in stats)
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    # The two arrays written one after the other under one (2, z, y, x) header: no stacked copy.
    with open(tmp, "wb") as f:
        _write_stats_header(f, mean.shape)
        f.write(memoryview(mean).cast("B"))
        f.write(memoryview(std).cast("B"))
    os.replace(tmp, path)
    return path


def _write_stats_header(f: Any, shape: Sequence[int]) -> None:
    """The ``.npy`` header of a stats file: (2, z, y, x) float64, C order (mean, then std)."""
    np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2,) + tuple(shape)})


def _read_npy_header(f: Any) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, Fortran order, dtype, offset of the values) of the ``.npy`` file ``f`` (from its start)."""
    f.seek(0)
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"{f.name}: .npy format version {version} (save_stats writes 1.0)")
    shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    return shape, fortran, dtype, f.tell()


# Stats files mapped by this process (save_stats), by path: one mapping per worker and run.
_stats_mapped: dict[str, np.ndarray] = {}
_stats_lock = threading.Lock()


def _stats(stats: tuple | str) -> tuple:
    """(mean, std) from themselves or from ``save_stats``'s file, mapped once per process."""
    if not isinstance(stats, str):
        return stats
    with _stats_lock:
        m = _stats_mapped.get(stats)
        if m is None:
            m = _stats_mapped[stats] = _map_populated(stats)
    return m[0], m[1]


# madvise(MADV_POPULATE_READ) (Linux 5.14): the whole mapping's page tables filled in one call.
_MADV_POPULATE_READ = getattr(__import__("mmap"), "MADV_POPULATE_READ", 22)


def _map_populated(path: str) -> np.ndarray:
    """An ``.npy`` file mapped read-only with its pages mapped up front where the kernel can: the first
    normalization otherwise pays a page fault per 4 KiB of the stats (a tenth of a second for 64 MB here)."""
    import mmap

    with open(path, "rb") as f:
        shape, fortran, dtype, offset = _read_npy_header(f)
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    if fortran or dtype != np.dtype("<f8"):
        raise ValueError(f"{path}: expected a C-ordered float64 array, got {dtype} (fortran order: {fortran})")
    if sys.platform.startswith("linux"):
        try:
            mm.madvise(_MADV_POPULATE_READ)
        except (OSError, ValueError):
            pass  # an older kernel: faulted in on first use instead
    return np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)


def _forget_stats() -> None:
    """Drops this process's mappings of stats files (the run is over: its directory is deleted next) and
    the memory its Moments kept for reuse."""
    with _stats_lock:
        _stats_mapped.clear()
    gpuprep.Moments.release_pool()


def _forget_stats_everywhere(client: Any) -> None:
    _forget_stats()
    if client is not None:
        try:
            client.run(_forget_stats)
        except Exception:  # a worker lost at the end keeps nothing of ours
            pass


def normalize_kept(side: dict, out: str, stats: tuple | str, p: _Params) -> int:
    """Pass 2 of the output with pass 1's volumes kept in the workers' memory: normalized, written to ``0``."""
    vols = side["volumes"]
    _normalize_write(out, side["t0"], vols, stats, p)
    return len(vols)


def normalize_stored(scratch: str, out: str, t0: int, n: int, stats: tuple | str, after: Any, p: _Params) -> int:
    """Pass 2 of the output: the block's registered volumes read back, normalized, written to ``0``."""
    import zarr

    vols = zarr.open_array(scratch, mode="r")[t0 : t0 + n]
    _normalize_write(out, t0, vols, stats, p)
    return n


def _normalize_write(array_path: str, t0: int, vols: np.ndarray, stats: tuple | str, p: _Params) -> None:
    """``normalize_block`` of ``vols`` written as timepoints ``t0 ..`` of ``array_path`` (as ``_write``
    writes, the same values), in one Rust call: on the CPU the z-scores are computed in the chunks'
    layout and written as they are done, with no normalized copy of the block."""
    _check_running(array_path)
    mean, std = _stats(stats)
    _gpuprep.normalize_zarr_block(
        array_path, t0, _aligned(vols, np.float32), _aligned(mean, np.float64), _aligned(std, np.float64),
        p.constant_voxels, p.backend,
    )


_MARKER = "running"


def _check_running(array_path: str) -> None:
    """Raises unless the run that made the temporary store holding ``array_path`` is still going (its
    directory's marker present): a task still running after a failure must not recreate the directory."""
    tmpdir = os.path.dirname(os.path.dirname(array_path.rstrip("/")))
    if not os.path.exists(os.path.join(tmpdir, _MARKER)):
        raise RuntimeError(f"{tmpdir}: the run was abandoned; not writing {os.path.basename(array_path)}")


def _write(array_path: str, t0: int | None, values: np.ndarray) -> None:
    """Writes whole chunks of an array of the temporary store, unless the run was abandoned (its
    directory's marker gone): a task still running after a failure must not recreate the directory."""
    import zarr

    _check_running(array_path)
    if t0 is None:
        zarr.open_array(array_path, mode="r+")[...] = values
    else:
        # Volumes through gpuprep's Zarr writer: chunks encoded on several threads, no sync per chunk.
        _gpuprep.write_zarr_block(array_path, t0, _aligned(values, np.float32))


# --------------------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------------------


def _active_client(client: Any = None) -> Any:
    """The distributed Client dask computes with now (the default one), or None for local schedulers."""
    if client is not None:
        return client
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        c = default_client()
    except ValueError:
        return None
    import dask

    # A client exists but the user chose a local scheduler explicitly (dask.config.set(scheduler=...)).
    sched = dask.config.get("scheduler", None)
    return None if sched in ("threads", "threading", "sync", "synchronous", "processes") else c


def tree_reduce(parts: list, merge: Any) -> tuple[Any, int]:
    """Pairwise merges of ``parts`` (delayed) in a balanced tree; returns the root and the depth."""
    from dask import delayed

    depth = 0
    while len(parts) > 1:
        nxt = []
        for i in range(0, len(parts) - 1, 2):
            nxt.append(delayed(merge, pure=True)(parts[i], parts[i + 1]))
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts, depth = nxt, depth + 1
    return parts[0], depth


@dataclass
class _Graph:
    blocks: list  # (t0, n)
    sides: list  # delayed side dict per block
    moments: list  # delayed Moments per block (empty without the z-score)
    root: Any  # delayed merged Moments (the balanced tree) or None
    stats: Any  # delayed (mean, std) or None
    depth: int


def _raise_if_failed(f: Any) -> None:
    if f.status != "finished":
        f.result()  # raises the task's exception (or CancelledError)
        raise RuntimeError(f"{f.key}: {f.status}")


def _paired_moments(client: Any, moments: list, on_merge: Any = None) -> tuple[list, dict]:
    """The blocks' Moments (futures) merged as they complete, two partials held by the same worker merged
    there (the merge pinned to it, ``allow_other_workers`` if it is lost): only the last partial of each
    worker is left, for ``_save_stats_scattered``. A static tree pairs blocks by position and moved a
    16-bytes-a-voxel partial between workers at most of its merges, serially at its tail. ``moments`` is
    emptied (its futures released as they are merged). Returns the partials left, as (future, worker
    address or None), and counts: ``merges``, ``merged_in_place`` (both partials on one worker) and
    ``depth`` (the longest chain of merges, the final cross-worker one included)."""
    from dask.base import tokenize
    from distributed import as_completed

    n = len(moments)
    depth = {f.key: 0 for f in moments}
    seq = as_completed(moments)
    moments.clear()
    held: dict = {}  # worker address -> a finished partial of its, waiting for a partner
    counts = {"merges": 0, "merged_in_place": 0, "depth": 0}

    def merge(a: Any, b: Any, where: Any) -> Any:
        key = f"merge_moments-{tokenize(a.key, b.key)}"
        kw = {"workers": [where], "allow_other_workers": True} if where is not None else {}
        m = client.submit(merge_moments, a, b, key=key, priority=10, **kw)
        depth[key] = 1 + max(depth.pop(a.key), depth.pop(b.key))
        counts["depth"] = max(counts["depth"], depth[key])
        counts["merges"] += 1
        if on_merge is not None:
            on_merge(key)
        return m

    try:
        for f in seq:
            _raise_if_failed(f)
            where = client.who_has([f]).get(f.key) or ()
            w = where[0] if len(where) == 1 else None
            other = held.pop(w, None)
            if other is None:
                held[w] = f
                continue
            counts["merged_in_place"] += w is not None
            seq.add(merge(other, f, w))
    except BaseException:
        # Nothing of this run keeps computing for a traceback that holds these futures.
        client.cancel(list(getattr(seq, "futures", ())) + list(held.values()))
        raise
    parts = list(held.items())
    held.clear()
    counts["depth"] += (len(parts) > 1)
    assert counts["merges"] + len(parts) == n, (counts, n, len(parts))
    return [(f, w) for w, f in parts], counts


def moments_slab(m: Any, z0: int, z1: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Planes ``z0:z1`` of a partial as (count, mean, M2) arrays (run where the partial is: only the slab
    travels, as plain arrays, which dask sends without pickling copies)."""
    return _moments(m).slab_parts(z0, z1)



def save_stats_slab(path: str, z0: int, z1: int, ddof: int, *slabs: Any) -> tuple[int, int]:
    """One task of the reduce-scatter: the workers' partials of planes ``z0:z1`` merged (Chan et al.),
    finalized, and written into their place in the stats file ``_create_stats_file`` laid out."""
    # Merged (in the workers' order) and finalized in one pass, the received arrays read where they are.
    mean, std = _gpuprep.merged_stats([(int(c), m, m2) for c, m, m2 in slabs], ddof)
    with open(path, "r+b") as f:
        shape, _, _, offset = _read_npy_header(f)
        nvox = int(np.prod(shape[1:]))
        plane = int(np.prod(mean.shape[1:]))
        for i, a in enumerate((mean, std)):
            f.seek(offset + (i * nvox + z0 * plane) * 8)
            f.write(memoryview(np.ascontiguousarray(a, dtype="<f8")).cast("B"))
    return z0, z1


def stats_ready(path: str, *slabs: Any) -> str:
    """The stats file's path once every slab is in it (pass 2's one dependency)."""
    return path


def _create_stats_file(path: str, shape: tuple) -> None:
    """``save_stats``'s (2, z, y, x) float64 ``.npy`` with its header and its full length, the values
    left for ``save_stats_slab`` to fill."""
    with open(path, "wb") as f:
        _write_stats_header(f, shape)
        f.truncate(f.tell() + 2 * int(np.prod(shape)) * 8)


def _save_stats_scattered(client: Any, parts: list, ddof: int, path: str, shape: tuple, on_task: Any) -> Any:
    """The stats file from the workers' partials (``_paired_moments``), a future of its path. With one
    partial, finalized and saved where it is; with several, a reduce-scatter: the volume cut into as many
    slabs along z as there are partials, each slab's pieces merged, finalized and written at the worker
    whose partial it starts from, so every partial's slabs but one travel, in parallel, and no worker
    merges more than its share."""
    from dask.base import tokenize

    token = tokenize(path, [f.key for f, _ in parts])

    def submit(fn: Any, *args: Any, where: Any = None, name: str) -> Any:
        kw = {"workers": [where], "allow_other_workers": True} if where is not None else {}
        f = client.submit(fn, *args, key=f"{name}-{token}", priority=10, **kw)
        on_task(f.key)
        return f

    if len(parts) == 1 or shape[0] < 2:
        level = 0
        while len(parts) > 1:  # too few planes to cut: merged as a tree
            level += 1
            nxt = [(submit(merge_moments, a, b, name=f"merge_moments-{level}-{i}"), None)
                   for i, ((a, _), (b, _)) in enumerate(zip(parts[::2], parts[1::2]))]
            parts = nxt + (parts[-1:] if len(parts) % 2 else [])
        return submit(save_moments_stats, parts[0][0], ddof, path, where=parts[0][1], name="save_moments_stats")
    _create_stats_file(path, shape)
    k = min(len(parts), shape[0])
    bounds = [shape[0] * i // k for i in range(k + 1)]
    done = []
    for i in range(k):
        z0, z1 = bounds[i], bounds[i + 1]
        pieces = [submit(moments_slab, f, z0, z1, where=w, name=f"moments_slab-{i}-{j}")
                  for j, (f, w) in enumerate(parts)]
        done.append(submit(save_stats_slab, path, z0, z1, ddof, *pieces, where=parts[i][1], name=f"save_stats_slab-{i}"))
    return submit(stats_ready, path, *done, name="stats_ready")


def _reference(arr: Any, p: _Params, client: Any, src: _SourceVolumes | None = None
               ) -> tuple[SharedReference | Any | None, np.ndarray | None]:
    """The reference for the workers (a chain over its timepoints: one volume in memory at a time): a
    delayed ``SharedReference``, computed by the run's own graph; with ``reference_iterations``, computed
    and refined now and, on a cluster, broadcast to every worker once, with the refined volume itself."""
    if not p.register:
        return None, None
    from dask import delayed

    start, end = p.reference
    acc = None
    for t in range(start, end):
        volume = _BlockRead(src, t, 1) if src is not None else arr[t : t + 1]
        acc = delayed(reference_add, pure=True)(acc, volume, t, p)
    vol = delayed(reference_finish, pure=True)(acc, end - start)
    if p.reference_iterations == 0:
        # A task of the run's graph, not computed first: the blocks' reads start while it runs. Each
        # worker receives its result once (dask keeps a fetched dependency) and transforms it once.
        return delayed(_shared, pure=True)(vol, p), None
    vol = _compute_now(vol, client)
    for _ in range(p.reference_iterations):
        vol = _refined(arr, vol, p, client)
    ref = _shared(vol, p)
    if client is not None:
        return client.scatter(ref, broadcast=True), vol
    return ref, vol


def _shared(vol: np.ndarray, p: _Params) -> SharedReference:
    return SharedReference(vol, p.upsample_factor, p.normalization, p.backend, p.max_shift, p.smooth_sigma)


def _compute_now(what: Any, client: Any) -> Any:
    import dask

    if client is not None:
        return client.gather(client.compute(what))
    (out,) = dask.compute(what)
    return out


def refine_score(volume: np.ndarray, t: int, ref: SharedReference, p: _Params) -> tuple[int, float]:
    """One frame of the reference range registered onto the current reference and shifted: its
    correlation with the reference (`--reference-top`'s ranking)."""
    _, _, corr = _registered_frame(volume, t, ref, p, qc=True)
    return t, corr


def refine_add(acc: np.ndarray | None, volume: np.ndarray, t: int, ref: SharedReference, p: _Params) -> np.ndarray:
    """The float64 sum of the refined reference plus one frame registered onto the current reference and
    shifted, added in the CLI's order (crates/pipeline/src/driver.rs, refined_reference)."""
    shifted, _, _ = _registered_frame(volume, t, ref, p, qc=False)
    if acc is None:
        return shifted.astype(np.float64)
    acc = acc.copy()  # a task's input belongs to the scheduler: never mutate it
    acc += shifted
    return acc


def _registered_frame(volume: np.ndarray, t: int, ref: SharedReference, p: _Params, qc: bool):
    """A reference-range frame as the CLI's refinement treats it: filtered unless registering raw,
    registered onto ``ref`` and shifted (the frame that was registered)."""
    v, _ = _sanitize(np.asarray(volume)[np.newaxis], t, p.nonfinite)
    m = None if p.median is None or p.register_raw else (tuple(int(x) for x in p.median[0]), p.median[1],
                                                           float(p.median[2]))
    vols, shifts, _, _, extras = _gpuprep.process_block(
        v, ref.get()._ref, m, int(p.order), p.shift_mode, float(p.shift_cval), False, p.backend, qc, False
    )
    corr = float(extras["correlation_after"][0]) if qc else float("nan")
    return vols[0], shifts[0], corr


def _refined(arr: Any, current: np.ndarray, p: _Params, client: Any) -> np.ndarray:
    """`--reference-iterations` once: the mean of the reference range's frames registered onto ``current``
    and shifted; with `--reference-top N` of the N whose shifted frame correlates best with ``current``
    (the earlier frame first among equals, NaN last), summed in that order as the CLI does. The sum is a
    chain of tasks (one volume in flight); the ranking's registrations run in parallel."""
    from dask import delayed

    start, end = p.reference
    ref = _shared(current, p)
    if client is not None:
        ref = client.scatter(ref, broadcast=True)
    order = list(range(start, end))
    if p.reference_top is not None:
        scores = _compute_now([delayed(refine_score, pure=True)(arr[t], t, ref, p) for t in order], client)
        ranked = sorted(scores, key=lambda s: (np.isnan(s[1]), -s[1] if not np.isnan(s[1]) else 0.0, s[0]))
        order = [t for t, _ in ranked[: p.reference_top]]
    acc = None
    for t in order:
        acc = delayed(refine_add, pure=True)(acc, arr[t], t, ref, p)
    total = _compute_now(acc, client)
    return (total / len(order)).astype(np.float32)


def _build(arr: Any, ref: Any, p: _Params, scratch: str | None,
           saved: dict[str, str] | None = None, src: _SourceVolumes | None = None) -> _Graph:
    """Pass 1's tasks and the moments' reduction; with ``src``, each block read by its own task."""
    from dask import delayed

    starts = np.concatenate([[0], np.cumsum(arr.chunks[0])[:-1]]).astype(int)
    blocks = [(int(t0), int(n)) for t0, n in zip(starts, arr.chunks[0])]
    if src is not None:
        # Each `_BlockRead` a task of its own (done at once): the registrations then depend on a group
        # of tasks as large as theirs, so the scheduler hands them all out at once rather than queuing
        # them as root tasks behind the merges that become ready first.
        blocks_d = [delayed(block_source, pure=True)(_BlockRead(src, t0, n)) for t0, n in blocks]
    else:
        blocks_d = arr.to_delayed().ravel()
    sides, moments = [], []
    for (t0, n), b in zip(blocks, blocks_d):
        r = delayed(register_block, pure=True, nout=2)(b, t0, ref, p, scratch, saved)
        sides.append(r[0])
        moments.append(r[1])
    root, stats, depth = None, None, 0
    if p.zscore:
        root, depth = tree_reduce(list(moments), merge_moments)
        stats = delayed(finalize_moments, pure=True)(root, p.ddof)
    else:
        moments = []
    return _Graph(blocks, sides, moments, root, stats, depth)


def _lazy(arr: Any, ref: Any, p: _Params, src: _SourceVolumes | None = None) -> tuple[Any, Any]:
    import dask.array as da
    from dask import delayed

    g = _build(arr, ref, p, None, src=src)
    z, sh = [], []
    for (t0, n), side in zip(g.blocks, g.sides):
        vols = delayed(block_volumes, pure=True)(side)
        if g.stats is not None:
            vols = delayed(normalize_block, pure=True)(vols, g.stats, p)
        z.append(da.from_delayed(vols, (n,) + arr.shape[1:], dtype=np.float32))
        sh.append(da.from_delayed(delayed(block_shifts, pure=True)(side), (n, 3), dtype=np.float64))
    return da.concatenate(z, axis=0), da.concatenate(sh, axis=0)


# --------------------------------------------------------------------------------------------------------
# The output store
# --------------------------------------------------------------------------------------------------------


def _create_array(path: str, shape: tuple, chunks: tuple, dtype: Any, compression: str, dims: bool,
                  shards: tuple | None = None) -> None:
    """A Zarr v3 array with the Rust writer's codecs for ``compression`` (crates/io/src/sink/zarr.rs,
    ``codecs``) and, given ``shards``, sharded with ``chunks`` inside."""
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    if compression == "none":
        compressors = None
    elif compression == "zstd":
        compressors = ZstdCodec(level=3, checksum=False)
    elif compression == "blosc-lz4":
        compressors = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)
    else:  # validate_run admits only the names above: a new one must be added here, never written plain
        raise ValueError(f"compression: {compression!r} is not supported by gpuprep.dask")
    zarr.create_array(
        store=path,
        shape=shape,
        chunks=chunks,
        shards=shards,
        dtype=dtype,
        fill_value=0.0,
        compressors=compressors,
        dimension_names=list("tzyx") if dims else None,
    )


def _image_name(output: str) -> str:
    name = os.path.basename(output.rstrip("/"))
    for ext in (".ome.zarr", ".zarr"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _rust_float(v: float) -> str:
    """``v`` as Rust's ``Display`` writes an f64 (the CLI's attribute text): ``2`` for 2.0, ``1.15``."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _attributes(inp: Input, p: _Params, backend: str, name: str, voxel: Any) -> dict:
    """The CLI's root attributes, in its order (crates/pipeline/src/driver.rs, write_attributes)."""
    a: dict[str, Any] = {
        "gpuprep_version": gpuprep.__version__,
        "backend": backend,
        "input_files": inp.files,
        "input_dataset": inp.dataset,
        "input_dtype": inp.dtype,
        "axes": "t,z,y,x",
    }
    if p.median is not None:
        a["median_size"] = ",".join(map(str, p.median[0]))
        a["median_mode"] = p.median[1]
        a["median_cval"] = float(p.median[2])
    else:
        a["median_size"] = "off"
    if p.register:
        a["upsample_factor"] = p.upsample_factor
        a["normalization"] = p.normalization
        a["max_shift"] = "off" if p.max_shift is None else ",".join(_rust_float(b) for b in p.max_shift)
        a["smooth_sigma"] = ",".join(_rust_float(x) for x in p.smooth_sigma)
        a["reference_iterations"] = p.reference_iterations
        a["reference_top"] = p.reference_top or 0
        # Not offered by this front end yet (refused above when asked for).
        a["disambiguate"] = 0
        a["register_on"] = "raw" if p.register_raw else "filtered"
        a["projection_planes"] = ["mean_before", "mean_after", "max_before", "max_after"]
        a["reference"] = p.reference_text
        a["shift_convention"] = "scipy.ndimage.shift(volume[t], shifts[t]) registers volume t onto the reference"
        a["shift_order"] = p.order
        a["shift_mode"] = p.shift_mode
        a["shift_cval"] = p.shift_cval
    else:
        a["registration"] = "off"
    if p.zscore:
        a["zscore_ddof"] = p.ddof
        a["zscore_constant_voxels"] = p.constant_voxels
    else:
        a["zscore"] = "off"
    a["nonfinite"] = p.nonfinite
    a["compression"] = p.compression
    a["sharding"] = "one shard per time slab" if p.shard else "none"
    axes = []
    for i, ax in enumerate("tzyx"):
        entry = {"name": ax, "type": "time" if i == 0 else "space"}
        if voxel and voxel[i][1]:
            entry["unit"] = voxel[i][1]
        axes.append(entry)
    a["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [float(v[0]) for v in voxel] if voxel else [1.0] * 4}
                        ],
                    }
                ],
            }
        ],
    }
    return a


def _rename_noreplace(src: str, dst: str) -> None:
    """rename(src, dst) failing if dst exists (Linux renameat2 RENAME_NOREPLACE; elsewhere checked first):
    a plain rename would silently replace an empty directory that appeared meanwhile."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # file systems without the flag: fall through
            raise OSError(err, os.strerror(err), dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", dst)
    os.rename(src, dst)


def _check_output(output: str, force: bool) -> str:
    if not output.rstrip("/").lower().endswith(".zarr"):
        raise ValueError(f"output: {output} is not a .zarr/.ome.zarr path; gpuprep.dask writes OME-Zarr")
    out = os.path.abspath(output.rstrip("/"))
    if os.path.lexists(out):
        if not force:
            raise FileExistsError(f"{output}: exists; pass force=True (--force) to replace it")
        if os.path.islink(out) or not (
            os.path.isfile(out) or os.path.exists(os.path.join(out, "zarr.json")) or os.path.exists(os.path.join(out, ".zgroup"))
        ):
            raise FileExistsError(f"{output}: exists and is not a Zarr store or regular file; not replacing it")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise OSError(f"{output}: the directory {parent} does not exist")
    return out


def _compute(client: Any, what: Any, progress: bool) -> Any:
    """``what`` computed (a list of delayed; with a client, the list is emptied once submitted, so that
    futures inside its graphs are held by the scheduler only as long as their dependents need them)."""
    import dask

    if client is not None:
        futures = client.compute(what)
        if isinstance(what, list):
            what.clear()
        try:
            if progress:
                from distributed import progress as show

                show(futures, notebook=False)
            return client.gather(futures)
        except BaseException:
            client.cancel(futures)
            raise
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return dask.compute(what)[0]
    return dask.compute(what)[0]


def _reduce_showing(client: Any, moments: list, shown: list, progress: bool, on_merge: Any) -> tuple[list, dict]:
    """``_paired_moments``, with dask's progress bar of ``shown`` (pass 1's blocks) meanwhile: the bar
    blocks its thread, so the merges are submitted from another."""
    if not progress:
        return _paired_moments(client, moments, on_merge)
    from distributed import progress as show

    out: dict = {}

    def run() -> None:
        try:
            out["result"] = _paired_moments(client, moments, on_merge)
        except BaseException as e:  # re-raised on the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, name="gpuprep-moments", daemon=True)
    t.start()
    try:
        show(list(shown), notebook=False)
    finally:
        t.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def _wait_idle(client: Any, keys: set, timeout: float = 60.0) -> None:
    """After a failure, waits (bounded) for tasks of this run still executing on workers, so that the
    temporary directory is removed after their last write attempt."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            busy = {k for ks in client.processing().values() for k in ks}
        except Exception:
            return
        if not busy & keys:
            return
        time.sleep(0.1)


def _memory_budget(budget: int | None, client: Any) -> int:
    """Bytes of pass 1's results the run may keep in memory: ``budget``, else a quarter of the workers'
    memory limits (a distributed client) or of this machine's available memory (local schedulers), as
    the CLI's default ``--memory-budget``."""
    if budget is not None:
        return budget
    if client is not None:
        limits = [w.get("memory_limit") or 0 for w in client.scheduler_info()["workers"].values()]
        if limits and all(limits):
            return sum(limits) // 4
    return _available_memory() // 4


def _available_memory() -> int:
    """Bytes of memory available to a new allocation: the kernel's MemAvailable (free memory plus what
    the page cache would give back, as the CLI counts it), else the free pages, else 0."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _write_output(inp: Input, arr: Any, ref: Any, p: _Params, output: str, force: bool, client: Any,
                  progress: bool, memory_budget: int | None = None, reference: np.ndarray | None = None,
                  src: _SourceVolumes | None = None) -> dict:
    """Writes the OME-Zarr output (see ``preprocess``) and returns the report; ``reference``: the refined
    reference volume, saved as the array ``reference`` (the CLI's /reference with --reference-iterations)."""
    import time

    import zarr
    from dask import delayed

    started = time.perf_counter()
    out = _check_output(output, force)
    t, shape = arr.shape[0], tuple(arr.shape[1:])
    # Each chunk has exactly one writer: chunks of a block's length in t where blocks are regular (all
    # equal but the last; the CLI's chunks by default), else of one timepoint.
    bt = arr.chunks[0]
    ct = bt[0] if all(n == bt[0] for n in bt[:-1]) and bt[-1] <= bt[0] else 1
    chunks = (ct,) + _spatial_chunk(shape, max(_CHUNK_BYTES // 4 // ct, 1))
    # Beside the output (same file system, so the final rename is atomic), private (mode 0700).
    tmpdir = tempfile.mkdtemp(prefix=".gpuprep-", dir=os.path.dirname(out))
    store = os.path.join(tmpdir, "out.zarr")
    # Pass 1's volumes wait for the z-score in the workers' memory when they fit the budget (written
    # once, as the CLI's), else in a scratch array beside the output (memory bounded by a few blocks).
    in_memory = p.zscore and t * int(np.prod(shape)) * 4 <= _memory_budget(memory_budget, client)
    scratch = os.path.join(tmpdir, "scratch", "registered") if p.zscore and not in_memory else None
    keys: set = set()
    try:
        open(os.path.join(tmpdir, _MARKER), "w").close()
        # With shard=True each block's slab (its chunks along t times the whole volume) is one shard: one
        # writer each, as in the CLI's output.
        shards = (ct,) + shape if p.shard else None
        _create_array(os.path.join(store, "0"), (t,) + shape, chunks, np.float32, p.compression, True, shards)
        if scratch:
            _create_array(scratch, (t,) + shape, chunks, np.float32, "none", True)
        if p.zscore:
            for name in ("mean", "std"):
                _create_array(os.path.join(store, name), shape, shape, np.float32, p.compression, False)
        # The saved stages: arrays like "0" (chunks, codecs, shards), each chunk written by its block's task.
        saved = {}
        for name, wanted in (("filtered", p.save_filtered and p.median is not None), ("registered", p.save_registered)):
            if wanted:
                saved[name] = os.path.join(store, name)
                _create_array(saved[name], (t,) + shape, chunks, np.float32, p.compression, True, shards)
        first = None if in_memory else (scratch or os.path.join(store, "0"))
        g = _build(arr, ref, p, first, saved, src)
        stats_path = os.path.join(tmpdir, "stats.npy")
        sides: list = g.sides
        stats = None
        reduction = {"depth": g.depth}
        if p.zscore and client is not None:
            # Pass 1 submitted now, its moments merged as they complete, by worker (_paired_moments); the
            # stats go straight from the root to the file.
            keys = {k for d in g.sides + g.moments for k in d.__dask_graph__().keys()}
            pass1 = client.compute(g.sides + g.moments)
            sides, moments = pass1[: len(g.blocks)], pass1[len(g.blocks) :]
            del pass1
            try:
                parts, reduction = _reduce_showing(client, moments, sides, progress, keys.add)
                stats = _save_stats_scattered(client, parts, p.ddof, stats_path, shape, keys.add)
            except BaseException:
                client.cancel(sides)
                raise
            del parts
        elif p.zscore:
            stats = delayed(save_moments_stats, pure=True)(g.root, p.ddof, stats_path)
        small = [delayed(_side_only, pure=True)(s) for s in sides]
        final = list(small)
        if p.zscore:
            # From the file, after it: pass 2 waits for the file, not for these writes.
            final += [delayed(write_stats, pure=True)(stats, store, name) for name in ("mean", "std")]
        if in_memory:
            for s in sides:
                final.append(delayed(normalize_kept, pure=True)(s, os.path.join(store, "0"), stats, p))
        elif p.zscore:
            for (t0, n), s in zip(g.blocks, small):
                final.append(
                    delayed(normalize_stored, pure=True)(scratch, os.path.join(store, "0"), t0, n, stats, s, p)
                )
        keys |= {k for d in final for k in d.__dask_graph__().keys()}
        # Only `final` holds the blocks' futures from here (released by `_compute` once submitted), so
        # each block's volumes are freed after its pass-2 task as in a single graph.
        del small, sides, stats
        results = _compute(client, final, progress)
        sides = results[: len(g.blocks)]
        shifts = np.concatenate([s["shifts"] for s in sides])
        error = np.concatenate([s["error"] for s in sides])
        phasediff = np.concatenate([s["phasediff"] for s in sides])
        backends = sorted({s["backend"] for s in sides})
        n_workers = len(client.scheduler_info()["workers"]) if client is not None else 1
        backend = f"{', '.join(backends)} (gpuprep.dask, {_scheduler_text(client)})"
        if p.register:
            qc = _merge_qc(sides, shape, shifts, error, inp.voxel_size, p.max_shift)
            side_arrays = {"shifts": shifts, "error": error, "phasediff": phasediff, **qc}
            if reference is not None:
                side_arrays["reference"] = np.asarray(reference, dtype=np.float32)
            for name, values in side_arrays.items():
                dtype = np.float32 if name.startswith("projection_") or name == "reference" else np.float64
                _create_array(os.path.join(store, name), values.shape, values.shape, dtype, p.compression, False)
                zarr.open_array(os.path.join(store, name), mode="r+")[...] = values
        if scratch:
            shutil.rmtree(os.path.dirname(scratch))
        # The root group's metadata last: before it, the store is no OME-Zarr image.
        zarr.create_group(store=store, attributes=_attributes(inp, p, backend, _image_name(out), inp.voxel_size))
        aside = None
        if force and os.path.lexists(out):
            aside = os.path.join(tmpdir, "replaced")
            os.rename(out, aside)
        try:
            _rename_noreplace(store, out)
        except OSError as e:
            if aside:
                _rename_noreplace(aside, out)
            raise FileExistsError(f"{output}: appeared while the run was writing; the result was discarded") from e
    except BaseException:
        try:
            os.unlink(os.path.join(tmpdir, _MARKER))
        except OSError:
            pass
        if client is not None and keys:
            _wait_idle(client, keys)
        _forget_stats_everywhere(client)
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    _forget_stats_everywhere(client)
    shutil.rmtree(tmpdir, ignore_errors=True)
    _warn_empty(error, p)
    return {
        "output": output,
        "backend": backend,
        "timepoints": t,
        "shape": shape,
        "block_sizes": sorted(set(arr.chunks[0])),
        "tasks_per_pass": len(g.blocks),
        "reduction_depth": reduction["depth"],
        "merged_in_place": reduction.get("merged_in_place"),
        "workers": n_workers,
        "shifts": shifts if p.register else None,
        "error": error if p.register else None,
        "phasediff": phasediff if p.register else None,
        "nonfinite_replaced": int(sum(s["nonfinite"] for s in sides)),
        "scratch": "memory" if in_memory else ("file" if scratch else None),
        "seconds": time.perf_counter() - started,
    }


def _side_only(side: dict) -> dict:
    return {k: v for k, v in side.items() if k != "volumes"}


def _scheduler_text(client: Any) -> str:
    if client is None:
        import dask

        return f"{dask.config.get('scheduler', None) or 'threads'} scheduler"
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return f"{len(workers)} workers, {threads} threads"


def _warn_empty(error: np.ndarray, p: _Params) -> None:
    if p.register and error is not None:
        empty = np.flatnonzero(np.isnan(error))
        if empty.size:
            warnings.warn(
                f"timepoints {empty.tolist()} (or the reference) are empty (all zero): nothing to register, shift 0 "
                "and error NaN",
                UserWarning,
                stacklevel=3,
            )


def preprocess(
    data: Any,
    output: str | os.PathLike | None = None,
    *,
    dataset: str = "default",
    axes: str | None = None,
    format: str | None = None,
    channel: int = 0,
    force: bool = False,
    block_size: int | None = None,
    no_median: bool = False,
    median_size: Any = 3,
    median_mode: str = "reflect",
    median_cval: float = 0.0,
    no_register: bool = False,
    upsample_factor: int = 1,
    normalization: str | None = "phase",
    reference: int = 0,
    reference_mean: Any = None,
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
    memory_budget: int | str | None = None,
    save: Any = (),
    max_shift: Any = None,
    smooth_sigma: Any = 0,
    reference_iterations: int = 0,
    reference_top: int | None = None,
    disambiguate: bool = False,
    shifts: Any = None,
    apply_to_channels: Any = None,
    backend: str = "auto",
    client: Any = None,
    progress: bool = False,
) -> Any:
    """``gpuprep run`` as a dask graph on the active scheduler, with ``gpuprep.preprocess``'s keywords
    (each the CLI flag of the same name) and the same numbers.

    ``data``: a (t, z, y, x) dask or numpy array, or a path gpuprep reads (a Zarr/OME-Zarr store, HDF5
    files: a directory, glob, file or list). ``block_size``: timepoints per task (default: a dask array's
    own time chunks, else the CLI's output chunking, at most 8). ``client``: a distributed Client (default: the active one, if any; else
    dask's local scheduler).

    Without ``output``: returns ``(z, shifts)``, lazy dask arrays ((t, z, y, x) float32 z-scores, or the
    registered volumes with ``no_zscore``; (t, 3) float64 shifts). The reference is computed when this is
    called; compute ``z`` and ``shifts`` together (``dask.compute(z, shifts)``), or pass 1 runs twice.
    Between the passes the registered volumes are held by the workers (dask spills them to disk when
    memory runs short): give an output for bounded memory.

    With an ``.ome.zarr`` output: writes gpuprep's OME-Zarr layout and returns a report (``shifts``,
    ``error``, ``phasediff``, ``backend``, ``block_sizes``, ``tasks_per_pass``, ``reduction_depth``,
    ``seconds``). Workers must see the output's directory (a shared file system on a cluster).
    ``progress``: show dask's progress bar. ``shard``: each block's time slab stored as one Zarr v3 shard
    of the same chunks (one writer a shard). ``memory_budget``: bytes of registered volumes the workers may
    hold between the passes (default a quarter of their memory limits, or of this machine's available
    memory); beyond it they wait in a scratch array beside the output and memory stays bounded by a few
    blocks per worker (0 forces that). The report's ``scratch`` says which ("memory" or "file").
    ``format``, ``channel``: as the CLI's ``--format`` and ``--channel`` for inputs given as paths (HDF5,
    TIFF and Zarr inputs are read by gpuprep's own reader, per block). ``save``: extra stages kept in the
    output, as the CLI's ``--save`` ("filtered", "registered", or both: a list or a comma-separated string),
    each written by the block's own task. ``max_shift``, ``smooth_sigma``, ``reference_iterations``,
    ``reference_top``: the CLI's registration options (the reference refined on the client's graph before the
    run, as the CLI does); ``disambiguate``, ``shifts`` and ``apply_to_channels`` are validated and then
    refused (``NotImplementedError``): use ``gpuprep run`` or ``gpuprep.preprocess`` for them.
    """
    if output is not None and not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output: expected a path or None, got {type(output).__name__}")
    inp = open_input(data, dataset, axes, format, _nonneg_int(channel, "channel"))
    t, shape = int(inp.array.shape[0]), tuple(int(n) for n in inp.array.shape[1:])
    if t == 0 or 0 in shape:
        raise ValueError(f"data: shape {(t,) + shape} is empty")
    p = _params(
        t,
        no_median=no_median,
        median_size=median_size,
        median_mode=median_mode,
        median_cval=median_cval,
        no_register=no_register,
        upsample_factor=upsample_factor,
        normalization=normalization,
        reference=reference,
        reference_mean=reference_mean,
        register_raw=register_raw,
        order=order,
        shift_mode=shift_mode,
        shift_cval=shift_cval,
        no_zscore=no_zscore,
        ddof=ddof,
        constant_voxels=constant_voxels,
        nonfinite=nonfinite,
        compression=compression,
        shard=shard,
        memory_budget=memory_budget,
        backend=backend,
        save=save,
        max_shift=max_shift,
        smooth_sigma=smooth_sigma,
        reference_iterations=reference_iterations,
        reference_top=reference_top,
        disambiguate=disambiguate,
        shifts=shifts,
        apply_to_channels=apply_to_channels,
    )
    if (p.save_filtered or p.save_registered) and output is None:
        raise ValueError("save: the saved stages are arrays of an output; none is given")
    if p.compression != "none" and output is None:
        raise ValueError("compression: applies to an output; none is given")
    if p.shard and output is None:
        raise ValueError("shard: applies to an output; none is given")
    if block_size is not None and _nonneg_int(block_size, "block_size") < 1:
        raise ValueError("block_size: got 0; expected at least 1 timepoint per task")
    out = os.fspath(output) if output is not None else None
    if out is not None:
        _check_output(out, force)  # before any computation: a bad output fails at once
    client = _active_client(client)
    arr = _blocked(inp, block_size)
    # Inputs gpuprep reads are read by the tasks that use them (`_BlockRead`).
    src = inp.array if isinstance(inp.array, _SourceVolumes) else None
    ref, ref_volume = _reference(arr, p, client, src)
    if out is None:
        return _lazy(arr, ref, p, src)
    return _write_output(inp, arr, ref, p, out, force, client, progress, p.memory_budget,
                         ref_volume if p.reference_iterations else None, src)
