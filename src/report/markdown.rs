//! The summary as a Markdown table (`--export-markdown`), for pull requests and issues.

use super::table::columns;
use super::Report;

/// Escape a cell for a Markdown table.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Render the summary, the relative speeds and the fits as Markdown.
pub fn render(report: &Report, breakdown: bool, per_prompt: bool) -> Vec<u8> {
    let sums = super::table::rows(report, per_prompt);
    let mut out = String::from("## TTFT summary\n\n");
    if let Some(first) = sums.first() {
        let cols = columns(first, breakdown);
        out.push_str(&format!(
            "| {} |\n",
            cols.iter().map(|c| c.0).collect::<Vec<_>>().join(" | ")
        ));
        out.push_str(&format!(
            "|{}|\n",
            cols.iter()
                .map(|c| if c.2 { "---:" } else { ":---" })
                .collect::<Vec<_>>()
                .join("|")
        ));
    }
    for s in &sums {
        let vals: Vec<String> = columns(s, breakdown)
            .into_iter()
            .map(|c| cell(&c.1))
            .collect();
        out.push_str(&format!("| {} |\n", vals.join(" | ")));
    }
    if report.sets.iter().any(|s| !s.one_case) {
        out.push_str(&format!("\n{}\n", super::table::SET_ROW_NOTE));
    }
    let rel = report.relative();
    if !rel.is_empty() {
        out.push('\n');
        for r in rel {
            out.push_str(&format!("- {r}\n"));
        }
    }
    let fits = super::table::render_fits(report);
    if !fits.is_empty() {
        out.push('\n');
        for l in fits.lines() {
            out.push_str(&format!("- {l}\n"));
        }
    }
    out.into_bytes()
}
