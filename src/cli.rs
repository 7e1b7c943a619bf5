//! Command line: flags, the config file underneath them, validation before any timing, and the
//! run itself. Exit codes: 0 every run succeeded, 1 some runs failed (they are rows in the
//! reports), 2 usage or setup error (nothing was timed).

use crate::backend::api::{ApiBackend, ApiSettings, Endpoint};
use crate::backend::server::cpu_features;
use crate::backend::{check_gguf, Backend, BackendKind, LlamaParams, OpenError};
use crate::bench::interrupt;
use crate::bench::load::{LoadMode, LoadReport, LoadSample, Slo};
use crate::bench::parity::{self, Tokenizer};
use crate::bench::prompts::{load_prompt_set, split_prompt_arg, PromptSet};
use crate::bench::runner::{self, Plan, RunRecord};
use crate::config::{self, LoadedConfig};
use crate::report::{self, csv::CsvSink, jsonl::JsonlSink, Report};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `--n-gpu-layers` when neither flag nor config sets it: every layer (llama.cpp caps 999 at the
/// model's count) when a GPU backend is compiled in, none otherwise.
const DEFAULT_N_GPU_LAYERS: u32 = if cfg!(any(feature = "cuda", feature = "metal")) {
    999
} else {
    0
};

const AFTER_HELP: &str = "\
TTFT (time to first token), the same for every backend: the clock starts when the prompt text is \
handed to the backend and stops when the first generated token's text is on the host.
  inproc: tokenize + prefill + greedy sample + detokenize, KV cache cleared before each run.
  api:    request built and sent -> first SSE event with non-empty token text parsed;
          cache_prompt=false on every request, proven by the server's timings.cache_n == 0.
  hf:     tokenize + prefill (CUDA: synchronised) + argmax + id to host + detokenize.
Parts reported: tokenize, prefill, first sample, detokenize (inproc, hf); server prompt_ms and
overhead = TTFT - prompt_ms (api).
Decode metrics (vLLM's definitions), with max_new_tokens > 1:
  TPOT = (end of request - first token) / (generated - 1), per request;
  ITL  = each gap between two consecutive tokens arriving on the host, pooled over requests.
Statistics per case: mean, median with a bootstrap 95% CI (10,000 resamples, fixed seed), p90,
p99, stddev, min, max; outliers by median/MAD (modified z > 3.5). --prompt-tokens fits
TTFT = a + b*n per backend (least squares, R^2).
Warm-up runs are never recorded; model load / server start is reported apart from TTFT.

Exit codes: 0 all runs succeeded, 1 some runs failed (kept as rows with their error),
2 usage or setup error (nothing was timed).";

/// ttft: time-to-first-token of one model, measured in-process, over HTTP and on libtorch.
#[derive(Debug, Parser)]
#[command(name = "ttft", version, about, after_long_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark (the default when no subcommand is given).
    Run(Box<RunArgs>),
    /// Compare two JSON reports case by case (prompt set × backend): change of the median TTFT and
    /// Welch's t-test on the runs. Exits 1 when a case got significantly slower by more than the
    /// threshold, 0 otherwise.
    Compare {
        /// The baseline report.
        old: PathBuf,
        /// The new report.
        new: PathBuf,
        /// Smallest change of the median, percent, that counts as a regression.
        #[arg(long, default_value_t = 5.0)]
        threshold: f64,
        /// Significance level of the t-test.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
    },
}

fn compare_cmd(old: &Path, new: &Path, threshold: f64, alpha: f64) -> Result<i32> {
    let read = |p: &Path| -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))
    };
    let changes = report::compare::compare(&read(old)?, &read(new)?, threshold, alpha)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if changes.is_empty() {
        bail!(
            "{} and {} have no case (prompt set × backend) in common",
            old.display(),
            new.display()
        );
    }
    print!("{}", report::compare::render(&changes));
    let slower = changes.iter().filter(|c| c.verdict == "slower").count();
    if slower > 0 {
        println!("{slower} case(s) regressed by more than {threshold}% (p < {alpha})");
        return Ok(1);
    }
    Ok(0)
}

/// Flags of `ttft run`; every one overrides the `ttft.toml` key of the same name.
#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    /// Config file [default: ./ttft.toml when present]. Relative paths in it are relative to it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Backends to measure: inproc, api, hf, or all (comma-separated list allowed).
    #[arg(long, short = 'b', value_delimiter = ',', value_name = "LIST")]
    pub backend: Vec<String>,
    /// GGUF model for inproc and the spawned llama-server [config: gguf].
    #[arg(long, value_name = "FILE")]
    pub gguf: Option<PathBuf>,
    /// hf: Hugging Face checkpoint folder or hub id (HF_HOME, HF_HUB_OFFLINE, HF_TOKEN honoured) [config: hf_model].
    #[arg(long, value_name = "DIR|ID")]
    pub hf_model: Option<String>,
    /// hf: hub revision (branch, tag or commit) for a hub id [config: hf_revision, default main].
    #[arg(long, value_name = "REV")]
    pub hf_revision: Option<String>,
    /// hf: cpu, cuda, cuda:N or mps [config: device, default cpu].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// hf: f32, f16 or bf16 [config: dtype, default f32].
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
    /// Prompt file, one prompt per line (blank lines ignored); NAME=FILE names the set. Repeatable;
    /// replaces the config's short_prompts/long_prompts.
    #[arg(long, value_name = "[NAME=]FILE")]
    pub prompts: Vec<String>,
    /// Timed repetitions of every prompt [config: runs, default 3].
    #[arg(long, value_name = "N")]
    pub runs: Option<u32>,
    /// Repeat each prompt beyond --runs until it has been measured for at least S seconds (at most
    /// 20 × --runs), like hyperfine's --min-time.
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub min_time: f64,
    /// Untimed warm-up runs per backend and prompt set [config: warmup, default 1].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u32>,
    /// Tokens to generate per run; the first one ends TTFT [config: max_new_tokens, default 10].
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<u32>,
    /// llama.cpp threads, the same for inproc and the spawned server; 0 = all cores [config: threads].
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// Context size in tokens, the same for inproc and the spawned server [config: ctx_size, default 2048].
    #[arg(long, value_name = "N")]
    pub ctx_size: Option<u32>,
    /// Layers offloaded to a GPU, the same on both llama.cpp sides; 999 = all [config:
    /// n_gpu_layers, default 999 in a `cuda` or `metal` build, else 0].
    #[arg(long, value_name = "N")]
    pub n_gpu_layers: Option<u32>,
    /// Benchmark this server instead of spawning llama-server [config: api_url].
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// Streaming endpoint: completion (llama.cpp native /completion) or v1 (/v1/completions) [config: api_endpoint].
    #[arg(long, value_enum, value_name = "ENDPOINT")]
    pub api_endpoint: Option<Endpoint>,
    /// Send each prompt as one user message: api streams /v1/chat/completions (a role-only first
    /// chunk is not a token); inproc and hf apply the model's own chat template (GGUF
    /// tokenizer.chat_template / tokenizer_config.json) so every backend gets the same ids.
    #[arg(long)]
    pub chat: bool,
    /// Server flavor: llama (llama-server: cache_prompt=false, timings, /tokenize) or openai (any
    /// OpenAI-compatible server: standard fields only, counts from usage) [default: detected].
    #[arg(long, value_enum, value_name = "FLAVOR")]
    pub api_flavor: Option<crate::backend::api::ApiFlavor>,
    /// Model name for OpenAI requests [default: the first id of /v1/models, else --model-alias].
    #[arg(long, value_name = "NAME")]
    pub api_model: Option<String>,
    /// Model name for OpenAI requests and the spawned server's --alias [config: model_alias].
    #[arg(long, value_name = "NAME")]
    pub model_alias: Option<String>,
    /// llama-server binary to spawn [config: server_bin, default vendor/bin/llama-server].
    #[arg(long, value_name = "FILE")]
    pub server_bin: Option<PathBuf>,
    /// Accept a server built from another llama.cpp commit than the one linked in-process.
    #[arg(long)]
    pub allow_commit_mismatch: bool,
    /// TCP connect timeout for api requests, seconds.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// api: fail a run when no token arrived this many seconds after sending.
    #[arg(long, value_name = "S", default_value_t = 300.0)]
    pub first_token_timeout: f64,
    /// api: fail a run that takes longer than this in total, seconds.
    #[arg(long, value_name = "S", default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Output folder for the CSV, JSON and server log [config: out, default results].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// A prompt longer than the context becomes a failed row with the reason instead of an error.
    #[arg(long)]
    pub skip_too_long: bool,
    /// Port for the spawned llama-server on 127.0.0.1 (default: a free one).
    #[arg(long, value_name = "PORT")]
    pub server_port: Option<u16>,
    /// File holding the API key for --api-url servers that need one. Without it the key comes from
    /// the environment: TTFT_API_KEY, else OPENAI_API_KEY. Never pass a key as a flag value.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Exact-length synthetic prompts instead of prompt files: for each N, prompts of exactly N
    /// tokens in every selected backend's tokenizer, a different text for every run; the report
    /// then fits TTFT ≈ a + b·n per backend.
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub prompt_tokens: Vec<u32>,
    /// Seed of the synthetic prompts (the same seed gives the same texts).
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub seed: u64,
    /// Fail (exit 2) before timing when backends tokenize any prompt differently.
    #[arg(long)]
    pub strict_parity: bool,
    /// Show the TTFT parts (tokenize, prefill, first sample, detokenize; server prompt time and
    /// HTTP overhead) and decode metrics in the table.
    #[arg(long)]
    pub breakdown: bool,
    /// Also write the summary as a Markdown table to FILE (for pull requests).
    #[arg(long, value_name = "FILE")]
    pub export_markdown: Option<PathBuf>,
    /// Load (api only): N clients in a closed loop, each sending its next request when the last
    /// one ended. The spawned server gets N slots (--parallel N), each with the full context.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Load (api only): open loop at R requests per second on average.
    #[arg(long, value_name = "R")]
    pub request_rate: Option<f64>,
    /// Gamma shape of the open loop's gaps: 1 = Poisson, < 1 burstier, > 1 more regular.
    #[arg(long, value_name = "B", default_value_t = 1.0)]
    pub burstiness: f64,
    /// Load: requests to send [default: prompts × --runs].
    #[arg(long, value_name = "N")]
    pub num_requests: Option<usize>,
    /// Load: stop issuing requests after S seconds.
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Load: service-level objectives for goodput, e.g. ttft=500,tpot=50,e2e=3000 (milliseconds).
    #[arg(long, value_name = "SLO")]
    pub slo: Option<String>,
    /// llama.cpp RPC workers (host:port,...) for the spawned llama-server to offload the model to.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub rpc: Vec<String>,
    /// Start N local rpc-server workers on 127.0.0.1 and offload the spawned server to them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub spawn_rpc: u32,
    /// Load: slots of the spawned server for --request-rate (default 4; --concurrency uses N).
    #[arg(long, value_name = "N")]
    pub server_slots: Option<u32>,
    /// More output on stderr: -v one line per run, -vv also HTTP details (never the API key).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Everything a run needs, resolved from defaults, config and flags.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    /// Backends, in run order.
    pub backends: Vec<BackendKind>,
    /// llama.cpp parameters shared by inproc and the spawned server.
    pub llama: LlamaParams,
    /// hf: checkpoint folder or hub id.
    pub hf_model: String,
    /// hf: hub revision.
    pub hf_revision: Option<String>,
    /// hf: device.
    pub device: String,
    /// hf: dtype.
    pub dtype: String,
    /// Prompt set names and files.
    pub prompt_files: Vec<(String, PathBuf)>,
    /// Timed runs per prompt.
    pub runs: u32,
    /// Warm-up runs per backend and prompt set.
    pub warmup: u32,
    /// Tokens generated per run.
    pub max_new_tokens: u32,
    /// Existing server, or spawn.
    pub api_url: Option<String>,
    /// Streaming endpoint.
    pub api_endpoint: Endpoint,
    /// Prompts are chat messages (template applied in-process, chat endpoint over HTTP).
    pub chat: bool,
    /// Model alias.
    pub model_alias: String,
    /// Server binary.
    pub server_bin: PathBuf,
    /// Output folder.
    pub out: PathBuf,
    /// Too-long prompts become failed rows instead of an error.
    pub skip_too_long: bool,
    /// Fixed port for the spawned server.
    pub server_port: Option<u16>,
    /// The API key (redacted when printed or serialised).
    pub api_key: Option<crate::secret::Secret>,
    /// Where the key came from ("environment variable TTFT_API_KEY", a file), for the report.
    pub api_key_source: Option<String>,
    /// The config file used.
    pub config: Option<PathBuf>,
}

/// Parse `--backend` values ("all" expands to every backend).
pub fn parse_backends(list: &[String]) -> Result<Vec<BackendKind>> {
    let mut out = Vec::new();
    for item in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if item.eq_ignore_ascii_case("all") {
            for k in BackendKind::ALL {
                if k.is_built() && !out.contains(&k) {
                    out.push(k);
                }
            }
            continue;
        }
        let Some(k) = BackendKind::parse(item) else {
            bail!("--backend {item}: unknown backend (choose from inproc, api, hf, all)");
        };
        if !out.contains(&k) {
            out.push(k);
        }
    }
    if out.is_empty() {
        bail!("--backend: no backend selected (choose from inproc, api, hf, all)");
    }
    Ok(out)
}

/// Merge built-in defaults, the config file and the flags.
pub fn resolve(args: &RunArgs, cfg: &LoadedConfig) -> Result<Settings> {
    let f = &cfg.file;
    let backend_list = if !args.backend.is_empty() {
        args.backend.clone()
    } else {
        f.backends.clone().unwrap_or_else(|| vec!["all".into()])
    };
    let backends = parse_backends(&backend_list)?;
    let from_cfg = |flag: &Option<PathBuf>, key: &Option<PathBuf>, default: &str| -> PathBuf {
        match (flag, key) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => cfg.resolve(p),
            (None, None) => cfg.resolve(Path::new(default)),
        }
    };
    let gguf = from_cfg(
        &args.gguf,
        &f.gguf,
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    );
    let prompt_files = if !args.prompts.is_empty() {
        args.prompts.iter().map(|a| split_prompt_arg(a)).collect()
    } else {
        vec![
            (
                "short".to_string(),
                from_cfg(&None, &f.short_prompts, "data/short_prompts.txt"),
            ),
            (
                "long".to_string(),
                from_cfg(&None, &f.long_prompts, "data/long_prompts.txt"),
            ),
        ]
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let threads = match args.threads.or(f.threads).unwrap_or(0) {
        0 => cores,
        n => n,
    };
    let api_url = args
        .api_url
        .clone()
        .or_else(|| f.api_url.clone())
        .filter(|u| !u.trim().is_empty());
    let max_new_tokens = args.max_new_tokens.or(f.max_new_tokens).unwrap_or(10);
    if max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1 (the first token ends TTFT)");
    }
    let runs = args.runs.or(f.runs).unwrap_or(3);
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let ctx_size = args.ctx_size.or(f.ctx_size).unwrap_or(2048);
    Ok(Settings {
        backends,
        llama: LlamaParams {
            gguf,
            ctx_size,
            threads,
            batch: 2048.min(ctx_size.max(1)),
            ubatch: 512.min(ctx_size.max(1)),
            n_gpu_layers: args
                .n_gpu_layers
                .or(f.n_gpu_layers)
                .unwrap_or(DEFAULT_N_GPU_LAYERS),
        },
        hf_model: match (&args.hf_model, &f.hf_model) {
            (Some(m), _) => m.clone(),
            (None, m) => {
                let m = m
                    .clone()
                    .unwrap_or_else(|| "models/SmolLM2-135M-Instruct-hf".into());
                let local = cfg.resolve(Path::new(&m));
                if local.exists() || !is_hub_id(&m, &cfg.base) {
                    local.display().to_string()
                } else {
                    m
                }
            }
        },
        hf_revision: args.hf_revision.clone().or_else(|| f.hf_revision.clone()),
        device: args
            .device
            .clone()
            .or_else(|| f.device.clone())
            .unwrap_or_else(|| "cpu".into()),
        dtype: args
            .dtype
            .clone()
            .or_else(|| f.dtype.clone())
            .unwrap_or_else(|| "f32".into()),
        prompt_files,
        runs,
        warmup: args.warmup.or(f.warmup).unwrap_or(1),
        max_new_tokens,
        api_url,
        chat: args.chat,
        api_endpoint: if args.chat {
            Endpoint::Chat
        } else {
            args.api_endpoint
                .or(f.api_endpoint)
                .unwrap_or(Endpoint::Completion)
        },
        model_alias: args
            .model_alias
            .clone()
            .or_else(|| f.model_alias.clone())
            .unwrap_or_else(|| "default".into()),
        server_bin: from_cfg(&args.server_bin, &f.server_bin, "vendor/bin/llama-server"),
        out: from_cfg(&args.out, &f.out, "results"),
        skip_too_long: args.skip_too_long,
        server_port: args.server_port,
        api_key: None,
        api_key_source: None,
        config: cfg.path.clone(),
    })
}

/// `org/name` that is not a path relative to `base` (whose first component would exist).
pub fn is_hub_id(s: &str, base: &Path) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && !s.starts_with('.')
        && parts.iter().all(|p| !p.is_empty())
        && !base.join(parts[0]).exists()
}

/// Quick reachability check of `--api-url` before anything is timed.
fn check_api_url(url: &str, timeout: Duration) -> Result<()> {
    let parsed =
        reqwest::Url::parse(url).with_context(|| format!("--api-url {url}: not a valid URL"))?;
    let host = parsed
        .host_str()
        .with_context(|| format!("--api-url {url}: no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .with_context(|| format!("--api-url {url}: cannot resolve {host}"))?
        .collect();
    let mut last = None;
    for a in &addrs {
        match std::net::TcpStream::connect_timeout(a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    bail!(
        "--api-url {url} is unreachable ({}): start the server or fix the flag",
        last.map(|e| e.to_string())
            .unwrap_or_else(|| "no address".into())
    )
}

/// One tokenizer per selected backend, cheap to load (no weights): the HF tokenizer.json, the GGUF
/// vocabulary through llama.cpp (inproc, and the spawned server, which loads the same file with the
/// same llama.cpp), and an external server's `/tokenize`.
fn build_tokenizers(s: &Settings, args: &RunArgs) -> Result<Vec<Tokenizer>> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(feature = "torch")]
    if s.backends.contains(&BackendKind::Hf) {
        let (dir, _, _) = crate::backend::hf::preflight(&hf_settings(s))?;
        let path = dir.join("tokenizer.json");
        let tok = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let bos = crate::backend::hf::bos_id(&dir, &tok);
        // --chat: the checkpoint's template, then no added special tokens (as the backend does).
        let chat = if s.chat {
            Some(crate::backend::hf::chat_template(&dir)?)
        } else {
            None
        };
        let source = path.display().to_string();
        out.push(Tokenizer::new(BackendKind::Hf, source, bos, move |t| {
            let enc = match &chat {
                Some(c) => tok.encode(c.render_user(t)?, false),
                None => tok.encode(t, true),
            };
            enc.map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
        }));
    }
    let spawn = s.backends.contains(&BackendKind::Api) && s.api_url.is_none();
    #[cfg(feature = "llama")]
    if s.backends.contains(&BackendKind::Inproc) || spawn {
        let vocab = std::rc::Rc::new(crate::backend::inproc::VocabOnly::open(&s.llama.gguf)?);
        let chat = if s.chat {
            Some(std::rc::Rc::new(vocab.chat_template(&s.llama.gguf)?))
        } else {
            None
        };
        for kind in [BackendKind::Inproc, BackendKind::Api] {
            if s.backends.contains(&kind) && (kind == BackendKind::Inproc || spawn) {
                let (v, c) = (vocab.clone(), chat.clone());
                let source = format!("GGUF vocabulary of {} (llama.cpp)", s.llama.gguf.display());
                out.push(Tokenizer::new(kind, source, Some(vocab.bos()), move |t| {
                    let text = match &c {
                        Some(c) => c.render_user(t)?,
                        None => t.to_string(),
                    };
                    v.token_ids(&text).map_err(|e| e.to_string())
                }));
            }
        }
    }
    if let (true, Some(url)) = (s.backends.contains(&BackendKind::Api), &s.api_url) {
        let api = api_settings(s, args, Path::new("/dev/null"));
        if let Ok(mut b) = ApiBackend::open(&s.llama, &api) {
            // Servers without llama.cpp's /tokenize (plain OpenAI-compatible ones) are not checked.
            if b.token_ids("probe").is_ok() {
                let b = std::cell::RefCell::new(b);
                out.push(Tokenizer::new(
                    BackendKind::Api,
                    format!("{url}/tokenize"),
                    None,
                    move |t| b.borrow_mut().token_ids(t).map_err(|e| e.to_string()),
                ));
            }
        }
    }
    Ok(out)
}

/// Synthetic prompt sets for `--prompt-tokens`: per length N, `runs` different texts of exactly N
/// tokens (each timed once) plus one more for the warm-up.
fn synthetic_sets(
    lengths: &[u32],
    runs: u32,
    seed: u64,
    toks: &mut [Tokenizer],
) -> Result<Vec<PromptSet>> {
    let mut sets = Vec::new();
    for &n in lengths {
        let mut prompts = Vec::new();
        for r in 0..=runs {
            let s = seed ^ (u64::from(n) << 32) ^ u64::from(r);
            prompts.push(
                crate::bench::synthetic::exact_prompt(n, s, toks)
                    .map_err(|e| anyhow::anyhow!("--prompt-tokens {n}: {e}"))?,
            );
        }
        let warmup = prompts.pop();
        sets.push(PromptSet {
            name: format!("n{n}"),
            path: PathBuf::from(format!("(synthetic, exactly {n} tokens, seed {seed})")),
            prompts,
            repeat: Some(1),
            warmup,
        });
    }
    Ok(sets)
}

/// Prompts that do not fit the context: (set, index) → reason.
pub type TooLong = std::collections::BTreeMap<(String, usize), String>;

/// Find the prompts that cannot fit `ctx_size` with `max_new_tokens`, counted by the llama.cpp
/// tokenizer (the GGUF vocabulary) when inproc or a spawned server is selected.
fn too_long_prompts(s: &Settings, sets: &[PromptSet], toks: &mut [Tokenizer]) -> Result<TooLong> {
    let mut out = TooLong::new();
    let Some(vocab) = toks.iter_mut().find(|t| {
        t.backend == BackendKind::Inproc || (t.backend == BackendKind::Api && s.api_url.is_none())
    }) else {
        return Ok(out);
    };
    for set in sets {
        for (i, p) in set.prompts.iter().enumerate() {
            let n = vocab.encode(p).map_err(anyhow::Error::msg)?.len() as u32;
            if n + s.max_new_tokens > s.llama.ctx_size {
                let head: String = p.chars().take(40).collect();
                out.insert(
                    (set.name.clone(), i),
                    format!(
                        "prompt {}#{i} (\"{head}…\" in {}) has {n} tokens + {} new > --ctx-size {}",
                        set.name,
                        set.path.display(),
                        s.max_new_tokens,
                        s.llama.ctx_size
                    ),
                );
            }
        }
    }
    Ok(out)
}

/// Check everything that can be checked before timing: a bad file costs nothing measured.
fn validate(s: &Settings) -> Result<Vec<PromptSet>> {
    for k in &s.backends {
        if !k.is_built() {
            bail!("--backend {k}: {}", k.not_built_reason());
        }
    }
    let mut sets = Vec::new();
    for (name, path) in &s.prompt_files {
        sets.push(load_prompt_set(name, path)?);
    }
    let spawn_server = s.backends.contains(&BackendKind::Api) && s.api_url.is_none();
    if s.backends.contains(&BackendKind::Inproc) || spawn_server {
        check_gguf(&s.llama.gguf)?;
    }
    if let (true, Some(port)) = (spawn_server, s.server_port) {
        if !crate::backend::server::port_is_free(port) {
            bail!(
                "--server-port {port} is already in use on 127.0.0.1: pick another or leave it out"
            );
        }
    }
    if spawn_server && !s.server_bin.exists() {
        bail!(
            "llama-server not found at {}: run scripts/setup.sh (or pass --server-bin)",
            s.server_bin.display()
        );
    }
    #[cfg(feature = "torch")]
    if s.backends.contains(&BackendKind::Hf) {
        crate::backend::hf::preflight(&hf_settings(s))?;
    }
    if let (true, Some(url)) = (s.backends.contains(&BackendKind::Api), &s.api_url) {
        check_api_url(url, Duration::from_secs(5))?;
    }
    std::fs::create_dir_all(&s.out)
        .with_context(|| format!("--out {}: cannot create the output folder", s.out.display()))?;
    let probe = s.out.join(".ttft-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {}: output folder is not writable", s.out.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(sets)
}

#[cfg(feature = "torch")]
fn hf_settings(s: &Settings) -> crate::backend::hf::HfSettings {
    crate::backend::hf::HfSettings {
        model: s.hf_model.clone(),
        revision: s.hf_revision.clone(),
        device: s.device.clone(),
        dtype: s.dtype.clone(),
        // libtorch gets the same thread count as llama.cpp.
        threads: s.llama.threads,
        chat: s.chat,
    }
}

fn api_settings(s: &Settings, args: &RunArgs, server_log: &Path) -> ApiSettings {
    ApiSettings {
        url: s.api_url.clone(),
        endpoint: s.api_endpoint,
        flavor: args.api_flavor,
        api_model: args.api_model.clone(),
        model_alias: s.model_alias.clone(),
        server_bin: s.server_bin.clone(),
        server_log: server_log.to_path_buf(),
        allow_commit_mismatch: args.allow_commit_mismatch,
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        first_token_timeout: Duration::from_secs_f64(args.first_token_timeout),
        total_timeout: Duration::from_secs_f64(args.request_timeout),
        server_port: s.server_port,
        server_slots: match (args.concurrency, args.request_rate) {
            (Some(n), _) => n.max(1),
            (None, Some(_)) => args.server_slots.unwrap_or(4).max(1),
            (None, None) => 1,
        },
        api_key: s.api_key.clone(),
        rpc: args.rpc.clone(),
        spawn_rpc: args.spawn_rpc,
        verbose: args.verbose,
    }
}

fn open_backend(
    kind: BackendKind,
    s: &Settings,
    args: &RunArgs,
    server_log: &Path,
) -> Result<Box<dyn Backend>, OpenError> {
    match kind {
        #[cfg(feature = "torch")]
        BackendKind::Hf => Ok(Box::new(crate::backend::hf::HfBackend::open(
            &hf_settings(s),
        )?)),
        #[cfg(feature = "llama")]
        BackendKind::Inproc => Ok(Box::new(crate::backend::inproc::InprocBackend::open_with(
            &s.llama, s.chat,
        )?)),
        BackendKind::Api => Ok(Box::new(ApiBackend::open(
            &s.llama,
            &api_settings(s, args, server_log),
        )?)),
        #[allow(unreachable_patterns)] // reachable in builds without some backend features
        other => Err(OpenError::NotBuilt(other.not_built_reason().to_string())),
    }
}

/// Parse the command line and run; returns the process exit code.
pub fn run() -> Result<i32> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(a)) => *a,
        Some(Command::Compare {
            old,
            new,
            threshold,
            alpha,
        }) => return compare_cmd(&old, &new, threshold, alpha),
        None => cli.run,
    };
    let cfg = config::load(args.config.as_deref())?;
    let mut settings = resolve(&args, &cfg)?;
    if let Some((key, source)) =
        crate::secret::api_key(args.api_key_file.as_deref()).map_err(anyhow::Error::msg)?
    {
        settings.api_key = Some(key);
        settings.api_key_source = Some(source);
    }
    let mut sets = validate(&settings)?;
    let load_mode = match (args.concurrency, args.request_rate) {
        (Some(_), Some(_)) => bail!("--concurrency and --request-rate exclude each other"),
        (Some(0), None) => bail!("--concurrency must be at least 1"),
        (Some(n), None) => Some(LoadMode::Closed { concurrency: n }),
        (None, Some(r)) if r <= 0.0 || args.burstiness <= 0.0 => {
            bail!("--request-rate and --burstiness must be positive")
        }
        (None, Some(r)) => Some(LoadMode::Open {
            rate: r,
            burstiness: args.burstiness,
        }),
        (None, None) => None,
    };
    if (!args.rpc.is_empty() || args.spawn_rpc > 0) && settings.api_url.is_some() {
        bail!("--rpc / --spawn-rpc configure the spawned llama-server; drop them with --api-url");
    }
    if load_mode.is_some() && settings.backends != [BackendKind::Api] {
        bail!("--concurrency / --request-rate load the api backend only: add --backend api");
    }
    let slo = match &args.slo {
        Some(s) => crate::bench::load::parse_slo(s).map_err(anyhow::Error::msg)?,
        None => Default::default(),
    };
    let mut toks = build_tokenizers(&settings, &args)?;
    if !args.prompt_tokens.is_empty() {
        sets = synthetic_sets(&args.prompt_tokens, settings.runs, args.seed, &mut toks)?;
    }
    let parity = parity::gate(&mut toks, &sets);
    println!("{}", parity.summary());
    if args.strict_parity && !parity.problems().is_empty() {
        bail!("--strict-parity: the backends would not evaluate the same tokens (see above)");
    }
    let too_long = too_long_prompts(&settings, &sets, &mut toks)?;
    if let (Some(reason), false) = (too_long.values().next(), settings.skip_too_long) {
        bail!("{reason}: raise --ctx-size, shorten the prompt, or pass --skip-too-long");
    }
    drop(toks);
    interrupt::install();

    let started = chrono::Local::now();
    let stamp = started.format("%Y%m%d-%H%M%S").to_string();
    let csv_path = settings.out.join(format!("ttft-{stamp}.csv"));
    let json_path = settings.out.join(format!("ttft-{stamp}.json"));
    let jsonl_path = settings.out.join(format!("ttft-{stamp}.jsonl"));
    let server_log = settings.out.join(format!("ttft-{stamp}-llama-server.log"));
    let mut csv = CsvSink::create(&csv_path)
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    let mut jsonl = JsonlSink::create(&jsonl_path)
        .with_context(|| format!("cannot write {}", jsonl_path.display()))?;

    let plan = Plan {
        sets,
        runs: settings.runs,
        warmup: settings.warmup,
        max_new_tokens: settings.max_new_tokens,
        progress: !args.no_progress && args.verbose == 0 && std::io::stderr().is_terminal(),
        too_long,
        verbose: args.verbose,
        min_time: Duration::from_secs_f64(args.min_time.max(0.0)),
    };
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut backends = Vec::new();
    let mut load: Option<LoadReport> = None;
    let mut csv_error = None;
    let mut open_failed = false;
    for &kind in &settings.backends {
        if interrupt::requested() {
            break;
        }
        // Every finished run goes to disk at once (CSV and JSON lines, flushed), so a crash or a
        // kill keeps it.
        let mut sink = |r: &RunRecord| {
            if let Err(e) = csv.append(r).and_then(|_| jsonl.append(r)) {
                csv_error.get_or_insert(e);
            }
            runs.push(r.clone());
        };
        // The backend lives only inside this block: the model is unloaded / the server stopped
        // before the next backend starts, so they never compete for cores or memory.
        report::env::reset_peak_rss();
        report::gpu::mark_baseline();
        if let Some(mode) = load_mode {
            let api = ApiBackend::open(
                &settings.llama,
                &api_settings(&settings, &args, &server_log),
            );
            match api {
                Ok(b) => {
                    let (rep, lr) = run_load(&b, &plan, mode, &args, slo, &mut sink);
                    backends.push(rep);
                    load = Some(lr);
                }
                Err(e) => {
                    eprintln!("ttft: error: {kind}: {e}");
                    open_failed = true;
                    backends.push(runner::run_unopened(kind, &e.to_string(), &plan, &mut sink));
                }
            }
            continue;
        }
        let rep = match open_backend(kind, &settings, &args, &server_log) {
            Ok(mut b) => runner::run_backend(b.as_mut(), &plan, &mut sink),
            Err(e) => {
                // A backend that cannot start is a setup error (exit 2), but its rows are still
                // written and the other backends' measurements are kept.
                eprintln!("ttft: error: {kind}: {e}");
                open_failed = true;
                runner::run_unopened(kind, &e.to_string(), &plan, &mut sink)
            }
        };
        backends.push(rep);
    }

    let token_disagreements = runner::token_disagreements(&backends);
    let report = Report {
        backends,
        runs,
        token_disagreements,
        parity,
        load,
        peak_tflops: peak_tflops(&settings),
    };
    let warnings = warnings(&report);
    let first_token_mismatch = report.first_token_agreement().iter().any(|a| !a.agree);
    let env = report::env::collect(
        settings.llama.threads,
        Some(&cfg.resolve(Path::new("vendor/llama-build.json"))),
    );
    let mut settings_json = serde_json::to_value(&settings)?;
    settings_json["warnings"] = serde_json::json!(warnings);
    std::fs::write(
        &json_path,
        report::json::render(&report, &env, &settings_json, &started.to_rfc3339()),
    )
    .with_context(|| format!("cannot write {}", json_path.display()))?;

    print!("{}", report::table::render(&report, args.breakdown));
    // The fit means something for a length sweep; for a few prompt files it is noise.
    if !args.prompt_tokens.is_empty() {
        print!("{}", report::table::render_fits(&report));
    }
    if let Some(l) = &report.load {
        print!("{}", crate::bench::load::render(l));
    }
    for w in &warnings {
        eprintln!("ttft: warning: {w}");
    }
    if let Some(e) = csv_error {
        eprintln!("ttft: warning: writing {} failed: {e}", csv_path.display());
    }
    println!("CSV:  {}", csv_path.display());
    println!("JSON: {}", json_path.display());
    let mut plots = Vec::new();
    if let Some(svg) = report::plot::ttft_vs_tokens(&report) {
        plots.push((settings.out.join(format!("ttft-{stamp}-vs-tokens")), svg));
    }
    for (set, svg) in report::plot::bars_per_set(&report) {
        let safe: String = set
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        plots.push((settings.out.join(format!("ttft-{stamp}-bars-{safe}")), svg));
    }
    for (base, svg) in plots {
        let svg_path = base.with_extension("svg");
        std::fs::write(&svg_path, &svg)
            .with_context(|| format!("cannot write {}", svg_path.display()))?;
        let png_path = base.with_extension("png");
        match report::plot::svg_to_png(&svg) {
            Ok(png) => std::fs::write(&png_path, png)
                .with_context(|| format!("cannot write {}", png_path.display()))?,
            Err(e) => eprintln!(
                "ttft: warning: PNG of {} not written: {e}",
                svg_path.display()
            ),
        }
        println!("Plot: {} (+ .png)", svg_path.display());
    }
    if let Some(md) = &args.export_markdown {
        std::fs::write(md, report::markdown::render(&report, args.breakdown))
            .with_context(|| format!("--export-markdown {}: cannot write", md.display()))?;
        println!("Markdown: {}", md.display());
    }
    if interrupt::requested() {
        eprintln!(
            "ttft: interrupted: {} runs measured and written; the rest were not run",
            report.runs.len()
        );
        return Ok(interrupt::EXIT_INTERRUPTED);
    }
    if args.strict_parity && first_token_mismatch {
        eprintln!("ttft: error: --strict-parity: the backends' greedy first tokens differ (see the warnings)");
        return Ok(2);
    }
    Ok(if open_failed {
        2
    } else if report.failures() > 0 {
        1
    } else {
        0
    })
}

/// A load run on the api backend: every request becomes a row (prompt set and index of the prompt
/// it sent, its request number as run index), plus the load summary.
fn run_load(
    api: &ApiBackend,
    plan: &Plan,
    mode: LoadMode,
    args: &RunArgs,
    slo: Slo,
    sink: &mut dyn FnMut(&RunRecord),
) -> (runner::BackendReport, LoadReport) {
    let prompts: Vec<(String, usize, String)> = plan
        .sets
        .iter()
        .flat_map(|s| {
            s.prompts
                .iter()
                .enumerate()
                .map(|(i, p)| (s.name.clone(), i, p.clone()))
        })
        .collect();
    let texts: Vec<String> = prompts.iter().map(|p| p.2.clone()).collect();
    let n = args
        .num_requests
        .unwrap_or_else(|| match (mode, args.duration) {
            (LoadMode::Open { rate, .. }, Some(d)) => (rate * d).ceil() as usize,
            (_, Some(_)) => usize::MAX,
            _ => texts.len() * plan.runs as usize,
        });
    let duration = args.duration.map(Duration::from_secs_f64);
    let mut samples = Vec::new();
    let load_plan = crate::bench::load::LoadPlan {
        mode,
        requests: n,
        duration,
        max_new_tokens: plan.max_new_tokens,
        seed: args.seed,
    };
    let (secs, max_in_flight) = api.run_load(&texts, load_plan, &mut |i, r| {
        let (set, idx, text) = &prompts[i % prompts.len()];
        let rec = match r {
            Ok(m) => {
                samples.push(LoadSample {
                    ttft_ms: Some(m.ttft_ms),
                    tpot_ms: m.decode_ms_per_token,
                    itl_ms: m.itl_ms.clone(),
                    e2e_ms: Some(m.e2e_ms),
                    output_tokens: m.generated_tokens,
                });
                RunRecord {
                    prompt_type: set.clone(),
                    prompt_idx: *idx,
                    run_idx: i as u32,
                    runner: BackendKind::Api,
                    prompt_text: text.clone(),
                    ok: true,
                    error: None,
                    flags: runner::row_flags(&m, None),
                    measurement: Some(m),
                }
            }
            Err(e) => {
                samples.push(LoadSample {
                    ttft_ms: None,
                    tpot_ms: None,
                    itl_ms: vec![],
                    e2e_ms: None,
                    output_tokens: 0,
                });
                RunRecord {
                    prompt_type: set.clone(),
                    prompt_idx: *idx,
                    run_idx: i as u32,
                    runner: BackendKind::Api,
                    prompt_text: text.clone(),
                    ok: false,
                    error: Some(e.to_string()),
                    flags: Vec::new(),
                    measurement: None,
                }
            }
        };
        sink(&rec);
    });
    let lr =
        crate::bench::load::summarise(mode, &samples, secs, max_in_flight, api.server_slots(), slo);
    let rep = runner::report(api, Default::default());
    (rep, lr)
}

/// The dense peak of the GPU each backend runs on, when there is a known NVIDIA GPU: hf on
/// `--device cuda[:N]` in its dtype; inproc and the spawned server with GPU layers (f16 kernels).
fn peak_tflops(s: &Settings) -> std::collections::BTreeMap<BackendKind, f64> {
    let gpus = report::gpu::query();
    let mut out = std::collections::BTreeMap::new();
    let Some(first) = gpus.first() else {
        return out;
    };
    if let Some(idx) = s.device.strip_prefix("cuda") {
        let i: u32 = idx.trim_start_matches(':').parse().unwrap_or(0);
        if let Some(p) = gpus
            .iter()
            .find(|g| g.index == i)
            .and_then(|g| report::gpu::peak_tflops(&g.name, &s.dtype))
        {
            out.insert(BackendKind::Hf, p);
        }
    }
    if s.llama.n_gpu_layers > 0 {
        if let Some(p) = report::gpu::peak_tflops(&first.name, "f16") {
            out.insert(BackendKind::Inproc, p);
            if s.api_url.is_none() {
                out.insert(BackendKind::Api, p);
            }
        }
    }
    out
}

/// Things a reader must know before trusting the table.
fn warnings(report: &Report) -> Vec<String> {
    let mut w = Vec::new();
    for p in report.parity.problems() {
        let counts: Vec<String> = p.counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
        w.push(format!(
            "prompt {}#{}: token ids differ between backends ({}){}",
            p.prompt_type,
            p.prompt_idx,
            counts.join(", "),
            if p.doubled_bos.is_empty() {
                String::new()
            } else {
                ", doubled BOS".into()
            }
        ));
    }
    for a in report.first_token_agreement().iter().filter(|a| !a.agree) {
        let t: Vec<String> = a
            .first_tokens
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        w.push(format!(
            "prompt {}#{}: greedy first tokens differ ({})",
            a.prompt_type,
            a.prompt_idx,
            t.join(", ")
        ));
    }
    for s in report.summaries() {
        if !s.outliers.is_empty() {
            w.push(format!(
                "{} {}: {} statistical outlier(s) among {} runs (median/MAD); consider more --runs or a quieter machine",
                s.runner, s.prompt_type, s.outliers.len(), s.ttft.ok
            ));
        }
        if s.first_run_much_slower {
            w.push(format!(
                "{} {}: the first timed run was much slower than the rest; consider more --warmup",
                s.runner, s.prompt_type
            ));
        }
    }
    for (set, idx, counts) in &report.token_disagreements {
        let c: Vec<String> = counts
            .iter()
            .map(|(k, v)| format!("{k}={}", v.map_or("?".into(), |n| n.to_string())))
            .collect();
        w.push(format!(
            "prompt {set}#{idx}: backends disagree on prompt tokens ({})",
            c.join(", ")
        ));
    }
    let hits = report
        .runs
        .iter()
        .filter(|r| r.flags.iter().any(|f| f.starts_with("cache_hit")))
        .count();
    if hits > 0 {
        w.push(format!("{hits} api runs reused the server's prompt cache (cache_n > 0): those TTFTs are not cold prefills"));
    }
    if let Some(api) = report.backends.iter().find(|b| b.name == BackendKind::Api) {
        if api.info.get("flavor").and_then(|f| f.as_str()) == Some("openai") {
            w.push("api (openai flavor): the server's prompt cache cannot be switched off through the OpenAI API and no cache_n is reported; a server that reuses prefixes (llama-cpp-python does) can make repeated prompts faster".into());
        }
    }
    let si = |k: BackendKind| {
        report
            .backends
            .iter()
            .find(|b| b.name == k)
            .and_then(|b| b.info.get("system_info"))
            .and_then(|v| v.as_str())
            .map(cpu_features)
    };
    if let (Some(a), Some(b)) = (si(BackendKind::Inproc), si(BackendKind::Api)) {
        if a != b {
            w.push(format!(
                "ggml CPU features differ between inproc ({}) and llama-server ({}): rebuild with scripts/setup.sh",
                a.join(" "),
                b.join(" ")
            ));
        }
    }
    w
}
