//! `api`: a GGUF behind llama-server (spawned here, or any server given with `--api-url`), streamed
//! over SSE.
//!
//! Client TTFT = just before the request body is built → the first SSE event that carries a
//! token of any kind (text, reasoning, tool call, token ids; see `body::event_token`) has been
//! parsed. Response headers arrive long before the first token, so time to first
//! byte is *not* TTFT. Every request carries `"cache_prompt": false`; the server's `timings` in the
//! final event prove it (`cache_n == 0`) and give its own prompt time, from which the HTTP overhead
//! `ttft - prompt_ms` follows. The timed request's connection is opened (and for https
//! handshaken) just before the clock starts, one per request (`conn`); `--fresh-connection` opens
//! it inside the clock.
//!
//! By job: this file has the settings, `open` and the [`Backend`] impl; `probe` identifies the
//! server at open, `body` builds requests and decodes an event's token, `stream` is the timed run,
//! `load` the load runs, `tokenize` the untimed helper requests, `conn` the timed request's
//! connection.

mod body;
mod conn;
mod context;
mod eos;
mod helper;
mod load;
pub mod metrics;
mod probe;
pub mod slots;
mod stream;
mod stream_state;
mod tokenize;

pub use body::{event_token, EventToken};
pub use load::{LoadDone, LoadRequest, LoadWork};

use super::server::{RpcWorkers, ServerProcess, ServerSpec};
use super::{check_gguf, Backend, BackendKind, LlamaParams, Measurement, OpenError, RunError};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokenize::{token_list, TokenizeVia};

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
    /// Connection setup timeout (DNS, TCP, TLS handshake).
    pub connect_timeout: Duration,
    /// Open each timed request's connection inside the clock instead of just before it.
    pub fresh_connection: bool,
    /// Extra trusted root certificates (PEM) for an `https://` server, e.g. a self-signed one.
    pub ca_cert: Option<PathBuf>,
    /// Request sent → first token, before the run is failed.
    pub first_token_timeout: Duration,
    /// Whole request, before the run is failed.
    pub total_timeout: Duration,
    /// Each untimed helper request before timing (probe, tokenize, template, metrics), at most
    /// (`--prepare-timeout`).
    pub prepare_timeout: Duration,
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
    /// `--ignore-eos`: ask the server to generate exactly max_new_tokens (see `eos`).
    pub ignore_eos: bool,
}

/// The HTTP backend. Holds its own single-threaded tokio runtime so the benchmark loop stays
/// synchronous and identical for every backend.
pub struct ApiBackend {
    rt: tokio::runtime::Runtime,
    /// The untimed helper requests (probe, tokenize, template) only.
    client: reqwest::Client,
    /// Where timed requests connect (their own connection each, see `conn`).
    target: conn::Target,
    base: String,
    settings: ApiSettings,
    server: Option<ServerProcess>,
    // Dropped after the server (fields drop in declaration order): the server disconnects first.
    rpc_workers: Option<RpcWorkers>,
    load_ms: f64,
    info: Value,
    flavor: ApiFlavor,
    model: String,
    /// The server rejected `stream_options.continuous_usage_stats` once: not sent any more.
    no_continuous_usage: std::sync::atomic::AtomicBool,
    /// `--ignore-eos`: the fields sent for it, and which the server refused.
    ignore_eos: eos::IgnoreEos,
    /// openai flavor: the tokenize endpoint that answered (`Some(None)`: none did).
    tokenize_via: Option<Option<TokenizeVia>>,
    /// Prefix-cache counters from `/metrics` when the backend opened (None: no `/metrics`).
    metrics_before: Option<BTreeMap<String, f64>>,
    /// The message of the helper request that got no answer within `--prepare-timeout`; later
    /// helper requests fail with it at once.
    stalled: std::sync::OnceLock<String>,
    /// `--depth`: the context primed before every timed run (see `context`).
    context: Vec<u32>,
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
        let client = helper_client(settings)?;
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
                let (s, workers, rpc) = spawn_server(params, settings)?;
                let ms = s.start_ms;
                (s.url.clone(), Some(s), ms, workers, rpc)
            }
        };

        let target = conn::Target::new(&base, settings.ca_cert.as_deref())
            .map_err(|e| OpenError::Server(e.to_string()))?;
        let mut me = Self {
            rt,
            client,
            target,
            base,
            settings: settings.clone(),
            server,
            rpc_workers,
            load_ms,
            info: Value::Null,
            flavor: settings.flavor.unwrap_or(ApiFlavor::Llama),
            model: settings.model_alias.clone(),
            no_continuous_usage: Default::default(),
            ignore_eos: eos::IgnoreEos::new(settings.ignore_eos),
            tokenize_via: None,
            metrics_before: None,
            stalled: Default::default(),
            context: Vec::new(),
        };
        me.info = me.probe().map_err(|e| match e {
            // An https server whose certificate no system root signs: say how to trust it.
            OpenError::Server(m) if m.contains("certificate") && me.base.starts_with("https://") => {
                OpenError::Server(format!(
                    "{m} (a self-signed or private-CA server: trust its certificate with --api-ca-cert FILE)"
                ))
            }
            other => other,
        })?;
        me.metrics_before = me
            .scrape_metrics()
            .map_err(|e| OpenError::Stalled(e.message().into()))?;
        me.info["rpc"] = json!({
            "endpoints": rpc,
            "spawned_worker_pids": me.rpc_workers.as_ref().map(|w| w.pids()),
        });
        Ok(me)
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
}

/// The reqwest client of the untimed helper requests. No pooled connection is kept: llama-server
/// closes a connection after a streamed answer and a pooled one can race with that close.
fn helper_client(settings: &ApiSettings) -> Result<reqwest::Client, OpenError> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(settings.connect_timeout)
        .pool_max_idle_per_host(0);
    if let Some(f) = &settings.ca_cert {
        let pem = std::fs::read(f)
            .map_err(|e| OpenError::Server(format!("--api-ca-cert {}: {e}", f.display())))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| OpenError::Server(format!("--api-ca-cert {}: {e}", f.display())))?
        {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| OpenError::Server(format!("HTTP client: {}", error_chain(&e))))
}

/// Spawn the vendored llama-server for `params` (first any local rpc-server workers it should
/// offload to). Returns the server, the workers and every rpc endpoint it was given.
fn spawn_server(
    params: &LlamaParams,
    settings: &ApiSettings,
) -> Result<(ServerProcess, Option<RpcWorkers>, Vec<String>), OpenError> {
    check_gguf(&params.gguf)?;
    let rpc_bin = settings.server_bin.with_file_name("rpc-server");
    let workers = if settings.spawn_rpc > 0 {
        let dir = settings
            .server_log
            .parent()
            .unwrap_or(std::path::Path::new("."));
        Some(RpcWorkers::spawn(
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
    let s = ServerProcess::spawn(&ServerSpec {
        bin: &settings.server_bin,
        params,
        alias: &settings.model_alias,
        port: settings.server_port,
        slots: settings.server_slots,
        rpc: &rpc,
        log_path: &settings.server_log,
        timeout: Duration::from_secs(120),
    })?;
    Ok((s, workers, rpc))
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
        // Made after the runs: the counters' increase over them.
        v["prefix_cache_metrics"] = metrics::report(
            self.metrics_before.as_ref(),
            self.scrape_metrics().ok().flatten().as_ref(),
        );
        v["ignore_eos"] = self.ignore_eos.info(self.flavor);
        v
    }

    // prompt_token_count: the default (the length of token_ids). An OpenAI-compatible server is
    // never sent an untimed generation to read `usage.prompt_tokens`: that would put the prompt
    // in its prefix cache before the timed run.

    fn token_ids(&mut self, prompt: &str) -> Result<Vec<u32>, RunError> {
        if self.flavor == ApiFlavor::Openai {
            return self.openai_tokenize(prompt);
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

    fn set_context(&mut self, ids: &[u32]) -> Result<(), RunError> {
        self.keep_context(ids)
    }

    fn measure(&mut self, prompt: &str, max_new_tokens: u32) -> Result<Measurement, RunError> {
        if !self.context.is_empty() {
            // Outside the clock: the slot back to exactly the context.
            self.prime()?;
        }
        let how = if self.settings.fresh_connection {
            stream::Connection::Fresh
        } else {
            stream::Connection::PreOpened
        };
        let ask = body::Ask {
            prompt,
            max_new_tokens,
            context: &self.context,
            slot: None,
        };
        let mut m = self.rt.block_on(self.stream_one(&ask, how))?;
        own_counts(&mut m, self.context.len());
        Ok(m)
    }
}

/// After a context of `context` tokens the row's prompt tokens are the prompt's own, and the
/// context is what the server says it reused (`cache_n`, the row's `cached_tokens`).
fn own_counts(m: &mut Measurement, context: usize) {
    if context > 0 {
        let n = context as u32;
        m.prompt_tokens = m.prompt_tokens.map(|p| p.saturating_sub(n));
    }
    m.cached_tokens = m.cache_n;
}
