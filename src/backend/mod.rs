//! The backends, one module each behind one trait, so the benchmark protocol cannot treat them
//! differently: every backend gets the prompt *text* and returns the same [`Measurement`].
//!
//! TTFT, for all backends: the clock starts when the prompt text is handed to the backend and stops
//! when the first generated token's text is on the host. Everything a backend must do to get there
//! (tokenize, prefill, sample, detokenize; or serialise, send, wait, parse) is inside the clock.

pub mod api;
pub mod decode;
pub mod detok;
pub mod fake;
#[cfg(feature = "llama")]
pub mod gguf;
pub mod guard;
#[cfg(feature = "torch")]
pub mod hf;
#[cfg(feature = "torch")]
pub mod hf_text;
#[cfg(feature = "llama")]
pub mod inproc;
pub mod server;
pub mod sse;
pub mod system_info;
pub mod waiting;

pub use decode::{decode_tail, DecodeTail, FirstToken, Generator, InprocClock};

use serde::Serialize;
use std::fmt;
use thiserror::Error;

/// The backends ttft knows about, built or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Hugging Face checkpoint on libtorch (tch).
    Hf,
    /// GGUF in-process through llama.cpp (llama-cpp-2).
    Inproc,
    /// GGUF behind llama-server (or any OpenAI-compatible server) over HTTP/SSE.
    Api,
}

impl BackendKind {
    /// Every backend in the order `all` runs them.
    pub const ALL: [BackendKind; 3] = [BackendKind::Hf, BackendKind::Inproc, BackendKind::Api];

    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Hf => "hf",
            BackendKind::Inproc => "inproc",
            BackendKind::Api => "api",
        }
    }

    /// Whether this binary was built with the backend (cargo features).
    pub fn is_built(self) -> bool {
        match self {
            BackendKind::Hf => cfg!(feature = "torch"),
            BackendKind::Inproc => cfg!(feature = "llama"),
            BackendKind::Api => true,
        }
    }

    /// Why a backend is not available in this build, and how to get it.
    pub fn not_built_reason(self) -> &'static str {
        match self {
            BackendKind::Hf => {
                "the hf backend (libtorch) was not compiled in: rebuild with `--features torch` (on by default) after scripts/setup.sh"
            }
            BackendKind::Inproc => {
                "the inproc backend was not compiled in: rebuild with `--features llama` (on by default)"
            }
            BackendKind::Api => "",
        }
    }

    /// Parse `inproc`, `api`, `hf` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hf" => Some(BackendKind::Hf),
            "inproc" => Some(BackendKind::Inproc),
            "api" => Some(BackendKind::Api),
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything measured in one successful timed run. Times are milliseconds; a part a backend
/// cannot observe is `None` (never a made-up zero).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Measurement {
    /// Time to first token: prompt text handed over → first token text on the host.
    pub ttft_ms: f64,
    /// Prompt tokens the backend actually evaluated (BOS included when the model adds one).
    pub prompt_tokens: Option<u32>,
    /// Text → token ids (in-process backends).
    pub tokenize_ms: Option<f64>,
    /// Forward pass over the prompt, up to the last position's logits being readable.
    pub prefill_ms: Option<f64>,
    /// Greedy argmax over the last logits until the token id is on the host.
    pub first_sample_ms: Option<f64>,
    /// First token id → its text.
    pub detokenize_ms: Option<f64>,
    /// api: the server's own prompt-processing time (`timings.prompt_ms`).
    pub server_prompt_ms: Option<f64>,
    /// api: prompt tokens the server processed (`timings.prompt_n`).
    pub server_prompt_n: Option<u32>,
    /// api: prompt tokens the server reused from its cache; must be 0 for a fair run.
    pub cache_n: Option<u32>,
    /// api: everything in TTFT that is not server prompt processing: `ttft - server_prompt_ms`.
    pub api_overhead_ms: Option<f64>,
    /// api: request sent → first *visible* content (after any reasoning text or tool call);
    /// equal to TTFT unless the server streams reasoning or a tool call first.
    pub first_visible_ms: Option<f64>,
    /// Tokens generated in total (the first included).
    pub generated_tokens: u32,
    /// Mean time per token after the first, (end - first token) / (generated - 1): vLLM's TPOT
    /// for this request.
    pub decode_ms_per_token: Option<f64>,
    /// Inter-token latencies: the gaps between consecutive generated tokens' arrival on the host
    /// (vLLM's ITL), generated - 1 values; api: one per arriving token chunk after the first
    /// (a chunk of several tokens is one gap, as in vLLM's benchmark).
    pub itl_ms: Vec<f64>,
    /// Prompt handed over → last token text on the host.
    pub e2e_ms: f64,
    /// Text of the first generated token.
    pub first_token: String,
    /// All generated text.
    pub output: String,
    /// Id of the first generated token, where the backend sees ids (inproc, hf; api when the
    /// server streams them). First-token agreement compares ids, not text.
    pub first_token_id: Option<u32>,
    /// The first token's raw bytes in hex (a token can be part of a UTF-8 character, so its
    /// bytes are not always text).
    pub first_token_bytes: Option<String>,
    /// Prompt handed over → first complete character of generated text on the host, when that
    /// comes later than the first token (a partial UTF-8 character, an EOS, a tool call).
    pub first_char_ms: Option<f64>,
    /// api: tokens the server had generated when its first event came (native `tokens_predicted`).
    /// llama-server sends no event for a token that ends inside a UTF-8 character, so above 1 the
    /// api's TTFT spans that many tokens, not one (the row is flagged `first_event_after_tokens:N`).
    pub first_event_tokens: Option<u32>,
    /// api chat: request written → first `delta.tool_calls` chunk, when there is one.
    pub first_tool_call_ms: Option<f64>,
    /// How `generated_tokens` was counted (see [`TokenCount`]).
    pub tokens_counted_by: Option<TokenCount>,
    /// Why generation ended: `eos`, `length` (max new tokens), or the server's finish reason.
    pub stop_reason: Option<String>,
    /// openai flavor: tokens of the unique cache-busting prefix put before the prompt (recorded so
    /// every row says what it prefilled).
    pub cache_bust_tokens: Option<u32>,
    /// api: connection setup (TCP, TLS) done before the clock started, ms.
    pub connect_ms: Option<f64>,
    /// api: `pre-opened` (connected before the clock) or `fresh` (`--fresh-connection`: connect
    /// inside the clock, as a client without keep-alive does).
    pub connection: Option<String>,
    /// Tokens of context in the backend's cache when the prompt's prefill began, as the backend
    /// proves it (`--depth`): inproc the KV cache's positions (`llama_memory_seq_pos_max + 1`),
    /// hf its KV cache length, api llama-server's `cache_n`. None where it cannot be observed.
    pub cached_tokens: Option<u32>,
    /// Load runs, open loop: how late the request went out after its scheduled send, ms. Its
    /// TTFT and E2E (and the first character's, visible token's and tool call's times) count
    /// from the schedule, so a client that falls behind shows as latency, not as a lower rate.
    pub send_lateness_ms: Option<f64>,
}

impl Measurement {
    /// Move the clock's origin back by `late` (the open loop's scheduled send; see
    /// `send_lateness_ms`).
    pub fn count_from_schedule(&mut self, late: std::time::Duration) {
        let ms = late.as_secs_f64() * 1e3;
        self.send_lateness_ms = Some(ms);
        self.ttft_ms += ms;
        self.e2e_ms += ms;
        for t in [
            &mut self.first_char_ms,
            &mut self.first_visible_ms,
            &mut self.first_tool_call_ms,
        ] {
            if let Some(t) = t.as_mut() {
                *t += ms;
            }
        }
        if let Some(o) = self.api_overhead_ms.as_mut() {
            // The client's lateness is overhead the server never saw.
            *o += ms;
        }
    }
}

/// Where a row's `generated_tokens` comes from. The rule on every backend: the end-of-generation
/// token, when generation stops at one, *is* a generated token (it took a forward pass and a
/// sample, and llama-server's `predicted_n` and vLLM's `completion_tokens` count it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenCount {
    /// In-process: the decode loop counted every sampled token.
    Decoder,
    /// llama.cpp `timings.predicted_n`.
    ServerPredicted,
    /// OpenAI `usage.completion_tokens` of the timed request itself.
    Usage,
    /// The server's per-event `tokens` arrays.
    TokensArrays,
    /// Nothing better: one token per non-empty chunk.
    Chunks,
}

/// A timed run that did not produce a first token. The message becomes the row's error.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{0}")]
pub struct RunError(pub String);

impl RunError {
    /// Build from anything printable.
    pub fn new(msg: impl Into<String>) -> Self {
        RunError(msg.into())
    }
}

/// A backend that cannot start (bad model file, dead server, missing binary): reported before
/// timing, naming the file or flag and what to do.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The model file is missing or not usable.
    #[error("{0}")]
    Model(String),
    /// The server could not be spawned or reached.
    #[error("{0}")]
    Server(String),
    /// The backend is not compiled into this binary.
    #[error("{0}")]
    NotBuilt(String),
    /// A request before timing got no answer within `--prepare-timeout` (the message names the
    /// server, the request and what to do): ttft stops before timing.
    #[error("{0}")]
    Stalled(String),
}

/// One benchmarkable backend. Opening it (loading the model or starting the server) happens
/// outside any timed region; `measure` is one timed run on a fresh KV state.
pub trait Backend {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Model load (and context/server start) time in milliseconds, reported apart from TTFT.
    fn load_ms(&self) -> f64;
    /// Static facts for the report (model, build, commit, settings actually used).
    fn info(&self) -> serde_json::Value;
    /// Token ids this backend would evaluate for `prompt`, without generating (used to check that
    /// backends see the same tokens).
    fn token_ids(&mut self, prompt: &str) -> Result<Vec<u32>, RunError>;
    /// How many prompt tokens this backend evaluates for `prompt` (before timing). By default the
    /// length of `token_ids`; servers without a tokenizer endpoint answer from `usage`.
    fn prompt_token_count(&mut self, prompt: &str) -> Result<u32, RunError> {
        self.token_ids(prompt).map(|ids| ids.len() as u32)
    }
    /// Hold `ids` as cached context under every following `measure` (untimed; `--depth`, and
    /// later earlier conversation turns): each `measure` then prefills the prompt text, tokenized
    /// without BOS, at position `ids.len()` and leaves the cache holding exactly `ids` again for
    /// the next run. Empty `ids`: no context, the cold case. Backends that cannot control their
    /// cache refuse a non-empty context.
    fn set_context(&mut self, ids: &[u32]) -> Result<(), RunError> {
        if ids.is_empty() {
            Ok(())
        } else {
            Err(RunError::new(format!(
                "{}: this backend cannot hold a cached context (--depth)",
                self.kind()
            )))
        }
    }
    /// One timed run: TTFT and its parts, then `max_new_tokens - 1` greedy decode steps.
    fn measure(&mut self, prompt: &str, max_new_tokens: u32) -> Result<Measurement, RunError>;
}

/// The llama.cpp commit linked in-process: `llama-cpp-sys-2 =0.1.153` vendors this tree, and setup
/// builds llama-server from the identical commit. Changing the crate pin means changing this.
pub const LLAMA_CPP_COMMIT: &str = "9e3b928fd8c9d14dbf15a8768b9fdd7e5c721d66";

/// Check that `path` exists, starts with the GGUF magic and (with llama.cpp linked) that its header
/// parses and the file holds every tensor it describes, so a wrong or truncated file fails with a
/// clear message instead of a llama.cpp abort.
pub fn check_gguf(path: &std::path::Path) -> Result<(), OpenError> {
    check_gguf_magic(path)?;
    #[cfg(feature = "llama")]
    gguf::inspect(path)?;
    Ok(())
}

fn check_gguf_magic(path: &std::path::Path) -> Result<(), OpenError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| {
        OpenError::Model(format!(
            "GGUF model {}: {e} (run scripts/setup.sh for the default model, or pass --gguf FILE)",
            path.display()
        ))
    })?;
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(OpenError::Model(format!(
            "{} is not a GGUF file (no GGUF magic): pass a .gguf model with --gguf",
            path.display()
        )));
    }
    Ok(())
}

/// llama.cpp settings shared by `inproc` and the spawned llama-server, so both run the model the
/// same way: one source of truth, passed to the context params and to the server's flags.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LlamaParams {
    /// The GGUF file.
    pub gguf: std::path::PathBuf,
    /// Context size in tokens (`-c`).
    pub ctx_size: u32,
    /// Threads for prompt processing and generation (`-t`, `-tb`).
    pub threads: u32,
    /// Logical batch size (`-b`); llama-server's default is 2048.
    pub batch: u32,
    /// Physical micro-batch size (`-ub`); llama-server's default is 512.
    pub ubatch: u32,
    /// Layers offloaded to the GPU (`-ngl`); 0 on CPU builds.
    pub n_gpu_layers: u32,
    /// Flash attention (`--flash-attn`); both sides default to `auto`.
    pub flash_attn: FlashAttn,
    /// KV cache type of K (`--cache-type-k`), e.g. f16, q8_0.
    pub cache_type_k: String,
    /// KV cache type of V (`--cache-type-v`).
    pub cache_type_v: String,
}

/// llama.cpp's flash-attention policy, with the server's spelling.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, clap::ValueEnum, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttn {
    /// Let llama.cpp decide per device (the default of both llama-server and the library).
    #[default]
    Auto,
    /// Always on.
    On,
    /// Always off.
    Off,
}

impl fmt::Display for FlashAttn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlashAttn::Auto => "auto",
            FlashAttn::On => "on",
            FlashAttn::Off => "off",
        })
    }
}

/// KV cache types llama-server accepts for `--cache-type-k/-v` (common/arg.cpp's list).
pub const KV_CACHE_TYPES: &[&str] = &[
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1",
];
