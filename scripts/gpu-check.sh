#!/usr/bin/env bash
# GPU check: one call on a machine with two GPUs. Builds a CUDA-aware Open MPI from Debian's
# source (tarball carried in .carry/), makes a random Qwen3-0.6B-shaped checkpoint with the
# transformers there, and checks our bf16 logits against transformers', 1 GPU vs 2 GPUs, every
# sync strategy and transport; then times the KV sync. Results: $OUT/gpu-check.md and logs.
#   scripts/gpu-check.sh [OUTDIR]    (binary: target/cuda/release/qwen3-mpi or .carry/qwen3-mpi.xz,
#                                     both from scripts/build-cuda.sh)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/logs" "$out/runs"
bin="$repo/target/cuda/release/qwen3-mpi"
if [ ! -x "$bin" ] && [ -f .carry/qwen3-mpi.xz ]; then bin=/tmp/qwen3-mpi; xz -dc .carry/qwen3-mpi.xz > $bin; chmod +x $bin; fi
md="$out/gpu-check.md"; gc=scripts/gpu_check
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 RUST_LOG=warn
status=0
{ echo "# GPU check, $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; } > "$md"
# NCCL comes with PyTorch's wheels there, outside the loader's default path
if ldd "$bin" | grep -q "libnccl.so.2 => not found"; then
  nccl_lib="$(find / -xdev -name libnccl.so.2 2>/dev/null | head -n 1)"
  [ -n "$nccl_lib" ] && export LD_LIBRARY_PATH="$(dirname "$nccl_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "NCCL: ${nccl_lib:-not found}" >> "$md"
fi
ldd "$bin" > "$out/logs/ldd.txt"; grep "not found" "$out/logs/ldd.txt" && { echo "missing libraries" | tee -a "$md"; exit 1; }

# 1. CUDA-aware Open MPI 4.1.4 (ABI-compatible with the 4.1 our binary links). To rebuild, carry
#    Debian's source: `apt-get source --download-only openmpi` (deb-src entry) into .carry/.
t0=$(date +%s)
# A build from an earlier call is committed (scripts/gpu_check/ompi-cuda-4.1.4.tar.xz: Open MPI
# 4.1.4 --with-cuda=/usr/local/cuda, built on the GPU machine's image by the branch below).
for cached in .carry/ompi-cuda.tar.xz scripts/gpu_check/ompi-cuda-4.1.4.tar.xz; do
  [ ! -x /opt/ompi-cuda/bin/mpirun ] && [ -f "$cached" ] && tar xJf "$cached" -C /opt
done
if [ ! -x /opt/ompi-cuda/bin/mpirun ]; then
  tar xf .carry/openmpi_4.1.4.orig.tar.xz -C /tmp && (cd /tmp/openmpi-4.1.4 &&
    ./configure --prefix=/opt/ompi-cuda --with-cuda=/usr/local/cuda --without-ucx --disable-mpi-fortran --disable-io-romio \
      --disable-oshmem > "$out/logs/ompi-configure.log" 2>&1 && make -j32 install > "$out/logs/ompi-make.log" 2>&1) ||
    { echo "CUDA-aware Open MPI build failed" | tee -a "$md"; status=1; }
  # keep the build: carried back, it saves the next call four minutes
  tar -C /opt -cJf "$out/ompi-cuda.tar.xz" --exclude=share/man --exclude=share/doc ompi-cuda
fi
echo "CUDA-aware Open MPI: $(( $(date +%s) - t0 )) s; $(/opt/ompi-cuda/bin/ompi_info --parsable --all 2>/dev/null | grep -m1 mpi_built_with_cuda_support:value)" | tee -a "$md"
cudampi() { env LD_LIBRARY_PATH="/opt/ompi-cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" OPAL_PREFIX=/opt/ompi-cuda /opt/ompi-cuda/bin/mpirun "$@"; }

# 2. Checkpoint and transformers reference
python3 $gc/make_checkpoint.py --out /tmp/model --tokenizer src/model/tiny --reference /tmp/ref > "$out/logs/checkpoint.log" 2>&1 ||
  { tail -5 "$out/logs/checkpoint.log"; echo "checkpoint failed" | tee -a "$md"; exit 1; }

run() { # name launcher ranks args...
  local name=$1 launcher=$2 n=$3 t0; shift 3; t0=$(date +%s.%N)
  RUST_LOG=info $launcher -n "$n" "$bin" --model /tmp/model --json "$@" > "$out/runs/$name.json" 2> "$out/logs/$name.err" ||
    { echo "run $name failed: $(grep -m1 error "$out/logs/$name.err")" | tee -a "$md"; status=1; }
  echo "- $name: $(awk "BEGIN{print $(date +%s.%N) - $t0}") s wall" >> "$md"
}
# 3. Correctness: logits vs transformers (1 GPU), ids across ranks, syncs, transports
if [ -z "${ONLY_TIMING:-}" ]; then
for i in ${PROMPTS:-0 1 2 3}; do run "p$i-1gpu" mpirun 1 --prompt-file /tmp/ref/prompt-$i.txt --max-new-tokens 16 --dump "$out/runs/p$i"; done
[ -z "${PROMPTS:-}" ] && { { echo; echo "## bf16 logits vs transformers bf16 (1 GPU)"; python3 $gc/compare.py /tmp/ref "$out/runs" 4; } >> "$md" 2>&1 || status=1; }
p=(--prompt-file /tmp/ref/prompt-1.txt --max-new-tokens 16 --chunk-size 5)
for s in allgather ring; do
  run "p1-2gpu-$s-host" mpirun 2 "${p[@]}" --sync $s --transport host
  run "p1-2gpu-$s-device" cudampi 2 "${p[@]}" --sync $s --transport device
  QWEN3_MPI_KV_ALLOC=malloc run "p1-2gpu-$s-device-malloc" cudampi 2 "${p[@]}" --sync $s --transport device
  run "p1-2gpu-$s-nccl" mpirun 2 "${p[@]}" --sync $s --transport nccl
done
run p1-3ranks-2gpu-allgather-device cudampi 3 "${p[@]}" --transport device
{ echo; echo "## Generated ids across rank counts, syncs and transports"; python3 $gc/summarize.py ids "$out/runs/p1-1gpu.json" "$out"/runs/p1-2gpu-*.json "$out"/runs/p1-3ranks*.json; } >> "$md" 2>&1 || status=1
fi

# 4. KV-sync timing: a long synthetic prompt (default 8192 tokens in 1024-token chunks)
t=(--synthetic-prompt "${TIMING_TOKENS:-8192}" --chunk-size "${TIMING_CHUNK:-1024}" --max-new-tokens 4)
run t-1gpu mpirun 1 "${t[@]}"
for s in ${SYNCS:-allgather ring}; do
  run "t-2gpu-$s-host" mpirun 2 "${t[@]}" --sync $s --transport host
  run "t-2gpu-$s-device" cudampi 2 "${t[@]}" --sync $s --transport device
  QWEN3_MPI_KV_ALLOC=malloc run "t-2gpu-$s-device-malloc" cudampi 2 "${t[@]}" --sync $s --transport device
  run "t-2gpu-$s-nccl" mpirun 2 "${t[@]}" --sync $s --transport nccl
done
# the pipelined host staging at other piece sizes (default 1 MiB per rank per piece)
for pb in 262144 4194304; do
  QWEN3_MPI_STAGE_PIECE_BYTES=$pb run "t-2gpu-allgather-host-piece$pb" mpirun 2 "${t[@]}" --sync allgather --transport host
done
{ echo; echo "## KV sync timing"; python3 $gc/summarize.py timing "$out"/runs/t-*.json; } >> "$md" 2>&1
# everything else in one file (the tool returns a few files only)
tar -C "$out" -cJf "$out/runs-and-logs.tar.xz" runs logs && rm -rf "$out/runs" "$out/logs"
cat "$md"; exit $status
