# Sourced by the job scripts in jobs/: the repository, the binary, the MPI environment, the
# runs folder. Sets QWEN3_MPI_REPO, QWEN3_MPI_BIN and RUNS_DIR, and defines qwen3_mpi_launch
# (slurm/launch.sh) and qwen3_mpi_prompt_args (slurm/prompt.sh).

QWEN3_MPI_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export QWEN3_MPI_REPO

# Cluster modules: uncomment and adapt what your site needs (the binary links the MPI and
# HDF5 it was built against; build on the login node with the same modules loaded).
# module load openmpi/4.1 hdf5/1.14
# module load cuda/12.4 nccl   # GPU builds (scripts/build-cuda.sh)

# The binary: $QWEN3_MPI_BIN if set, else the CUDA build (scripts/build-cuda.sh), else the one
# `cargo install --path .` or scripts/setup.sh put into ~/.cargo/bin, else target/release.
if [ -z "${QWEN3_MPI_BIN:-}" ]; then
  for candidate in "$QWEN3_MPI_REPO/target/cuda/release/qwen3-mpi" "$HOME/.cargo/bin/qwen3-mpi" \
    "$QWEN3_MPI_REPO/target/release/qwen3-mpi"; do
    if [ -x "$candidate" ]; then
      QWEN3_MPI_BIN="$candidate"
      break
    fi
  done
fi
if [ ! -x "${QWEN3_MPI_BIN:-}" ]; then
  echo "qwen3-mpi: no binary (QWEN3_MPI_BIN='${QWEN3_MPI_BIN:-}'): build it on the login node" \
    "with 'cargo install --locked --path .' or scripts/build-cuda.sh" >&2
  exit 1
fi
export QWEN3_MPI_BIN

# Open MPI refuses to start ranks as root unless told to (containers, the test cluster).
# Oversubscription (more ranks than cores) is left to the caller: export
# OMPI_MCA_rmaps_base_oversubscribe=1 before sbatch where you want it.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# Traces go to $RUNS_DIR (relative paths are under the repository).
RUNS_DIR="${RUNS_DIR:-results/runs}"
case "$RUNS_DIR" in /*) ;; *) RUNS_DIR="$QWEN3_MPI_REPO/$RUNS_DIR" ;; esac
mkdir -p "$RUNS_DIR"

source "$QWEN3_MPI_REPO/slurm/launch.sh"
source "$QWEN3_MPI_REPO/slurm/prompt.sh"
