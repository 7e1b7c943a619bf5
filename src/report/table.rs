//! The summary table (the seed's Prompt Type | Runner | Avg TTFT (s) | Success Rate, extended with
//! median, p90, prompt tokens and the API overhead).

use super::Report;
use prettytable::{format, row, Table};

fn secs(v: Option<f64>) -> String {
    v.map(|ms| format!("{:.4}", ms / 1e3))
        .unwrap_or_else(|| "-".into())
}

fn msf(v: Option<f64>) -> String {
    v.map(|ms| format!("{ms:.2}")).unwrap_or_else(|| "-".into())
}

/// Render the summary table as text.
pub fn render(report: &Report) -> String {
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_BOX_CHARS);
    t.set_titles(row![
        "Prompt Type",
        "Runner",
        "Avg TTFT (s)",
        "Median (s)",
        "p90 (s)",
        "Prompt tokens",
        "API overhead (ms)",
        "Success Rate"
    ]);
    for s in report.summaries() {
        t.add_row(row![
            s.prompt_type,
            s.runner,
            r->secs(s.ttft.mean_ms),
            r->secs(s.ttft.median_ms),
            r->secs(s.ttft.p90_ms),
            r->s.prompt_tokens_mean.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into()),
            r->msf(s.api_overhead_median_ms),
            r->format!("{:.0}% ({}/{})", s.ttft.success_rate() * 100.0, s.ttft.ok, s.ttft.runs)
        ]);
    }
    let mut out = t.to_string();
    for b in &report.backends {
        match (&b.load_ms, &b.open_error) {
            (Some(ms), _) => out.push_str(&format!(
                "{} load: {:.1} ms (not part of TTFT)\n",
                b.name, ms
            )),
            (None, Some(e)) => out.push_str(&format!("{} did not start: {e}\n", b.name)),
            _ => {}
        }
    }
    out
}
