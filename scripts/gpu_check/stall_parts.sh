#!/usr/bin/env bash
# The multi-rank stall (results/gpu-check/2026-12-01-session4.md, -session6.md), one device
# call: the run-time switches against each other in the same call, then where the threads of a
# stalled job are. 3 ranks share the GPU, --transport ipc and --decode redundant unless said.
#   switches  default (the weight load beside the prefill staged through page-locked buffers on
#             its own stream, the default since session 6, when it stalled 0 runs of 3 and
#             candle's plain upload 3 of 3); QWEN3_MPI_WEIGHT_LOAD=during (that plain upload:
#             the control, which should stall); QWEN3_MPI_WEIGHT_LOAD=after (no load beside the
#             prefill); --decode pipeline (neither the load nor the KV sync); every flag left to
#             its default (ranks sharing the GPU decode pipelined under auto); --transport host;
#             --transport host --sync ring; RUNS runs each (4), WATCHDOG s (6)
#   dump      scripts/gpu_check/stall_dump.sh: threads, system calls, stacks of a stalled job
#   coldjit   candle's PTX compiled on an empty JIT cache: one rank, then 3 ranks sharing the GPU
#             (each starts at another module), each rank's "GPU kernels loaded" line
#   scripts/gpu_check/stall_parts.sh OUT      env: PARTS ("switches dump")
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out=${1:?}; mkdir -p "$out"
source scripts/gpu_check/machine.sh
parts=" ${PARTS:-switches dump} "
if [[ $parts == *" switches "* ]]; then
  v() { # v NAME: RUNS runs with the caller's environment; a stalled run costs WATCHDOG + 8 s at most
    RUNS=${RUNS:-4} WATCHDOG=${WATCHDOG:-6} SLACK=8 bash scripts/gpu_check/stall_probe.sh "$out/$1" 2>&1 < /dev/null |
      grep "^stall_probe" | sed "s/^/$1: /"
  }
  # redundant decode asked for: ranks sharing a GPU decode pipelined under
  # auto, and the stall was seen with the background load and the KV sync of redundant decode
  r="--decode redundant"
  ARGS="--transport ipc $r" v default
  QWEN3_MPI_WEIGHT_LOAD=during ARGS="--transport ipc $r" v load-during
  QWEN3_MPI_WEIGHT_LOAD=after ARGS="--transport ipc $r" v load-after
  ARGS="--transport ipc --decode pipeline" v decode-pipeline
  ARGS="" v auto-defaults
  ARGS="--transport host $r" v host
  ARGS="--transport host --sync ring $r" v host-ring
fi
if [[ $parts == *" coldjit "* ]]; then
  for n in 1 3; do
    rm -rf /tmp/cold-jit && mkdir -p /tmp/cold-jit
    CUDA_CACHE_PATH=/tmp/cold-jit RUST_LOG=info timeout 120 mpirun -n $n "$bin" --model tiny --max-new-tokens 2 2>&1 < /dev/null |
      grep "kernels loaded" | sed "s/^/cold cache, $n ranks: /" | cut -c1-200
  done
fi
if [[ $parts == *" dump "* ]]; then
  ATTEMPTS=3 DUMP_AFTER=6 timeout 200 bash scripts/gpu_check/stall_dump.sh "$out/dump" > "$out/dump.txt" 2>&1 < /dev/null
  pkill -9 -f "^$bin" ; pkill -9 cuda-gdb
  grep -vE "DEBUG|TRACE" "$out/dump.txt" | cut -c1-300 | head -80
fi
