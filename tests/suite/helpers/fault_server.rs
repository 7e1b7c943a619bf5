//! A deliberately misbehaving llama.cpp-like HTTP server on 127.0.0.1, for fault injection only:
//! no real component produces these faults on demand. Prompts without "FAULT" get a correct
//! stream (so the other runs of a benchmark must still succeed); prompts with "FAULT" get the fault.
//! It answers llama.cpp's native `/completion` and the OpenAI `/v1/completions` and
//! `/v1/chat/completions` formats; the stream variants (reasoning, tool calls, several tokens per
//! chunk, ...) are the shapes vLLM, SGLang and llama.cpp send, which the llama-server of the
//! tests does not produce for this model.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server does to a "FAULT" prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Stops listening after the first completion request: later connections are refused.
    StopListening,
    /// HTTP 500 with a JSON error message.
    Http500,
    /// llama-server's answer to an over-long prompt: HTTP 400, plain JSON, even with stream=true.
    ContextTooLong,
    /// Two tokens, then the connection closes without the final event.
    CloseMidStream,
    /// A data line that is not JSON.
    MalformedData,
    /// Only the final event: no token at all.
    NoToken,
    /// An error object inside the stream.
    ErrorEvent,
    /// Token text bytes that are not UTF-8.
    InvalidUtf8,
    /// One SSE line of 4 MiB without a newline.
    HugeLine,
    /// HTTP 200 with a JSON body instead of an event stream.
    NotEventStream,
    /// Headers at once, then nothing for 3 seconds.
    SlowFirstToken,
    /// Chat: a role-only chunk, `delta.reasoning` (current vLLM), a pause of [`PAUSE`], then content;
    /// `usage.completion_tokens` 4 at the end.
    Reasoning,
    /// Chat: the same with `delta.reasoning_content` (older vLLM, DeepSeek, llama.cpp), no usage.
    ReasoningContent,
    /// Chat: the first chunk after the role is a `delta.tool_calls` entry, [`PAUSE`], its
    /// arguments, then finish_reason "tool_calls".
    ToolCallFirst,
    /// Chat: chunks with `content: null` and `""` first, [`PAUSE`], then two content chunks.
    NullContent,
    /// /v1/completions: two tokens per chunk (speculative decoding), [`PAUSE`] between the
    /// chunks, usage reporting 4 completion tokens.
    TwoTokensPerChunk,
    /// Native: the final event (stop_type "eos", timings) without the blank line after it.
    NoTrailingBlankLine,
    /// Every OpenAI request that asks for `stream_options.continuous_usage_stats` is refused
    /// with HTTP 400, as a server that rejects unknown fields does; others get a good stream.
    RejectsContinuousUsage,
    /// Every request that carries `ignore_eos` or `min_tokens` is refused with HTTP 400 naming
    /// the first of them, as a strict server does; others get a good stream (3 tokens).
    RejectsIgnoreEos,
}

/// The fake's pause inside a stream variant: long enough that an assertion on it is about time.
pub const PAUSE: Duration = Duration::from_millis(150);

/// The endpoint a request went to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Api {
    Native,
    V1,
    Chat,
}

/// The running fake server; stops when dropped.
pub struct FaultServer {
    /// Base URL.
    pub url: String,
    stop: Arc<AtomicBool>,
    /// Every request's header block and body, for assertions (the Authorization header was
    /// sent, which stream_options were asked for).
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn event(s: &mut impl Write, json: &str) -> std::io::Result<()> {
    s.write_all(format!("data: {json}\n\n").as_bytes())?;
    s.flush()
}

fn token(text: &str) -> String {
    format!(
        r#"{{"content":{},"tokens":[1],"stop":false}}"#,
        serde_json::to_string(text).unwrap()
    )
}

const FINAL: &str = r#"{"content":"","tokens":[],"stop":true,"stop_type":"eos","timings":{"cache_n":0,"prompt_n":3,"prompt_ms":1.5,"predicted_n":3,"predicted_ms":3.0}}"#;

fn stream_head(s: &mut impl Write) -> std::io::Result<()> {
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
}

fn respond(s: &mut impl Write, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    s.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn good_stream(s: &mut impl Write, api: Api) -> std::io::Result<()> {
    stream_head(s)?;
    let tokens = [" ok", " fine", "."];
    match api {
        Api::Native => {
            for t in tokens {
                event(s, &token(t))?;
            }
            event(s, FINAL)
        }
        Api::V1 => {
            for t in tokens {
                event(s, &v1_chunk(t, None))?;
            }
            oai_end(s, &v1_chunk("", Some("length")), 3)
        }
        Api::Chat => {
            event(
                s,
                &chat_chunk(r#"{"role":"assistant","content":null}"#, None),
            )?;
            for t in tokens {
                event(s, &chat_chunk(&content(t), None))?;
            }
            oai_end(s, &chat_chunk("{}", Some("length")), 3)
        }
    }
}

/// An OpenAI /v1/completions chunk.
fn v1_chunk(text: &str, finish: Option<&str>) -> String {
    format!(
        r#"{{"object":"text_completion","choices":[{{"index":0,"text":{},"finish_reason":{}}}]}}"#,
        serde_json::to_string(text).unwrap(),
        serde_json::to_string(&finish).unwrap()
    )
}

/// An OpenAI chat chunk with this `delta` object.
fn chat_chunk(delta: &str, finish: Option<&str>) -> String {
    format!(
        r#"{{"object":"chat.completion.chunk","choices":[{{"index":0,"delta":{delta},"finish_reason":{}}}]}}"#,
        serde_json::to_string(&finish).unwrap()
    )
}

fn content(t: &str) -> String {
    format!(r#"{{"content":{}}}"#, serde_json::to_string(t).unwrap())
}

/// The finish chunk, a usage chunk (`completion_tokens`, none when 0) and `[DONE]`.
fn oai_end(s: &mut impl Write, finish: &str, completion_tokens: u32) -> std::io::Result<()> {
    event(s, finish)?;
    if completion_tokens > 0 {
        event(
            s,
            &format!(
                r#"{{"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":{completion_tokens},"total_tokens":{}}}}}"#,
                3 + completion_tokens
            ),
        )?;
    }
    event(s, "[DONE]")
}

/// The stream variants: shapes of real servers' streams, for a FAULT prompt.
fn variant(s: &mut TcpStream, f: Fault) -> std::io::Result<()> {
    stream_head(s)?;
    let role = chat_chunk(r#"{"role":"assistant","content":null}"#, None);
    match f {
        Fault::Reasoning | Fault::ReasoningContent => {
            let field = if f == Fault::Reasoning {
                "reasoning"
            } else {
                "reasoning_content"
            };
            event(s, &role)?;
            event(
                s,
                &chat_chunk(
                    &format!(r#"{{"content":null,"{field}":"Let me think."}}"#),
                    None,
                ),
            )?;
            std::thread::sleep(PAUSE);
            event(s, &chat_chunk(&content(" ok"), None))?;
            let usage = if f == Fault::Reasoning { 4 } else { 0 };
            oai_end(s, &chat_chunk("{}", Some("stop")), usage)
        }
        Fault::ToolCallFirst => {
            event(s, &role)?;
            let call = r#"{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}"#;
            event(s, &chat_chunk(call, None))?;
            std::thread::sleep(PAUSE);
            let args =
                r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":\"Paris\"}"}}]}"#;
            event(s, &chat_chunk(args, None))?;
            oai_end(s, &chat_chunk("{}", Some("tool_calls")), 0)
        }
        Fault::NullContent => {
            event(s, &role)?;
            event(s, &chat_chunk(r#"{"content":null}"#, None))?;
            event(s, &chat_chunk(r#"{"content":""}"#, None))?;
            std::thread::sleep(PAUSE);
            event(s, &chat_chunk(&content(" ok"), None))?;
            event(s, &chat_chunk(&content(" fine"), None))?;
            oai_end(s, &chat_chunk("{}", Some("stop")), 0)
        }
        Fault::TwoTokensPerChunk => {
            event(s, &v1_chunk(" ok fine", None))?;
            std::thread::sleep(PAUSE);
            event(s, &v1_chunk(" good day", None))?;
            oai_end(s, &v1_chunk("", Some("length")), 4)
        }
        Fault::NoTrailingBlankLine => {
            for t in [" ok", " fine"] {
                event(s, &token(t))?;
            }
            s.write_all(format!("data: {FINAL}").as_bytes())?;
            s.flush()
        }
        _ => unreachable!("{f:?} is not a stream variant"),
    }
}

fn fault(s: &mut TcpStream, f: Fault, api: Api) -> std::io::Result<()> {
    match f {
        Fault::StopListening | Fault::RejectsContinuousUsage | Fault::RejectsIgnoreEos => {
            good_stream(s, api)
        }
        Fault::Reasoning
        | Fault::ReasoningContent
        | Fault::ToolCallFirst
        | Fault::NullContent
        | Fault::TwoTokensPerChunk
        | Fault::NoTrailingBlankLine => variant(s, f),
        Fault::Http500 => respond(
            s,
            "500 Internal Server Error",
            "application/json",
            r#"{"error":{"code":500,"message":"model crashed while decoding","type":"server_error"}}"#,
        ),
        Fault::ContextTooLong => respond(
            s,
            "400 Bad Request",
            "application/json",
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":2048}}"#,
        ),
        Fault::CloseMidStream => {
            stream_head(s)?;
            event(s, &token(" half"))?;
            event(s, &token(" way"))
        }
        Fault::MalformedData => {
            stream_head(s)?;
            event(s, &token(" a"))?;
            event(s, "{this is not json")?;
            event(s, FINAL)
        }
        Fault::NoToken => {
            stream_head(s)?;
            event(s, FINAL)
        }
        Fault::ErrorEvent => {
            stream_head(s)?;
            event(
                s,
                r#"{"error":{"code":500,"message":"slot crashed mid-generation","type":"server_error"}}"#,
            )
        }
        Fault::InvalidUtf8 => {
            stream_head(s)?;
            s.write_all(b"data: {\"content\":\"\xff\xfe\",\"stop\":false}\n\n")?;
            event(s, FINAL)
        }
        Fault::HugeLine => {
            stream_head(s)?;
            s.write_all(b"data: ")?;
            let chunk = vec![b'a'; 64 * 1024];
            for _ in 0..64 {
                s.write_all(&chunk)?;
            }
            Ok(())
        }
        Fault::NotEventStream => respond(
            s,
            "200 OK",
            "application/json",
            r#"{"content":" ok","stop":true}"#,
        ),
        Fault::SlowFirstToken => {
            stream_head(s)?;
            s.flush()?;
            std::thread::sleep(Duration::from_secs(3));
            event(s, &token(" late"))?;
            event(s, FINAL)
        }
    }
}

/// Read one request: the header block and the body (Content-Length). Shared by the fake servers.
pub fn read_request(s: &TcpStream) -> Option<(String, String)> {
    read_request_from(&mut BufReader::new(s.try_clone().ok()?))
}

/// Read one request from any reader (plain TCP or TLS).
fn read_request_from(r: &mut impl BufRead) -> Option<(String, String)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

impl FaultServer {
    /// Start serving `f` on a free loopback port.
    pub fn start(f: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                let Some((head, body)) = read_request(&s) else {
                    continue;
                };
                requests2.lock().unwrap().push(format!("{head}{body}"));
                let first = head.lines().next().unwrap_or("").to_string();
                let api = [
                    ("POST /completion", Api::Native),
                    ("POST /v1/completions", Api::V1),
                    ("POST /v1/chat/completions", Api::Chat),
                ]
                .into_iter()
                .find_map(|(p, a)| first.starts_with(p).then_some(a));
                let refused =
                    f == Fault::RejectsContinuousUsage && body.contains("continuous_usage_stats");
                let eos_field = ["ignore_eos", "min_tokens"]
                    .into_iter()
                    .find(|k| body.contains(&format!("\"{k}\"")))
                    .filter(|_| f == Fault::RejectsIgnoreEos);
                match api {
                    Some(_) if eos_field.is_some() => {
                        let msg = format!(
                            r#"{{"error":{{"message":"Unrecognized request argument supplied: {}","type":"invalid_request_error"}}}}"#,
                            eos_field.unwrap_or_default()
                        );
                        let _ = respond(&mut s, "400 Bad Request", "application/json", &msg);
                    }
                    Some(_) if refused => {
                        let _ = respond(
                            &mut s,
                            "400 Bad Request",
                            "application/json",
                            r#"{"error":{"message":"Unrecognized request argument supplied: stream_options.continuous_usage_stats","type":"invalid_request_error"}}"#,
                        );
                    }
                    Some(api) if body.contains("FAULT") => {
                        let _ = fault(&mut s, f, api);
                    }
                    Some(api) => {
                        let _ = good_stream(&mut s, api);
                    }
                    None if first.starts_with("GET /props") => {
                        // Identifies itself as llama.cpp of the linked commit (flavor detection).
                        let _ = respond(
                            &mut s,
                            "200 OK",
                            "application/json",
                            r#"{"build_info":"b1-9e3b928"}"#,
                        );
                    }
                    None => {
                        let _ = respond(&mut s, "404 Not Found", "text/plain", "not here");
                    }
                }
                drop(s);
                if api.is_some() && f == Fault::StopListening {
                    break; // the listener is dropped: connections are refused from now on
                }
            }
        });
        FaultServer {
            url,
            stop,
            requests,
        }
    }
}

/// An https llama.cpp-like server (a correct stream for every completion) with a fresh self-signed
/// certificate for 127.0.0.1. After accepting a connection it waits `setup_delay` before its side
/// of the TLS handshake: that time is connection setup, which only a fresh connection may put
/// inside TTFT. No real server slows its handshake on demand.
pub struct TlsServer {
    /// Base URL (`https://127.0.0.1:PORT`).
    pub url: String,
    /// The certificate (PEM), to trust with `--api-ca-cert`.
    pub cert_pem: String,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("https://"));
    }
}

impl TlsServer {
    /// Start on a free loopback port.
    pub fn start(setup_delay: Duration) -> Self {
        use tokio_rustls::rustls;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let cfg = Arc::new(cfg);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let cfg = cfg.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(setup_delay);
                    let Ok(tls) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    let mut s = rustls::StreamOwned::new(tls, tcp);
                    let _ = serve_tls(&mut s);
                    s.conn.send_close_notify();
                    let _ = s.flush();
                });
            }
        });
        TlsServer {
            url,
            cert_pem: ck.cert.pem(),
            accepted,
            stop,
        }
    }
}

/// One request on a TLS connection: /props identifies llama.cpp, /completion streams.
fn serve_tls(s: &mut (impl Read + Write)) -> std::io::Result<()> {
    let Some((head, _body)) = read_request_from(&mut BufReader::new(&mut *s)) else {
        return Ok(());
    };
    let first = head.lines().next().unwrap_or("");
    if first.starts_with("POST /completion") {
        good_stream(s, Api::Native)
    } else if first.starts_with("GET /props") {
        respond(
            s,
            "200 OK",
            "application/json",
            r#"{"build_info":"b1-9e3b928"}"#,
        )
    } else {
        respond(s, "404 Not Found", "text/plain", "not here")
    }
}
