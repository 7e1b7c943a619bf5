//! Things a reader must know before trusting the table, one line each.

use super::{CaseSummary, FirstTokenAgreement, Report};
use crate::backend::system_info::system_info_differences;
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
    // The per-case rows, computed once (each bootstraps its CI) for every warning that reads them.
    let cases: Vec<CaseSummary> = report
        .summaries()
        .into_iter()
        .filter(CaseSummary::is_case)
        .collect();
    let mut w = token_warnings(report);
    w.extend(case_warnings(report, &cases));
    w.extend(stop_warnings(report, &cases));
    w.extend(server_warnings(report));
    w.extend(dtype_warnings(report));
    w.extend(roofline_warning(report, &cases));
    w.extend(slow_memory_warning(report, &cases));
    w
}

/// A run whose own memory read (after its timed runs) fell well below the machine's ceiling:
/// the host was in a slow spell (a shared host's bandwidth moves with its neighbours), so every
/// memory-bound prefill here was slower than this machine can go and its fraction reads low.
/// Only where some case has a fraction to read low: a run that measured nothing says nothing.
fn slow_memory_warning(report: &Report, cases: &[CaseSummary]) -> Option<String> {
    cases.iter().find_map(|s| s.roofline_fraction)?;
    let roof = report.roofline.as_ref().ok()?;
    let now = roof.read_at_end_gbs?;
    let share = now / roof.read_gbs;
    (share < SLOW_MEMORY).then(|| {
        format!(
            "memory read {now:.1} GB/s after the timed runs, {share:.2} of this machine's ceiling ({:.1} GB/s, {}): the host was slower than its best (neighbours on a shared host?), so memory-bound roofline fractions here read low, by up to that factor; rerun when it is quiet to compare against the ceiling",
            roof.read_gbs, roof.measured_at
        )
    })
}

/// Below this share of the ceiling a run's own memory read is worth a warning (the probe's
/// rounds count as steady within 15 %; a fifth is beyond that noise).
const SLOW_MEMORY: f64 = 0.8;

/// Cases whose prefill beat the roofline's bound (a fraction above 1 cannot be): the probe's
/// figures were measured in a slower spell than the runs (a shared host's memory bandwidth
/// moves with its neighbours), so every fraction of the report reads high.
fn roofline_warning(report: &Report, cases: &[CaseSummary]) -> Option<String> {
    let roof = report.roofline.as_ref().ok()?;
    let over: Vec<String> = cases
        .iter()
        .filter_map(|s| {
            let f = s.roofline_fraction.filter(|&f| f > 1.0)?;
            Some(format!("{} {f:.2}", case_name(s)))
        })
        .collect();
    (!over.is_empty()).then(|| {
        format!(
            "roofline fraction above 1 ({}): these prefills beat the bound from the probe of {} (memory read {:.1} GB/s), so this machine ran faster than the probe saw and every fraction here reads high; `ttft roofline --refresh` measures again (the cache keeps each figure's best)",
            over.join(", "),
            roof.measured_at,
            roof.read_gbs
        )
    })
}

/// hf in a dtype this CPU has no GEMM kernels for: libtorch's fallback is many times slower
/// than f32, so those TTFTs say nothing about the dtype on a CPU that has them.
fn dtype_warnings(report: &Report) -> Vec<String> {
    report
        .backends
        .iter()
        .filter(|b| b.name == BackendKind::Hf && b.facts.native_gemm == Some(false))
        .map(|b| {
            let dtype = b.facts.weight_dtype.as_deref().unwrap_or("this dtype");
            let who = if b.point.is_empty() {
                "hf".to_string()
            } else {
                format!("hf [{}]", b.point)
            };
            format!(
                "{who}: this CPU has no {dtype} GEMM kernels (oneDNN needs AVX512BW/VL/DQ or AVX-NE-CONVERT, ttft's AVX512_BF16), so libtorch runs {dtype} through a fallback slower than f32: these TTFTs say little about {dtype} on other CPUs"
            )
        })
        .collect()
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
        w.push(first_token_warning(a));
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

/// "prompt short#0: greedy first tokens differ (hf=#504 " Paris", api=" London" by text: no token id)".
fn first_token_warning(a: &FirstTokenAgreement) -> String {
    let t: Vec<String> = a
        .first_tokens
        .iter()
        .map(|(k, v)| match a.first_token_ids.get(k) {
            Some(id) => format!("{k}=#{id} {v:?}"),
            None => format!("{k}={v:?}"),
        })
        .collect();
    let how = if a.by_text.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = a.by_text.iter().map(|k| k.name()).collect();
        format!("; {} compared by text: no token id", names.join(", "))
    };
    format!(
        "prompt {}#{}: greedy first tokens differ ({}{how})",
        a.prompt_type,
        a.prompt_idx,
        t.join(", ")
    )
}

/// Outliers and cold first runs, per case only: a set row would compare different prompts. Not
/// for load runs: a prompt's requests there overlap with others and queue, so their spread is
/// the load's, which the load summary reports (and a cold start is what `--warmup` sends).
fn case_warnings(report: &Report, cases: &[CaseSummary]) -> Vec<String> {
    let mut w = Vec::new();
    if !report.load.is_empty() {
        return w;
    }
    for s in cases {
        let case = case_name(s);
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

/// Backends that generated different lengths for one prompt (their TPOT and E2E are over unequal
/// work), and `--ignore-eos` runs that still stopped early.
fn stop_warnings(report: &Report, cases: &[CaseSummary]) -> Vec<String> {
    let mut w = Vec::new();
    let mut prompts: Vec<(&str, Option<usize>)> = Vec::new();
    for c in cases {
        let k = (c.prompt_type.as_str(), c.prompt_idx);
        if !prompts.contains(&k) {
            prompts.push(k);
        }
    }
    for (set, idx) in prompts {
        let same: Vec<&CaseSummary> = cases
            .iter()
            .filter(|c| c.prompt_type == set && c.prompt_idx == idx)
            .collect();
        let lens: Vec<f64> = same
            .iter()
            .filter_map(|c| c.generated_tokens_mean)
            .collect();
        let differ = lens.iter().any(|&l| (l - lens[0]).abs() > 1e-9);
        if !differ {
            continue;
        }
        let each: Vec<String> = same
            .iter()
            .filter_map(|c| {
                let n = c.generated_tokens_mean?;
                let who = if c.point.is_empty() {
                    c.runner.to_string()
                } else {
                    format!("{} [{}]", c.runner, c.point)
                };
                Some(format!(
                    "{who}={n:.1} ({} eos, {} length)",
                    c.stops.eos, c.stops.length
                ))
            })
            .collect();
        let name = idx.map_or(set.to_string(), |i| format!("{set}#{i}"));
        w.push(format!(
            "prompt {name}: backends generated different numbers of tokens ({}): their TPOT and E2E are over unequal work; --ignore-eos makes every backend generate --max-new-tokens",
            each.join(", ")
        ));
    }
    let early = report
        .runs
        .iter()
        .filter(|r| r.flags.iter().any(|f| f == "ignore_eos_not_honoured"))
        .count();
    if early > 0 {
        w.push(format!("--ignore-eos: {early} runs generated fewer than --max-new-tokens (flagged ignore_eos_not_honoured): the server ignored ignore_eos/min_tokens or stopped for another reason; see each backend's info.ignore_eos"));
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
    };
    if let (Some(a), Some(b)) = (si(BackendKind::Inproc), si(BackendKind::Api)) {
        w.extend(system_info_differences(a, b));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_first_token_mismatch_names_ids_and_the_backends_compared_by_text() {
        let a = FirstTokenAgreement {
            prompt_type: "short".into(),
            prompt_idx: 0,
            point: String::new(),
            first_tokens: BTreeMap::from([
                (BackendKind::Inproc, " Paris".to_string()),
                (BackendKind::Api, " London".to_string()),
            ]),
            first_token_ids: BTreeMap::from([(BackendKind::Inproc, 7042)]),
            agree: false,
            compared_by: "id+text".into(),
            by_text: vec![BackendKind::Api],
        };
        assert_eq!(
            first_token_warning(&a),
            "prompt short#0: greedy first tokens differ (inproc=#7042 \" Paris\", api=\" London\"; api compared by text: no token id)"
        );
    }
}
