//! Load points as a deployment is sized with them: a sweep of rates on one server with warm-up,
//! lateness and plots; an open loop the client cannot keep up with, which must show as latency
//! counted from the schedule, not as a quietly lower rate; and the search for the highest rate
//! at which an objective holds.

use crate::helpers;

use helpers::instant_server::InstantServer;
use helpers::*;
use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_rate_sweep_runs_every_point_on_one_server_with_lateness_and_plots() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = ttft(&[
        "--backend",
        "api",
        "--request-rate",
        "4,8",
        "--repeat",
        "2",
        "--num-requests",
        "6",
        "--warmup",
        "1",
        "--max-new-tokens",
        "4",
        "--prompts",
        "data/short_prompts.txt",
        "--no-progress",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(out.contains("load sweep (set short): point"), "{out}");
    assert!(out.contains("load repeats: mean [95% CI]"), "{out}");
    let json = json_of(d.path());
    assert_schema_valid(&json);
    assert!(json["load"].is_null(), "a sweep has no single load summary");
    let points = json["load_points"].as_array().unwrap();
    // --repeat 2: the sweep twice, interleaved.
    let order: Vec<(&str, u64)> = points
        .iter()
        .map(|p| (p["label"].as_str().unwrap(), p["repeat"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        order,
        [("rate=4", 1), ("rate=8", 1), ("rate=4", 2), ("rate=8", 2)]
    );
    for p in points {
        assert_eq!(p["set"], "short");
        assert_eq!((p["ok"].as_u64(), p["warmup"].as_u64()), (Some(6), Some(1)));
        assert!(p["lateness_ms"]["max"].as_f64().is_some(), "{p}");
        assert!(p["steady"]["to_s"].as_f64().is_some(), "{p}");
        // The spawned server's /metrics over the point: its prompt tokens counted there too.
        let prompt = &p["server_metrics"]["delta"]["llamacpp:prompt_tokens_total"];
        assert!(f(prompt) > 0.0, "{p}");
        // Its /slots: every slot idle before and after (drained), each slot's last task there.
        let slots = &p["server_slots_state"];
        assert_eq!(slots["before"]["processing"], 0, "{slots}");
        assert_eq!(slots["after"]["processing"], 0, "{slots}");
        let per_slot = slots["after"]["per_slot"].as_array().unwrap();
        assert_eq!(per_slot.len() as u64, p["server_slots"].as_u64().unwrap());
        assert!(
            per_slot.iter().any(|s| s["n_decoded"].as_u64() > Some(0)),
            "{slots}"
        );
    }
    let reps = json["load_repeats"].as_array().unwrap();
    assert_eq!(reps.len(), 2, "{reps:?}");
    for r in reps {
        let ttft = &r["ttft_p50_ms"];
        assert_eq!(ttft["values"].as_array().unwrap().len(), 2, "{r}");
        assert!(f(&ttft["ci_low"]) <= f(&ttft["mean"]) && f(&ttft["mean"]) <= f(&ttft["ci_high"]));
    }
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 24, "warm-ups are not rows");
    let mut ids = std::collections::HashSet::new();
    for r in runs {
        let late = f(&r["send_lateness_ms"]);
        assert!(f(&r["ttft_ms"]) >= late && late >= 0.0, "{r}");
        // A repeat's rows continue the run numbers of the rows before them at that load.
        let id = (
            r["point"].clone(),
            r["prompt_idx"].clone(),
            r["run_idx"].clone(),
        );
        assert!(ids.insert(id), "{r}");
    }
    // The CSV carries the lateness too, in its last column, for every row (prompts have no commas).
    let csv = std::fs::read_to_string(only_file(d.path(), "csv")).unwrap();
    let head = csv.lines().next().unwrap();
    assert!(head.ends_with(",send_lateness_ms"), "{head}");
    let mut late: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(late.len(), runs.len());
    assert!(late.iter().all(|l| *l >= 0.0), "{late:?}");
    // The same values as the JSON rows' (the CSV keeps three decimals).
    let mut json_late: Vec<f64> = runs.iter().map(|r| f(&r["send_lateness_ms"])).collect();
    late.sort_by(f64::total_cmp);
    json_late.sort_by(f64::total_cmp);
    for (c, j) in late.iter().zip(&json_late) {
        assert!((c - j).abs() <= 0.0005 + 1e-9, "csv {c} vs json {j}");
    }
    for part in ["load-ttft", "load-tpot", "load-pareto"] {
        let svg = files_with(d.path(), "svg");
        assert!(
            svg.iter().any(|p| p.to_string_lossy().contains(part)),
            "{part}: {svg:?}"
        );
    }
}

/// ttft against the instant server: one-token answers to the short prompts, no warm-up.
fn on_instant(
    server: &InstantServer,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let o = out.display().to_string();
    let mut args = vec![
        "--backend",
        "api",
        "--api-url",
        &server.url,
        "--warmup",
        "0",
    ];
    args.extend([
        "--max-new-tokens",
        "1",
        "--prompts",
        "data/short_prompts.txt",
    ]);
    args.extend(["--no-progress", "--out", &o]);
    args.extend_from_slice(extra);
    ttft(&args)
}

#[test]
fn an_open_loop_beyond_the_client_shows_as_lateness_counted_in_ttft() {
    let _serial = serial();
    let server = InstantServer::start();
    let d = tempfile::tempdir().unwrap();
    // 3000 requests scheduled within 30 ms: far more than one client core sends.
    let o = on_instant(
        &server,
        d.path(),
        &["--request-rate", "100000", "--num-requests", "3000"],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(out.contains("warning: the client sent late"), "{out}");
    let json = json_of(d.path());
    let mut rows: Vec<&Value> = json["runs"].as_array().unwrap().iter().collect();
    assert_eq!(rows.len(), 3000);
    rows.sort_by_key(|r| r["run_idx"].as_u64());
    let late: Vec<f64> = rows.iter().map(|r| f(&r["send_lateness_ms"])).collect();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&late[..300]), mean(&late[2700..]));
    assert!(
        last > first + 20.0,
        "lateness grows along the schedule: first tenth {first:.2} ms, last {last:.2} ms"
    );
    for r in &rows {
        assert!(f(&r["ttft_ms"]) >= f(&r["send_lateness_ms"]), "{r}");
    }
    let load = &json["load"];
    assert!(f(&load["lateness_ms"]["p99"]) > 20.0, "{load}");
    assert!(
        f(&load["ttft_ms"]["p99"]) >= f(&load["lateness_ms"]["p99"]),
        "{load}"
    );
}

#[test]
fn the_max_goodput_search_brackets_and_bisects_the_rate() {
    let _serial = serial();
    let server = InstantServer::start();
    let d = tempfile::tempdir().unwrap();
    // The instant server never limits: the rate at which ttft's own sends fall 20 ms behind
    // does (1000 requests a probe: at any rate beyond the client's, the last ones go out
    // 1000 / its rate, about 100 ms, late). --repeat 2: the whole search twice.
    let o = on_instant(
        &server,
        d.path(),
        &[
            "--max-goodput",
            "ttft_p99=20",
            "--request-rate",
            "2000",
            "--num-requests",
            "1000",
            "--repeat",
            "2",
        ],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let json = json_of(d.path());
    assert!(json["load_search"].is_null(), "two searches: no single one");
    let searches = json["load_searches"].as_array().unwrap();
    assert_eq!(searches.len(), 2);
    let mut probes_run = 0;
    let mut lows = Vec::new();
    for (i, s) in searches.iter().enumerate() {
        assert_eq!(
            (s["set"].as_str(), s["repeat"].as_u64()),
            (Some("short"), Some(i as u64 + 1))
        );
        let probes = s["probes"].as_array().unwrap();
        let (low, high) = (f(&s["low"]), f(&s["high"]));
        assert!(low < high && (high - low) / low <= 0.1 + 1e-9, "{s}");
        assert!(probes.iter().any(|p| p["phase"] == "bisect"), "{s}");
        probes_run += probes.len();
        lows.push(low);
    }
    assert_eq!(probes_run, json["load_points"].as_array().unwrap().len());
    assert!(
        out.contains("max goodput search [set short, repeat 2] (ttft_p99 ≤ 20 ms)")
            && out.contains("saturation: "),
        "{out}"
    );
    // The saturation rate over the two searches, with its interval.
    let sat = &json["load_saturation"][0];
    assert_eq!(
        (sat["searches"].as_u64(), sat["resolved"].as_u64()),
        (Some(2), Some(2))
    );
    let values: Vec<f64> = sat["load"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(f)
        .collect();
    assert_eq!(values, lows);
    assert!(
        out.contains("saturation (set short): 2 of 2 searches bracketed it"),
        "{out}"
    );
    // Each probe is a load point with its own rows.
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1000 * probes_run);
}
