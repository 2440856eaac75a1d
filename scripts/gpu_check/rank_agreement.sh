#!/usr/bin/env bash
# Do ranks sharing the GPU agree under redundant decode with each decode-kernel variant? (The
# tenth session saw 3 ranks disagree on 16 layers of Qwen3-30B-A3B's shape; the eleventh found
# the cause with this script, the staged load of the layers a rank does not own, and after the
# fix 18 of 18 jobs agreed: results/gpu-check/2026-12-02-session11.md.) A variant NAME=@ (both
# variables empty) runs the binary's defaults. Each variant REPEATS times: 3 ranks, --decode redundant, the per-layer
# KV sync over ipc, with --dump (each rank's KV cache after prefill); then the same variant with
# QWEN3_MPI_DECODE_OVERLAP=0 (no programmatic dependent launch) and with QWEN3_MPI_DECODE_GRAPH=0.
# Per run: agreement, where a rank departs (the job's error), whether the ranks' caches after
# prefill are equal bit for bit, and whether rank 0's ids equal one rank's. Then, per variant,
# three one-rank jobs at once on the GPU: if their ids differ from a lone run's, the decode itself
# is racy when processes share the GPU; if they agree, the ranks' inputs differ.
#   scripts/gpu_check/rank_agreement.sh OUTDIR
#   env: VARIANTS (space-separated NAME=QK@DOWN, default below), REPEATS (3), RANKS (3),
#        BUDGET_S (420: runs not started by then are skipped), MODEL and PROMPT_FILE (another
#        model and prompt, e.g. MODEL=tiny-moe on the CPU to try the script: no checkpoint made),
#        TRANSPORT (the KV sync's, default ipc; host on the CPU)
# Results: OUTDIR/rank-agreement.md; runs in OUTDIR/rank-agreement-runs.tar.xz.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/runs"
source scripts/gpu_check/machine.sh
md="$out/rank-agreement.md"; began=$(date +%s); skipped=0
m=${MODEL:-/tmp/qwen3-moe-16l-random}; ref=/tmp/moe-ref-16l
[ -n "${MODEL:-}" ] || [ -f $m/config.json ] || python3 scripts/moe/make_moe_checkpoint.py --out $m --tokenizer src/model/tiny \
  --reference $ref --layers 16 --timing-lengths "" > "$out/runs/make-moe.log" 2>&1 || echo "- the MoE checkpoint failed" >> "$md"
variants="${VARIANTS:-default=@ earlier=separate@rows separate=separate@experts rows=fused@rows}"
p=(--model $m --prompt-file "${PROMPT_FILE:-$ref/prompt-1.txt}" --max-new-tokens 16 --chunk-size 5 --json)
{ echo "# Ranks sharing one GPU, redundant decode, $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  echo; echo "$( [ -n "${MODEL:-}" ] && echo "$m" || echo "16 layers of Qwen3-30B-A3B's shape"), ${RANKS:-3} ranks, \`${p[*]} --decode redundant --transport ${TRANSPORT:-ipc}\`"; echo
  echo "| run | QK | MoE down | extra | rc | job wall s | ranks agree | departure | caches after prefill equal across ranks | rank 0's ids equal one rank's |"
  echo "|---|---|---|---|---|---|---|---|---|---|"; } >> "$md"
one() { # one NAME QK DOWN: the one-rank ids of a variant
  QWEN3_MPI_DECODE_QK=$2 QWEN3_MPI_MOE_DECODE_DOWN=$3 timeout 120 mpirun -n 1 "$bin" "${p[@]}" \
    > "$out/runs/$1-one.json" 2> "$out/runs/$1-one.err"
}
job() { # job NAME QK DOWN EXTRA(VAR=value or -)
  local name=$1 qk=$2 down=$3 extra=$4 rc
  if [ $(( $(date +%s) - began )) -gt "${BUDGET_S:-420}" ]; then skipped=$((skipped + 1)); return; fi
  rm -rf "$out/runs/$name"; mkdir -p "$out/runs/$name"; local t0=$(date +%s%N)
  env QWEN3_MPI_DECODE_QK=$qk QWEN3_MPI_MOE_DECODE_DOWN=$down ${extra/#-/} RUST_LOG=info timeout 120 \
    mpirun -n "${RANKS:-3}" "$bin" "${p[@]}" --decode redundant --transport "${TRANSPORT:-ipc}" --dump "$out/runs/$name" \
    > "$out/runs/$name.json" 2> "$out/runs/$name.err"; rc=$?
  local wall=$(( ($(date +%s%N) - t0) / 1000000 ))
  python3 - "$out/runs" "$name" "$qk" "$down" "$extra" "$rc" "$wall" >> "$md" 2>&1 <<'PY'
import glob, json, os, re, struct, sys
sys.path.insert(0, "scripts/gpu_check")
from summarize import report
runs, name, qk, down, extra, rc, wall = sys.argv[1:8]
def load_file(path):  # safetensors: {name: raw bytes}, whatever the dtype (bf16 included)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] + json.dumps(v["shape"]).encode()
            for k, v in header.items() if k != "__metadata__"}
err = open(f"{runs}/{name}.err").read()
m = re.search(r"ranks disagree on the generated tokens: (.*)", err)
agree = "no" if m else ("yes" if rc == "0" else "failed")
departure = m.group(1).replace("|", "/") if m else ""
caches = sorted(glob.glob(f"{runs}/{name}/kv-rank*.safetensors"))
if len(caches) < 2:
    same = f"{len(caches)} dumps"
else:
    first = load_file(caches[0])
    same = "yes"
    for path in caches[1:]:
        other = load_file(path)
        bad = [k for k in first if other.get(k) != first[k]]
        if bad:
            same = f"NO ({os.path.basename(path)}: {len(bad)} of {len(first)} tensors, first {bad[0]})"
            break
try:
    ours = report(f"{runs}/{name}.json")["generated_ids"]
    base = report(f"{runs}/{name.split('-')[0]}-one.json")["generated_ids"]
    ids = "yes" if ours == base else "NO"
except (SystemExit, OSError, ValueError, KeyError):
    ids = "-"
print(f"| {name} | {qk} | {down} | {extra} | {rc} | {int(wall) / 1000:.1f} | {agree} | {departure} | {same} | {ids} |")
PY
  rm -f "$out/runs/$name"/kv-rank*.safetensors
}
for v in $variants; do
  name=${v%%=*}; spec=${v#*=}; qk=${spec%@*}; down=${spec#*@}
  one "$name" "$qk" "$down"
  for i in $(seq 1 "${REPEATS:-3}"); do job "$name-$i" "$qk" "$down" -; done
  [ "$name" = default ] && continue
  job "$name-no-overlap" "$qk" "$down" QWEN3_MPI_DECODE_OVERLAP=0
  job "$name-no-graph" "$qk" "$down" QWEN3_MPI_DECODE_GRAPH=0
done
{ echo; echo "## Three one-rank jobs at once on the GPU, against a lone one-rank run"; echo
  echo "| variant | QK | MoE down | ids of the three equal the lone run's |"; echo "|---|---|---|---|"; } >> "$md"
for v in $variants; do
  name=${v%%=*}; spec=${v#*=}; qk=${spec%@*}; down=${spec#*@}
  for i in 1 2 3; do one "$name-at-once-$i" "$qk" "$down" & done; wait
  python3 - "$out/runs" "$name" "$qk" "$down" >> "$md" 2>&1 <<'PY'
import sys
sys.path.insert(0, "scripts/gpu_check")
from summarize import report
runs, name, qk, down = sys.argv[1:5]
def ids(n):
    try:
        return report(f"{runs}/{n}-one.json")["generated_ids"]
    except (SystemExit, OSError, ValueError, KeyError):
        return None
lone = ids(name)
cells = ["failed" if ids(f"{name}-at-once-{i}") is None else
         ("yes" if ids(f"{name}-at-once-{i}") == lone else "NO") for i in (1, 2, 3)]
print(f"| {name} | {qk} | {down} | {', '.join(cells)}{'' if lone else ' (the lone run failed)'} |")
PY
done
[ $skipped = 0 ] || echo "- $skipped runs skipped: past BUDGET_S" >> "$md"
tar -C "$out" -cJf "$out/rank-agreement-runs.tar.xz" runs && rm -rf "$out/runs"
cat "$md"
