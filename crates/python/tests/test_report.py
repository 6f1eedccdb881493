"""gpuprep.report: the CLI's `gpuprep report` from Python, on the CLI's output and on gpuprep.preprocess's."""

import subprocess

import h5py
import numpy as np
import pytest

import gpuprep


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, cli):
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    subprocess.run([cli, "synth", data, "--shape", "6,4,16,20", "--mode", "realistic"], check=True, capture_output=True)
    reg = root / "reg.h5"
    subprocess.run([cli, "run", data, "-o", reg, "--backend", "cpu", "-q"], check=True, capture_output=True)
    plain = root / "plain.h5"
    subprocess.run([cli, "run", data, "-o", plain, "--backend", "cpu", "-q", "--no-register"], check=True,
                   capture_output=True)
    return root, data, reg, plain


def test_report_writes_every_panel_beside_the_output(outputs):
    root, _, reg, _ = outputs
    path = gpuprep.report(reg)
    assert path == root / "reg.report.html" and path.exists()
    html = path.read_text()
    assert html.count("data:image/png;base64,") == 7 and "<script" not in html
    png = gpuprep.report(reg, root / "r.png")
    assert png.read_bytes()[1:4] == b"PNG"
    forced = gpuprep.report(reg, root / "r.out", format="png")
    assert forced.read_bytes()[1:4] == b"PNG"


def test_report_of_a_python_run(outputs, tmp_path):
    _, data, _, _ = outputs
    out = tmp_path / "py.ome.zarr"
    gpuprep.preprocess(str(data), out, backend="cpu")
    html = gpuprep.report(out, tmp_path / "py.html").read_text()
    assert html.count("data:image/png;base64,") == 7


def test_report_refuses_in_python_terms(outputs):
    root, _, reg, plain = outputs
    existing = root / "kept.html"
    existing.write_text("mine")
    with pytest.raises(FileExistsError, match="force=True"):
        gpuprep.report(reg, existing)
    assert existing.read_text() == "mine"
    assert gpuprep.report(reg, existing, force=True).read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(OSError, match="plain.h5.*has no /shifts"):
        gpuprep.report(plain, root / "plain.html")
    with pytest.raises(ValueError, match="format"):
        gpuprep.report(reg, root / "x.html", format="pdf")
    with h5py.File(plain, "r") as f:
        assert "shifts" not in f and np.isfinite(f["data"][0]).any()
