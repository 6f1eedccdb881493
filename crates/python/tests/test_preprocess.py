"""gpuprep.preprocess against the CLI: the same output file, the same errors, a progress callback that can
stop the run without leaving anything behind."""

import os
import pathlib
import subprocess

import h5py
import numpy as np
import pytest

import gpuprep


def run_cli(cli, *args):
    env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    return subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, cli):
    """Synthetic data with known shifts, in the notebook's layout (one HDF5 file per timepoint)."""
    d = tmp_path_factory.mktemp("demo") / "data"
    r = run_cli(cli, "synth", d, "--shape", "6,7,16,17", "--mode", "realistic", "--subpixel", "--seed", "3")
    assert r.returncode == 0, r.stderr
    return d


def read_all(path):
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in f.keys()}
        attrs = {k: f.attrs[k] for k in f.attrs.keys()}
    return data, attrs


def assert_same_file(a, b):
    (da, aa), (db, ab) = read_all(a), read_all(b)
    assert sorted(da) == sorted(db)
    for k in da:
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)
    assert sorted(aa) == sorted(ab)
    for k in aa:
        np.testing.assert_array_equal(aa[k], ab[k], err_msg=k)


@pytest.mark.parametrize(
    "flags, keywords",
    [
        ([], {}),
        (
            ["--median-size", "1,3,3", "--upsample-factor", "10", "--reference-mean", "1:4", "--ddof", "1",
             "--save", "filtered,registered", "--shift-mode", "nearest"],
            dict(median_size=(1, 3, 3), upsample_factor=10, reference_mean="1:4", ddof=1,
                 save=["filtered", "registered"], shift_mode="nearest"),
        ),
        (["--no-median", "--no-zscore", "--normalization", "none"], dict(no_median=True, no_zscore=True, normalization=None)),
        (
            ["--max-shift", "1,4,4", "--smooth-sigma", "0,1,1.5", "--upsample-factor", "4", "--reference-mean", "0:4",
             "--reference-iterations", "2", "--reference-top", "3", "--disambiguate"],
            dict(max_shift=(1, 4, 4), smooth_sigma="0,1,1.5", upsample_factor=4, reference_mean=(0, 4),
                 reference_iterations=2, reference_top=3, disambiguate=True),
        ),
        (["--max-shift", "2", "--smooth-sigma", "0.5"], dict(max_shift=2, smooth_sigma=0.5)),
    ],
    ids=["defaults", "options", "stages-off", "registration-options", "one-number-options"],
)
def test_preprocess_writes_the_clis_file(demo, cli, tmp_path, backend, flags, keywords):
    by_cli, by_python = tmp_path / "cli.h5", tmp_path / "python.h5"
    r = run_cli(cli, "run", demo, "-o", by_cli, "--backend", backend, "-q", *flags)
    assert r.returncode == 0, r.stderr
    report = gpuprep.preprocess(demo, by_python, backend=backend, **keywords)
    assert_same_file(by_cli, by_python)
    assert report["timepoints"] == 6 and report["shape"] == (7, 16, 17)
    with h5py.File(by_python, "r") as f:
        if "shifts" in f:
            np.testing.assert_array_equal(report["shifts"], f["shifts"][()])


# (CLI flags, Python keywords): the same bad value through each front end.
BAD = [
    (["--median-size", "4"], dict(median_size=4)),
    (["--upsample-factor", "0"], dict(upsample_factor=0)),
    (["--upsample-factor", "5000"], dict(upsample_factor=5000)),
    (["--order", "2"], dict(order=2)),
    (["--reference", "99"], dict(reference=99)),
    (["--reference-mean", "4:2"], dict(reference_mean="4:2")),
    (["--reference-mean", "0:99"], dict(reference_mean="0:99")),
    (["--save", "bogus"], dict(save="bogus")),
    (["--dataset", "nope"], dict(dataset="nope")),
    (["--max-shift", "1,-1,2"], dict(max_shift=(1, -1, 2))),
    (["--smooth-sigma", "0,0,-2"], dict(smooth_sigma=(0, 0, -2))),
    (["--reference-top", "0", "--reference-iterations", "1"], dict(reference_top=0, reference_iterations=1)),
    (["--reference-top", "5", "--reference-mean", "0:4", "--reference-iterations", "1"],
     dict(reference_top=5, reference_mean="0:4", reference_iterations=1)),
    (["--reference-top", "2", "--reference-mean", "0:4"], dict(reference_top=2, reference_mean="0:4")),
    (["--disambiguate", "--no-register"], dict(disambiguate=True, no_register=True)),
    (["--shifts", "no-such-shifts.csv"], dict(shifts="no-such-shifts.csv")),
    (["--apply-to-channels", "one"], dict(apply_to_channels="one")),
]


@pytest.mark.parametrize("flags, keywords", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_parameters_give_the_clis_message_under_the_keyword(demo, cli, tmp_path, flags, keywords):
    r = run_cli(cli, "run", demo, "-o", tmp_path / "cli.h5", "--backend", "cpu", *flags)
    assert r.returncode == 2
    cli_line = r.stderr.strip().splitlines()[-1]
    with pytest.raises((ValueError, OSError)) as e:
        gpuprep.preprocess(demo, tmp_path / "python.h5", backend="cpu", **keywords)
    message = str(e.value)
    # The CLI names the flag, Python the keyword; what follows the name is the same text.
    flag = flags[0]
    keyword = flag[2:].replace("-", "_")
    if message.startswith(keyword + ": "):
        assert cli_line.endswith(message[len(keyword) + 2 :]), (cli_line, message)
        assert f"{flag}: " in cli_line
    else:  # an error about a file, the same line
        assert cli_line.endswith(message), (cli_line, message)
    assert not list(tmp_path.iterdir()), "nothing is left behind"


def test_missing_input_is_an_oserror_naming_it(tmp_path):
    with pytest.raises(OSError, match="nothing-here"):
        gpuprep.preprocess(tmp_path / "nothing-here", tmp_path / "out.h5", backend="cpu")


def test_progress_callback_sees_each_pass(demo, tmp_path):
    calls = []
    gpuprep.preprocess(demo, tmp_path / "out.h5", backend="cpu", progress=lambda *a: calls.append(a))
    assert calls[0] == ("pass 1", 0, 6) and ("pass 1", 6, 6) in calls
    assert ("z-score", 0, 6) in calls and calls[-1] == ("z-score", 6, 6)


def test_an_exception_in_the_callback_stops_the_run_and_leaves_nothing(demo, tmp_path):
    class Stop(Exception):
        pass

    def progress(pass_name, done, total):
        if pass_name == "z-score" and done == 2:
            raise Stop("enough")

    out = tmp_path / "out.h5"
    with pytest.raises(Stop, match="enough"):
        gpuprep.preprocess(demo, out, backend="cpu", progress=progress)
    assert not list(tmp_path.iterdir()), "no output, no temporary directory"


def test_keyboard_interrupt_stops_the_run(demo, tmp_path):
    import signal

    def progress(pass_name, done, total):
        if done == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while Rust is computing

    # Python installs its KeyboardInterrupt handler only where SIGINT was not ignored at start-up, and a
    # shell ignores SIGINT in the background jobs it starts without job control (as a CI runner may):
    # the handler an interactive session has is set here, so that the test does not depend on how
    # pytest was started.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            gpuprep.preprocess(demo, tmp_path / "out.h5", backend="cpu", progress=progress)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not list(tmp_path.iterdir())


def test_tqdm_progress(demo, tmp_path, capsys):
    gpuprep.preprocess(demo, tmp_path / "out.h5", backend="cpu", progress=True)
    assert "pass 1" in capsys.readouterr().err


def test_an_existing_output_is_refused_then_replaced_with_force(demo, tmp_path):
    out = tmp_path / "out.h5"
    gpuprep.preprocess(demo, out, backend="cpu")
    with pytest.raises(OSError, match="exists"):
        gpuprep.preprocess(demo, out, backend="cpu")
    gpuprep.preprocess(demo, out, backend="cpu", force=True, no_zscore=True)
    assert "mean" not in read_all(out)[0]


def test_zarr_output(demo, tmp_path):
    out = tmp_path / "out.ome.zarr"
    report = gpuprep.preprocess(demo, out, backend="cpu")
    assert pathlib.Path(report["output"]) == out and (out / "zarr.json").exists()


def test_ome_zarr_py_reads_the_output_as_written(demo, tmp_path):
    """ome-zarr-py, the OME's reference reader, finds one image in gpuprep's OME-Zarr output: its axes, its
    scale, and level 0 equal to the array zarr-python reads and to the HDF5 output of the same run."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out, h5 = tmp_path / "out.ome.zarr", tmp_path / "out.h5"
    gpuprep.preprocess(demo, out, backend="cpu")
    gpuprep.preprocess(demo, h5, backend="cpu")
    nodes = list(Reader(parse_url(str(out)))())
    assert len(nodes) == 1
    image = nodes[0]
    assert [a["name"] for a in image.metadata["axes"]] == ["t", "z", "y", "x"]
    assert image.metadata["coordinateTransformations"] == [[{"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]}]]
    level0 = np.asarray(image.data[0])
    np.testing.assert_array_equal(level0, zarr.open_group(str(out), mode="r")["0"][...])
    np.testing.assert_array_equal(level0, read_all(h5)[0]["data"])


def test_napari_ome_zarr_reader_reads_the_output_as_written(demo, tmp_path):
    """napari's OME-Zarr reader plugin (napari-ome-zarr), called as napari calls it but without a viewer
    (no display needed): one image layer, level 0 equal to zarr-python's, with the axes and scale."""
    import zarr
    from napari_ome_zarr import napari_get_reader

    out = tmp_path / "out.ome.zarr"
    gpuprep.preprocess(demo, out, backend="cpu")
    reader = napari_get_reader(str(out))
    assert callable(reader), "napari-ome-zarr does not take gpuprep's output"
    layers = reader(str(out))
    assert [kind for _, _, kind in layers] == ["image"]
    data, kwargs, _ = layers[0]
    levels = data if isinstance(data, list) else [data]
    np.testing.assert_array_equal(np.asarray(levels[0]), zarr.open_group(str(out), mode="r")["0"][...])
    assert tuple(kwargs["axis_labels"]) == ("t", "z", "y", "x")
    assert list(kwargs["scale"]) == [1.0, 1.0, 1.0, 1.0]


def test_sharded_output_reads_the_same_in_zarr_python(demo, tmp_path):
    import zarr

    plain, sharded = tmp_path / "plain.ome.zarr", tmp_path / "sharded.ome.zarr"
    gpuprep.preprocess(demo, plain, backend="cpu")
    gpuprep.preprocess(demo, sharded, backend="cpu", shard=True, compression="zstd")
    a, b = zarr.open_group(str(plain), mode="r")["0"], zarr.open_group(str(sharded), mode="r")["0"]
    assert a.shards is None and b.shards is not None and b.chunks == a.chunks
    np.testing.assert_array_equal(b[...], a[...])
    with pytest.raises(ValueError, match="shard: shards are a Zarr v3 feature"):
        gpuprep.preprocess(demo, tmp_path / "out.h5", backend="cpu", shard=True)


def test_given_shifts_keyword_gives_the_clis_file(demo, cli, tmp_path):
    """``shifts=`` is ``--shifts``: a CSV of shifts applied instead of registering, the same output."""
    table = tmp_path / "shifts.csv"
    rows = ["t,z,y,x"] + [f"{t},0,{0.5 * t},{-0.25 * t}" for t in range(6)]
    table.write_text("\n".join(rows) + "\n")
    by_cli, by_python = tmp_path / "cli.h5", tmp_path / "python.h5"
    r = run_cli(cli, "run", demo, "-o", by_cli, "--backend", "cpu", "-q", "--shifts", table)
    assert r.returncode == 0, r.stderr
    gpuprep.preprocess(demo, by_python, backend="cpu", shifts=table)
    assert_same_file(by_cli, by_python)
    with h5py.File(by_python, "r") as f:
        np.testing.assert_array_equal(f["shifts"][()][:, 1], 0.5 * np.arange(6))


@pytest.mark.parametrize(
    "keywords, message",
    [
        (dict(max_shift="a,b,c"), "max_shift: got 'a,b,c'"),
        (dict(smooth_sigma=(1, 2)), "smooth_sigma: got (1, 2)"),
        (dict(reference_iterations=-1), "reference_iterations: got -1"),
        (dict(reference_top=-2, reference_iterations=1), "reference_top: got -2"),
        (dict(apply_to_channels=[1, "x"]), "apply_to_channels: got [1, 'x']"),
    ],
)
def test_bad_registration_keywords_are_value_errors_naming_them(demo, tmp_path, keywords, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        gpuprep.preprocess(demo, tmp_path / "python.h5", backend="cpu", **keywords)
    assert not list(tmp_path.iterdir())


def test_a_bad_gpu_zscore_variable_is_an_error_under_auto_too():
    """A wrong GPUPREP_GPU_ZSCORE is the user's to fix: `backend='auto'` raises ValueError naming it
    rather than quietly computing on the CPU as if there were no GPU (a fresh interpreter: the device
    is opened once per process)."""
    import sys

    code = (
        "import numpy as np, gpuprep\n"
        "try:\n"
        "    gpuprep.median_filter(np.zeros((3, 4, 5), np.float32), 3, backend='auto')\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    env = dict(os.environ, GPUPREP_GPU_ZSCORE="f16")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ValueError:"), r.stdout + r.stderr
    assert "GPUPREP_GPU_ZSCORE" in r.stdout and "f16" in r.stdout, r.stdout
