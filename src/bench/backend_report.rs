//! What the report keeps of each backend besides its rows: load time, memory, the facts its
//! `info()` gives, and the prompt token counts its tokenizer gave before timing (compared across
//! backends here).

use crate::backend::{Backend, BackendKind};
use serde::Serialize;
use std::collections::BTreeMap;

/// Per-backend facts gathered outside the timed runs.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// The backend.
    pub name: BackendKind,
    /// The settings point it ran at ("" without a grid).
    pub point: String,
    /// Load time in ms (model load + context, or server start); `None` when it did not open.
    pub load_ms: Option<f64>,
    /// Peak resident memory of the ttft process while this backend ran, MiB (the mark is reset
    /// before each backend). For api the server's own peak is in `info.server_peak_rss_mib`.
    pub peak_rss_mib: Option<f64>,
    /// GPU memory the backend holds after its runs, MiB (nvidia-smi): the spawned server's, or
    /// what the ttft process gained since just before this backend loaded. None without a GPU.
    pub gpu_memory_mib: Option<f64>,
    /// Why the backend could not be opened.
    pub open_error: Option<String>,
    /// Backend facts (build, commit, settings actually used), as the backend reports them.
    pub info: serde_json::Value,
    /// The facts the report reads, typed, taken from `info` in one place.
    pub facts: BackendFacts,
    /// Prompt token counts from the backend's tokenizer: set name → per prompt.
    pub token_counts: BTreeMap<String, Vec<Option<u32>>>,
}

/// The facts of [`BackendReport::info`] that reports compute with: read once, here, so no
/// report module looks up JSON keys of its own.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BackendFacts {
    /// Model parameters (GGUF, checkpoint, or the server's `/v1/models` meta).
    pub n_params: Option<f64>,
    /// api: `llama` or `openai`.
    pub flavor: Option<String>,
    /// ggml's `system_info` line (inproc, spawned server).
    pub system_info: Option<String>,
    /// The spawned server's peak resident memory, MiB.
    pub server_peak_rss_mib: Option<f64>,
    /// Layers offloaded to a GPU.
    pub n_gpu_layers: Option<u64>,
    /// The spawned server's process id.
    pub server_pid: Option<u32>,
    /// Layers, widths, vocabulary and non-embedding parameters, for prefill FLOPs.
    pub model_shape: Option<crate::report::flops::ModelShape>,
    /// Bytes of weights one prefill reads (the roofline's memory side); only for weights this
    /// machine runs (hf, inproc, a spawned server).
    pub weight_bytes: Option<f64>,
    /// hf's dtype (`f32`, `bf16`, `f16`); None for GGUF weights (bound by the best peak).
    pub weight_dtype: Option<String>,
    /// hf: whether the device has GEMM kernels for that dtype (false: a bf16/f16 model on a CPU
    /// without the instructions, which libtorch runs through a slow fallback).
    pub native_gemm: Option<bool>,
}

impl BackendFacts {
    /// Read the facts from a backend's `info()` document.
    pub fn of(info: &serde_json::Value) -> Self {
        let f = |k: &str| info.get(k).and_then(|v| v.as_f64());
        let s = |k: &str| info.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Self {
            n_params: f("n_params").or_else(|| {
                info.pointer("/models/0/meta/n_params")
                    .and_then(|v| v.as_f64())
            }),
            flavor: s("flavor"),
            system_info: s("system_info"),
            server_peak_rss_mib: f("server_peak_rss_mib"),
            n_gpu_layers: info.get("n_gpu_layers").and_then(|v| v.as_u64()),
            server_pid: info
                .get("server_pid")
                .and_then(|v| v.as_u64())
                .map(|p| p as u32),
            model_shape: info
                .get("model_shape")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
            weight_bytes: f("weight_bytes"),
            weight_dtype: s("weight_dtype"),
            native_gemm: info.get("native_gemm").and_then(|v| v.as_bool()),
        }
    }
}

/// The facts of an opened backend after its runs (also used by load runs).
pub fn report(
    backend: &dyn Backend,
    point: &str,
    token_counts: BTreeMap<String, Vec<Option<u32>>>,
) -> BackendReport {
    let info = backend.info();
    let facts = BackendFacts::of(&info);
    BackendReport {
        name: backend.kind(),
        point: point.to_string(),
        load_ms: Some(backend.load_ms()),
        peak_rss_mib: crate::report::env::peak_rss_mib(None),
        gpu_memory_mib: gpu_memory_mib(backend.kind(), &facts),
        open_error: None,
        info,
        facts,
        token_counts,
    }
}

/// See `BackendReport::gpu_memory_mib`; a remote api server's memory is not ours to see.
fn gpu_memory_mib(kind: BackendKind, facts: &BackendFacts) -> Option<f64> {
    if kind == BackendKind::Api {
        crate::report::gpu::backend_used_mib(Some(facts.server_pid?))
    } else {
        crate::report::gpu::backend_used_mib(None)
    }
}

/// Prompts whose token counts differ between backends: (set, index, counts per backend).
pub type ParityRow = (String, usize, BTreeMap<BackendKind, Option<u32>>);

/// Compare the pre-counted prompt tokens across backends; only disagreeing prompts are returned.
pub fn token_disagreements(reports: &[BackendReport]) -> Vec<ParityRow> {
    let mut out = Vec::new();
    let opened: Vec<&BackendReport> = reports
        .iter()
        .filter(|r| !r.token_counts.is_empty())
        .collect();
    let Some(first) = opened.first() else {
        return out;
    };
    for (set, counts) in &first.token_counts {
        for idx in 0..counts.len() {
            let per: BTreeMap<BackendKind, Option<u32>> = opened
                .iter()
                .map(|r| {
                    (
                        r.name,
                        r.token_counts
                            .get(set)
                            .and_then(|c| c.get(idx).copied().flatten()),
                    )
                })
                .collect();
            let mut vals = per.values();
            let v0 = vals.next().copied().flatten();
            if per.values().any(|v| v.is_none() || *v != v0) {
                out.push((set.clone(), idx, per));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kind: BackendKind, counts: &[Option<u32>]) -> BackendReport {
        BackendReport {
            name: kind,
            point: String::new(),
            load_ms: Some(1.0),
            peak_rss_mib: None,
            gpu_memory_mib: None,
            open_error: None,
            info: serde_json::Value::Null,
            facts: BackendFacts::default(),
            token_counts: [("short".to_string(), counts.to_vec())].into(),
        }
    }

    #[test]
    fn disagreements_list_only_differing_prompts() {
        let a = report(BackendKind::Inproc, &[Some(5), Some(9), Some(3)]);
        let b = report(BackendKind::Api, &[Some(5), Some(10), None]);
        let d = token_disagreements(&[a, b]);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].1, 1);
        assert_eq!(d[0].2[&BackendKind::Api], Some(10));
        assert_eq!(d[1].1, 2);
    }
}
