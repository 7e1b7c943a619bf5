//! `--repeat R`: a load point's figures (its percentiles, its throughput) are one draw each, from
//! one arrival schedule and one state of the machine; run R times they get a spread. Each figure
//! is summarised by its mean over the repeats with a 95 % confidence interval (Student's t, as
//! the repeats are few and independent: each has its own warm-up and schedule), and so is the
//! saturation load of a repeated `--max-goodput` search. The repeats are never pooled into one
//! sample: a p99 over 3 × 16 requests would be a different statistic from the one each point
//! measured.

use super::load::LoadMode;
use super::load_report::LoadReport;
use super::load_search::SearchReport;
use super::load_text::ordered_groups;
use super::stats;
use serde::Serialize;

/// A figure over the repeats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Mean of the repeats' values.
    pub mean: f64,
    /// 95 % confidence interval of the mean (Student's t with n − 1 degrees of freedom), clamped
    /// at 0: every figure here is a time or a rate, and few spread repeats can reach below it.
    pub ci_low: f64,
    /// Its upper end.
    pub ci_high: f64,
    /// Each repeat's value, in order.
    pub values: Vec<f64>,
}

/// Two-sided 95 % quantiles of Student's t for 1–30 degrees of freedom.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// t(0.975, df); beyond the table the first-order expansion z + (z³ + z) / 4df.
fn t95(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T95[df - 1],
        _ => 1.96 + (1.96f64.powi(3) + 1.96) / (4.0 * df as f64),
    }
}

impl Estimate {
    /// The mean and its interval; None below two values (one repeat has no spread).
    pub fn of(values: Vec<f64>) -> Option<Self> {
        let mean = stats::mean(&values)?;
        let sd = stats::stddev(&values)?;
        let half = t95(values.len() - 1) * sd / (values.len() as f64).sqrt();
        Some(Self {
            mean,
            ci_low: (mean - half).max(0.0),
            ci_high: mean + half,
            values,
        })
    }

    fn text(&self) -> String {
        format!("{:.2} [{:.2}, {:.2}]", self.mean, self.ci_low, self.ci_high)
    }
}

/// One load point run `repeats` times.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepeatedPoint {
    /// The settings point's label.
    pub settings: String,
    /// The prompt set.
    pub set: String,
    /// The point's tag (`rate=2`).
    pub label: String,
    /// How requests were issued.
    pub mode: LoadMode,
    /// Repeats with a report.
    pub repeats: usize,
    /// TTFT median, ms.
    pub ttft_p50_ms: Option<Estimate>,
    /// TTFT p99, ms.
    pub ttft_p99_ms: Option<Estimate>,
    /// TPOT median, ms.
    pub tpot_p50_ms: Option<Estimate>,
    /// TPOT p99, ms.
    pub tpot_p99_ms: Option<Estimate>,
    /// Successful requests per second over the whole point.
    pub request_throughput: Option<Estimate>,
    /// Successful requests per second over the steady window.
    pub steady_request_throughput: Option<Estimate>,
    /// Requests per second meeting the objectives.
    pub goodput: Option<Estimate>,
}

/// Every load point that ran more than once (same settings point, set and load), in the order
/// they first ran.
pub fn repeated(points: &[LoadReport]) -> Vec<RepeatedPoint> {
    let groups = ordered_groups(points, |r| {
        (r.settings.clone(), r.set.clone(), r.label.clone())
    });
    groups
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|g| {
            let est = |f: &dyn Fn(&LoadReport) -> Option<f64>| {
                Estimate::of(g.iter().filter_map(|r| f(r)).collect())
            };
            RepeatedPoint {
                settings: g[0].settings.clone(),
                set: g[0].set.clone(),
                label: g[0].label.clone(),
                mode: g[0].mode,
                repeats: g.len(),
                ttft_p50_ms: est(&|r| r.ttft_ms.p50),
                ttft_p99_ms: est(&|r| r.ttft_ms.p99),
                tpot_p50_ms: est(&|r| r.tpot_ms.p50),
                tpot_p99_ms: est(&|r| r.tpot_ms.p99),
                request_throughput: est(&|r| Some(r.request_throughput)),
                steady_request_throughput: est(&|r| {
                    r.steady.as_ref().map(|w| w.request_throughput)
                }),
                goodput: est(&|r| Some(r.goodput)),
            }
        })
        .collect()
}

/// A `--max-goodput` search run several times on one prompt set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Saturation {
    /// The settings point's label.
    pub settings: String,
    /// The prompt set.
    pub set: String,
    /// "request_rate" or "concurrency".
    pub searched: &'static str,
    /// Searches run.
    pub searches: usize,
    /// Searches that bracketed the saturation load (a load that held and one that failed).
    pub resolved: usize,
    /// The highest load that held, over the resolved searches.
    pub load: Option<Estimate>,
}

/// Each prompt set's saturation load over its repeated searches (sets searched once: none).
pub fn saturation(searches: &[SearchReport]) -> Vec<Saturation> {
    let groups = ordered_groups(searches, |s| (s.settings.clone(), s.set.clone()));
    groups
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|g| {
            let lows: Vec<f64> = g
                .iter()
                .filter(|s| s.high.is_some())
                .filter_map(|s| s.low)
                .collect();
            Saturation {
                settings: g[0].settings.clone(),
                set: g[0].set.clone(),
                searched: g[0].searched,
                searches: g.len(),
                resolved: lows.len(),
                load: Estimate::of(lows),
            }
        })
        .collect()
}

fn est_text(e: &Option<Estimate>) -> String {
    e.as_ref().map_or("-".into(), Estimate::text)
}

/// The repeated points (for a sweep) and the saturation loads (for repeated searches) as text.
pub fn render(points: &[LoadReport], searches: &[SearchReport]) -> String {
    let mut s = String::new();
    let reps = if searches.is_empty() {
        repeated(points)
    } else {
        Vec::new()
    };
    if !reps.is_empty() {
        s.push_str("load repeats: mean [95% CI] over the repeats (Student's t), each repeat with its own warm-up and schedule\n");
        s.push_str(&format!(
            "  {:<24} {:>3}  {:<26} {:<26} {:<26} {:<22} {:<22}\n",
            "set point",
            "n",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "TPOT p99 ms",
            "req/s (steady)",
            "goodput req/s"
        ));
        for r in &reps {
            let name = format!("{}{} {}", settings_prefix(&r.settings), r.set, r.label);
            s.push_str(&format!(
                "  {:<24} {:>3}  {:<26} {:<26} {:<26} {:<22} {:<22}\n",
                name,
                r.repeats,
                est_text(&r.ttft_p50_ms),
                est_text(&r.ttft_p99_ms),
                est_text(&r.tpot_p99_ms),
                est_text(&r.steady_request_throughput),
                est_text(&r.goodput),
            ));
        }
    }
    for sat in saturation(searches) {
        let unit = if sat.searched == "concurrency" {
            "clients"
        } else {
            "req/s"
        };
        s.push_str(&format!(
            "saturation {}(set {}): {} of {} searches bracketed it; {}\n",
            settings_prefix(&sat.settings),
            sat.set,
            sat.resolved,
            sat.searches,
            match &sat.load {
                Some(e) => format!(
                    "highest load that held: mean {:.3} {unit}, 95% CI [{:.3}, {:.3}] (values {})",
                    e.mean,
                    e.ci_low,
                    e.ci_high,
                    e.values
                        .iter()
                        .map(|v| format!("{v:.3}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "too few to give an interval".into(),
            }
        ));
    }
    s
}

fn settings_prefix(settings: &str) -> String {
    if settings.is_empty() {
        String::new()
    } else {
        format!("{settings} ")
    }
}

#[cfg(test)]
#[path = "load_repeat_tests.rs"]
mod tests;
