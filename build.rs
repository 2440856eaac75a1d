//! With `--features cuda`: an rpath to the usual CUDA library folder, so the binary finds
//! cuBLAS, cuRAND, NVRTC and NCCL on a GPU machine without LD_LIBRARY_PATH.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,/usr/local/cuda/lib64");
    }
}
