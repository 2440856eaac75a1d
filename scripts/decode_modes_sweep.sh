#!/usr/bin/env bash
# Decode ms per token of both decode modes across rank counts (issue 18), for
# results/decode_modes.ipynb: one run per (mode, ranks), each writing its HDF5 trace into OUT
# (the notebook reads the mode and the ranks from each trace's attributes, not from its name).
#
#   scripts/decode_modes_sweep.sh [OUT]      OUT: default results/runs/decode-modes-<host>-<UTC date>
#
# env: MODEL (default tiny: the built-in model; a checkpoint directory on the GPU machine),
#      MODES ("redundant pipeline"), RANKS ("1 2 3 4"), NEW_TOKENS (32: 31 decode steps a run),
#      PROMPT_TOKENS (a synthetic prompt of N tokens; empty, the default: the built-in prompt),
#      BIN (the binary; default target/release, else ~/.cargo/bin, else the CUDA build),
#      MPIRUN (mpirun), TIMEOUT (s a run, 600), EXTRA_ARGS (added to every run, e.g. "--dtype bf16").
# With nvidia-smi and scripts/gpu_check/machine.sh (the GPU machine), that file sets the binary
# (BIN, target/cuda/release or .carry/qwen3-mpi.xz), the NCCL/cuDNN library paths and the launcher
# settings; ranks of one host share its GPU(s).
# Writes OUT/<mode>-n<ranks>.h5, OUT/<mode>-n<ranks>.json (--json report), OUT/logs/, OUT/machine.txt
# and OUT/summary.csv (`qwen3-mpi trace summary --csv`). Then:
#   QWEN3_TRACES=OUT jupyter nbconvert --execute results/decode_modes.ipynb   (or run_notebooks.py)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$repo"
out="${1:-results/runs/decode-modes-$(hostname -s)-$(date -u +%Y%m%d-%H%M)}"
model="${MODEL:-tiny}"; modes="${MODES:-redundant pipeline}"; ranks_list="${RANKS:-1 2 3 4}"
new_tokens="${NEW_TOKENS:-32}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && [ -f scripts/gpu_check/machine.sh ]; then
  source scripts/gpu_check/machine.sh       # $bin, library paths, OMPI_* for root and oversubscription
else
  bin="${BIN:-}"
  if [ -z "$bin" ]; then
    # no GPU here: the CPU builds first (a CUDA build needs libcuda to start at all)
    for candidate in target/release/qwen3-mpi "$HOME/.cargo/bin/qwen3-mpi" target/cuda/release/qwen3-mpi; do
      [ -x "$candidate" ] && { bin="$candidate"; break; }
    done
  fi
  if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
  # containers often forbid the cross-process copies (CMA) Open MPI's shared memory tries first
  export OMPI_MCA_btl_vader_single_copy_mechanism="${OMPI_MCA_btl_vader_single_copy_mechanism:-none}"
  export RUST_LOG="${RUST_LOG:-warn}"
fi
[ -x "${bin:-}" ] || { echo "decode_modes_sweep: no binary (BIN='${bin:-}'): cargo build --release --locked" >&2; exit 1; }
"$bin" --version > /dev/null || { echo "decode_modes_sweep: $bin does not start" >&2; exit 1; }
mkdir -p "$out/logs"

prompt=()
[ -n "${PROMPT_TOKENS:-}" ] && prompt=(--synthetic-prompt "$PROMPT_TOKENS")
read -r -a extra <<<"${EXTRA_ARGS:-}"
{
  echo "host: $(hostname)"; echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc) (available to this process)"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | sed 's/^/gpu: /'
  echo "binary: $bin ($("$bin" --version 2>/dev/null | sed -n '1,3p' | paste -sd'|' | sed 's/|/; /g'))"
  echo "model: $model; modes: $modes; ranks: $ranks_list; new tokens: $new_tokens; prompt: ${PROMPT_TOKENS:-built-in}"
} > "$out/machine.txt"
cat "$out/machine.txt"

failed=0
for mode in $modes; do
  for n in $ranks_list; do
    name="$mode-n$n"
    echo "== $name"
    timeout -k 10 "${TIMEOUT:-600}" "${MPIRUN:-mpirun}" --oversubscribe -n "$n" "$bin" --model "$model" \
      "${prompt[@]}" --max-new-tokens "$new_tokens" --decode "$mode" --trace "$out/$name.h5" --json \
      "${extra[@]}" > "$out/$name.json" 2> "$out/logs/$name.err"
    status=$?
    if [ $status -ne 0 ]; then
      failed=$((failed + 1))
      echo "$name failed (exit $status): $(grep -m1 -i error "$out/logs/$name.err")" | tee -a "$out/logs/failures.txt"
    fi
  done
done
"$bin" trace summary --csv "$out"/*.h5 > "$out/summary.csv" 2> "$out/logs/summary.err" || cat "$out/logs/summary.err"
column -s, -t < "$out/summary.csv" 2>/dev/null || cat "$out/summary.csv"
echo "traces in $out ($failed runs failed)"
[ "$failed" -eq 0 ]
