//! `hf`: a Hugging Face checkpoint (config.json + safetensors + tokenizer.json) run in this process
//! on libtorch through tch, with the architectures of `crate::models`.
//!
//! Per timed run, with a fresh KV cache made before the clock starts: tokenize (the tokenizer's own
//! post-processor decides BOS/EOS) → prefill (logits of the last position only) → greedy argmax →
//! token id on the host → detokenize. On CUDA kernels run asynchronously: the prefill part ends with
//! an explicit device synchronisation, and copying the argmax id to the host is itself a
//! synchronisation point, so the clock can never stop before the GPU has finished.

use super::detok::{Detokenizer, TextOf};
use super::hf_text::{self, Spelling};
use super::{
    decode_tail, Backend, BackendKind, FirstToken, Generator, InprocClock, Measurement, OpenError,
    RunError,
};
use crate::bench::chat::ChatTemplate;
use crate::models::{self, layers::Decoder, layers::KvCache, onednn::Kernels};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

/// How to run the hf backend.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HfSettings {
    /// Local folder or hub id.
    pub model: String,
    /// Hub revision (branch, tag or commit) for hub ids.
    pub revision: Option<String>,
    /// "cpu", "cuda", "cuda:N" or "mps".
    pub device: String,
    /// "f32", "f16" or "bf16".
    pub dtype: String,
    /// `--hf-kernels`: "auto", "mkl", "onednn" or "avx512".
    pub kernels: String,
    /// libtorch intra-op threads (the same number llama.cpp gets).
    pub threads: u32,
    /// `--chat`: prompts are one user message put through the checkpoint's chat template.
    pub chat: bool,
}

/// Parse `--device`.
pub fn parse_device(s: &str) -> Result<Device, OpenError> {
    let bad = || OpenError::Model(format!("--device {s}: expected cpu, cuda, cuda:N or mps"));
    let d = match s {
        "cpu" => Device::Cpu,
        "mps" => Device::Mps,
        "cuda" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => Device::Cuda(n.parse().map_err(|_| bad())?),
            None => return Err(bad()),
        },
    };
    match d {
        Device::Cuda(n) => {
            let count = tch::Cuda::device_count();
            if count == 0 {
                return Err(OpenError::Model(format!(
                    "--device {s}: libtorch sees no CUDA device on this machine (use --device cpu)"
                )));
            }
            if n as i64 >= count {
                return Err(OpenError::Model(format!(
                    "--device {s}: only {count} CUDA device(s) present"
                )));
            }
        }
        Device::Mps if !tch::utils::has_mps() => {
            return Err(OpenError::Model(format!(
                "--device {s}: this libtorch has no MPS support (use --device cpu)"
            )))
        }
        _ => {}
    }
    Ok(d)
}

/// Parse `--dtype`.
pub fn parse_dtype(s: &str) -> Result<Kind, OpenError> {
    match s {
        "f32" | "float32" => Ok(Kind::Float),
        "f16" | "float16" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        _ => Err(OpenError::Model(format!(
            "--dtype {s}: expected f32, f16 or bf16"
        ))),
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// A local folder, or a hub id resolved through the HF cache (HF_HOME), downloading unless
/// HF_HUB_OFFLINE is set (HF_TOKEN for gated repositories).
pub fn resolve_model(spec: &str, revision: Option<&str>) -> Result<PathBuf, OpenError> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let looks_local =
        spec.starts_with('.') || spec.starts_with('/') || spec.matches('/').count() != 1;
    if p.exists() || looks_local {
        return Err(OpenError::Model(format!(
            "--hf-model {spec}: no such checkpoint folder (run scripts/setup.sh for the default model, or pass a folder or hub id)"
        )));
    }
    use hf_hub::{Repo, RepoType};
    let rev = revision.unwrap_or("main").to_string();
    let repo = Repo::with_revision(spec.to_string(), RepoType::Model, rev.clone());
    let offline = std::env::var("HF_HUB_OFFLINE")
        .map(|v| truthy(&v))
        .unwrap_or(false);
    let cache = hf_hub::Cache::from_env();
    if offline {
        let cached = cache.repo(repo.clone());
        return match cached.get("config.json") {
            Some(cfg) => Ok(cfg.parent().expect("file in a folder").to_path_buf()),
            None => Err(OpenError::Model(format!(
                "--hf-model {spec} (revision {rev}): HF_HUB_OFFLINE is set and it is not in the cache {} (download it first or unset HF_HUB_OFFLINE)",
                cache.path().display()
            ))),
        };
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_token(std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()))
        .build()
        .map_err(|e| OpenError::Model(format!("--hf-model {spec}: {e}")))?;
    let r = api.repo(repo);
    let fetch = |f: &str| {
        let _says = super::waiting::Waiting::start(
            &format!("the Hugging Face hub: {spec} {f}"),
            "download",
            "no time limit",
        );
        r.get(f).map_err(|e| {
            OpenError::Model(format!(
                "--hf-model {spec} (revision {rev}): cannot fetch {f}: {e}"
            ))
        })
    };
    let cfg = fetch("config.json")?;
    fetch("tokenizer.json")?;
    let dir = cfg.parent().expect("file in a folder").to_path_buf();
    match fetch("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let mut shards: Vec<String> = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                fetch(&s)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors")?;
        }
    }
    let _ = fetch("generation_config.json");
    Ok(dir)
}

/// The libtorch version of the wheel the binary was linked against (its `version.py`).
pub fn libtorch_version() -> Option<String> {
    let lib = PathBuf::from(env!("TTFT_LIBTORCH_LIB"));
    let text = std::fs::read_to_string(lib.parent()?.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim_matches(['\'', '"']).to_string())
}

/// The checkpoint's chat template: tokenizer_config.json's `chat_template` (a string, or a list
/// of named templates: "default" is used) or a `chat_template.jinja` file, with the BOS/EOS texts.
pub fn chat_template(dir: &Path) -> Result<ChatTemplate, OpenError> {
    let cfg: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let from_cfg = match cfg.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template").and_then(|s| s.as_str()).map(String::from)),
        _ => None,
    };
    let src = from_cfg
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok())
        .ok_or_else(|| {
            OpenError::Model(format!(
                "--chat: {} has no chat template (tokenizer_config.json chat_template or chat_template.jinja)",
                dir.display()
            ))
        })?;
    let special = |k: &str| {
        cfg.get(k)
            .and_then(|b| {
                b.as_str()
                    .or_else(|| b.get("content").and_then(|c| c.as_str()))
            })
            .unwrap_or("")
            .to_string()
    };
    ChatTemplate::new(&src, &special("bos_token"), &special("eos_token"))
        .map_err(|e| OpenError::Model(format!("--chat: {}: {e}", dir.display())))
}

/// The BOS id: tokenizer_config.json's `bos_token` (a string or {content}), else config.json's
/// `bos_token_id`.
pub fn bos_id(dir: &Path, tok: &Tokenizer) -> Option<u32> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    };
    let from_tok = read("tokenizer_config.json").and_then(|c| {
        let b = c.get("bos_token")?;
        let s = b
            .as_str()
            .or_else(|| b.get("content").and_then(|x| x.as_str()))?;
        tok.token_to_id(s)
    });
    from_tok.or_else(|| {
        read("config.json")
            .and_then(|c| c.get("bos_token_id").and_then(|x| x.as_u64()))
            .map(|x| x as u32)
    })
}

fn eos_ids(dir: &Path, cfg: &serde_json::Value) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut add = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::Number(n)) => ids.extend(n.as_i64()),
        Some(serde_json::Value::Array(a)) => ids.extend(a.iter().filter_map(|x| x.as_i64())),
        _ => {}
    };
    add(cfg.get("eos_token_id"));
    if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
        if let Ok(g) = serde_json::from_str::<serde_json::Value>(&text) {
            add(g.get("eos_token_id"));
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// The libtorch backend.
pub struct HfBackend {
    decoder: Decoder,
    tokenizer: Tokenizer,
    spelling: Spelling,
    device: Device,
    eos: Vec<i64>,
    load_ms: f64,
    info: serde_json::Value,
    chat: Option<ChatTemplate>,
    /// `--ignore-eos`: the end-of-generation ids on the device, their logits set to -inf before
    /// every greedy argmax (None: any token may be picked).
    banned: Option<Tensor>,
    /// The cached context (`set_context`): a KV cache prefilled once, shared by every run.
    context: Option<KvCache>,
}

/// The cheap checks, run before anything is timed: device, dtype, the checkpoint folder, its
/// config.json (and a supported model_type) and tokenizer.json. Returns the folder.
pub fn preflight(s: &HfSettings) -> Result<(PathBuf, Device, Kind), OpenError> {
    let device = parse_device(&s.device)?;
    let kind = parse_dtype(&s.dtype)?;
    Kernels::resolve(&s.kernels, device, kind).map_err(OpenError::Model)?;
    let dir = resolve_model(&s.model, s.revision.as_deref())?;
    let cfg = models::read_config(&dir).map_err(|e| OpenError::Model(e.to_string()))?;
    let model_type = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    if !models::SUPPORTED.contains(&model_type) {
        return Err(OpenError::Model(
            models::ModelError::UnknownArchitecture(model_type.to_string()).to_string(),
        ));
    }
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(OpenError::Model(format!(
            "{}: missing (the hf backend needs the checkpoint's tokenizer.json)",
            tok_path.display()
        )));
    }
    Ok((dir, device, kind))
}

impl HfBackend {
    /// Resolve, read and place the checkpoint (timed as load: read + to device + dtype cast).
    pub fn open(s: &HfSettings) -> Result<Self, OpenError> {
        let (dir, device, kind) = preflight(s)?;
        set_threads(s.threads);
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| OpenError::Model(format!("{}: {e}", tok_path.display())))?;
        let cfg = models::read_config(&dir).map_err(|e| OpenError::Model(e.to_string()))?;
        let t0 = Instant::now();
        let kernels = Kernels::resolve(&s.kernels, device, kind).map_err(OpenError::Model)?;
        let mut loaded =
            models::load(&dir, device, kind).map_err(|e| OpenError::Model(e.to_string()))?;
        // Packing is part of loading: it happens once, before anything is timed.
        loaded
            .decoder
            .use_kernels(kernels)
            .map_err(|e| OpenError::Model(format!("--hf-kernels {}: {e}", kernels.name())))?;
        // The weights' copies to the device are asynchronous: load ends when they are there.
        sync_device(device);
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let info = serde_json::json!({
            "model_dir": dir.display().to_string(),
            "model_type": loaded.model_type,
            "n_params": loaded.n_params,
            "model_shape": loaded.shape,
            "dtype": s.dtype,
            "hf_kernels": kernels.name(),
            // What runs the rest of a layer: ttft's CPU kernels (attention, RMSNorm, silu·up)
            // or libtorch's ops (SDPA and op chains).
            "layer_kernels": loaded.decoder.layer_kernels(),
            // How many layers run as one call into those kernels (`models::fused_layer`).
            "whole_layers": loaded.decoder.whole_layer_count(),
            "weight_bytes": loaded.decoder.weight_bytes(),
            // How much of the process the kernel put on transparent huge pages after the load
            // (`models::prefer_huge_pages`): the weights' stream runs faster there.
            "weights_on_huge_pages_mib": crate::report::env::huge_pages_mib(),
            // The dtype the weights are read in, by its short name (the roofline's peak).
            "weight_dtype": models::onednn::dtype_name(kind),
            "native_gemm": device != Device::Cpu || models::onednn::cpu_has_gemm_for(kind),
            "device": s.device,
            "threads": tch::get_num_threads(),
            "libtorch_version": libtorch_version(),
            // The CUDA release the torch wheel was built for (its version.py), "none" for CPU wheels.
            "libtorch_cuda": env!("TTFT_LIBTORCH_CUDA"),
            "tch_version": "0.26.0",
            "cuda_available": tch::Cuda::is_available(),
            "cuda_devices": tch::Cuda::device_count(),
        });
        let chat = if s.chat {
            Some(chat_template(&dir)?)
        } else {
            None
        };
        Ok(Self {
            chat,
            eos: eos_ids(&dir, &cfg),
            decoder: loaded.decoder,
            spelling: Spelling::of(&tokenizer),
            tokenizer,
            device,
            load_ms,
            info,
            banned: None,
            context: None,
        })
    }

    /// `--ignore-eos`: the checkpoint's end-of-generation ids (config.json and
    /// generation_config.json `eos_token_id`, what the decode loop stops at) can never be
    /// sampled, the first token included, so every run generates exactly max_new_tokens. The
    /// index tensor is made on the device here, outside any clock.
    pub fn set_ignore_eos(&mut self, on: bool) {
        self.banned = (on && !self.eos.is_empty())
            .then(|| Tensor::from_slice(&self.eos).to_device(self.device));
        self.info["ignore_eos"] = serde_json::json!({"requested": on, "masked_eog_ids": if on { self.eos.clone() } else { Vec::new() }});
    }

    /// The greedy id of the last logits, on the host: argmax on the device (EOG ids masked with
    /// `--ignore-eos`); `int64_value` copies the id to the host, a synchronisation point.
    fn greedy(&self, logits: &Tensor) -> i64 {
        match &self.banned {
            Some(b) => logits
                .index_fill(-1, b, f64::NEG_INFINITY)
                .argmax(-1, false)
                .int64_value(&[0]),
            None => logits.argmax(-1, false).int64_value(&[0]),
        }
    }

    /// Token ids the tokenizer produces for `prompt`, special tokens as its post-processor adds
    /// them. With `--chat` the prompt goes through the chat template first and is encoded without
    /// added special tokens, as transformers' `apply_chat_template(tokenize=True)` does.
    pub fn ids(&self, prompt: &str) -> Result<Vec<u32>, RunError> {
        if let Some(t) = &self.chat {
            let text = t.render_user(prompt).map_err(RunError::new)?;
            return self
                .tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| RunError::new(format!("tokenize: {e}")));
        }
        // After a cached context the prompt continues the sequence: no added special tokens.
        self.tokenizer
            .encode(prompt, self.context.is_none())
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| RunError::new(format!("tokenize: {e}")))
    }

    fn sync(&self) {
        sync_device(self.device);
    }
}

/// Wait until every kernel queued on `device` has finished, so a clock read next does not book
/// asynchronous work to a later part. CUDA: `cudaDeviceSynchronize` through tch. MPS: tch 0.26
/// has no binding of `torch.mps.synchronize()`, so a one-element tensor is made on the device and
/// read back; PyTorch's MPS backend runs everything on one in-order command stream and its copy
/// to the host commits that stream and waits for it, so when the value is on the host every
/// kernel queued before it has finished (the same guarantee `synchronize` gives, for a few
/// microseconds of extra work). The CPU runs synchronously: nothing to wait for.
fn sync_device(device: Device) {
    match device {
        Device::Cuda(i) => tch::Cuda::synchronize(i as i64),
        Device::Mps => {
            let _ = Tensor::zeros([1], (Kind::Float, device)).double_value(&[0]);
        }
        _ => {}
    }
}

fn set_threads(n: u32) {
    static INTEROP: std::sync::Once = std::sync::Once::new();
    // Inter-op parallelism stays at 1: one forward pass at a time, like llama.cpp.
    INTEROP.call_once(|| tch::set_num_interop_threads(1));
    tch::set_num_threads(n as i32);
}

impl Backend for HfBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Hf
    }

    fn load_ms(&self) -> f64 {
        self.load_ms
    }

    fn info(&self) -> serde_json::Value {
        self.info.clone()
    }

    fn token_ids(&mut self, prompt: &str) -> Result<Vec<u32>, RunError> {
        self.ids(prompt)
    }

    fn set_context(&mut self, ids: &[u32]) -> Result<(), RunError> {
        let _guard = tch::no_grad_guard();
        self.context = None;
        if ids.is_empty() {
            return Ok(());
        }
        // Untimed: the context is prefilled once per depth, outside every clock.
        let mut cache = self.decoder.new_cache();
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let input = Tensor::from_slice(&ids).to_device(self.device);
        let _ = self.decoder.forward(&input, &mut cache, false);
        self.sync();
        self.context = Some(cache);
        Ok(())
    }

    fn measure(&mut self, prompt: &str, max_new_tokens: u32) -> Result<Measurement, RunError> {
        let _guard = tch::no_grad_guard();
        // Outside the clock: a fresh KV cache, or a copy of the cached context (its tensors are
        // shared, never written: a run's keys and values go to new tensors).
        let mut cache = match &self.context {
            Some(c) => c.share(),
            None => self.decoder.new_cache(),
        };
        let cached = cache.len();

        let start = Instant::now();
        let ids = self.ids(prompt)?;
        let tokenized = Instant::now();
        if ids.is_empty() {
            return Err(RunError::new("prompt tokenized to zero tokens"));
        }
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let input = Tensor::from_slice(&ids).to_device(self.device);
        let logits = self.decoder.forward(&input, &mut cache, false);
        // CUDA: wait for the prefill kernels so their time is not booked as sampling.
        self.sync();
        let prefilled = Instant::now();
        let next = self.greedy(&logits);
        let sampled = Instant::now();
        // The prompt's last tokens are the first token's context, so a decoder that strips the
        // leading space of the first token it sees (SentencePiece) keeps " Paris" a " Paris".
        let context: Vec<u32> = ids[ids.len().saturating_sub(CONTEXT_TOKENS)..]
            .iter()
            .map(|&i| i as u32)
            .collect();
        let mut gen = HfGen {
            be: self,
            cache: &mut cache,
        };
        let mut detok = Detokenizer::new(&context, CONTEXT_TOKENS, &gen);
        let first = FirstToken::detokenize(next as u32, &mut detok, &gen);
        let clock = InprocClock {
            start,
            tokenized,
            prefilled,
            sampled,
            first_text: Instant::now(),
        };
        let tail = decode_tail(&first, max_new_tokens, &clock, &mut detok, &mut gen)?;
        let mut m = clock.measurement(ids.len(), first, tail, &gen);
        m.cached_tokens = u32::try_from(cached).ok();
        Ok(m)
    }
}

/// Tokens of context the detokenizer decodes before a new token (vLLM uses a handful too): one is
/// enough for a Strip decoder, a few more cover prompts that end in special tokens.
const CONTEXT_TOKENS: usize = 4;

/// The decode loop's view of the backend: one token per step through the run's KV cache.
struct HfGen<'a> {
    be: &'a HfBackend,
    cache: &'a mut KvCache,
}

impl TextOf for HfGen<'_> {
    fn text_of(&self, ids: &[u32]) -> Vec<u8> {
        hf_text::text_of(&self.be.tokenizer, ids)
    }
}

impl Generator for HfGen<'_> {
    fn step(&mut self, prev: u32) -> Result<u32, RunError> {
        let input = Tensor::from_slice(&[i64::from(prev)]).to_device(self.be.device);
        let logits = self.be.decoder.forward(&input, self.cache, false);
        Ok(self.be.greedy(&logits) as u32)
    }

    fn is_eog(&self, id: u32) -> bool {
        self.be.eos.contains(&i64::from(id))
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        hf_text::token_bytes(&self.be.tokenizer, self.be.spelling, id)
    }
}
