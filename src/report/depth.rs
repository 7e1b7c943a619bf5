//! `--depth`: TTFT against the cached context's length, per prompt set, backend and settings
//! point. The fit is least squares over the per-prompt medians (one point per prompt and depth,
//! so no prompt weighs more for having more runs): TTFT ≈ intercept + slope · depth, the slope
//! given in ms per 1000 tokens of context. Rows whose cache did not hold the context (flagged
//! `context_not_cached` / `context_unproven`) are not warm and stay out of it.

use super::plot::{line_chart, Series};
use super::Report;
use crate::backend::BackendKind;
use crate::bench::depth::context_held;
use crate::bench::record::RunRecord;
use crate::bench::stats;
use serde::Serialize;
use std::collections::BTreeMap;

/// The depth fit of one (set, backend, point).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DepthFit {
    /// Prompt set.
    pub prompt_type: String,
    /// Backend.
    pub runner: BackendKind,
    /// Settings point without the depth ("" without a grid).
    pub point: String,
    /// Per depth: the mean over the set's prompts of their median TTFT, ms.
    pub medians: Vec<(u32, f64)>,
    /// TTFT at depth 0 by the fit, ms.
    pub intercept_ms: f64,
    /// Extra TTFT per 1000 tokens of cached context, ms.
    pub ms_per_1k_depth: f64,
    /// Coefficient of determination over the per-prompt medians.
    pub r2: f64,
    /// Warm rows left out (cache not holding the context).
    pub not_warm: usize,
}

/// Whether a row counts at its depth: it succeeded and its cache held exactly the context.
fn warm(r: &RunRecord) -> bool {
    r.ok && context_held(r)
}

/// The point label without its `depth=N` part.
pub fn base_point(r: &RunRecord) -> String {
    let tag = format!("depth={}", r.depth);
    r.point
        .strip_suffix(&tag)
        .unwrap_or(&r.point)
        .trim_end()
        .to_string()
}

type Key = (String, BackendKind, String);
/// Per (prompt, depth) the TTFTs of warm rows, and how many rows were not warm.
type Cells = (BTreeMap<(usize, u32), Vec<f64>>, usize);

/// Per (set, backend, point): per (prompt, depth) the TTFTs of warm rows, and the rows left out.
fn collect(report: &Report) -> BTreeMap<Key, Cells> {
    let mut by: BTreeMap<Key, Cells> = BTreeMap::new();
    for r in report.runs.iter().filter(|r| r.point.contains("depth=")) {
        let e = by
            .entry((r.prompt.set.clone(), r.runner, base_point(r)))
            .or_default();
        match (warm(r), r.ttft_ms()) {
            (true, Some(t)) => e.0.entry((r.prompt.idx, r.depth)).or_default().push(t),
            (false, Some(_)) => e.1 += 1,
            _ => {}
        }
    }
    by
}

/// The fits (needs two or more depths).
pub fn fits(report: &Report) -> Vec<DepthFit> {
    let mut out = Vec::new();
    for ((set, runner, point), (cells, not_warm)) in collect(report) {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        let mut per_depth: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for ((_, depth), ttfts) in &cells {
            if let Some(m) = stats::median(ttfts) {
                xs.push(f64::from(*depth));
                ys.push(m);
                per_depth.entry(*depth).or_default().push(m);
            }
        }
        if per_depth.len() < 2 {
            continue;
        }
        let Some((a, b, r2)) = stats::linear_fit(&xs, &ys) else {
            continue;
        };
        out.push(DepthFit {
            prompt_type: set,
            runner,
            point,
            medians: per_depth
                .iter()
                .filter_map(|(d, v)| stats::mean(v).map(|m| (*d, m)))
                .collect(),
            intercept_ms: a,
            ms_per_1k_depth: b * 1000.0,
            r2,
            not_warm,
        });
    }
    out
}

/// One line per fit, for stdout.
pub fn render(report: &Report) -> String {
    fits(report)
        .iter()
        .map(|f| {
            let who = if f.point.is_empty() {
                f.runner.to_string()
            } else {
                format!("{} [{}]", f.runner, f.point)
            };
            let meds: Vec<String> = f
                .medians
                .iter()
                .map(|(d, m)| format!("{d}: {m:.2}"))
                .collect();
            format!(
                "depth fit {} {who}: TTFT ≈ {:.2} ms + {:.2} ms per 1k context tokens (R² {:.3}; median ms by depth {}){}\n",
                f.prompt_type,
                f.intercept_ms,
                f.ms_per_1k_depth,
                f.r2,
                meds.join(", "),
                if f.not_warm > 0 { format!("; {} rows not warm, left out", f.not_warm) } else { String::new() }
            )
        })
        .collect()
}

/// One plot per prompt set: per backend, the set's mean of per-prompt medians against depth
/// (band: the lowest and highest prompt median at that depth), with the fit line.
pub fn plots(report: &Report) -> Vec<(String, String)> {
    let mut per_set: BTreeMap<String, Series> = BTreeMap::new();
    for ((set, runner, _), (cells, _)) in collect(report) {
        let mut per_depth: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for ((_, depth), ttfts) in &cells {
            if let Some(m) = stats::median(ttfts) {
                per_depth.entry(*depth).or_default().push(m);
            }
        }
        if per_depth.len() < 2 {
            continue;
        }
        let pts = per_depth
            .iter()
            .filter_map(|(d, v)| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(0.0, f64::max);
                stats::mean(v).map(|m| (f64::from(*d), m, (lo, hi)))
            })
            .collect();
        per_set.entry(set).or_default().insert(runner, pts);
    }
    per_set
        .into_iter()
        .map(|(set, data)| {
            let title = format!("TTFT vs cached context ({set})");
            (
                set,
                line_chart(
                    &title,
                    "context depth (tokens)",
                    "bands: prompt medians min–max",
                    &data,
                ),
            )
        })
        .collect()
}
