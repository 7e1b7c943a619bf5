//! Plots without a Python step: hand-written SVG (and PNG rendered from it with resvg).
//!
//! * TTFT vs prompt tokens: per backend the median at each prompt length, a band for the bootstrap
//!   95 % confidence interval of that median, and the least-squares line a + b·n dashed.
//! * One bar chart per prompt set: median TTFT per backend with the confidence interval as whiskers.

use super::Report;
use crate::backend::BackendKind;
use crate::bench::stats;
use std::collections::BTreeMap;
use std::fmt::Write;

const W: f64 = 860.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// A colour per backend, stable across plots.
pub fn color(k: BackendKind) -> &'static str {
    match k {
        BackendKind::Hf => "#d62728",
        BackendKind::Inproc => "#1f77b4",
        BackendKind::Api => "#2ca02c",
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `target` ticks up to `max`.
pub fn tick_step(max: f64, target: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / target;
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * p
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) fn frame(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    xmax: f64,
    ymax: f64,
    out: &mut String,
) -> (impl Fn(f64) -> f64, impl Fn(f64) -> f64) {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sx = move |x: f64| LEFT + x / xmax * pw;
    let sy = move |y: f64| TOP + ph - y / ymax * ph;
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="28" font-size="17" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        esc(title)
    );
    let ystep = tick_step(ymax, 6.0);
    let mut y = 0.0;
    while y <= ymax + 1e-9 {
        let (x2, yy, tx, ty, label) = (LEFT + pw, sy(y), LEFT - 8.0, sy(y) + 4.0, fmt_num(y));
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##
        );
        y += ystep;
    }
    let (bottom, right) = (TOP + ph, LEFT + pw);
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}" stroke="#333"/><line x1="{LEFT}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#333"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 15.0,
        esc(xlabel)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(22 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        esc(ylabel)
    );
    (sx, sy)
}

fn fmt_num(v: f64) -> String {
    if v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Labels under the x axis, about eight of them.
pub(super) fn x_ticks(sx: &dyn Fn(f64) -> f64, xmax: f64, s: &mut String) {
    let xstep = tick_step(xmax, 8.0);
    let mut x = 0.0;
    while x <= xmax {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            sx(x),
            H - BOTTOM + 18.0,
            fmt_num(x)
        );
        x += xstep;
    }
}

pub(super) fn legend(entries: &[(&str, String)], out: &mut String) {
    for (i, (col, label)) in entries.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 22.0;
        let x = W - RIGHT + 15.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="14" height="14" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            y - 11.0,
            col,
            x + 20.0,
            y,
            esc(label)
        );
    }
}

/// Median TTFT and its CI per backend and prompt length, from successful runs.
/// (prompt tokens, median TTFT, 95 % CI of the median) per backend.
pub type Series = BTreeMap<BackendKind, Vec<(f64, f64, (f64, f64))>>;

fn by_length(report: &Report) -> Series {
    let mut raw: BTreeMap<(BackendKind, u32), Vec<f64>> = BTreeMap::new();
    for r in &report.runs {
        if let Some(m) = &r.measurement {
            if let Some(n) = m.prompt_tokens {
                raw.entry((r.runner, n)).or_default().push(m.ttft_ms);
            }
        }
    }
    let mut out: Series = BTreeMap::new();
    for ((k, n), xs) in raw {
        let med = stats::median(&xs).unwrap_or(0.0);
        let ci = stats::bootstrap_median_ci(&xs, 2000, 0.95, stats::BOOTSTRAP_SEED)
            .unwrap_or((med, med));
        out.entry(k).or_default().push((f64::from(n), med, ci));
    }
    out
}

/// TTFT vs prompt tokens (None when no backend has two or more distinct prompt lengths).
pub fn ttft_vs_tokens(report: &Report) -> Option<String> {
    let data = by_length(report);
    if data.values().all(|v| v.len() < 2) {
        return None;
    }
    Some(line_chart(
        "Time to first token vs prompt length",
        "prompt tokens",
        "bands: 95 % CI of the median",
        &data,
    ))
}

/// Median TTFT (with its CI band and least-squares line) against `xlabel`, one line per backend:
/// points are (x, median, 95 % CI of the median).
pub fn line_chart(title: &str, xlabel: &str, band: &str, data: &Series) -> String {
    let xmax = data.values().flatten().map(|p| p.0).fold(0.0, f64::max) * 1.05;
    let ymax = data
        .values()
        .flatten()
        .map(|p| p.2 .1.max(p.1))
        .fold(0.0, f64::max)
        * 1.1;
    let mut s = String::new();
    let (sx, sy) = frame(title, xlabel, "TTFT (ms, median)", xmax, ymax, &mut s);
    x_ticks(&sx, xmax, &mut s);
    let mut legend_entries = Vec::new();
    for (k, pts) in data {
        let label = draw_series(&mut s, *k, pts, (&sx, &sy), (xmax, ymax));
        legend_entries.push((color(*k), label));
    }
    legend(&legend_entries, &mut s);
    let (nx, ny) = (
        W - RIGHT + 15.0,
        TOP + 30.0 + legend_entries.len() as f64 * 22.0,
    );
    let _ = writeln!(
        s,
        r##"<text x="{nx}" y="{ny}" font-size="10" fill="#555">{band}</text><text x="{nx}" y="{}" font-size="10" fill="#555">dashed: least-squares fit</text>"##,
        ny + 14.0
    );
    s.push_str("</svg>\n");
    s
}

/// One backend's medians, CI band and fit line; returns its legend text.
fn draw_series(
    s: &mut String,
    k: BackendKind,
    pts: &[(f64, f64, (f64, f64))],
    (sx, sy): (&dyn Fn(f64) -> f64, &dyn Fn(f64) -> f64),
    (xmax, ymax): (f64, f64),
) -> String {
    let c = color(k);
    // Confidence band: upper edge left to right, lower edge back.
    let mut band: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.2 .1)))
        .collect();
    band.extend(
        pts.iter()
            .rev()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.2 .0))),
    );
    let _ = writeln!(
        s,
        r#"<polygon points="{}" fill="{c}" fill-opacity="0.18" stroke="none"/>"#,
        band.join(" ")
    );
    let line: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2.5"/>"#,
        line.join(" ")
    );
    for p in pts {
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{c}"/>"#,
            sx(p.0),
            sy(p.1)
        );
    }
    let xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let mut label = k.name().to_string();
    if let Some((a, b, r2)) = stats::linear_fit(&xs, &ys) {
        let x0 = 0.0;
        let x1 = xmax / 1.05;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="1.2" stroke-dasharray="6 4"/>"#,
            sx(x0),
            sy(a.max(0.0)),
            sx(x1),
            sy((a + b * x1).min(ymax))
        );
        label = format!("{} (R² {:.3})", k.name(), r2);
    }
    label
}

/// One bar of a bar chart.
pub struct Bar {
    /// Text under the bar.
    pub label: String,
    /// Fill colour.
    pub color: &'static str,
    /// Its height (a median), ms.
    pub value: f64,
    /// Whiskers (the median's 95 % CI), ms.
    pub ci: Option<(f64, f64)>,
    /// Legend text.
    pub legend: String,
}

/// One bar chart per prompt set, from the set rows: (set name, SVG).
pub fn bars_per_set(report: &Report) -> Vec<(String, String)> {
    let summaries: Vec<_> = report
        .summaries()
        .into_iter()
        .filter(|c| c.level == super::Level::Set)
        .collect();
    let mut sets: Vec<&str> = Vec::new();
    for c in &summaries {
        if !sets.contains(&c.prompt_type.as_str()) {
            sets.push(&c.prompt_type);
        }
    }
    let mut out = Vec::new();
    for set in sets {
        let bars: Vec<Bar> = summaries
            .iter()
            .filter(|c| c.prompt_type == set)
            .filter_map(|c| {
                let who = if c.point.is_empty() {
                    c.runner.to_string()
                } else {
                    format!("{} [{}]", c.runner, c.point)
                };
                Some(Bar {
                    value: c.ttft.median_ms?,
                    ci: c.ttft.median_ci95_ms,
                    color: color(c.runner),
                    legend: format!("{who} ({}/{} ok)", c.ttft.ok, c.ttft.runs),
                    label: who,
                })
            })
            .collect();
        if !bars.is_empty() {
            let title = format!("Median TTFT, prompt set \"{set}\" (mean of per-prompt medians)");
            out.push((set.to_string(), bar_chart(&title, "backend", &bars)));
        }
    }
    out
}

/// A bar chart of medians with CI whiskers and a legend.
pub fn bar_chart(title: &str, xlabel: &str, bars: &[Bar]) -> String {
    let ymax = bars
        .iter()
        .map(|b| b.ci.map_or(0.0, |ci| ci.1).max(b.value))
        .fold(0.0, f64::max)
        * 1.15;
    let mut s = String::new();
    let (sx, sy) = frame(title, xlabel, "TTFT (ms)", bars.len() as f64, ymax, &mut s);
    let mut legend_entries = Vec::new();
    for (i, b) in bars.iter().enumerate() {
        let x0 = sx(i as f64 + 0.2);
        let x1 = sx(i as f64 + 0.8);
        let xm = (x0 + x1) / 2.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
            sy(b.value),
            x1 - x0,
            sy(0.0) - sy(b.value),
            b.color
        );
        if let Some((lo, hi)) = b.ci {
            let (ylo, yhi, xa, xb) = (sy(lo), sy(hi), xm - 8.0, xm + 8.0);
            let _ = writeln!(
                s,
                r#"<path d="M{xm:.1},{ylo:.1} V{yhi:.1} M{xa:.1},{ylo:.1} H{xb:.1} M{xa:.1},{yhi:.1} H{xb:.1}" stroke="black" stroke-width="1.5" fill="none"/>"#
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{xm:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"#,
            H - BOTTOM + 18.0,
            esc(&b.label)
        );
        let _ = writeln!(
            s,
            r#"<text x="{xm:.1}" y="{:.1}" text-anchor="middle" font-size="12">{:.1} ms</text>"#,
            sy(b.value) - 6.0,
            b.value
        );
        if !b.legend.is_empty() {
            legend_entries.push((b.color, b.legend.clone()));
        }
    }
    legend(&legend_entries, &mut s);
    s.push_str("</svg>\n");
    s
}

/// Render SVG text to PNG bytes with resvg, using the system's fonts.
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, String> {
    let mut opt = resvg::usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg, &opt).map_err(|e| e.to_string())?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("empty image")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_nice() {
        assert_eq!(tick_step(1000.0, 8.0), 200.0);
        assert_eq!(tick_step(37.0, 6.0), 10.0);
        assert_eq!(tick_step(0.9, 6.0), 0.2);
    }
}
