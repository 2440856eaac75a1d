//! Build steps beside cargo's own:
//! - compiles `src/transport/mpi_shim.c` against the MPI headers the mpi crate found, for
//!   MPI_IN_PLACE and the CUDA-awareness query;
//! - with `--features cuda`, our CUDA kernels (`src/model/kernels/*.cu`) compiled to PTX by
//!   nvcc (through cudaforge, as candle's own kernels), and an rpath to the usual CUDA library folder, so the binary finds
//!   cuBLAS, cuRAND, NVRTC and NCCL on a GPU machine without LD_LIBRARY_PATH.

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
    println!("cargo:rerun-if-changed=.git/HEAD");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,/usr/local/cuda/lib64");
        build_kernels();
    }
}

#[cfg(feature = "cuda")]
fn build_kernels() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = cudaforge::KernelBuilder::new()
        .source_files([
            "src/model/kernels/attention.cu",
            "src/model/kernels/decode_attention.cu",
        ])
        .arg("-std=c++17")
        .arg("-O3")
        .build_ptx()
        .unwrap_or_else(|e| panic!("cannot compile src/model/kernels/*.cu: {e}"));
    ptx.write(out.join("kernels_ptx.rs"))
        .unwrap_or_else(|e| panic!("cannot write the kernels' PTX list: {e}"));
}

#[cfg(not(feature = "cuda"))]
fn build_kernels() {}
