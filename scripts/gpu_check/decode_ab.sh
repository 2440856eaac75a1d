#!/usr/bin/env bash
# Decode, this build against an earlier one (.carry/qwen3-mpi-base.xz) in the same call, one GPU:
#   dense: Qwen3-8B shape (random weights, 4 query heads per KV head): decode ms/token at 1K and
#          16K context with each build, and whether their generated ids agree;
#   moe:   16 layers of Qwen3-30B-A3B's shape (8 per KV head): the same at 1K, and the
#          teacher-forced decode check (this build) after ~1K tokens;
#   small: the 0.6B shape (2 per KV head): the teacher-forced decode check after ~3K tokens.
#   scripts/gpu_check/decode_ab.sh OUTDIR     env: PARTS (default "dense moe small"), DENSE_LENGTHS,
#                                             BUDGET_S (420: a part that starts later is skipped)
# (It began as the eighth session's A/B of a persistent decode step against the chain of kernels;
# that step and its switch are in the history at 806e66d.)
# Results: OUTDIR/decode-ab.md; runs and logs in OUTDIR/decode-ab-runs.tar.xz.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/runs" "$out/logs"
source scripts/gpu_check/machine.sh
md="$out/decode-ab.md"; parts="${PARTS:-dense moe small}"; status=0; began=$(date +%s)
base=""; [ -f .carry/qwen3-mpi-base.xz ] && { base=/tmp/qwen3-mpi-base; xz -dc .carry/qwen3-mpi-base.xz > $base; chmod +x $base; }
late() { [ $(( $(date +%s) - began )) -gt "${BUDGET_S:-420}" ] && { echo "- $1: skipped (time budget)" >> "$md"; return 0; }; return 1; }
echo "# Decode, this build against the earlier one, $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" > "$md"
run() { # name new|base args...
  local name=$1 which=$2 b=$bin; shift 2
  if [ "$which" = base ]; then [ -n "$base" ] || return 0; b=$base; fi
  RUST_LOG=info timeout 180 mpirun -n 1 "$b" --json "$@" \
    > "$out/runs/$name.json" 2> "$out/logs/$name.err" ||
    { echo "- run $name failed: $(grep -m1 -iE 'error|panic' "$out/logs/$name.err" | cut -c1-300)" | tee -a "$md"; status=1; }
}
table() { # names whose -base and -new runs are compared
  [ -n "$base" ] || { echo "- no earlier build (.carry/qwen3-mpi-base.xz): this build's runs only" >> "$md"; return 0; }
  python3 - "$out/runs" "$@" <<'PY' >> "$md" 2>&1
import os, sys
sys.path.insert(0, "scripts/gpu_check")
from summarize import report
runs = sys.argv[1]
print("| run | earlier build ms/token | this build ms/token | this / earlier | ids equal |\n|---|---|---|---|---|")
for name in sys.argv[2:]:
    try:
        a, b = report(f"{runs}/{name}-base.json"), report(f"{runs}/{name}-new.json")
    except (SystemExit, OSError) as e:
        print(f"| {name} | {e} | | | |"); continue
    x, y = a["decode_ms_per_token_median"], b["decode_ms_per_token_median"]
    print(f"| {name} | {x:.2f} | {y:.2f} | {y / x:.3f} | {'yes' if a['generated_ids'] == b['generated_ids'] else 'NO'} |")
PY
}
if [[ $parts =~ dense ]]; then
  m=/tmp/qwen3-8b-random
  [ -f $m/config.json ] || python3 scripts/bench/hf_reference.py --out $m --tokenizer src/model/tiny --results "$out/runs" \
    --lengths "" --decode-lengths "" > "$out/logs/hf.log" 2>&1 || echo "- the 8B checkpoint failed" | tee -a "$md"
  for n in ${DENSE_LENGTHS:-1024 16384}; do
    # two rounds, in both orders
    for k in base new; do run "8b-$n-a-$k" $k --model $m --synthetic-prompt $n --max-new-tokens 65 --prefill-runs 1; done
    for k in new base; do run "8b-$n-b-$k" $k --model $m --synthetic-prompt $n --max-new-tokens 65 --prefill-runs 1; done
  done
  { echo; echo "## Qwen3-8B shape (random weights), decode"; } >> "$md"
  table $(for n in ${DENSE_LENGTHS:-1024 16384}; do echo 8b-$n-a 8b-$n-b; done)
fi
if [[ $parts =~ moe ]] && ! late "the MoE part"; then
  model=/tmp/qwen3-moe-16l-random; ref=/tmp/moe-ref-16l
  [ -f $model/config.json ] || python3 scripts/moe/make_moe_checkpoint.py --out $model --tokenizer src/model/tiny \
    --reference $ref --layers 16 --timing-lengths "" > "$out/logs/make-moe.log" 2>&1 || echo "- the MoE checkpoint failed" | tee -a "$md"
  for k in base new; do run "moe16-1024-a-$k" $k --model $model --synthetic-prompt 1024 --max-new-tokens 65; done
  for k in new base; do run "moe16-1024-b-$k" $k --model $model --synthetic-prompt 1024 --max-new-tokens 65; done
  { echo; echo "## 16 layers of Qwen3-30B-A3B's shape (random weights), decode"; } >> "$md"
  table moe16-1024-a moe16-1024-b
  python3 scripts/moe/decode_check.py prompt $ref/long.txt --tokens 1000
  run d-moe16-new new --model $model --prompt-file $ref/long.txt --max-new-tokens 24 --chunk-size 512
  { echo; echo "## the same, teacher-forced decode after ~1K tokens, this build"
    python3 scripts/moe/decode_check.py verify $model $ref/long.txt "$out"/runs/d-moe16-new.json 2>&1 | grep -v "Loading weights"; } >> "$md" 2>&1 || status=1
fi
if [[ $parts =~ small ]] && ! late "the 0.6B check"; then
  [ -d /tmp/model ] || python3 scripts/gpu_check/make_checkpoint.py --out /tmp/model --tokenizer src/model/tiny \
    --reference /tmp/ref > "$out/logs/checkpoint.log" 2>&1
  python3 scripts/gpu_check/decode_check.py prompt /tmp/ref/long.txt --tokens 3000
  run d-small-new new --model /tmp/model --prompt-file /tmp/ref/long.txt --max-new-tokens 24 --chunk-size 1024
  { echo; echo "## 0.6B shape, teacher-forced decode after ~3K tokens, this build"
    python3 scripts/gpu_check/decode_check.py verify /tmp/model /tmp/ref/long.txt "$out"/runs/d-small-new.json; } >> "$md" 2>&1 || status=1
fi
tar -C "$out" -cJf "$out/decode-ab-runs.tar.xz" runs logs && rm -rf "$out/runs" "$out/logs"
cat "$md"; exit $status
