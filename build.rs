//! Build steps beside cargo's own:
//! - compiles `src/transport/mpi_shim.c` against the MPI headers the mpi crate found, for
//!   MPI_IN_PLACE and the CUDA-awareness query;
//! - with `--features cuda`, our CUDA kernels (`src/model/kernels/*.cu`) compiled to PTX by
//!   nvcc (through cudaforge, as candle's own kernels) and each PTX on to machine code (a cubin,
//!   by ptxas, for the PTX's own target), so that no rank JIT-compiles them at run time; and an
//!   rpath to the usual CUDA library folder, so the binary finds cuBLAS, cuRAND, NVRTC and NCCL
//!   on a GPU machine without LD_LIBRARY_PATH;
//! - with `--features cudnn`, `src/model/cudnn/sdpa_shim.cpp` (the cuDNN frontend, header-only,
//!   in dynamic-loading mode) compiled by the C++ compiler against the headers named by
//!   `QWEN3_MPI_CUDNN_INCLUDE` (cudnn.h), `QWEN3_MPI_CUDNN_FRONTEND_INCLUDE` (cudnn_frontend.h)
//!   and `$CUDA_HOME/include` (scripts/build-cuda.sh sets all three). libcudnn and libcudart are
//!   not linked: the shim dlopens them at run time.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/transport/mpi_shim.c");
    let mpi = match build_probe_mpi::probe() {
        Ok(lib) => lib,
        Err(errs) => {
            panic!("cannot find an MPI library (install Open MPI: scripts/system-deps.sh): {errs:?}")
        }
    };
    cc::Build::new()
        .file("src/transport/mpi_shim.c")
        .includes(&mpi.include_paths)
        .warnings(true)
        .compile("qwen3_mpi_shim");
    // The commit the binary was built from, for the trace (`unknown` outside a git checkout).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=QWEN3_MPI_GIT_COMMIT={commit}");
    // HEAD names the branch; its log changes with every commit, checkout and reset
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/logs/HEAD");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,/usr/local/cuda/lib64");
        build_kernels();
    }
    if std::env::var_os("CARGO_FEATURE_CUDNN").is_some() {
        build_cudnn_shim();
    }
}

/// The cuDNN attention shim: C++17, linked into the binary with the C++ standard library and
/// libdl; cuDNN itself is dlopen'd at run time.
fn build_cudnn_shim() {
    const SHIM: &str = "src/model/cudnn/sdpa_shim.cpp";
    println!("cargo:rerun-if-changed={SHIM}");
    let cudnn = include_dir("QWEN3_MPI_CUDNN_INCLUDE", "cudnn.h");
    let frontend = include_dir("QWEN3_MPI_CUDNN_FRONTEND_INCLUDE", "cudnn_frontend.h");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let cuda_home = std::env::var_os("CUDA_HOME").map(std::path::PathBuf::from).unwrap_or_else(|| {
        panic!("--features cudnn: set CUDA_HOME to a CUDA toolkit (for cuda.h and cuda_runtime.h; scripts/build-cuda.sh does)")
    });
    let cuda = cuda_home.join("include");
    for header in ["cuda.h", "cuda_runtime.h"] {
        if !cuda.join(header).is_file() {
            panic!(
                "--features cudnn: no {header} in {} (CUDA_HOME/include)",
                cuda.display()
            );
        }
    }
    cc::Build::new()
        .cpp(true)
        .file(SHIM)
        .std("c++17")
        .opt_level(2)
        .include(&cudnn)
        .include(&frontend)
        .include(&cuda)
        // the frontend's headers define helpers this file does not use
        .flag_if_supported("-Wno-unused-function")
        .flag_if_supported("-Wno-unused-parameter")
        .compile("qwen3_cudnn_shim");
    println!("cargo:rustc-link-lib=dl");
}

/// The folder named by the environment variable `var`, which must hold `header`.
fn include_dir(var: &str, header: &str) -> std::path::PathBuf {
    println!("cargo:rerun-if-env-changed={var}");
    let Some(dir) = std::env::var_os(var).map(std::path::PathBuf::from) else {
        panic!(
            "--features cudnn: set {var} to the folder holding {header} (scripts/build-cuda.sh downloads it)"
        )
    };
    if !dir.join(header).is_file() {
        panic!("--features cudnn: {var}={} holds no {header}", dir.display());
    }
    dir
}

#[cfg(feature = "cuda")]
fn build_kernels() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = cudaforge::KernelBuilder::new()
        .source_files(KERNEL_FILES)
        .watch([
            "src/model/kernels/elementwise.cuh",
            "src/model/kernels/overlap.cuh",
            "src/model/kernels/decode_step_attention.cuh",
            "src/model/kernels/decode_gemv_io.cuh",
            "src/model/kernels/qk_norm_rope.cuh",
        ])
        .arg("-std=c++17")
        .arg("-O3")
        .build_ptx()
        .unwrap_or_else(|e| panic!("cannot compile src/model/kernels/*.cu: {e}"));
    ptx.write(out.join("kernels_ptx.rs"))
        .unwrap_or_else(|e| panic!("cannot write the kernels' PTX list: {e}"));
    let toolkit = cudaforge::CudaToolkit::detect()
        .unwrap_or_else(|e| panic!("cannot find the CUDA toolkit for ptxas: {e}"));
    let ptxas = toolkit.nvcc_path.with_file_name("ptxas");
    let mut list = String::new();
    for name in KERNEL_FILES.map(|f| f.trim_start_matches("src/model/kernels/").trim_end_matches(".cu")) {
        let ptx_file = out.join(format!("{name}.ptx"));
        let cubin_file = out.join(format!("{name}.cubin"));
        let text = std::fs::read_to_string(&ptx_file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", ptx_file.display()));
        // `.target sm_90a`: the architecture cudaforge compiled for (CUDA_COMPUTE_CAP)
        let target = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(".target "))
            .map(|t| t.split([',', ' ']).next().unwrap_or(t).to_owned())
            .unwrap_or_else(|| panic!("{} names no .target", ptx_file.display()));
        let status = std::process::Command::new(&ptxas)
            .arg(format!("-arch={target}"))
            .arg("-O3")
            .arg(&ptx_file)
            .arg("-o")
            .arg(&cubin_file)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
        if !status.success() {
            panic!("ptxas failed on {} ({status})", ptx_file.display());
        }
        list.push_str(&format!(
            "pub const {}: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.cubin\"));\n",
            name.to_uppercase()
        ));
    }
    std::fs::write(out.join("kernels_cubin.rs"), list)
        .unwrap_or_else(|e| panic!("cannot write the kernels' cubin list: {e}"));
}

/// Our CUDA kernels, one module each.
#[cfg(feature = "cuda")]
const KERNEL_FILES: [&str; 6] = [
    "src/model/kernels/attention.cu",
    "src/model/kernels/decode_attention.cu",
    "src/model/kernels/layer_ops.cu",
    "src/model/kernels/decode_ops.cu",
    "src/model/kernels/decode_gemv_ring.cu",
    "src/model/kernels/moe_ops.cu",
];

#[cfg(not(feature = "cuda"))]
fn build_kernels() {}
