// Optional RUNPATH for the binaries of a `cuda` build (CUDA_RPATH=dir[:dir]); no effect otherwise.
fn main() {
    println!("cargo:rerun-if-env-changed=CUDA_RPATH");
    if let Ok(p) = std::env::var("CUDA_RPATH") {
        for d in p.split(':').filter(|d| !d.is_empty()) {
            println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{d}");
        }
    }
}
