//! The fast tier: the runner, per-case statistics, warnings, exporters, exit codes and
//! `ttft compare`, driven by the scripted fake backend. No model, no server, no libtorch:
//! `cargo test --no-default-features --test fast` (or `--lib` for the unit tests) right after
//! a clone.

use std::collections::BTreeMap;
use std::time::Duration;
use ttft::backend::fake::{FakeBackend, Script};
use ttft::backend::BackendKind;
use ttft::bench::prompts::PromptSet;
use ttft::bench::record::{PromptId, RunRecord};
use ttft::bench::runner::{self, Plan};
use ttft::report::{Level, Report, SetInfo};

fn set(name: &str, prompts: &[&str]) -> PromptSet {
    PromptSet {
        name: name.into(),
        path: format!("{name}.txt").into(),
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        repeat: None,
        warmup: None,
        dataset: None,
    }
}

fn plan(sets: Vec<PromptSet>, runs: u32, warmup: u32) -> Plan {
    Plan {
        sets,
        runs,
        warmup,
        max_new_tokens: 4,
        ignore_eos: false,
        progress: false,
        too_long: Default::default(),
        verbose: 0,
        min_time: Duration::ZERO,
        cache_bust: None,
        contexts: Vec::new(),
        turns: None,
    }
}

/// Run `scripts` on a fake `kind` through the real runner.
fn run(
    kind: BackendKind,
    scripts: &[(&str, Script)],
    plan: &Plan,
) -> (Vec<RunRecord>, runner::BackendReport) {
    let scripts: BTreeMap<String, Script> = scripts
        .iter()
        .map(|(p, s)| (p.to_string(), s.clone()))
        .collect();
    let mut b = FakeBackend::new(kind, scripts);
    let mut rows = Vec::new();
    let rep = runner::run_backend(&mut b, plan, "", &mut |r| rows.push(r.clone()));
    (rows, rep)
}

fn report(plan: &Plan, parts: Vec<(Vec<RunRecord>, runner::BackendReport)>) -> Report {
    let (mut runs, mut backends) = (Vec::new(), Vec::new());
    for (r, b) in parts {
        runs.extend(r);
        backends.push(b);
    }
    Report {
        sets: plan.sets.iter().map(SetInfo::of).collect(),
        token_disagreements: runner::token_disagreements(&backends),
        backends,
        runs,
        parity: Default::default(),
        load: Vec::new(),
        load_searches: Vec::new(),
        peak_tflops: Default::default(),
        roofline: Err("not measured in this test".into()),
    }
}

/// A prompt at `base` ms with a little deterministic noise.
fn noisy(base: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| base * (1.0 + 0.01 * ((i * 7 % 5) as f64 - 2.0)))
        .collect()
}

/// hf in bf16 on a CPU without bf16 GEMM kernels (libtorch falls back to a path many times slower
/// than f32) is named in one warning; the same run where the CPU has them gets none.
#[test]
fn a_dtype_this_cpu_has_no_gemm_kernels_for_is_warned_about() {
    let p = plan(vec![set("short", &["a"])], 3, 0);
    let scripts = [("a", Script::ttfts(&noisy(20.0, 3), 5))];
    let warned = |native: bool| {
        let (rows, mut rep) = run(BackendKind::Hf, &scripts, &p);
        rep.info = serde_json::json!({"weight_dtype": "bf16", "native_gemm": native});
        rep.facts = ttft::bench::backend_report::BackendFacts::of(&rep.info);
        let w = ttft::report::warnings::warnings(&report(&p, vec![(rows, rep)]));
        w.into_iter()
            .filter(|w| w.contains("GEMM kernels"))
            .collect::<Vec<_>>()
    };
    let w = warned(false);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("hf: this CPU has no bf16 GEMM kernels"),
        "{w:?}"
    );
    assert!(warned(true).is_empty());
}

/// A prefill faster than the roofline's bound (the probe ran in a slower spell of a shared host)
/// is one warning naming the case and the probe; a probe that saw the machine's speed gives none.
#[test]
fn a_prefill_beating_the_roofline_bound_is_warned_about() {
    let p = plan(vec![set("short", &["a"])], 3, 0);
    // TTFT 10 ms, so prefill 9 ms (the scripted backend's 90 %).
    let scripts = [("a", Script::ttfts(&[10.0; 3], 5))];
    let warned = |read_gbs: f64, read_at_end_gbs: Option<f64>| {
        let (rows, mut rep) = run(BackendKind::Hf, &scripts, &p);
        rep.info = serde_json::json!({"weight_dtype": "f32", "weight_bytes": 540e6,
            "model_shape": {"d_attn": 576, "d_model": 576, "n_layers": 30,
                "non_embedding_params": 1.0e8, "tied_lm_head": true, "vocab": 49152}});
        rep.facts = ttft::bench::backend_report::BackendFacts::of(&rep.info);
        let mut r = report(&p, vec![(rows, rep)]);
        r.roofline = Ok(ttft::report::roofline::Roofline {
            device: "cpu: test".into(),
            threads: 2,
            libtorch: "2.13.0".into(),
            read_gbs,
            f32_gflops: 500.0,
            f32_by_kernel: [("avx512".to_string(), 500.0)].into(),
            bf16_gflops: None,
            f16_gflops: None,
            gemm_shape: [512, 2048, 2048],
            probe_ms: 900.0,
            steady: true,
            measured_at: "2026-12-07T15:08:04Z".into(),
            version: ttft::report::roofline::PROBE_VERSION,
            read_at_end_gbs,
        });
        ttft::report::warnings::warnings(&r)
            .into_iter()
            .filter(|w| w.starts_with("roofline") || w.starts_with("memory read"))
            .collect::<Vec<_>>()
    };
    // 540 MB at 50 GB/s is a 10.8 ms bound: fraction 1.2.
    let w = warned(50.0, None);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("(hf short#0 1.20)"), "{w:?}");
    assert!(
        w[0].contains("2026-12-07T15:08:04Z (memory read 50.0 GB/s)"),
        "{w:?}"
    );
    // At 100 GB/s the bound is 5.4 ms: fraction 0.6, nothing to say.
    assert!(warned(100.0, None).is_empty());
    assert!(warned(100.0, Some(85.0)).is_empty());
    // A run whose own end read 45 GB/s met a slow spell: its fractions read low, and it says so.
    let w = warned(100.0, Some(45.0));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("memory read 45.0 GB/s after the timed runs, 0.45 of this machine's ceiling (100.0 GB/s"),
        "{w:?}"
    );
}

#[test]
fn prompts_of_very_different_speed_are_separate_cases() {
    let p = plan(vec![set("long", &["fast", "slow"])], 8, 1);
    // 9 calls of "fast": the warm-up, then 8 timed runs.
    let scripts = [
        ("fast", Script::ttfts(&noisy(20.0, 9), 5)),
        ("slow", Script::ttfts(&noisy(2000.0, 9), 500)),
    ];
    let r = report(&p, vec![run(BackendKind::Inproc, &scripts, &p)]);
    let warnings = ttft::report::warnings::warnings(&r);
    assert!(
        warnings
            .iter()
            .all(|w| !w.contains("outlier") && !w.contains("first timed run")),
        "{warnings:?}"
    );
    let sums = r.summaries();
    let set_row = sums.iter().find(|s| s.level == Level::Set).unwrap();
    let prompts: Vec<_> = sums.iter().filter(|s| s.level == Level::Prompt).collect();
    assert_eq!(prompts.len(), 2);
    assert_eq!(set_row.prompts, 2);
    // The set's median is the mean of the per-prompt medians...
    let mean_of_medians =
        (prompts[0].ttft.median_ms.unwrap() + prompts[1].ttft.median_ms.unwrap()) / 2.0;
    assert!((set_row.ttft.median_ms.unwrap() - mean_of_medians).abs() < 1e-9);
    // ...and its CI is measurement noise (±1 % of the prompts), not the 20 ms vs 2 s spread.
    let (lo, hi) = set_row.ttft.median_ci95_ms.unwrap();
    assert!(hi - lo < 0.05 * mean_of_medians, "{lo}–{hi}");
    for p in &prompts {
        let (a, b) = p.ttft.median_ci95_ms.unwrap();
        assert!(b - a < 0.05 * p.ttft.median_ms.unwrap(), "{p:?}");
    }
    // Pooling the two prompts, as before, gives an interval wider than the faster prompt's TTFT.
    let pooled: Vec<f64> = r.runs.iter().filter_map(|r| r.ttft_ms()).collect();
    let (plo, phi) = ttft::bench::stats::bootstrap_median_ci(&pooled, 10_000, 0.95, 1).unwrap();
    assert!(
        phi - plo > hi - lo,
        "pooled {plo}–{phi} vs per-prompt {lo}–{hi}"
    );
}

#[test]
fn a_slow_first_run_is_flagged_for_its_own_prompt_only() {
    let p = plan(vec![set("short", &["a", "b"])], 6, 0);
    let mut cold = noisy(10.0, 6);
    cold[0] = 40.0;
    let scripts = [
        ("a", Script::ttfts(&cold, 3)),
        ("b", Script::ttfts(&noisy(300.0, 6), 30)),
    ];
    let r = report(&p, vec![run(BackendKind::Hf, &scripts, &p)]);
    let w = ttft::report::warnings::warnings(&r);
    // The cold run is an outlier of its prompt and its first run; the other prompt is clean.
    assert!(w.iter().all(|l| l.starts_with("hf short#0: ")), "{w:?}");
    assert!(
        w.iter()
            .any(|l| l.contains("first timed run was much slower")),
        "{w:?}"
    );
}

#[test]
fn relative_speed_is_the_geometric_mean_of_per_prompt_ratios() {
    let p = plan(vec![set("long", &["x", "y"])], 5, 0);
    let fast = [
        ("x", Script::ttfts(&noisy(10.0, 5), 3)),
        ("y", Script::ttfts(&noisy(1000.0, 5), 3)),
    ];
    let slow = [
        ("x", Script::ttfts(&noisy(20.0, 5), 3)),
        ("y", Script::ttfts(&noisy(2000.0, 5), 3)),
    ];
    let r = report(
        &p,
        vec![
            run(BackendKind::Inproc, &fast, &p),
            run(BackendKind::Api, &slow, &p),
        ],
    );
    let rel = r.relative();
    assert_eq!(rel.len(), 1, "{rel:?}");
    assert!(
        rel[0].starts_with("inproc is 2.00× faster than api on long prompts (geometric mean of 2 per-prompt median ratios, 95% CI "),
        "{rel:?}"
    );
}

#[test]
fn min_time_gives_every_prompt_of_a_set_the_same_number_of_runs() {
    let mut p = plan(vec![set("s", &["quick", "slower"])], 2, 0);
    p.min_time = Duration::from_millis(40);
    let scripts: BTreeMap<String, Script> = [
        ("quick".to_string(), Script::ttfts(&[2.0], 3)),
        ("slower".to_string(), Script::ttfts(&[10.0], 3)),
    ]
    .into();
    let mut b = FakeBackend::new(BackendKind::Inproc, scripts).sleeping();
    let mut rows = Vec::new();
    runner::run_backend(&mut b, &p, "", &mut |r| rows.push(r.clone()));
    let count = |t: &str| rows.iter().filter(|r| r.prompt_text == t).count();
    // "quick" needs up to 20 runs of 2 ms to fill 40 ms (fewer when sleeps overshoot on a busy
    // machine), "slower" only 4 of 10 ms; the fastest prompt decides and both get its count.
    assert!(count("quick") >= 6, "{}", count("quick"));
    assert_eq!(count("quick"), count("slower"));
    let mut idx: Vec<u32> = rows
        .iter()
        .filter(|r| r.prompt_text == "slower")
        .map(|r| r.run_idx)
        .collect();
    idx.sort();
    assert_eq!(idx, (0..idx.len() as u32).collect::<Vec<_>>());
}

#[test]
fn failures_are_rows_with_their_error_and_exit_code_1() {
    let p = plan(vec![set("short", &["a"])], 3, 0);
    let scripts = [("a", Script::ttfts(&[10.0], 3).failing(1, "HTTP 503: busy"))];
    let r = report(&p, vec![run(BackendKind::Api, &scripts, &p)]);
    assert_eq!(r.runs.len(), 3);
    let bad: Vec<_> = r.runs.iter().filter(|r| !r.ok).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].error.as_deref(), Some("HTTP 503: busy"));
    assert!(bad[0].measurement.is_none());
    let s = r
        .summaries()
        .into_iter()
        .find(|s| s.level == Level::Set)
        .unwrap();
    assert_eq!((s.ttft.ok, s.ttft.runs), (2, 3));
    assert_eq!(ttft::app::exit_code(&r, false, false), 1);
    assert_eq!(ttft::app::exit_code(&r, true, false), 2);
    let table = ttft::report::table::render(&r, false, false);
    assert!(table.contains("67% (2/3)"), "{table}");
}

#[test]
fn a_backend_that_cannot_open_leaves_failed_rows() {
    let p = plan(vec![set("short", &["a", "b"])], 2, 1);
    let mut rows = Vec::new();
    let rep = runner::run_unopened(BackendKind::Hf, "", "no checkpoint", &p, &mut |r| {
        rows.push(r.clone())
    });
    assert_eq!(rows.len(), 4);
    assert!(rows
        .iter()
        .all(|r| !r.ok && r.error.as_deref() == Some("no checkpoint")));
    assert_eq!(rep.open_error.as_deref(), Some("no checkpoint"));
}

const RULE: ttft::report::compare::Rule = ttft::report::compare::Rule {
    threshold_pct: 5.0,
    alpha: 0.05,
};

/// A report through the JSON exporter, as `ttft compare` reads it.
fn json_of(r: &Report) -> serde_json::Value {
    let env = ttft::report::env::collect(1, None);
    let bytes = ttft::report::json::render(r, &env, &serde_json::json!({"warnings": []}), "now");
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn compare_fails_on_new_failures_and_on_slowdowns_and_passes_on_the_same_build() {
    let p = plan(vec![set("short", &["a", "b"])], 6, 0);
    let base = [
        ("a", Script::ttfts(&noisy(10.0, 6), 3)),
        ("b", Script::ttfts(&noisy(50.0, 6), 3)),
    ];
    let old = json_of(&report(&p, vec![run(BackendKind::Inproc, &base, &p)]));
    let again = json_of(&report(&p, vec![run(BackendKind::Inproc, &base, &p)]));
    let same = ttft::report::compare::compare(&old, &again, RULE).unwrap();
    assert!(same.changes.iter().all(|c| !c.verdict.is_regression()));
    assert_eq!(same.changes.len(), 2, "one case per prompt");

    let flaky = [
        (
            "a",
            Script::ttfts(&noisy(9.0, 6), 3)
                .failing(2, "timeout")
                .failing(4, "timeout"),
        ),
        ("b", Script::ttfts(&noisy(50.0, 6), 3)),
    ];
    let new = json_of(&report(&p, vec![run(BackendKind::Inproc, &flaky, &p)]));
    let c = ttft::report::compare::compare(&old, &new, RULE).unwrap();
    let a = c
        .changes
        .iter()
        .find(|c| c.key.prompt_idx == Some(0))
        .unwrap();
    assert!(a.verdict.is_regression(), "{a:?}");

    let slower = [
        ("a", Script::ttfts(&noisy(10.0, 6), 3)),
        ("b", Script::ttfts(&noisy(60.0, 6), 3)),
    ];
    let new = json_of(&report(&p, vec![run(BackendKind::Inproc, &slower, &p)]));
    let c = ttft::report::compare::compare(&old, &new, RULE).unwrap();
    let b = c
        .changes
        .iter()
        .find(|c| c.key.prompt_idx == Some(1))
        .unwrap();
    assert!(
        b.verdict.is_regression() && b.change_pct.unwrap() > 15.0,
        "{b:?}"
    );
    let a = c
        .changes
        .iter()
        .find(|c| c.key.prompt_idx == Some(0))
        .unwrap();
    assert!(!a.verdict.is_regression(), "{a:?}");
}

#[test]
fn exporters_write_every_row_and_the_json_names_each_case() {
    let p = plan(vec![set("short", &["a", "b"])], 3, 0);
    let scripts = [
        ("a", Script::ttfts(&[10.0, 11.0], 3)),
        ("b", Script::ttfts(&[20.0], 4)),
    ];
    let r = report(&p, vec![run(BackendKind::Inproc, &scripts, &p)]);
    let doc = json_of(&r);
    assert_eq!(doc["runs"].as_array().unwrap().len(), 6);
    let summary = doc["summary"].as_array().unwrap();
    let levels: Vec<(&str, serde_json::Value)> = summary
        .iter()
        .map(|s| (s["level"].as_str().unwrap(), s["prompt_idx"].clone()))
        .collect();
    assert_eq!(
        levels,
        [
            ("set", serde_json::Value::Null),
            ("prompt", 0.into()),
            ("prompt", 1.into())
        ]
    );
    assert!(summary[0]["method"]
        .as_str()
        .unwrap()
        .contains("per-prompt"));
    let md = String::from_utf8(ttft::report::markdown::render(&r, false, true)).unwrap();
    assert!(md.contains("| short#1 | inproc |"), "{md}");
    let csv: String = r.runs.iter().map(ttft::report::csv::row).collect();
    assert_eq!(csv.lines().count(), 6);
    assert!(csv.lines().all(|l| l.starts_with("short,")));
}

#[test]
fn backends_that_stop_at_different_lengths_are_counted_and_warned_about() {
    let p = plan(vec![set("s", &["a"])], 3, 0);
    let script = [("a", Script::ttfts(&[10.0], 5))];
    let (mut early, ei) = run(BackendKind::Inproc, &script, &p);
    for r in &mut early {
        let m = r.measurement.as_mut().unwrap();
        m.generated_tokens = 2;
        m.stop_reason = Some("eos".into());
    }
    let (mut full, fi) = run(BackendKind::Api, &script, &p);
    for r in &mut full {
        r.measurement.as_mut().unwrap().stop_reason = Some("length".into());
    }
    let rep = report(&p, vec![(early, ei), (full, fi)]);
    let case = |k: BackendKind| {
        rep.summaries()
            .into_iter()
            .find(|s| s.runner == k && s.level == Level::Prompt)
            .unwrap()
    };
    let inproc = case(BackendKind::Inproc);
    assert_eq!((inproc.stops.eos, inproc.stops.length), (3, 0));
    assert_eq!(inproc.generated_tokens_mean, Some(2.0));
    assert_eq!(case(BackendKind::Api).stops.length, 3);
    let w = ttft::report::warnings::warnings(&rep);
    assert!(
        w.iter().any(|l| l.starts_with(
            "prompt s#0: backends generated different numbers of tokens (inproc=2.0 (3 eos, 0 length), api=4.0 (0 eos, 3 length))"
        )),
        "{w:?}"
    );
}

#[test]
fn each_depth_is_its_own_case_and_a_backend_without_a_cache_fails_its_rows() {
    use ttft::bench::depth::DepthContext;
    let mut p = plan(vec![set("s", &["a", "b"])], 2, 0);
    let ctx = |depth: u32, ids: Vec<u32>| DepthContext {
        depth,
        ids,
        text: String::new(),
        prompt_tokens: Default::default(),
    };
    p.contexts = vec![ctx(0, vec![]), ctx(3, vec![1, 2, 3])];
    let script = Script::ttfts(&[10.0], 2);
    let (rows, _) = run(
        BackendKind::Inproc,
        &[("a", script.clone()), ("b", script)],
        &p,
    );
    assert_eq!(rows.len(), 8);
    let (cold, deep): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.depth == 0);
    assert!(cold.iter().all(|r| r.ok && r.point == "depth=0"));
    // The fake backend has no cache to hold a context: refused, every run a failed row.
    assert!(deep.iter().all(|r| !r.ok
        && r.point == "depth=3"
        && r.error
            .as_deref()
            .unwrap()
            .contains("cannot hold a cached context")));
    // `--skip-too-long` skipped every prompt: no context is set (the fake would refuse it), and
    // every row says why its prompt was skipped.
    for i in 0..2 {
        p.too_long.insert(PromptId::new("s", i), "too long".into());
    }
    let script = Script::ttfts(&[10.0], 2);
    let (rows, _) = run(
        BackendKind::Inproc,
        &[("a", script.clone()), ("b", script)],
        &p,
    );
    assert!(rows.len() == 8 && rows.iter().all(|r| r.error.as_deref() == Some("too long")));
}

#[test]
fn each_turn_holds_its_own_context_warm_and_none_cold_and_is_summarised_per_turn() {
    use ttft::bench::turns::{TurnCase, TurnPlan, TurnsCache};
    let case = |turn: u32, context_ids: Vec<u32>, increment: &str, full: &str| TurnCase {
        line: 1,
        turn,
        increment_tokens: 2,
        full_tokens: 2 + context_ids.len() as u32,
        context_ids,
        increment: increment.into(),
        full: full.into(),
        notes: Vec::new(),
    };
    let cases = vec![
        case(1, vec![], "u1", "u1"),
        case(2, vec![7, 8, 9], "u2", "u1a1u2"),
    ];
    let mut p = plan(vec![set("conv", &["u1", "u1a1u2"])], 2, 1);
    p.turns = Some(TurnPlan {
        set: "conv".into(),
        cases,
        modes: vec![TurnsCache::Warm, TurnsCache::Cold],
    });
    let scripts: BTreeMap<String, Script> = [
        ("u1", Script::ttfts(&[10.0], 2)),
        ("u2", Script::ttfts(&[12.0], 2)),
        ("u1a1u2", Script::ttfts(&[30.0], 5)),
    ]
    .into_iter()
    .map(|(p, s)| (p.to_string(), s))
    .collect();
    let mut b = FakeBackend::new(BackendKind::Inproc, scripts).with_cache();
    let mut rows = Vec::new();
    let rep = runner::run_backend(&mut b, &p, "", &mut |r| rows.push(r.clone()));
    assert_eq!(rows.len(), 8, "2 modes × 2 turns × 2 runs");
    assert!(rows.iter().all(|r| r.ok && r.flags.is_empty()), "{rows:?}");
    let warm2: Vec<_> = rows
        .iter()
        .filter(|r| r.point == "cache=warm" && r.turn == Some(2))
        .collect();
    assert!(warm2.iter().all(|r| r.prompt_text == "u2" && r.depth == 3));
    assert!(warm2
        .iter()
        .all(|r| r.measurement.as_ref().unwrap().cached_tokens == Some(3)));
    let cold2 = rows
        .iter()
        .find(|r| r.point == "cache=cold" && r.turn == Some(2))
        .unwrap();
    assert_eq!((cold2.prompt_text.as_str(), cold2.depth), ("u1a1u2", 0));
    // Per prompt: its own context, set before its runs; nothing cached once a pass is done.
    assert_eq!(
        b.contexts_set,
        [
            vec![],
            vec![],
            vec![7, 8, 9],
            vec![],
            vec![],
            vec![],
            vec![]
        ]
    );
    let r = report(&p, vec![(rows, rep)]);
    let lines = ttft::report::turns::summaries(&r);
    assert_eq!(lines.len(), 4);
    let warm = lines
        .iter()
        .find(|l| l.cache == "warm" && l.turn == 2)
        .unwrap();
    assert_eq!(
        (
            warm.conversations,
            warm.cached_tokens_mean,
            warm.ttft_median_ms
        ),
        (1, Some(3.0), Some(12.0))
    );
    assert!(ttft::report::turns::render(&r).contains("inproc   -              warm     2"));
}
