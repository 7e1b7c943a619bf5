//! Build script: records how this binary was compiled, because llama.cpp's CPU code path depends on
//! it (llama-cpp-sys-2 turns `-C target-cpu=...` into ggml flags), and reports must say so.

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
}
