//! `--turns`: per backend, settings point and cache state, one line per turn with what its
//! conversations prefilled, what their caches held, and their TTFT. Each (conversation, turn)
//! is its own case, summarised by its median over runs; a turn's line combines its
//! conversations' cases: the median of their medians, and the means of their token counts.
//! Rows whose cache did not hold what the case claims (flagged `context_not_cached` /
//! `context_unproven`) are counted apart and left out of the TTFT.

use super::Report;
use crate::backend::BackendKind;
use crate::bench::depth::context_held;
use crate::bench::stats;
use serde::Serialize;
use std::collections::BTreeMap;

/// One turn of one (backend, point, cache state).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TurnSummary {
    /// Backend.
    pub runner: BackendKind,
    /// Settings point without the cache state ("" without a grid).
    pub point: String,
    /// `warm` or `cold`.
    pub cache: String,
    /// The user turn, from 1.
    pub turn: u32,
    /// Conversations with at least one counted run at this turn.
    pub conversations: usize,
    /// Mean over those conversations of the prompt tokens a run prefilled.
    pub prompt_tokens_mean: Option<f64>,
    /// Mean over them of the tokens the backend's cache held when the prefill began.
    pub cached_tokens_mean: Option<f64>,
    /// Median over them of each conversation's median TTFT, ms.
    pub ttft_median_ms: Option<f64>,
    /// Successful rows left out: the cache did not hold what the case claims.
    pub not_warm: usize,
    /// Failed rows.
    pub failed: usize,
}

/// The point label split into its base and the cache state (`threads=2 cache=warm`).
fn split_point(point: &str) -> (String, String) {
    match point.rsplit_once("cache=") {
        Some((base, cache)) => (base.trim_end().to_string(), cache.to_string()),
        None => (point.to_string(), String::new()),
    }
}

type Key = (BackendKind, String, String, u32);

/// One case's counted runs: TTFTs, prompt tokens, cached tokens.
#[derive(Default)]
struct Case {
    ttft: Vec<f64>,
    prompt: Vec<f64>,
    cached: Vec<f64>,
}

#[derive(Default)]
struct Cell {
    cases: BTreeMap<usize, Case>,
    not_warm: usize,
    failed: usize,
}

/// The per-turn lines, in backend, point, cache state and turn order.
pub fn summaries(report: &Report) -> Vec<TurnSummary> {
    let mut by: BTreeMap<Key, Cell> = BTreeMap::new();
    for r in &report.runs {
        let Some(turn) = r.turn else { continue };
        let (point, cache) = split_point(&r.point);
        let cell = by.entry((r.runner, point, cache, turn)).or_default();
        match (&r.measurement, context_held(r)) {
            (None, _) => cell.failed += 1,
            (Some(_), false) => cell.not_warm += 1,
            (Some(m), true) => {
                let c = cell.cases.entry(r.prompt.idx).or_default();
                c.ttft.push(m.ttft_ms);
                c.prompt.extend(m.prompt_tokens.map(f64::from));
                c.cached.extend(m.cached_tokens.map(f64::from));
            }
        }
    }
    by.into_iter()
        .map(|((runner, point, cache, turn), cell)| {
            let per_case = |f: fn(&Case) -> Option<f64>| -> Vec<f64> {
                cell.cases.values().filter_map(f).collect()
            };
            TurnSummary {
                runner,
                point,
                cache,
                turn,
                conversations: cell.cases.len(),
                prompt_tokens_mean: stats::mean(&per_case(|c| stats::mean(&c.prompt))),
                cached_tokens_mean: stats::mean(&per_case(|c| stats::mean(&c.cached))),
                ttft_median_ms: stats::median(&per_case(|c| stats::median(&c.ttft))),
                not_warm: cell.not_warm,
                failed: cell.failed,
            }
        })
        .collect()
}

/// The per-turn table for stdout (nothing without `--turns`).
pub fn render(report: &Report) -> String {
    let lines = summaries(report);
    if lines.is_empty() {
        return String::new();
    }
    let num = |v: Option<f64>, p: usize| v.map_or("-".into(), |x| format!("{x:.p$}"));
    let mut out = String::from(
        "\nturns: per turn, the mean over conversations of prompt and cached tokens, and the median over conversations of each one's median TTFT\n",
    );
    out += &format!(
        "{:<8} {:<14} {:<5} {:>4} {:>5} {:>11} {:>11} {:>10}  notes\n",
        "backend", "point", "cache", "turn", "convs", "prompt tok", "cached tok", "TTFT ms"
    );
    for l in &lines {
        let mut notes = Vec::new();
        if l.not_warm > 0 {
            notes.push(format!("{} rows not warm, left out", l.not_warm));
        }
        if l.failed > 0 {
            notes.push(format!("{} failed", l.failed));
        }
        out += &format!(
            "{:<8} {:<14} {:<5} {:>4} {:>5} {:>11} {:>11} {:>10}  {}\n",
            l.runner.name(),
            if l.point.is_empty() { "-" } else { &l.point },
            l.cache,
            l.turn,
            l.conversations,
            num(l.prompt_tokens_mean, 1),
            num(l.cached_tokens_mean, 1),
            num(l.ttft_median_ms, 2),
            notes.join("; ")
        );
    }
    out
}
