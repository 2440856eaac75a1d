# Source me: `source scripts/setup.sh`
# Installs the system libraries and the notebooks' Python packages (.venv-results/), builds and
# installs the release `qwen3-mpi` (into ~/.cargo/bin,
# about 9 minutes on 2 cores), and sets the Open MPI variables this shell needs to start
# `mpirun -n 3 qwen3-mpi` on a laptop or a small VM: oversubscription (more ranks than cores)
# and, when you are root, permission to run as root.
_qwen3_mpi_setup() {
  local repo
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  bash "$repo/scripts/system-deps.sh" || return 1
  bash "$repo/scripts/python-deps.sh" || return 1
  cargo install --locked --path "$repo" || return 1
  case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) export PATH="$HOME/.cargo/bin:$PATH" ;; esac
  export OMPI_MCA_rmaps_base_oversubscribe=1
  if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
}
_qwen3_mpi_setup
