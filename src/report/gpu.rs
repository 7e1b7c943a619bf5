//! The GPU fingerprint for reports (name, driver, CUDA versions, memory) from `nvidia-smi`, the
//! GPU memory each backend's process holds, and a table of peak dense throughput so achieved
//! prefill FLOP/s can be read as a fraction of what the chip can do.
//!
//! `nvidia-smi` is used rather than NVML bindings: it ships with every driver, needs no library
//! at build time, and is only asked outside timed runs (before a backend loads, after its runs).

use serde::Serialize;
use std::sync::{Mutex, OnceLock};

/// One GPU as `nvidia-smi` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuInfo {
    /// Index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Driver version.
    pub driver: String,
    /// Total memory, MiB.
    pub memory_total_mib: f64,
    /// Memory in use (all processes) when queried, MiB.
    pub memory_used_mib: f64,
}

/// The `nvidia-smi` query whose CSV `parse_nvidia_smi` reads.
pub const NVIDIA_SMI_ARGS: &[&str] = &[
    "--query-gpu=index,name,driver_version,memory.total,memory.used",
    "--format=csv,noheader,nounits",
];

/// Parse `nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used
/// --format=csv,noheader,nounits`; malformed lines are skipped.
pub fn parse_nvidia_smi(csv: &str) -> Vec<GpuInfo> {
    csv.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            if f.len() != 5 {
                return None;
            }
            Some(GpuInfo {
                index: f[0].parse().ok()?,
                name: f[1].to_string(),
                driver: f[2].to_string(),
                memory_total_mib: f[3].parse().ok()?,
                memory_used_mib: f[4].parse().ok()?,
            })
        })
        .collect()
}

/// stdout of a successful `nvidia-smi` call, None without a driver or `nvidia-smi`.
fn nvidia_smi(args: &[&str]) -> Option<String> {
    std::process::Command::new("nvidia-smi")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The machine's NVIDIA GPUs (empty without a driver or `nvidia-smi`).
pub fn query() -> Vec<GpuInfo> {
    nvidia_smi(NVIDIA_SMI_ARGS)
        .map(|o| parse_nvidia_smi(&o))
        .unwrap_or_default()
}

/// Whether this machine has an NVIDIA GPU (asked once).
fn present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| !query().is_empty())
}

/// The highest CUDA version the driver supports: the "CUDA Version" line of `nvidia-smi -q`.
pub fn parse_driver_cuda_version(q: &str) -> Option<String> {
    q.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "CUDA Version").then(|| v.trim().to_string())
    })
}

/// CUDA versions a reader needs to compare GPU runs: the driver's, the toolkit that compiled the
/// in-process llama.cpp (`cuda` feature), and the one libtorch was built for (`torch` feature).
pub fn cuda_versions() -> serde_json::Value {
    let driver = if present() {
        nvidia_smi(&["-q", "-d", "COMPUTE"]).and_then(|q| parse_driver_cuda_version(&q))
    } else {
        None
    };
    let known = |v: &'static str| (v != "none").then_some(v);
    serde_json::json!({
        "driver": driver,
        "llama_cpp_toolkit": known(env!("TTFT_CUDA_TOOLKIT")),
        "libtorch": known(option_env!("TTFT_LIBTORCH_CUDA").unwrap_or("none")),
    })
}

/// Parse `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`:
/// (pid, MiB) per process using a GPU; a process on several GPUs appears once per GPU.
pub fn parse_compute_apps(csv: &str) -> Vec<(u32, f64)> {
    csv.lines()
        .filter_map(|l| {
            let (pid, mib) = l.split_once(',')?;
            Some((pid.trim().parse().ok()?, mib.trim().parse().ok()?))
        })
        .collect()
}

/// GPU memory held by process `pid` on all GPUs, MiB. None without a GPU, and when nvidia-smi
/// does not list the process: it holds no CUDA context, or (in a container without the host's
/// PID namespace) nvidia-smi cannot see it; a guessed 0 would read as a measurement.
pub fn process_used_mib(pid: u32) -> Option<f64> {
    if !present() {
        return None;
    }
    let out = nvidia_smi(&[
        "--query-compute-apps=pid,used_memory",
        "--format=csv,noheader,nounits",
    ])?;
    let mine: Vec<f64> = parse_compute_apps(&out)
        .into_iter()
        .filter(|(p, _)| *p == pid)
        .map(|(_, m)| m)
        .collect();
    (!mine.is_empty()).then(|| mine.iter().sum())
}

/// What this process held before the current backend loaded (`mark_baseline`).
static BASELINE: Mutex<Option<f64>> = Mutex::new(None);

/// Remember this process's GPU memory before a backend loads, so `backend_used_mib` reports
/// only what that backend added (an earlier backend's CUDA context or torch's cached blocks stay).
pub fn mark_baseline() {
    let now = process_used_mib(std::process::id());
    *BASELINE.lock().unwrap_or_else(|e| e.into_inner()) = now;
}

/// GPU memory a backend holds after its runs, MiB: a spawned server's whole use (`server_pid`),
/// or what this process gained since `mark_baseline` for in-process backends. None without a GPU.
pub fn backend_used_mib(server_pid: Option<u32>) -> Option<f64> {
    match server_pid {
        Some(pid) => process_used_mib(pid),
        None => {
            let now = process_used_mib(std::process::id())?;
            // Not listed before the load: no CUDA context yet, nothing held.
            let base = BASELINE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or(0.0);
            Some((now - base).max(0.0))
        }
    }
}

/// Peak dense throughput in TFLOP/s: (16-bit tensor-core, f32 without tensor cores), from the
/// vendors' datasheets, no sparsity. The longest matching name fragment wins.
const PEAKS: &[(&str, f64, f64)] = &[
    ("B200", 2250.0, 80.0),
    ("H200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),
    ("GH200", 989.0, 67.0),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 30.3),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
    ("A6000", 155.0, 38.7),
    ("RTX 6000 Ada", 364.0, 91.1),
    ("RTX 5090", 210.0, 104.8),
    ("RTX 4090", 165.0, 82.6),
    ("RTX 4080", 97.0, 48.7),
    ("RTX 3090", 71.0, 35.6),
    ("V100", 125.0, 15.7),
    ("T4", 65.0, 8.1),
];

/// Peak TFLOP/s of `gpu_name` for `dtype` ("f32", "f16", "bf16"); None when unknown.
pub fn peak_tflops(gpu_name: &str, dtype: &str) -> Option<f64> {
    let (_, half, single) = PEAKS
        .iter()
        .filter(|(k, _, _)| gpu_name.contains(k))
        .max_by_key(|(k, _, _)| k.len())?;
    match dtype {
        "f16" | "bf16" | "float16" | "bfloat16" => Some(*half),
        "f32" | "float32" => Some(*single),
        _ => None,
    }
}

/// The dense peak of the GPU each backend runs on, when there is a known NVIDIA GPU: hf on
/// `--device cuda[:N]` in its dtype; inproc and the spawned server with GPU layers (f16 kernels).
/// With a settings grid, the first point's dtype and layers decide.
pub fn backend_peaks(
    s: &crate::settings::Settings,
) -> std::collections::BTreeMap<crate::backend::BackendKind, f64> {
    use crate::backend::BackendKind;
    let gpus = query();
    let mut out = std::collections::BTreeMap::new();
    let (Some(first), Some(point)) = (gpus.first(), s.points.first()) else {
        return out;
    };
    if let Some(idx) = s.device.strip_prefix("cuda") {
        let i: u32 = idx.trim_start_matches(':').parse().unwrap_or(0);
        if let Some(p) = gpus
            .iter()
            .find(|g| g.index == i)
            .and_then(|g| peak_tflops(&g.name, &point.dtype))
        {
            out.insert(BackendKind::Hf, p);
        }
    }
    if point.llama.n_gpu_layers > 0 {
        if let Some(p) = peak_tflops(&first.name, "f16") {
            out.insert(BackendKind::Inproc, p);
            if s.api.url.is_none() {
                out.insert(BackendKind::Api, p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_csv_is_parsed() {
        let out = "0, NVIDIA H200, 570.124.06, 143771, 512\n1, NVIDIA L4, 550.54.15, 23034, 0\nbad line\n";
        let g = parse_nvidia_smi(out);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "NVIDIA H200");
        assert_eq!(g[0].driver, "570.124.06");
        assert_eq!(g[0].memory_total_mib, 143771.0);
        assert_eq!(g[1].index, 1);
        assert!(parse_nvidia_smi("").is_empty());
    }

    #[test]
    fn driver_cuda_version_and_process_memory_are_parsed() {
        let q = "==============NVSMI LOG==============\n\nTimestamp : Sun Nov 29 02:00:00 2026\nDriver Version                            : 580.65.06\nCUDA Version                              : 13.0\n\nAttached GPUs : 1\n";
        assert_eq!(parse_driver_cuda_version(q).as_deref(), Some("13.0"));
        assert_eq!(parse_driver_cuda_version("Driver Version : 1\n"), None);
        let apps = "4242, 1530\n77, 20480\n4242, 12\n[N/A], 5\n";
        let parsed = parse_compute_apps(apps);
        assert_eq!(parsed, vec![(4242, 1530.0), (77, 20480.0), (4242, 12.0)]);
        assert!(parse_compute_apps("").is_empty());
    }

    #[test]
    fn peak_table_prefers_the_most_specific_name() {
        assert_eq!(peak_tflops("NVIDIA H100 PCIe", "bf16"), Some(756.0));
        assert_eq!(peak_tflops("NVIDIA H100 80GB HBM3", "bf16"), Some(989.0));
        assert_eq!(peak_tflops("NVIDIA A10G", "f16"), Some(70.0));
        assert_eq!(peak_tflops("NVIDIA A100-SXM4-80GB", "f32"), Some(19.5));
        assert_eq!(peak_tflops("NVIDIA L40S", "bf16"), Some(362.0));
        assert_eq!(peak_tflops("Some Future GPU", "bf16"), None);
        assert_eq!(peak_tflops("NVIDIA H200", "q4"), None);
    }
}
