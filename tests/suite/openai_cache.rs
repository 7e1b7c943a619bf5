//! The openai flavor against a server with a prefix cache (the fake in helpers/openai_server.rs,
//! which answers a prompt it has seen 20× faster and reports cached tokens like vLLM): nothing
//! untimed warms a timed run, every timed run is cold or flagged as a cache hit, and the flag
//! fires when the cache-busting prefix is switched off.

use crate::helpers;

use helpers::openai_server::{OpenAiServer, Options, COLD_MS};
use helpers::*;
use serde_json::Value;

const PROMPTS: &str = "the capital of france is a city on a river\n\
                       write one short line about the sea and the wind\n";

/// Run ttft's api backend against `server`; the report and stderr.
fn run(server: &OpenAiServer, extra: &[&str]) -> (Value, String) {
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(&prompts, PROMPTS).unwrap();
    let out = d.path().join("out");
    let (p, o) = (prompts.display().to_string(), out.display().to_string());
    let mut args = vec![
        "--backend",
        "api",
        "--api-url",
        &server.url,
        "--max-new-tokens",
        "3",
        "--prompts",
        &p,
        "--out",
        &o,
    ];
    args.extend(extra);
    let res = ttft(&args);
    assert_eq!(
        res.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&res),
        stderr(&res)
    );
    (json_of(&out), format!("{}{}", stdout(&res), stderr(&res)))
}

fn flags(r: &Value) -> Vec<String> {
    r["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

fn cache_hit(r: &Value) -> bool {
    flags(r).iter().any(|f| f.starts_with("cache_hit:"))
}

/// The acceptance rule: a row the server's cache served is flagged; an unflagged row was a cold
/// prefill (the fake's cold prefill alone takes COLD_MS; a fully cached one about 1/20 of it).
fn assert_cold_or_flagged(runs: &[Value]) {
    for r in runs {
        assert_eq!(r["ok"], true, "{r}");
        let ttft = r["ttft_ms"].as_f64().unwrap();
        if !cache_hit(r) {
            assert!(ttft >= 0.9 * COLD_MS, "silently warm row: {r}");
            assert_eq!(r["cache_n"], 0, "{r}");
        }
    }
}

/// Nothing but streamed, timed generations (runs + warm-ups) reached the server: no untimed
/// request read `usage` by generating.
fn assert_only_streamed(server: &OpenAiServer, expected: usize) {
    let served = server.served();
    assert!(
        served.iter().all(|s| s.body["stream"] == true),
        "{served:?}"
    );
    assert_eq!(served.len(), expected, "{served:?}");
}

#[test]
fn every_openai_row_is_cold_with_the_cache_bust_prefix() {
    for (endpoint, tokenize) in [
        (&["--api-endpoint", "v1"][..], true),
        (&["--chat"][..], true),
        (&["--chat"][..], false),
    ] {
        let server = OpenAiServer::start(Options {
            tokenize,
            metrics: true,
        });
        let mut extra = vec!["--runs", "3", "--warmup", "1"];
        extra.extend(endpoint);
        let (json, out) = run(&server, &extra);
        let runs = json["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 6);
        assert_cold_or_flagged(runs);
        // With the prefix on (the openai flavor's default) nothing is even flagged.
        assert!(runs.iter().all(|r| !cache_hit(r)), "{runs:?}");
        assert_only_streamed(&server, 6 + 1);
        assert!(server.served().iter().all(|s| s.cached_tokens == 0));
        for r in runs {
            let f = flags(r);
            if tokenize {
                // Measured with /tokenize before timing; the prompt's count plus the prefix's
                // is what usage then reports.
                assert_eq!(r["cache_bust_tokens"], 4, "{r}");
                assert!(f.is_empty(), "{r}");
            } else {
                // Nothing could measure it: no made-up length, a flag instead.
                assert!(r["cache_bust_tokens"].is_null(), "{r}");
                assert_eq!(
                    f,
                    ["cache_bust_tokens_unmeasured", "cache_bust_unverified"],
                    "{r}"
                );
            }
        }
        assert!(out.contains("cache-bust: every run and warm-up"), "{out}");
        let api = backend_of(&json, "api");
        let m = &api["info"]["prefix_cache_metrics"];
        assert_eq!(m["cached_tokens"], 0.0, "{m}");
        assert!(
            m["delta"]["vllm:prefix_cache_queries_total"]
                .as_f64()
                .unwrap()
                > 0.0,
            "{m}"
        );
        assert_schema_valid(&json);
    }
}

#[test]
fn without_the_prefix_the_repeated_runs_are_flagged_as_cache_hits() {
    let server = OpenAiServer::start(Options {
        tokenize: true,
        metrics: true,
    });
    let (json, _) = run(
        &server,
        &[
            "--api-endpoint",
            "v1",
            "--runs",
            "3",
            "--warmup",
            "0",
            "--no-cache-bust",
        ],
    );
    let runs = json["runs"].as_array().unwrap();
    assert_cold_or_flagged(runs);
    for r in runs {
        let first = r["run_idx"] == 0;
        assert_eq!(cache_hit(r), !first, "{r}");
        assert!(r["cache_bust_tokens"].is_null(), "{r}");
        if !first {
            assert!(r["cache_n"].as_u64().unwrap() >= 4, "{r}");
            assert!(r["ttft_ms"].as_f64().unwrap() < 0.9 * COLD_MS, "{r}");
        }
    }
    assert_only_streamed(&server, 6);
    let m = &backend_of(&json, "api")["info"]["prefix_cache_metrics"];
    assert!(m["cached_tokens"].as_f64().unwrap() > 0.0, "{m}");
}

#[test]
fn a_server_without_metrics_reports_them_unavailable() {
    let server = OpenAiServer::start(Options {
        tokenize: true,
        metrics: false,
    });
    let (json, _) = run(
        &server,
        &["--api-endpoint", "v1", "--runs", "1", "--warmup", "0"],
    );
    let m = &backend_of(&json, "api")["info"]["prefix_cache_metrics"];
    assert!(m.as_str().unwrap().starts_with("unavailable"), "{m}");
}

/// Write the test prompts into `d`; the path as text.
#[cfg(feature = "llama")]
fn prompt_file(d: &std::path::Path) -> String {
    let p = d.join("p.txt");
    std::fs::write(&p, PROMPTS).unwrap();
    p.display().to_string()
}

/// `--cache-bust` on in-process and llama-server backends: the same kind of prefix, its length
/// measured with the GGUF vocabulary, and every row evaluated exactly the prompt plus the prefix.
#[cfg(feature = "llama")]
#[test]
fn a_forced_prefix_has_the_same_measured_length_on_every_backend() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let (p, o) = (prompt_file(d.path()), d.path().join("out"));
    let res = ttft(&[
        "--backend",
        "inproc,api",
        "--cache-bust",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--max-new-tokens",
        "2",
        "--prompts",
        &p,
        "--out",
        o.to_str().unwrap(),
    ]);
    assert_eq!(
        res.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&res),
        stderr(&res)
    );
    let json = json_of(&o);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8);
    let n = runs[0]["cache_bust_tokens"].as_u64().unwrap();
    assert!(n >= 4, "four words and a newline: {n}");
    for r in runs {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["cache_bust_tokens"], n, "{r}");
        assert!(
            flags(r).is_empty(),
            "prompt + prefix is what was evaluated: {r}"
        );
    }
    let count = |runner: &str| -> Vec<u64> {
        let rows = runs.iter().filter(|r| r["runner"] == runner);
        rows.map(|r| r["prompt_tokens"].as_u64().unwrap()).collect()
    };
    assert_eq!(count("inproc"), count("api"));
    // The k-th run of every backend gets the same prefix: the same text, the same first token.
    assert_first_tokens_agree(&json);
}

/// A tokenizer that counts the prefix differently (the fake's words against the GGUF's) refuses
/// the run before anything is timed, with one line naming the flag.
#[cfg(feature = "llama")]
#[test]
fn a_prefix_of_another_length_in_one_backend_refuses_the_run() {
    let server = OpenAiServer::start(Options {
        tokenize: true,
        metrics: false,
    });
    let d = tempfile::tempdir().unwrap();
    let (p, o) = (prompt_file(d.path()), d.path().join("out"));
    let res = ttft(&[
        "--backend",
        "inproc,api",
        "--api-url",
        &server.url,
        "--api-endpoint",
        "v1",
        "--runs",
        "1",
        "--prompts",
        &p,
        "--out",
        o.to_str().unwrap(),
    ]);
    let err = stderr(&res);
    assert_eq!(res.status.code(), Some(2), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("--cache-bust"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("tokens in") && line.contains("--no-cache-bust"),
        "{err}"
    );
    assert!(server.served().is_empty(), "nothing was timed");
}
