#!/usr/bin/env bash
# Set up (system packages, a Python venv from PyPI) and run every test: the Rust suite, then the Python
# package's. GPU tests run on lavapipe (software Vulkan) and fail, not skip, when GPUPREP_REQUIRE_GPU=1
# and no Vulkan adapter is found; the report's browser test likewise when GPUPREP_REQUIRE_BROWSER=1 and no
# headless Chromium is found.
#   GPUPREP_VENV    the venv to use (default .venv, made and filled once)
#   GPUPREP_PYTHON  the Python the Rust tests use to read outputs with zarr-python (default the venv's)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export GPUPREP_REQUIRE_GPU="${GPUPREP_REQUIRE_GPU:-1}"
export GPUPREP_REQUIRE_BROWSER="${GPUPREP_REQUIRE_BROWSER:-1}"
venv="${GPUPREP_VENV:-$PWD/.venv}"
if ! "$venv/bin/python" -c "import numpy, h5py, zarr, scipy, skimage, pytest, hypothesis, tqdm, maturin, dask.array, distributed, jsonschema, ome_zarr, napari_ome_zarr" >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "numpy" "h5py" "zarr>=3" "scipy" "scikit-image" "pytest" "hypothesis" "tqdm" \
    "maturin>=1.9.4,<2" "dask[array]" "distributed" "jsonschema" "ome-zarr" "napari-ome-zarr"
fi
export GPUPREP_PYTHON="${GPUPREP_PYTHON:-$venv/bin/python}"
# SIMA's example two-photon movie and its published motion correction (issue 12's real-data test): SIMA's
# source distribution from PyPI, fetched once into the venv (its data files are read, nothing is built).
sima_dir="$venv/share/gpuprep-data"
if ! ls "$sima_dir"/sima-1.3.2.zip >/dev/null 2>&1; then
  "$venv/bin/python" -m pip download -q --no-deps "sima==1.3.2" -d "$sima_dir"
fi
export GPUPREP_SIMA_SDIST="${GPUPREP_SIMA_SDIST:-$sima_dir/sima-1.3.2.zip}"
cargo test --all-targets
# The Python package, built into the venv from the same target directory (dev profile, so it reuses the
# dependencies the Rust tests just built), then its tests against live scipy and scikit-image.
(cd crates/python && VIRTUAL_ENV="$venv" "$venv/bin/maturin" develop --quiet)
GPUPREP_CLI="$PWD/target/debug/gpuprep" "$venv/bin/python" -m pytest crates/python/tests -q
