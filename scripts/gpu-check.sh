#!/usr/bin/env bash
# GPU check: one call on a machine with two or more GPUs. Makes a random Qwen3-0.6B-shaped
# checkpoint with the transformers there and checks our bf16 logits against transformers' (1 GPU),
# then the generated ids on 2, 3 and 4 GPUs for every sync and transport against the 1-GPU run;
# then times the KV sync alone (`qwen3-mpi bench-comm`, beside PyTorch's NCCL all_gather) and
# a long prompt through every transport. Results: $OUT/gpu-check.md, traces and logs (tarred).
#   scripts/gpu-check.sh [OUTDIR]    (binary: target/cuda/release/qwen3-mpi or .carry/qwen3-mpi.xz,
#                                     both from scripts/build-cuda.sh)
#   env: ONLY_TIMING=1 skips the correctness runs; COMM=0 skips the KV-sync microbenchmark;
#        ONLY=REGEX runs only the runs whose name matches (p*-1gpu are the references: keep them);
#        COMM_TRANSPORTS, COMM_SIZES: what bench-comm times (default every transport, 1-64 MiB);
#        no run starts after DEADLINE (epoch seconds; default BUDGET_S=540 seconds from the start).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/logs" "$out/runs" "$out/traces"
began=$(date +%s); deadline="${DEADLINE:-$(( began + ${BUDGET_S:-540} ))}"
md="$out/gpu-check.md"; gc=scripts/gpu_check
source $gc/machine.sh
gpus=$(nvidia-smi -L | wc -l)
status=0
{ echo "# GPU check, $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; } > "$md"
ldd "$bin" > "$out/logs/ldd.txt"; grep "not found" "$out/logs/ldd.txt" && { echo "missing libraries" | tee -a "$md"; exit 1; }

# 1. CUDA-aware Open MPI (machine.sh unpacked the committed build; else build it from source)
if [ ! -x /opt/ompi-cuda/bin/mpirun ]; then
  tar xf .carry/openmpi_4.1.4.orig.tar.xz -C /tmp && (cd /tmp/openmpi-4.1.4 &&
    ./configure --prefix=/opt/ompi-cuda --with-cuda=/usr/local/cuda --without-ucx --disable-mpi-fortran --disable-io-romio \
      --disable-oshmem > "$out/logs/ompi-configure.log" 2>&1 && make -j32 install > "$out/logs/ompi-make.log" 2>&1) ||
    { echo "CUDA-aware Open MPI build failed" | tee -a "$md"; status=1; }
  tar -C /opt -cJf "$out/ompi-cuda.tar.xz" --exclude=share/man --exclude=share/doc ompi-cuda
fi
echo "CUDA-aware Open MPI: $(/opt/ompi-cuda/bin/ompi_info --parsable --all 2>/dev/null | grep -m1 mpi_built_with_cuda_support:value)" >> "$md"

# 2. Checkpoint and transformers reference
python3 $gc/make_checkpoint.py --out /tmp/model --tokenizer src/model/tiny --reference /tmp/ref > "$out/logs/checkpoint.log" 2>&1 ||
  { tail -5 "$out/logs/checkpoint.log"; echo "checkpoint failed" | tee -a "$md"; exit 1; }

run() { # name launcher ranks args...
  local name=$1 launcher=$2 n=$3 t0; shift 3; t0=$(date +%s.%N)
  if [ "$n" -gt "$gpus" ] && [ "$n" -ne 3 ]; then return; fi
  [[ "$name" =~ ${ONLY:-.} ]] || return 0
  if [ "$(date +%s)" -gt "$deadline" ]; then echo "- $name: skipped (time budget)" >> "$md"; return; fi
  RUST_LOG=info timeout 120 $launcher -n "$n" "$bin" --model "${MODEL:-/tmp/model}" --json --trace "$out/traces/$name.h5" "$@" \
    > "$out/runs/$name.json" 2> "$out/logs/$name.err" ||
    { echo "run $name failed: $(grep -m1 -i error "$out/logs/$name.err")" | tee -a "$md"; status=1; }
  echo "- $name: $(awk "BEGIN{print $(date +%s.%N) - $t0}") s wall" >> "$md"
}
# 3. Correctness: logits vs transformers (1 GPU), ids across ranks, syncs, transports
if [ -z "${ONLY_TIMING:-}" ]; then
  for i in 0 1 2 3; do run "p$i-1gpu" mpirun 1 --prompt-file /tmp/ref/prompt-$i.txt --max-new-tokens 16 --dump "$out/runs/p$i"; done
  { echo; echo "## bf16 logits vs transformers bf16 (1 GPU)"; python3 $gc/compare.py /tmp/ref "$out/runs" 4; } >> "$md" 2>&1 || status=1
  rm -f "$out"/runs/p*/kv-rank*.safetensors
  p=(--prompt-file /tmp/ref/prompt-1.txt --max-new-tokens 16 --chunk-size 5)
  for s in allgather ring; do
    run "p1-2gpu-$s-host" mpirun 2 "${p[@]}" --sync $s --transport host
    run "p1-2gpu-$s-device" $cudampi 2 "${p[@]}" --sync $s --transport device
    run "p1-2gpu-$s-nccl" mpirun 2 "${p[@]}" --sync $s --transport nccl
    [ $s = allgather ] && run "p1-2gpu-$s-ipc" mpirun 2 "${p[@]}" --sync $s --transport ipc   # ipc has no ring
  done
  QWEN3_MPI_KV_ALLOC=malloc run "p1-2gpu-allgather-device-malloc" $cudampi 2 "${p[@]}" --transport device
  # three ranks: on three GPUs, or two of them sharing one GPU on a two-GPU machine
  run p1-3ranks-allgather-nccl mpirun 3 "${p[@]}" --transport nccl
  run p1-3ranks-ring-device $cudampi 3 "${p[@]}" --sync ring --transport device
  run p1-3ranks-allgather-host mpirun 3 "${p[@]}" --transport host
  run p1-3ranks-allgather-ipc mpirun 3 "${p[@]}" --transport ipc
  run p1-3ranks-auto mpirun 3 "${p[@]}"   # the users' command: the transport `auto` picks
  run p1-4gpu-allgather-device $cudampi 4 "${p[@]}" --transport device
  run p1-4gpu-ring-nccl mpirun 4 "${p[@]}" --sync ring --transport nccl
  run p1-4gpu-allgather-host mpirun 4 "${p[@]}" --transport host
  run p1-4gpu-allgather-ipc mpirun 4 "${p[@]}" --transport ipc
  # decode over a long cache (flash-decode kernel, many key splits) and 128-row prefill tiles,
  # each generated token against transformers' greedy choice for the same prefix
  python3 $gc/decode_check.py prompt /tmp/ref/long.txt --tokens 3000
  d=(--prompt-file /tmp/ref/long.txt --max-new-tokens 24 --chunk-size 1024)
  run d-1gpu mpirun 1 "${d[@]}"
  # 1,100-token chunks: 128-row query tiles whose chunk starts off a tile boundary
  run d-1gpu-chunk1100 mpirun 1 --prompt-file /tmp/ref/long.txt --max-new-tokens 24 --chunk-size 1100
  QWEN3_MPI_ATTENTION=reference run d-1gpu-reference-attention mpirun 1 "${d[@]}"
  run d-2gpu-allgather-nccl mpirun 2 "${d[@]}" --transport nccl
  run d-4gpu-allgather-ipc mpirun 4 "${d[@]}" --transport ipc
  { echo; echo "## Decode after a long prompt vs transformers (teacher-forced greedy)"
    python3 $gc/decode_check.py verify /tmp/model /tmp/ref/long.txt "$out"/runs/d-[0-9]*.json; } >> "$md" 2>&1 || status=1
  # the same with 4 query heads per KV head (Qwen3-4B/8B's grouping): 8 layers, 32 heads
  if [[ "d-g4-1gpu" =~ ${ONLY:-.} ]] && python3 $gc/make_checkpoint.py --out /tmp/model-g4 --tokenizer src/model/tiny \
      --reference /tmp/ref-g4 --heads 32 --layers 8 > "$out/logs/checkpoint-g4.log" 2>&1; then
    MODEL=/tmp/model-g4 run d-g4-1gpu mpirun 1 "${d[@]}"
    MODEL=/tmp/model-g4 run d-g4-2gpu-allgather-ipc mpirun 2 "${d[@]}" --transport ipc
    { echo; echo "## Decode with 4 query heads per KV head vs transformers"
      python3 $gc/decode_check.py verify /tmp/model-g4 /tmp/ref/long.txt "$out"/runs/d-g4-*.json; } >> "$md" 2>&1 || status=1
  fi
  { echo; echo "## Generated ids across rank counts, syncs and transports"
    python3 $gc/summarize.py ids "$out/runs/p1-1gpu.json" "$out"/runs/p1-[234]*.json; } >> "$md" 2>&1 || status=1
fi

# 4. The KV sync alone: one layer's block per rank (chunk 256..16K tokens of Qwen3-8B's K/V)
sizes=${COMM_SIZES:-1MiB,2MiB,4MiB,8MiB,16MiB,64MiB}
for n in 2 4; do
  [ "$n" -gt "$gpus" ] || [ "${COMM:-1}" = 0 ] && continue
  timeout 120 $cudampi -n $n "$bin" bench-comm --sizes $sizes --transport "${COMM_TRANSPORTS:-device,nccl,ipc,host}" --sync allgather,ring \
    --trace "$out/traces/bench-comm-$n.h5" --json > "$out/runs/bench-comm-$n.txt" 2> "$out/logs/bench-comm-$n.err" ||
    { echo "bench-comm -n $n failed: $(grep -m1 -i error "$out/logs/bench-comm-$n.err")" | tee -a "$md"; status=1; }
  bytes=$(python3 -c "print(','.join(str(int(s[:-3]) << 20) for s in '$sizes'.split(',')))")
  timeout 120 torchrun --nproc-per-node $n scripts/bench/nccl_allgather.py --sizes "$bytes" --out "$out/runs/torch-nccl-$n.json" \
    > "$out/logs/torch-nccl-$n.log" 2>&1 || echo "torch NCCL baseline -n $n failed" | tee -a "$md"
done
[ "${COMM:-1}" = 0 ] || { echo; echo "## KV sync alone (bench-comm) beside PyTorch NCCL all_gather"; python3 $gc/summarize.py comm "$out"/runs/bench-comm-*.txt "$out"/runs/torch-nccl-*.json; } >> "$md" 2>&1

# 5. A long prompt through every transport (8192 tokens in 1024-token chunks, warm second run)
t=(--synthetic-prompt "${TIMING_TOKENS:-8192}" --chunk-size "${TIMING_CHUNK:-1024}" --max-new-tokens 4 --prefill-runs 2)
run t-1gpu mpirun 1 "${t[@]}"
QWEN3_MPI_ATTENTION=reference run t-1gpu-reference-attention mpirun 1 "${t[@]}"
for tr in nccl device host ipc; do
  launcher=mpirun; [ $tr = device ] && launcher=$cudampi
  run "t-2gpu-allgather-$tr" $launcher 2 "${t[@]}" --transport $tr
done
run t-2gpu-ring-nccl mpirun 2 "${t[@]}" --sync ring --transport nccl
run t-4gpu-allgather-nccl mpirun 4 "${t[@]}" --transport nccl
run t-4gpu-allgather-ipc mpirun 4 "${t[@]}" --transport ipc
{ echo; echo "## Long-prompt timing"; python3 $gc/summarize.py timing "$out"/runs/t-*.json; } >> "$md" 2>&1
echo "total: $(( $(date +%s) - began )) s" >> "$md"
tar -C "$out" -cJf "$out/traces.tar.xz" traces && tar -C "$out" -cJf "$out/runs-and-logs.tar.xz" runs logs &&
  rm -rf "$out/runs" "$out/logs" "$out/traces"
cat "$md"; exit $status
