//! `api`: a GGUF behind llama-server (spawned here, or any server given with `--api-url`), streamed
//! over SSE.
//!
//! Client TTFT = just before the request body is built → the first SSE event whose token text is
//! non-empty has been parsed. Response headers arrive long before the first token, so time to first
//! byte is *not* TTFT. Every request carries `"cache_prompt": false`; the server's `timings` in the
//! final event prove it (`cache_n == 0`) and give its own prompt time, from which the HTTP overhead
//! `ttft - prompt_ms` follows.

use super::server::{system_info_from_log, ServerProcess};
use super::sse::SseParser;
use super::{
    check_gguf, Backend, BackendKind, LlamaParams, Measurement, OpenError, RunError,
    LLAMA_CPP_COMMIT,
};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which streaming endpoint to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// llama.cpp's native `POST /completion`.
    Completion,
    /// OpenAI-compatible `POST /v1/completions`.
    V1,
    /// OpenAI-compatible `POST /v1/chat/completions` (`--chat`): the prompt is one user message.
    Chat,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Completion => "/completion",
            Endpoint::V1 => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// What kind of server the api backend talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiFlavor {
    /// llama.cpp's llama-server: `cache_prompt: false` is sent, `timings` are read (prompt time,
    /// cache hits), `/tokenize` checks the tokens.
    Llama,
    /// Any OpenAI-compatible server (vLLM, TGI, SGLang, Ollama, llama-cpp-python, ...): only
    /// standard fields are sent; token counts come from `usage`; server timings are unavailable.
    Openai,
}

/// How the api backend is set up.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// An existing server; `None` spawns the vendored llama-server.
    pub url: Option<String>,
    /// The endpoint to stream from.
    pub endpoint: Endpoint,
    /// llama or openai; None detects it (`/props` answers only on llama.cpp).
    pub flavor: Option<ApiFlavor>,
    /// Model name for OpenAI requests (None: the first id of `/v1/models`, else the alias).
    pub api_model: Option<String>,
    /// Model name sent in OpenAI requests and given to the spawned server as `--alias`.
    pub model_alias: String,
    /// The llama-server binary to spawn.
    pub server_bin: PathBuf,
    /// Where the spawned server's log goes.
    pub server_log: PathBuf,
    /// Accept a server built from another llama.cpp commit than the linked one.
    pub allow_commit_mismatch: bool,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Request sent → first token, before the run is failed.
    pub first_token_timeout: Duration,
    /// Whole request, before the run is failed.
    pub total_timeout: Duration,
    /// Fixed port for the spawned server (None: a free one).
    pub server_port: Option<u16>,
    /// Parallel slots of the spawned server (1 for single runs; the concurrency for load runs).
    pub server_slots: u32,
    /// llama.cpp RPC workers (`host:port`) the spawned server offloads to (`--rpc`).
    pub rpc: Vec<String>,
    /// Start this many local rpc-server workers on 127.0.0.1 (`--spawn-rpc`).
    pub spawn_rpc: u32,
    /// Bearer token for servers that need one (redacted in every print).
    pub api_key: Option<crate::secret::Secret>,
    /// 0 quiet, 1 a line per request, 2 also response details (never the key).
    pub verbose: u8,
}

/// The HTTP backend. Holds its own single-threaded tokio runtime so the benchmark loop stays
/// synchronous and identical for every backend.
pub struct ApiBackend {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
    settings: ApiSettings,
    server: Option<ServerProcess>,
    // Dropped after the server (fields drop in declaration order): the server disconnects first.
    rpc_workers: Option<super::server::RpcWorkers>,
    load_ms: f64,
    info: Value,
    flavor: ApiFlavor,
    model: String,
}

/// Render an error with its whole source chain on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

impl ApiBackend {
    /// Spawn (or reach) the server, check it is the same llama.cpp commit, and read its facts.
    pub fn open(params: &LlamaParams, settings: &ApiSettings) -> Result<Self, OpenError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OpenError::Server(format!("tokio runtime: {e}")))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(settings.connect_timeout)
            // A fresh connection per request: llama-server closes a connection after a streamed
            // answer, and reusing a pooled one races with that close ("connection closed before
            // message completed"). Connecting on loopback costs well under a millisecond and is
            // part of what a real client pays, so it stays inside the clock.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| OpenError::Server(format!("HTTP client: {}", error_chain(&e))))?;

        let (base, server, load_ms, rpc_workers, rpc) = match &settings.url {
            Some(url) => {
                let base = url.trim_end_matches('/').to_string();
                if !(base.starts_with("http://") || base.starts_with("https://")) {
                    return Err(OpenError::Server(format!(
                        "--api-url {url}: expected an http:// or https:// URL"
                    )));
                }
                (base, None, 0.0, None, Vec::new())
            }
            None => {
                check_gguf(&params.gguf)?;
                let rpc_bin = settings.server_bin.with_file_name("rpc-server");
                let workers = if settings.spawn_rpc > 0 {
                    let dir = settings
                        .server_log
                        .parent()
                        .unwrap_or(std::path::Path::new("."));
                    Some(super::server::RpcWorkers::spawn(
                        &rpc_bin,
                        settings.spawn_rpc,
                        params.threads,
                        dir,
                    )?)
                } else {
                    None
                };
                let mut rpc = settings.rpc.clone();
                if let Some(w) = &workers {
                    rpc.extend(w.endpoints.iter().cloned());
                }
                let s = ServerProcess::spawn(&super::server::ServerSpec {
                    bin: &settings.server_bin,
                    params,
                    alias: &settings.model_alias,
                    port: settings.server_port,
                    slots: settings.server_slots,
                    rpc: &rpc,
                    log_path: &settings.server_log,
                    timeout: Duration::from_secs(120),
                })?;
                let ms = s.start_ms;
                (s.url.clone(), Some(s), ms, workers, rpc)
            }
        };

        let mut me = Self {
            rt,
            client,
            base,
            settings: settings.clone(),
            server,
            rpc_workers,
            load_ms,
            info: Value::Null,
            flavor: settings.flavor.unwrap_or(ApiFlavor::Llama),
            model: settings.model_alias.clone(),
        };
        me.info = me.probe()?;
        me.info["rpc"] = json!({
            "endpoints": rpc,
            "spawned_worker_pids": me.rpc_workers.as_ref().map(|w| w.pids()),
        });
        Ok(me)
    }

    fn get_json(&self, path: &str) -> Result<Option<Value>, String> {
        let url = format!("{}{}", self.base, path);
        self.rt.block_on(async {
            let r = self
                .authed(self.client.get(&url))
                .timeout(self.settings.connect_timeout + Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| error_chain(&e))?;
            if !r.status().is_success() {
                return Ok(None);
            }
            Ok(r.json::<Value>().await.ok())
        })
    }

    /// Reach the server, identify it (`/props`, `/v1/models`), settle the flavor and model name,
    /// and enforce the commit check.
    fn probe(&mut self) -> Result<Value, OpenError> {
        let who = match &self.settings.url {
            Some(u) => format!("--api-url {u}"),
            None => format!("spawned llama-server at {}", self.base),
        };
        let props = self.get_json("/props").map_err(|e| {
            OpenError::Server(format!(
                "{who} is unreachable ({e}): start the server or fix the flag"
            ))
        })?;
        let models = self.get_json("/v1/models").ok().flatten();
        let build_info = props
            .as_ref()
            .and_then(|p| p.get("build_info"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let short = &LLAMA_CPP_COMMIT[..7];
        let commit_match = build_info.as_ref().map(|b| b.contains(short));
        if commit_match == Some(false) && !self.settings.allow_commit_mismatch {
            return Err(OpenError::Server(format!(
                "{who} reports llama.cpp build {} but ttft links commit {short}: comparing different \
                 llama.cpp versions is not a fair api-vs-inproc test (pass --allow-commit-mismatch to do it anyway)",
                build_info.as_deref().unwrap_or("?")
            )));
        }
        // Only llama.cpp answers /props with its build and generation settings.
        let detected = match &props {
            Some(p)
                if p.get("build_info").is_some()
                    || p.get("default_generation_settings").is_some() =>
            {
                ApiFlavor::Llama
            }
            _ => ApiFlavor::Openai,
        };
        self.flavor = self.settings.flavor.unwrap_or(detected);
        if self.flavor == ApiFlavor::Openai && self.settings.endpoint == Endpoint::Completion {
            return Err(OpenError::Server(format!(
                "{who} is not llama.cpp (no /props), so it has no native /completion: use --api-endpoint v1 or --chat"
            )));
        }
        self.model = match (&self.settings.api_model, self.flavor) {
            (Some(m), _) => m.clone(),
            (None, ApiFlavor::Openai) => models
                .as_ref()
                .and_then(|m| m.pointer("/data/0/id"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| self.settings.model_alias.clone()),
            (None, ApiFlavor::Llama) => self.settings.model_alias.clone(),
        };
        let log_system_info = self
            .server
            .as_ref()
            .and_then(|s| std::fs::read_to_string(&s.log_path).ok())
            .and_then(|log| system_info_from_log(&log));
        Ok(json!({
            "base_url": self.base,
            "endpoint": self.settings.endpoint.path(),
            "spawned": self.server.is_some(),
            "server_args": self.server.as_ref().map(|s| s.args.clone()),
            "server_log": self.server.as_ref().map(|s| s.log_path.display().to_string()),
            "server_pid": self.server.as_ref().map(|s| s.pid()),
            // What the spawned server was given (the same value as inproc); unknown for a remote one.
            "n_gpu_layers": self.server.as_ref().and_then(|s| {
                let i = s.args.iter().position(|a| a == "--n-gpu-layers")?;
                s.args.get(i + 1)?.parse::<u32>().ok()
            }),
            "build_info": build_info,
            "commit_matches_linked": commit_match,
            "system_info": log_system_info,
            "model_alias": self.settings.model_alias,
            "model": self.model,
            "flavor": self.flavor,
            "flavor_detected": detected,
            "server_timings": match self.flavor {
                ApiFlavor::Llama => "timings.prompt_ms / prompt_n / cache_n from the final event",
                ApiFlavor::Openai => "unavailable: an OpenAI-compatible server reports no prompt time (server_prompt_ms and api_overhead_ms stay empty)",
            },
            "props": props.as_ref().map(|p| json!({
                "n_ctx": p.pointer("/default_generation_settings/n_ctx"),
                "model_path": p.get("model_path"),
                "total_slots": p.get("total_slots"),
            })),
            "models": models.as_ref().and_then(|m| m.get("data")).cloned(),
        }))
    }

    /// OpenAI-compatible servers have no standard tokenize call; llama-cpp-python's server offers
    /// `POST /extras/tokenize`. Chat prompts cannot be checked this way (the template is applied
    /// inside the chat endpoint).
    fn extras_tokenize(&self, prompt: &str) -> Result<Vec<u32>, RunError> {
        if self.settings.endpoint == Endpoint::Chat {
            return Err(RunError::new(
                "an OpenAI-compatible server cannot tokenize a chat prompt",
            ));
        }
        let v = self.post_json("/extras/tokenize", &json!({"input": prompt}))?;
        token_list(&v, "/extras/tokenize")
    }

    /// The server's `usage.prompt_tokens` for `prompt`, from one untimed, non-streamed request
    /// for a single token (OpenAI-compatible servers that stream no usage, like llama-cpp-python).
    fn usage_prompt_tokens(&self, prompt: &str) -> Result<u32, RunError> {
        let mut body = self.request_body(prompt, 1);
        body["stream"] = json!(false);
        if let Some(o) = body.as_object_mut() {
            o.remove("stream_options");
        }
        let v = self.post_json(self.settings.endpoint.path(), &body)?;
        v.pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .map(|n| n as u32)
            .ok_or_else(|| RunError::new("the server reports no usage.prompt_tokens"))
    }

    /// POST a JSON body to `path` and return the JSON answer (tokenize / template helpers).
    fn post_json(&self, path: &str, body: &Value) -> Result<Value, RunError> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let r = self
                .authed(self.client.post(&url))
                .json(body)
                .timeout(self.settings.total_timeout)
                .send()
                .await
                .map_err(|e| RunError::new(format!("{path}: {}", error_chain(&e))))?;
            if !r.status().is_success() {
                return Err(RunError::new(format!(
                    "{path}: HTTP {}",
                    r.status().as_u16()
                )));
            }
            r.json()
                .await
                .map_err(|e| RunError::new(format!("{path}: {}", error_chain(&e))))
        })
    }

    /// llama-server's `/apply-template`: the text its chat endpoint builds for one user message.
    fn apply_template(&self, prompt: &str) -> Result<String, RunError> {
        let body = json!({"messages": [{"role": "user", "content": prompt}]});
        self.post_json("/apply-template", &body)?
            .get("prompt")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| RunError::new("/apply-template: no prompt"))
    }

    /// Issue many requests for a load run and hand each result to `done` as it finishes:
    /// closed loop (`concurrency` clients back to back) or open loop (gamma arrivals). Stops
    /// after `n` requests or `duration`. Returns (wall seconds, most requests in flight).
    pub fn run_load(
        &self,
        prompts: &[String],
        plan: crate::bench::load::LoadPlan,
        done: &mut dyn FnMut(usize, Result<Measurement, RunError>),
    ) -> (f64, usize) {
        use crate::bench::load::{arrivals, LoadMode};
        let (n, mode, duration, max_new_tokens, seed) = (
            plan.requests,
            plan.mode,
            plan.duration,
            plan.max_new_tokens,
            plan.seed,
        );
        use std::cell::{Cell, RefCell};
        let done = RefCell::new(done);
        let in_flight = Cell::new(0usize);
        let max_in_flight = Cell::new(0usize);
        let next = Cell::new(0usize);
        self.rt.block_on(async {
            let start = Instant::now();
            let over = || {
                duration.is_some_and(|d| start.elapsed() >= d)
                    || crate::bench::interrupt::requested()
            };
            let one = |i: usize| {
                let (done, in_flight, max_in_flight) = (&done, &in_flight, &max_in_flight);
                async move {
                    in_flight.set(in_flight.get() + 1);
                    max_in_flight.set(max_in_flight.get().max(in_flight.get()));
                    let r = self
                        .stream_one(&prompts[i % prompts.len()], max_new_tokens)
                        .await;
                    in_flight.set(in_flight.get() - 1);
                    (done.borrow_mut())(i, r);
                }
            };
            match mode {
                LoadMode::Closed { concurrency } => {
                    let worker = || async {
                        loop {
                            let i = next.get();
                            if i >= n || over() {
                                break;
                            }
                            next.set(i + 1);
                            one(i).await;
                        }
                    };
                    futures_util::future::join_all((0..concurrency).map(|_| worker())).await;
                }
                LoadMode::Open { rate, burstiness } => {
                    let times = arrivals(n, rate, burstiness, seed);
                    futures_util::future::join_all(times.into_iter().enumerate().map(|(i, t)| {
                        let one = &one;
                        let over = &over;
                        async move {
                            tokio::time::sleep_until((start + Duration::from_secs_f64(t)).into())
                                .await;
                            if !over() {
                                one(i).await;
                            }
                        }
                    }))
                    .await;
                }
            }
            (start.elapsed().as_secs_f64(), max_in_flight.get())
        })
    }

    /// Server slots reported by `/props` (`total_slots`), when the server says.
    pub fn server_slots(&self) -> Option<u64> {
        self.info
            .pointer("/props/total_slots")
            .and_then(Value::as_u64)
    }

    /// The spawned server's process id, if ttft started it.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(ServerProcess::pid)
    }

    /// Add the Authorization header when a key is configured.
    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.settings.api_key {
            Some(k) => rb.bearer_auth(k.expose()),
            None => rb,
        }
    }

    /// The flavor in effect (after detection).
    pub fn flavor(&self) -> ApiFlavor {
        self.flavor
    }

    /// The endpoint in effect.
    pub fn endpoint(&self) -> Endpoint {
        self.settings.endpoint
    }

    /// The request for one run: greedy, `max_new_tokens`, streamed. With llama.cpp the prompt
    /// cache is switched off per request; OpenAI servers get only standard fields.
    pub fn request_body(&self, prompt: &str, max_new_tokens: u32) -> Value {
        let mut body = match self.settings.endpoint {
            Endpoint::Completion => json!({
                "prompt": prompt,
                "n_predict": max_new_tokens,
            }),
            Endpoint::V1 => json!({
                "model": self.model,
                "prompt": prompt,
                "max_tokens": max_new_tokens,
                "stream_options": {"include_usage": true},
            }),
            Endpoint::Chat => json!({
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new_tokens,
                "stream_options": {"include_usage": true},
            }),
        };
        body["stream"] = json!(true);
        body["temperature"] = json!(0.0);
        body["seed"] = json!(0);
        if self.flavor == ApiFlavor::Llama {
            // llama-server defaults cache_prompt to true: every timed run must be a cold prefill.
            body["cache_prompt"] = json!(false);
            body["top_k"] = json!(1);
        }
        body
    }

    async fn stream_one(&self, prompt: &str, max_new_tokens: u32) -> Result<Measurement, RunError> {
        let mut headers = None;
        let r = self
            .stream_timed(prompt, max_new_tokens, &mut headers)
            .await;
        if let Some((status, after)) = headers {
            eprintln!(
                "ttft: api: POST {}{} -> HTTP {status}, headers after {:.1} ms",
                self.base,
                self.settings.endpoint.path(),
                after.as_secs_f64() * 1e3
            );
        }
        r
    }

    async fn stream_timed(
        &self,
        prompt: &str,
        max_new_tokens: u32,
        headers: &mut Option<(u16, Duration)>,
    ) -> Result<Measurement, RunError> {
        let t0 = Instant::now();
        let body = self.request_body(prompt, max_new_tokens);
        let url = format!("{}{}", self.base, self.settings.endpoint.path());
        let resp = tokio::time::timeout(
            self.settings.first_token_timeout,
            self.authed(self.client.post(&url).json(&body)).send(),
        )
        .await
        .map_err(|_| {
            RunError::new(format!(
                "timeout (no response headers after {:.0} s)",
                self.settings.first_token_timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| RunError::new(format!("request failed: {}", error_chain(&e))))?;

        let status = resp.status();
        if self.settings.verbose >= 2 {
            // Only noted here; printed after the run, so -vv adds nothing inside the clock.
            *headers = Some((status.as_u16(), t0.elapsed()));
        }
        if !status.is_success() {
            // Bounded read of the error body; keep the server's own message and type
            // (llama-server: {"error": {"message": ..., "type": "exceed_context_size_error"}}).
            let text = read_bounded(resp, 64 * 1024).await;
            let v = serde_json::from_str::<Value>(&text).ok();
            let field = |k: &str| {
                v.as_ref()
                    .and_then(|v| v.pointer(&format!("/error/{k}")))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let msg = field("message").unwrap_or_else(|| text.chars().take(300).collect());
            let kind = field("type").map(|t| format!(" {t}")).unwrap_or_default();
            return Err(RunError::new(format!(
                "HTTP {}{kind}: {}",
                status.as_u16(),
                msg.trim()
            )));
        }
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !ctype.starts_with("text/event-stream") {
            return Err(RunError::new(format!(
                "HTTP {} answer is not an event stream (content-type {ctype:?})",
                status.as_u16()
            )));
        }

        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::default();
        let mut t_first: Option<Instant> = None;
        let mut t_last = t0;
        let mut first = String::new();
        let mut itl = Vec::new();
        // Chat: reasoning text can come before the visible answer; both moments are reported.
        let mut t_visible: Option<Instant> = None;
        let mut output = String::new();
        let mut text_events = 0u32;
        let mut timings: Option<Value> = None;
        // The stream's own end marker: native `"stop": true`, OpenAI `[DONE]` or a finish_reason.
        let mut completed = false;
        let mut usage: Option<Value> = None;
        let deadline_first = t0 + self.settings.first_token_timeout;
        let deadline_total = t0 + self.settings.total_timeout;
        'read: loop {
            let deadline = if t_first.is_none() {
                deadline_first
            } else {
                deadline_total
            };
            let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
            let chunk = match next {
                Err(_) => {
                    return Err(RunError::new(if t_first.is_none() {
                        format!(
                            "timeout (first token after {:.0} s)",
                            self.settings.first_token_timeout.as_secs_f64()
                        )
                    } else {
                        format!(
                            "timeout (request longer than {:.0} s)",
                            self.settings.total_timeout.as_secs_f64()
                        )
                    }))
                }
                Ok(None) => break 'read,
                Ok(Some(Err(e))) => {
                    return Err(RunError::new(format!(
                        "stream broke after {text_events} tokens: {}",
                        error_chain(&e)
                    )))
                }
                Ok(Some(Ok(c))) => c,
            };
            let events = parser
                .push(&chunk)
                .map_err(|e| RunError::new(format!("malformed SSE: {e}")))?;
            for ev in events {
                if ev.is_done() {
                    completed = true;
                    break 'read;
                }
                let v: Value = serde_json::from_str(&ev.data).map_err(|e| {
                    RunError::new(format!(
                        "malformed SSE data ({e}): {}",
                        ev.data.chars().take(120).collect::<String>()
                    ))
                })?;
                if let Some(err) = v.get("error") {
                    let msg = err
                        .get("message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| err.to_string());
                    return Err(RunError::new(format!("server error event: {msg}")));
                }
                let tok = event_token(self.settings.endpoint, &v);
                let (text, arrived) = (tok.text, tok.arrived);
                if arrived {
                    let now = Instant::now();
                    if tok.visible && t_visible.is_none() {
                        t_visible = Some(now);
                    }
                    if t_first.is_none() {
                        t_first = Some(now);
                        first = text.to_string();
                    } else {
                        itl.push((now - t_last).as_secs_f64() * 1e3);
                    }
                    t_last = now;
                    text_events += 1;
                    output.push_str(text);
                }
                // OpenAI flavor: nothing llama.cpp-specific is read, even if present.
                if let (Some(t), ApiFlavor::Llama) = (v.get("timings"), self.flavor) {
                    timings = Some(t.clone());
                }
                let stop = v.get("stop").and_then(Value::as_bool) == Some(true);
                let finish = v
                    .pointer("/choices/0/finish_reason")
                    .is_some_and(|f| !f.is_null());
                if stop || finish {
                    completed = true;
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    usage = Some(u.clone());
                }
            }
        }
        if let Some(ev) = parser
            .finish()
            .map_err(|e| RunError::new(format!("malformed SSE: {e}")))?
        {
            if !ev.is_done() && ev.data.contains("\"error\"") {
                return Err(RunError::new(format!("server error event: {}", ev.data)));
            }
        }
        let Some(t_first) = t_first else {
            return Err(RunError::new("stream ended with no token"));
        };
        if !completed {
            return Err(RunError::new(format!(
                "stream closed after {text_events} tokens without its end marker (server died or connection dropped)"
            )));
        }
        let ttft_ms = (t_first - t0).as_secs_f64() * 1e3;
        let num =
            |v: &Option<Value>, k: &str| v.as_ref().and_then(|t| t.get(k)).and_then(Value::as_f64);
        let server_prompt_ms = num(&timings, "prompt_ms");
        let prompt_n = num(&timings, "prompt_n").map(|x| x as u32);
        let cache_n = num(&timings, "cache_n").map(|x| x as u32);
        let predicted_n = num(&timings, "predicted_n").map(|x| x as u32);
        let prompt_tokens = match (prompt_n, cache_n) {
            (Some(p), c) => Some(p + c.unwrap_or(0)),
            (None, _) => num(&usage, "prompt_tokens").map(|x| x as u32),
        };
        let generated = predicted_n.unwrap_or(text_events).max(text_events.min(1));
        Ok(Measurement {
            ttft_ms,
            prompt_tokens,
            server_prompt_ms,
            server_prompt_n: prompt_n,
            cache_n,
            api_overhead_ms: server_prompt_ms.map(|p| ttft_ms - p),
            generated_tokens: generated,
            itl_ms: itl,
            first_visible_ms: t_visible.map(|t| (t - t0).as_secs_f64() * 1e3),
            decode_ms_per_token: (text_events > 1)
                .then(|| (t_last - t_first).as_secs_f64() * 1e3 / f64::from(text_events - 1)),
            e2e_ms: (Instant::now() - t0).as_secs_f64() * 1e3,
            first_token: first,
            output,
            ..Measurement::default()
        })
    }
}

/// The `tokens` array of a tokenize answer.
fn token_list(v: &Value, path: &str) -> Result<Vec<u32>, RunError> {
    v.get("tokens")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect()
        })
        .ok_or_else(|| RunError::new(format!("{path}: no tokens array")))
}

/// Read at most `limit` bytes of a response body as text (an error page can be anything).
async fn read_bounded(resp: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await
    {
        buf.extend_from_slice(&chunk);
        if buf.len() >= limit {
            buf.truncate(limit);
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A generated token as one SSE event carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventToken<'a> {
    /// Its text (visible content or, in chat, reasoning text).
    pub text: &'a str,
    /// Visible answer text (chat: `delta.content`, not `delta.reasoning_content`).
    pub visible: bool,
    /// The event carries a generated token at all (a role-only chat chunk does not).
    pub arrived: bool,
}

/// Decode the token one event carries for `endpoint`.
///
/// Usually the first token arrives as non-empty text. Two cases carry a token without text, and
/// they end TTFT too (the in-process backend stops its clock at the same token): an
/// end-of-generation token as the very first token, and a token that is an incomplete UTF-8
/// sequence (the server holds its bytes back). The native endpoint shows them as a non-empty
/// `tokens` array; the OpenAI endpoints as a `finish_reason` without text.
pub fn event_token(endpoint: Endpoint, v: &Value) -> EventToken<'_> {
    if endpoint == Endpoint::Chat {
        let choice = v.pointer("/choices/0");
        let field = |k: &str| {
            choice
                .and_then(|c| c.pointer(&format!("/delta/{k}")))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let (content, reasoning) = (field("content"), field("reasoning_content"));
        let finished = choice
            .and_then(|c| c.get("finish_reason"))
            .is_some_and(|f| !f.is_null());
        let text = if content.is_empty() {
            reasoning
        } else {
            content
        };
        return EventToken {
            text,
            visible: !content.is_empty(),
            arrived: !text.is_empty() || finished,
        };
    }
    let (text, arrived) = match endpoint {
        Endpoint::Completion => {
            let text = v.get("content").and_then(Value::as_str).unwrap_or("");
            let ids = v
                .get("tokens")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            (text, !text.is_empty() || ids)
        }
        Endpoint::V1 => {
            let choice = v.pointer("/choices/0");
            let text = choice
                .and_then(|c| c.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let finished = choice
                .and_then(|c| c.get("finish_reason"))
                .is_some_and(|f| !f.is_null());
            (text, !text.is_empty() || finished)
        }
        Endpoint::Chat => unreachable!("handled above"),
    };
    EventToken {
        text,
        visible: !text.is_empty(),
        arrived,
    }
}

impl Backend for ApiBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Api
    }

    fn load_ms(&self) -> f64 {
        self.load_ms
    }

    fn info(&self) -> Value {
        let mut v = self.info.clone();
        if let Some(pid) = self.server_pid() {
            v["server_peak_rss_mib"] = json!(crate::report::env::peak_rss_mib(Some(pid)));
        }
        v
    }

    fn prompt_token_count(&mut self, prompt: &str) -> Result<u32, RunError> {
        match self.flavor {
            // Standard OpenAI API: the count comes from usage.
            ApiFlavor::Openai => self.usage_prompt_tokens(prompt),
            ApiFlavor::Llama => self.token_ids(prompt).map(|ids| ids.len() as u32),
        }
    }

    fn token_ids(&mut self, prompt: &str) -> Result<Vec<u32>, RunError> {
        if self.flavor == ApiFlavor::Openai {
            return self.extras_tokenize(prompt);
        }
        let templated;
        let content = if self.settings.endpoint == Endpoint::Chat {
            // The server's own template, as the chat endpoint applies it.
            templated = self.apply_template(prompt)?;
            templated.as_str()
        } else {
            prompt
        };
        // add_special: BOS exactly as a completion request's prompt gets it.
        let body = json!({"content": content, "add_special": true, "parse_special": true});
        let v = self.post_json("/tokenize", &body)?;
        token_list(&v, "/tokenize")
    }

    fn measure(&mut self, prompt: &str, max_new_tokens: u32) -> Result<Measurement, RunError> {
        self.rt.block_on(self.stream_one(prompt, max_new_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(e: Endpoint, v: &Value) -> (&str, bool) {
        let t = event_token(e, v);
        (t.text, t.arrived)
    }

    #[test]
    fn a_token_without_text_still_ends_ttft() {
        let native = json!({"content": "", "tokens": [2], "stop": false});
        assert_eq!(tok(Endpoint::Completion, &native), ("", true));
        let final_only = json!({"content": "", "tokens": [], "stop": true});
        assert_eq!(tok(Endpoint::Completion, &final_only), ("", false));
        let text = json!({"content": " Paris", "tokens": [7042]});
        assert_eq!(tok(Endpoint::Completion, &text), (" Paris", true));

        let oai = json!({"choices": [{"text": " Paris", "finish_reason": null}]});
        assert_eq!(tok(Endpoint::V1, &oai), (" Paris", true));
        let eog = json!({"choices": [{"text": "", "finish_reason": "stop"}]});
        assert_eq!(tok(Endpoint::V1, &eog), ("", true));
        let usage_only = json!({"choices": [], "usage": {"prompt_tokens": 5}});
        assert_eq!(tok(Endpoint::V1, &usage_only), ("", false));
    }
}
