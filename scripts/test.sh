#!/usr/bin/env bash
# Set up (system packages) and run every test. GPU tests run on lavapipe (software Vulkan) and fail,
# not skip, when GPUPREP_REQUIRE_GPU=1 and no Vulkan adapter is found.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export GPUPREP_REQUIRE_GPU="${GPUPREP_REQUIRE_GPU:-1}"
# zarr-python reads gpuprep's OME-Zarr output in the tests: a venv from PyPI, made once.
if [ -z "${GPUPREP_PYTHON:-}" ]; then
  if ! .venv/bin/python -c "import zarr, h5py, numpy, jsonschema" >/dev/null 2>&1; then
    python3 -m venv .venv
    .venv/bin/pip install -q "numpy" "h5py" "zarr>=3" "jsonschema"
  fi
  export GPUPREP_PYTHON="$PWD/.venv/bin/python"
fi
cargo test --all-targets
