#!/usr/bin/env bash
# Where each rank is when a prefill on ranks sharing one GPU stalls: runs one configuration
# RUNS times with the stage loop's and the KV sync's debug lines on, and for every run that does
# not finish prints the last lines of each rank.
#   scripts/gpu_check/stall_probe.sh OUTDIR          env: RUNS (10), RANKS (3), ARGS (extra
#   flags, e.g. "--transport ipc"), BIN (a binary), WATCHDOG (s, 10), LAST (lines per rank, 8),
#   MPIRUN_ARGS (e.g. "--bind-to core"), SLACK (s past the watchdog before the run is killed, 40)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out=${1:?give an output folder}; mkdir -p "$out"
source scripts/gpu_check/machine.sh
[ -d /tmp/model ] || python3 scripts/gpu_check/make_checkpoint.py --out /tmp/model --tokenizer src/model/tiny --reference /tmp/ref > "$out/checkpoint.log" 2>&1
runs=${RUNS:-10}; n=${RANKS:-3}; stalled=0
for i in $(seq 1 "$runs"); do
  log="$out/run-$i.err"
  RUST_LOG="${LOG_FILTER:-qwen3_mpi::job::stage_loop=debug,qwen3_mpi::sync::worker=debug}" \
    timeout $(( ${WATCHDOG:-10} + ${SLACK:-40} )) mpirun ${MPIRUN_ARGS:-} -n "$n" "$bin" --model /tmp/model --prompt-file /tmp/ref/prompt-1.txt \
    --max-new-tokens 4 --chunk-size 5 --timeout "${WATCHDOG:-10}" ${ARGS:-} > "$out/run-$i.out" 2> "$log"
  rc=$?
  if [ $rc -ne 0 ]; then
    stalled=$((stalled + 1))
    echo "--- run $i: rc $rc: $(grep -m1 -E 'error' "$log" | cut -c1-300)"
    for r in $(seq 0 $((n - 1))); do
      grep "^\[rank $r " "$log" | grep -v "error" | tail -n "${LAST:-8}" | cut -c1-200
    done
  fi
done
echo "stall_probe: $stalled of $runs runs failed ($n ranks, ${ARGS:-default flags}, $(basename "$bin"))"
