//! `Settings`: defaults, `ttft.toml` and flags merged, with every check made here, before anything
//! is loaded or timed. The run reads nothing else (no `RunArgs` after `resolve`), and the JSON
//! report's `settings` block is this struct, so what was asked for is what is recorded.

pub mod grid;
mod resolve;
mod workload;

pub use grid::{Grid, SettingsPoint};

use crate::backend::api::{ApiFlavor, Endpoint};
use crate::backend::BackendKind;
use crate::bench::load::{LoadMode, Slo};
use serde::Serialize;
use std::path::PathBuf;
use thiserror::Error;

/// `--n-gpu-layers` when neither flag nor config sets it: every layer (llama.cpp caps 999 at the
/// model's count) when a GPU backend is compiled in, none otherwise.
pub const DEFAULT_N_GPU_LAYERS: u32 = if cfg!(any(feature = "cuda", feature = "metal")) {
    999
} else {
    0
};

/// A setting that cannot be used; the message names the flag or key and what to do.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// A flag or key with a value that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// The API key file could not be read.
    #[error("{0}")]
    ApiKey(String),
}

/// Where the prompts come from.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum PromptSource {
    /// Named prompt files, one prompt per line.
    Files(Vec<(String, PathBuf)>),
    /// `--prompt-tokens`: exact-length synthetic prompts, a fresh text per run.
    Synthetic {
        /// Token counts.
        lengths: Vec<u32>,
    },
}

/// `--dataset`: a JSONL request file, one prompt set (read and checked in prepare).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatasetOptions {
    /// The file.
    pub path: PathBuf,
    /// The prompt set's name: the file's stem.
    pub name: String,
    /// `--dataset-sample`: requests drawn with `seed`; None = every request.
    pub sample: Option<usize>,
}

/// `--turns K`: a conversation file replayed turn by turn (read and checked in prepare).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TurnsOptions {
    /// User turns per conversation, at most.
    pub turns: u32,
    /// `--turns-cache`: the cache states, one pass each, in order.
    pub modes: Vec<crate::bench::turns::TurnsCache>,
    /// The conversation file (`--dataset`, else data/conversations.jsonl).
    pub path: PathBuf,
    /// The prompt set's name: the file's stem.
    pub name: String,
    /// `--dataset-sample`: conversations drawn with the seed; None = every conversation.
    pub sample: Option<usize>,
}

/// How the api backend reaches its server.
#[derive(Debug, Clone, Serialize)]
pub struct ApiOptions {
    /// Existing server, or spawn (None).
    pub url: Option<String>,
    /// Streaming endpoint.
    pub endpoint: Endpoint,
    /// Server flavor, None = detected.
    pub flavor: Option<ApiFlavor>,
    /// Model name for OpenAI requests.
    pub api_model: Option<String>,
    /// The spawned server's alias (and the model name when none is found).
    pub model_alias: String,
    /// Server binary to spawn.
    pub server_bin: PathBuf,
    /// Accept a server of another llama.cpp commit.
    pub allow_commit_mismatch: bool,
    /// Connection setup timeout, seconds.
    pub connect_timeout_s: f64,
    /// Connect inside the clock (`--fresh-connection`) instead of just before it.
    pub fresh_connection: bool,
    /// Extra trusted certificates (PEM) for an https server (`--api-ca-cert`).
    pub ca_cert: Option<PathBuf>,
    /// No first token after this long fails the run, seconds.
    pub first_token_timeout_s: f64,
    /// A run longer than this fails, seconds.
    pub request_timeout_s: f64,
    /// Each untimed request before timing waits at most this long, seconds.
    pub prepare_timeout_s: f64,
    /// Fixed port of the spawned server.
    pub server_port: Option<u16>,
    /// Slots of the spawned server (1 unless a load run needs more).
    pub server_slots: u32,
    /// RPC workers for the spawned server.
    pub rpc: Vec<String>,
    /// Local rpc-server workers to start.
    pub spawn_rpc: u32,
    /// The API key (redacted when printed or serialised).
    pub api_key: Option<crate::secret::Secret>,
    /// Where the key came from, for the report.
    pub api_key_source: Option<String>,
}

/// A load run (`--concurrency` / `--request-rate`, api only).
#[derive(Debug, Clone, Serialize)]
pub struct LoadOptions {
    /// The load points, in order (several: a sweep on one server), all closed or all open loop;
    /// with `search`, its start.
    pub points: Vec<LoadMode>,
    /// `--max-goodput`: search the highest load at which the objectives hold.
    pub search: Option<crate::bench::load_search::SearchOptions>,
    /// `--repeat`: each load point (or the search) this many times, interleaved.
    pub repeat: u32,
    /// Requests to send; None = prompts × runs (or as many as `duration` allows).
    pub num_requests: Option<usize>,
    /// Stop issuing after this many seconds.
    pub duration_s: Option<f64>,
    /// Service-level objectives for goodput.
    pub slo: Slo,
}

/// What the report shows and where it goes.
#[derive(Debug, Clone, Serialize)]
pub struct OutputOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Also a Markdown summary here.
    pub export_markdown: Option<PathBuf>,
    /// TTFT parts and decode metrics in the table.
    pub breakdown: bool,
    /// One table row per prompt instead of per set.
    pub per_prompt: bool,
    /// Progress bars on stderr.
    pub progress: bool,
    /// 1: a line per run; 2: HTTP details too.
    pub verbose: u8,
}

/// Everything a run needs, resolved from defaults, config and flags.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Backends, in run order.
    pub backends: Vec<BackendKind>,
    /// Every list-valued setting.
    pub grid: Grid,
    /// The grid's combinations.
    pub points: Vec<SettingsPoint>,
    /// hf: hub revision.
    pub hf_revision: Option<String>,
    /// hf: device.
    pub device: String,
    /// The prompts.
    pub prompts: PromptSource,
    /// `--dataset`: one more prompt set, from a JSONL request file.
    pub dataset: Option<DatasetOptions>,
    /// Timed runs per prompt.
    pub runs: u32,
    /// `--min-time`: more runs (the same number for every prompt of a set) until each prompt
    /// has been measured this long, seconds.
    pub min_time_s: f64,
    /// Warm-up runs per backend and prompt set.
    pub warmup: u32,
    /// Tokens generated per run.
    pub max_new_tokens: u32,
    /// `--ignore-eos`: every run generates exactly `max_new_tokens` (no end-of-generation token
    /// can end it), so TPOT and E2E of different backends are over equal work.
    pub ignore_eos: bool,
    /// Seed of synthetic prompts and load arrivals.
    pub seed: u64,
    /// Prompts are chat messages.
    pub chat: bool,
    /// Too-long prompts become failed rows instead of an error.
    pub skip_too_long: bool,
    /// hf: prompts past the checkpoint's position limit are run anyway (`--ignore-position-limit`).
    pub ignore_position_limit: bool,
    /// Token or first-token disagreements are errors.
    pub strict_parity: bool,
    /// The cache-busting prefix: `Some(true)` `--cache-bust`, `Some(false)` `--no-cache-bust`,
    /// `None` on exactly when the api backend runs in the openai flavor (decided in prepare,
    /// once the flavor is known).
    pub cache_bust: Option<bool>,
    /// `--depth`: context depths in tokens (empty: no depth dimension, the cold case only).
    pub depths: Vec<u32>,
    /// `--turns`: conversations replayed turn by turn (then the only prompt set).
    pub turns: Option<TurnsOptions>,
    /// The document the depth contexts are cut from.
    pub depth_doc: PathBuf,
    /// The api backend.
    pub api: ApiOptions,
    /// A load run instead of the per-prompt protocol.
    pub load: Option<LoadOptions>,
    /// Reports.
    pub output: OutputOptions,
    /// The config file used.
    pub config: Option<PathBuf>,
    /// The config file's folder (relative paths in it are relative to this).
    #[serde(skip)]
    pub base: PathBuf,
}

impl Settings {
    /// Whether the api backend spawns its own llama-server.
    pub fn spawns_server(&self) -> bool {
        self.backends.contains(&BackendKind::Api) && self.api.url.is_none()
    }

    /// Whether `kind` was selected.
    pub fn has(&self, kind: BackendKind) -> bool {
        self.backends.contains(&kind)
    }
}

/// Parse `--backend` values ("all" expands to every built backend).
pub fn parse_backends(list: &[String]) -> Result<Vec<BackendKind>, SettingsError> {
    let mut out = Vec::new();
    for item in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let add: Vec<BackendKind> = if item.eq_ignore_ascii_case("all") {
            BackendKind::ALL
                .into_iter()
                .filter(|k| k.is_built())
                .collect()
        } else {
            vec![BackendKind::parse(item).ok_or_else(|| {
                SettingsError::Invalid(format!(
                    "--backend {item}: unknown backend (choose from inproc, api, hf, all)"
                ))
            })?]
        };
        for k in add {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    if out.is_empty() {
        return Err(SettingsError::Invalid(
            "--backend: no backend selected (choose from inproc, api, hf, all)".into(),
        ));
    }
    Ok(out)
}

/// `org/name` that is not a path relative to `base` (whose first component would exist).
pub fn is_hub_id(s: &str, base: &std::path::Path) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && !s.starts_with('.')
        && parts.iter().all(|p| !p.is_empty())
        && !base.join(parts[0]).exists()
}
