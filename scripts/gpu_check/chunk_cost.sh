#!/usr/bin/env bash
# The chunk cost model's GPU rates (issue 19, src/schedule/chunk_cost.rs), refitted on this
# card: one rank, a 16K prompt cut into chunks of 128 to 4,096 tokens, every run's trace, then
# `qwen3-mpi trace fit-cost` (products' speed by chunk length, attention, fixed cost). The
# 8B shape first (what DeviceRates::GPU was fitted on), then the 0.6B shape (hidden 1024: is
# the fill rows' scaling with the width, 4096 / hidden, right?).
# The traces and logs end up in OUTDIR/chunk-cost-traces.tar.xz (the device returns 8 files).
#   scripts/gpu_check/chunk_cost.sh OUTDIR     env: SHAPES ("8b 0.6b"), CHUNKS, TOKENS (16384)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out=${1:?give an output folder}; mkdir -p "$out"
source scripts/gpu_check/machine.sh
tokens=${TOKENS:-16384}
for shape in ${SHAPES:-8b 0.6b}; do
  case $shape in
    8b) model=/tmp/qwen3-8b-random
        [ -f $model/config.json ] || python3 scripts/bench/hf_reference.py --out $model --tokenizer src/model/tiny \
          --results "$out/hf" --lengths "" --decode-lengths "" > "$out/make-8b.log" 2>&1 ;;
    0.6b) model=/tmp/model
        [ -d $model ] || python3 scripts/gpu_check/make_checkpoint.py --out $model --tokenizer src/model/tiny \
          --reference /tmp/ref > "$out/make-0.6b.log" 2>&1 ;;
  esac
  traces=()
  for chunk in ${CHUNKS:-128 256 512 1024 2048 4096}; do
    t="$out/$shape-chunk$chunk.h5"
    timeout 120 mpirun -n 1 "$bin" --model $model --synthetic-prompt "$tokens" --chunk-size "$chunk" \
      --max-new-tokens 2 --prefill-runs 2 --trace "$t" > /dev/null 2> "$out/$shape-chunk$chunk.err" &&
      traces+=("$t") || echo "$shape chunk $chunk failed: $(grep -m1 -iE 'error|panic' "$out/$shape-chunk$chunk.err" | cut -c1-200)"
  done
  echo "## $shape shape, $tokens tokens, one rank ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
  [ ${#traces[@]} -gt 0 ] && "$bin" trace fit-cost "${traces[@]}"
done
# one file for the traces and logs, however many runs there were
(cd "$out" && ls *-chunk*.h5 > /dev/null 2>&1 && tar -cJf chunk-cost-traces.tar.xz *-chunk*.h5 *-chunk*.err && rm -f *-chunk*.h5 *-chunk*.err)
