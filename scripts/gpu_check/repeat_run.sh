#!/usr/bin/env bash
# Repeats one multi-rank run to catch a stall that shows only now and then:
#   scripts/gpu_check/repeat_run.sh OUTDIR NAME TIMES RANKS BINARY [qwen3-mpi args...]
#   env: WATCHDOG (the job's --timeout, default 300 s: longer than CATCH, so that a stalled job is
#        still alive to be looked at), CATCH (s, default 30): a run still going then is taken as
#        stalled; MPIRUN_ARGS (e.g. "--bind-to core") added to mpirun.
# A stalled run gets, for every thread of every rank, its name, state, wait channel, current
# system call and kernel stack (/proc; the machine has no gdb), three times a second apart, in
# OUTDIR/NAME-TRY.threads, before it is killed. One line per run on stdout.
# (thread names: main, kv-sync, mpi-progress, weight-load, watchdog, failure-listener; syscall
# numbers on x86-64: 202 futex, 16 ioctl (the NVIDIA driver: a blocking CUDA call), 24 sched_yield)
set -uo pipefail
out=$1 name=$2 times=$3 ranks=$4 bin=$5; shift 5; mkdir -p "$out"
catch=${CATCH:-30}
threads() { # pid
  for task in /proc/$1/task/*; do
    printf '%s tid %s %s state %s wchan %s syscall %s\n' "$1" "${task##*/}" "$(cat $task/comm 2>/dev/null)" \
      "$(awk '{print $3}' $task/stat 2>/dev/null)" "$(cat $task/wchan 2>/dev/null)" "$(cut -d' ' -f1 $task/syscall 2>/dev/null)"
    sed 's/^/    /' $task/stack 2>/dev/null | head -8
  done
}
for try in $(seq 1 "$times"); do
  log="$out/$name-$try"; t0=$(date +%s.%N)
  mpirun --oversubscribe --allow-run-as-root ${MPIRUN_ARGS:-} -n "$ranks" "$bin" --timeout "${WATCHDOG:-300}" "$@" \
    > "$log.out" 2> "$log.err" &
  job=$!
  for _ in $(seq 1 "$catch"); do sleep 1; kill -0 $job 2>/dev/null || break; done
  if kill -0 $job 2>/dev/null; then
    for round in 1 2 3; do
      echo "== round $round" >> "$log.threads"
      for pid in $(pgrep -f "^$bin"); do threads "$pid" >> "$log.threads"; done
      sleep 1
    done
    kill -9 $job; pkill -9 -f "^$bin"; wait $job 2>/dev/null
    echo "$name try $try: STALLED (threads in $log.threads)"
  else
    wait $job; rc=$?
    echo "$name try $try: rc $rc in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s$( [ $rc != 0 ] && echo ": $(grep -m1 -iE 'error|panic' "$log.err")")"
  fi
done
