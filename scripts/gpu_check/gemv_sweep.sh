#!/usr/bin/env bash
# The decode step's matrix-vector kernel, every variant with one binary in one call, one GPU:
# decode ms per token of the Qwen3-8B shape (random weights) at each context length, two rounds
# in opposite orders, and whether each variant's generated ids equal the register kernel's (the
# ring kernel's sums are the register kernel's bit for bit, so they must).
#   scripts/gpu_check/gemv_sweep.sh OUTDIR
#   env: VARIANTS   space-separated NAME=KERNEL@BLOCKS (BLOCKS empty: the kernel's default),
#                   default below; the first is the baseline
#        LENGTHS    context lengths (default "1024 16384")
#        PROFILE=1  also the per-kernel table of the first step for the baseline and the fastest
#                   variant at the first length (QWEN3_MPI_DECODE_PROFILE=1)
# Results: OUTDIR/gemv-sweep.md, the fastest variant's KERNEL@BLOCKS in OUTDIR/fastest; runs and
# logs in OUTDIR/gemv-sweep-runs.tar.xz.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/runs" "$out/logs"
source scripts/gpu_check/machine.sh
md="$out/gemv-sweep.md"; status=0
variants="${VARIANTS:-register=register@ ring-u4s2-b2=ring-u4s2@2 ring-u4s3=ring-u4s3@ ring-u2s4=ring-u2s4@ \
ring-u2s6=ring-u2s6@ ring-u1s12=ring-u1s12@ ring-u2s4-b2=ring-u2s4@2 register-b1=register@1}"
lengths="${LENGTHS:-1024 16384}"
echo "# Decode matrix-vector kernels, $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" > "$md"
m=/tmp/qwen3-8b-random
[ -f $m/config.json ] || python3 scripts/bench/hf_reference.py --out $m --tokenizer src/model/tiny --results "$out/runs" \
  --lengths "" --decode-lengths "" > "$out/logs/hf.log" 2>&1 || echo "- the 8B checkpoint failed" | tee -a "$md"
run() { # run NAME KERNEL@BLOCKS LENGTH [env...]
  local name=$1 spec=$2 n=$3; shift 3
  env QWEN3_MPI_DECODE_GEMV="${spec%@*}" QWEN3_MPI_DECODE_GEMV_BLOCKS="${spec#*@}" "$@" RUST_LOG=info \
    timeout 180 mpirun -n 1 "$bin" --json --model $m --synthetic-prompt "$n" --max-new-tokens 65 --prefill-runs 1 \
    > "$out/runs/$name.json" 2> "$out/logs/$name.err" ||
    { echo "- run $name failed: $(grep -m1 -iE 'error|panic' "$out/logs/$name.err" | cut -c1-300)" | tee -a "$md"; status=1; }
}
reversed() { local r=""; for v in $1; do r="$v $r"; done; echo "$r"; }
for n in $lengths; do
  for v in $variants; do run "$n-a-${v%%=*}" "${v#*=}" "$n"; done
  for v in $(reversed "$variants"); do run "$n-b-${v%%=*}" "${v#*=}" "$n"; done
done
python3 - "$out" "$variants" "$lengths" >> "$md" 2>&1 <<'PY'
import sys
sys.path.insert(0, "scripts/gpu_check")
from summarize import report
out, variants, lengths = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
names = [v.split("=")[0] for v in variants]
spec = dict(v.split("=", 1) for v in variants)
def get(n, r, v):
    try:
        return report(f"{out}/runs/{n}-{r}-{v}.json")
    except SystemExit:
        return None
print("\n| variant (kernel@blocks a multiprocessor) | " + " | ".join(f"{n}: ms/token (a, b)" for n in lengths)
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
    open(f"{out}/fastest", "w").write(spec[v])
PY
if [ "${PROFILE:-1}" = 1 ] && [ -f "$out/fastest" ]; then
  n=${lengths%% *}
  for spec in "${variants%% *}" "=$(cat "$out/fastest")"; do
    spec=${spec#*=}; name="profile-$n-${spec//@/-b}"
    run "$name" "$spec" "$n" QWEN3_MPI_DECODE_PROFILE=1
    { echo; echo "## per-kernel table of the first step, $spec, $n context"
      grep -A40 "| kernel | launches" "$out/logs/$name.err" | grep "^|" ; } >> "$md"
  done
fi
tar -C "$out" -cJf "$out/gemv-sweep-runs.tar.xz" runs logs && rm -rf "$out/runs" "$out/logs"
cat "$md"; exit $status
