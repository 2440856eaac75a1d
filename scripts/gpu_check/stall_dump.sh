#!/usr/bin/env bash
# Where every thread of every rank is while a prefill on ranks sharing one GPU is slow: starts
# the 3-rank job (ipc, 20-token prompt, chunk 5, 60 s watchdog) in the background, and if it has
# not finished after DUMP_AFTER seconds (a good run takes about 2 s), prints each rank's threads
# (name, state, CPU seconds from /proc), the GPU's load (nvidia-smi), and each thread's stack
# (cuda-gdb attaches; there is no gdb there). Up to ATTEMPTS runs, stops at the first slow one.
#   scripts/gpu_check/stall_dump.sh OUTDIR    env: ATTEMPTS (4), DUMP_AFTER (4), ARGS, BIN, RANKS (3)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"; cd "$repo"
out=${1:?give an output folder}; mkdir -p "$out"
source scripts/gpu_check/machine.sh
[ -d /tmp/model ] || python3 scripts/gpu_check/make_checkpoint.py --out /tmp/model --tokenizer src/model/tiny --reference /tmp/ref > "$out/checkpoint.log" 2>&1
n=${RANKS:-3}
threads() {  # threads PID: one line per thread: tid name state CPU seconds, kernel wait channel,
  # system call (number, then the user stack pointer and program counter last) and kernel stack
  local t
  for t in /proc/"$1"/task/*; do
    awk -v tid="$(basename "$t")" -v name="$(cat "$t/comm")" -v wchan="$(cat "$t/wchan" 2>/dev/null)" \
      -v sc="$(cut -d' ' -f1,8,9 "$t/syscall" 2>/dev/null)" -v ks="$(head -3 "$t/stack" 2>/dev/null | awk '{print $2}' | tr '\n' ' ')" \
      '{ printf "  %s %-16s %s cpu %.2f s wchan %s syscall %s kstack %s\n", tid, name, $3, ($14 + $15) / 100, wchan, sc, ks }' "$t/stat"
  done
}
stacks() {  # stacks PID: each thread's innermost frames and its first frame in our own code
  # the binary's load address, so that a frame cuda-gdb leaves as ?? can be resolved offline:
  # addr2line -f -C -e target/cuda/release/qwen3-mpi $(( ADDRESS - BASE ))
  grep -m1 "$(basename "$bin")" /proc/"$1"/maps | sed "s/^/  pid $1 binary mapped at /"
  awk '/^Thread /{ if (t) print t " | " f0 " | " f1 " | " own; t=$0; sub(/ \(LWP/, " (", t); f0=""; f1=""; own=""; next }
       /^#0 /{ f0=$0 } /^#1 /{ f1=$0 } /qwen3_mpi::/ && own=="" { own=$0 }
       END { if (t) print t " | " f0 " | " f1 " | " own }' "$out/stacks-$1.txt" \
    | sed -E 's/0x[0-9a-f]{8,16} in //g; s/ \([^()]*\) at / at /g' | cut -c1-330
}
for i in $(seq 1 "${ATTEMPTS:-4}"); do
  RUST_LOG="${LOG_FILTER:-qwen3_mpi::job::stage_loop=debug,qwen3_mpi::model::fused_layer=trace,qwen3_mpi::model::qwen3=debug}" mpirun -n "$n" "$bin" --model /tmp/model \
    --prompt-file /tmp/ref/prompt-1.txt --max-new-tokens 4 --chunk-size 5 --timeout 60 \
    ${ARGS:---transport ipc --decode redundant} > "$out/dump-$i.out" 2> "$out/dump-$i.err" &
  job=$!
  sleep "${DUMP_AFTER:-4}"
  if ! kill -0 $job 2>/dev/null; then wait $job; echo "stall_dump: run $i finished within ${DUMP_AFTER:-4} s (rc $?)"; continue; fi
  pids=$(pgrep -f "^$bin --model /tmp/model" | sort -n)
  echo "stall_dump: run $i still running after ${DUMP_AFTER:-4} s; ranks' pids: $(echo $pids)"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | sed 's/^/  GPU load, memory: /'
  for p in $pids; do echo "== pid $p threads"; threads "$p"; done
  # one at a time: in the fourth session's call 3 three attaches at once left one process unstopped
  for p in $pids; do timeout 40 cuda-gdb -q "$bin" -p "$p" -batch -ex "set pagination off" -ex "thread apply all bt 40" > "$out/stacks-$p.txt" 2>&1 < /dev/null; done
  for p in $pids; do echo "== pid $p stacks"; stacks "$p"; done
  sleep 3
  for p in $pids; do echo "== pid $p threads, 3 s after the stacks"; threads "$p"; done
  grep -E "^\[rank" "$out/dump-$i.err" | tail -n 12 | cut -c1-200
  kill $job 2>/dev/null; pkill -f "^$bin --model /tmp/model"; wait $job 2>/dev/null
  break
done
