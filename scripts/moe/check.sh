#!/usr/bin/env bash
# Qwen3-MoE on one H200 (issue 17's GPU "done when"), in stages that each fit one 10-minute call:
#   STAGE=make    scripts/moe/check.sh OUT   random Qwen3-30B-A3B-shaped bf16 checkpoint (transformers'
#                                            save_pretrained) and transformers' logits, TTFT at 4K and
#                                            16K, decode ms/token at 1K (REF/hf.json)
#   STAGE=logits  ...                        our bf16 logits vs transformers (4 prompts, top-1 and
#                                            relative error), teacher-forced decode after ~1K tokens
#   STAGE=timing  ...                        our TTFT at 4K and 16K and decode ms/token at 1K, against
#                                            transformers' and the active-weights floor; the layer plan,
#                                            the decode step's kernel table, and (time allowing) 4K with
#                                            the experts' products padded (QWEN3_MPI_MOE_GEMM=padded)
#   STAGE=ranks   ...                        generated ids of 2 ranks sharing the GPU (30B-A3B) and of
#                                            3 ranks (a 16-layer model of the same shape: three whole
#                                            30B-A3B copies do not fit one H200) against 1 rank, with
#                                            pipelined decode (the default there) and redundant decode
#                                            (the per-layer KV sync, both syncs)
#   (no STAGE: all four, in order). Binary: target/cuda/release/qwen3-mpi or .carry/qwen3-mpi.xz.
#   MODEL_ROOT: where checkpoints go (default /dev/shm when it holds the checkpoint or has 80 GiB
#   free, else /tmp).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/logs" "$out/runs" "$out/traces"
source scripts/gpu_check/machine.sh
free_shm=$(df --output=avail -B1G /dev/shm 2>/dev/null | tail -1 | tr -d ' ')
checkpoint=qwen3-30b-a3b-random
# (a checkpoint an earlier stage made in /dev/shm stays there: the stages run as separate calls)
root="${MODEL_ROOT:-$( { [ -f /dev/shm/$checkpoint/config.json ] || [ "${free_shm:-0}" -ge 80 ]; } && echo /dev/shm || echo /tmp)}"
model=$root/$checkpoint; small=$root/qwen3-moe-16l-random; ref=$root/moe-ref; ref16=$root/moe-ref-16l
md="$out/moe-check.md"; stage="${STAGE:-all}"; status=0; began=$(date +%s)
late() { [ $(( $(date +%s) - began )) -gt "${OPTIONAL_UNTIL_S:-330}" ] && { echo "- $1: skipped (time budget)" >> "$md"; return 0; }; return 1; }
echo "# Qwen3-MoE GPU check ($stage), $(date -u +%FT%TZ), checkpoints in $root" >> "$md"
run() { # name ranks args...
  local name=$1 n=$2; shift 2
  RUST_LOG=info timeout 300 mpirun -n "$n" "$bin" --json --trace "$out/traces/$name.h5" "$@" \
    > "$out/runs/$name.json" 2> "$out/logs/$name.err" ||
    { echo "- run $name failed: $(grep -m1 -i error "$out/logs/$name.err")" | tee -a "$md"; status=1; }
}
if [[ $stage =~ all|make ]]; then
  [ -f $model/config.json ] || python3 scripts/moe/make_moe_checkpoint.py --out $model --tokenizer src/model/tiny \
    --reference $ref > "$out/logs/make.log" 2>&1 || { tail -5 "$out/logs/make.log"; echo "checkpoint failed" | tee -a "$md"; exit 1; }
  { echo; echo '## transformers on the same weights'; echo '```'; cat $ref/hf.json; echo '```'; } >> "$md"
fi
if [[ $stage =~ all|logits ]]; then
  for i in 0 1 2 3; do run "p$i-1gpu" 1 --model $model --prompt-file $ref/prompt-$i.txt --max-new-tokens 16 --dump "$out/runs/p$i"; done
  { echo; echo "## bf16 logits vs transformers bf16"; python3 scripts/gpu_check/compare.py $ref "$out/runs" 4; } >> "$md" 2>&1 || status=1
  rm -f "$out"/runs/p*/kv-rank*.safetensors
  python3 scripts/moe/decode_check.py prompt $ref/long.txt --tokens 1000
  run d-1gpu 1 --model $model --prompt-file $ref/long.txt --max-new-tokens 24 --chunk-size 512
  { echo; echo "## Decode after ~1K tokens vs transformers (teacher-forced greedy)"
    python3 scripts/moe/decode_check.py verify $model $ref/long.txt "$out"/runs/d-1gpu.json; } >> "$md" 2>&1 || status=1
fi
if [[ $stage =~ all|timing ]]; then
  run t-4096 1 --model $model --synthetic-prompt 4096 --chunk-size 4096 --max-new-tokens 17 --prefill-runs 3
  run t-16384 1 --model $model --synthetic-prompt 16384 --chunk-size 4096 --max-new-tokens 17 --prefill-runs 2
  QWEN3_MPI_DECODE_PROFILE=1 run t-decode-1024 1 --model $model --synthetic-prompt 1024 --max-new-tokens 64
  late t-4096-padded || QWEN3_MPI_MOE_GEMM=padded run t-4096-padded 1 --model $model --synthetic-prompt 4096 --chunk-size 4096 --max-new-tokens 17 --prefill-runs 3
  { echo; echo "## Timing against transformers (same GPU, same weights)"
    python3 - "$ref/hf.json" "$out/runs" <<'PY'
import json, os, sys
sys.path.insert(0, "scripts/gpu_check")
from summarize import report
hf = json.load(open(sys.argv[1])); runs = sys.argv[2]
print("| what | transformers | qwen3-mpi | ratio (transformers / ours) |\n|---|---|---|---|")
for n in (4096, 16384):
    try: ours = report(f"{runs}/t-{n}.json")["ttft_runs_s"][-1]
    except SystemExit as e: print(f"| TTFT {n} | - | {e} | - |"); continue
    theirs = hf["prefill"][str(n)]["ttft_s"]
    print(f"| TTFT {n} tokens (warm) | {theirs:.3f} s | {ours:.3f} s | {theirs / ours:.2f}x (target >= 1.2x) |")
    if n == 4096 and os.path.exists(f"{runs}/t-4096-padded.json"):
        try:
            padded = report(f"{runs}/t-4096-padded.json")["ttft_runs_s"][-1]
            print(f"| TTFT 4096, experts padded (QWEN3_MPI_MOE_GEMM=padded) | {theirs:.3f} s | {padded:.3f} s | {theirs / padded:.2f}x |")
        except SystemExit as e: print(f"| TTFT 4096 padded | - | {e} | - |")
try:
    ms = report(f"{runs}/t-decode-1024.json")["decode_ms_per_token_median"]
    print(f"| decode ms/token at 1K | {hf['decode_ms_per_token_median']:.2f} | {ms:.2f} | floor {hf['decode_floor_ms']:.2f} ms: ours {ms / hf['decode_floor_ms']:.2f}x the floor (target <= 2x) |")
except SystemExit as e: print(f"| decode | - | {e} | - |")
PY
    echo; echo "layer plan: $(grep -m1 -o 'layers: .*' "$out/logs/t-4096.err")"
    echo; echo "Decode step kernel by kernel (first step, 1K context):"; echo
    grep -A40 'decode step, kernel by kernel' "$out/logs/t-decode-1024.err" | grep '^|' | head -20
  } >> "$md" 2>&1
fi
if [[ $stage =~ all|ranks ]]; then
  p=(--prompt-file $ref/prompt-1.txt --max-new-tokens 16 --chunk-size 5)
  run r-1 1 --model $model "${p[@]}"
  for tr in host auto; do run "r-2ranks-1gpu-$tr" 2 --model $model "${p[@]}" --transport $tr; done
  run r-2ranks-1gpu-ring 2 --model $model "${p[@]}" --sync ring --transport host
  # ranks sharing a GPU decode pipelined by default, which syncs no KV cache: redundant decode
  # runs the per-layer KV sync of the sparse layers too (2 x 57 GiB fits one H200)
  run r-2ranks-1gpu-redundant-host 2 --model $model "${p[@]}" --decode redundant --transport host
  run r-2ranks-1gpu-redundant-ring 2 --model $model "${p[@]}" --decode redundant --sync ring --transport ipc
  { echo; echo "## Generated ids: 2 ranks on one GPU against 1 (30B-A3B)"
    python3 scripts/gpu_check/summarize.py ids "$out/runs/r-1.json" "$out"/runs/r-2ranks-*.json; } >> "$md" 2>&1 || status=1
  # on a small disk the 30B-A3B checkpoint makes room for the 16-layer one (this is the last stage)
  [ "$root" = /tmp ] && [ ! -f $small/config.json ] && rm -rf $model
  [ -f $small/config.json ] || python3 scripts/moe/make_moe_checkpoint.py --out $small --tokenizer src/model/tiny \
    --reference $ref16 --layers 16 --timing-lengths "" > "$out/logs/make-16l.log" 2>&1 || echo "16-layer checkpoint failed" | tee -a "$md"
  run s-1 1 --model $small "${p[@]}"
  for tr in host auto; do run "s-3ranks-1gpu-$tr" 3 --model $small "${p[@]}" --transport $tr; done
  run s-3ranks-1gpu-ring 3 --model $small "${p[@]}" --sync ring --layers 4,7,5 --transport host
  run s-3ranks-1gpu-redundant-ipc 3 --model $small "${p[@]}" --decode redundant --transport ipc
  run s-3ranks-1gpu-redundant-ring 3 --model $small "${p[@]}" --decode redundant --sync ring --layers 4,7,5 --transport host
  { echo; echo "## Generated ids: 3 ranks on one GPU against 1 (16 layers of 30B-A3B's shape)"
    python3 scripts/gpu_check/summarize.py ids "$out/runs/s-1.json" "$out"/runs/s-3ranks-*.json; } >> "$md" 2>&1 || status=1
fi
tar -C "$out" -cJf "$out/traces-$stage.tar.xz" traces runs logs 2>/dev/null && rm -rf "$out/traces"/* "$out/logs"/*
cat "$md"; exit $status
