#!/usr/bin/env bash
# Set up (system packages) and run every test. GPU tests run on lavapipe (software Vulkan) and fail,
# not skip, when GPUPREP_REQUIRE_GPU=1 and no Vulkan adapter is found.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export GPUPREP_REQUIRE_GPU="${GPUPREP_REQUIRE_GPU:-1}"
cargo test --all-targets
