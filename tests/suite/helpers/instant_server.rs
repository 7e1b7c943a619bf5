//! A llama-server stand-in that answers every streamed completion at once (one token and the
//! final event), for measuring ttft's own client: no real server answers in microseconds, and
//! the open-loop tests need one that the client, not the server, limits. One thread per
//! connection, on 127.0.0.1; it stops when dropped.

use super::fault_server::read_request;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The running stand-in.
pub struct InstantServer {
    /// Base URL.
    pub url: String,
    stop: Arc<AtomicBool>,
}

impl Drop for InstantServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn answer(s: &mut TcpStream) -> std::io::Result<()> {
    let Some((head, _)) = read_request(s) else {
        return Ok(());
    };
    let (status, ctype, body) = if head.starts_with("POST /completion") {
        let events = [
            r#"{"content":" ok","tokens":[1],"stop":false}"#,
            r#"{"content":"","tokens":[],"stop":true,"timings":{"cache_n":0,"prompt_n":3,"prompt_ms":0.0,"predicted_n":1,"predicted_ms":0.0}}"#,
        ];
        let sse: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        ("200 OK", "text/event-stream", sse)
    } else if head.starts_with("GET /props") {
        // llama.cpp of the linked commit, so the native endpoint is used.
        (
            "200 OK",
            "application/json",
            r#"{"build_info":"b1-9e3b928"}"#.to_string(),
        )
    } else {
        ("404 Not Found", "application/json", "{}".to_string())
    };
    let len = if ctype == "text/event-stream" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{len}Connection: close\r\n\r\n{body}"
    )?;
    s.flush()
}

impl InstantServer {
    /// Start on a free loopback port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut s) = conn {
                    let _ = s.set_nodelay(true);
                    std::thread::spawn(move || answer(&mut s));
                }
            }
        });
        InstantServer { url, stop }
    }
}
