#!/usr/bin/env bash
# Repeats one multi-rank run to catch a hang that shows only now and then:
#   scripts/gpu_check/repeat_run.sh OUTDIR NAME TIMES RANKS BINARY [qwen3-mpi args...]
# Each run gets `--timeout 20` (the job's own watchdog) inside a 45 s hard limit; a run that
# passes the limit has every rank's threads' stacks written (gdb, when the machine has it) to
# OUTDIR/NAME-TRY.stacks before it is killed. One line per run on stdout.
set -uo pipefail
out=$1 name=$2 times=$3 ranks=$4 bin=$5; shift 5; mkdir -p "$out"
for try in $(seq 1 "$times"); do
  log="$out/$name-$try"; t0=$(date +%s.%N)
  mpirun --oversubscribe --allow-run-as-root -n "$ranks" "$bin" --timeout 20 "$@" > "$log.out" 2> "$log.err" &
  job=$!
  for _ in $(seq 1 45); do sleep 1; kill -0 $job 2>/dev/null || break; done
  if kill -0 $job 2>/dev/null; then
    for pid in $(pgrep -f "^$bin"); do
      echo "== pid $pid" >> "$log.stacks"
      timeout 20 gdb -p "$pid" -batch -ex "thread apply all bt 12" >> "$log.stacks" 2>&1 ||
        cat /proc/$pid/task/*/wchan >> "$log.stacks" 2>/dev/null
    done
    kill -9 $job; pkill -9 -f "^$bin"; wait $job 2>/dev/null
    echo "$name try $try: HUNG (stacks in $log.stacks)"
  else
    wait $job; rc=$?
    echo "$name try $try: rc $rc in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s$( [ $rc != 0 ] && echo ": $(grep -m1 -iE 'error|panic' "$log.err")")"
  fi
done
