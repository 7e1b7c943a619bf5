//! Statistics per case — (prompt set, prompt, backend, settings point) — and the set rows built
//! from them. Different prompts are never pooled into one sample: a set row is the mean of its
//! prompts' statistics, its CI a bootstrap within each prompt. A synthetic exact-length set is
//! one case (its prompts are fresh draws of one length), so its row is computed over its runs.

use super::{Percentiles, Report};
use crate::backend::{BackendKind, Measurement};
use crate::bench::bootstrap;
use crate::bench::record::RunRecord;
use crate::bench::stats::{self, Summary, BOOTSTRAP_SEED};
use serde::Serialize;

/// Whether a summary describes one prompt or combines a set's prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// One prompt's runs.
    Prompt,
    /// A prompt set: its prompts' statistics combined (or one case for a synthetic set).
    Set,
}

/// How a set row combines its prompts (recorded in the JSON next to the numbers).
pub const SET_METHOD: &str = "per-prompt statistics averaged over the set's prompts (each prompt weighs the same); median CI: bootstrap within each prompt of the mean of per-prompt medians";
/// How a synthetic set's row is computed.
pub const ONE_CASE_METHOD: &str =
    "one case: exact-length synthetic prompts, a fresh text per run, statistics over all runs";

/// One summary row.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    /// Prompt or set.
    pub level: Level,
    /// How a set row was computed (None for prompt rows).
    pub method: Option<&'static str>,
    /// Prompt set.
    pub prompt_type: String,
    /// The prompt (None for a set row).
    pub prompt_idx: Option<usize>,
    /// Backend.
    pub runner: BackendKind,
    /// Settings point ("" without a grid).
    pub point: String,
    /// Prompts combined (1 for a prompt row).
    pub prompts: usize,
    /// TTFT statistics over successful runs.
    pub ttft: Summary,
    /// Indices (in run order) of statistical outliers (median/MAD), within the case.
    pub outliers: Vec<usize>,
    /// The case's first timed run was much slower than its others (a cold start leaking in).
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
    /// ITL: every gap between consecutive tokens, pooled over the case's requests.
    pub itl_ms: Percentiles,
    /// Rows flagged with a cache hit (must be 0).
    pub cache_hits: usize,
    /// Where the successful runs stopped: at an end-of-generation token or at max_new_tokens.
    pub stops: Stops,
    /// Mean tokens generated per successful run (TPOT and E2E compare equal work only when
    /// this is equal across backends; `--ignore-eos` makes it max_new_tokens everywhere).
    pub generated_tokens_mean: Option<f64>,
    /// Achieved prefill throughput, TFLOP/s (median over runs): the prefill's FLOPs
    /// ([`crate::report::flops`]: non-embedding parameters per token, the LM head for one
    /// position, causal attention's n² term) over the prefill time (server prompt time for api).
    /// None when the backend reports no model shape.
    pub prefill_tflops_median: Option<f64>,
    /// That as a fraction of the GPU's dense peak for the dtype, when the backend ran on a known GPU.
    pub prefill_peak_fraction: Option<f64>,
    /// The prefill's roofline fraction (median over runs): this machine's least possible prefill
    /// time for the backend's weight bytes and FLOPs ([`crate::report::roofline`]) over the
    /// achieved one (server prompt time for a spawned server); 1 = at the limit.
    pub roofline_fraction: Option<f64>,
}

impl CaseSummary {
    /// Whether this row describes one case (a prompt, or a one-case synthetic set), so that
    /// case-level checks (outliers, a cold first run) apply to it; a combined set row is not.
    pub fn is_case(&self) -> bool {
        self.level == Level::Prompt || self.method == Some(ONE_CASE_METHOD)
    }
}

/// How many successful runs stopped where (`stop_reason`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Stops {
    /// At an end-of-generation token (`eos`).
    pub eos: usize,
    /// At max_new_tokens (`length`).
    pub length: usize,
    /// Another reason the server gave, or none.
    pub other: usize,
}

impl Stops {
    fn of(ms: &[&Measurement]) -> Self {
        let mut s = Self::default();
        for m in ms {
            match m.stop_reason.as_deref() {
                Some("eos") => s.eos += 1,
                Some("length") => s.length += 1,
                _ => s.other += 1,
            }
        }
        s
    }

    fn sum(all: impl Iterator<Item = Stops>) -> Self {
        all.fold(Self::default(), |a, b| Self {
            eos: a.eos + b.eos,
            length: a.length + b.length,
            other: a.other + b.other,
        })
    }
}

/// The key of a set's rows: (set, backend, point).
pub type SetKey = (String, BackendKind, String);

fn median_of(ms: &[&Measurement], f: impl Fn(&Measurement) -> Option<f64>) -> Option<f64> {
    stats::median(&ms.iter().filter_map(|m| f(m)).collect::<Vec<_>>())
}

impl Report {
    /// (set, backend, point) in first-seen order of sets, then backend, then point.
    pub fn set_keys(&self) -> Vec<SetKey> {
        let mut keys: Vec<SetKey> = Vec::new();
        for r in &self.runs {
            let k = (r.prompt.set.clone(), r.runner, r.point.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let set_pos = |s: &str| self.runs.iter().position(|r| r.prompt.set == s);
        keys.sort_by_key(|(s, k, _)| (set_pos(s), *k));
        keys
    }

    /// Whether `set` is one case (a synthetic exact-length set).
    pub(super) fn one_case(&self, set: &str) -> bool {
        self.sets.iter().any(|s| s.name == set && s.one_case)
    }

    /// Per-prompt cases of a set, by prompt index (empty for a synthetic set).
    pub fn prompt_cases(&self, key: &SetKey) -> Vec<CaseSummary> {
        if self.one_case(&key.0) {
            return Vec::new();
        }
        let mut idxs: Vec<usize> = self.rows(key).map(|r| r.prompt.idx).collect();
        idxs.sort_unstable();
        idxs.dedup();
        idxs.into_iter()
            .map(|i| {
                let rows: Vec<&RunRecord> = self.rows(key).filter(|r| r.prompt.idx == i).collect();
                let mut c = self.case(key, &rows);
                c.prompt_idx = Some(i);
                c
            })
            .collect()
    }

    fn rows<'a>(&'a self, key: &'a SetKey) -> impl Iterator<Item = &'a RunRecord> + 'a {
        self.runs
            .iter()
            .filter(move |r| r.prompt.set == key.0 && r.runner == key.1 && r.point == key.2)
    }

    /// The set row of `key`, from its prompt cases (or over its runs for a synthetic set).
    pub fn set_case(&self, key: &SetKey) -> CaseSummary {
        self.set_rows(key).0
    }

    /// The set row and the prompt rows of `key`; the prompt cases are computed once and the set
    /// row is combined from them.
    fn set_rows(&self, key: &SetKey) -> (CaseSummary, Vec<CaseSummary>) {
        if self.one_case(&key.0) {
            let rows: Vec<&RunRecord> = self.rows(key).collect();
            let mut c = self.case(key, &rows);
            c.level = Level::Set;
            c.method = Some(ONE_CASE_METHOD);
            c.prompts = rows
                .iter()
                .map(|r| r.prompt.idx)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            return (c, Vec::new());
        }
        let prompts = self.prompt_cases(key);
        let groups: Vec<Vec<f64>> = prompts
            .iter()
            .filter_map(|p| {
                let v = self.ttfts(key, p.prompt_idx?);
                (!v.is_empty()).then_some(v)
            })
            .collect();
        (combine(key, &prompts, &groups), prompts)
    }

    /// Successful TTFTs of every run of a set key (all prompts: for a one-case set).
    pub(super) fn all_ttfts(&self, key: &SetKey) -> Vec<f64> {
        self.rows(key).filter_map(RunRecord::ttft_ms).collect()
    }

    /// Successful TTFTs of one prompt of a set key.
    pub fn ttfts(&self, key: &SetKey, idx: usize) -> Vec<f64> {
        self.rows(key)
            .filter(|r| r.prompt.idx == idx)
            .filter_map(RunRecord::ttft_ms)
            .collect()
    }

    /// Every summary: for each set key its set row, then its prompt rows.
    pub fn summaries(&self) -> Vec<CaseSummary> {
        self.set_keys()
            .iter()
            .flat_map(|k| {
                let (set, prompts) = self.set_rows(k);
                std::iter::once(set).chain(prompts)
            })
            .collect()
    }

    fn case(&self, key: &SetKey, rows: &[&RunRecord]) -> CaseSummary {
        let ok: Vec<&Measurement> = rows.iter().filter_map(|r| r.measurement.as_ref()).collect();
        let ttft: Vec<f64> = ok.iter().map(|m| m.ttft_ms).collect();
        let itl: Vec<f64> = ok.iter().flat_map(|m| m.itl_ms.iter().copied()).collect();
        let shape = self.model_shape(key.1);
        let tflops: Vec<f64> = ok
            .iter()
            .filter_map(|m| {
                let t = m.prefill_ms.or(m.server_prompt_ms)?;
                let n = f64::from(m.prompt_tokens?);
                let flops = shape?.prefill_flops(n);
                (t > 0.0).then(|| flops / (t * 1e-3) / 1e12)
            })
            .collect();
        let tflops_median = stats::median(&tflops);
        let roofline: Vec<f64> = ok
            .iter()
            .filter_map(|m| {
                let t = m.prefill_ms.or(m.server_prompt_ms)?;
                let bound = self.roofline_bound_ms(key.1, &key.2, f64::from(m.prompt_tokens?))?;
                (t > 0.0).then(|| bound / t)
            })
            .collect();
        let tpot: Vec<f64> = ok.iter().filter_map(|m| m.decode_ms_per_token).collect();
        let tokens: Vec<f64> = ok
            .iter()
            .filter_map(|m| m.prompt_tokens.map(f64::from))
            .collect();
        let generated: Vec<f64> = ok.iter().map(|m| f64::from(m.generated_tokens)).collect();
        CaseSummary {
            level: Level::Prompt,
            method: None,
            prompt_type: key.0.clone(),
            prompt_idx: None,
            runner: key.1,
            point: key.2.clone(),
            prompts: 1,
            ttft: Summary::of(&ttft, rows.len()),
            outliers: stats::outliers(&ttft),
            first_run_much_slower: stats::first_run_much_slower(&ttft),
            prompt_tokens_mean: stats::mean(&tokens),
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
            stops: Stops::of(&ok),
            generated_tokens_mean: stats::mean(&generated),
            prefill_tflops_median: tflops_median,
            prefill_peak_fraction: tflops_median
                .zip(self.peak_tflops.get(&key.1))
                .map(|(a, p)| a / p),
            roofline_fraction: stats::median(&roofline),
        }
    }
}

/// Mean over the prompts that have a value.
fn avg(prompts: &[CaseSummary], f: impl Fn(&CaseSummary) -> Option<f64>) -> Option<f64> {
    stats::mean(&prompts.iter().filter_map(f).collect::<Vec<_>>())
}

/// A set row from its prompt rows: each number the mean of the prompts' numbers, the median's CI
/// by a stratified bootstrap over `groups` (each prompt's successful TTFTs).
fn combine(key: &SetKey, prompts: &[CaseSummary], groups: &[Vec<f64>]) -> CaseSummary {
    let t = |f: fn(&Summary) -> Option<f64>| avg(prompts, |p| f(&p.ttft));
    let pct = |f: fn(&CaseSummary) -> &Percentiles| Percentiles {
        p50: avg(prompts, |p| f(p).p50),
        p90: avg(prompts, |p| f(p).p90),
        p99: avg(prompts, |p| f(p).p99),
    };
    let ttft = Summary {
        runs: prompts.iter().map(|p| p.ttft.runs).sum(),
        ok: prompts.iter().map(|p| p.ttft.ok).sum(),
        mean_ms: t(|s| s.mean_ms),
        median_ms: t(|s| s.median_ms),
        p90_ms: t(|s| s.p90_ms),
        p99_ms: t(|s| s.p99_ms),
        median_ci95_ms: bootstrap::bootstrap_mean_of_medians_ci(
            groups,
            10_000,
            0.95,
            BOOTSTRAP_SEED,
        ),
        stddev_ms: t(|s| s.stddev_ms),
        min_ms: prompts
            .iter()
            .filter_map(|p| p.ttft.min_ms)
            .min_by(f64::total_cmp),
        max_ms: prompts
            .iter()
            .filter_map(|p| p.ttft.max_ms)
            .max_by(f64::total_cmp),
    };
    CaseSummary {
        level: Level::Set,
        method: Some(SET_METHOD),
        prompt_type: key.0.clone(),
        prompt_idx: None,
        runner: key.1,
        point: key.2.clone(),
        prompts: prompts.len(),
        ttft,
        outliers: Vec::new(),
        first_run_much_slower: prompts.iter().any(|p| p.first_run_much_slower),
        prompt_tokens_mean: avg(prompts, |p| p.prompt_tokens_mean),
        tokenize_median_ms: avg(prompts, |p| p.tokenize_median_ms),
        prefill_median_ms: avg(prompts, |p| p.prefill_median_ms),
        first_sample_median_ms: avg(prompts, |p| p.first_sample_median_ms),
        detokenize_median_ms: avg(prompts, |p| p.detokenize_median_ms),
        server_prompt_median_ms: avg(prompts, |p| p.server_prompt_median_ms),
        api_overhead_median_ms: avg(prompts, |p| p.api_overhead_median_ms),
        tpot_ms: pct(|p| &p.tpot_ms),
        itl_ms: pct(|p| &p.itl_ms),
        cache_hits: prompts.iter().map(|p| p.cache_hits).sum(),
        stops: Stops::sum(prompts.iter().map(|p| p.stops)),
        generated_tokens_mean: avg(prompts, |p| p.generated_tokens_mean),
        prefill_tflops_median: avg(prompts, |p| p.prefill_tflops_median),
        prefill_peak_fraction: avg(prompts, |p| p.prefill_peak_fraction),
        roofline_fraction: avg(prompts, |p| p.roofline_fraction),
    }
}
