"""Shared fixtures: the backends every kernel test runs on, and where the CLI binary is.

The GPU backend runs wherever there is an adapter (lavapipe in CI). With GPUPREP_REQUIRE_GPU=1 (the
test command sets it) a machine without one fails these tests rather than skipping them; elsewhere
they are skipped, and the skip says so loudly.
"""

import os
import pathlib
import warnings

import pytest

import gpuprep

REPO = pathlib.Path(__file__).resolve().parents[3]


def _gpu_available() -> tuple[bool, str]:
    try:
        return True, gpuprep.backend_name("gpu")
    except RuntimeError as e:
        return False, str(e)


GPU_OK, GPU_WHY = _gpu_available()


def pytest_report_header(config):
    return f"gpuprep {gpuprep.__version__}; gpu backend: {GPU_WHY}; auto backend: {gpuprep.backend_name()}"


@pytest.fixture(params=["cpu", "gpu"])
def backend(request):
    if request.param == "gpu" and not GPU_OK:
        if os.environ.get("GPUPREP_REQUIRE_GPU") == "1":
            pytest.fail(f"GPUPREP_REQUIRE_GPU=1 but no GPU adapter: {GPU_WHY}")
        warnings.warn(f"NO GPU ADAPTER: the GPU variant of this test is SKIPPED ({GPU_WHY})")
        pytest.skip(f"no GPU adapter: {GPU_WHY}")
    return request.param


@pytest.fixture(scope="session")
def cli() -> pathlib.Path:
    """The gpuprep binary the Rust tests built (GPUPREP_CLI names another)."""
    path = pathlib.Path(os.environ.get("GPUPREP_CLI", REPO / "target" / "debug" / "gpuprep"))
    if not path.exists():
        pytest.fail(f"the gpuprep CLI is not at {path}: run `cargo build` first or set GPUPREP_CLI")
    return path
