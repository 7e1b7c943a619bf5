//! A fake OpenAI-compatible server (vLLM-like) with a real prefix cache, on 127.0.0.1: no real
//! server with a prefix cache (vLLM, SGLang) runs on this machine, and the tests need one whose
//! cache hits are known exactly. Tokens are whitespace-separated words (after a `<s>` for
//! completions, inside `<|user|> … <|assistant|>` for chat). A request whose leading blocks of
//! tokens were seen before is served from the cache like vLLM's automatic prefix caching: whole
//! blocks of [`BLOCK`] tokens, never the last prompt token, reported as
//! `usage.prompt_tokens_details.cached_tokens`, and its prefill takes 20× less per cached token.
//! Optional: vLLM's `POST /tokenize` and a Prometheus `/metrics` with vLLM's prefix-cache counters.

use super::fault_server::read_request;
use serde_json::{json, Value};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Tokens per cache block (vLLM's default is 16; prompts in tests are short).
pub const BLOCK: usize = 4;
/// Prefill time of a prompt none of which is cached, ms; a cached token costs 20× less.
pub const COLD_MS: f64 = 80.0;

/// What the fake offers besides chat and completions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// vLLM's `POST /tokenize`.
    pub tokenize: bool,
    /// `GET /metrics` with `vllm:prefix_cache_{queries,hits}_total`.
    pub metrics: bool,
}

/// One generation request the fake served.
#[derive(Debug, Clone)]
pub struct Served {
    /// The request body.
    pub body: Value,
    /// Prompt tokens, and how many the cache held.
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
}

#[derive(Default)]
struct State {
    seen: Vec<Vec<String>>,
    served: Vec<Served>,
    queries: usize,
    hits: usize,
}

/// The running fake; stops when dropped.
pub struct OpenAiServer {
    /// Base URL.
    pub url: String,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
}

impl Drop for OpenAiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// The fake's tokens of a request: chat messages through its template, or a completion prompt.
pub fn tokens_of(body: &Value) -> Vec<String> {
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    match body.get("messages").and_then(Value::as_array) {
        Some(msgs) => {
            let mut t = Vec::new();
            for m in msgs {
                t.push("<|user|>".to_string());
                t.extend(words(m["content"].as_str().unwrap_or("")));
            }
            t.push("<|assistant|>".into());
            t
        }
        None => {
            let mut t = vec!["<s>".to_string()];
            t.extend(words(body["prompt"].as_str().unwrap_or("")));
            t
        }
    }
}

impl State {
    /// Cached tokens for `t` (whole blocks of the longest prefix seen, never the last token),
    /// then remember `t`.
    fn lookup(&mut self, t: &[String]) -> usize {
        let common = self
            .seen
            .iter()
            .map(|s| s.iter().zip(t).take_while(|(a, b)| a == b).count())
            .max()
            .unwrap_or(0);
        let cached = (common.min(t.len().saturating_sub(1)) / BLOCK) * BLOCK;
        self.seen.push(t.to_vec());
        self.queries += t.len();
        self.hits += cached;
        cached
    }
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    s.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn event(s: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    s.write_all(format!("data: {v}\n\n").as_bytes())?;
    s.flush()
}

/// A streamed answer of three tokens, then the usage chunk and `[DONE]`, as vLLM sends them.
fn stream(s: &mut TcpStream, chat: bool, n: usize, cached: usize) -> std::io::Result<()> {
    let ms = COLD_MS * ((n - cached) as f64 + cached as f64 / 20.0) / n as f64;
    std::thread::sleep(Duration::from_secs_f64(ms / 1e3));
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
    )?;
    let choice = |text: &str, finish: Value| match chat {
        true => json!({"index": 0, "delta": {"content": text}, "finish_reason": finish}),
        false => json!({"index": 0, "text": text, "finish_reason": finish}),
    };
    if chat {
        event(
            s,
            &json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        )?;
    }
    let texts = [" ok", " fine", "."];
    for (i, t) in texts.iter().enumerate() {
        let finish = if i + 1 == texts.len() {
            json!("length")
        } else {
            Value::Null
        };
        event(
            s,
            &json!({"id": "x", "model": "fake-model", "choices": [choice(t, finish)]}),
        )?;
    }
    let usage = json!({
        "prompt_tokens": n, "completion_tokens": texts.len(), "total_tokens": n + texts.len(),
        "prompt_tokens_details": {"cached_tokens": cached},
    });
    event(s, &json!({"id": "x", "choices": [], "usage": usage}))?;
    s.write_all(b"data: [DONE]\n\n")
}

fn serve(s: &mut TcpStream, opts: Options, state: &Mutex<State>) -> std::io::Result<()> {
    let Some((head, body)) = read_request(s) else {
        return Ok(());
    };
    let first = head.lines().next().unwrap_or("").to_string();
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let json_ok =
        |s: &mut TcpStream, v: Value| respond(s, "200 OK", "application/json", &v.to_string());
    if first.starts_with("POST /v1/completions") || first.starts_with("POST /v1/chat/completions") {
        let t = tokens_of(&body);
        let (n, cached) = {
            let mut st = state.lock().unwrap();
            let cached = st.lookup(&t);
            st.served.push(Served {
                body: body.clone(),
                prompt_tokens: t.len(),
                cached_tokens: cached,
            });
            (t.len(), cached)
        };
        if body["stream"] == json!(true) {
            return stream(s, first.contains("/chat/"), n, cached);
        }
        let usage = json!({"prompt_tokens": n, "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": cached}});
        return json_ok(
            s,
            json!({"choices": [{"index": 0, "text": " ok"}], "usage": usage}),
        );
    }
    if first.starts_with("GET /v1/models") {
        return json_ok(s, json!({"object": "list", "data": [{"id": "fake-model"}]}));
    }
    if first.starts_with("POST /tokenize ") && opts.tokenize && body.get("model").is_some() {
        let t = tokens_of(&body);
        let ids: Vec<usize> = t.iter().map(|w| w.bytes().map(usize::from).sum()).collect();
        return json_ok(
            s,
            json!({"tokens": ids, "count": ids.len(), "max_model_len": 4096}),
        );
    }
    if first.starts_with("GET /metrics") && opts.metrics {
        let st = state.lock().unwrap();
        let text = format!(
            "# TYPE vllm:prefix_cache_queries_total counter\n\
             vllm:prefix_cache_queries_total{{engine=\"0\",model_name=\"fake-model\"}} {}.0\n\
             # TYPE vllm:prefix_cache_hits_total counter\n\
             vllm:prefix_cache_hits_total{{engine=\"0\",model_name=\"fake-model\"}} {}.0\n",
            st.queries, st.hits
        );
        return respond(s, "200 OK", "text/plain; version=0.0.4", &text);
    }
    respond(
        s,
        "404 Not Found",
        "application/json",
        r#"{"detail":"Not Found"}"#,
    )
}

impl OpenAiServer {
    /// Start on a free loopback port.
    pub fn start(opts: Options) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State::default()));
        let (stop2, state2) = (stop.clone(), state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut s) = conn {
                    let _ = serve(&mut s, opts, &state2);
                }
            }
        });
        OpenAiServer { url, stop, state }
    }

    /// Every generation request served so far, in order.
    pub fn served(&self) -> Vec<Served> {
        self.state.lock().unwrap().served.clone()
    }
}
