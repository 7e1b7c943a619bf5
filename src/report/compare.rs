//! `ttft compare BASE.json NEW.json [...]`: per case (prompt set, prompt, backend, settings point)
//! the change of the median TTFT with a bootstrap 95 % CI of the median difference (the statistic
//! the threshold is on), and the success rate: failed runs are never dropped, so a release where
//! half the runs time out is a regression, not a faster median.

use crate::bench::bootstrap::bootstrap_median_diff_ci;
use crate::bench::stats::{self, BOOTSTRAP_SEED};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// A case as reports name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CaseKey {
    /// Prompt set.
    pub set: String,
    /// The prompt (None: the set is one case, synthetic exact-length prompts).
    pub prompt_idx: Option<usize>,
    /// Backend.
    pub runner: String,
    /// Settings point.
    pub point: String,
}

impl std::fmt::Display for CaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prompt_idx {
            Some(i) => write!(f, "{}#{i} {}", self.set, self.runner)?,
            None => write!(f, "{} {}", self.set, self.runner)?,
        }
        if !self.point.is_empty() {
            write!(f, " [{}]", self.point)?;
        }
        Ok(())
    }
}

/// A case's runs in one report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaseRuns {
    /// Runs attempted.
    pub runs: usize,
    /// TTFTs of the successful ones, ms.
    pub ttft_ms: Vec<f64>,
}

impl CaseRuns {
    /// Successful fraction.
    pub fn success_rate(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.ttft_ms.len() as f64 / self.runs as f64
        }
    }
}

/// What happened to a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The median grew by more than the threshold and the CI excludes no change.
    Slower,
    /// The success rate fell.
    FewerSuccesses,
    /// The median fell by more than the threshold and the CI excludes no change.
    Faster,
    /// Neither.
    NoChange,
}

impl Verdict {
    /// Whether this fails `ttft compare`.
    pub fn is_regression(self) -> bool {
        matches!(self, Verdict::Slower | Verdict::FewerSuccesses)
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Slower => "slower",
            Verdict::FewerSuccesses => "fewer successes",
            Verdict::Faster => "faster",
            Verdict::NoChange => "no significant change",
        }
    }
}

/// One case's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseChange {
    /// The case.
    pub key: CaseKey,
    /// Median TTFT before, ms (None: no successful run).
    pub old_median: Option<f64>,
    /// Median TTFT after, ms.
    pub new_median: Option<f64>,
    /// (new - old) / old, percent.
    pub change_pct: Option<f64>,
    /// Bootstrap 95 % CI of the median difference, as percent of the old median.
    pub ci_pct: Option<(f64, f64)>,
    /// Two-sided Mann–Whitney p-value of the runs.
    pub p_value: Option<f64>,
    /// Success rates before and after.
    pub success: (f64, f64),
    /// The verdict.
    pub verdict: Verdict,
}

/// Two reports compared.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Comparison {
    /// Cases in both.
    pub changes: Vec<CaseChange>,
    /// Cases only the older report has.
    pub only_old: Vec<CaseKey>,
    /// Cases only the newer report has.
    pub only_new: Vec<CaseKey>,
}

/// The cases of a report, with every run counted (failed ones too).
pub fn cases(doc: &Value) -> Result<BTreeMap<CaseKey, CaseRuns>, String> {
    let runs = doc
        .get("runs")
        .and_then(Value::as_array)
        .ok_or("not a ttft report (no `runs` array)")?;
    let one_case: BTreeSet<&str> = doc
        .get("sets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s.get("one_case") == Some(&Value::Bool(true)))
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .collect();
    let text = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut out: BTreeMap<CaseKey, CaseRuns> = BTreeMap::new();
    for r in runs {
        let set = text(r, "prompt_type");
        let idx = r
            .get("prompt_idx")
            .and_then(Value::as_u64)
            .map(|i| i as usize);
        let key = CaseKey {
            prompt_idx: if one_case.contains(set.as_str()) {
                None
            } else {
                idx
            },
            set,
            runner: text(r, "runner"),
            point: text(r, "point"),
        };
        let e = out.entry(key).or_default();
        e.runs += 1;
        if r.get("ok") == Some(&Value::Bool(true)) {
            if let Some(t) = r.get("ttft_ms").and_then(Value::as_f64) {
                e.ttft_ms.push(t);
            }
        }
    }
    Ok(out)
}

/// How a change is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Smallest change of the median, percent, that counts.
    pub threshold_pct: f64,
    /// Significance level of the rank test.
    pub alpha: f64,
}

/// Compare `new` against `old` case by case.
pub fn compare(old: &Value, new: &Value, rule: Rule) -> Result<Comparison, String> {
    let (a, b) = (cases(old)?, cases(new)?);
    let mut c = Comparison::default();
    for (key, xs) in &a {
        match b.get(key) {
            Some(ys) => c.changes.push(change(key, xs, ys, rule)),
            None => c.only_old.push(key.clone()),
        }
    }
    c.only_new = b.keys().filter(|k| !a.contains_key(k)).cloned().collect();
    Ok(c)
}

/// A median change beyond the threshold that the rank test also finds (a rank test, not the
/// bootstrap CI, decides: with a handful of runs the bootstrap interval is too narrow, and two
/// runs of one build would "regress"); a fall of the success rate always counts.
fn change(key: &CaseKey, xs: &CaseRuns, ys: &CaseRuns, rule: Rule) -> CaseChange {
    let (m0, m1) = (stats::median(&xs.ttft_ms), stats::median(&ys.ttft_ms));
    let change_pct = m0.zip(m1).map(|(a, b)| (b - a) / a * 100.0);
    let ci_pct = m0
        .zip(bootstrap_median_diff_ci(
            &xs.ttft_ms,
            &ys.ttft_ms,
            10_000,
            0.95,
            BOOTSTRAP_SEED,
        ))
        .map(|(m, (lo, hi))| (lo / m * 100.0, hi / m * 100.0));
    let success = (xs.success_rate(), ys.success_rate());
    let p_value = stats::mann_whitney_p(&xs.ttft_ms, &ys.ttft_ms);
    let significant = p_value.is_some_and(|p| p < rule.alpha);
    let verdict = match change_pct {
        _ if success.1 < success.0 => Verdict::FewerSuccesses,
        Some(c) if significant && c >= rule.threshold_pct => Verdict::Slower,
        Some(c) if significant && c <= -rule.threshold_pct => Verdict::Faster,
        _ => Verdict::NoChange,
    };
    CaseChange {
        key: key.clone(),
        old_median: m0,
        new_median: m1,
        change_pct,
        ci_pct,
        p_value,
        success,
        verdict,
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// (case, old p50, new p50, change, CI, p, success, verdict) as text cells.
fn cells(c: &CaseChange) -> [String; 8] {
    [
        c.key.to_string(),
        opt(c.old_median, |m| format!("{m:.2}")),
        opt(c.new_median, |m| format!("{m:.2}")),
        opt(c.change_pct, |p| format!("{p:+.1}%")),
        c.ci_pct
            .map(|(lo, hi)| format!("{lo:+.1}%…{hi:+.1}%"))
            .unwrap_or_else(|| "-".into()),
        opt(c.p_value, |p| format!("{p:.3}")),
        format!("{:.0}%→{:.0}%", c.success.0 * 100.0, c.success.1 * 100.0),
        c.verdict.text().to_string(),
    ]
}

const HEADERS: [&str; 8] = [
    "case",
    "old p50 ms",
    "new p50 ms",
    "change",
    "95% CI",
    "p (rank test)",
    "success",
    "verdict",
];

/// The comparison as a text table, then the cases only one side has.
pub fn render(c: &Comparison) -> String {
    let rows: Vec<[String; 8]> = c.changes.iter().map(cells).collect();
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([HEADERS[i].len()])
            .max()
            .unwrap_or(0)
    };
    let w: Vec<usize> = (0..8).map(width).collect();
    let line = |r: &[String]| {
        let mut s = format!("{:<w0$}", r[0], w0 = w[0]);
        for (cell, wi) in r.iter().zip(&w).take(7).skip(1) {
            s.push_str(&format!("  {cell:>wi$}"));
        }
        format!("{s}  {}\n", r[7])
    };
    let mut s = line(&HEADERS.map(String::from));
    for r in &rows {
        s.push_str(&line(r));
    }
    for (what, keys) in [("baseline", &c.only_old), ("newer report", &c.only_new)] {
        for k in keys {
            s.push_str(&format!("only in the {what}: {k}\n"));
        }
    }
    s
}

/// The comparison as a Markdown table.
pub fn render_markdown(title: &str, c: &Comparison) -> String {
    let mut s = format!("### {title}\n\n| {} |\n|:---|", HEADERS.join(" | "));
    s.push_str(&"---:|".repeat(6));
    s.push_str(":---|\n");
    for ch in &c.changes {
        let cells = cells(ch).map(|x| x.replace('|', "\\|"));
        s.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    for (what, keys) in [("baseline", &c.only_old), ("newer report", &c.only_new)] {
        for k in keys {
            s.push_str(&format!("\n- only in the {what}: {k}"));
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RULE: Rule = Rule {
        threshold_pct: 5.0,
        alpha: 0.05,
    };

    fn doc(vals: &[(&str, usize, &str, Option<f64>)]) -> Value {
        json!({"runs": vals.iter().map(|(p, i, r, t)| match t {
            Some(t) => json!({"prompt_type": p, "prompt_idx": i, "runner": r, "ok": true, "ttft_ms": t}),
            None => json!({"prompt_type": p, "prompt_idx": i, "runner": r, "ok": false, "error": "timeout"}),
        }).collect::<Vec<_>>()})
    }

    fn runs(p: &str, i: usize, r: &str, ts: &[f64]) -> Vec<(String, usize, String, Option<f64>)> {
        ts.iter()
            .map(|t| (p.to_string(), i, r.to_string(), Some(*t)))
            .collect()
    }

    fn as_doc(v: &[(String, usize, String, Option<f64>)]) -> Value {
        let r: Vec<(&str, usize, &str, Option<f64>)> = v
            .iter()
            .map(|(a, b, c, d)| (a.as_str(), *b, c.as_str(), *d))
            .collect();
        doc(&r)
    }

    #[test]
    fn a_clear_slowdown_is_a_regression_and_noise_is_not() {
        let mut old = runs("short", 0, "api", &[10.0, 10.2, 9.9, 10.1, 10.05]);
        old.extend(runs("long", 0, "api", &[100.0, 103.0, 98.0, 101.0, 99.5]));
        let mut new = runs("short", 0, "api", &[13.0, 13.1, 12.9, 13.2, 13.05]);
        new.extend(runs("long", 0, "api", &[101.0, 99.0, 102.0, 100.5, 98.5]));
        let c = compare(&as_doc(&old), &as_doc(&new), RULE).unwrap();
        let short = c.changes.iter().find(|c| c.key.set == "short").unwrap();
        assert_eq!(short.verdict, Verdict::Slower);
        assert!((short.change_pct.unwrap() - 29.85).abs() < 0.1);
        // Three runs a side can never be significant at 5 %: no verdict from noise.
        let three = |v: &[f64]| runs("x", 0, "api", v);
        let c3 = compare(
            &as_doc(&three(&[10.0, 10.1, 10.2])),
            &as_doc(&three(&[20.0, 20.1, 20.2])),
            RULE,
        )
        .unwrap();
        assert_eq!(c3.changes[0].verdict, Verdict::NoChange);
        let long = c.changes.iter().find(|c| c.key.set == "long").unwrap();
        assert_eq!(long.verdict, Verdict::NoChange);
        // The same report against itself has no change.
        let same = compare(&as_doc(&old), &as_doc(&old), RULE).unwrap();
        assert!(same.changes.iter().all(|c| c.verdict == Verdict::NoChange));
    }

    #[test]
    fn failed_runs_are_a_regression_even_when_the_median_improves() {
        let old = doc(&[("s", 0, "api", Some(10.0)), ("s", 0, "api", Some(10.0))]);
        let new = doc(&[("s", 0, "api", Some(8.0)), ("s", 0, "api", None)]);
        let c = compare(&old, &new, RULE).unwrap();
        assert_eq!(c.changes[0].verdict, Verdict::FewerSuccesses);
        assert!(c.changes[0].verdict.is_regression());
    }

    #[test]
    fn prompts_are_separate_cases_and_one_sided_cases_are_listed() {
        let old = doc(&[("s", 0, "api", Some(10.0)), ("s", 1, "api", Some(500.0))]);
        let new = doc(&[("s", 0, "api", Some(10.0)), ("s", 2, "api", Some(9.0))]);
        let c = compare(&old, &new, RULE).unwrap();
        assert_eq!(c.changes.len(), 1);
        assert_eq!(c.only_old[0].prompt_idx, Some(1));
        assert_eq!(c.only_new[0].prompt_idx, Some(2));
        let text = render(&c);
        assert!(text.contains("only in the baseline: s#1 api"), "{text}");
        assert!(render_markdown("x", &c).contains("| s#0 api |"));
    }
}
