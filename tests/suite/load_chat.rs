//! The api backend for real deployments: chat, the OpenAI flavor and load, against the real
//! spawned llama-server with the default GGUF.

use crate::helpers;

use helpers::*;
use std::path::Path;

/// The five short data prompts: nothing the chat and flavor tests check depends on a prompt's
/// length, and the three long ones were most of their time (each long prompt a second or two per
/// backend here).
const SHORT: &str = "data/short_prompts.txt";

fn prompt_tokens(runs: &[serde_json::Value], runner: &str) -> Vec<(String, u64, u64)> {
    let mut v: Vec<(String, u64, u64)> = runs
        .iter()
        .filter(|r| r["runner"] == runner && r["ok"] == true)
        .map(|r| {
            (
                r["prompt_type"].as_str().unwrap().to_string(),
                r["prompt_idx"].as_u64().unwrap(),
                r["prompt_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn chat_streams_and_uses_the_same_templated_tokens_in_process_and_over_http() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = ttft(&[
        "--backend",
        "hf,inproc,api",
        "--chat",
        "--prompts",
        SHORT,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "3",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("parity: all 5 prompts tokenize to identical ids in hf, inproc, api"),
        "{}",
        stdout(&o)
    );
    let json = json_of(d.path());
    let runs = json["runs"].as_array().unwrap();
    // The server's evaluated prompt (its own template) has exactly the in-process template's tokens.
    let (api, inproc, hf) = (
        prompt_tokens(runs, "api"),
        prompt_tokens(runs, "inproc"),
        prompt_tokens(runs, "hf"),
    );
    assert_eq!(api.len(), 5);
    assert_eq!(api, inproc);
    assert_eq!(api, hf);
    assert!(
        api.iter().all(|(_, _, n)| *n > 20),
        "the template adds the system and role markers"
    );
    for r in runs.iter().filter(|r| r["runner"] == "api") {
        // The role-only first chunk is not a token: TTFT is the first content.
        assert!(!r["first_token"].as_str().unwrap().is_empty(), "{r}");
        assert!(
            r["ttft_ms"].as_f64().unwrap() > 0.0 && r["ttft_ms"].as_f64() <= r["e2e_ms"].as_f64()
        );
        assert_eq!(
            r["first_visible_ms"], r["ttft_ms"],
            "no reasoning text: first visible = first token"
        );
        assert_eq!(r["cache_n"], 0);
    }
    assert_first_tokens_agree(&json);
    assert!(json["token_disagreements"].as_array().unwrap().is_empty());
}

#[test]
fn openai_flavor_sends_only_standard_fields_and_counts_from_usage() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = ttft(&[
        "--backend",
        "inproc,api",
        "--api-flavor",
        "openai",
        "--api-endpoint",
        "v1",
        "--prompts",
        SHORT,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "2",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let json = json_of(d.path());
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(
        prompt_tokens(runs, "api"),
        prompt_tokens(runs, "inproc"),
        "usage.prompt_tokens"
    );
    for r in runs.iter().filter(|r| r["runner"] == "api") {
        assert!(
            r["server_prompt_ms"].is_null() && r["api_overhead_ms"].is_null(),
            "unavailable, not zero: {r}"
        );
    }
    let api = backend_of(&json, "api");
    assert_eq!(api["info"]["flavor"], "openai");
    assert_eq!(api["info"]["flavor_detected"], "llama");

    // Chat included: usage.prompt_tokens of the server's templated prompt = the in-process
    // template's count, for every prompt.
    let chat = d.path().join("chat");
    let o = ttft(&[
        "--backend",
        "inproc,api",
        "--api-flavor",
        "openai",
        "--chat",
        "--prompts",
        SHORT,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "2",
        "--out",
        chat.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let cj = json_of(&chat);
    let chat_runs = cj["runs"].as_array().unwrap();
    let api_counts = prompt_tokens(chat_runs, "api");
    assert_eq!(api_counts.len(), 5);
    assert_eq!(api_counts, prompt_tokens(chat_runs, "inproc"));
    assert!(api["info"]["server_timings"]
        .as_str()
        .unwrap()
        .starts_with("unavailable"));
}

#[test]
fn concurrency_4_keeps_4_requests_in_flight_on_4_server_slots() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = ttft(&[
        "--backend",
        "api",
        "--concurrency",
        "4",
        "--num-requests",
        "12",
        "--prompts",
        SHORT,
        "--max-new-tokens",
        "16",
        "--slo",
        "ttft=100000,tpot=100000",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(
        out.contains("closed loop, concurrency 4; 12/12 requests ok"),
        "{out}"
    );
    let json = json_of(d.path());
    let load = &json["load"];
    assert_eq!(load["max_in_flight"], 4);
    assert_eq!(load["server_slots"], 4);
    assert_eq!(load["ok"], 12);
    for k in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
        assert!(
            load[k]["p50"].as_f64().unwrap() > 0.0
                && load[k]["p99"].as_f64() >= load[k]["p50"].as_f64(),
            "{k}: {}",
            load[k]
        );
    }
    // Generous objectives: every request meets them, so goodput equals throughput.
    assert_eq!(load["goodput"], load["request_throughput"]);
    let api = backend_of(&json, "api");
    let args: Vec<&str> = api["info"]["server_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let np = args.iter().position(|a| *a == "--parallel").unwrap();
    assert_eq!(args[np + 1], "4");
    assert_eq!(json["runs"].as_array().unwrap().len(), 12);
    assert_schema_valid(&json);
}

#[test]
fn load_options_need_the_api_backend() {
    let o = ttft(&["--backend", "inproc", "--concurrency", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--backend api"));
    let o = ttft(&[
        "--backend",
        "api",
        "--concurrency",
        "2",
        "--request-rate",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = ttft(&["--backend", "api", "--concurrency", "2", "--slo", "speed=3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown objective"));
}

#[test]
fn spawn_rpc_2_offloads_to_two_local_workers_with_the_same_first_token() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(
        &prompts,
        "The capital of France is\nWater boils at sea level at a temperature of\n",
    )
    .unwrap();
    let run = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "--backend",
            "api",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--max-new-tokens",
            "2",
        ];
        let (p, o) = (prompts.display().to_string(), out.display().to_string());
        args.extend(["--prompts", &p, "--out", &o]);
        args.extend(extra);
        let res = ttft(&args);
        assert_eq!(
            res.status.code(),
            Some(0),
            "{}\n{}",
            stdout(&res),
            stderr(&res)
        );
        json_of(out)
    };
    let plain = run(&[], &d.path().join("plain"));
    let rpc = run(&["--spawn-rpc", "2"], &d.path().join("rpc"));
    let firsts = |j: &serde_json::Value| -> Vec<String> {
        j["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["first_token"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(firsts(&rpc), firsts(&plain));
    assert_eq!(firsts(&rpc)[0], " Paris");
    let info = &rpc["backends"][0]["info"];
    let endpoints = info["rpc"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{info}");
    let args: Vec<&str> = info["server_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--rpc"), "{args:?}");
    // The workers were really used: the server log names the RPC devices.
    let log = std::fs::read_to_string(info["server_log"].as_str().unwrap()).unwrap();
    assert!(log.contains("RPC"), "no RPC device in the server log");
    for pid in info["rpc"]["spawned_worker_pids"].as_array().unwrap() {
        assert!(
            !pid_alive(pid.as_u64().unwrap() as u32),
            "rpc-server {pid} outlived ttft"
        );
    }
}

/// llama-cpp-python's OpenAI-compatible server (built by setup from the same llama.cpp sdist),
/// started on 127.0.0.1 and killed when dropped.
struct LlamaCppPython {
    child: std::process::Child,
    url: String,
}

impl LlamaCppPython {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(root().join(".venv/bin/python"))
            .args([
                "-m",
                "llama_cpp.server",
                "--model",
                gguf().to_str().unwrap(),
                "--host",
                "127.0.0.1",
            ])
            .args([
                "--port",
                &port.to_string(),
                "--n_ctx",
                "2048",
                "--n_threads",
                "2",
                "--n_threads_batch",
                "2",
            ])
            .args(["--verbose", "false"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("llama-cpp-python server (run scripts/setup.sh --tests)");
        let url = format!("http://127.0.0.1:{port}");
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed().as_secs() < 60,
                "llama-cpp-python server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        LlamaCppPython { child, url }
    }
}

impl Drop for LlamaCppPython {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_second_server_implementation_streams_completions_and_chat() {
    let _serial = serial();
    let server = LlamaCppPython::start();
    let d = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "--api-url",
            &server.url,
            "--runs",
            "1",
            "--warmup",
            "1",
            "--max-new-tokens",
            "3",
        ];
        let o = out.display().to_string();
        args.extend(["--out", &o]);
        args.extend(extra);
        let res = ttft(&args);
        assert_eq!(
            res.status.code(),
            Some(0),
            "{}\n{}",
            stdout(&res),
            stderr(&res)
        );
        (stdout(&res), json_of(out))
    };
    // Completions: the flavor is detected (no /props), the tokens are checked with its tokenizer.
    let (out, json) = run(
        &["--backend", "inproc,api", "--api-endpoint", "v1"],
        &d.path().join("v1"),
    );
    assert!(
        out.contains("parity: all 8 prompts tokenize to identical ids in inproc, api"),
        "{out}"
    );
    let api = backend_of(&json, "api");
    assert_eq!(api["info"]["flavor"], "openai");
    for r in json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["runner"] == "api")
    {
        let (t, e) = (
            r["ttft_ms"].as_f64().unwrap(),
            r["e2e_ms"].as_f64().unwrap(),
        );
        assert!(t > 0.0 && t <= e, "{r}");
        assert!(r["server_prompt_ms"].is_null(), "unavailable, not zero");
    }
    // Its streams carry no usage: the counts come from its /extras/tokenize before timing (never
    // from an untimed generation, which would warm its prefix cache), and match the in-process
    // count for every data prompt (both with the same cache-busting prefix).
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(prompt_tokens(runs, "api").len(), 8);
    assert_eq!(prompt_tokens(runs, "api"), prompt_tokens(runs, "inproc"));
    // Chat: the role-only first chunk is not taken as the first token. The server can neither
    // tokenize a chat prompt nor streams usage, so its prompt counts are unknown (and say so),
    // never read from an untimed generation. (The short prompts: nothing here depends on a
    // prompt's length, and the long ones took 17 of this test's 44 s.)
    let chat = ["--backend", "inproc,api", "--chat", "--prompts", SHORT];
    let (_, json) = run(&chat, &d.path().join("chat"));
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(prompt_tokens(runs, "inproc").len(), 5);
    for r in runs.iter().filter(|r| r["runner"] == "api") {
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["prompt_tokens"].is_null(), "{r}");
        assert!(
            r["flags"].to_string().contains("cache_bust_unverified"),
            "{r}"
        );
        assert!(!r["first_token"].as_str().unwrap().is_empty(), "{r}");
        assert!(r["ttft_ms"].as_f64() <= r["e2e_ms"].as_f64());
    }
}

#[test]
fn llama_cpp_python_honours_min_tokens_under_ignore_eos() {
    let _serial = serial();
    let server = LlamaCppPython::start();
    let d = tempfile::tempdir().unwrap();
    let q = d.path().join("q.txt");
    std::fs::write(&q, "What is 2+2? Answer with a number only.\n").unwrap();
    let (q, o) = (
        format!("q={}", q.display()),
        d.path().join("out").display().to_string(),
    );
    let res = ttft(&[
        "--backend",
        "api",
        "--api-url",
        &server.url,
        "--chat",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--max-new-tokens",
        "32",
        "--ignore-eos",
        "--prompts",
        &q,
        "--out",
        &o,
    ]);
    assert_eq!(res.status.code(), Some(0), "{}", stderr(&res));
    let json = json_of(&d.path().join("out"));
    // Unasked it ends after a handful of tokens; min_tokens (which it knows) holds off its EOS.
    for r in json["runs"].as_array().unwrap() {
        assert_eq!(r["generated_tokens"], 32, "{r}");
        assert!(
            !r["flags"].to_string().contains("ignore_eos_not_honoured"),
            "{r}"
        );
    }
    let info = &backend_of(&json, "api")["info"]["ignore_eos"];
    assert_eq!(
        info["sent"],
        serde_json::json!(["ignore_eos", "min_tokens"]),
        "{info}"
    );
}
