"""gpuprep.dask and python -m gpuprep.distributed against the CLI: the threaded scheduler and a LocalCluster of
two worker processes give the CLI's shifts exactly and its /data within float32 tolerance, lazily and into an
OME-Zarr store with the CLI's layout; a worker killed mid-run changes nothing; Chan's merge over uneven blocks
equals one pass; a failed run leaves no output and no temporary directory.

Tolerance of the data: |dask - CLI| <= 1e-6 + 1e-6·|CLI| (a few float32 ulps of z-scores of magnitude < 10).
The two differ only in the float64 moments (Chan's pairwise merge over blocks against the CLI's one Welford
pass: float64 rounding), which can move a z-score by one float32 rounding step. NaN (constant voxels) at the
same voxels. Shifts, error and phasediff are computed per volume by the same code: equal exactly.
"""

import copy
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

import gpuprep
import gpuprep.dask as gd

SHAPE = (12, 8, 24, 24)
QC_ARRAYS = {"framewise_displacement", "framewise_displacement_um", "correlation_before", "correlation_after",
             "suspicious", "projection_z", "projection_y", "projection_x"}


def assert_data_close(got, want):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, cli):
    """Synthetic realistic data (one HDF5 file per timepoint) and the CLI's OME-Zarr result of it."""
    root = tmp_path_factory.mktemp("dask")
    data = root / "data"
    subprocess.run([cli, "synth", data, "--shape", ",".join(map(str, SHAPE)), "--mode", "realistic"],
                   check=True, capture_output=True)
    out = root / "cli.ome.zarr"
    subprocess.run([cli, "run", data, "-o", out, "--backend", "cpu", "-q"], check=True, capture_output=True)
    g = zarr.open_group(out, mode="r")
    want = {name: g[name][:] for name in g.array_keys()}
    assert want["shifts"].any(), "the synthetic data must need registering"
    return {"dir": data, "cli": out, "want": want, "attrs": dict(g.attrs), "root": root}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


def check_store(path, dataset, backend_words=()):
    """The store equals the CLI's: arrays, chunks, dimension names, attributes (but the backend and the
    image's name, which is the output's)."""
    g = zarr.open_group(path, mode="r")
    want = dataset["want"]
    assert sorted(g.array_keys()) == sorted(want)
    assert_data_close(g["0"][:], want["0"])
    for name in ("shifts", "error", "phasediff", "suspicious"):
        np.testing.assert_array_equal(g[name][:], want[name], err_msg=name)
    # The per-frame QC: the same definitions on the same volumes; the projections' float64 sums are
    # added per block here, over the whole run in the CLI.
    for name in QC_ARRAYS - {"suspicious"}:
        if name in want:
            assert g[name].dtype == want[name].dtype, name
            np.testing.assert_allclose(g[name][:], want[name], rtol=1e-6, atol=1e-9, err_msg=name)
    for name in ("mean", "std"):
        np.testing.assert_allclose(g[name][:], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
    cli = zarr.open_group(dataset["cli"], mode="r")
    assert g["0"].metadata.dimension_names == cli["0"].metadata.dimension_names
    assert g["0"].dtype == cli["0"].dtype == np.float32
    attrs, want_attrs = dict(g.attrs), copy.deepcopy(dataset["attrs"])
    assert attrs.pop("ome")["multiscales"][0].pop("name") == pathlib.Path(path).name.removesuffix(".ome.zarr")
    want_attrs["ome"]["multiscales"][0].pop("name")
    backend = attrs.pop("backend")
    want_attrs.pop("backend")
    want_attrs.pop("ome")
    assert attrs == want_attrs
    for w in backend_words:
        assert w in backend
    return g


def no_leftovers(parent):
    return [p.name for p in pathlib.Path(parent).iterdir() if p.name.startswith(".gpuprep-")]


# ---------------------------------------------------------------------------------------------------------
# (a) the threaded scheduler
# ---------------------------------------------------------------------------------------------------------


def test_threaded_lazy_equals_cli(dataset):
    with dask.config.set(scheduler="threads"):
        z, shifts = gd.preprocess(dataset["dir"], backend="cpu", block_size=5)  # blocks 5, 5, 2
        assert isinstance(z, da.Array) and z.chunks[0] == (5, 5, 2) and z.chunks[1:] == tuple((n,) for n in SHAPE[1:])
        z, shifts = dask.compute(z, shifts)
    np.testing.assert_array_equal(shifts, dataset["want"]["shifts"])
    assert_data_close(z, dataset["want"]["0"])


@pytest.mark.parametrize("budget, scratch", [(None, "memory"), (0, "file"), (12 * 8 * 24 * 24 * 4 - 1, "file")])
def test_threaded_output_equals_cli(dataset, tmp_path, budget, scratch):
    """Pass 1's volumes kept in memory (within the budget: the default here) or in a scratch array."""
    out = tmp_path / "threads.ome.zarr"
    with dask.config.set(scheduler="threads"):
        report = gd.preprocess(str(dataset["dir"]), out, backend="cpu", block_size=4, memory_budget=budget)
    assert report["tasks_per_pass"] == 3 and report["reduction_depth"] == 2
    assert report["scratch"] == scratch
    np.testing.assert_array_equal(report["shifts"], dataset["want"]["shifts"])
    g = check_store(out, dataset, ["cpu", "threads"])
    assert g["0"].chunks[0] == 4  # one block per chunk along t: each chunk has one writer
    assert no_leftovers(tmp_path) == []


def test_the_cli_reports_a_dask_output(dataset, tmp_path, cli):
    """`gpuprep report` on the dask front end's output: every panel, as for the CLI's own output."""
    out = tmp_path / "for_report.ome.zarr"
    with dask.config.set(scheduler="threads"):
        gd.preprocess(str(dataset["dir"]), out, backend="cpu", block_size=5)
    page = tmp_path / "r.html"
    subprocess.run([cli, "report", out, "-o", page], check=True, capture_output=True)
    html = page.read_text()
    # Shifts, displacement, error, correlations; projections along z, y and x.
    assert html.count("data:image/png;base64,") == 7


def test_default_blocks_give_the_cli_chunks(dataset, tmp_path):
    out = tmp_path / "default.ome.zarr"
    with dask.config.set(scheduler="threads"):
        gd.preprocess(dataset["dir"], out, backend="cpu")
    assert zarr.open_array(out / "0", mode="r").chunks == zarr.open_array(dataset["cli"] / "0", mode="r").chunks


def test_zarr_input_and_options(dataset, tmp_path, cli):
    """An OME-Zarr input (gpuprep's own output holds (t, z, y, x) at "0"), with other parameters, against
    the CLI with the same flags on the same store."""
    src = tmp_path / "src.ome.zarr"
    subprocess.run([cli, "run", dataset["dir"], "-o", src, "--no-median", "--no-register", "--no-zscore", "-q",
                    "--backend", "cpu"], check=True, capture_output=True)
    flags = ["--reference-mean", "2:5", "--upsample-factor", "4", "--order", "1", "--ddof", "1",
             "--median-size", "3,1,3", "--constant-voxels", "zero"]
    want = tmp_path / "want.ome.zarr"
    subprocess.run([cli, "run", src, "-o", want, "--backend", "cpu", "-q", *flags], check=True, capture_output=True)
    with dask.config.set(scheduler="threads"):
        z, shifts = gd.preprocess(src, backend="cpu", reference_mean="2:5", upsample_factor=4, order=1, ddof=1,
                                  median_size="3,1,3", constant_voxels="zero", block_size=3)
        z, shifts = dask.compute(z, shifts)
    w = zarr.open_group(want, mode="r")
    np.testing.assert_array_equal(shifts, w["shifts"][:])
    assert_data_close(z, w["0"][:])


@pytest.mark.parametrize("zscore", [True, False])
def test_saved_stages_equal_the_clis(dataset, tmp_path, cli, zscore):
    """save= (the CLI's --save): the filtered and registered volumes as arrays of the store, each chunk written
    by its block's task, equal to the CLI's bit for bit (same kernels); with and without the z-score, in blocks
    of 5 timepoints (the CLI chunks by 8)."""
    extra = [] if zscore else ["--no-zscore"]
    want = tmp_path / "want.ome.zarr"
    subprocess.run([cli, "run", dataset["dir"], "-o", want, "--backend", "cpu", "-q", "--save", "filtered,registered",
                    *extra], check=True, capture_output=True)
    out = tmp_path / "saved.ome.zarr"
    with dask.config.set(scheduler="threads"):
        gd.preprocess(str(dataset["dir"]), out, backend="cpu", block_size=5, save="filtered,registered",
                      no_zscore=not zscore)
    got, w = zarr.open_group(out, mode="r"), zarr.open_group(want, mode="r")
    assert sorted(got.array_keys()) == sorted(w.array_keys())
    for name in ("filtered", "registered"):
        assert got[name].metadata.dimension_names == w[name].metadata.dimension_names
        np.testing.assert_array_equal(got[name][:], w[name][:], err_msg=name)
    assert_data_close(got["0"][:], w["0"][:])
    with pytest.raises(ValueError, match="save: the saved stages are arrays of an output"):
        gd.preprocess(str(dataset["dir"]), backend="cpu", save="registered")
    with pytest.raises(ValueError, match="save"):
        gd.preprocess(str(dataset["dir"]), out, backend="cpu", save="bogus", force=True)


# ---------------------------------------------------------------------------------------------------------
# (b) a LocalCluster of two worker processes
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_cli_output(dataset, cli, backend_gpu):
    """The CLI's OME-Zarr result of the dataset on the GPU backend (lavapipe in CI)."""
    out = dataset["root"] / "cli_gpu.ome.zarr"
    subprocess.run([cli, "run", dataset["dir"], "-o", out, "--backend", "gpu", "-q"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def backend_gpu():
    """The GPU backend, or the conftest's rule: a failure under GPUPREP_REQUIRE_GPU=1, else a loud skip."""
    import warnings

    try:
        return gpuprep.backend_name("gpu")
    except RuntimeError as e:
        if os.environ.get("GPUPREP_REQUIRE_GPU") == "1":
            pytest.fail(f"GPUPREP_REQUIRE_GPU=1 but no GPU adapter: {e}")
        warnings.warn(f"NO GPU ADAPTER: the GPU worker test is SKIPPED ({e})")
        pytest.skip(f"no GPU adapter: {e}")


def test_gpu_worker_processes_equal_the_cli_on_the_gpu(dataset, gpu_cli_output, backend_gpu, tmp_path):
    """Two worker processes, each opening the GPU (one adapter per process; lavapipe in CI), write what the
    CLI writes on that GPU: the same shifts and QC flags, the data and per-frame QC within float32 tolerance."""
    from distributed import Client, LocalCluster

    out = tmp_path / "gpu.ome.zarr"
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster):
            report = gd.preprocess(dataset["dir"], out, backend="gpu", block_size=3)
    assert report["workers"] == 2 and "2 workers" in report["backend"], report["backend"]
    assert backend_gpu.split(" (")[0] in report["backend"], (backend_gpu, report["backend"])
    got, want = zarr.open_group(out, mode="r"), zarr.open_group(gpu_cli_output, mode="r")
    assert sorted(got.array_keys()) == sorted(want.array_keys())
    for name in ("shifts", "error", "phasediff", "suspicious"):
        np.testing.assert_array_equal(got[name][:], want[name][:], err_msg=name)
    assert_data_close(got["0"][:], want["0"][:])
    for name in sorted(set(want.array_keys()) - {"0", "shifts", "error", "phasediff", "suspicious"}):
        np.testing.assert_allclose(got[name][:], want[name][:], rtol=1e-6, atol=1e-6, err_msg=name)


def test_cluster_lazy_equals_cli(dataset, client):
    z, shifts = gd.preprocess(dataset["dir"], backend="cpu", block_size=3)
    z, shifts = dask.compute(z, shifts)
    np.testing.assert_array_equal(shifts, dataset["want"]["shifts"])
    assert_data_close(z, dataset["want"]["0"])


@pytest.mark.parametrize("budget", [None, 0])
def test_cluster_output_equals_cli_and_reference_is_broadcast(dataset, client, tmp_path, budget):
    out = tmp_path / "cluster.ome.zarr"
    transforms = lambda: __import__("gpuprep.dask").dask.reference_transforms  # noqa: E731
    before, here = client.run(transforms), gd.reference_transforms
    # 6 tasks on 2 workers
    report = gd.preprocess(dataset["dir"], out, backend="cpu", block_size=2, memory_budget=budget)
    assert report["scratch"] == ("file" if budget == 0 else "memory")
    assert report["workers"] == 2 and report["tasks_per_pass"] == 6
    # The moments merged as they complete, by worker: of the 5 merges, all but the one that joins the
    # two workers' partials (none if one worker ran every block) had both partials on one worker.
    assert report["merged_in_place"] >= 4, report
    assert 3 <= report["reduction_depth"] <= 5
    check_store(out, dataset, ["cpu", "2 workers"])
    # The reference reached the workers, each of which transformed it at most once for all its
    # tasks; the client never did.
    after = client.run(transforms)
    assert {after[w] - before[w] for w in after} <= {0, 1} and sum(after.values()) > sum(before.values())
    assert gd.reference_transforms == here
    assert no_leftovers(tmp_path) == []


def test_uneven_dask_blocks_on_the_cluster(dataset, client, tmp_path):
    """A dask array with uneven time chunks (1, 4, 2, 5): one task per chunk, Chan's merge over them, chunks of
    one timepoint in the output (each written by one task)."""
    g = zarr.open_group(dataset["cli"], mode="r")
    # the raw input, as one (t, z, y, x) float64 array, chunked unevenly in t and split in space
    raw = np.stack([__import__("h5py").File(p, "r")["default"][:] for p in sorted(
        dataset["dir"].glob("ind_*.h5"))])
    arr = da.from_array(raw, chunks=((1, 4, 2, 5), 4, 12, 24))
    out = tmp_path / "uneven.ome.zarr"
    report = gd.preprocess(arr, out, backend="cpu")
    assert report["tasks_per_pass"] == 4 and report["block_sizes"] == [1, 2, 4, 5]
    assert zarr.open_array(out / "0", mode="r").chunks[0] == 1
    got = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(got["shifts"][:], g["shifts"][:])
    assert_data_close(got["0"][:], g["0"][:])


def test_distributed_command_line(dataset, tmp_path):
    out = tmp_path / "cmd.ome.zarr"
    cmd = [sys.executable, "-m", "gpuprep.distributed", str(dataset["dir"]), "-o", str(out), "--local", "2",
           "--backend", "cpu", "--block-size", "4"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Completed" in r.stdout and "2 workers" in r.stderr  # dask's progress bar (stdout) and the summary
    check_store(out, dataset, ["2 workers"])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].startswith("gpuprep: error:")
    assert "exists" in again.stderr


# ---------------------------------------------------------------------------------------------------------
# (c) a worker process killed mid-run
# ---------------------------------------------------------------------------------------------------------


def kill_once(block, marker, block_info=None):
    """Kills its worker process the first time it reads the third block (no cleanup, as a crash)."""
    if block_info[0]["chunk-location"][0] == 2 and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)
    return block


def cli_store(cli, src, out, flags):
    """The CLI's OME-Zarr output of ``src`` with ``flags``, as the ``dataset`` fixture holds it."""
    subprocess.run([cli, "run", src, "-o", out, "--backend", "cpu", "-q", *flags], check=True, capture_output=True)
    g = zarr.open_group(out, mode="r")
    return {"cli": out, "want": {name: g[name][:] for name in g.array_keys()}, "attrs": dict(g.attrs)}


@pytest.mark.parametrize("where", ["threads", "cluster"])
def test_registration_options_equal_the_clis(dataset, tmp_path, cli, client, where):
    """Issue 12's registration options through gpuprep.dask: a bounded, smoothed registration against a
    reference refined twice from the 4 best of its 6 frames (the refinement a graph on the cluster); the store
    equals the CLI's with the same flags: shifts, errors and flags exactly, every array and attribute."""
    flags = ["--max-shift", "1,2,2", "--smooth-sigma", "0,1,1", "--reference-mean", "0:6",
             "--reference-iterations", "2", "--reference-top", "4", "--upsample-factor", "4"]
    want = cli_store(cli, dataset["dir"], tmp_path / "want.ome.zarr", flags)
    out = tmp_path / f"{where}.ome.zarr"
    kwargs = dict(max_shift=(1, 2, 2), smooth_sigma="0,1,1", reference_mean="0:6", reference_iterations=2,
                  reference_top=4, upsample_factor=4, backend="cpu", block_size=4)
    if where == "threads":
        with dask.config.set(scheduler="threads"):
            gd.preprocess(str(dataset["dir"]), out, **kwargs)
    else:
        gd.preprocess(str(dataset["dir"]), out, **kwargs)
    g = check_store(out, want)
    np.testing.assert_array_equal(g["reference"][:], want["want"]["reference"])
    assert g.attrs["max_shift"] == "1,2,2" and g.attrs["smooth_sigma"] == "0,1,1"
    assert g.attrs["reference_iterations"] == 2 and g.attrs["reference_top"] == 4
    assert (np.abs(g["shifts"][:]) <= [1, 2, 2]).all()


def test_options_not_offered_are_refused_after_validation(dataset, tmp_path):
    with pytest.raises(NotImplementedError, match="disambiguate"):
        gd.preprocess(str(dataset["dir"]), backend="cpu", disambiguate=True)
    with pytest.raises(NotImplementedError, match="shifts"):
        gd.preprocess(str(dataset["dir"]), backend="cpu", shifts=str(dataset["cli"]))
    # The CLI's validation comes first, under the keywords.
    with pytest.raises(ValueError, match="reference_top"):
        gd.preprocess(str(dataset["dir"]), backend="cpu", reference_top=3)
    with pytest.raises(ValueError, match="max_shift"):
        gd.preprocess(str(dataset["dir"]), backend="cpu", max_shift=(0, -1, 2))


def test_worker_killed_mid_run(dataset, client, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    marker = str(tmp_path / "killed")
    before = set(client.scheduler_info()["workers"])
    inp = gd.open_input(dataset["dir"])
    arr = gd._blocked(inp, 3).map_blocks(kill_once, marker, dtype=np.float32)
    out = tmp_path / "killed.ome.zarr"
    report = gd.preprocess(arr, out, backend="cpu")
    assert os.path.exists(marker), "the worker was not killed"
    assert int(open(marker).read()) not in client.run(os.getpid).values()  # that process is gone
    assert set(client.scheduler_info()["workers"]) != before  # the nanny started a new worker
    assert report["tasks_per_pass"] == 4
    got = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(got["shifts"][:], dataset["want"]["shifts"])
    assert_data_close(got["0"][:], dataset["want"]["0"])
    assert no_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# (d) Chan's merge over uneven blocks
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(1, 4, 2, 7), (7,), (3, 1, 1, 1, 1, 5)])
def test_tree_of_chan_merges_equals_one_pass(sizes):
    rng = np.random.default_rng(len(sizes))
    # A large mean over a small spread: where a naive sum of squares would lose the variance.
    data = (1000 + rng.standard_normal((sum(sizes), 3, 5, 4))).astype(np.float32)
    one = gpuprep.Moments(data.shape[1:])
    one.update(data)
    bounds = np.cumsum((0,) + sizes)
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        m = gpuprep.Moments(data.shape[1:])
        m.update(data[a:b])
        # Moments travel as themselves; (count, mean, M2) tuples are taken as well.
        parts.append(dask.delayed(m if len(parts) % 2 == 0 else (m.count, m.mean, m.m2)))
    root, depth = gd.tree_reduce(parts, gd.merge_moments)
    assert depth == int(np.ceil(np.log2(len(sizes))))
    merged = dask.compute(root, scheduler="sync")[0]
    count, mean, m2 = merged.count, merged.mean, merged.m2
    assert count == data.shape[0]
    np.testing.assert_allclose(mean, one.mean, rtol=1e-14)
    np.testing.assert_allclose(m2, one.m2, rtol=1e-10)
    np.testing.assert_allclose(mean, data.astype(np.float64).mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(m2 / count, data.astype(np.float64).var(axis=0), rtol=1e-10)


@pytest.mark.parametrize("planes", [[(0, 7)], [(0, 3), (3, 7)], [(0, 2), (2, 4), (4, 7)], [(0, 1), (1, 7)]])
def test_reduce_scatter_of_the_stats_equals_the_whole_merge(tmp_path, planes):
    """The cluster path's last step: each slab of the workers' partials merged and written into its place
    in the stats file equals the stats of the whole merge, whatever the cut."""
    rng = np.random.default_rng(len(planes))
    data = (1000 + rng.standard_normal((11, 7, 5, 4))).astype(np.float32)
    parts = []
    for a, b in ((0, 4), (4, 5), (5, 11)):  # three workers' partials, uneven
        m = gpuprep.Moments(data.shape[1:])
        m.update(data[a:b])
        parts.append(m)
    whole = gd.save_moments_stats(gd.merge_moments(gd.merge_moments(parts[0], parts[1]), parts[2]), 1,
                                  str(tmp_path / "whole.npy"))
    path = str(tmp_path / "stats.npy")
    gd._create_stats_file(path, data.shape[1:])
    for z0, z1 in reversed(planes):  # any order: each task writes only its planes
        assert gd.save_stats_slab(path, z0, z1, 1, *[gd.moments_slab(p, z0, z1) for p in parts]) == (z0, z1)
    got, want = np.load(path), np.load(whole)
    assert got.shape == want.shape == (2,) + data.shape[1:]
    np.testing.assert_allclose(got, want, rtol=1e-13)
    np.testing.assert_allclose(got[1], data.astype(np.float64).std(axis=0, ddof=1), rtol=1e-10)
    mapped = gd._map_populated(path)
    np.testing.assert_array_equal(mapped, got)
    with pytest.raises(ValueError, match="slab 3..3"):
        parts[0].slab_parts(3, 3)
    with pytest.raises(ValueError, match="slab 0..8"):
        parts[0].slab_parts(0, 8)
    # The slabs as dask hands them over: (count, mean, M2) of those planes.
    count, mean, m2 = gd.moments_slab(parts[2], 2, 5)
    assert count == 6
    np.testing.assert_array_equal(mean, parts[2].mean[2:5])
    np.testing.assert_array_equal(m2, parts[2].m2[2:5])


# ---------------------------------------------------------------------------------------------------------
# (e) failures leave nothing behind
# ---------------------------------------------------------------------------------------------------------


def broken(dataset):
    raw = np.stack([__import__("h5py").File(p, "r")["default"][:] for p in sorted(dataset["dir"].glob("ind_*.h5"))])
    raw[7, 3, 4, 5] = np.nan
    return raw


def test_failed_run_leaves_no_output_threads(dataset, tmp_path):
    out = tmp_path / "fail.ome.zarr"
    with dask.config.set(scheduler="threads"), pytest.raises(ValueError, match="timepoint 7: NaN"):
        gd.preprocess(broken(dataset), out, backend="cpu", block_size=2)
    assert not out.exists() and no_leftovers(tmp_path) == []


def test_failed_run_leaves_no_output_cluster(dataset, client, tmp_path):
    out = tmp_path / "fail.ome.zarr"
    with pytest.raises(ValueError, match="timepoint 7: NaN"):
        gd.preprocess(broken(dataset), out, backend="cpu", block_size=2)
    assert not out.exists() and no_leftovers(tmp_path) == []


def interrupt_at_block_2(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 2:
        raise KeyboardInterrupt
    return block


def test_interrupted_run_leaves_no_output(dataset, tmp_path):
    arr = gd._blocked(gd.open_input(dataset["dir"]), 2).map_blocks(interrupt_at_block_2, dtype=np.float32)
    out = tmp_path / "interrupted.ome.zarr"
    with dask.config.set(scheduler="sync"), pytest.raises(KeyboardInterrupt):
        gd.preprocess(arr, out, backend="cpu")
    assert not out.exists() and no_leftovers(tmp_path) == []


def test_one_4d_hdf5_file_equals_the_files(dataset, tmp_path):
    import h5py

    path = tmp_path / "movie.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.stack([h5py.File(p, "r")["default"][:] for p in sorted(dataset["dir"].glob("ind_*.h5"))])
    with dask.config.set(scheduler="threads"):
        z, shifts = dask.compute(*gd.preprocess(path, dataset="images", backend="cpu", block_size=5))
    np.testing.assert_array_equal(shifts, dataset["want"]["shifts"])
    assert_data_close(z, dataset["want"]["0"])


def test_existing_output_refused_then_replaced_with_force(dataset, tmp_path):
    out = tmp_path / "exists.ome.zarr"
    out.mkdir()
    (out / "keep").write_text("x")
    with dask.config.set(scheduler="threads"):
        with pytest.raises(FileExistsError, match="exists.ome.zarr: exists"):
            gd.preprocess(dataset["dir"], out, backend="cpu")
        # force replaces a Zarr store only, never another directory
        with pytest.raises(FileExistsError, match="not a Zarr store"):
            gd.preprocess(dataset["dir"], out, backend="cpu", force=True)
        assert (out / "keep").exists()
        (out / "keep").unlink()
        (out / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
        gd.preprocess(dataset["dir"], out, backend="cpu", force=True)
    check_store(out, dataset)
    assert no_leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        # The messages of `gpuprep run` and gpuprep.preprocess, under the keyword (one validation).
        ({"median_mode": "bogus"}, ValueError, 'median_mode: unknown boundary mode "bogus"'),
        ({"reference": 99}, ValueError, r"reference: timepoint 99 is out of range; the input has 12 timepoints \(0..12\)"),
        ({"reference_mean": "5:2"}, ValueError, 'reference_mean: got "5:2"; expected START:END with START < END'),
        ({"order": 2}, ValueError, "order: spline order 2 is not supported; expected 0, 1 or 3"),
        ({"upsample_factor": 0}, ValueError, "upsample_factor: got 0; expected an integer from 1 to 1000"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"memory_budget": -1}, ValueError, "memory_budget"),
    ],
)
def test_bad_parameters_fail_before_anything_is_written(dataset, tmp_path, kwargs, error, match):
    out = tmp_path / "bad.ome.zarr"
    with pytest.raises(error, match=match):
        gd.preprocess(dataset["dir"], out, backend="cpu", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(OSError, match="nothing-here: no such file"):
        gd.preprocess(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match=r"data: expected a \(t, z, y, x\) array"):
        gd.preprocess(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="output: .*not a .zarr"):
        gd.preprocess(np.zeros((3, 4, 5, 6), np.float32), tmp_path / "out.h5")


# ---------------------------------------------------------------------------------------------------------
# Inputs through gpuprep's own reader: TIFF, format= and channel=, as the CLI reads them
# ---------------------------------------------------------------------------------------------------------

TIFF_FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "tiff"


@pytest.mark.parametrize(
    "name, kwargs, flags",
    [
        ("tifffile_series", {}, []),
        ("tifffile_series", {"format": "tiff"}, ["--format", "tiff"]),
        ("tifffile_ome.ome.tif", {"channel": 1}, ["--channel", "1"]),
        ("tifffile_imagej.tif", {"channel": 1}, ["--channel", "1"]),
    ],
)
def test_tiff_inputs_with_format_and_channel_equal_cli(tmp_path, cli, name, kwargs, flags):
    import h5py

    src = TIFF_FIXTURES / name
    out = tmp_path / "cli.h5"
    subprocess.run([cli, "run", src, "-o", out, "--backend", "cpu", "-q", *flags], check=True, capture_output=True)
    with h5py.File(out, "r") as f:
        want, want_shifts = f["data"][:], f["shifts"][:]
    with dask.config.set(scheduler="threads"):
        z, shifts = gd.preprocess(str(src), backend="cpu", block_size=2, **kwargs)
        z, shifts = dask.compute(z, shifts)
    np.testing.assert_array_equal(shifts, want_shifts)
    assert_data_close(z, want)


def test_reader_errors_name_the_input_and_parameter(tmp_path):
    with pytest.raises(OSError, match="tifffile_ome.ome.tif: .*channel 5 is out of range: it has 2 channels"):
        gd.preprocess(str(TIFF_FIXTURES / "tifffile_ome.ome.tif"), channel=5, backend="cpu")
    with pytest.raises(ValueError, match="format: unknown format 'png'"):
        gd.preprocess(str(TIFF_FIXTURES / "tifffile_series"), format="png", backend="cpu")
    with pytest.raises(ValueError, match="format, channel: apply to inputs given as paths"):
        gd.preprocess(np.zeros((2, 2, 4, 4), np.float32), channel=1, backend="cpu")
    broken = tmp_path / "t0.tif"
    broken.write_bytes((TIFF_FIXTURES / "tifffile_series" / "t0.tif").read_bytes()[:300])
    with pytest.raises(OSError, match="t0.tif"):
        gd.preprocess(str(broken), backend="cpu")


@pytest.mark.parametrize(
    "kwargs",
    [{"shard": True}, {"compression": "blosc-lz4"}, {"shard": True, "compression": "zstd", "memory_budget": "0"}],
)
def test_shards_and_compression_as_the_cli(dataset, tmp_path, kwargs):
    """shard= stores each block's slab as one shard (one writer each); compression= the CLI's codecs. The
    values are those of the plain store."""
    out = tmp_path / "packed.ome.zarr"
    with dask.config.set(scheduler="threads"):
        report = gd.preprocess(str(dataset["dir"]), out, backend="cpu", block_size=4, **kwargs)
    assert report["scratch"] == ("file" if "memory_budget" in kwargs else "memory")
    g = zarr.open_group(out, mode="r")
    a = g["0"]
    assert_data_close(a[:], dataset["want"]["0"])
    if kwargs.get("shard"):
        assert a.shards == (4,) + SHAPE[1:] and a.chunks[0] == 4
        assert g.attrs["sharding"] == "one shard per time slab"
        assert len(list((out / "0" / "c").iterdir())) == 3  # one shard per block of 4 timepoints
    else:
        assert a.shards is None and g.attrs["sharding"] == "none"
    compression = kwargs.get("compression", "none")
    assert g.attrs["compression"] == compression
    codecs = [type(c).__name__ for c in a.compressors]
    assert codecs == {"none": [], "zstd": ["ZstdCodec"], "blosc-lz4": ["BloscCodec"]}[compression]
    if compression == "blosc-lz4":
        assert a.compressors[0].cname.value == "lz4"


def test_shard_needs_an_output(dataset):
    with pytest.raises(ValueError, match="shard: applies to an output"):
        gd.preprocess(dataset["dir"], shard=True, backend="cpu")


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_pass_two_writes_normalize_s_values_into_the_chunks(tmp_path, backend, compression):
    """Pass 2's one call (``normalize_zarr_block``: on the CPU the z-scores computed in the chunks' layout
    and written as each is done) stores ``normalize``'s values, edge chunks included (odd shapes, chunks
    cut by the volume's edge), a block at a time; a block off the chunks' bounds and a volume of another
    shape are refused with the array named, and nothing of them written."""
    from gpuprep import _gpuprep

    rng = np.random.default_rng(7)
    t, shape, chunks = 6, (5, 7, 11), (2, 2, 3, 4)
    (tmp_path / "running").touch()
    path = str(tmp_path / "store" / "0")
    gd._create_array(path, (t,) + shape, chunks, np.float32, compression, True)
    vols = rng.normal(3.0, 2.0, (t,) + shape).astype(np.float32)
    mean = vols.mean(axis=0, dtype=np.float64)
    std = vols.std(axis=0, dtype=np.float64)
    std[0, 0, :3] = 0.0  # constant voxels: NaN
    for t0 in range(0, t, 2):
        _gpuprep.normalize_zarr_block(path, t0, vols[t0 : t0 + 2], mean, std, "nan", backend)
    want = gpuprep.normalize(vols, mean, std, backend=backend)
    got = zarr.open_array(path, mode="r")[:]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got, want) if backend == "cpu" else assert_data_close(got, want)
    before = got.copy()
    with pytest.raises(OSError, match=r"store/0.*chunks span 2 timepoints"):
        _gpuprep.normalize_zarr_block(path, 1, vols[1:3], mean, std, "nan", "cpu")
    with pytest.raises(OSError, match=r"store/0.*shape \[6, 5, 7, 11\]"):
        _gpuprep.normalize_zarr_block(path, 0, vols[:2, :4], mean[:4], std[:4], "nan", "cpu")
    with pytest.raises(ValueError, match="differ from the block's volumes"):
        _gpuprep.normalize_zarr_block(path, 0, vols[:2], mean[:4], std, "nan", "cpu")
    np.testing.assert_array_equal(zarr.open_array(path, mode="r")[:], before)
