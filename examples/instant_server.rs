//! A server that answers every streamed completion at once (one token, then the final event with
//! llama-server-style timings), for measuring the client side of `ttft` alone:
//! `cargo run --release --example instant_server -- PORT`. Used by scripts/bench-client.sh.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n\
data: {\"content\":\" ok\",\"tokens\":[1],\"stop\":false}\n\n\
data: {\"content\":\"\",\"tokens\":[],\"stop\":true,\"timings\":{\"cache_n\":0,\"prompt_n\":3,\"prompt_ms\":0.0,\"predicted_n\":1,\"predicted_ms\":0.0}}\n\n";

const PROPS_BODY: &str = r#"{"build_info":"b1-9e3b928"}"#;

const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

async fn handle(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // Read the head, then the body by Content-Length.
    let (head_end, len) = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (p + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.starts_with(b"POST /completion") {
        s.write_all(RESPONSE).await?;
    } else if buf.starts_with(b"GET /props") {
        // Presents itself as llama.cpp of the linked commit, so the native endpoint is used.
        let r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PROPS_BODY}",
            PROPS_BODY.len()
        );
        s.write_all(r.as_bytes()).await?;
    } else {
        s.write_all(NOT_FOUND).await?;
    }
    s.shutdown().await
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let l = TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on {}", l.local_addr()?);
        loop {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let _ = handle(s).await;
            });
        }
    })
}
