//! Flags of `ttft run` (clap only: every check and default lives in `Settings::resolve`).

use crate::backend::api::{ApiFlavor, Endpoint};
use clap::Args;
use std::path::PathBuf;

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
    #[arg(long, value_delimiter = ',', value_name = "FILE,...")]
    pub gguf: Vec<PathBuf>,
    /// hf: Hugging Face checkpoint folder or hub id (HF_HOME, HF_HUB_OFFLINE, HF_TOKEN honoured) [config: hf_model].
    #[arg(long, value_delimiter = ',', value_name = "DIR|ID,...")]
    pub hf_model: Vec<String>,
    /// hf: hub revision (branch, tag or commit) for a hub id [config: hf_revision, default main].
    #[arg(long, value_name = "REV")]
    pub hf_revision: Option<String>,
    /// hf: cpu, cuda, cuda:N or mps [config: device, default cpu].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// hf: f32, f16 or bf16 [config: dtype, default f32].
    #[arg(long, value_delimiter = ',', value_name = "DTYPE,...")]
    pub dtype: Vec<String>,
    /// hf: the projections' GEMMs: avx512 (ttft's kernels, weights in panels; f32 on CPUs with
    /// AVX-512F, bf16 with AVX512_BF16), onednn (weights packed once at load; CPU), mkl
    /// (libtorch's matmul: MKL on the CPU, the GPU's BLAS elsewhere) or auto (avx512 where the CPU
    /// runs it for the dtype, else onednn where the CPU has native kernels, else mkl)
    /// [config: hf_kernels, default auto].
    /// A list compares them in one run.
    #[arg(long, value_delimiter = ',', value_name = "auto|mkl|onednn|avx512,...")]
    pub hf_kernels: Vec<String>,
    /// Prompt file, one prompt per line (blank lines ignored); NAME=FILE names the set. Repeatable;
    /// replaces the config's short_prompts/long_prompts.
    #[arg(long, value_name = "[NAME=]FILE")]
    pub prompts: Vec<String>,
    /// JSONL requests, one per line: {"prompt": "...", "output_tokens": N} (output_tokens
    /// optional: that request's max new tokens) or ShareGPT {"conversations": [{"from": "human",
    /// "value": "..."}, ...]} (the first human turn is sent). One prompt set named after the file
    /// stem; replaces the config's prompt files, combines with --prompts.
    #[arg(long, value_name = "FILE")]
    pub dataset: Option<PathBuf>,
    /// Draw N requests of --dataset with --seed (deterministic, without replacement).
    #[arg(long, value_name = "N")]
    pub dataset_sample: Option<usize>,
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
    /// Generate exactly --max-new-tokens on every backend, so TPOT and E2E compare equal work:
    /// in-process no end-of-generation token can be sampled, llama-server gets `ignore_eos`,
    /// an OpenAI-compatible server `ignore_eos` and `min_tokens` (dropped if it rejects them;
    /// a row that still stops early is flagged `ignore_eos_not_honoured`).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Threads, the same for inproc, the spawned server and libtorch; 0 = all cores; a comma list
    /// is a grid axis, as every list-valued setting below [config: threads].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub threads: Vec<u32>,
    /// Context size in tokens, the same for inproc and the spawned server [config: ctx_size, default 2048].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub ctx_size: Vec<u32>,
    /// Logical batch size (`-b`), the same on both llama.cpp sides [default: min(2048, ctx)].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub batch_size: Vec<u32>,
    /// Physical batch size (`-ub`), the same on both llama.cpp sides [default: min(512, ctx)].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub ubatch_size: Vec<u32>,
    /// Flash attention on both llama.cpp sides: auto, on, off [default: auto, as both default].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "MODE,...")]
    pub flash_attn: Vec<crate::backend::FlashAttn>,
    /// KV cache type of K on both llama.cpp sides (f16, q8_0, q4_0, ...) [default: f16].
    #[arg(long, value_delimiter = ',', value_name = "TYPE,...")]
    pub cache_type_k: Vec<String>,
    /// KV cache type of V on both llama.cpp sides [default: f16].
    #[arg(long, value_delimiter = ',', value_name = "TYPE,...")]
    pub cache_type_v: Vec<String>,
    /// Layers offloaded to a GPU, the same on both llama.cpp sides; 999 = all [config:
    /// n_gpu_layers, default 999 in a `cuda` or `metal` build, else 0].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub n_gpu_layers: Vec<u32>,
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
    pub api_flavor: Option<ApiFlavor>,
    /// Start every timed run and warm-up with a unique 5-token prefix (four words and a newline),
    /// on every backend, so no server-side prefix cache can serve a run warm [default: on when the
    /// api backend talks to an OpenAI-compatible server (openai flavor), else off].
    #[arg(long, conflicts_with = "no_cache_bust")]
    pub cache_bust: bool,
    /// No cache-busting prefix, even in the openai flavor (rows a cache served are still flagged
    /// `cache_hit:N` where the server reports cached tokens).
    #[arg(long)]
    pub no_cache_bust: bool,
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
    /// Connection setup timeout for api requests (DNS, TCP, TLS handshake), seconds.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// api: open each timed request's connection inside the clock (what a client without
    /// keep-alive pays). By default it is opened just before the clock starts and its setup time
    /// is reported apart as connect_ms.
    #[arg(long)]
    pub fresh_connection: bool,
    /// api: also trust the certificates in this PEM file for an https:// --api-url (e.g. a
    /// self-signed server certificate or a private CA).
    #[arg(long, value_name = "FILE")]
    pub api_ca_cert: Option<PathBuf>,
    /// api: fail a run when no token arrived this many seconds after sending.
    #[arg(long, value_name = "S", default_value_t = 300.0)]
    pub first_token_timeout: f64,
    /// api: fail a run that takes longer than this in total, seconds.
    #[arg(long, value_name = "S", default_value_t = 600.0)]
    pub request_timeout: f64,
    /// api: each untimed request before timing (/props, /v1/models, /metrics, /tokenize,
    /// /apply-template) waits at most this long, seconds; past it ttft stops (exit 2) naming the
    /// server and the request. The timed runs keep their own timeouts.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    pub prepare_timeout: f64,
    /// Output folder for the CSV, JSON and server log [config: out, default results].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// A prompt longer than the context becomes a failed row with the reason instead of an error.
    #[arg(long)]
    pub skip_too_long: bool,
    /// hf: run prompts past the checkpoint's position limit (GPT-2's n_positions, GPT-NeoX's
    /// max_position_embeddings) anyway. GPT-2 then fails inside libtorch and the run is a failed
    /// row; for checking that path, or a config.json known to understate its model's limit.
    #[arg(long)]
    pub ignore_position_limit: bool,
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
    /// One table row per prompt (the default rows summarise each prompt set from its prompts).
    #[arg(long)]
    pub per_prompt: bool,
    /// Also write the summary as a Markdown table to FILE (for pull requests).
    #[arg(long, value_name = "FILE")]
    pub export_markdown: Option<PathBuf>,
    /// Load (api only): N clients in a closed loop, each sending its next request when the last
    /// one ended. A list (1,2,4,8) is a sweep: one load point per value on one server. The
    /// spawned server gets the largest N slots (--parallel N), each with the full context.
    #[arg(long, value_name = "N[,N…]", value_delimiter = ',')]
    pub concurrency: Vec<u32>,
    /// Load (api only): open loop at R requests per second on average, TTFT counted from each
    /// request's scheduled send. A list (1,2,4) is a sweep, one load point per rate.
    #[arg(long, value_name = "R[,R…]", value_delimiter = ',')]
    pub request_rate: Vec<f64>,
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
    /// Load: find the highest request rate (or, with --concurrency, the most clients) at which
    /// these percentiles hold, e.g. ttft_p99=500,tpot_p99=50 (ms): doubling from the start
    /// (--request-rate R or --concurrency N; default 1 req/s), then bisection. Each probe is a
    /// full load point with its own warm-up, requests and rows.
    #[arg(long, value_name = "OBJECTIVES")]
    pub max_goodput: Option<String>,
    /// --max-goodput: stop bisecting when the bracket is this narrow, relative.
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    pub goodput_tolerance: f64,
    /// Load: run every load point (or the whole --max-goodput search) R times, interleaved, each
    /// with its own warm-up and arrival schedule; the report gives each figure's mean with a 95%
    /// confidence interval over the repeats (and the saturation point's, for a search).
    #[arg(long, value_name = "R", default_value_t = 1)]
    pub repeat: u32,
    /// llama.cpp RPC workers (host:port,...) for the spawned llama-server to offload the model to.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub rpc: Vec<String>,
    /// Start N local rpc-server workers on 127.0.0.1 and offload the spawned server to them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub spawn_rpc: u32,
    /// Load: slots of the spawned server for --request-rate (default 4; --concurrency uses N).
    #[arg(long, value_name = "N")]
    pub server_slots: Option<u32>,
    /// Context depth, as llama-bench's -d: before each timed run every backend holds N tokens of
    /// a fixed document in its cache and the prompt is prefilled on top of it; 0 is the cold
    /// case. A list gives one case per depth on the same opened backend.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub depth: Vec<u32>,
    /// The document --depth takes its context from [default: data/depth_context.txt].
    #[arg(long, value_name = "FILE")]
    pub depth_doc: Option<PathBuf>,
    /// Replay conversations turn by turn, up to K user turns each: turn k is measured with
    /// turns 1..k-1 and their answers in the cache (warm) or sent whole (cold). The
    /// conversations are --dataset's ShareGPT lines [default: data/conversations.jsonl]; the
    /// model's chat template renders them, the same text for every backend.
    #[arg(long, value_name = "K")]
    pub turns: Option<u32>,
    /// --turns: the cache states to run, one pass each [default: warm,cold].
    #[arg(long, value_delimiter = ',', value_name = "warm,cold")]
    pub turns_cache: Vec<String>,
    /// More output on stderr: -v one line per run, -vv also HTTP details (never the API key).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
