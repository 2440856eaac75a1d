#!/usr/bin/env bash
# Hidden-state hand-offs (issue 19): 8 MiB hops between ranks sharing the GPU, through host
# memory and through CUDA IPC, same call. The 0.6B-shaped checkpoint (hidden 1024, bf16) with
# 4,096-token chunks makes each hop 8 MiB; 2 and 3 ranks, RUNS runs each (3) of host, ipc and
# device (MPI on GPU memory, the CUDA-aware Open MPI of machine.sh), the generated
# ids of every run against one rank's, the hop latencies from the traces (qwen3_traces.handoffs).
# With --decode pipeline (no background weight load, no KV sync): the hand-off is the same, and
# that mode never showed the multi-rank stall (results/gpu-check/2026-12-01-session4.md).
# The runs' traces, reports and logs end up in OUTDIR/hops-runs.tar.xz (the device returns 8 files).
#   scripts/gpu_check/handoff_hops.sh OUTDIR     env: RUNS (3), TOKENS (16384), CHUNK (4096)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out=${1:?give an output folder}; mkdir -p "$out"
source scripts/gpu_check/machine.sh
[ -d /tmp/model ] || python3 scripts/gpu_check/make_checkpoint.py --out /tmp/model --tokenizer src/model/tiny --reference /tmp/ref > "$out/checkpoint.log" 2>&1
tokens=${TOKENS:-16384}; chunk=${CHUNK:-4096}
job() { # job NAME RANKS ARGS...: one run, its JSON report and trace (LAUNCHER: $cudampi for device)
  local name=$1 n=$2; shift 2
  RUST_LOG=warn timeout 60 ${LAUNCHER:-mpirun} -n "$n" "$bin" --model /tmp/model --synthetic-prompt "$tokens" --chunk-size "$chunk" \
    --max-new-tokens 8 --decode pipeline --timeout 30 --json --trace "$out/$name.h5" "$@" > "$out/$name.json" 2> "$out/$name.err" ||
    echo "$name failed: $(grep -m1 -iE 'error|panic' "$out/$name.err" | cut -c1-250)"
}
job one 1
for n in 2 3; do
  for i in $(seq 1 "${RUNS:-3}"); do
    job "n$n-host-$i" "$n" --transport ipc --hidden-transport host
    job "n$n-ipc-$i" "$n" --transport ipc --hidden-transport ipc
    # MPI from GPU memory to GPU memory: the CUDA-aware Open MPI built for the machine
    LAUNCHER=$cudampi job "n$n-device-$i" "$n" --transport ipc --hidden-transport device
  done
done
# one run with the layers' parts timed on the GPU (--op-spans): where the next chunk's first
# layer waits while the previous chunk's hop is under way (it ran 0.91 ms instead of 0.41)
job "n2-ipc-ops" 2 --transport ipc --hidden-transport ipc --op-spans
# The same under CUDA MPS, where the machine has its daemon: the ranks' kernels and copies then
# run side by side on the one GPU instead of taking turns by time slice, so a hop's latency is
# the path's own, nearer what it is between two GPUs (the daemon is stopped before the table).
if command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d; then
    trap 'echo quit | nvidia-cuda-mps-control' EXIT
    for n in 2 3; do
      for i in $(seq 1 "${RUNS:-3}"); do
        job "n$n-mps-ipc-$i" "$n" --transport ipc --hidden-transport ipc
        job "n$n-mps-host-$i" "$n" --transport ipc --hidden-transport host
      done
    done
    echo quit | nvidia-cuda-mps-control; trap - EXIT
  else
    echo "handoff_hops: nvidia-cuda-mps-control -d failed: no runs under MPS"
  fi
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
else
  echo "handoff_hops: no nvidia-cuda-mps-control on this machine: no runs under MPS"
fi
python3 - "$out" <<'PY'
import json, pathlib, sys
sys.path.insert(0, "results")
import numpy as np, qwen3_traces as q
out = pathlib.Path(sys.argv[1])
def report(name):
    try:
        return json.loads((out / f"{name}.json").read_text().strip().splitlines()[-1])
    except Exception:
        return None
one = report("one")
print("| run | hidden transport | ids equal one rank | hops | 8 MiB hop latency median / max ms | of which: copy on the GPU / until the send is posted / message, median ms | TTFT s |")
print("|---|---|---|---|---|---|---|")
for path in sorted(out.glob("n*.h5")):
    r = report(path.stem)
    if r is None:
        print(f"| {path.stem} | - | failed | | | | |"); continue
    hops = q.handoffs(q.load(path)).dropna(subset=["latency_s"])
    lat = hops["latency_s"] * 1e3
    stats = f"{lat.median():.3f} / {lat.max():.3f}" if len(lat) else "no waiting receiver"
    parts = " / ".join(f"{hops[c].median() * 1e3:.3f}" for c in ("copy_s", "post_s", "message_s")) if len(lat) else ""
    same = one is not None and r["generated_ids"] == one["generated_ids"]
    print(f"| {path.stem} | {r.get('hidden_transport')} | {'yes' if same else 'NO'} | {len(hops)} | {stats} | {parts} | {r['ttft_s']:.4f} |")
PY
# only what this script wrote (one, n*-*: traces, reports, logs)
(cd "$out" && tar -cJf hops-runs.tar.xz one.* n[23]-* && rm -f one.* n[23]-*)
