# Source me in every new shell: `source scripts/env.sh` (scripts/setup.sh does, once; add the
# line to ~/.bashrc to keep it). Puts ~/.cargo/bin on the PATH and sets the Open MPI variables
# that `mpirun -n 3 qwen3-mpi` needs on a laptop or a small VM: oversubscription (more ranks
# than cores) and, when you are root, permission to run as root. Changes nothing else.
case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) export PATH="$HOME/.cargo/bin:$PATH" ;; esac
export OMPI_MCA_rmaps_base_oversubscribe=1
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
