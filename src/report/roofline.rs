//! The roofline of this machine, and how close each backend's prefill comes to it.
//!
//! A prefill over `n` tokens has to read every weight once and do its FLOPs, so it cannot take
//! less than `max(weight bytes / read bandwidth, FLOPs / GEMM peak)`. The bandwidth and peaks are
//! measured here (`crate::app::roofline`, cached per machine and libtorch), not taken from a spec
//! sheet; a backend's *roofline fraction* is that bound over its achieved prefill time (1 = at
//! the machine's limit). The weight bytes are the backend's own: the checkpoint in its dtype for
//! hf, the GGUF's tensor bytes for llama.cpp (quantized weights are what make it cheap to read).

use serde::{Deserialize, Serialize};

/// What the probe measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Roofline {
    /// Where: the CPU model (or GPU name) the probe ran on.
    pub device: String,
    /// Threads the probe used (the run's threads).
    pub threads: u32,
    /// libtorch version whose kernels were measured.
    pub libtorch: String,
    /// Memory read bandwidth, GB/s (a sum over a buffer far larger than the caches).
    pub read_gbs: f64,
    /// f32 GEMM peak, GFLOP/s: the best of the kernels ttft can use (MKL, oneDNN packed, its own
    /// AVX-512 panels).
    pub f32_gflops: f64,
    /// Per kernel, what it reached in f32 (`mkl`, `onednn`, `avx512`).
    pub f32_by_kernel: std::collections::BTreeMap<String, f64>,
    /// bf16 GEMM peak, GFLOP/s (None when the probe could not run bf16).
    pub bf16_gflops: Option<f64>,
    /// f16 GEMM peak, GFLOP/s (None when the probe could not run f16).
    pub f16_gflops: Option<f64>,
    /// The GEMM the peaks were measured with: [rows × in] · [in × out].
    pub gemm_shape: [i64; 3],
    /// How long the probe took, ms.
    pub probe_ms: f64,
    /// Whether the probe's two rounds agreed within 15 % (a busy machine disagrees; such a
    /// probe is reported but not cached).
    pub steady: bool,
    /// When it was measured (UTC, RFC 3339).
    pub measured_at: String,
    /// What the probe measures ([`PROBE_VERSION`] when made); a cached probe of another
    /// version is measured again (0: made before versions were recorded).
    #[serde(default)]
    pub version: u32,
    /// The memory read rate this run measured after its timed runs, GB/s (never cached: it
    /// describes the run, not the machine). Why: a shared host's bandwidth moves with its
    /// neighbours, and a run in a slow spell is far below the ceiling whatever it runs; this
    /// says so next to its fractions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at_end_gbs: Option<f64>,
}

/// The probe's version: raised whenever it measures something new (a kernel, a dtype), so
/// caches made by an older ttft are not taken for this one's. 2: bf16 peaks include ttft's
/// AVX512_BF16 panels.
pub const PROBE_VERSION: u32 = 2;

/// Now, as a probe's `measured_at` (UTC, RFC 3339, to the second).
pub fn measured_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Roofline {
    /// The compute peak that bounds a model whose weights are in `dtype`: its own peak for f32,
    /// bf16 and f16 (falling back to f32 where the 16-bit probe did not run), the best measured
    /// peak for anything else (quantized GGUF weights: llama.cpp's integer dot products are not
    /// probed, so the fastest GEMM this machine showed is the bound).
    pub fn peak_gflops(&self, dtype: Option<&str>) -> f64 {
        let best = [self.bf16_gflops, self.f16_gflops]
            .into_iter()
            .flatten()
            .fold(self.f32_gflops, f64::max);
        match dtype {
            Some("f32") => self.f32_gflops,
            Some("bf16") => self.bf16_gflops.unwrap_or(self.f32_gflops),
            Some("f16") => self.f16_gflops.unwrap_or(self.f32_gflops),
            _ => best,
        }
    }

    /// This roofline with each figure raised to `newer`'s where that is higher, `newer`'s date
    /// if it raised any (also how a probe combines its two rounds). Why: a roofline is a ceiling, and on a shared host the memory read rate
    /// a probe sees varies with the neighbours (measured on a 2-core Zen 5, it
    /// read 48-51 GB/s for minutes, then 78-88); a cached low reading makes every memory-bound
    /// fraction read high, even above 1. Keeping each figure's best errs the other way, never
    /// overstating how close a prefill came to the machine's limit.
    pub fn raised_by(&self, newer: &Roofline) -> Roofline {
        let mut r = self.clone();
        let up = |a: &mut f64, b: f64| {
            let raised = b > *a;
            *a = a.max(b);
            raised
        };
        let up_opt = |a: &mut Option<f64>, b: Option<f64>| match b {
            Some(y) if a.is_none_or(|x| y > x) => {
                *a = b;
                true
            }
            _ => false,
        };
        let mut raised = up(&mut r.read_gbs, newer.read_gbs);
        for (k, v) in &newer.f32_by_kernel {
            raised |= up(r.f32_by_kernel.entry(k.clone()).or_insert(0.0), *v);
        }
        r.f32_gflops = r
            .f32_by_kernel
            .values()
            .copied()
            .fold(r.f32_gflops, f64::max);
        raised |= up_opt(&mut r.bf16_gflops, newer.bf16_gflops);
        raised |= up_opt(&mut r.f16_gflops, newer.f16_gflops);
        r.steady = self.steady || newer.steady;
        if raised {
            r.measured_at.clone_from(&newer.measured_at);
            r.probe_ms = newer.probe_ms;
        }
        r
    }

    /// The least time, ms, a prefill of `flops` over `weight_bytes` can take here.
    pub fn bound_ms(&self, weight_bytes: f64, flops: f64, dtype: Option<&str>) -> f64 {
        let read = weight_bytes / (self.read_gbs * 1e9);
        let compute = flops / (self.peak_gflops(dtype) * 1e9);
        read.max(compute) * 1e3
    }

    /// The lines of the report's roofline block.
    pub fn lines(&self) -> Vec<String> {
        let kernels: Vec<String> = self
            .f32_by_kernel
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect();
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let [m, k, n] = self.gemm_shape;
        let at_end = self
            .read_at_end_gbs
            .map_or(String::new(), |g| format!(" (this run's end: {g:.1})"));
        let unsteady = if self.steady {
            ""
        } else {
            " — UNSTEADY: the probe's two rounds disagreed (busy machine?); rerun `ttft roofline --refresh` when quiet"
        };
        vec![
            format!(
                "roofline ({}, {} threads, libtorch {}, measured {}){unsteady}:",
                self.device, self.threads, self.libtorch, self.measured_at
            ),
            format!(
                "  memory read {:.1} GB/s{at_end}; GEMM [{m}x{k}]·[{k}x{n}] GFLOP/s: f32 {:.0} ({}), bf16 {}, f16 {}",
                self.read_gbs,
                self.f32_gflops,
                kernels.join(", "),
                opt(self.bf16_gflops),
                opt(self.f16_gflops)
            ),
            "  a prefill's bound = max(weight bytes / bandwidth, FLOPs / peak); roofline fraction = bound / prefill time".into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roof() -> Roofline {
        Roofline {
            device: "cpu".into(),
            threads: 2,
            libtorch: "2.13.0".into(),
            read_gbs: 30.0,
            f32_gflops: 200.0,
            f32_by_kernel: [("mkl".to_string(), 160.0), ("onednn".to_string(), 200.0)].into(),
            bf16_gflops: Some(400.0),
            f16_gflops: None,
            gemm_shape: [512, 2048, 2048],
            probe_ms: 900.0,
            steady: true,
            measured_at: "2026-12-02T00:00:00Z".into(),
            version: PROBE_VERSION,
            read_at_end_gbs: None,
        }
    }

    /// A short prompt is bound by reading the weights, a long one by arithmetic.
    #[test]
    fn the_bound_is_the_slower_of_reading_and_computing() {
        let r = roof();
        // 540 MB at 30 GB/s = 18 ms; 1 GFLOP at 200 GFLOP/s = 5 ms.
        assert!((r.bound_ms(540e6, 1e9, Some("f32")) - 18.0).abs() < 1e-9);
        // 100 GFLOP: 500 ms in f32, 250 ms in bf16 (weights read in 9 ms).
        assert!((r.bound_ms(270e6, 100e9, Some("f32")) - 500.0).abs() < 1e-9);
        assert!((r.bound_ms(270e6, 100e9, Some("bf16")) - 250.0).abs() < 1e-9);
    }

    #[test]
    fn quantized_weights_are_bound_by_the_best_peak_and_f16_falls_back_to_f32() {
        let r = roof();
        assert_eq!(r.peak_gflops(None), 400.0);
        assert_eq!(r.peak_gflops(Some("q4_1")), 400.0);
        assert_eq!(r.peak_gflops(Some("f16")), 200.0);
        assert_eq!(r.peak_gflops(Some("f32")), 200.0);
    }

    /// A later probe raises the figures it beat and leaves the others: the cache keeps a ceiling.
    #[test]
    fn a_later_probe_only_raises_figures() {
        let old = roof();
        let mut newer = roof();
        newer.read_gbs = 80.0;
        newer.f32_by_kernel = [("mkl".to_string(), 150.0), ("avx512".to_string(), 250.0)].into();
        newer.bf16_gflops = Some(300.0);
        newer.f16_gflops = Some(90.0);
        newer.measured_at = "2026-12-07T00:00:00Z".into();
        let r = old.raised_by(&newer);
        assert_eq!((r.read_gbs, r.f32_gflops), (80.0, 250.0));
        let kernels: Vec<(&str, f64)> = r
            .f32_by_kernel
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            kernels,
            [("avx512", 250.0), ("mkl", 160.0), ("onednn", 200.0)]
        );
        assert_eq!((r.bf16_gflops, r.f16_gflops), (Some(400.0), Some(90.0)));
        assert_eq!(r.measured_at, "2026-12-07T00:00:00Z");
        let mut lower = roof();
        lower.read_gbs = 20.0;
        lower.measured_at = "2026-12-08T00:00:00Z".into();
        assert_eq!(old.raised_by(&lower), old, "a lower probe changes nothing");
    }

    #[test]
    fn the_block_names_what_was_measured() {
        let text = roof().lines().join("\n");
        assert!(text.contains("memory read 30.0 GB/s"), "{text}");
        assert!(
            text.contains("f32 200 (mkl 160, onednn 200), bf16 400, f16 -"),
            "{text}"
        );
    }
}
