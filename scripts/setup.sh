# Source me: `source scripts/setup.sh`
# Installs the system libraries and the notebooks' Python packages (.venv-results/), builds and
# installs the release `qwen3-mpi` (into ~/.cargo/bin, about 9 minutes on 2 cores), then
# sources scripts/env.sh: the PATH and the Open MPI variables this shell needs to start
# `mpirun -n 3 qwen3-mpi` on a laptop or a small VM. They hold in this shell only: in a new one,
# `source scripts/env.sh` (it installs nothing).
_qwen3_mpi_setup() {
  local repo
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  bash "$repo/scripts/system-deps.sh" || return 1
  bash "$repo/scripts/python-deps.sh" || return 1
  cargo install --locked --path "$repo" || return 1
  source "$repo/scripts/env.sh"
}
_qwen3_mpi_setup
