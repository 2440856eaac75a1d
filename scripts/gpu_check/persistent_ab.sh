#!/usr/bin/env bash
# The persistent decode step (QWEN3_MPI_DECODE_KERNEL=persistent, src/model/decode_persistent.rs)
# against the chain of kernels (the default), same binary, one call on one GPU:
#   1. Qwen3-8B shape (random weights, 4 query heads per KV head): decode ms/token at 1K and 16K
#      context with each, and whether their generated ids agree;
#   2. the 0.6B shape (2 per KV head): the teacher-forced decode check after ~3K tokens with it on;
#   3. Qwen3-30B-A3B shape (MoE, 8 per KV head): decode ms/token at 1K with each, the ids, and the
#      teacher-forced check after ~1K tokens with it on.
#   With .carry/qwen3-mpi-base.xz (an earlier build) its chain runs too, as the same-call baseline.
#   scripts/gpu_check/persistent_ab.sh OUTDIR      env: PARTS (default "dense moe small"),
#                                                  BUDGET_S (420: a part that starts later is skipped)
# Results: OUTDIR/persistent-ab.md; runs and logs in OUTDIR/persistent-ab-runs.tar.xz.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/runs" "$out/logs"
source scripts/gpu_check/machine.sh
md="$out/persistent-ab.md"; parts="${PARTS:-dense moe small}"; status=0; began=$(date +%s)
base=""; [ -f .carry/qwen3-mpi-base.xz ] && { base=/tmp/qwen3-mpi-base; xz -dc .carry/qwen3-mpi-base.xz > $base; chmod +x $base; }
late() { [ $(( $(date +%s) - began )) -gt "${BUDGET_S:-420}" ] && { echo "- $1: skipped (time budget)" >> "$md"; return 0; }; return 1; }
echo "# Persistent decode step against the chain, $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" > "$md"
run() { # name kernel|base args...
  local name=$1 kernel=$2 b=$bin; shift 2
  if [ "$kernel" = base ]; then [ -n "$base" ] || return 0; b=$base; kernel=chain; fi
  QWEN3_MPI_DECODE_KERNEL=$kernel RUST_LOG=info timeout 180 mpirun -n 1 "$b" --json "$@" \
    > "$out/runs/$name.json" 2> "$out/logs/$name.err" ||
    { echo "- run $name failed: $(grep -m1 -iE 'error|panic' "$out/logs/$name.err" | cut -c1-300)" | tee -a "$md"; status=1; }
}
table() { # pairs of runs: name-chain name-persistent ...
  python3 - "$out/runs" "$@" <<'PY' >> "$md" 2>&1
import sys
sys.path.insert(0, "scripts/gpu_check")
from summarize import report
runs = sys.argv[1]
import os
print("| run | earlier build's chain ms/token | chain ms/token | persistent ms/token | persistent / chain | ids: chain = persistent | ids: chain = earlier |")
print("|---|---|---|---|---|---|---|")
for name in sys.argv[2:]:
    try:
        a, b = report(f"{runs}/{name}-chain.json"), report(f"{runs}/{name}-persistent.json")
    except SystemExit as e:
        print(f"| {name} | | {e} | | | | |"); continue
    old = report(f"{runs}/{name}-base.json") if os.path.exists(f"{runs}/{name}-base.json") else None
    x, y = a["decode_ms_per_token_median"], b["decode_ms_per_token_median"]
    same = a["generated_ids"] == b["generated_ids"]
    o = f"{old['decode_ms_per_token_median']:.2f}" if old else "-"
    same_old = ("yes" if old["generated_ids"] == a["generated_ids"] else "NO") if old else "-"
    print(f"| {name} | {o} | {x:.2f} | {y:.2f} | {y / x:.3f} | {'yes' if same else 'NO'} | {same_old} |")
PY
}
if [[ $parts =~ dense ]]; then
  m=/tmp/qwen3-8b-random
  [ -f $m/config.json ] || python3 scripts/bench/hf_reference.py --out $m --tokenizer src/model/tiny --results "$out/runs" \
    --lengths "" --decode-lengths "" > "$out/logs/hf.log" 2>&1 || echo "- the 8B checkpoint failed" | tee -a "$md"
  for n in 1024 16384; do
    for k in base chain persistent; do run "8b-$n-$k" $k --model $m --synthetic-prompt $n --max-new-tokens 65 --prefill-runs 1; done
  done
  { echo; echo "## Qwen3-8B shape (random weights), decode"; } >> "$md"
  table 8b-1024 8b-16384
  grep -h "persistent kernel of" "$out"/logs/8b-1024-persistent.err | head -1 >> "$md"
fi
if [[ $parts =~ moe ]] && ! late "the MoE part"; then
  model=/dev/shm/qwen3-30b-a3b-random; ref=/dev/shm/moe-ref
  [ -f $model/config.json ] || python3 scripts/moe/make_moe_checkpoint.py --out $model --tokenizer src/model/tiny \
    --reference $ref --timing-lengths "" > "$out/logs/make-moe.log" 2>&1 || echo "- the MoE checkpoint failed" | tee -a "$md"
  for k in base chain persistent; do run "moe-1024-$k" $k --model $model --synthetic-prompt 1024 --max-new-tokens 65; done
  { echo; echo "## Qwen3-30B-A3B shape (random weights), decode; transformers' figures: $ref/hf.json"
    python3 -c "import json; h = json.load(open('$ref/hf.json')); print(f\"active-weights floor {h['decode_floor_ms']:.2f} ms, transformers {h['decode_ms_per_token_median']:.1f} ms\")"; echo; } >> "$md" 2>&1
  table moe-1024
  python3 scripts/moe/decode_check.py prompt $ref/long.txt --tokens 1000
  run d-moe-persistent persistent --model $model --prompt-file $ref/long.txt --max-new-tokens 24 --chunk-size 512
  { echo; echo "## 30B-A3B shape, teacher-forced decode after ~1K tokens, persistent step"
    python3 scripts/moe/decode_check.py verify $model $ref/long.txt "$out"/runs/d-moe-persistent.json 2>&1 | grep -v "Loading weights"; } >> "$md" 2>&1 || status=1
fi
if [[ $parts =~ small ]] && ! late "the 0.6B check"; then
  [ -d /tmp/model ] || python3 scripts/gpu_check/make_checkpoint.py --out /tmp/model --tokenizer src/model/tiny \
    --reference /tmp/ref > "$out/logs/checkpoint.log" 2>&1
  python3 scripts/gpu_check/decode_check.py prompt /tmp/ref/long.txt --tokens 3000
  run d-small-persistent persistent --model /tmp/model --prompt-file /tmp/ref/long.txt --max-new-tokens 24 --chunk-size 1024
  { echo; echo "## 0.6B shape, teacher-forced decode after ~3K tokens, persistent step"
    python3 scripts/gpu_check/decode_check.py verify /tmp/model /tmp/ref/long.txt "$out"/runs/d-small-persistent.json; } >> "$md" 2>&1 || status=1
fi
tar -C "$out" -cJf "$out/persistent-ab-runs.tar.xz" runs logs && rm -rf "$out/runs" "$out/logs"
cat "$md"; exit $status
