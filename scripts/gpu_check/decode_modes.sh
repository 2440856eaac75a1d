#!/usr/bin/env bash
# Issue 18 on one GPU: both decode modes side by side, with 1, 2 and 3 ranks sharing the GPU.
#   scripts/gpu_check/decode_modes.sh OUTDIR [BINARY]      (BINARY as scripts/gpu_check/machine.sh finds it)
# Needs the 0.6B-shaped checkpoint of scripts/gpu-one.sh (/tmp/model; made here if missing).
# The chunk size is fixed: another chunk size sums attention in another order. Ids are compared
# with 1 rank within a mode (the modes run different kernels: the fused step against the layers
# one token at a time, so a bf16 near-tie may differ between modes; that comparison is printed
# but is not a pass/fail).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out=${1:?give an output folder}; mkdir -p "$out"
source scripts/gpu_check/machine.sh
bin=${2:-$bin}
[ -d /tmp/model ] || python3 scripts/gpu_check/make_checkpoint.py --out /tmp/model --tokenizer src/model/tiny --reference /tmp/ref > "$out/checkpoint.log" 2>&1
args=(--model /tmp/model --synthetic-prompt 1024 --chunk-size 256 --max-new-tokens 128 --json --timeout 120)
for mode in redundant pipeline; do
  for n in 1 2 3; do
    timeout 300 mpirun --oversubscribe --allow-run-as-root -n $n "$bin" "${args[@]}" --decode $mode \
      > "$out/$mode-$n.out" 2> "$out/$mode-$n.err" || echo "$mode with $n ranks failed: $(grep -m1 error "$out/$mode-$n.err")"
    tail -n 1 "$out/$mode-$n.out" > "$out/$mode-$n.json"
  done
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
r = {}
for m in ("redundant", "pipeline"):
    for n in (1, 2, 3):
        try:
            r[m, n] = json.load(open(f"{out}/{m}-{n}.json"))
        except Exception as e:
            print(f"{m} {n} ranks: no report ({e})")
print("| mode | ranks | decode path | decode ms/token (median) | ids equal to 1 rank of this mode |")
print("|---|---|---|---|---|")
for (m, n), j in sorted(r.items()):
    same = (m, 1) in r and j["generated_ids"] == r[m, 1]["generated_ids"]
    print(f"| {m} | {n} | {j.get('decode_path')} | {j.get('decode_ms_per_token_median', float('nan')):.2f} | {'yes' if same else 'NO'} |")
if ("redundant", 1) in r and ("pipeline", 1) in r:
    print("\nmodes give the same ids with 1 rank:", r["redundant", 1]["generated_ids"] == r["pipeline", 1]["generated_ids"])
PY
