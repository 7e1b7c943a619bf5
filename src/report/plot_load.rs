//! A load sweep's plots (two or more load points on one server): TTFT and TPOT percentiles
//! against the offered load, and TTFT p99 against the throughput achieved, the curve that shows
//! what latency each throughput costs; one set per prompt set, repeats plotted as their mean.

use super::plot::{frame, legend, x_ticks};
use crate::bench::load::{LoadMode, LoadReport};
use std::fmt::Write;

/// One line of an x–y chart.
struct Line {
    label: String,
    color: &'static str,
    pts: Vec<(f64, f64)>,
}

/// Points joined in x order, one colour per line.
fn xy_chart(title: &str, xlabel: &str, ylabel: &str, lines: &[Line]) -> String {
    let all = || lines.iter().flat_map(|l| l.pts.iter());
    let xmax = all().map(|p| p.0).fold(0.0, f64::max).max(1e-9) * 1.05;
    let ymax = all().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let mut s = String::new();
    let (sx, sy) = frame(title, xlabel, ylabel, xmax, ymax, &mut s);
    x_ticks(&sx, xmax, &mut s);
    for l in lines {
        let mut pts = l.pts.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let line: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"/>"#,
            line.join(" "),
            l.color
        );
        for p in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"/>"#,
                sx(p.0),
                sy(p.1),
                l.color
            );
        }
    }
    let entries: Vec<(&str, String)> = lines.iter().map(|l| (l.color, l.label.clone())).collect();
    legend(&entries, &mut s);
    s.push_str("</svg>\n");
    s
}

/// The points of one (settings point, set) at each load, in the order they ran: several when
/// `--repeat` ran the load again (a plotted point is their mean).
type ByLoad<'a> = Vec<Vec<&'a LoadReport>>;

fn by_load<'a>(points: &[&'a LoadReport]) -> ByLoad<'a> {
    crate::bench::load_text::ordered_groups(points.iter().copied(), |r| r.label.clone())
}

/// The mean of `f` over a load's repeats that have it.
fn mean_of(g: &[&LoadReport], f: impl Fn(&LoadReport) -> Option<f64>) -> Option<f64> {
    crate::bench::stats::mean(&g.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
}

/// Percentile lines of one latency over the loads that have it.
fn percentiles(loads: &ByLoad, pick: fn(&LoadReport) -> [Option<f64>; 2]) -> Vec<Line> {
    ["p50", "p99"]
        .iter()
        .zip(["#1f77b4", "#d62728"])
        .enumerate()
        .map(|(i, (name, color))| Line {
            label: name.to_string(),
            color,
            pts: loads
                .iter()
                .filter_map(|g| mean_of(g, |r| pick(r)[i]).map(|y| (g[0].mode.offered(), y)))
                .collect(),
        })
        .collect()
}

/// A file-name-safe form of a label.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The sweep's plots, (file part, SVG): for each settings point and prompt set that ran two or
/// more loads (the parts get the set's name when there are several).
pub fn plots(points: &[LoadReport]) -> Vec<(String, String)> {
    let groups = crate::bench::load_text::groups(points);
    let several = groups.len() > 1;
    let mut out = Vec::new();
    for g in &groups {
        let suffix = match (several, g[0].settings.is_empty()) {
            (false, _) => String::new(),
            (true, true) => format!("-{}", safe(&g[0].set)),
            (true, false) => format!("-{}-{}", safe(&g[0].settings), safe(&g[0].set)),
        };
        for (part, svg) in group_plots(&by_load(g)) {
            out.push((format!("{part}{suffix}"), svg));
        }
    }
    out
}

/// One set's plots; none for a single load.
fn group_plots(loads: &ByLoad) -> Vec<(String, String)> {
    if loads.len() < 2 {
        return Vec::new();
    }
    let xlabel = match loads[0][0].mode {
        LoadMode::Open { .. } => "offered load (requests/s)",
        LoadMode::Closed { .. } => "offered load (concurrent clients)",
    };
    let ttft = percentiles(loads, |r| [r.ttft_ms.p50, r.ttft_ms.p99]);
    let tpot = percentiles(loads, |r| [r.tpot_ms.p50, r.tpot_ms.p99]);
    let pareto = vec![Line {
        label: "TTFT p99".into(),
        color: "#d62728",
        pts: loads
            .iter()
            .filter_map(|g| {
                let x = mean_of(g, |r| {
                    Some(
                        r.steady
                            .as_ref()
                            .map_or(r.request_throughput, |w| w.request_throughput),
                    )
                })?;
                mean_of(g, |r| r.ttft_ms.p99).map(|y| (x, y))
            })
            .collect(),
    }];
    vec![
        (
            "load-ttft".into(),
            xy_chart("TTFT vs offered load", xlabel, "TTFT (ms)", &ttft),
        ),
        (
            "load-tpot".into(),
            xy_chart("TPOT vs offered load", xlabel, "TPOT (ms)", &tpot),
        ),
        (
            "load-pareto".into(),
            xy_chart(
                "TTFT p99 vs throughput achieved (steady window)",
                "requests/s achieved",
                "TTFT p99 (ms)",
                &pareto,
            ),
        ),
    ]
}
