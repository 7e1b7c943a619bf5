//! The GPU fingerprint for reports (name, driver, memory) from `nvidia-smi`, and a table of peak
//! dense throughput so achieved prefill FLOP/s can be read as a fraction of what the chip can do.

use serde::Serialize;

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

/// The machine's NVIDIA GPUs (empty without a driver or `nvidia-smi`).
pub fn query() -> Vec<GpuInfo> {
    std::process::Command::new("nvidia-smi")
        .args(NVIDIA_SMI_ARGS)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
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
