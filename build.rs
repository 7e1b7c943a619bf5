//! Build script: records how this binary was compiled, and makes libtorch load without
//! `LD_LIBRARY_PATH` and keep CUDA.
//!
//! * llama.cpp's CPU code path depends on `-C target-cpu` (llama-cpp-sys-2 turns it into ggml flags),
//!   so the target CPU is recorded for the reports.
//! * torch-sys emits no rpath, and rustc links with `--as-needed`, which drops `libtorch.so` (the
//!   library that pulls in `libtorch_cuda.so`) because no symbol is used from it directly: the
//!   binary would then silently run without CUDA even on a GPU machine. So, with the `torch`
//!   feature: an rpath to the libtorch lib dir, then `--no-as-needed -ltorch`.

fn main() {
    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let target_cpu = rustflags
        .split('\x1f')
        .find_map(|f| f.split("target-cpu=").nth(1))
        .unwrap_or("default")
        .to_string();
    println!("cargo:rustc-env=TTFT_TARGET_CPU={target_cpu}");
    println!(
        "cargo:rustc-env=TTFT_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=TTFT_PROFILE={}",
        std::env::var("PROFILE").unwrap_or_default()
    );
    println!("cargo:rerun-if-changed=build.rs");

    if std::env::var_os("CARGO_FEATURE_TORCH").is_some() {
        // Exported by torch-sys (links = "tch") to its direct dependents.
        let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB: run scripts/setup.sh");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-env=TTFT_LIBTORCH_LIB={lib}");
    }
}
