//! With the `cuda` feature, compiles this crate's CUDA kernels (`src/kernels/cuda/*.cu`) to PTX with the toolkit's
//! nvcc (`NVCC`, else `nvcc` on the PATH) for `CUDA_COMPUTE_CAP` (default 90, Hopper: the GPUs this project runs
//! on), into OUT_DIR where `src/kernels/gpu.rs` embeds them. Without the feature it does nothing, so the default
//! build needs no CUDA toolkit.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["batch_norm", "max_pool", "residual"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-changed=src/kernels/cuda/elem.cuh");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for name in KERNELS {
        let src = format!("src/kernels/cuda/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{nvcc} failed on {src} ({s}); see its errors above"),
            Err(e) => panic!(
                "cannot run {nvcc} for {src}: {e}. The cuda feature needs the CUDA toolkit: \
                 eval \"$(bash tools/cuda-env.sh /var/tmp/ebv-cuda)\" sets it up from PyPI wheels"
            ),
        }
    }
}
