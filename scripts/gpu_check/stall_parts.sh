#!/usr/bin/env bash
# The multi-rank stall of the 2026-12-01 third session, one device call:
#   bisect    which build first stalls 3 ranks sharing the GPU (binaries .carry/bisect-*.xz,
#             BISECT_RUNS runs each; see results/gpu-check/2026-12-01-session3-stall.md)
#   weightload  QWEN3_MPI_WEIGHT_LOAD=during against after (LOAD_RUNS runs each, 10 s watchdog)
#   interleave  ea9b58d (.carry/qwen3-mpi-base.xz), 77b458d and e3104a1 in turn, ROUNDS rounds
#   variants  which run-time switch makes the stall go away (progress thread sleeping, host
#             transport, ranks bound to cores), 2 runs each
#   scripts/gpu_check/stall_parts.sh OUT      env: PARTS ("bisect"; any of the parts above)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out=${1:?}; mkdir -p "$out"
source scripts/gpu_check/machine.sh
parts=" ${PARTS:-bisect} "
if [[ $parts == *" weightload "* ]]; then  # is the background weight load the cause?
  for load in during after; do
    QWEN3_MPI_WEIGHT_LOAD=$load RUNS=${LOAD_RUNS:-4} WATCHDOG=10 ARGS="--transport ipc" \
      bash scripts/gpu_check/stall_probe.sh "$out/load-$load" 2>&1 | grep stall_probe | sed "s/^/weight load $load: /"
  done
fi
if [[ $parts == *" interleave "* ]]; then  # ea9b58d, 77b458d, e3104a1 in turn, same watchdog
  for f in .carry/qwen3-mpi-base.xz .carry/bisect-77b458d.xz .carry/bisect-e3104a1.xz; do
    [ -f "$f" ] || continue
    b=/tmp/$(basename "$f" .xz); xz -dc "$f" > "$b"; chmod +x "$b"
  done
  for i in $(seq 1 "${ROUNDS:-6}"); do
    for b in /tmp/qwen3-mpi-base /tmp/bisect-77b458d /tmp/bisect-e3104a1; do
      [ -x "$b" ] && RUNS=1 WATCHDOG=10 BIN=$b ARGS="--transport ipc" bash scripts/gpu_check/stall_probe.sh "$out/$(basename "$b")-$i" 2>&1 | grep stall_probe
    done
  done
fi
if [[ $parts == *" variants "* ]]; then  # which run-time switch makes the stall go away
  v() { RUNS=2 WATCHDOG=6 bash scripts/gpu_check/stall_probe.sh "$out/$1" 2>&1 | grep stall_probe | sed "s/^/$1: /"; }
  QWEN3_MPI_PROGRESS_POLL_US=200 ARGS="--transport ipc" v poll200
  ARGS="--transport host" v host
  MPIRUN_ARGS="--bind-to core" ARGS="--transport ipc" v bindcore
fi
if [[ $parts == *" bisect "* ]]; then
  for f in .carry/bisect-*.xz; do
    b=/tmp/$(basename "$f" .xz); xz -dc "$f" > "$b"; chmod +x "$b"
    RUNS=${BISECT_RUNS:-2} WATCHDOG=6 BIN=$b ARGS="--transport ipc" bash scripts/gpu_check/stall_probe.sh "$out/$(basename "$b")" 2>&1 | grep stall_probe
  done
fi
