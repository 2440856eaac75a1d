# Sourced by slurm/env.sh. `qwen3_mpi_launch ARGS...` starts $QWEN3_MPI_BIN ARGS... on every
# task of the allocation, one MPI rank per task, and returns its exit code.
#
# Launcher (QWEN3_MPI_LAUNCHER=auto|srun|mpirun, default auto):
# - srun --mpi=pmix where Slurm has its PMIx plugin, a one-task PMIx step works, and the MPI
#   library speaks PMIx (Open MPI: a pmix component other than isolated/flux/s1/s2). Slurm then
#   places, binds and gives each task its GPUs itself (--gpus-per-task).
# - else mpirun (Open MPI reads the Slurm allocation: nodes, tasks per node).
# Without PMIx on both sides, srun would start N unconnected one-rank jobs, so auto never
# guesses: it only takes srun when all three checks pass, and it logs why.
#
# GPUs: qwen3-mpi itself takes GPU (node-local rank mod visible GPUs), within
# CUDA_VISIBLE_DEVICES, so no wrapper sets devices. Every task must see all of its node's GPUs
# of the job, or the `ipc` transport cannot map its peers' caches: srun runs with
# --gpu-bind=none (--gpus-per-task would otherwise bind each task to its own GPU alone);
# under mpirun the ranks of a node see the job's GPUs there anyway.
#
# CPUs: srun passes the job's --cpus-per-task on (Slurm 22.05 and later no longer do so
# themselves), so each rank's threads get their CPUs.

# Whether the MPI library behind mpirun accepts ranks started by srun --mpi=pmix.
_qwen3_mpi_has_pmix() {
  command -v ompi_info >/dev/null || return 0 # not Open MPI: trust srun's PMIx plugin
  local info
  info="$(ompi_info --parsable 2>/dev/null || true)"
  case "$info" in *ompi:version:full:[5-9].*) return 0 ;; esac # Open MPI 5 always uses PMIx
  grep -Eq '^mca:pmix:(ext|pmix)[0-9a-z]*:' <<<"$info"
}

# Prints the launcher to use, and says why on stderr.
qwen3_mpi_pick_launcher() {
  local wanted="${QWEN3_MPI_LAUNCHER:-auto}" why
  case "$wanted" in
    srun | mpirun)
      echo "$wanted"
      echo "launch: $wanted (QWEN3_MPI_LAUNCHER)" >&2
      return 0
      ;;
    auto) ;;
    *)
      echo "launch: QWEN3_MPI_LAUNCHER must be auto, srun or mpirun, not '$wanted'" >&2
      return 1
      ;;
  esac
  if ! command -v srun >/dev/null; then
    why="no srun on this node"
  elif [[ "$(srun --mpi=list 2>&1)" != *pmix* ]]; then
    why="'srun --mpi=list' has no pmix"
  elif ! _qwen3_mpi_has_pmix; then
    why="this Open MPI has no PMIx support for srun"
  elif ! timeout 60 srun --mpi=pmix --ntasks=1 --nodes=1 printenv PMIX_RANK >/dev/null 2>&1; then
    why="a one-task 'srun --mpi=pmix' step did not start"
  else
    echo srun
    echo "launch: srun --mpi=pmix (Slurm has PMIx, so has this MPI)" >&2
    return 0
  fi
  if ! command -v mpirun >/dev/null; then
    echo "launch: cannot start MPI ranks: $why, and there is no mpirun" >&2
    return 1
  fi
  echo mpirun
  echo "launch: mpirun ($why)" >&2
}

# The launcher, picked at the first launch of the job.
_qwen3_mpi_launcher_picked=""

qwen3_mpi_launch() {
  local tasks="${SLURM_NTASKS:?not inside a Slurm allocation: submit with sbatch}"
  if [ -z "$_qwen3_mpi_launcher_picked" ]; then
    _qwen3_mpi_launcher_picked="$(qwen3_mpi_pick_launcher)" || return 1
  fi
  if [ "$_qwen3_mpi_launcher_picked" = srun ]; then
    srun --mpi=pmix --kill-on-bad-exit=1 --ntasks="$tasks" --gpu-bind=none \
      ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} "$QWEN3_MPI_BIN" "$@"
  else
    # mpirun starts its daemons on the other nodes with srun, one per node: that step must not
    # inherit the job's per-task GPU request, or each node's ranks would share one GPU.
    env -u SLURM_GPUS_PER_TASK -u SLURM_TRES_PER_TASK \
      mpirun -n "$tasks" "$QWEN3_MPI_BIN" "$@"
  fi
}

# One line for the job log: what the job is, its size and where it runs, and what it sees of
# the GPUs. `qwen3_mpi_describe_job WHAT`.
qwen3_mpi_describe_job() {
  local gpus="${SLURM_GPUS_PER_TASK:-${SLURM_GPUS_PER_NODE:-0}}"
  echo "$1 $SLURM_NTASKS tasks (${SLURM_JOB_NUM_NODES:-1} x ${SLURM_NTASKS_PER_NODE:-?} per node;" \
    "${SLURM_CPUS_PER_TASK:-1} CPUs and ${gpus} GPUs per task) on ${SLURM_JOB_NODELIST:-?};" \
    "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}; each task sees its node's GPUs and takes" \
    "one by node-local rank (the summary names the transport; on GPUs rank 0 says why, and why it" \
    "fell back if it did)"
}
