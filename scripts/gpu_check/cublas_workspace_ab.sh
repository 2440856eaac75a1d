#!/usr/bin/env bash
# Issue 14, 16K prefill: does a larger cuBLAS workspace speed up the layer's products? The
# products run on candle's cuBLAS handle, which no code gives a workspace of its own, so cuBLAS
# uses its default pool; NVIDIA recommends 32 MiB a call on Hopper. One rank, the Qwen3-8B
# shape (made by chunk_cost.sh's or bench.sh's hf_reference.py if missing), one chunk of 16K,
# the default against CUBLAS_WORKSPACE_CONFIG=:32768:2 (two 32 MiB buffers), alternating, ROUNDS
# rounds (3) of --prefill-runs 3 each; the warm TTFT of every run.
#   scripts/gpu_check/cublas_workspace_ab.sh OUTDIR      env: TOKENS (16384), ROUNDS (3)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out=${1:?give an output folder}; mkdir -p "$out"
source scripts/gpu_check/machine.sh
model=/tmp/qwen3-8b-random; tokens=${TOKENS:-16384}
[ -f $model/config.json ] || python3 scripts/bench/hf_reference.py --out $model --tokenizer src/model/tiny \
  --results "$out/hf" --lengths "" --decode-lengths "" > "$out/make-8b.log" 2>&1
for round in $(seq 1 "${ROUNDS:-3}"); do
  for config in default :32768:2; do
    name="ws-${config//:/_}-$round"
    ( [ "$config" = default ] || export CUBLAS_WORKSPACE_CONFIG=$config
      timeout 120 mpirun -n 1 "$bin" --model $model --synthetic-prompt "$tokens" --max-new-tokens 2 \
        --prefill-runs 3 --json > "$out/$name.json" 2> "$out/$name.err" ) || echo "$name failed: $(grep -m1 -i error "$out/$name.err")"
  done
done
python3 - "$out" <<'PY'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for f in sorted(out.glob("ws-*.json")):
    lines = [l for l in f.read_text().splitlines() if l.startswith("{")]
    if lines:
        config = f.stem.rsplit("-", 1)[0]
        rows.setdefault(config, []).append(json.loads(lines[-1])["ttft_runs_s"][-1])
print("| cuBLAS workspace | warm TTFT of each round (s) | median |\n|---|---|---|")
for config, t in rows.items():
    print(f"| {config.removeprefix('ws-').replace('_', ':')} | {' / '.join(f'{x:.4f}' for x in t)} | {statistics.median(t):.4f} |")
PY
