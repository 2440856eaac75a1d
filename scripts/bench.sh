#!/usr/bin/env bash
# The GPU benchmark (issue 6): one call on the GPU machine. Random weights of the real Qwen3-8B
# shape (made there by transformers), then side by side on the same card and weights:
# transformers (sdpa, bf16) vs qwen3-mpi on one GPU; qwen3-mpi on 2 (and 3, 4) GPUs for every
# sync and transport; decode ms/token; peak GPU memory per rank (nvidia-smi).
#   scripts/bench.sh OUTDIR     env: LENGTHS (1 GPU, default 1024,4096,16384), MULTI (prompt of
#                               the multi-GPU runs, default 16384), LONG (4 GPUs, 32768), RUNS
#                               (prefill runs per job, 4), DEADLINE (epoch s; default 540 s on),
#                               HF_LENGTHS / HF_DECODE ("" skips transformers' runs), COMM=0,
#                               ONLY (a regex: only runs whose name matches), EXTRA_ARGS (added
#                               to every qwen3-mpi run, e.g. "--chunking balanced" for an A/B),
#                               BASE_BIN (a previous build: its 1K and AB_LENGTH runs as the
#                               same-call baseline), AB_LENGTH (16384: the A/B runs' prompt)
# Results: OUTDIR/bench.md (table), OUTDIR/traces.tar.xz (HDF5 of every run), logs.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/logs" "$out/traces" "$out/runs"
source scripts/gpu_check/machine.sh   # $bin, cudampi, NCCL on the library path, CUDA-aware Open MPI
gpus=$(nvidia-smi -L | wc -l)
lengths="${LENGTHS:-1024,4096,16384}"; multi="${MULTI:-16384}"; runs="${RUNS:-4}"
model=/tmp/qwen3-8b-random
nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader,nounits -lms 250 > "$out/logs/gpu-memory.csv" &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT

python3 scripts/bench/hf_reference.py --out $model --tokenizer src/model/tiny --results "$out/runs" \
  --lengths "${HF_LENGTHS-$lengths}" --decode-lengths "${HF_DECODE-1024,16384}" \
  > "$out/logs/hf.log" 2>&1 || { tail -5 "$out/logs/hf.log"; echo "transformers reference failed"; }

began=$(date +%s); deadline="${DEADLINE:-$(( began + ${BUDGET_S:-540} ))}"
run() { # name launcher ranks args...
  local name=$1 launcher=$2 n=$3; shift 3
  [[ "$name" =~ ${ONLY:-.} ]] || return 0
  if [ "$(date +%s)" -gt "$deadline" ]; then echo "run $name skipped (time budget)" >> "$out/logs/failures.txt"; return; fi
  echo "$name $(date +%s.%N) start" >> "$out/logs/windows.txt"
  RUST_LOG=info timeout 300 $launcher -n "$n" "${BIN_OVERRIDE:-$bin}" --model $model --json --max-new-tokens 17 --prefill-runs "${RUNS_OVERRIDE:-$runs}" \
    --trace "$out/traces/$name.h5" "$@" ${EXTRA_ARGS:-} > "$out/runs/$name.json" 2> "$out/logs/$name.err" ||
    echo "run $name failed: $(grep -m1 -i error "$out/logs/$name.err")" | tee -a "$out/logs/failures.txt"
  echo "$name $(date +%s.%N) end" >> "$out/logs/windows.txt"
}
for n in ${lengths//,/ }; do run "1gpu-$n" mpirun 1 --synthetic-prompt "$n"; done
# issue 14, one GPU: the layer's parts from the trace (--op-spans), our flash kernel against
# cuDNN, and the previous build (BASE_BIN) as the same-call baseline
ab="${AB_LENGTH:-16384}"
run "ab-$ab-op-spans" mpirun 1 --synthetic-prompt "$ab" --op-spans
QWEN3_MPI_ATTENTION=kernel run "ab-$ab-kernel" mpirun 1 --synthetic-prompt "$ab"
run "ab-$ab-chunk8192" mpirun 1 --synthetic-prompt "$ab" --chunk-size 8192
# the layer's four products through cuBLASLt (its heuristic, 32 MiB workspace) at every length
for n in ${lengths//,/ }; do QWEN3_MPI_DENSE_GEMM=lt run "ab-$n-dense-lt" mpirun 1 --synthetic-prompt "$n"; done
QWEN3_MPI_DECODE_GRAPH=0 run "ab-1024-decode-no-graph" mpirun 1 --synthetic-prompt 1024
# the decode step's kernels queued one after the other instead of overlapped
for n in 1024 "$ab"; do QWEN3_MPI_DECODE_OVERLAP=0 run "ab-$n-decode-no-overlap" mpirun 1 --synthetic-prompt "$n"; done
# each kernel of the first decode step, timed (a table in the run's log)
for n in 1024 "$ab"; do QWEN3_MPI_DECODE_PROFILE=1 RUNS_OVERRIDE=1 run "ab-$n-decode-profile" mpirun 1 --synthetic-prompt "$n"; done
if [ -n "${BASE_BIN:-}" ]; then
  for n in 1024 "$ab"; do BIN_OVERRIDE=$BASE_BIN run "ab-$n-previous-build" mpirun 1 --synthetic-prompt "$n"; done
fi
if [ "$gpus" -ge 2 ]; then
  for s in allgather ring; do
    run "2gpu-$multi-$s-nccl" mpirun 2 --synthetic-prompt "$multi" --sync $s --transport nccl
    run "2gpu-$multi-$s-device" $cudampi 2 --synthetic-prompt "$multi" --sync $s --transport device
    run "2gpu-$multi-$s-host" mpirun 2 --synthetic-prompt "$multi" --sync $s --transport host
    [ $s = allgather ] && run "2gpu-$multi-$s-ipc" mpirun 2 --synthetic-prompt "$multi" --sync $s --transport ipc
  done
fi
if [ "$gpus" -ge 3 ]; then
  run "3gpu-$multi-allgather-nccl" mpirun 3 --synthetic-prompt "$multi" --transport nccl
  run "3gpu-$multi-allgather-ipc" mpirun 3 --synthetic-prompt "$multi" --transport ipc
fi
if [ "$gpus" -ge 4 ]; then
  run "4gpu-$multi-allgather-nccl" mpirun 4 --synthetic-prompt "$multi" --transport nccl
  run "4gpu-$multi-allgather-device" $cudampi 4 --synthetic-prompt "$multi" --transport device
  run "4gpu-$multi-allgather-ipc" mpirun 4 --synthetic-prompt "$multi" --transport ipc
fi
[ "$gpus" -eq 2 ] && run "3ranks-2gpu-$multi-allgather-nccl" mpirun 3 --synthetic-prompt "$multi" --transport nccl
# issue 9: the longer prompt across four GPUs, against one GPU
if [ "$gpus" -ge 4 ] && [ -n "${LONG:-32768}" ]; then
  run "4gpu-${LONG:-32768}-allgather-nccl" mpirun 4 --synthetic-prompt "${LONG:-32768}" --transport nccl
  run "4gpu-${LONG:-32768}-allgather-ipc" mpirun 4 --synthetic-prompt "${LONG:-32768}" --transport ipc
  run "1gpu-${LONG:-32768}" mpirun 1 --synthetic-prompt "${LONG:-32768}"
fi
if [ "${COMM:-1}" != 0 ]; then
# the KV sync alone at the block sizes of these runs, and what limits the MPI transports here:
# CUDA IPC needs cudaMalloc'd memory (QWEN3_MPI_KV_ALLOC=malloc), host copies need CMA
comm() { # name transports [VAR=value...]
  local name=$1 transports=$2; shift 2
  timeout 100 env "$@" $cudampi -n 2 "$bin" bench-comm --sizes 4MiB,16MiB,64MiB --iters 10 --sync allgather \
    --transport "$transports" --trace "$out/traces/$name.h5" --json > "$out/runs/$name.txt" 2> "$out/logs/$name.err" ||
    echo "$name failed" >> "$out/logs/failures.txt"
}
comm comm-2-pool device,host,nccl
comm comm-2-ipc ipc,nccl
comm comm-2-malloc device QWEN3_MPI_KV_ALLOC=malloc
comm comm-2-cma host OMPI_MCA_btl_vader_single_copy_mechanism=cma
fi
kill $smi 2>/dev/null
python3 scripts/bench/report.py "$out" > "$out/bench.md" 2> "$out/logs/report.err" || cat "$out/logs/report.err"
tar -C "$out" -cJf "$out/traces.tar.xz" traces && tar -C "$out" -cJf "$out/runs-and-logs.tar.xz" runs logs &&
  rm -rf "$out/traces" "$out/runs" "$out/logs"
cat "$out/bench.md"
