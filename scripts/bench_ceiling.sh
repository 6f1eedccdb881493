#!/usr/bin/env bash
# The ceiling of 2-worker scaling on this machine (issue 11; a script, not a test): two independent
# single-thread gpuprep runs side by side against one alone. Two dask workers can do no better than two
# processes that share nothing, so 2 * t_alone / t_pair bounds `scripts/bench_dask.py`'s 1 -> 2 worker
# speed-up here (memory bandwidth, caches and the disk are what the two share).
#
#   scripts/bench_ceiling.sh [GPUPREP (default target/release/gpuprep)] [T,Z,Y,X (default 12,64,256,256)] [ROUNDS (default 5)]
#
# Each round times one run alone, then two at once (each on its own copy of the data, writing its own
# output), and prints the ratio; the median of the rounds ends the output. Data go under
# ${WORKDIR:-/tmp/bench-ceiling}.
set -euo pipefail
bin="${1:-target/release/gpuprep}"
shape="${2:-12,64,256,256}"
rounds="${3:-5}"
work="${WORKDIR:-/tmp/bench-ceiling}"
mkdir -p "$work"
for d in a b; do
    [ -d "$work/in-$d" ] || "$bin" synth "$work/in-$d" --shape "$shape" --mode randn --seed 1 >/dev/null
done
run() { "$bin" run "$work/in-$1" -o "$work/out-$1.h5" --backend cpu --threads 1 --force --quiet; }
now() { date +%s.%N; }
ratios=()
for r in $(seq "$rounds"); do
    t0=$(now); run a; t1=$(now)
    run a & pa=$!; run b & pb=$!; wait "$pa"; wait "$pb"; t2=$(now)
    ratio=$(python3 -c "print(f'{2 * ($t1 - $t0) / ($t2 - $t1):.3f}')")
    ratios+=("$ratio")
    python3 -c "print(f'round $r: alone {$t1 - $t0:.2f} s, two side by side {$t2 - $t1:.2f} s: $ratio x the work of one')"
done
python3 -c "import statistics; r = [$(IFS=,; echo "${ratios[*]}")]; print(f'ceiling: median {statistics.median(r):.2f}x (range {min(r):.2f}-{max(r):.2f}, {len(r)} rounds)')"
