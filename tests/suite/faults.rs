//! Every run ends as a success or as a failed row with its reason; ttft always finishes; nothing
//! measured is lost. Network faults come from the fault-injection server; interrupts and crashes
//! are tested against the real spawned llama-server.

use crate::helpers;

use helpers::fault_server::{Fault, FaultServer, PAUSE};
use helpers::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run ttft against `server` with prompts [ok, FAULT, ok]; return (exit code, elapsed, runs).
fn run_against(
    server: &FaultServer,
    extra: &[&str],
) -> (Option<i32>, Duration, Vec<serde_json::Value>, String) {
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(&prompts, "alpha prompt\nFAULT beta prompt\ngamma prompt\n").unwrap();
    let out = d.path().join("out");
    let mut args = vec![
        "--backend",
        "api",
        "--api-url",
        &server.url,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "3",
        "--first-token-timeout",
        "2",
        "--request-timeout",
        "8",
    ];
    let p = prompts.display().to_string();
    let o = out.display().to_string();
    args.extend(["--prompts", &p, "--out", &o]);
    args.extend(extra);
    let t0 = Instant::now();
    let res = ttft(&args);
    let elapsed = t0.elapsed();
    let runs = json_of(&out)["runs"].as_array().unwrap().clone();
    // The CSV and the JSON-lines log hold the same rows.
    let csv = std::fs::read_to_string(only_file(&out, "csv")).unwrap();
    assert_eq!(csv.lines().count(), runs.len() + 1, "{csv}");
    let jsonl = std::fs::read_to_string(only_file(&out, "jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), runs.len());
    (res.status.code(), elapsed, runs, stderr(&res))
}

#[test]
fn every_http_fault_is_a_failed_row_with_its_reason() {
    let cases: &[(Fault, &str)] = &[
        (
            Fault::Http500,
            "HTTP 500 server_error: model crashed while decoding",
        ),
        (Fault::ContextTooLong, "exceed_context_size_error"),
        (Fault::CloseMidStream, "stream closed after 2 tokens"),
        (Fault::MalformedData, "malformed SSE data"),
        (Fault::NoToken, "stream ended with no token"),
        (Fault::ErrorEvent, "server error event: slot crashed"),
        (Fault::InvalidUtf8, "invalid UTF-8"),
        (Fault::HugeLine, "longer than"),
        (Fault::NotEventStream, "not an event stream"),
        (Fault::SlowFirstToken, "timeout (first token after 2 s)"),
    ];
    for &(fault, reason) in cases {
        let server = FaultServer::start(fault);
        let (code, elapsed, runs, err) = run_against(&server, &[]);
        assert_eq!(code, Some(1), "{fault:?}: {err}");
        assert!(
            elapsed < Duration::from_secs(30),
            "{fault:?} took {elapsed:?}"
        );
        assert_eq!(runs.len(), 3, "{fault:?}");
        for r in &runs {
            let idx = r["prompt_idx"].as_u64().unwrap();
            if idx == 1 {
                assert_eq!(r["ok"], false, "{fault:?}: {r}");
                let e = r["error"].as_str().unwrap();
                assert!(
                    e.contains(reason),
                    "{fault:?}: reason {e:?} lacks {reason:?}"
                );
            } else {
                assert_eq!(r["ok"], true, "{fault:?}: the other runs must succeed: {r}");
                assert_eq!(r["first_token"], " ok");
            }
        }
    }
}

/// Run the stream variant `fault` (on the FAULT prompt; the others get a good stream of the
/// same format) and return that row; every run must succeed.
fn variant_row(fault: Fault, extra: &[&str]) -> serde_json::Value {
    let server = FaultServer::start(fault);
    let (code, _, runs, err) = run_against(&server, extra);
    assert_eq!(code, Some(0), "{fault:?}: {err}");
    assert!(runs.iter().all(|r| r["ok"] == true), "{fault:?}: {runs:?}");
    runs.into_iter()
        .find(|r| r["prompt_idx"] == 1)
        .expect("the FAULT prompt's row")
}

fn ms(r: &serde_json::Value, k: &str) -> f64 {
    r[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {r}"))
}

/// The fake paused [`PAUSE`] between `a` and `b`; allow for scheduling, not for a missing pause.
fn paused_between(r: &serde_json::Value, a: &str, b: &str) {
    let gap = ms(r, b) - ms(r, a);
    assert!(
        gap >= PAUSE.as_secs_f64() * 1e3 * 0.8,
        "{a} {} → {b} {}: the pause is not between them",
        ms(r, a),
        ms(r, b)
    );
}

#[test]
fn reasoning_under_either_field_name_ends_ttft_before_the_visible_answer() {
    for (fault, tokens, by) in [
        (Fault::Reasoning, 4, "usage"),
        (Fault::ReasoningContent, 2, "chunks"),
    ] {
        let r = variant_row(fault, &["--chat"]);
        paused_between(&r, "ttft_ms", "first_visible_ms");
        assert_eq!(r["first_token"], "Let me think.", "{fault:?}");
        assert_eq!(r["output"], "Let me think. ok", "{fault:?}");
        assert_eq!(r["generated_tokens"], tokens, "{fault:?}");
        assert_eq!(r["tokens_counted_by"], by, "{fault:?}");
        assert_eq!(
            r["stop_reason"], "stop",
            "{fault:?}: chat cannot tell EOS from a stop string"
        );
        assert!(r["first_tool_call_ms"].is_null());
    }
}

#[test]
fn a_tool_call_only_first_chunk_is_the_first_token() {
    let r = variant_row(Fault::ToolCallFirst, &["--chat"]);
    assert_eq!(ms(&r, "first_tool_call_ms"), ms(&r, "ttft_ms"));
    paused_between(&r, "ttft_ms", "e2e_ms");
    assert!(r["first_visible_ms"].is_null(), "{r}");
    assert_eq!(r["stop_reason"], "tool_calls");
    assert_eq!(r["generated_tokens"], 2);
    assert_eq!(r["tokens_counted_by"], "chunks");
}

#[test]
fn null_and_empty_content_chunks_are_no_token() {
    let r = variant_row(Fault::NullContent, &["--chat"]);
    assert!(
        ms(&r, "ttft_ms") >= PAUSE.as_secs_f64() * 1e3 * 0.8,
        "a content:null or \"\" chunk ended TTFT: {r}"
    );
    assert_eq!(ms(&r, "first_visible_ms"), ms(&r, "ttft_ms"));
    assert_eq!(r["first_token"], " ok");
    assert_eq!(r["generated_tokens"], 2);
    assert_eq!(r["itl_ms"].as_array().unwrap().len(), 1);
}

#[test]
fn two_tokens_per_chunk_are_counted_from_usage_and_tpot_divides_by_them() {
    for flavor in ["llama", "openai"] {
        let r = variant_row(
            Fault::TwoTokensPerChunk,
            &["--api-endpoint", "v1", "--api-flavor", flavor],
        );
        assert_eq!(r["generated_tokens"], 4, "{flavor}");
        assert_eq!(r["tokens_counted_by"], "usage", "{flavor}");
        assert_eq!(r["stop_reason"], "length", "{flavor}");
        let itl = r["itl_ms"].as_array().unwrap();
        assert_eq!(itl.len(), 1, "{flavor}: one gap per arriving chunk");
        let gap = itl[0].as_f64().unwrap();
        assert!(gap >= PAUSE.as_secs_f64() * 1e3 * 0.8, "{flavor}: {gap}");
        let tpot = ms(&r, "decode_ms_per_token");
        assert!(
            (tpot - gap / 3.0).abs() < 1e-6,
            "{flavor}: TPOT {tpot} vs gap {gap} / 3"
        );
    }
}

#[test]
fn a_final_event_without_its_blank_line_still_gives_stop_and_timings() {
    let r = variant_row(Fault::NoTrailingBlankLine, &[]);
    assert_eq!(r["stop_reason"], "eos");
    assert_eq!(r["server_prompt_ms"], 1.5);
    assert_eq!(r["cache_n"], 0);
    assert_eq!(r["generated_tokens"], 3);
    assert_eq!(r["tokens_counted_by"], "server_predicted");
    assert_eq!(r["first_token_id"], 1, "the native event's tokens: [1]");
    assert_eq!(r["first_token_bytes"], "206f6b");
}

#[test]
fn a_server_that_rejects_continuous_usage_stats_is_asked_without_it() {
    let server = FaultServer::start(Fault::RejectsContinuousUsage);
    let (code, _, runs, err) =
        run_against(&server, &["--api-endpoint", "v1", "--api-flavor", "openai"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(runs.iter().all(|r| r["ok"] == true), "{runs:?}");
    assert!(
        err.contains("rejects stream_options.continuous_usage_stats"),
        "{err}"
    );
    assert!(
        runs.iter().all(|r| r["tokens_counted_by"] == "usage"),
        "{runs:?}"
    );
    let sent = server.requests.lock().unwrap();
    let asked = sent
        .iter()
        .filter(|r| r.contains("continuous_usage_stats"))
        .count();
    assert_eq!(asked, 1, "asked once, then never again");
    // The llama flavor never sends it (llama-server does not offer it).
    drop(sent);
    let llama = FaultServer::start(Fault::RejectsContinuousUsage);
    let (code, ..) = run_against(&llama, &["--api-endpoint", "v1"]);
    assert_eq!(code, Some(0));
    assert!(llama
        .requests
        .lock()
        .unwrap()
        .iter()
        .all(|r| !r.contains("continuous_usage_stats")));
}

#[test]
fn a_server_that_goes_away_fails_the_remaining_runs_without_hanging() {
    let server = FaultServer::start(Fault::StopListening);
    let (code, elapsed, runs, _) = run_against(&server, &[]);
    assert_eq!(code, Some(1));
    assert!(elapsed < Duration::from_secs(30));
    assert_eq!(runs[0]["ok"], true);
    for r in &runs[1..] {
        assert_eq!(r["ok"], false);
        let e = r["error"].as_str().unwrap();
        assert!(
            e.contains("request failed") && e.to_lowercase().contains("connect"),
            "{e}"
        );
    }
}

#[test]
fn the_api_key_is_sent_but_never_written_or_printed() {
    const KEY: &str = "sk-ttft-test-0123456789SECRET";
    let server = FaultServer::start(Fault::Http500);
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(&prompts, "alpha\nFAULT beta\n").unwrap();
    let out = d.path().join("out");
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ttft"));
        c.current_dir(root())
            .args([
                "--backend",
                "api",
                "--api-url",
                &server.url,
                "--runs",
                "1",
                "--warmup",
                "0",
                "-vv",
            ])
            .args([
                "--prompts",
                prompts.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .args(extra)
            .env_remove("TTFT_API_KEY")
            .env_remove("OPENAI_API_KEY");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let key_file = d.path().join("key.txt");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let outputs = [
        run(&[("TTFT_API_KEY", KEY)], &[]),
        run(&[("OPENAI_API_KEY", KEY)], &[]),
        run(&[], &["--api-key-file", key_file.to_str().unwrap()]),
    ];
    let sent = server.requests.lock().unwrap();
    let with_key = sent
        .iter()
        .filter(|h| h.contains(&format!("Bearer {KEY}")))
        .count();
    assert!(
        with_key >= 6,
        "the key was not sent on every request: {with_key}"
    );
    for o in &outputs {
        assert_eq!(o.status.code(), Some(1));
        assert!(!stdout(o).contains(KEY) && !stderr(o).contains(KEY));
        assert!(
            stderr(o).contains("HTTP 500"),
            "-vv prints request details: {}",
            stderr(o)
        );
    }
    for f in std::fs::read_dir(&out).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap(); // CSV, JSON, JSONL, SVG, PNG
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "key leaked into a report"
        );
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == "json"))
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(json["settings"]["api"]["api_key"], "***");
    let help = Command::new(env!("CARGO_BIN_EXE_ttft"))
        .arg("--help")
        .env("TTFT_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(!stdout(&help).contains(KEY) && stdout(&help).contains("TTFT_API_KEY"));
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// Start ttft on the spawned llama-server with -v, wait for `n` finished runs, return the child,
/// the out folder, the stderr reader and the server pid.
fn start_and_wait_runs(n: usize) -> (std::process::Child, tempfile::TempDir, u32) {
    let _ = (gguf(), server_bin());
    let d = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ttft"))
        .current_dir(root())
        .args([
            "--backend",
            "api",
            "--prompts",
            "data/short_prompts.txt",
            "--runs",
            "20",
            "--warmup",
            "0",
            "-v",
        ])
        .args([
            "--max-new-tokens",
            "40",
            "--out",
            d.path().to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = 0;
    while seen < n {
        let l = lines.next().expect("ttft ended early").unwrap();
        if l.contains(" run ") {
            seen += 1;
        }
    }
    // Keep draining stderr in the background so ttft never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let server = spawned_server(child.id());
    (child, d, server)
}

/// The llama-server that ttft (`pid`) spawned.
fn spawned_server(pid: u32) -> u32 {
    children_of(pid)
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .contains("llama-server")
        })
        .expect("spawned llama-server")
}

fn wait_gone(pid: u32) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sigint_stops_after_the_current_run_and_keeps_everything() {
    let (mut child, d, server) = start_and_wait_runs(3);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let json = json_of(d.path());
    let runs = json["runs"].as_array().unwrap();
    assert!(runs.len() >= 3 && runs.len() < 100, "{} runs", runs.len());
    assert!(runs.iter().all(|r| r["ok"] == true));
    let csv = std::fs::read_to_string(only_file(d.path(), "csv")).unwrap();
    assert_eq!(csv.lines().count(), runs.len() + 1);
    assert!(
        wait_gone(server),
        "llama-server {server} outlived ttft after SIGINT"
    );
}

#[test]
fn sigkill_of_ttft_takes_the_server_down_too() {
    let (mut child, d, server) = start_and_wait_runs(1);
    child.kill().unwrap(); // SIGKILL: no destructor runs; the kernel's parent-death signal must.
    child.wait().unwrap();
    assert!(
        wait_gone(server),
        "llama-server {server} outlived a killed ttft"
    );
    // Every finished run was already on disk.
    let csv = std::fs::read_to_string(only_file(d.path(), "csv")).unwrap();
    assert!(csv.lines().count() >= 2, "{csv}");
}

#[test]
fn a_panic_unwinding_through_the_backend_stops_the_server() {
    let params = llama_params();
    let d = tempfile::tempdir().unwrap();
    let settings = api_settings(d.path(), ttft::backend::api::Endpoint::Completion);
    let pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let pid2 = pid.clone();
    let r = std::panic::catch_unwind(move || {
        let api = ttft::backend::api::ApiBackend::open(&params, &settings).unwrap();
        pid2.store(
            api.server_pid().unwrap(),
            std::sync::atomic::Ordering::SeqCst,
        );
        panic!("boom while benchmarking");
    });
    assert!(r.is_err());
    let pid = pid.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        pid > 0 && !pid_alive(pid),
        "llama-server {pid} survived a panic"
    );
}

#[test]
fn sigint_during_an_open_loop_stops_sending_at_once_and_keeps_the_summary() {
    let _ = (gguf(), server_bin());
    let d = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ttft"))
        .current_dir(root())
        .args([
            "--backend",
            "api",
            "--request-rate",
            "2",
            "--num-requests",
            "200",
        ])
        .args(["--max-new-tokens", "64", "--warmup", "0", "--no-progress"])
        .args(["--prompts", "data/short_prompts.txt", "--out"])
        .arg(d.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Rows go to the CSV as they finish: wait for three.
    let t0 = Instant::now();
    loop {
        let rows = files_with(d.path(), "csv").first().map_or(0, |p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
        });
        if rows >= 4 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no rows after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = spawned_server(child.id());
    let signalled = Instant::now();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(130));
    // Two seconds of grace for the requests in flight, then the report.
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let json = json_of(d.path());
    let runs = json["runs"].as_array().unwrap();
    assert!(runs.len() >= 3 && runs.len() < 200, "{} rows", runs.len());
    for r in runs {
        let err = r["error"].as_str().unwrap_or("");
        assert!(r["ok"] == true || err.starts_with("interrupted"), "{r}");
    }
    assert_eq!(json["load"]["requests"].as_u64(), Some(runs.len() as u64));
    assert!(wait_gone(server), "llama-server {server} outlived ttft");
}
