//! `ttft compare OLD.json NEW.json`: per case (prompt set, backend) the change of the median TTFT,
//! with Welch's t-test on the runs to say whether it is real, and a non-zero exit on a significant
//! regression beyond the threshold.

use crate::bench::stats;
use serde_json::Value;
use std::collections::BTreeMap;

/// One case's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseChange {
    /// Prompt set.
    pub prompt_type: String,
    /// Backend.
    pub runner: String,
    /// Median TTFT before, ms.
    pub old_median: f64,
    /// Median TTFT after, ms.
    pub new_median: f64,
    /// (new - old) / old, percent.
    pub change_pct: f64,
    /// Welch's t-test two-sided p-value (None with fewer than two runs on a side).
    pub p_value: Option<f64>,
    /// "slower", "faster" or "no significant change".
    pub verdict: &'static str,
}

fn samples(doc: &Value) -> Result<BTreeMap<(String, String), Vec<f64>>, String> {
    let runs = doc
        .get("runs")
        .and_then(Value::as_array)
        .ok_or("not a ttft report (no `runs` array)")?;
    let mut out: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in runs {
        if r.get("ok") != Some(&Value::Bool(true)) {
            continue;
        }
        let key = (
            r.get("prompt_type")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            r.get("runner")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
        );
        if let Some(t) = r.get("ttft_ms").and_then(Value::as_f64) {
            out.entry(key).or_default().push(t);
        }
    }
    Ok(out)
}

/// Compare two reports; `threshold_pct` is the smallest change that counts, `alpha` the
/// significance level. Cases missing on either side are skipped.
pub fn compare(
    old: &Value,
    new: &Value,
    threshold_pct: f64,
    alpha: f64,
) -> Result<Vec<CaseChange>, String> {
    let (a, b) = (samples(old)?, samples(new)?);
    let mut out = Vec::new();
    for (key, xs) in &a {
        let Some(ys) = b.get(key) else { continue };
        let (Some(m0), Some(m1)) = (stats::median(xs), stats::median(ys)) else {
            continue;
        };
        let change_pct = (m1 - m0) / m0 * 100.0;
        let p_value = stats::welch_t(xs, ys).map(|(t, df)| stats::t_test_p(t, df));
        let significant = p_value.is_some_and(|p| p < alpha) && change_pct.abs() >= threshold_pct;
        out.push(CaseChange {
            prompt_type: key.0.clone(),
            runner: key.1.clone(),
            old_median: m0,
            new_median: m1,
            change_pct,
            p_value,
            verdict: match (significant, change_pct > 0.0) {
                (true, true) => "slower",
                (true, false) => "faster",
                (false, _) => "no significant change",
            },
        });
    }
    Ok(out)
}

/// The comparison as a text table.
pub fn render(changes: &[CaseChange]) -> String {
    let mut s = format!(
        "{:<14} {:<8} {:>12} {:>12} {:>9} {:>9}  verdict\n",
        "prompt type", "runner", "old p50 ms", "new p50 ms", "change", "p-value"
    );
    for c in changes {
        s.push_str(&format!(
            "{:<14} {:<8} {:>12.2} {:>12.2} {:>+8.1}% {:>9}  {}\n",
            c.prompt_type,
            c.runner,
            c.old_median,
            c.new_median,
            c.change_pct,
            c.p_value
                .map(|p| format!("{p:.4}"))
                .unwrap_or_else(|| "-".into()),
            c.verdict
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(vals: &[(&str, &str, f64)]) -> Value {
        json!({"runs": vals.iter().map(|(p, r, t)| json!({"prompt_type": p, "runner": r, "ok": true, "ttft_ms": t})).collect::<Vec<_>>()})
    }

    #[test]
    fn a_clear_slowdown_is_significant_and_noise_is_not() {
        let old = doc(&[
            ("short", "api", 10.0),
            ("short", "api", 10.2),
            ("short", "api", 9.9),
            ("short", "api", 10.1),
            ("long", "api", 100.0),
            ("long", "api", 103.0),
            ("long", "api", 98.0),
        ]);
        let new = doc(&[
            ("short", "api", 13.0),
            ("short", "api", 13.1),
            ("short", "api", 12.9),
            ("short", "api", 13.2),
            ("long", "api", 101.0),
            ("long", "api", 99.0),
            ("long", "api", 102.0),
        ]);
        let c = compare(&old, &new, 5.0, 0.05).unwrap();
        let short = c.iter().find(|c| c.prompt_type == "short").unwrap();
        assert_eq!(short.verdict, "slower");
        assert!(
            (short.change_pct - 29.85).abs() < 0.1,
            "{}",
            short.change_pct
        );
        let long = c.iter().find(|c| c.prompt_type == "long").unwrap();
        assert_eq!(long.verdict, "no significant change");
    }
}
