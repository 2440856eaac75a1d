# Sourced by the GPU-machine scripts: the binary ($bin), NCCL on the library path, a CUDA-aware
# Open MPI under /opt/ompi-cuda (`cudampi` runs its mpirun), and the launcher settings.
bin="${BIN:-$repo/target/cuda/release/qwen3-mpi}"   # BIN= another build (A/B runs)
if [ ! -x "$bin" ] && [ -f .carry/qwen3-mpi.xz ]; then bin=/tmp/qwen3-mpi; xz -dc .carry/qwen3-mpi.xz > $bin; chmod +x $bin; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 RUST_LOG=warn
# The driver's JIT cache of candle's PTX from an earlier call (.carry/nv-cache.tar.xz, made there
# with `tar -C ~ -cJf nv-cache.tar.xz .nv`) spares each call's first job 23-25 s of compiling;
# NV_CACHE=0 leaves it out (to measure a machine's first job).
if [ "${NV_CACHE:-1}" = 1 ] && [ ! -d ~/.nv ] && [ -f .carry/nv-cache.tar.xz ]; then tar -C ~ -xJf .carry/nv-cache.tar.xz; fi
# NCCL comes with PyTorch's wheels there, outside the loader's default path
if ldd "$bin" | grep -q "libnccl.so.2 => not found"; then
  nccl_lib="$(find / -xdev -name libnccl.so.2 2>/dev/null | head -n 1)"
  [ -n "$nccl_lib" ] && export LD_LIBRARY_PATH="$(dirname "$nccl_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# cuDNN (dlopen'd by a `--features cudnn` binary, so ldd does not list it) comes with PyTorch's
# wheels too (site-packages/nvidia/cudnn/lib); QWEN3_MPI_CUDNN_LIB= a full path overrides.
loader_finds() {  # loader_finds LIB: the loader's own search (ld cache, LD_LIBRARY_PATH, rpath) has LIB
  ldconfig -p 2>/dev/null | grep -qE "^[[:space:]]*$1 " && return 0
  local d IFS=:
  for d in ${LD_LIBRARY_PATH:-} /usr/local/cuda/lib64; do [ -n "$d" ] && [ -e "$d/$1" ] && return 0; done
  return 1
}
if [ -z "${QWEN3_MPI_CUDNN_LIB:-}" ] && ! loader_finds libcudnn.so.9; then
  cudnn_lib="$(find / -xdev -name libcudnn.so.9 2>/dev/null | head -n 1)"
  [ -n "$cudnn_lib" ] && export LD_LIBRARY_PATH="$(dirname "$cudnn_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "machine.sh: libcudnn.so.9: ${cudnn_lib:-not found}" >&2
fi
# A CUDA-aware Open MPI 4.1.4 (ABI-compatible with the 4.1 the binary links), built on the GPU
# machine's image by scripts/gpu-check.sh and committed; to rebuild, carry Debian's source
# (`apt-get source --download-only openmpi` with a deb-src entry) into .carry/.
for cached in .carry/ompi-cuda.tar.xz scripts/gpu_check/ompi-cuda-4.1.4.tar.xz; do
  [ ! -x /opt/ompi-cuda/bin/mpirun ] && [ -f "$cached" ] && tar xJf "$cached" -C /opt
done
# an executable, not a function, so that `timeout` can run it
cudampi=/tmp/cudampi
printf '#!/bin/sh\nLD_LIBRARY_PATH="/opt/ompi-cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" OPAL_PREFIX=/opt/ompi-cuda exec /opt/ompi-cuda/bin/mpirun "$@"\n' > $cudampi
chmod +x $cudampi
