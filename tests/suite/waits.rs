//! No silent waits before timing: a server that accepts connections and then says nothing makes
//! ttft say what it waits for within about two seconds, and stop with one line (exit 2) after
//! `--prepare-timeout`, long before the timed runs' `--request-timeout`. No real server can be
//! made to hang like this, so these use a fake that answers only what it is told to.

use crate::helpers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A server on 127.0.0.1 that accepts every connection; requests for paths in `answers` get that
/// JSON (200), paths in `missing` a 404, and every other request no answer at all (the
/// connection stays open).
struct SilentServer {
    url: String,
}

impl SilentServer {
    fn start(answers: &'static [(&'static str, &'static str)], missing: &'static [&str]) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve(s, answers, missing));
            }
        });
        SilentServer { url }
    }
}

fn serve(mut s: TcpStream, answers: &[(&str, &str)], missing: &[&str]) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The request head (helper requests carry small bodies; the path is all that matters).
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let reply = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if let Some((_, body)) = answers.iter().find(|(p, _)| *p == path) {
        let _ = s.write_all(reply("200 OK", body).as_bytes());
    } else if missing.contains(&path.as_str()) {
        let _ = s.write_all(reply("404 Not Found", "{}").as_bytes());
    } else {
        // Say nothing; keep the connection until ttft gives up.
        let _ = s.read_to_end(&mut Vec::new());
    }
}

/// Run ttft on the api backend against `url`; every stderr line with the seconds since start,
/// the exit code and the wall time.
fn run_ttft(url: &str, extra: &[&str]) -> (Vec<(f64, String)>, Option<i32>, Duration) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = out.display().to_string();
    let mut args = vec![
        "--backend",
        "api",
        "--api-url",
        url,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--no-progress",
        "--out",
        &o,
    ];
    args.extend(extra);
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ttft"))
        .args(&args)
        .current_dir(helpers::root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines are timed as they arrive, while ttft still runs.
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send((t0.elapsed().as_secs_f64(), line));
        }
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("ttft still waits after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = t0.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    (rx.try_iter().collect(), status.code(), wall)
}

/// The waiting line for `path` came after about two seconds, once; then exactly one error line
/// naming the server, the request and what to do, and exit 2 soon after `--prepare-timeout 4`.
fn assert_said_and_stopped(url: &str, path: &str) {
    let (lines, code, wall) = run_ttft(url, &["--prepare-timeout", "4"]);
    let shown = format!("{lines:#?}");
    assert_eq!(code, Some(2), "{shown}");
    let waiting: Vec<_> = lines
        .iter()
        .filter(|(_, l)| l.starts_with("ttft: waiting for"))
        .collect();
    assert_eq!(
        waiting.len(),
        1,
        "one waiting line, not one per poll: {shown}"
    );
    let (at, w) = waiting[0];
    assert!((1.5..3.5).contains(at), "said after {at:.2} s: {shown}");
    assert_eq!(
        w,
        &format!("ttft: waiting for {url}{path} (prepare, 2 s so far; --prepare-timeout 4 s)")
    );
    let errors: Vec<_> = lines
        .iter()
        .filter(|(_, l)| l.starts_with("ttft: error"))
        .collect();
    assert_eq!(errors.len(), 1, "{shown}");
    let (at, e) = errors[0];
    assert!(
        *at >= 3.9,
        "gave up after {at:.2} s, before --prepare-timeout: {shown}"
    );
    for part in [
        url,
        path,
        "--prepare-timeout",
        "check that the server is up",
    ] {
        assert!(e.contains(part), "{e:?} lacks {part:?}");
    }
    // Nothing else was said, and it did not wait for --request-timeout (600 s).
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(wall < Duration::from_secs(12), "{wall:?}: {shown}");
}

#[test]
fn a_server_that_never_answers_is_named_and_ttft_stops_after_the_prepare_timeout() {
    let server = SilentServer::start(&[], &[]);
    assert_said_and_stopped(&server.url, "/props");
}

/// The case first reported: the server answers its probe, then never answers `/tokenize`.
#[test]
fn a_tokenize_that_never_answers_stops_ttft_before_timing() {
    const PROPS: &str = r#"{"build_info":"b1-9e3b928","default_generation_settings":{"n_ctx":2048},"total_slots":1}"#;
    let server = SilentServer::start(&[("/props", PROPS)], &["/v1/models", "/metrics"]);
    assert_said_and_stopped(&server.url, "/tokenize");
}

#[test]
fn the_prepare_timeout_must_be_a_positive_number() {
    let o = helpers::ttft(&["--backend", "api", "--prepare-timeout", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let e = helpers::stderr(&o);
    assert!(
        e.contains("--prepare-timeout must be a positive number"),
        "{e}"
    );
}
