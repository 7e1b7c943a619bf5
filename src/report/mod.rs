//! Reports: the summary table, the CSV and JSON lines (streamed row by row), the JSON document,
//! Markdown and plots, all built from the same [`Report`], so they cannot disagree.

pub mod compare;
pub mod csv;
pub mod env;
pub mod gpu;
pub mod json;
pub mod jsonl;
pub mod markdown;
pub mod plot;
pub mod table;

use crate::backend::BackendKind;
use crate::bench::parity::ParityReport;
use crate::bench::runner::{BackendReport, ParityRow, RunRecord};
use crate::bench::stats::{self, Summary};
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
    fn of(xs: &[f64]) -> Self {
        Self {
            p50: stats::percentile(xs, 50.0),
            p90: stats::percentile(xs, 90.0),
            p99: stats::percentile(xs, 99.0),
        }
    }
}

/// One row of the summary: a (prompt set, backend) case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    /// Prompt set.
    pub prompt_type: String,
    /// Backend.
    pub runner: BackendKind,
    /// TTFT statistics over successful runs.
    pub ttft: Summary,
    /// Indices (in run order) of statistical outliers (median/MAD).
    pub outliers: Vec<usize>,
    /// The first timed run was much slower than the rest (a cold start leaking in).
    pub first_run_much_slower: bool,
    /// Mean prompt tokens actually evaluated.
    pub prompt_tokens_mean: Option<f64>,
    /// Median tokenize time.
    pub tokenize_median_ms: Option<f64>,
    /// Median prefill time (in-process backends).
    pub prefill_median_ms: Option<f64>,
    /// Median first-sample time.
    pub first_sample_median_ms: Option<f64>,
    /// Median detokenize time.
    pub detokenize_median_ms: Option<f64>,
    /// Median server prompt time (api only).
    pub server_prompt_median_ms: Option<f64>,
    /// Median of `ttft - server prompt_ms` (api only).
    pub api_overhead_median_ms: Option<f64>,
    /// TPOT: per request (e2e - ttft) / (generated - 1), percentiles over requests.
    pub tpot_ms: Percentiles,
    /// ITL: every gap between consecutive tokens, pooled over requests.
    pub itl_ms: Percentiles,
    /// Rows flagged with a cache hit (must be 0).
    pub cache_hits: usize,
    /// Achieved prefill throughput, TFLOP/s (median over runs), counting 2 × parameters × prompt
    /// tokens over the prefill time (server prompt time for api).
    pub prefill_tflops_median: Option<f64>,
    /// That as a fraction of the GPU's dense peak for the dtype, when the backend ran on a known GPU.
    pub prefill_peak_fraction: Option<f64>,
}

/// TTFT ≈ a + b·n for one backend over its successful runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fit {
    /// Backend.
    pub runner: BackendKind,
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
    /// First token per backend (first successful run).
    pub first_tokens: BTreeMap<BackendKind, String>,
    /// All equal.
    pub agree: bool,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per-backend facts and load times.
    pub backends: Vec<BackendReport>,
    /// Every timed run.
    pub runs: Vec<RunRecord>,
    /// Prompts whose token counts differ between the opened backends.
    pub token_disagreements: Vec<ParityRow>,
    /// The parity gate run before timing.
    pub parity: ParityReport,
    /// The load run's summary (`--concurrency` / `--request-rate`).
    pub load: Option<crate::bench::load::LoadReport>,
    /// Peak dense TFLOP/s of the GPU each backend ran on (only for backends on a known GPU).
    pub peak_tflops: BTreeMap<BackendKind, f64>,
}

fn median_of(
    ms: &[&crate::backend::Measurement],
    f: impl Fn(&crate::backend::Measurement) -> Option<f64>,
) -> Option<f64> {
    stats::median(&ms.iter().filter_map(|m| f(m)).collect::<Vec<_>>())
}

impl Report {
    fn cases(&self) -> Vec<(String, BackendKind)> {
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
        keys
    }

    /// Summaries per (prompt set, backend), sets in first-seen order.
    pub fn summaries(&self) -> Vec<CaseSummary> {
        self.cases()
            .into_iter()
            .map(|(set, kind)| {
                let rows: Vec<&RunRecord> = self
                    .runs
                    .iter()
                    .filter(|r| r.prompt_type == set && r.runner == kind)
                    .collect();
                let ok: Vec<&crate::backend::Measurement> =
                    rows.iter().filter_map(|r| r.measurement.as_ref()).collect();
                let ttft: Vec<f64> = ok.iter().map(|m| m.ttft_ms).collect();
                let itl: Vec<f64> = ok.iter().flat_map(|m| m.itl_ms.iter().copied()).collect();
                let params = self.n_params(kind);
                let tflops: Vec<f64> = ok
                    .iter()
                    .filter_map(|m| {
                        let t = m.prefill_ms.or(m.server_prompt_ms)?;
                        let n = f64::from(m.prompt_tokens?);
                        let p = params?;
                        (t > 0.0).then(|| 2.0 * p * n / (t * 1e-3) / 1e12)
                    })
                    .collect();
                let tflops_median = stats::median(&tflops);
                let tpot: Vec<f64> = ok.iter().filter_map(|m| m.decode_ms_per_token).collect();
                CaseSummary {
                    prompt_type: set,
                    runner: kind,
                    ttft: Summary::of(&ttft, rows.len()),
                    outliers: stats::outliers(&ttft),
                    first_run_much_slower: stats::first_run_much_slower(&ttft),
                    prompt_tokens_mean: stats::mean(
                        &ok.iter()
                            .filter_map(|m| m.prompt_tokens.map(f64::from))
                            .collect::<Vec<_>>(),
                    ),
                    tokenize_median_ms: median_of(&ok, |m| m.tokenize_ms),
                    prefill_median_ms: median_of(&ok, |m| m.prefill_ms),
                    first_sample_median_ms: median_of(&ok, |m| m.first_sample_ms),
                    detokenize_median_ms: median_of(&ok, |m| m.detokenize_ms),
                    server_prompt_median_ms: median_of(&ok, |m| m.server_prompt_ms),
                    api_overhead_median_ms: median_of(&ok, |m| m.api_overhead_ms),
                    tpot_ms: Percentiles::of(&tpot),
                    itl_ms: Percentiles::of(&itl),
                    cache_hits: rows
                        .iter()
                        .filter(|r| r.flags.iter().any(|f| f.starts_with("cache_hit")))
                        .count(),
                    prefill_tflops_median: tflops_median,
                    prefill_peak_fraction: tflops_median
                        .zip(self.peak_tflops.get(&kind))
                        .map(|(a, p)| a / p),
                }
            })
            .collect()
    }

    /// Least-squares TTFT vs prompt tokens per backend (needs two or more distinct lengths).
    pub fn fits(&self) -> Vec<Fit> {
        let mut by: BTreeMap<BackendKind, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for r in &self.runs {
            if let Some(m) = &r.measurement {
                if let Some(n) = m.prompt_tokens {
                    let e = by.entry(r.runner).or_default();
                    e.0.push(f64::from(n));
                    e.1.push(m.ttft_ms);
                }
            }
        }
        by.into_iter()
            .filter_map(|(k, (xs, ys))| {
                let (a, b, r2) = stats::linear_fit(&xs, &ys)?;
                let mut lengths: Vec<u32> = xs.iter().map(|&x| x as u32).collect();
                lengths.sort();
                lengths.dedup();
                Some(Fit {
                    runner: k,
                    a_ms: a,
                    b_ms_per_token: b,
                    prefill_tokens_per_s: (b > 0.0).then(|| 1000.0 / b),
                    r2,
                    lengths,
                })
            })
            .collect()
    }

    /// "inproc is 1.83 ± 0.07 × faster than api on long prompts": per prompt set, the fastest
    /// backend (by mean TTFT) against each other one, the uncertainty propagated from the stddevs.
    pub fn relative(&self) -> Vec<String> {
        let sums = self.summaries();
        let mut out = Vec::new();
        let mut sets: Vec<&str> = Vec::new();
        for s in &sums {
            if !sets.contains(&s.prompt_type.as_str()) {
                sets.push(&s.prompt_type);
            }
        }
        for set in sets {
            let mut cases: Vec<&CaseSummary> = sums
                .iter()
                .filter(|s| s.prompt_type == set && s.ttft.mean_ms.is_some())
                .collect();
            if cases.len() < 2 {
                continue;
            }
            cases.sort_by(|a, b| a.ttft.mean_ms.partial_cmp(&b.ttft.mean_ms).expect("finite"));
            let best = cases[0];
            for other in &cases[1..] {
                let (r, e) = stats::ratio_with_error(
                    other.ttft.mean_ms.expect("some"),
                    other.ttft.stddev_ms.unwrap_or(0.0),
                    best.ttft.mean_ms.expect("some"),
                    best.ttft.stddev_ms.unwrap_or(0.0),
                );
                out.push(format!(
                    "{} is {r:.2} ± {e:.2} × faster than {} on {set} prompts",
                    best.runner, other.runner
                ));
            }
        }
        out
    }

    /// Per prompt, whether the backends' greedy first tokens agree.
    pub fn first_token_agreement(&self) -> Vec<FirstTokenAgreement> {
        let mut map: BTreeMap<(usize, String, usize), BTreeMap<BackendKind, String>> =
            BTreeMap::new();
        for r in &self.runs {
            if let Some(m) = &r.measurement {
                let set_pos = self
                    .runs
                    .iter()
                    .position(|x| x.prompt_type == r.prompt_type)
                    .unwrap_or(0);
                map.entry((set_pos, r.prompt_type.clone(), r.prompt_idx))
                    .or_default()
                    .entry(r.runner)
                    .or_insert_with(|| m.first_token.clone());
            }
        }
        map.into_iter()
            .filter(|(_, t)| t.len() > 1)
            .map(|((_, set, idx), t)| {
                let first = t.values().next().cloned().unwrap_or_default();
                FirstTokenAgreement {
                    agree: t.values().all(|v| *v == first),
                    prompt_type: set,
                    prompt_idx: idx,
                    first_tokens: t,
                }
            })
            .collect()
    }

    /// Parameters of the model a backend ran (from its facts: GGUF, checkpoint, `/v1/models`).
    fn n_params(&self, kind: BackendKind) -> Option<f64> {
        let info = &self.backends.iter().find(|b| b.name == kind)?.info;
        info.get("n_params")
            .or_else(|| info.pointer("/models/0/meta/n_params"))
            .and_then(|v| v.as_f64())
    }

    /// Number of failed runs.
    pub fn failures(&self) -> usize {
        self.runs.iter().filter(|r| !r.ok).count()
    }
}
