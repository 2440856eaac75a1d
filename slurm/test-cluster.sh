#!/usr/bin/env bash
# The local test cluster: munged, slurmctld and slurmd on this machine, as root, without systemd
# or cgroups (what tests/slurm_jobs.rs submits its jobs to). Needs Debian's slurmctld, slurmd,
# slurm-client and munge (scripts/system-deps.sh).
#
#   slurm/test-cluster.sh start   # (re)starts it, waits until the node is idle, prints SLURM_CONF
#   slurm/test-cluster.sh stop
#   slurm/test-cluster.sh logs    # the daemons' logs
#
# Then `export SLURM_CONF=$QWEN3_SLURM_DIR/slurm.conf` and use sbatch, srun, sinfo as usual.
# QWEN3_SLURM_DIR (default /tmp/qwen3-mpi-slurm) holds the config, state and logs;
# QWEN3_SLURM_PORT (default 16817; slurmd takes the next port) keeps it apart from a real Slurm;
# QWEN3_SLURM_AUTH=munge|none (default munge; none where munged cannot run);
# QWEN3_SLURM_CPUS (default 32) is how many CPUs the node claims, whatever the machine has.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${QWEN3_SLURM_DIR:-/tmp/qwen3-mpi-slurm}"
port="${QWEN3_SLURM_PORT:-16817}"
auth="${QWEN3_SLURM_AUTH:-munge}"
cpus="${QWEN3_SLURM_CPUS:-32}"
host="$(hostname -s)"
export SLURM_CONF="$dir/slurm.conf"

say() { echo "test-cluster: $*" >&2; }

logs() {
  local f
  for f in "$dir"/log/*.log; do
    [ -f "$f" ] || continue
    echo "==> $f <=="
    tail -n 40 "$f"
  done
}

# Ends the cluster's jobs, then its daemons (all at once; SIGKILL for any left after 10 s).
stop() {
  local pidfile pid pids=() alive i
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    rm -f "$pidfile"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && pids+=("$pid")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  timeout 5 scancel --user="$(id -un)" 2>/dev/null || true
  kill "${pids[@]}" 2>/dev/null || true
  for i in $(seq 100); do
    alive=()
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive+=("$pid")
    done
    [ ${#alive[@]} -gt 0 ] || return 0
    sleep 0.1
  done
  kill -9 "${alive[@]}" 2>/dev/null || true
}

start_munge() {
  mkdir -p "$dir/munge"
  chmod 700 "$dir/munge"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed"
}

write_config() {
  local auth_info=""
  [ "$auth" = munge ] && auth_info="socket=$dir/munge/munge.socket"
  sed -e "s|@HOST@|$host|g" -e "s|@DIR@|$dir|g" -e "s|@CPUS@|$cpus|g" \
    -e "s|@CTLD_PORT@|$port|g" -e "s|@SLURMD_PORT@|$((port + 1))|g" \
    -e "s|@AUTH@|$auth|g" -e "s|@AUTH_INFO@|$auth_info|g" \
    "$here/test-cluster/slurm.conf.in" >"$SLURM_CONF"
}

# Waits up to 30 s for the node to be idle.
wait_idle() {
  local i state=""
  for i in $(seq 60); do
    state="$(timeout 5 sinfo -h -N -o %T 2>/dev/null || true)"
    [ "$state" = idle ] && return 0
    sleep 0.5
  done
  say "the node is not idle after 30 s (sinfo says '${state:-nothing}')"
  logs >&2
  return 1
}

start() {
  [ "$(id -u)" -eq 0 ] || { say "run me as root (the daemons run as root)"; return 1; }
  for cmd in slurmctld slurmd sinfo; do
    command -v "$cmd" >/dev/null || { say "$cmd is missing: run scripts/system-deps.sh"; return 1; }
  done
  stop
  rm -rf "$dir"
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  if [ "$auth" = munge ]; then
    start_munge || { say "munged did not start"; logs >&2; return 1; }
  fi
  write_config
  # -i: ignore any saved state; both daemonize and write their pid files.
  slurmctld -i || { say "slurmctld did not start"; logs >&2; return 1; }
  slurmd || { say "slurmd did not start"; logs >&2; return 1; }
  wait_idle
  say "up: export SLURM_CONF=$SLURM_CONF"
}

case "${1:-}" in
  start) start || { stop; exit 1; } ;;
  stop) stop ;;
  logs) logs ;;
  *)
    echo "usage: $0 start|stop|logs" >&2
    exit 2
    ;;
esac
