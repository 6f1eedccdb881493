#!/usr/bin/env bash
# The one prepared GPU check of issue 13: everything to measure when a real GPU (an H200) is lent for a
# few minutes, in one call, everything it prints kept under $OUT.
#
# The device machine has no network and no Rust toolchain, so nothing is built there: `prepare`, run
# HERE, builds the release CLI and the GPU bench and packs them, with the shared libraries they load
# (HDF5 and its dependencies as Debian has them, the C runtime and libstdc++ excepted: the device's
# are newer), into target/device-carry/bundle.tar.gz (compressed: the working tree and what is carried
# must stay under 64 MiB together), beside the Vulkan loader's .deb and the CuPy peer script
# (target/ is ignored by git, so nothing of it is committed). The carried libraries reach only
# gpuprep and the bench (wrappers set LD_LIBRARY_PATH), never the device's Python. The device call
# names that folder in `carry` and runs `check`:
#
#   here:    scripts/gpu_device_check.sh prepare            # ~10 min release build on 2 cores
#            (GPUCHECK_PREPARE_DEBUG=1 packs the debug build instead: to test the packing, then
#            `OUT=/tmp/x GPUCHECK_SHAPE=4,8,16,16 GPUCHECK_BENCH_SHAPES=8x16x16 ... check` runs the
#            bundle here)
#   device:  run(command="bash scripts/gpu_device_check.sh check", carry=["target/device-carry"],
#                timeout_s=480)
# The steps share a deadline (GPUCHECK_DEADLINE_S, default 420 s, inside that timeout): each runs
# under min(its own limit, the time left), so with the machine's start the call fits the 15 minutes
# of device time a session has, and a shorter rerun (e.g. GPUCHECK_BENCH_SHAPES=64x256x256) fits too.
#
# The device tool sends the checkout the session was started in (not a helper's worktree): prepare
# and call from the checkout that has this script. `check` writes at most 8 files under $OUT (the
# tool's limit): log.txt (every step's output, with times), bench.txt (criterion's output),
# nvidia-smi.txt, cupy.json, compare.txt, and summary.txt. Steps run in order of value, each under
# its own time limit, so a call cut short still returns what ran.
#
# Locally (lavapipe, no GPU), to know the script runs end to end on a tiny shape, with the debug
# build already in target/debug and no carry folder:
#   GPUCHECK_LOCAL=1 GPUCHECK_SHAPE=4,8,16,16 OUT=/tmp/gpucheck bash scripts/gpu_device_check.sh check
# Lavapipe's times are not GPU times.
#
# Knobs (environment): GPUCHECK_SHAPE (t,z,y,x of the end-to-end run; default 50,64,256,256),
# GPUCHECK_BENCH_SHAPES (the benches' volumes; default 64x256x256,100x100x100), GPUCHECK_BENCH_FILTER
# (criterion's filter; default: the GPU variants, the frame sequence and the transfers, not the CPU ones),
# GPUCHECK_DEADLINE_S (seconds for all steps; default 420), GPUCHECK_PYTHON (with h5py and numpy; default
# python3), GPUCHECK_LOCAL=1 (use target/debug and the machine's own libraries).
set -u -o pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
CARRY="$HERE/target/device-carry"

prepare() {
    set -e
    cd "$HERE"
    export CARGO_INCREMENTAL=0
    local stage=/tmp/gpucheck-stage
    rm -rf "$CARRY" "$stage"
    mkdir -p "$CARRY/deb" "$stage/bin" "$stage/lib"
    local bench profile=release
    if [ "${GPUCHECK_PREPARE_DEBUG:-0}" = 1 ]; then
        # Packs the debug build already in target/ (to test the packing and `check` here, not to
        # time anything).
        profile=debug
        bench=$(ls -t target/debug/deps/gpu-* | grep -v '\.d$' | head -1)
    else
        cargo build --release --bin gpuprep
        # The bench executable's path is the last "Executable" line cargo prints.
        bench=$(cargo bench --bench gpu --no-run 2>&1 | tee /dev/stderr |
            sed -n 's/.*Executable[^(]*(\(.*\))$/\1/p' | tail -1)
    fi
    [ -x "$bench" ] || { echo "no bench executable found" >&2; exit 1; }
    cp "target/$profile/gpuprep" "$stage/bin/gpuprep"
    cp "$bench" "$stage/bin/gpu-bench"
    # The bench as it was before the kernel rewrites (GPUCHECK_BEFORE, a commit; empty: none), built
    # in a worktree of its own, so that `check` prints per-kernel GPU times before and after in one call.
    local before="${GPUCHECK_BEFORE-faf7515}"
    if [ -n "$before" ] && [ "$profile" = release ]; then
        local wt=/tmp/gpucheck-before old
        git worktree remove --force "$wt" 2>/dev/null || rm -rf "$wt"
        git worktree add -f --detach "$wt" "$before"
        old=$(cd "$wt" && CARGO_TARGET_DIR="$HERE/target/before" cargo bench --bench gpu --no-run 2>&1 |
            tee /dev/stderr | sed -n 's/.*Executable[^(]*(\(.*\))$/\1/p' | tail -1)
        git worktree remove --force "$wt"
        [ -x "$old" ] || { echo "no bench executable built at $before" >&2; exit 1; }
        cp "$old" "$stage/bin/gpu-bench-before"
        echo "$before" >"$stage/bin/before-commit"
    fi
    strip "$stage/bin/gpuprep" "$stage/bin/gpu-bench" || true
    [ -f "$stage/bin/gpu-bench-before" ] && { strip "$stage/bin/gpu-bench-before" || true; }
    for b in "$stage"/bin/gpuprep "$stage"/bin/gpu-bench*; do
        ldd "$b" | awk '/=> \//{print $3}'
    done | sort -u | grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' |
        while read -r lib; do cp -L "$lib" "$stage/lib/"; done
    tar czf "$CARRY/bundle.tar.gz" -C "$stage" bin lib
    rm -rf "$stage"
    # wgpu loads the Vulkan loader at run time; the device README's recipe brings it as a .deb.
    mkdir -p /tmp/amd64/partial
    local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o update >/dev/null
    # shellcheck disable=SC2086
    (cd "$CARRY/deb" && apt-get $o download libvulkan1)
    if [ -f /work/shared/gpu-peers/cupy_peers.py ]; then
        cp /work/shared/gpu-peers/cupy_peers.py "$CARRY/"
    fi
    du -sh "$CARRY" "$CARRY"/*
    echo "carry target/device-carry (the working tree and it must stay under 64 MiB together)"
}

check() {
    : "${OUT:?set OUT to the folder for the results}"
    mkdir -p "$OUT"
    cd "$HERE"
    local log="$OUT/log.txt" summary="$OUT/summary.txt"
    local shape="${GPUCHECK_SHAPE:-50,64,256,256}"
    local bench_shapes="${GPUCHECK_BENCH_SHAPES:-64x256x256,100x100x100}"
    local filter="${GPUCHECK_BENCH_FILTER:-gpu_|frame_sequence|^transfer/}"
    local deadline="${GPUCHECK_DEADLINE_S:-420}"
    local bin bench before_bench="${GPUCHECK_BEFORE_BENCH:-}" before_commit="${GPUCHECK_BEFORE:-}"
    if [ "${GPUCHECK_LOCAL:-0}" = 1 ]; then
        bin="$HERE/target/debug/gpuprep"
        bench=$(ls -t "$HERE"/target/debug/deps/gpu-* 2>/dev/null | grep -v '\.d$' | head -1)
    else
        local b=/tmp/gpucheck-bundle
        rm -rf "$b" && mkdir -p "$b" && tar xzf "$CARRY/bundle.tar.gz" -C "$b" || {
            echo "no $CARRY/bundle.tar.gz: run '$0 prepare' here and carry target/device-carry" | tee "$OUT/summary.txt"
            return 1
        }
        for n in gpuprep gpu-bench gpu-bench-before; do
            [ -f "$b/bin/$n" ] || continue
            printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/bin/%s "$@"\n' "$b" "$b" "$n" >"$b/$n"
            chmod +x "$b/$n"
        done
        bin="$b/gpuprep"
        bench="$b/gpu-bench"
        [ -x "$b/gpu-bench-before" ] && before_bench="$b/gpu-bench-before" &&
            before_commit=$(cat "$b/bin/before-commit" 2>/dev/null)
        if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; then
            for f in "$CARRY"/deb/*.deb; do dpkg -x "$f" /; done
            ldconfig
        fi
        if ! ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1 &&
            [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
            export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
        fi
    fi
    export XDG_RUNTIME_DIR=/tmp
    local data="/tmp/gpucheck-data" res="/tmp/gpucheck-out"
    rm -rf "$data" "$res"
    mkdir -p "$res"
    local t0=$SECONDS
    # step NAME LIMIT_S CMD...: runs CMD under min(LIMIT_S, the time left before the deadline), its
    # output into log.txt with a header; skipped when under 10 s are left.
    step() {
        local name=$1 limit=$2
        shift 2
        local left=$((deadline - (SECONDS - t0)))
        if [ "$left" -lt 10 ]; then
            echo "=== $name: skipped, deadline reached" | tee -a "$log" "$summary"
            return 124
        fi
        [ "$limit" -gt "$left" ] && limit=$left
        echo "=== $name (t=$((SECONDS - t0)) s, limit $limit s): $*" | tee -a "$log"
        local s=$SECONDS
        timeout "$limit" "$@" >>"$log" 2>&1
        local rc=$?
        echo "=== $name: rc $rc, $((SECONDS - s)) s" | tee -a "$log" "$summary"
        return $rc
    }
    {
        echo "gpu_device_check $(date -u +%FT%TZ) on $(uname -n)"
        echo "git: $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo '?')"
        echo "shape $shape; bench shapes $bench_shapes; filter $filter"
    } | tee "$summary" >"$log"

    if command -v nvidia-smi >/dev/null; then
        nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$summary" 2>&1
    fi
    step info 60 "$bin" info
    # The bench prints each shape's counters and frame wall time first (`frame_counters`), then the
    # criterion groups the filter keeps.
    step bench 200 env GPUPREP_BENCH_SHAPES="$bench_shapes" "$bench" --bench "$filter"
    # The unchecked-kernels experiment (issue 13): the frame counters and per-kernel times only (a
    # filter no criterion group matches), kernels built without wgpu's runtime checks.
    step bench_unchecked 60 env GPUPREP_GPU_UNCHECKED=1 GPUPREP_BENCH_SHAPES="$bench_shapes" "$bench" --bench no-criterion-group
    # The same counters and per-kernel times from the bench built before the kernel rewrites.
    if [ -n "$before_bench" ]; then
        echo "bench_before: the bench at ${before_commit:-an earlier commit}" >>"$log"
        step bench_before 60 env GPUPREP_BENCH_SHAPES="$bench_shapes" "$before_bench" --bench no-criterion-group
    fi
    # The bench's section of the log without criterion's progress lines.
    awk '/^=== bench(_unchecked|_before)? \(/{on=1} on && !/^(Benchmarking|Gnuplot|Found [0-9]+ outliers|  [0-9]+ \()/{print} /^=== bench(_unchecked|_before)?:/{on=0}' \
        "$log" >"$OUT/bench.txt"

    IFS=, read -r t z y x <<<"$shape"
    step synth 60 "$bin" synth "$data" --shape "$shape" --mode realistic --dtype uint16
    step run_gpu 60 "$bin" run "$data" -o "$res/gpu.h5" --backend gpu
    step run_gpu_f32 60 env GPUPREP_GPU_ZSCORE=f32 "$bin" run "$data" -o "$res/gpu_f32.h5" --backend gpu
    step run_gpu_plain 60 "$bin" run "$data" -o "$res/gpu_plain.h5" --backend gpu --no-median --no-register
    step run_gpu_unchecked 60 env GPUPREP_GPU_UNCHECKED=1 "$bin" run "$data" -o "$res/gpu_unchecked.h5" --backend gpu
    step run_cpu 150 "$bin" run "$data" -o "$res/cpu.h5" --backend cpu
    step compare 120 "${GPUCHECK_PYTHON:-python3}" - "$res" <<'PY'
import sys, os
import h5py, numpy as np
res = sys.argv[1]
def load(n):
    p = os.path.join(res, n)
    if not os.path.exists(p):
        return None
    with h5py.File(p, "r") as f:
        return {k: f[k][...] for k in ("data", "shifts") if k in f}, dict(f.attrs)
cpu = load("cpu.h5")
for n in ("gpu.h5", "gpu_f32.h5", "gpu_unchecked.h5", "gpu_plain.h5"):
    g = load(n)
    if g is None or cpu is None:
        print(n, "missing"); continue
    a, b = g[0]["data"], cpu[0]["data"]
    both = np.isnan(a) & np.isnan(b)
    d = np.where(both, 0, np.abs(a - b))
    same_shifts = np.array_equal(g[0].get("shifts"), cpu[0].get("shifts"))
    note = " (another pipeline: the I/O-bound time reference, not a correctness check)" if "plain" in n else ""
    print(f"{n} vs cpu.h5{note}: max |diff| {np.nanmax(d):.3e}, NaN mismatch {int(np.sum(np.isnan(a) != np.isnan(b)))}, "
          f"shifts equal {same_shifts}; backend: {g[1].get('backend')}")
PY
    grep -E "vs cpu.h5|missing" "$log" >"$OUT/compare.txt" 2>/dev/null
    grep -E "^\[|elapsed|frames/s|MB/s|wall" "$log" | tail -40 >>"$summary" 2>/dev/null

    if [ -f "$CARRY/cupy_peers.py" ] && "${GPUCHECK_PYTHON:-python3}" -c "import cupy" 2>/dev/null; then
        for s in 64,256,256 100,100,100; do
            step "cupy_$s" 60 "${GPUCHECK_PYTHON:-python3}" "$CARRY/cupy_peers.py" --shape "$s" --json "$OUT/cupy_${s//,/x}.json"
        done
    elif [ "${GPUCHECK_LOCAL:-0}" = 1 ] && [ -f /work/shared/gpu-peers/cupy_peers.py ]; then
        step cupy_dry_run 120 "${GPUCHECK_PYTHON:-python3}" /work/shared/gpu-peers/cupy_peers.py --dry-run --shape "$z,$y,$x" --repeat 2
    else
        echo "=== cupy: no CuPy in this Python, or no cupy_peers.py carried" | tee -a "$log" "$summary"
    fi
    echo "=== done in $((SECONDS - t0)) s" | tee -a "$log" "$summary"
    rm -rf "$data" "$res"
}

case "${1:-check}" in
prepare) prepare ;;
check) check ;;
*)
    echo "usage: $0 prepare|check" >&2
    exit 2
    ;;
esac
