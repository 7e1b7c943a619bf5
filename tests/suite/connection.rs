//! The timed request's connection: opened before the clock by default (`connect_ms` apart, row
//! says `pre-opened`), inside it with `--fresh-connection`; one connection per request, so
//! llama-server's close after a streamed answer never races with a reused one.

use crate::helpers;

use helpers::fault_server::{Fault, FaultServer, TlsServer};
use helpers::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Run ttft's api backend against `url` with `prompts` (one a line); return the exit code, the
/// rows and stderr.
fn run_api(
    url: &str,
    prompts: &str,
    extra: &[&str],
) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.txt");
    std::fs::write(&p, prompts).unwrap();
    let out = d.path().join("out");
    let (p, o) = (p.display().to_string(), out.display().to_string());
    let mut args = vec![
        "--backend",
        "api",
        "--api-url",
        url,
        "--runs",
        "2",
        "--warmup",
        "0",
        "--max-new-tokens",
        "3",
        "--prompts",
        &p,
        "--out",
        &o,
    ];
    args.extend(extra);
    let res = ttft(&args);
    let runs = json_of(&out)["runs"].as_array().unwrap().clone();
    // The CSV carries the same two facts.
    let csv = std::fs::read_to_string(only_file(&out, "csv")).unwrap();
    let head: Vec<&str> = csv.lines().next().unwrap_or("").split(',').collect();
    let col = head
        .iter()
        .position(|c| *c == "connection")
        .expect("connection column");
    assert_eq!(head[col - 1], "connect_ms");
    (res.status.code(), runs, stderr(&res))
}

fn ms(r: &serde_json::Value, k: &str) -> f64 {
    r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"))
}

#[test]
fn rows_say_which_connection_and_its_setup_time() {
    let server = FaultServer::start(Fault::Http500);
    for (extra, label) in [
        (&[][..], "pre-opened"),
        (&["--fresh-connection"][..], "fresh"),
    ] {
        let (code, runs, err) = run_api(&server.url, "alpha\nbeta\n", extra);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(runs.len(), 4);
        for r in &runs {
            assert_eq!(r["ok"], true, "{r}");
            assert_eq!(r["connection"], label, "{r}");
            assert!(ms(r, "connect_ms") >= 0.0);
            if label == "fresh" {
                // Inside the clock: part of TTFT.
                assert!(ms(r, "connect_ms") <= ms(r, "ttft_ms"), "{r}");
            }
        }
    }
    // Every timed request reached the server (the fake serves one request per connection).
    let sent = server.requests.lock().unwrap();
    let timed = sent
        .iter()
        .filter(|h| h.starts_with("POST /completion"))
        .count();
    assert_eq!(timed, 8, "{sent:?}");
}

#[test]
fn the_clock_starts_after_the_tls_handshake_unless_fresh() {
    const SETUP: Duration = Duration::from_millis(500);
    let server = TlsServer::start(SETUP);
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca.pem");
    std::fs::write(&ca, &server.cert_pem).unwrap();
    let ca = ca.display().to_string();
    let setup_ms = SETUP.as_secs_f64() * 1e3;

    let (code, runs, err) = run_api(&server.url, "alpha\n", &["--api-ca-cert", &ca]);
    assert_eq!(code, Some(0), "{err}");
    for r in &runs {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["connection"], "pre-opened");
        assert!(
            ms(r, "connect_ms") >= setup_ms,
            "the handshake waited {setup_ms} ms: {r}"
        );
        // The server answers at once once the handshake is done: TTFT holds none of it.
        assert!(ms(r, "ttft_ms") < setup_ms, "handshake inside TTFT: {r}");
    }

    let before = server.accepted.load(Ordering::SeqCst);
    let (code, runs, err) = run_api(
        &server.url,
        "alpha\n",
        &["--api-ca-cert", &ca, "--fresh-connection"],
    );
    assert_eq!(code, Some(0), "{err}");
    for r in &runs {
        assert_eq!(r["connection"], "fresh");
        assert!(ms(r, "connect_ms") >= setup_ms, "{r}");
        assert!(
            ms(r, "ttft_ms") >= ms(r, "connect_ms"),
            "fresh: setup is part of TTFT: {r}"
        );
    }
    // Two timed runs, two connections (plus the untimed probe's).
    assert!(server.accepted.load(Ordering::SeqCst) - before >= 2);
}

#[test]
fn an_untrusted_certificate_is_refused_with_the_fix() {
    let server = TlsServer::start(Duration::ZERO);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.txt");
    std::fs::write(&p, "alpha\n").unwrap();
    let out = d.path().join("out").display().to_string();
    let res = ttft(&[
        "--backend",
        "api",
        "--api-url",
        &server.url,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--prompts",
        p.to_str().unwrap(),
        "--out",
        &out,
    ]);
    assert_eq!(res.status.code(), Some(2));
    let err = stderr(&res);
    assert!(
        err.contains("certificate") && err.contains("--api-ca-cert FILE"),
        "{err}"
    );

    let bad = d.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let res = ttft(&[
        "--backend",
        "api",
        "--api-url",
        &server.url,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--prompts",
        p.to_str().unwrap(),
        "--out",
        &out,
        "--api-ca-cert",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(res.status.code(), Some(2));
    assert!(stderr(&res).contains("--api-ca-cert"), "{}", stderr(&res));
    let res = ttft(&[
        "--backend",
        "api",
        "--api-ca-cert",
        "/nonexistent/ca.pem",
        "--out",
        &out,
    ]);
    assert_eq!(res.status.code(), Some(2), "{}", stderr(&res));
    assert!(
        stderr(&res).contains("--api-ca-cert /nonexistent/ca.pem"),
        "{}",
        stderr(&res)
    );
}

#[test]
fn many_runs_against_the_real_server_never_race_its_close() {
    let _ = (gguf(), server_bin());
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.txt");
    std::fs::write(&p, format!("{}\n", data_prompts("short")[0])).unwrap();
    let out = d.path().join("out").display().to_string();
    let res = ttft(&[
        "--backend",
        "api",
        "--prompts",
        p.to_str().unwrap(),
        "--runs",
        "40",
        "--warmup",
        "0",
        "--max-new-tokens",
        "4",
        "--out",
        &out,
    ]);
    assert_eq!(res.status.code(), Some(0), "{}", stderr(&res));
    let runs = json_of(&d.path().join("out"))["runs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(runs.len(), 40);
    for r in &runs {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["connection"], "pre-opened");
        assert!(ms(r, "connect_ms") >= 0.0);
        assert_eq!(r["cache_n"], 0, "{r}");
    }
}
