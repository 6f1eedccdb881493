#!/usr/bin/env bash
# Set up (system packages) and run `gpuprep demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo run --release -- demo "$@"
