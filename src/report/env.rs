//! The environment fingerprint stored with every result: numbers are only comparable between runs
//! on the same CPU, thread count, OS, llama.cpp commit and build flags.

use serde::Serialize;

/// Facts about the machine and this build.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// CPU model name from /proc/cpuinfo.
    pub cpu: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Threads llama.cpp was told to use.
    pub threads: u32,
    /// OS name (os-release) and kernel.
    pub os: String,
    /// ttft version.
    pub ttft_version: String,
    /// Cargo features compiled in.
    pub features: Vec<&'static str>,
    /// Rust target triple, profile and `target-cpu` (the latter decides ggml's CPU flags in-process).
    pub build: serde_json::Value,
    /// llama.cpp commit linked in-process (and required of the server).
    pub llama_cpp_commit: &'static str,
    /// The vendored server build stamp written by setup (commit, cmake flags), if present.
    pub server_build: Option<serde_json::Value>,
    /// NVIDIA GPUs (name, driver, memory) from nvidia-smi; empty on machines without one.
    pub gpus: Vec<super::gpu::GpuInfo>,
    /// CUDA versions: the driver's, the toolkit that compiled the in-process llama.cpp, and
    /// libtorch's (null where not applicable).
    pub cuda: serde_json::Value,
}

/// Peak resident memory (VmHWM) of a process (`None`: this one), in MiB.
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    proc_mib(&path, "VmHWM:")
}

/// This process's anonymous memory on transparent huge pages, MiB (Linux; None elsewhere):
/// after an hf load, mostly the panel weights (`models::onednn::huge_copy`).
pub fn huge_pages_mib() -> Option<f64> {
    proc_mib("/proc/self/smaps_rollup", "AnonHugePages:")
}

/// A `/proc` file's `field` line (`Name:   1234 kB`), in MiB.
fn proc_mib(path: &str, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Reset this process's peak-RSS mark (Linux `clear_refs` 5), so each backend's peak is its own.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Cargo features this binary was built with.
pub fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "llama") {
        f.push("llama");
    }
    if cfg!(feature = "torch") {
        f.push("torch");
    }
    if cfg!(feature = "cuda") {
        f.push("cuda");
    }
    if cfg!(feature = "metal") {
        f.push("metal");
    }
    f
}

/// The CPU model name (`/proc/cpuinfo`), or the architecture where there is none.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn os_name() -> String {
    let pretty = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if kernel.is_empty() {
        pretty
    } else {
        format!("{pretty}, kernel {kernel}")
    }
}

/// Collect the fingerprint; `server_build_stamp` is setup's `vendor/llama-build.json`.
pub fn collect(threads: u32, server_build_stamp: Option<&std::path::Path>) -> Environment {
    Environment {
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        threads,
        os: os_name(),
        ttft_version: env!("CARGO_PKG_VERSION").to_string(),
        features: features(),
        build: serde_json::json!({
            "target": env!("TTFT_TARGET"),
            "profile": env!("TTFT_PROFILE"),
            "target_cpu": env!("TTFT_TARGET_CPU"),
        }),
        llama_cpp_commit: crate::backend::LLAMA_CPP_COMMIT,
        gpus: super::gpu::query(),
        cuda: super::gpu::cuda_versions(),
        server_build: server_build_stamp
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| serde_json::from_str(&s).ok()),
    }
}
