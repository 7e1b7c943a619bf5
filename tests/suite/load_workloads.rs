//! Load runs on the workloads users feel: a deep shared context (`--depth`) and conversations
//! replayed turn by turn (`--turns`) under `--concurrency`, on the real llama-server. Each client
//! keeps its context on its own slot, and every row proves what it found cached; what cannot be
//! measured that way is refused in one line before anything is sent.

use crate::helpers;

use helpers::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn run(out: &Path, extra: &[&str]) -> std::process::Output {
    let o = out.display().to_string();
    let mut args = vec![
        "--backend",
        "api",
        "--max-new-tokens",
        "4",
        "--no-progress",
        "--out",
        &o,
    ];
    args.extend_from_slice(extra);
    ttft(&args)
}

fn count(r: &Value, k: &str) -> u64 {
    r[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not a count: {r}"))
}

#[test]
fn every_client_finds_exactly_the_shared_context_cached() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = run(
        d.path(),
        &[
            "--concurrency",
            "2",
            "--depth",
            "256",
            "--num-requests",
            "8",
            // One prompt set: one load point (each set is a workload of its own).
            "--prompts",
            "data/short_prompts.txt",
        ],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(
        out.contains("context: 8/8 requests proved their cached context"),
        "{out}"
    );
    let json = json_of(d.path());
    assert_schema_valid(&json);
    assert_eq!(json["load"]["context"]["held"], 8);
    assert_eq!(json["load"]["max_in_flight"], 2);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8);
    for r in runs {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["point"], "concurrency=2 depth=256", "{r}");
        assert_eq!(
            (count(r, "depth"), count(r, "cached_tokens")),
            (256, 256),
            "{r}"
        );
        // The row's prompt tokens are the prompt's own, as the depth check counted them: no
        // `prompt_tokens_…_vs_tokenizer_…` flag, and none about the context.
        let flags = r["flags"].as_array().unwrap();
        assert!(flags.is_empty(), "{r}");
        assert!(count(r, "prompt_tokens") < 700, "{r}");
    }
}

#[test]
fn conversations_replay_in_order_with_the_earlier_turns_cached() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = run(
        d.path(),
        &[
            "--concurrency",
            "2",
            "--turns",
            "3",
            "--dataset-sample",
            "3",
            "--runs",
            "1",
        ],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(out.contains("turns: per turn"), "{out}");
    let json = json_of(d.path());
    assert_schema_valid(&json);
    // prompt index → (turn, cached tokens); a conversation's turns are consecutive indices.
    let mut rows: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let runs = json["runs"].as_array().unwrap();
    for r in runs {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["point"], "concurrency=2 cache=warm", "{r}");
        let cached = count(r, "cached_tokens");
        assert_eq!(cached, count(r, "depth"), "the row proves its context: {r}");
        rows.insert(count(r, "prompt_idx"), (count(r, "turn"), cached));
    }
    assert_eq!(
        rows.len(),
        runs.len(),
        "every turn of the conversations once"
    );
    let turns: Vec<(u64, u64)> = rows.values().copied().collect();
    for w in turns.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if t1 == t0 + 1 {
            assert!(c1 > c0, "cached tokens grow turn by turn: {turns:?}");
        } else {
            assert_eq!((t1, c1), (1, 0), "a conversation starts cold: {turns:?}");
        }
    }
    let later = turns.iter().filter(|(t, _)| *t > 1).count();
    assert!(later >= 3, "{turns:?}");
    assert_eq!(json["load"]["context"]["requests"], later as u64);
    assert_eq!(json["load"]["context"]["held"], later as u64);
}

#[test]
fn a_server_with_fewer_slots_than_clients_is_refused_before_sending() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("server.log");
    let params = llama_params();
    let server = ttft::backend::server::ServerProcess::spawn(&ttft::backend::server::ServerSpec {
        bin: &server_bin(),
        params: &params,
        alias: "external",
        port: None,
        slots: 1,
        rpc: &[],
        log_path: &log,
        timeout: std::time::Duration::from_secs(120),
    })
    .unwrap();
    let o = run(
        d.path(),
        &[
            "--api-url",
            &server.url,
            "--concurrency",
            "2",
            "--depth",
            "64",
            "--num-requests",
            "4",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("1 slots for 2 clients") && e.contains("--parallel 2"),
        "{e}"
    );
    let json = json_of(d.path());
    assert!(json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["ok"] == false && r["ttft_ms"].is_null()));
}

#[test]
fn load_workloads_that_cannot_be_proven_are_refused_in_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--request-rate", "2", "--depth", "64"],
            "--depth in a load run needs --concurrency N",
        ),
        (
            &["--request-rate", "2", "--turns", "2"],
            "--turns in a load run needs --concurrency N",
        ),
        (
            &["--concurrency", "2", "--depth", "64,128"],
            "a load run takes one --depth",
        ),
        (
            &[
                "--concurrency",
                "2",
                "--turns",
                "2",
                "--turns-cache",
                "warm,cold",
            ],
            "a load run replays one cache state",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["--backend", "api"];
        args.extend_from_slice(extra);
        let o = ttft(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        let line = one_error_line(&o);
        assert!(line.contains(want), "{extra:?}: {line}");
    }
}
