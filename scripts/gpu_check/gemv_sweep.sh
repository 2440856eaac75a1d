#!/usr/bin/env bash
# The decode step's kernel variants, every one with one binary in one call, one GPU: decode ms
# per token of the Qwen3-8B shape (random weights) at each context length, two rounds in
# opposite orders, and whether each variant's generated ids equal the first's (every variant
# computes the same sums bit for bit, so they must).
#   scripts/gpu_check/gemv_sweep.sh OUTDIR
#   env: VARIANTS   space-separated NAME=KERNEL@BLOCKS@QK[@DOWN]: QWEN3_MPI_DECODE_GEMV,
#                   QWEN3_MPI_DECODE_GEMV_BLOCKS, QWEN3_MPI_DECODE_QK and QWEN3_MPI_MOE_DECODE_DOWN
#                   (empty: the default); default below; the first is the baseline;
#                   VARIANTS="" runs the MoE part only
#        MOE_VARIANTS  the same on 16 layers of Qwen3-30B-A3B's shape (random weights) at 1K
#                   context, two rounds (default below; empty: no MoE part)
#        MOE_MODEL  another MoE checkpoint for that part (default: the 16-layer one, made here)
#        LENGTHS    context lengths (default "1024 16384")
#        PROFILE=1  also the per-kernel table of the first step for the baseline and the fastest
#                   variant at the first length (QWEN3_MPI_DECODE_PROFILE=1)
#        BUDGET_S   seconds after which runs not yet started are skipped, so that the tables and
#                   the archive still come back within a device call (default 480)
#        EDGE_LENGTHS  lengths where the fused q/k step's new key lands in the other tiles of its
#                   key range (1K: the first; 4000: the second and third, written into shared
#                   memory; 6000: the fourth, copied from the cache): ids of the separate and fused
#                   placements, one run each (default "4000 6000"; empty: none)
# Results: OUTDIR/gemv-sweep.md; the fastest variant's spec in OUTDIR/fastest (dense, at the
# first length) and OUTDIR/moe-fastest; runs and logs in OUTDIR/gemv-sweep-runs.tar.xz.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/runs" "$out/logs"
source scripts/gpu_check/machine.sh
md="$out/gemv-sweep.md"; status=0; began=$(date +%s); skipped=0
# (since the eleventh session the defaults are the fused q/k step and the MoE down by experts:
# `register@@` is `register@@fused`; the earlier kernels are named)
variants="${VARIANTS-register=register@@ register-separate=register@@separate ring-u4s2-b2=ring-u4s2@2@ \
ring-u4s3=ring-u4s3@@ ring-u2s4=ring-u2s4@@ ring-u2s6=ring-u2s6@@ ring-u2s4-b2=ring-u2s4@2@ \
register-b1=register@1@ ring-u4s3-separate=ring-u4s3@@separate ring-u2s6-separate=ring-u2s6@@separate}"
lengths="${LENGTHS:-1024 16384}"
echo "# Decode kernel variants, $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" > "$md"
m=/tmp/qwen3-8b-random
[ -z "$variants" ] || [ -f $m/config.json ] || python3 scripts/bench/hf_reference.py --out $m --tokenizer src/model/tiny --results "$out/runs" \
  --lengths "" --decode-lengths "" > "$out/logs/hf.log" 2>&1 || echo "- the 8B checkpoint failed" | tee -a "$md"
run() { # run NAME KERNEL@BLOCKS@QK[@DOWN] LENGTH [env...]   (MODEL: the checkpoint, default the 8B shape's)
  local name=$1 spec=$2 n=$3 kernel blocks qk down; shift 3
  if [ $(( $(date +%s) - began )) -gt "${BUDGET_S:-480}" ]; then skipped=$((skipped + 1)); return 0; fi
  IFS=@ read -r kernel blocks qk down <<< "$spec"
  env QWEN3_MPI_DECODE_GEMV="$kernel" QWEN3_MPI_DECODE_GEMV_BLOCKS="$blocks" QWEN3_MPI_DECODE_QK="$qk" \
    QWEN3_MPI_MOE_DECODE_DOWN="$down" "$@" RUST_LOG=info \
    timeout 180 mpirun -n 1 "$bin" --json --model "${MODEL:-$m}" --synthetic-prompt "$n" --max-new-tokens 65 --prefill-runs 1 \
    > "$out/runs/$name.json" 2> "$out/logs/$name.err" ||
    { echo "- run $name failed: $(grep -m1 -iE 'error|panic' "$out/logs/$name.err" | cut -c1-300)" | tee -a "$md"; status=1; }
}
reversed() { local r=""; for v in $1; do r="$v $r"; done; echo "$r"; }
[ -n "$variants" ] || lengths=""  # VARIANTS="": the MoE part only
for n in $lengths; do
  for v in $variants; do run "$n-a-${v%%=*}" "${v#*=}" "$n"; done
  for v in $(reversed "$variants"); do run "$n-b-${v%%=*}" "${v#*=}" "$n"; done
done
table() { # table VARIANTS LENGTHS PREFIX: the ms/token table of runs PREFIX<length>-<round>-<name>
  python3 - "$out" "$1" "$2" "$3" >> "$md" 2>&1 <<'PY'
import sys
sys.path.insert(0, "scripts/gpu_check")
from summarize import report
out, variants, lengths, prefix = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
names = [v.split("=")[0] for v in variants]
spec = dict(v.split("=", 1) for v in variants)
def get(n, r, v):
    try:
        return report(f"{out}/runs/{prefix}{n}-{r}-{v}.json")
    except (SystemExit, OSError):
        return None
print("\n| variant (kernel@blocks a multiprocessor@q/k step@MoE down) | " + " | ".join(f"{n}: ms/token (a, b)" for n in lengths)
      + " | ids equal the first variant's |\n|---|" + "---|" * (len(lengths) + 1))
best = {}
for v in names:
    cells, same = [], True
    for n in lengths:
        runs = [get(n, r, v) for r in "ab"]
        base = [get(n, r, names[0]) for r in "ab"]
        if None in runs:
            cells.append("failed"); same = False; continue
        ms = [x["decode_ms_per_token_median"] for x in runs]
        cells.append(f"{min(ms):.3f} ({ms[0]:.3f}, {ms[1]:.3f})")
        same &= all(b is not None and x["generated_ids"] == b["generated_ids"] for x, b in zip(runs, base))
        best.setdefault(n, []).append((min(ms), v))
    print(f"| {v} ({spec[v]}) | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")
first = lengths[0]
if best.get(first):
    ms, v = min(best[first])
    print(f"\nFastest at {first}: {v} ({spec[v]}), {ms:.3f} ms/token")
    open(f"{out}/{prefix}fastest", "w").write(spec[v])
PY
}
[ -z "$variants" ] || table "$variants" "$lengths" ""
moe_variants="${MOE_VARIANTS-register=register@@@ earlier=register@@separate@rows ring=ring-u2s6@@@ \
ring-rows=ring-u2s6@@@rows}"
if [ -n "$moe_variants" ]; then
  moe=${MOE_MODEL:-/tmp/qwen3-moe-16l-random}
  [ -f $moe/config.json ] || python3 scripts/moe/make_moe_checkpoint.py --out $moe --tokenizer src/model/tiny \
    --reference /tmp/moe-ref-16l --layers 16 --timing-lengths "" > "$out/logs/make-moe.log" 2>&1 ||
    echo "- the MoE checkpoint failed" | tee -a "$md"
  for v in $moe_variants; do MODEL=$moe run "moe-1024-a-${v%%=*}" "${v#*=}" 1024; done
  for v in $(reversed "$moe_variants"); do MODEL=$moe run "moe-1024-b-${v%%=*}" "${v#*=}" 1024; done
  layers=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['num_hidden_layers'])" $moe/config.json)
  { echo; echo "## $layers layers of Qwen3-30B-A3B's shape (random weights, $moe)"; } >> "$md"
  table "$moe_variants" 1024 moe-
fi
edge="${EDGE_LENGTHS-4000 6000}"; [ -n "$variants" ] || edge=""
if [ -n "$edge" ]; then
  { echo; echo "## ids, q/k step separate and fused, at lengths where the new key lands in other tiles"; echo
    echo "| length | variant | ids equal register@@separate's |"; echo "|---|---|---|"; } >> "$md"
  for n in $edge; do
    for spec in register@@separate register@@fused ring-u2s6@@fused; do run "edge-$n-${spec//@/-}" "$spec" "$n"; done
    python3 - "$out/runs" "$n" >> "$md" 2>&1 <<'PY'
import sys
sys.path.insert(0, "scripts/gpu_check")
from summarize import report
runs, n = sys.argv[1], sys.argv[2]
try:
    base = report(f"{runs}/edge-{n}-register--separate.json")["generated_ids"]
except (SystemExit, OSError) as e:
    print(f"| {n} | register@@separate | {e} |"); sys.exit()
for spec in ["register@@fused", "ring-u2s6@@fused"]:
    try:
        same = report(f"{runs}/edge-{n}-{spec.replace('@', '-')}.json")["generated_ids"] == base
        print(f"| {n} | {spec} | {'yes' if same else 'NO'} |")
    except (SystemExit, OSError) as e:
        print(f"| {n} | {spec} | {e} |")
PY
  done
fi
if [ "${PROFILE:-1}" = 1 ] && [ -f "$out/fastest" ]; then
  n=${lengths%% *}
  for spec in "${variants%% *}" "=$(cat "$out/fastest")"; do
    spec=${spec#*=}; name="profile-$n-${spec//@/-}"
    run "$name" "$spec" "$n" QWEN3_MPI_DECODE_PROFILE=1
    { echo; echo "## per-kernel table of the first step, $spec, $n context"
      grep -A40 "| kernel | launches" "$out/logs/$name.err" | grep "^|" ; } >> "$md"
  done
fi
[ $skipped = 0 ] || echo "- $skipped runs skipped: past BUDGET_S" | tee -a "$md"
tar -C "$out" -cJf "$out/gemv-sweep-runs.tar.xz" runs logs && rm -rf "$out/runs" "$out/logs"
cat "$md"; exit $status
