#!/usr/bin/env bash
# One GPU (issue 14), one call: is the fused layer right, and how fast is each piece?
#   scripts/gpu-one.sh OUTDIR            (binary as scripts/gpu-check.sh finds it)
#   env: PHASES (default "check attn"): any of
#          check   bf16 logits vs transformers (0.6B shape) for QWEN3_MPI_ATTENTION=auto, kernel
#                  and reference; the teacher-forced decode check for 2, 4, 5 and 8 query heads
#                  per KV head; generated ids across 1, 2 and 3 ranks sharing the GPU for every
#                  transport that can share one (ipc, host, device)
#          ids     only the check's generated ids across 1, 2 and 3 ranks (its checkpoint made)
#          attn    prefill attention alone: `qwen3-mpi bench-attention` (cuDNN through our shim,
#                  our flash kernel) beside PyTorch's cuDNN and FlashAttention-2 backends
#        MODES (auto kernel reference), GROUPINGS (4 5 8): what the check phase covers;
#        BASE_BIN: the previous build, for same-call baselines of its decode check;
#        DEADLINE (epoch s; default BUDGET_S=520 s from the start): no step starts after it;
#        RUN_LIMIT (s, default 180): the hard limit of each run.
# Results: OUTDIR/one-gpu.md, logs and reports tarred beside it.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$repo"
out="${1:-${OUT:?give an output folder}}"; mkdir -p "$out/logs" "$out/runs"
began=$(date +%s); deadline="${DEADLINE:-$(( began + ${BUDGET_S:-520} ))}"
gc=scripts/gpu_check; md="$out/one-gpu.md"
source $gc/machine.sh
phases=" ${PHASES:-check attn} "
status=0
{ echo "# One-GPU check, $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "binary: $bin"; echo "libcudnn: $(ldconfig -p | grep -m1 libcudnn.so.9 || echo "${LD_LIBRARY_PATH:-}" | tr : '\n' | xargs -I{} sh -c 'ls {}/libcudnn.so.9 2>/dev/null' | head -1)"; } > "$md"
late() { [ "$(date +%s)" -gt "$deadline" ] && { echo "- $1: skipped (time budget)" >> "$md"; return 0; }; return 1; }

run() { # name launcher ranks args...   (MODEL= the checkpoint; BIN_OVERRIDE= another binary)
  local name=$1 launcher=$2 n=$3 t0; shift 3; t0=$(date +%s.%N)
  late "$name" && return
  RUST_LOG=info timeout "${RUN_LIMIT:-180}" $launcher -n "$n" "${BIN_OVERRIDE:-$bin}" --model "${MODEL:-/tmp/model}" --json "$@" \
    > "$out/runs/$name.json" 2> "$out/logs/$name.err" ||
    { echo "- run $name failed: $(grep -m1 -iE "error|panic" "$out/logs/$name.err")" | tee -a "$md"; status=1; }
  echo "- $name: $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s wall; layers: $(grep -m1 -o 'layers: .*' "$out/logs/$name.err")" >> "$md"
}

if [[ "$phases" == *" check "* || "$phases" == *" ids "* ]]; then
  python3 $gc/make_checkpoint.py --out /tmp/model --tokenizer src/model/tiny --reference /tmp/ref > "$out/logs/checkpoint.log" 2>&1 ||
    { tail -5 "$out/logs/checkpoint.log"; echo "checkpoint failed" | tee -a "$md"; exit 1; }
fi
if [[ "$phases" == *" check "* ]]; then
  # 1. logits vs transformers, three ways of running the layer
  for mode in ${MODES:-auto kernel reference}; do
    for i in 0 1 2 3; do
      QWEN3_MPI_ATTENTION=$mode run "p$i-$mode" mpirun 1 --prompt-file /tmp/ref/prompt-$i.txt --max-new-tokens 16 --dump "$out/runs/$mode/p$i"
    done
    { echo; echo "## bf16 logits vs transformers bf16, QWEN3_MPI_ATTENTION=$mode (0.6B shape, 1 GPU)"
      python3 $gc/compare.py /tmp/ref "$out/runs/$mode" 4; } >> "$md" 2>&1 || status=1
    rm -f "$out"/runs/$mode/p*/kv-rank*.safetensors
  done
  # 2. decode after a long prompt, teacher-forced against transformers, per grouping
  python3 $gc/decode_check.py prompt /tmp/ref/long.txt --tokens 3000
  d=(--prompt-file /tmp/ref/long.txt --max-new-tokens 24 --chunk-size 1024)
  run d-g2-auto mpirun 1 "${d[@]}"
  QWEN3_MPI_DECODE_GRAPH=0 run d-g2-no-graph mpirun 1 "${d[@]}"
  QWEN3_MPI_ATTENTION=kernel run d-g2-kernel mpirun 1 "${d[@]}"
  QWEN3_MPI_ATTENTION=reference run d-g2-reference mpirun 1 "${d[@]}"
  run d-g2-chunk1100 mpirun 1 --prompt-file /tmp/ref/long.txt --max-new-tokens 24 --chunk-size 1100
  [ -n "${BASE_BIN:-}" ] && BIN_OVERRIDE=$BASE_BIN run d-g2-previous-build mpirun 1 "${d[@]}"
  { echo; echo "## Decode after a long prompt vs transformers (teacher-forced greedy), 2 query heads per KV head"
    python3 $gc/decode_check.py verify /tmp/model /tmp/ref/long.txt "$out"/runs/d-g2-*.json; } >> "$md" 2>&1 || status=1
  for g in ${GROUPINGS:-4 5 8}; do
    late "d-g$g" && continue
    python3 $gc/make_checkpoint.py --out /tmp/model-g$g --tokenizer src/model/tiny --reference /tmp/ref-g$g \
      --heads $(( 8 * g )) --layers 8 > "$out/logs/checkpoint-g$g.log" 2>&1 || { echo "checkpoint g$g failed" | tee -a "$md"; status=1; continue; }
    MODEL=/tmp/model-g$g run d-g$g-auto mpirun 1 "${d[@]}"
    MODEL=/tmp/model-g$g QWEN3_MPI_ATTENTION=kernel run d-g$g-kernel mpirun 1 "${d[@]}"
    { echo; echo "## Decode with $g query heads per KV head vs transformers (8 layers, $(( 8 * g )) heads)"
      python3 $gc/decode_check.py verify /tmp/model-g$g /tmp/ref/long.txt "$out"/runs/d-g$g-*.json; } >> "$md" 2>&1 || status=1
  done
fi
if [[ "$phases" == *" check "* || "$phases" == *" ids "* ]]; then
  # 3. generated ids across ranks sharing the GPU, every transport that can share one
  #    (--decode redundant: under auto, ranks sharing a GPU decode pipelined, with no KV sync)
  p=(--prompt-file /tmp/ref/prompt-1.txt --max-new-tokens 16 --chunk-size 5)
  run s-1rank mpirun 1 "${p[@]}"
  for n in 2 3; do run "s-${n}ranks-auto" mpirun $n "${p[@]}"; done
  p+=(--decode redundant)
  for n in 2 3; do
    run "s-${n}ranks-ipc" mpirun $n "${p[@]}" --transport ipc
    run "s-${n}ranks-host" mpirun $n "${p[@]}" --transport host
    run "s-${n}ranks-device" $cudampi $n "${p[@]}" --transport device
    run "s-${n}ranks-ring-host" mpirun $n "${p[@]}" --transport host --sync ring
  done
  # hidden states: auto (ipc on one node) in the runs above, host here
  for n in 2 3; do run "s-${n}ranks-ipc-hidden-host" mpirun $n "${p[@]}" --transport ipc --hidden-transport host; done
  for n in 2 3; do run "s-${n}ranks-device-hidden-device" $cudampi $n "${p[@]}" --transport device --hidden-transport device; done
  { echo; echo "## Generated ids across 1, 2 and 3 ranks sharing the GPU"
    python3 $gc/summarize.py ids "$out/runs/s-1rank.json" "$out"/runs/s-[23]ranks-*.json; } >> "$md" 2>&1 || status=1
fi

if [[ "$phases" == *" attn "* ]] && ! late attention; then
  # the cuDNN frontend's Python API, carried as a wheel (.whl/), for its bottom-right causal op
  ls .whl/nvidia_cudnn_frontend-*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target /tmp/site .whl/nvidia_cudnn_frontend-*.whl > "$out/logs/pip.log" 2>&1 && export PYTHONPATH=/tmp/site
  shapes=${ATTN_SHAPES:-1024@4096,1024@16384,1024@32768,2048@16384,4096@32768,16384@16384}
  { echo; echo "## Prefill attention alone, Qwen3-8B heads (32 over 8, head_dim 128), bf16"
    echo; echo "qwen3-mpi bench-attention:"; echo
    timeout 150 "$bin" bench-attention --shapes "$shapes" --backends cudnn,kernel 2> "$out/logs/bench-attention.err" ||
      { echo "bench-attention failed: $(tail -2 "$out/logs/bench-attention.err")"; status=1; }
    echo; echo "PyTorch (same shapes, same card, same call):"; echo
    timeout 150 python3 scripts/bench/torch_attention.py --shapes "$shapes" 2> "$out/logs/torch-attention.err" ||
      { echo "torch_attention.py failed: $(tail -2 "$out/logs/torch-attention.err")"; status=1; }
  } >> "$md" 2>&1
fi
echo "total: $(( $(date +%s) - began )) s" >> "$md"
tar -C "$out" -cJf "$out/runs-and-logs.tar.xz" runs logs && rm -rf "$out/runs" "$out/logs"
cat "$md"; exit $status
