//! Build script: records how this binary was compiled, and makes libtorch load without
//! `LD_LIBRARY_PATH` and keep CUDA.
//!
//! * llama.cpp's CPU code path depends on `-C target-cpu` (llama-cpp-sys-2 turns it into ggml flags),
//!   so the target CPU is recorded for the reports.
//! * torch-sys emits no rpath, and rustc links with `--as-needed`, which drops `libtorch.so` (the
//!   library that pulls in `libtorch_cuda.so`) because no symbol is used from it directly: the
//!   binary would then silently run without CUDA even on a GPU machine. So, with the `torch`
//!   feature: an rpath to the libtorch lib dir, then `--no-as-needed -ltorch`.
//! * With the `cuda` feature, llama-cpp-sys-2 links cuBLAS statically, which the PyPI CUDA toolkit
//!   (`scripts/setup.sh --cuda`) does not have: its vendor/cuda.env sets `TTFT_CUDA_SHARED_LIBDIR`,
//!   and the shared libcublas/libcublasLt from there (the torch wheel's) are linked instead, with
//!   an rpath. The CUDA release that compiled the in-process llama.cpp, and the CUDA release
//!   libtorch was built for, are recorded for reports.

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
        // The torch wheel's version.py: `cuda: Optional[str] = '13.0'` (None in CPU wheels).
        let version_py = std::path::Path::new(&lib).join("../version.py");
        println!("cargo:rerun-if-changed={}", version_py.display());
        let text = std::fs::read_to_string(&version_py).unwrap_or_default();
        let cuda = text
            .lines()
            .find(|l| l.starts_with("cuda"))
            .and_then(|l| l.split('\'').nth(1))
            .unwrap_or("none");
        println!("cargo:rustc-env=TTFT_LIBTORCH_CUDA={cuda}");
        onednn_shim(&lib);
    }

    let mut cuda_release = String::from("none");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        for var in ["TTFT_CUDA_SHARED_LIBDIR", "CUDACXX", "CUDA_PATH"] {
            println!("cargo:rerun-if-env-changed={var}");
        }
        if let Some(dir) = std::env::var_os("TTFT_CUDA_SHARED_LIBDIR") {
            let dir = dir.to_string_lossy();
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-L{dir}");
            for l in ["cublas", "cublasLt"] {
                println!("cargo:rustc-link-arg=-l{l}");
            }
        }
        // The nvcc CMake uses (CUDACXX), else the toolkit's, else the one on PATH.
        let nvcc = std::env::var("CUDACXX")
            .ok()
            .or_else(|| {
                std::env::var("CUDA_PATH")
                    .ok()
                    .map(|p| format!("{p}/bin/nvcc"))
            })
            .unwrap_or_else(|| "nvcc".into());
        cuda_release = std::process::Command::new(nvcc)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                let rest = text.split("release ").nth(1)?.to_string();
                rest.split(',').next().map(|r| r.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
    }
    println!("cargo:rustc-env=TTFT_CUDA_TOOLKIT={cuda_release}");
}

/// The C++ shim that reaches libtorch's prepacked oneDNN linear (`src/models/shim/onednn.cpp`),
/// compiled against the same libtorch headers and C++ ABI as torch-sys' own wrapper.
fn onednn_shim(lib: &str) {
    let root = std::path::Path::new(lib).join("..");
    // The files that use libtorch's headers; the kernels below do not.
    let srcs = ["src/models/shim/onednn.cpp", "src/models/shim/layer.cpp"];
    let kernels = [
        "src/models/shim/panel.cpp",
        "src/models/shim/panel_bf16.cpp",
        "src/models/shim/attention.cpp",
        "src/models/shim/norm.cpp",
        "src/models/shim/act.cpp",
        "src/models/shim/rope.cpp",
    ];
    let headers = ["src/models/shim/simd.h", "src/models/shim/shim.h"];
    for k in srcs.iter().chain(&kernels).chain(&headers) {
        println!("cargo:rerun-if-changed={k}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .files(srcs)
        .files(kernels)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        // at::parallel_for is a header template: without OpenMP here it runs the shim's loops on
        // one thread (libtorch's own libgomp, which torch-sys links, runs them when it is on).
        .flag_if_supported("-fopenmp")
        .warnings(false)
        .compile("ttft_onednn");
}
