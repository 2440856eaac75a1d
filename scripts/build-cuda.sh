#!/usr/bin/env bash
# Builds the release binary with CUDA, NCCL and cuDNN attention (`--features cuda,nccl,cudnn`;
# NCCL=0 leaves NCCL out, CUDNN=0 cuDNN) into target/cuda/release/qwen3-mpi.
#
#   scripts/build-cuda.sh [COMPUTE_CAP]        # default 90 (H100/H200: kernels become sm_90a)
#
# With a CUDA toolkit on the machine (nvcc on PATH, or CUDA_HOME set) it uses that one.
# Without one, it installs a build-only toolchain from PyPI's NVIDIA wheels (CUDA 13.0, to match
# driver 580; newer PTX would not load there) into $QWEN3_MPI_CUDA_CACHE (default
# .cuda-toolchain/), plus a link-only libcuda stub, since no wheel ships the driver library.
# The stub is never on the run-time library path: the binary finds the real libcuda of the
# machine it runs on, and the CUDA libraries under /usr/local/cuda/lib64 (its rpath).
# cuDNN is not linked: the binary dlopens libcudnn.so.9 at run time (src/model/cudnn/). The build
# needs only headers: cudnn.h from the nvidia-cudnn-cu13 wheel and the header-only cuDNN frontend
# from the nvidia-cudnn-frontend wheel, fetched once into $QWEN3_MPI_CUDA_CACHE/cudnn-headers/
# (QWEN3_MPI_CUDNN_INCLUDE / QWEN3_MPI_CUDNN_FRONTEND_INCLUDE, when set, name other folders).
# A clean build takes about 18 minutes on 2 cores (13 of them in candle's kernels).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cap="${1:-${CUDA_COMPUTE_CAP:-90}}"
cache="${QWEN3_MPI_CUDA_CACHE:-$repo/.cuda-toolchain}"

wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-nccl-cu13==2.28.3
)

install_wheel_toolchain() {
  local site="$cache/site" prefix
  if [ ! -f "$cache/.complete" ]; then
    echo "installing the CUDA 13.0 build toolchain from PyPI into $cache" >&2
    python3 -m pip install -q --no-deps --target "$site" "${wheels[@]}"
    touch "$cache/.complete"
  fi
  prefix="$site/nvidia/cu13"
  ln -sfn lib "$prefix/lib64"
  # NCCL ships beside the toolkit: put its headers and libraries into the same prefix.
  for f in "$site"/nvidia/nccl/include/*; do ln -sfn "$f" "$prefix/include/$(basename "$f")"; done
  for f in "$site"/nvidia/nccl/lib/*; do ln -sfn "$f" "$prefix/lib/$(basename "$f")"; done
  # The linker wants unversioned names (libcublas.so); the wheels ship libcublas.so.13.
  for f in "$prefix"/lib/lib*.so.*; do
    local base="${f%%.so.*}.so"
    [ -e "$base" ] || ln -sfn "$(basename "$f")" "$base"
  done
  build_libcuda_stub "$cache/stub"
  export CUDA_HOME="$prefix" CUDA_PATH="$prefix"
  export PATH="$prefix/bin:$PATH"
  export LIBRARY_PATH="$cache/stub:$prefix/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
}

# A libcuda.so that only satisfies the linker: every driver entry point cudarc declares,
# each returning CUDA_ERROR_UNKNOWN. Link-time only.
build_libcuda_stub() {
  local dir="$1" sys
  [ -f "$dir/libcuda.so" ] && return
  sys="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -n 1)"
  mkdir -p "$dir"
  grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | awk '{print $4}' | sort -u |
    awk '{print "int " $1 "(void) { return 999; }"}' > "$dir/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so" "$dir/libcuda_stub.c"
}

cudnn_wheel=nvidia-cudnn-cu13==9.13.0.50
frontend_wheel=nvidia-cudnn-frontend==1.16.0

# wheel_headers SPEC FOLDER DIR: unpacks FOLDER/ of the PyPI wheel SPEC into DIR, once.
# The frontend's wheel is built per CPython version: any one serves, its headers are the same.
wheel_headers() {
  local spec="$1" folder="$2" dir="$3"
  [ -f "$dir/.complete" ] && return
  echo "fetching $folder/ of $spec into $dir" >&2
  rm -rf "$dir" && mkdir -p "$dir/wheel"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$dir/wheel" "$spec" || {
    echo "cannot download $spec: set QWEN3_MPI_CUDNN_INCLUDE and QWEN3_MPI_CUDNN_FRONTEND_INCLUDE to" \
      "folders holding cudnn.h and cudnn_frontend.h, or build without cuDNN (CUDNN=0)" >&2
    return 1
  }
  python3 - "$dir" "$folder" "$dir"/wheel/*.whl <<'EOF'
import sys, zipfile
dest, folder, wheel = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    members = [n for n in z.namelist() if n.startswith(folder)]
    if not members:
        sys.exit(f"{wheel} has no {folder}")
    z.extractall(dest, members)
EOF
  rm -rf "$dir/wheel"   # the cuDNN wheel is 350 MB for 300 KB of headers
  touch "$dir/.complete"
}

# The headers the cuDNN shim compiles against (build.rs reads these two variables).
cudnn_headers() {
  local dir="$cache/cudnn-headers"
  if [ -z "${QWEN3_MPI_CUDNN_INCLUDE:-}" ]; then
    wheel_headers "$cudnn_wheel" nvidia/cudnn/include "$dir/cudnn"
    export QWEN3_MPI_CUDNN_INCLUDE="$dir/cudnn/nvidia/cudnn/include"
  fi
  if [ -z "${QWEN3_MPI_CUDNN_FRONTEND_INCLUDE:-}" ]; then
    wheel_headers "$frontend_wheel" include "$dir/frontend"
    export QWEN3_MPI_CUDNN_FRONTEND_INCLUDE="$dir/frontend/include"
  fi
  echo "cuDNN headers: $QWEN3_MPI_CUDNN_INCLUDE, frontend: $QWEN3_MPI_CUDNN_FRONTEND_INCLUDE" >&2
}

if command -v nvcc >/dev/null 2>&1; then
  export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}"
elif [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  export PATH="$CUDA_HOME/bin:$PATH"
else
  (cd "$repo" && cargo fetch --locked >/dev/null)
  install_wheel_toolchain
fi
export CUDA_COMPUTE_CAP="$cap" CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
echo "building with CUDA_HOME=$CUDA_HOME, compute capability $cap" >&2
cd "$repo"
# NCCL (--transport nccl) unless NCCL=0; it links libnccl.so.2, which must be on the GPU machine.
features=cuda
[ "${NCCL:-1}" = 0 ] || features=cuda,nccl
# cuDNN attention unless CUDNN=0; libcudnn.so.9 is looked for at run time only.
if [ "${CUDNN:-1}" != 0 ]; then
  cudnn_headers
  features="$features,cudnn"
fi
cargo build --locked --release --features "$features" --target-dir target/cuda
# A stripped, compressed copy small enough to carry to the GPU machine (about 9 MB).
mkdir -p .carry
strip -o .carry/qwen3-mpi target/cuda/release/qwen3-mpi
xz -T0 -f .carry/qwen3-mpi
ls -la target/cuda/release/qwen3-mpi .carry/qwen3-mpi.xz
