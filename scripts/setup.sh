#!/usr/bin/env bash
# Installs the system packages gpuprep needs on Debian/Ubuntu when they are missing:
# libhdf5-dev + pkg-config (HDF5), mesa-vulkan-drivers (lavapipe: software Vulkan for the GPU tests),
# python3-venv (scripts/test.sh makes a venv from PyPI: zarr-python reads gpuprep's OME-Zarr output in the
# Rust tests, and the Python package is built into it and tested against scipy and scikit-image).
# With --test also a headless Chromium (chromium-headless-shell), in which a test renders the QC report.
set -euo pipefail
need=()
dpkg -s libhdf5-dev >/dev/null 2>&1 || need+=(libhdf5-dev)
dpkg -s pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
browser=()
if [ "${1:-}" = "--test" ] && ! { command -v chromium-headless-shell || command -v chromium; } >/dev/null 2>&1; then
  browser=(chromium-headless-shell)
fi
if [ ${#need[@]} -gt 0 ] || [ ${#browser[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
  # The browser with its recommended packages (fonts, Mesa's DRI drivers), as the report's test was run.
  if [ ${#browser[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${browser[@]}"
  fi
fi
