//! `ttft compare`: every newer report against the first, case by case; exit 1 on a regression.

use crate::cli::CompareArgs;
use crate::report::compare::{self, Comparison};
use crate::report::plot::{bar_chart, Bar};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

fn read(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))
}

/// Run the comparison; the exit code.
pub fn run(args: &CompareArgs) -> Result<i32> {
    let docs: Vec<Value> = args
        .reports
        .iter()
        .map(|p| read(p))
        .collect::<Result<_>>()?;
    let base = &args.reports[0];
    let mut regressions = 0;
    let mut markdown = String::new();
    let mut comparisons = Vec::new();
    for (path, doc) in args.reports.iter().zip(&docs).skip(1) {
        let rule = compare::Rule {
            threshold_pct: args.threshold,
            alpha: args.alpha,
        };
        let c = compare::compare(&docs[0], doc, rule)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if c.changes.is_empty() {
            bail!(
                "{} and {} have no case (prompt set, prompt, backend, point) in common",
                base.display(),
                path.display()
            );
        }
        let title = format!("{} → {}", base.display(), path.display());
        if args.reports.len() > 2 {
            println!("{title}");
        }
        print!("{}", compare::render(&c));
        let n = c
            .changes
            .iter()
            .filter(|c| c.verdict.is_regression())
            .count();
        if n > 0 {
            println!(
                "{n} case(s) regressed: slower by more than {}% (rank test p < {}) or fewer successful runs",
                args.threshold, args.alpha
            );
        }
        regressions += n;
        markdown.push_str(&compare::render_markdown(&title, &c));
        comparisons.push(c);
    }
    if let Some(md) = &args.export_markdown {
        std::fs::write(md, markdown)
            .with_context(|| format!("--export-markdown {}: cannot write", md.display()))?;
        println!("Markdown: {}", md.display());
    }
    if let Some(svg) = &args.plot {
        let drawn = plot(&args.reports, &comparisons);
        std::fs::write(svg, &drawn)
            .with_context(|| format!("--plot {}: cannot write", svg.display()))?;
        match crate::report::plot::svg_to_png(&drawn) {
            Ok(png) => std::fs::write(svg.with_extension("png"), png)
                .with_context(|| format!("--plot {}: cannot write the PNG", svg.display()))?,
            Err(e) => eprintln!("ttft: warning: PNG of {} not written: {e}", svg.display()),
        }
        println!("Plot: {} (+ .png)", svg.display());
    }
    Ok(if regressions > 0 { 1 } else { 0 })
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// Medians of every common case, side by side: the baseline, then each newer report.
fn plot(paths: &[std::path::PathBuf], comparisons: &[Comparison]) -> String {
    let mut bars = Vec::new();
    let Some(first) = comparisons.first() else {
        return bar_chart("no common cases", "case", &[]);
    };
    for ch in &first.changes {
        let name = |i: usize| {
            paths[i]
                .file_stem()
                .map_or(String::new(), |s| s.to_string_lossy().into_owned())
        };
        if let Some(m) = ch.old_median {
            bars.push(Bar {
                label: ch.key.to_string(),
                color: COLORS[0],
                value: m,
                ci: None,
                legend: name(0),
            });
        }
        for (j, c) in comparisons.iter().enumerate() {
            let same = c.changes.iter().find(|x| x.key == ch.key);
            if let Some(m) = same.and_then(|x| x.new_median) {
                bars.push(Bar {
                    label: String::new(),
                    color: COLORS[(j + 1) % COLORS.len()],
                    value: m,
                    ci: None,
                    legend: name(j + 1),
                });
            }
        }
    }
    // One legend entry per report.
    let mut seen = Vec::new();
    for b in bars.iter_mut() {
        if seen.contains(&b.legend) {
            b.legend.clear();
        } else {
            seen.push(b.legend.clone());
        }
    }
    bar_chart("Median TTFT per case, reports side by side", "case", &bars)
}
