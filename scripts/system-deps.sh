#!/usr/bin/env bash
# Installs the system libraries qwen3-mpi builds and runs against (Debian/Ubuntu):
# Open MPI (mpirun + headers), HDF5, libclang (the mpi and nvtx crates generate their bindings),
# a C compiler (those crates' C shims, and the NVTX test's injection library), and a
# Python with venv for the results notebooks, and Slurm with munge for the local test cluster
# that tests/slurm_jobs.rs submits jobs/ to (slurm/test-cluster.sh starts it; the packages'
# own services are not needed).
set -euo pipefail
packages=(libopenmpi-dev openmpi-bin libhdf5-dev libclang-dev gcc libc6-dev pkg-config python3 python3-venv
  slurmctld slurmd slurm-client munge)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
