//! The protocol every backend goes through, identically:
//!
//! 1. open the backend (model load / server start), timed as load time, never as TTFT;
//! 2. count the prompt tokens of every prompt with the backend's own tokenizer (untimed), so token
//!    disagreements between backends are reported, not hidden;
//! 3. per prompt set: `warmup` untimed runs, then `runs` timed runs of every prompt;
//! 4. every run, success or failure, becomes a [`RunRecord`] handed to the sink as soon as it ends.
//!
//! Backends run one after another, never concurrently, so they do not compete for the cores.

use super::interrupt;
use super::prompts::PromptSet;
use crate::backend::{Backend, BackendKind, Measurement};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;

/// One timed run, successful or not.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Prompt set name ("short", "long", ...).
    pub prompt_type: String,
    /// Index of the prompt in its set.
    pub prompt_idx: usize,
    /// Repetition number, from 0.
    pub run_idx: u32,
    /// The backend.
    pub runner: BackendKind,
    /// The prompt text.
    pub prompt_text: String,
    /// Whether a first token was produced.
    pub ok: bool,
    /// Why not, when `ok` is false.
    pub error: Option<String>,
    /// Warnings about this row (cache hit, token count differing from the tokenizer count).
    pub flags: Vec<String>,
    /// What was measured, when `ok`.
    #[serde(flatten)]
    pub measurement: Option<Measurement>,
}

impl RunRecord {
    /// TTFT in milliseconds of a successful run.
    pub fn ttft_ms(&self) -> Option<f64> {
        self.measurement.as_ref().map(|m| m.ttft_ms)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Prompt sets, in order.
    pub sets: Vec<PromptSet>,
    /// Timed repetitions of every prompt.
    pub runs: u32,
    /// Untimed warm-up runs per prompt set (first prompt of the set).
    pub warmup: u32,
    /// Tokens to generate per run.
    pub max_new_tokens: u32,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// Prompts that do not fit the context (`--skip-too-long`): failed rows, never timed.
    pub too_long: std::collections::BTreeMap<(String, usize), String>,
    /// 1: a line per run on stderr.
    pub verbose: u8,
    /// Keep repeating a prompt beyond `runs` until it has been measured this long.
    pub min_time: std::time::Duration,
}

/// `--min-time` never runs a prompt more than this many times `--runs`.
pub const MAX_EXTRA_FACTOR: u32 = 20;

/// Per-backend facts gathered outside the timed runs.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// The backend.
    pub name: BackendKind,
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
    /// Backend facts (build, commit, settings actually used).
    pub info: serde_json::Value,
    /// Prompt token counts from the backend's tokenizer: set name → per prompt.
    pub token_counts: BTreeMap<String, Vec<Option<u32>>>,
}

/// Run every prompt of `plan` on an opened backend, handing each record to `sink` as it ends.
pub fn run_backend(
    backend: &mut dyn Backend,
    plan: &Plan,
    sink: &mut dyn FnMut(&RunRecord),
) -> BackendReport {
    let kind = backend.kind();
    let mut token_counts = BTreeMap::new();
    for set in &plan.sets {
        let counts = set
            .prompts
            .iter()
            .map(|p| {
                if interrupt::requested() {
                    None
                } else {
                    backend.prompt_token_count(p).ok()
                }
            })
            .collect::<Vec<_>>();
        token_counts.insert(set.name.clone(), counts);
    }

    for set in &plan.sets {
        let bar = progress_bar(plan, kind, set);
        let first_fit =
            (0..set.prompts.len()).find(|i| !plan.too_long.contains_key(&(set.name.clone(), *i)));
        let warm = set.warmup.as_ref().or(first_fit.map(|i| &set.prompts[i]));
        if let Some(first) = warm {
            for _ in 0..plan.warmup {
                if interrupt::requested() {
                    break;
                }
                // Warm-ups are never recorded; a failing warm-up shows up in the timed runs anyway.
                let _ = backend.measure(first, plan.max_new_tokens);
            }
        }
        let counts = &token_counts[&set.name];
        for (idx, prompt) in set.prompts.iter().enumerate() {
            let started = std::time::Instant::now();
            let min_runs = set.repeat.unwrap_or(plan.runs);
            // hyperfine's --min-time: at least `runs` repetitions, more until the prompt has been
            // measured for `min_time` (bounded, so a slow backend cannot run forever).
            let more = |run_idx: u32| {
                run_idx < min_runs
                    || (set.repeat.is_none()
                        && started.elapsed() < plan.min_time
                        && run_idx < min_runs.saturating_mul(MAX_EXTRA_FACTOR))
            };
            let mut run_idx = 0;
            while more(run_idx) {
                run_idx += 1;
                let run_idx = run_idx - 1;
                if interrupt::requested() {
                    bar.abandon();
                    return report(backend, token_counts);
                }
                if let Some(reason) = plan.too_long.get(&(set.name.clone(), idx)) {
                    sink(&failed_record(set, idx, run_idx, kind, reason.clone()));
                    bar.inc(1);
                    continue;
                }
                let rec = match backend.measure(prompt, plan.max_new_tokens) {
                    Ok(mut m) => {
                        let mut flags = row_flags(&m, counts[idx]);
                        if m.prompt_tokens.is_none() && counts[idx].is_some() {
                            // The stream carried no count (OpenAI servers that send no usage
                            // while streaming): the untimed pre-count of this prompt stands in.
                            m.prompt_tokens = counts[idx];
                            flags.push("prompt_tokens_from_untimed_usage".into());
                        }
                        RunRecord {
                            prompt_type: set.name.clone(),
                            prompt_idx: idx,
                            run_idx,
                            runner: kind,
                            prompt_text: prompt.clone(),
                            ok: true,
                            error: None,
                            flags,
                            measurement: Some(m),
                        }
                    }
                    Err(e) => failed_record(set, idx, run_idx, kind, e.to_string()),
                };
                if plan.verbose >= 1 {
                    match (&rec.measurement, &rec.error) {
                        (Some(m), _) => eprintln!(
                            "ttft: {kind} {}#{idx} run {run_idx}: ttft {:.2} ms, {} prompt tokens",
                            set.name,
                            m.ttft_ms,
                            m.prompt_tokens.map_or("?".into(), |n| n.to_string())
                        ),
                        (None, e) => eprintln!(
                            "ttft: {kind} {}#{idx} run {run_idx}: failed: {}",
                            set.name,
                            e.as_deref().unwrap_or("?")
                        ),
                    }
                }
                sink(&rec);
                bar.inc(1);
            }
        }
        bar.finish();
    }
    report(backend, token_counts)
}

/// The facts of an opened backend after its runs (also used by load runs).
pub fn report(
    backend: &dyn Backend,
    token_counts: BTreeMap<String, Vec<Option<u32>>>,
) -> BackendReport {
    let info = backend.info();
    BackendReport {
        name: backend.kind(),
        load_ms: Some(backend.load_ms()),
        peak_rss_mib: crate::report::env::peak_rss_mib(None),
        gpu_memory_mib: gpu_memory_mib(backend.kind(), &info),
        open_error: None,
        info,
        token_counts,
    }
}

/// See `BackendReport::gpu_memory_mib`; a remote api server's memory is not ours to see.
fn gpu_memory_mib(kind: BackendKind, info: &serde_json::Value) -> Option<f64> {
    if kind == BackendKind::Api {
        let pid = info.get("server_pid")?.as_u64()?;
        crate::report::gpu::backend_used_mib(Some(pid as u32))
    } else {
        crate::report::gpu::backend_used_mib(None)
    }
}

/// A backend that could not be opened: every run it would have made is a failed row with the reason.
pub fn run_unopened(
    kind: BackendKind,
    reason: &str,
    plan: &Plan,
    sink: &mut dyn FnMut(&RunRecord),
) -> BackendReport {
    for set in &plan.sets {
        for idx in 0..set.prompts.len() {
            for run_idx in 0..set.repeat.unwrap_or(plan.runs) {
                sink(&failed_record(set, idx, run_idx, kind, reason.to_string()));
            }
        }
    }
    BackendReport {
        name: kind,
        load_ms: None,
        peak_rss_mib: None,
        gpu_memory_mib: None,
        open_error: Some(reason.to_string()),
        info: serde_json::Value::Null,
        token_counts: BTreeMap::new(),
    }
}

fn failed_record(
    set: &PromptSet,
    idx: usize,
    run_idx: u32,
    kind: BackendKind,
    error: String,
) -> RunRecord {
    RunRecord {
        prompt_type: set.name.clone(),
        prompt_idx: idx,
        run_idx,
        runner: kind,
        prompt_text: set.prompts[idx].clone(),
        ok: false,
        error: Some(error),
        flags: Vec::new(),
        measurement: None,
    }
}

/// Warnings for one successful row: a server-side cache hit (the run is not a cold prefill) and
/// a prompt token count that differs from what the backend's tokenizer said beforehand.
pub fn row_flags(m: &Measurement, tokenizer_count: Option<u32>) -> Vec<String> {
    let mut flags = Vec::new();
    if m.first_token.is_empty() {
        // End-of-generation or an incomplete UTF-8 piece: TTFT ended at a token with no text.
        flags.push("first_token_without_text".to_string());
    }
    if let Some(c) = m.cache_n.filter(|&c| c > 0) {
        flags.push(format!("cache_hit:{c}"));
    }
    if let (Some(used), Some(counted)) = (m.prompt_tokens, tokenizer_count) {
        if used != counted {
            flags.push(format!("prompt_tokens_{used}_vs_tokenizer_{counted}"));
        }
    }
    flags
}

fn progress_bar(plan: &Plan, kind: BackendKind, set: &PromptSet) -> ProgressBar {
    let total = (set.prompts.len() as u64) * u64::from(set.repeat.unwrap_or(plan.runs));
    if !plan.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {elapsed_precise}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{kind} {}", set.name));
    bar
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

    #[test]
    fn cache_hits_and_token_mismatch_are_flagged() {
        let m = Measurement {
            first_token: " x".into(),
            cache_n: Some(12),
            prompt_tokens: Some(20),
            ..Measurement::default()
        };
        let f = row_flags(&m, Some(21));
        assert_eq!(f, ["cache_hit:12", "prompt_tokens_20_vs_tokenizer_21"]);
        let clean = Measurement {
            first_token: " x".into(),
            cache_n: Some(0),
            prompt_tokens: Some(20),
            ..Measurement::default()
        };
        assert!(row_flags(&clean, Some(20)).is_empty());
        let eog = Measurement::default();
        assert_eq!(row_flags(&eog, None), ["first_token_without_text"]);
    }

    fn report(kind: BackendKind, counts: &[Option<u32>]) -> BackendReport {
        BackendReport {
            name: kind,
            load_ms: Some(1.0),
            peak_rss_mib: None,
            gpu_memory_mib: None,
            open_error: None,
            info: serde_json::Value::Null,
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
