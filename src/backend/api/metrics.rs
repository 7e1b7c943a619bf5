//! Prefix-cache counters from a server's Prometheus `/metrics`, scraped when the backend opens and
//! again when its report is made, so the report can say how many prompt tokens the server served
//! from its cache over the backend's runs (warm-ups included). A server without `/metrics`, or
//! without any of the counters below, gives "unavailable", never a zero.
//!
//! Parsed by hand (the text format is one `name{labels} value [timestamp]` sample per line):
//! samples of the same name with different labels are summed.

use super::helper::HelperError;
use super::ApiBackend;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Counters whose increase over the runs is reported: vLLM V1 (`prefix_cache_*`, counted in
/// tokens; earlier V1 releases prefix them with `gpu_`), SGLang's token counters.
const COUNTERS: &[&str] = &[
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "sglang:prompt_tokens_total",
    "sglang:cached_tokens_total",
];

/// Gauges (hit rates of vLLM V0 and SGLang): reported before and after, no delta.
const GAUGES: &[&str] = &[
    "vllm:gpu_prefix_cache_hit_rate",
    "vllm:cpu_prefix_cache_hit_rate",
    "sglang:cache_hit_rate",
];

/// What a load point is aligned with (before and after it): llama-server's (`--metrics`, which
/// the spawned server gets), vLLM's, SGLang's and TGI's throughput and queue counters…
const LOAD_COUNTERS: &[&str] = &[
    "llamacpp:prompt_tokens_total",
    "llamacpp:prompt_seconds_total",
    "llamacpp:tokens_predicted_total",
    "llamacpp:tokens_predicted_seconds_total",
    "llamacpp:n_decode_total",
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_queue_time_seconds_count",
    "vllm:generation_tokens_total",
    "sglang:generation_tokens_total",
    "tgi_request_queue_duration_sum",
    "tgi_request_queue_duration_count",
];

/// …and their gauges: requests running and waiting, KV-cache use.
const LOAD_GAUGES: &[&str] = &[
    "llamacpp:requests_processing",
    "llamacpp:requests_deferred",
    "llamacpp:n_busy_slots_per_decode",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:token_usage",
    "tgi_queue_size",
    "tgi_batch_current_size",
];

fn known(name: &str) -> bool {
    [COUNTERS, GAUGES, LOAD_COUNTERS, LOAD_GAUGES]
        .iter()
        .any(|l| l.contains(&name))
}

impl ApiBackend {
    /// The known metrics now (for a load point's before and after); None without `/metrics`.
    pub fn metrics_snapshot(&self) -> Option<BTreeMap<String, f64>> {
        self.scrape_metrics().ok().flatten()
    }

    /// The known counters of `GET /metrics`; None when the server has none (any failure but a
    /// stall, which is an error: see [`ApiBackend::helper`]).
    pub(super) fn scrape_metrics(&self) -> Result<Option<BTreeMap<String, f64>>, HelperError> {
        let url = format!("{}/metrics", self.base);
        match self.helper("GET", "/metrics", self.authed(self.client.get(&url))) {
            Ok((status, text)) if (200..300).contains(&status) => Ok(Some(parse(&text))),
            Ok(_) | Err(HelperError::Failed(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The samples of the known counters and gauges in a Prometheus text exposition.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        if !known(name) {
            continue;
        }
        let rest = match rest.strip_prefix('{') {
            Some(r) => match after_labels(r) {
                Some(r) => r,
                None => continue,
            },
            None => rest,
        };
        let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *out.entry(name.to_string()).or_insert(0.0) += v;
    }
    out
}

/// The text after a label block's closing `}` (label values are quoted and may hold `}`, spaces
/// and backslash escapes).
fn after_labels(s: &str) -> Option<&str> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (false, _, '}') => return Some(&s[i + 1..]),
            _ => {}
        }
    }
    None
}

/// What the report says about the server's prefix cache between two scrapes.
pub fn report(
    before: Option<&BTreeMap<String, f64>>,
    after: Option<&BTreeMap<String, f64>>,
) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return json!("unavailable: the server has no /metrics");
    };
    if !COUNTERS.iter().chain(GAUGES).any(|n| a.contains_key(*n)) {
        return json!("unavailable: /metrics has no prefix-cache counters");
    }
    let mut delta = Map::new();
    for name in COUNTERS {
        if let (Some(x), Some(y)) = (b.get(*name), a.get(*name)) {
            delta.insert((*name).to_string(), json!(y - x));
        }
    }
    let gauges: Map<String, Value> = GAUGES
        .iter()
        .filter_map(|g| {
            let v = a.get(*g)?;
            Some(((*g).to_string(), json!({"before": b.get(*g), "after": v})))
        })
        .collect();
    let hits = delta
        .get("vllm:prefix_cache_hits_total")
        .or_else(|| delta.get("vllm:gpu_prefix_cache_hits_total"))
        .or_else(|| delta.get("sglang:cached_tokens_total"))
        .and_then(Value::as_f64);
    json!({
        "source": "/metrics, scraped when the backend opened and after its runs (warm-ups included)",
        "delta": delta,
        "gauges": gauges,
        "cached_tokens": hits,
    })
}

/// A load point's server metrics between the scrapes before and after it: every known counter's
/// increase and gauge's two values; "unavailable" (never zeros) when the server has none.
pub fn load_point(
    before: Option<&BTreeMap<String, f64>>,
    after: Option<&BTreeMap<String, f64>>,
) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return json!("unavailable: the server has no /metrics");
    };
    let counters = COUNTERS.iter().chain(LOAD_COUNTERS);
    let delta: Map<String, Value> = counters
        .filter_map(|n| Some(((*n).to_string(), json!(a.get(*n)? - b.get(*n)?))))
        .collect();
    let gauges: Map<String, Value> = GAUGES
        .iter()
        .chain(LOAD_GAUGES)
        .filter_map(|g| {
            let v = a.get(*g)?;
            Some(((*g).to_string(), json!({"before": b.get(*g), "after": v})))
        })
        .collect();
    if delta.is_empty() && gauges.is_empty() {
        return json!("unavailable: /metrics has none of the known load metrics");
    }
    json!({"source": "/metrics, scraped before and after the load point", "delta": delta, "gauges": gauges})
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = "# HELP vllm:prefix_cache_hits_total hits\n\
        # TYPE vllm:prefix_cache_hits_total counter\n\
        vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} 32.0\n\
        vllm:prefix_cache_hits_total{engine=\"1\",model_name=\"m\"} 16\n\
        vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"a b}\"} 100\n\
        process_cpu_seconds_total 1\n\
        sglang:cache_hit_rate 0.25 1700000000\n";

    #[test]
    fn known_samples_are_summed_over_labels_and_the_rest_is_ignored() {
        let m = parse(VLLM);
        assert_eq!(m["vllm:prefix_cache_hits_total"], 48.0);
        assert_eq!(m["sglang:cache_hit_rate"], 0.25);
        assert!(!m.contains_key("process_cpu_seconds_total"));
        // A `}` inside a quoted label value does not end the label block.
        assert_eq!(m["vllm:prefix_cache_queries_total"], 100.0);
    }

    #[test]
    fn deltas_are_reported_and_missing_metrics_are_unavailable_not_zero() {
        let b = parse("vllm:prefix_cache_hits_total 10\nvllm:prefix_cache_queries_total 50\n");
        let a = parse("vllm:prefix_cache_hits_total 42\nvllm:prefix_cache_queries_total 90\n");
        let r = report(Some(&b), Some(&a));
        assert_eq!(r["delta"]["vllm:prefix_cache_hits_total"], 32.0);
        assert_eq!(r["delta"]["vllm:prefix_cache_queries_total"], 40.0);
        assert_eq!(r["cached_tokens"], 32.0);
        let none = report(None, Some(&a));
        assert!(none.as_str().unwrap().starts_with("unavailable"));
        let empty = report(Some(&BTreeMap::new()), Some(&BTreeMap::new()));
        assert!(empty.as_str().unwrap().contains("no prefix-cache counters"));
        let llama = parse("llamacpp:prompt_tokens_total 5\n");
        assert!(
            report(Some(&llama), Some(&llama)).is_string(),
            "no prefix-cache counter"
        );
    }

    #[test]
    fn a_load_point_gets_counter_increases_and_gauges_or_unavailable() {
        let b = parse("llamacpp:prompt_tokens_total 100\nllamacpp:requests_processing 0\n");
        let a = parse("llamacpp:prompt_tokens_total 340\nllamacpp:requests_processing 2\n");
        let r = load_point(Some(&b), Some(&a));
        assert_eq!(r["delta"]["llamacpp:prompt_tokens_total"], 240.0);
        assert_eq!(r["gauges"]["llamacpp:requests_processing"]["after"], 2.0);
        assert!(r["delta"].get("vllm:num_requests_running").is_none());
        assert!(load_point(None, Some(&a))
            .as_str()
            .unwrap()
            .starts_with("unavailable"));
        let other = parse("process_cpu_seconds_total 3\n");
        assert!(load_point(Some(&other), Some(&other)).is_string());
    }
}
