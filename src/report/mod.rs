//! Reports: the summary table, the CSV and JSON lines (streamed row by row), the JSON document,
//! Markdown and plots, all built from the same [`Report`], so they cannot disagree.

pub mod agreement;
pub mod cases;
pub mod compare;
pub mod csv;
pub mod depth;
pub mod env;
pub mod flops;
pub mod gpu;
pub mod json;
pub mod jsonl;
pub mod markdown;
pub mod outputs;
pub mod plot;
pub mod plot_load;
pub mod relative;
pub mod roofline;
pub mod table;
pub mod turns;
pub mod warnings;

pub use cases::{CaseSummary, Level};

use crate::backend::BackendKind;
use crate::bench::parity::ParityReport;
use crate::bench::record::RunRecord;
use crate::bench::runner::{BackendReport, ParityRow};
use crate::bench::stats;
use serde::Serialize;
use std::collections::BTreeMap;

/// Percentiles of a pooled sample (ITL).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

impl Percentiles {
    pub(crate) fn of(xs: &[f64]) -> Self {
        Self {
            p50: stats::percentile(xs, 50.0),
            p90: stats::percentile(xs, 90.0),
            p99: stats::percentile(xs, 99.0),
        }
    }
}

/// TTFT ≈ a + b·n for one backend over its successful runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fit {
    /// Backend.
    pub runner: BackendKind,
    /// Settings point.
    pub point: String,
    /// Fixed per-request cost, ms.
    pub a_ms: f64,
    /// Prefill cost per prompt token, ms.
    pub b_ms_per_token: f64,
    /// 1000 / b (None when b is not positive).
    pub prefill_tokens_per_s: Option<f64>,
    /// Coefficient of determination.
    pub r2: f64,
    /// Distinct prompt lengths in the fit.
    pub lengths: Vec<u32>,
}

/// Did the backends pick the same greedy first token for a prompt?
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FirstTokenAgreement {
    /// Prompt set.
    pub prompt_type: String,
    /// Index in the set.
    pub prompt_idx: usize,
    /// Settings point the backends share ("" without a grid).
    pub point: String,
    /// First token text per backend (first successful run).
    pub first_tokens: BTreeMap<BackendKind, String>,
    /// First token id per backend, where the backend gives one.
    pub first_token_ids: BTreeMap<BackendKind, u32>,
    /// The same token everywhere: by id where both sides have one, else by visible text.
    pub agree: bool,
    /// "id", "text" (no backend gave an id) or "id+text" (`by_text` had none).
    pub compared_by: String,
    /// Backends compared by text because they report no token id (OpenAI-compatible servers).
    pub by_text: Vec<BackendKind>,
}

/// A prompt set as measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SetInfo {
    /// Its name ("Prompt Type").
    pub name: String,
    /// Where its prompts came from.
    pub path: String,
    /// Prompts in it.
    pub prompts: usize,
    /// The set is one case (synthetic exact-length prompts), not one case per prompt.
    pub one_case: bool,
    /// A `--dataset` set: the file line of each prompt (by prompt index), so a row can be traced
    /// back to its request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_lines: Option<Vec<usize>>,
}

impl SetInfo {
    /// The facts of a prompt set as the report records them.
    pub fn of(set: &crate::bench::prompts::PromptSet) -> Self {
        Self {
            name: set.name.clone(),
            path: set.path.display().to_string(),
            prompts: set.prompts.len(),
            one_case: set.is_one_case(),
            dataset_lines: set.dataset.as_ref().map(|d| d.lines.clone()),
        }
    }
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The prompt sets, in run order.
    pub sets: Vec<SetInfo>,
    /// Per-backend facts and load times.
    pub backends: Vec<BackendReport>,
    /// Every timed run.
    pub runs: Vec<RunRecord>,
    /// Prompts whose token counts differ between the opened backends.
    pub token_disagreements: Vec<ParityRow>,
    /// The parity gate run before timing.
    pub parity: ParityReport,
    /// The load points' summaries (`--concurrency` / `--request-rate`, one per listed value or
    /// saturation probe), in the order they ran.
    pub load: Vec<crate::bench::load::LoadReport>,
    /// `--max-goodput`: the saturation searches over those points (per set and repetition).
    pub load_searches: Vec<crate::bench::load_search::SearchReport>,
    /// Peak dense TFLOP/s of the GPU each backend ran on (only for backends on a known GPU).
    pub peak_tflops: BTreeMap<BackendKind, f64>,
    /// This machine's measured roofline, or why there is none.
    pub roofline: Result<roofline::Roofline, String>,
}

impl Report {
    /// Least-squares TTFT vs prompt tokens per backend (needs two or more distinct lengths).
    pub fn fits(&self) -> Vec<Fit> {
        let mut by: BTreeMap<(BackendKind, String), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for r in &self.runs {
            if let Some(m) = &r.measurement {
                if let Some(n) = m.prompt_tokens {
                    let e = by.entry((r.runner, r.point.clone())).or_default();
                    e.0.push(f64::from(n));
                    e.1.push(m.ttft_ms);
                }
            }
        }
        by.into_iter()
            .filter_map(|((k, point), (xs, ys))| {
                let (a, b, r2) = stats::linear_fit(&xs, &ys)?;
                let mut lengths: Vec<u32> = xs.iter().map(|&x| x as u32).collect();
                lengths.sort();
                lengths.dedup();
                Some(Fit {
                    runner: k,
                    point,
                    a_ms: a,
                    b_ms_per_token: b,
                    prefill_tokens_per_s: (b > 0.0).then(|| 1000.0 / b),
                    r2,
                    lengths,
                })
            })
            .collect()
    }

    /// Per prompt, whether the backends' greedy first tokens agree (see [`agreement`]).
    pub fn first_token_agreement(&self) -> Vec<FirstTokenAgreement> {
        type Key = (usize, String, usize, String);
        let mut map: BTreeMap<Key, BTreeMap<BackendKind, agreement::Seen>> = BTreeMap::new();
        for r in &self.runs {
            if let Some(m) = &r.measurement {
                let set_pos = self
                    .runs
                    .iter()
                    .position(|x| x.prompt.set == r.prompt.set)
                    .unwrap_or(0);
                map.entry((set_pos, r.prompt.set.clone(), r.prompt.idx, r.point.clone()))
                    .or_default()
                    .entry(r.runner)
                    .or_insert_with(|| agreement::Seen::of(m));
            }
        }
        map.into_iter()
            .filter(|(_, t)| t.len() > 1)
            .map(|((_, set, idx, point), seen)| {
                let v = agreement::compare(&seen);
                FirstTokenAgreement {
                    agree: v.agree,
                    compared_by: v.compared_by.to_string(),
                    by_text: v.by_text,
                    prompt_type: set,
                    prompt_idx: idx,
                    point,
                    first_token_ids: seen.iter().filter_map(|(k, s)| Some((*k, s.id?))).collect(),
                    first_tokens: seen.into_iter().map(|(k, s)| (k, s.text)).collect(),
                }
            })
            .collect()
    }

    /// The least time a prefill of `n` tokens can take on `kind`'s weights here, ms: the
    /// roofline's bound for its weight bytes and dtype (None without a roofline or the facts).
    fn roofline_bound_ms(&self, kind: BackendKind, point: &str, n: f64) -> Option<f64> {
        let roof = self.roofline.as_ref().ok()?;
        // Each settings point opened its own backend: its dtype decides the weight bytes.
        let facts = &self
            .backends
            .iter()
            .find(|b| b.name == kind && b.point == point)
            .or_else(|| self.backends.iter().find(|b| b.name == kind))?
            .facts;
        let flops = facts.model_shape?.prefill_flops(n);
        Some(roof.bound_ms(facts.weight_bytes?, flops, facts.weight_dtype.as_deref()))
    }

    /// The shape of the model a backend ran (from its facts: config.json, the GGUF header).
    fn model_shape(&self, kind: BackendKind) -> Option<flops::ModelShape> {
        self.backends
            .iter()
            .find(|b| b.name == kind)?
            .facts
            .model_shape
    }

    /// Number of failed runs.
    pub fn failures(&self) -> usize {
        self.runs.iter().filter(|r| !r.ok).count()
    }
}
