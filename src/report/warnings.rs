//! Things a reader must know before trusting the table, one line each.

use super::{CaseSummary, Report};
use crate::backend::server::cpu_features;
use crate::backend::BackendKind;

/// "inproc long#2" or "inproc [threads=1] long#2".
fn case_name(s: &CaseSummary) -> String {
    let who = if s.point.is_empty() {
        s.runner.to_string()
    } else {
        format!("{} [{}]", s.runner, s.point)
    };
    match s.prompt_idx {
        Some(i) => format!("{who} {}#{i}", s.prompt_type),
        None => format!("{who} {}", s.prompt_type),
    }
}

/// Things a reader must know before trusting the table.
pub fn warnings(report: &Report) -> Vec<String> {
    let mut w = token_warnings(report);
    w.extend(case_warnings(report));
    w.extend(server_warnings(report));
    w
}

/// Backends that would not see, or did not pick, the same tokens.
fn token_warnings(report: &Report) -> Vec<String> {
    let mut w = Vec::new();
    for p in report.parity.problems() {
        let counts: Vec<String> = p.counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
        w.push(format!(
            "prompt {}#{}: token ids differ between backends ({}){}",
            p.prompt_type,
            p.prompt_idx,
            counts.join(", "),
            if p.doubled_bos.is_empty() {
                String::new()
            } else {
                ", doubled BOS".into()
            }
        ));
    }
    for a in report.first_token_agreement().iter().filter(|a| !a.agree) {
        let t: Vec<String> = a
            .first_tokens
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        w.push(format!(
            "prompt {}#{}: greedy first tokens differ ({})",
            a.prompt_type,
            a.prompt_idx,
            t.join(", ")
        ));
    }
    for (set, idx, counts) in &report.token_disagreements {
        let c: Vec<String> = counts
            .iter()
            .map(|(k, v)| format!("{k}={}", v.map_or("?".into(), |n| n.to_string())))
            .collect();
        w.push(format!(
            "prompt {set}#{idx}: backends disagree on prompt tokens ({})",
            c.join(", ")
        ));
    }
    w
}

/// Outliers and cold first runs, per case only: a set row would compare different prompts.
fn case_warnings(report: &Report) -> Vec<String> {
    let mut w = Vec::new();
    for s in report.summaries() {
        if !s.is_case() {
            continue;
        }
        let case = case_name(&s);
        if !s.outliers.is_empty() {
            w.push(format!(
                "{case}: {} statistical outlier(s) among {} runs (median/MAD); consider more --runs or a quieter machine",
                s.outliers.len(), s.ttft.ok
            ));
        }
        if s.first_run_much_slower {
            w.push(format!(
                "{case}: the first timed run was much slower than the rest; consider more --warmup"
            ));
        }
    }
    w
}

/// Cache hits, an uncontrollable cache, and builds that differ between the llama.cpp sides.
fn server_warnings(report: &Report) -> Vec<String> {
    let mut w = Vec::new();
    let hits = report
        .runs
        .iter()
        .filter(|r| r.flags.iter().any(|f| f.starts_with("cache_hit")))
        .count();
    if hits > 0 {
        w.push(format!("{hits} api runs reused the server's prompt cache (cache_n > 0): those TTFTs are not cold prefills"));
    }
    if let Some(api) = report.backends.iter().find(|b| b.name == BackendKind::Api) {
        let busted = report.runs.iter().any(|r| {
            r.runner == BackendKind::Api
                && (r.flags.iter().any(|f| f.starts_with("cache_bust"))
                    || r.measurement
                        .as_ref()
                        .is_some_and(|m| m.cache_bust_tokens.is_some()))
        });
        if api.facts.flavor.as_deref() == Some("openai") && !busted {
            w.push("api (openai flavor) without the cache-busting prefix (--no-cache-bust): the server's prompt cache cannot be switched off through the OpenAI API; only servers that report usage.prompt_tokens_details.cached_tokens get their warm rows flagged cache_hit:N".into());
        }
    }
    let si = |k: BackendKind| {
        report
            .backends
            .iter()
            .find(|b| b.name == k)
            .and_then(|b| b.facts.system_info.as_deref())
            .map(cpu_features)
    };
    if let (Some(a), Some(b)) = (si(BackendKind::Inproc), si(BackendKind::Api)) {
        if a != b {
            w.push(format!(
                "ggml CPU features differ between inproc ({}) and llama-server ({}): rebuild with scripts/setup.sh",
                a.join(" "),
                b.join(" ")
            ));
        }
    }
    w
}
