//! Reports: the summary table, the CSV (streamed row by row) and the JSON document, all built
//! from the same [`Report`], so they cannot disagree.

pub mod csv;
pub mod env;
pub mod json;
pub mod jsonl;
pub mod table;

use crate::backend::BackendKind;
use crate::bench::runner::{BackendReport, ParityRow, RunRecord};
use crate::bench::stats::{self, Summary};
use serde::Serialize;

/// One row of the summary: a (prompt set, backend) case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    /// Prompt set.
    pub prompt_type: String,
    /// Backend.
    pub runner: BackendKind,
    /// TTFT statistics over successful runs.
    pub ttft: Summary,
    /// Mean prompt tokens actually evaluated.
    pub prompt_tokens_mean: Option<f64>,
    /// Median of `ttft - server prompt_ms` (api only).
    pub api_overhead_median_ms: Option<f64>,
    /// Median server prompt time (api only).
    pub server_prompt_median_ms: Option<f64>,
    /// Median prefill time (in-process backends).
    pub prefill_median_ms: Option<f64>,
    /// Median decode time per token after the first.
    pub decode_ms_per_token_median: Option<f64>,
    /// Rows flagged with a cache hit (must be 0).
    pub cache_hits: usize,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per-backend facts and load times.
    pub backends: Vec<BackendReport>,
    /// Every timed run.
    pub runs: Vec<RunRecord>,
    /// Prompts whose token counts differ between backends.
    pub token_disagreements: Vec<ParityRow>,
}

impl Report {
    /// Summaries per (prompt set, backend), in first-seen order.
    pub fn summaries(&self) -> Vec<CaseSummary> {
        let mut keys: Vec<(String, BackendKind)> = Vec::new();
        for r in &self.runs {
            let k = (r.prompt_type.clone(), r.runner);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys.sort_by_key(|(set, kind)| {
            (self.runs.iter().position(|r| &r.prompt_type == set), *kind)
        });
        keys.into_iter()
            .map(|(set, kind)| {
                let rows: Vec<&RunRecord> = self
                    .runs
                    .iter()
                    .filter(|r| r.prompt_type == set && r.runner == kind)
                    .collect();
                let ok: Vec<_> = rows.iter().filter_map(|r| r.measurement.as_ref()).collect();
                let col = |f: &dyn Fn(&crate::backend::Measurement) -> Option<f64>| -> Vec<f64> {
                    ok.iter().filter_map(|m| f(m)).collect()
                };
                let ttft = col(&|m| Some(m.ttft_ms));
                CaseSummary {
                    prompt_type: set,
                    runner: kind,
                    ttft: Summary::of(&ttft, rows.len()),
                    prompt_tokens_mean: stats::mean(&col(&|m| m.prompt_tokens.map(f64::from))),
                    api_overhead_median_ms: stats::median(&col(&|m| m.api_overhead_ms)),
                    server_prompt_median_ms: stats::median(&col(&|m| m.server_prompt_ms)),
                    prefill_median_ms: stats::median(&col(&|m| m.prefill_ms)),
                    decode_ms_per_token_median: stats::median(&col(&|m| m.decode_ms_per_token)),
                    cache_hits: rows
                        .iter()
                        .filter(|r| r.flags.iter().any(|f| f.starts_with("cache_hit")))
                        .count(),
                }
            })
            .collect()
    }

    /// Number of failed runs.
    pub fn failures(&self) -> usize {
        self.runs.iter().filter(|r| !r.ok).count()
    }
}
