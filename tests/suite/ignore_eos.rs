//! `--ignore-eos`: every backend generates exactly `--max-new-tokens`, on the real model (a chat
//! prompt that normally ends at EOS after a few tokens), and the api backend copes with servers
//! that reject or ignore the fields (the fault server: no real server here does either on demand).

use crate::helpers;

use helpers::fault_server::{Fault, FaultServer};
use helpers::*;
use serde_json::Value;

/// A prompt SmolLM2-135M-Instruct answers in a few tokens and then ends with `<|im_end|>`.
const SHORT_ANSWER: &str = "What is 2+2? Answer with a number only.";

fn run_real(extra: &[&str]) -> (Value, String) {
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("q.txt");
    std::fs::write(&prompts, format!("{SHORT_ANSWER}\n")).unwrap();
    let (p, o) = (
        format!("q={}", prompts.display()),
        d.path().join("out").display().to_string(),
    );
    let mut args = vec![
        "--backend",
        "all",
        "--chat",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--max-new-tokens",
        "32",
        "--no-progress",
        "--prompts",
        &p,
        "--out",
        &o,
    ];
    args.extend(extra);
    let res = ttft(&args);
    let out = format!("{}{}", stdout(&res), stderr(&res));
    assert_eq!(res.status.code(), Some(0), "{out}");
    let json = json_of(&d.path().join("out"));
    assert_schema_valid(&json);
    (json, out)
}

#[test]
fn ignore_eos_makes_every_backend_generate_max_new_tokens() {
    let _g = serial();
    // Without it the answer ends at EOS early on every backend, and the summary says so.
    let (plain, _) = run_real(&[]);
    let runs = plain["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "3 backends × 2 runs");
    for r in runs {
        // The chat endpoint's finish reason is OpenAI's "stop" (an EOS or a stop word).
        let eos = if r["runner"] == "api" { "stop" } else { "eos" };
        assert_eq!(r["stop_reason"], eos, "{r}");
        assert!(r["generated_tokens"].as_u64().unwrap() < 32, "{r}");
    }
    for s in plain["summary"].as_array().unwrap() {
        let (eos, other) = if s["runner"] == "api" { (0, 2) } else { (2, 0) };
        assert_eq!(s["stops"]["eos"], eos, "{s}");
        assert_eq!(s["stops"]["other"], other, "{s}");
        assert_eq!(s["stops"]["length"], 0, "{s}");
    }
    assert_eq!(plain["settings"]["ignore_eos"], false);

    let (fixed, out) = run_real(&["--ignore-eos"]);
    assert_eq!(fixed["settings"]["ignore_eos"], true);
    let runs = fixed["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "3 backends × 2 runs");
    for r in runs {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["generated_tokens"], 32, "{r}");
        assert_eq!(r["stop_reason"], "length", "{r}");
        assert!(
            !r["flags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "ignore_eos_not_honoured"),
            "{r}"
        );
    }
    for s in fixed["summary"].as_array().unwrap() {
        assert_eq!(s["generated_tokens_mean"], 32.0, "{s}");
        assert_eq!(s["stops"]["length"], 2, "{s}");
    }
    assert!(
        !out.contains("generated different numbers of tokens"),
        "{out}"
    );
    for b in ["hf", "inproc", "api"] {
        let info = &backend_of(&fixed, b)["info"]["ignore_eos"];
        assert_eq!(info["requested"], true, "{b}: {info}");
    }
    assert_eq!(
        backend_of(&fixed, "api")["info"]["ignore_eos"]["sent"],
        serde_json::json!(["ignore_eos"])
    );
    let masked = &backend_of(&fixed, "inproc")["info"]["ignore_eos"]["masked_eog_ids"];
    assert!(!masked.as_array().unwrap().is_empty(), "{masked}");
}

/// ttft against `server` with --ignore-eos, three prompts, one run each, no warm-up.
fn run_fake(server: &FaultServer, max_new: &str, extra: &[&str]) -> (Value, String) {
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(&prompts, "alpha prompt\nbeta prompt\ngamma prompt\n").unwrap();
    let (p, o) = (
        prompts.display().to_string(),
        d.path().join("out").display().to_string(),
    );
    let mut args = vec![
        "--backend",
        "api",
        "--api-url",
        &server.url,
        "--api-endpoint",
        "v1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--ignore-eos",
        "--max-new-tokens",
        max_new,
        "--no-progress",
        "--prompts",
        &p,
        "--out",
        &o,
    ];
    args.extend(extra);
    let res = ttft(&args);
    let out = format!("{}{}", stdout(&res), stderr(&res));
    assert_eq!(res.status.code(), Some(0), "{out}");
    let json = json_of(&d.path().join("out"));
    assert_schema_valid(&json);
    (json, out)
}

fn flagged(r: &Value) -> bool {
    r["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "ignore_eos_not_honoured")
}

#[test]
fn a_server_that_rejects_ignore_eos_and_min_tokens_is_asked_without_them() {
    let server = FaultServer::start(Fault::RejectsIgnoreEos);
    // The fake streams 3 tokens: with --max-new-tokens 3 that is the asked length.
    let (json, out) = run_fake(&server, "3", &["--api-flavor", "openai"]);
    let runs = json["runs"].as_array().unwrap();
    assert!(
        runs.iter().all(|r| r["ok"] == true && !flagged(r)),
        "{runs:?}"
    );
    assert!(out.contains("the server rejects ignore_eos"), "{out}");
    assert!(out.contains("the server rejects min_tokens"), "{out}");
    let sent = server.requests.lock().unwrap().clone();
    let with = |k: &str| {
        sent.iter()
            .filter(|r| r.contains(&format!("\"{k}\"")))
            .count()
    };
    assert_eq!(with("ignore_eos"), 1, "refused once, then never sent");
    assert_eq!(
        with("min_tokens"),
        2,
        "sent again without ignore_eos, refused"
    );
    let info = &backend_of(&json, "api")["info"]["ignore_eos"];
    assert_eq!(info["sent"], serde_json::json!([]), "{info}");
    assert_eq!(
        info["rejected_by_server"],
        serde_json::json!(["ignore_eos", "min_tokens"]),
        "{info}"
    );
}

#[test]
fn a_server_that_ignores_ignore_eos_gets_its_rows_flagged() {
    // A llama.cpp-like server that accepts the field but still stops after 3 tokens.
    let server = FaultServer::start(Fault::RejectsContinuousUsage);
    let (json, out) = run_fake(&server, "8", &[]);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for r in runs {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["generated_tokens"], 3, "{r}");
        assert!(flagged(r), "{r}");
    }
    assert!(
        out.contains("--ignore-eos: 3 runs generated fewer than --max-new-tokens"),
        "{out}"
    );
    let sent = server.requests.lock().unwrap().clone();
    let gens: Vec<&String> = sent
        .iter()
        .filter(|r| r.starts_with("POST /v1/completions"))
        .collect();
    assert_eq!(gens.len(), 3);
    assert!(
        gens.iter()
            .all(|r| r.contains("\"ignore_eos\":true") && !r.contains("min_tokens")),
        "the llama flavor sends ignore_eos only: {gens:?}"
    );
    let info = &backend_of(&json, "api")["info"]["ignore_eos"];
    assert_eq!(info["sent"], serde_json::json!(["ignore_eos"]), "{info}");
}

#[test]
fn load_runs_send_ignore_eos_and_flag_early_stops() {
    let server = FaultServer::start(Fault::RejectsContinuousUsage);
    let (json, _) = run_fake(&server, "8", &["--concurrency", "2", "--num-requests", "4"]);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    assert!(
        runs.iter().all(|r| r["ok"] == true && flagged(r)),
        "{runs:?}"
    );
    let sent = server.requests.lock().unwrap().clone();
    let gens: Vec<&String> = sent
        .iter()
        .filter(|r| r.starts_with("POST /v1/completions"))
        .collect();
    assert_eq!(gens.len(), 4);
    assert!(gens.iter().all(|r| r.contains("\"ignore_eos\":true")));
}
