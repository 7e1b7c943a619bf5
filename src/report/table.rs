//! The summary table (the seed's Prompt Type | Runner | Avg TTFT (s) | Success Rate, extended with
//! median and its confidence interval, p90, prompt tokens and the API overhead; `--breakdown` adds
//! the TTFT parts and decode metrics). One row per prompt set, computed from its prompts;
//! `--per-prompt` adds a row per prompt (`long#1`).

use super::{CaseSummary, Level, Report};
use prettytable::{format, Cell, Row, Table};

fn secs(v: Option<f64>) -> String {
    v.map(|ms| format!("{:.4}", ms / 1e3))
        .unwrap_or_else(|| "-".into())
}

/// Milliseconds with two decimals, "-" when absent.
pub fn msf(v: Option<f64>) -> String {
    v.map(|ms| format!("{ms:.2}")).unwrap_or_else(|| "-".into())
}

/// The columns of one case: (header, value, right-aligned).
pub fn columns(s: &CaseSummary, breakdown: bool) -> Vec<(&'static str, String, bool)> {
    let prompt = match s.prompt_idx {
        Some(i) => format!("{}#{i}", s.prompt_type),
        None => s.prompt_type.clone(),
    };
    let runner = if s.point.is_empty() {
        s.runner.to_string()
    } else {
        format!("{} [{}]", s.runner, s.point)
    };
    let mut c = vec![
        ("Prompt Type", prompt, false),
        ("Runner", runner, false),
        ("Avg TTFT (s)", secs(s.ttft.mean_ms), true),
        ("Median (s)", secs(s.ttft.median_ms), true),
        (
            "Median 95% CI (s)",
            s.ttft
                .median_ci95_ms
                .map(|(a, b)| format!("{:.4}–{:.4}", a / 1e3, b / 1e3))
                .unwrap_or_else(|| "-".into()),
            true,
        ),
        ("p90 (s)", secs(s.ttft.p90_ms), true),
        (
            "Prompt tokens",
            s.prompt_tokens_mean
                .map(|x| format!("{x:.1}"))
                .unwrap_or_else(|| "-".into()),
            true,
        ),
        ("API overhead (ms)", msf(s.api_overhead_median_ms), true),
        (
            "Roofline",
            s.roofline_fraction
                .map(|f| format!("{f:.2}"))
                .unwrap_or_else(|| "-".into()),
            true,
        ),
    ];
    if breakdown {
        c.extend([
            ("Tokenize (ms)", msf(s.tokenize_median_ms), true),
            ("Prefill (ms)", msf(s.prefill_median_ms), true),
            ("Sample (ms)", msf(s.first_sample_median_ms), true),
            ("Detok (ms)", msf(s.detokenize_median_ms), true),
            ("Server prompt (ms)", msf(s.server_prompt_median_ms), true),
            ("TPOT p50 (ms)", msf(s.tpot_ms.p50), true),
            ("ITL p90 (ms)", msf(s.itl_ms.p90), true),
            (
                "Prefill TFLOP/s",
                match (s.prefill_tflops_median, s.prefill_peak_fraction) {
                    (Some(t), Some(f)) => format!("{t:.3} ({:.1}% of peak)", f * 100.0),
                    (Some(t), None) => format!("{t:.3}"),
                    _ => "-".into(),
                },
                true,
            ),
        ]);
    }
    c.push((
        "Success Rate",
        format!(
            "{:.0}% ({}/{})",
            s.ttft.success_rate() * 100.0,
            s.ttft.ok,
            s.ttft.runs
        ),
        true,
    ));
    c
}

/// The rows shown: set rows, and with `per_prompt` each set's prompt rows after it.
pub fn rows(report: &Report, per_prompt: bool) -> Vec<CaseSummary> {
    report
        .summaries()
        .into_iter()
        .filter(|s| per_prompt || s.level == Level::Set)
        .collect()
}

/// How set rows are computed, said under every table that shows them.
pub const SET_ROW_NOTE: &str = "Set rows: each prompt's statistics, averaged over the set's prompts (Median = mean of per-prompt medians, CI by bootstrap within each prompt); --per-prompt shows every prompt.";

/// Render the summary table (and load time, memory, relative speed, fits) as text.
pub fn render(report: &Report, breakdown: bool, per_prompt: bool) -> String {
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_BOX_CHARS);
    let sums = rows(report, per_prompt);
    if let Some(first) = sums.first() {
        t.set_titles(Row::new(
            columns(first, breakdown)
                .iter()
                .map(|(h, _, _)| Cell::new(h))
                .collect(),
        ));
    }
    for s in &sums {
        t.add_row(Row::new(
            columns(s, breakdown)
                .into_iter()
                .map(|(_, v, right)| {
                    let c = Cell::new(&v);
                    if right {
                        c.style_spec("r")
                    } else {
                        c
                    }
                })
                .collect(),
        ));
    }
    let mut out = t.to_string();
    if report.sets.iter().any(|s| !s.one_case) {
        out.push_str(SET_ROW_NOTE);
        out.push('\n');
    }
    for b in &report.backends {
        let who = if b.point.is_empty() {
            b.name.to_string()
        } else {
            format!("{} [{}]", b.name, b.point)
        };
        match (&b.load_ms, &b.open_error) {
            (Some(ms), _) => {
                let mut line = format!("{who} load: {ms:.1} ms (not part of TTFT)");
                if let Some(m) = b.peak_rss_mib {
                    line.push_str(&format!(", peak RSS {m:.0} MiB"));
                }
                if let Some(m) = b.facts.server_peak_rss_mib {
                    line.push_str(&format!(", server peak RSS {m:.0} MiB"));
                }
                if let Some(n) = b.facts.n_gpu_layers {
                    if n > 0 {
                        line.push_str(&format!(", n_gpu_layers {n}"));
                    }
                }
                if let Some(m) = b.gpu_memory_mib {
                    line.push_str(&format!(", GPU memory {m:.0} MiB"));
                }
                out.push_str(&line);
                out.push('\n');
            }
            (None, Some(e)) => out.push_str(&format!("{who} did not start: {e}\n")),
            _ => {}
        }
    }
    for r in report.relative() {
        out.push_str(&r);
        out.push('\n');
    }
    out
}

/// The least-squares fits, one line each.
pub fn render_fits(report: &Report) -> String {
    report
        .fits()
        .iter()
        .filter(|f| f.lengths.len() >= 2)
        .map(|f| {
            format!(
                "fit {}: TTFT ≈ {:.2} ms + {:.4} ms/token × n  ({} prompt tokens/s, R² {:.4}, lengths {:?})\n",
                if f.point.is_empty() { f.runner.to_string() } else { format!("{} [{}]", f.runner, f.point) },
                f.a_ms,
                f.b_ms_per_token,
                f.prefill_tokens_per_s.map_or("-".into(), |t| format!("{t:.0}")),
                f.r2,
                f.lengths
            )
        })
        .collect()
}
