//! From settings to backends: each backend's settings at a point, opening a backend, and the cheap
//! tokenizers (no weights) the parity gate compares.

use crate::backend::api::{ApiBackend, ApiSettings};
use crate::backend::{Backend, BackendKind, OpenError};
use crate::bench::parity::Tokenizer;
use crate::settings::{Settings, SettingsPoint};
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// The hf backend's settings at `point`.
#[cfg(feature = "torch")]
pub fn hf_settings(s: &Settings, point: &SettingsPoint) -> crate::backend::hf::HfSettings {
    crate::backend::hf::HfSettings {
        model: point.hf_model.clone(),
        revision: s.hf_revision.clone(),
        device: s.device.clone(),
        dtype: point.dtype.clone(),
        kernels: point.hf_kernels.clone(),
        // libtorch gets the same thread count as llama.cpp.
        threads: point.llama.threads,
        chat: s.chat,
    }
}

/// The api backend's settings (`server_log`: where a spawned server logs).
pub fn api_settings(s: &Settings, server_log: &Path) -> ApiSettings {
    let a = &s.api;
    ApiSettings {
        url: a.url.clone(),
        endpoint: a.endpoint,
        flavor: a.flavor,
        api_model: a.api_model.clone(),
        model_alias: a.model_alias.clone(),
        server_bin: a.server_bin.clone(),
        server_log: server_log.to_path_buf(),
        allow_commit_mismatch: a.allow_commit_mismatch,
        connect_timeout: Duration::from_secs_f64(a.connect_timeout_s),
        fresh_connection: a.fresh_connection,
        ca_cert: a.ca_cert.clone(),
        first_token_timeout: Duration::from_secs_f64(a.first_token_timeout_s),
        total_timeout: Duration::from_secs_f64(a.request_timeout_s),
        prepare_timeout: Duration::from_secs_f64(a.prepare_timeout_s),
        server_port: a.server_port,
        server_slots: a.server_slots,
        api_key: a.api_key.clone(),
        rpc: a.rpc.clone(),
        spawn_rpc: a.spawn_rpc,
        verbose: s.output.verbose,
        ignore_eos: s.ignore_eos,
    }
}

/// Open (load, start) `kind` at `point`: timed as load time, never as TTFT.
pub fn open_backend(
    kind: BackendKind,
    s: &Settings,
    point: &SettingsPoint,
    server_log: &Path,
) -> Result<Box<dyn Backend>, OpenError> {
    match kind {
        #[cfg(feature = "torch")]
        BackendKind::Hf => {
            // tch panics on libtorch errors (CUDA out of memory while placing the weights, ...):
            // behind the unwind boundary that is a load error, and the other backends still run.
            let settings = hf_settings(s, point);
            let what = format!("hf to load --hf-model {}", settings.model);
            let mut hf = crate::backend::guard::catch("hf load", || {
                crate::backend::waiting::announced(&what, "load", "no time limit", || {
                    crate::backend::hf::HfBackend::open(&settings)
                })
            })
            .map_err(|e| OpenError::Model(format!("--hf-model {}: {e}", settings.model)))??;
            hf.set_ignore_eos(s.ignore_eos);
            Ok(Box::new(crate::backend::guard::Guarded::new(hf)))
        }
        #[cfg(feature = "llama")]
        BackendKind::Inproc => {
            let what = format!("inproc to load {}", point.llama.gguf.display());
            let mut b = crate::backend::waiting::announced(&what, "load", "no time limit", || {
                crate::backend::inproc::InprocBackend::open_with(&point.llama, s.chat)
            })?;
            b.set_ignore_eos(s.ignore_eos);
            Ok(Box::new(b))
        }
        BackendKind::Api => {
            let api = ApiBackend::open(&point.llama, &api_settings(s, server_log))?;
            #[cfg(feature = "llama")]
            if s.spawns_server() {
                // The spawned server runs this GGUF: its header gives the shape for prefill FLOPs.
                return Ok(Box::new(WithGgufShape {
                    inner: api,
                    gguf: point.llama.gguf.clone(),
                }));
            }
            Ok(Box::new(api))
        }
        #[allow(unreachable_patterns)] // reachable in builds without some backend features
        other => Err(OpenError::NotBuilt(other.not_built_reason().to_string())),
    }
}

/// A backend (the spawned llama-server) whose info gains the model shape of the GGUF it runs.
#[cfg(feature = "llama")]
struct WithGgufShape<B> {
    inner: B,
    gguf: std::path::PathBuf,
}

#[cfg(feature = "llama")]
impl<B: Backend> Backend for WithGgufShape<B> {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn load_ms(&self) -> f64 {
        self.inner.load_ms()
    }
    fn info(&self) -> serde_json::Value {
        let mut v = self.inner.info();
        let n_params = crate::bench::runner::BackendFacts::of(&v).n_params;
        if let (Some(n), true) = (n_params, v.is_object()) {
            v["model_shape"] = serde_json::json!(crate::backend::gguf::model_shape(&self.gguf, n));
        }
        if v.is_object() {
            v["weight_bytes"] = serde_json::json!(crate::backend::gguf::weight_bytes(&self.gguf));
        }
        v
    }
    fn token_ids(&mut self, prompt: &str) -> Result<Vec<u32>, crate::backend::RunError> {
        self.inner.token_ids(prompt)
    }
    fn prompt_token_count(&mut self, prompt: &str) -> Result<u32, crate::backend::RunError> {
        self.inner.prompt_token_count(prompt)
    }
    fn set_context(&mut self, ids: &[u32]) -> Result<(), crate::backend::RunError> {
        self.inner.set_context(ids)
    }
    fn measure(
        &mut self,
        prompt: &str,
        max_new_tokens: u32,
    ) -> Result<crate::backend::Measurement, crate::backend::RunError> {
        self.inner.measure(prompt, max_new_tokens)
    }
}

/// One tokenizer per selected backend, cheap to load (no weights): the HF tokenizer.json, the GGUF
/// vocabulary through llama.cpp (inproc, and the spawned server, which loads the same file with the
/// same llama.cpp), and an external server's `/tokenize`.
pub fn tokenizers(s: &Settings, point: &SettingsPoint) -> Result<Vec<Tokenizer>> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(feature = "torch")]
    if s.has(BackendKind::Hf) {
        out.push(hf_tokenizer(s, point)?);
    }
    #[cfg(feature = "llama")]
    out.extend(llama_tokenizers(s, point)?);
    if let (true, Some(url)) = (s.has(BackendKind::Api), &s.api.url) {
        let api = api_settings(s, Path::new("/dev/null"));
        // A server that does not answer stops the run here, before timing (any other failure to
        // open shows up again when the backend opens for its runs).
        let opened = match ApiBackend::open(&point.llama, &api) {
            Err(OpenError::Stalled(m)) => anyhow::bail!("{m}"),
            other => other.ok(),
        };
        if let Some(mut b) = opened {
            // Servers without llama.cpp's /tokenize (plain OpenAI-compatible ones) are not checked.
            let probed = b.token_ids("probe");
            if let (Err(_), Some(m)) = (&probed, b.stalled()) {
                anyhow::bail!("{m}");
            }
            if probed.is_ok() {
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

/// `--turns`: the chat templates of the backends that run here, each with where it was read
/// (the GGUF's for inproc and a spawned llama-server, the checkpoint's for hf). An `--api-url`
/// server's template cannot be read before timing.
pub fn chat_templates(
    s: &Settings,
    point: &SettingsPoint,
) -> Result<Vec<(String, crate::bench::chat::ChatTemplate)>> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    let turns = |e: OpenError| {
        let msg = e.to_string();
        anyhow::anyhow!("--turns: {}", msg.trim_start_matches("--chat: "))
    };
    #[cfg(feature = "llama")]
    if s.has(BackendKind::Inproc) || s.spawns_server() {
        let gguf = &point.llama.gguf;
        let vocab = crate::backend::inproc::VocabOnly::open(gguf)?;
        let t = vocab.chat_template(gguf).map_err(turns)?;
        out.push((format!("GGUF {}", gguf.display()), t));
    }
    #[cfg(feature = "torch")]
    if s.has(BackendKind::Hf) {
        let (dir, _, _) = crate::backend::hf::preflight(&hf_settings(s, point))?;
        let t = crate::backend::hf::chat_template(&dir).map_err(turns)?;
        out.push((format!("checkpoint {}", dir.display()), t));
    }
    let _ = (s, point, turns);
    Ok(out)
}

#[cfg(feature = "torch")]
fn hf_tokenizer(s: &Settings, point: &SettingsPoint) -> Result<Tokenizer> {
    let (dir, _, _) = crate::backend::hf::preflight(&hf_settings(s, point))?;
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
    Ok(Tokenizer::new(BackendKind::Hf, source, bos, move |t| {
        let enc = match &chat {
            Some(c) => tok.encode(c.render_user(t)?, false),
            None => tok.encode(t, true),
        };
        enc.map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
    }))
}

#[cfg(feature = "llama")]
fn llama_tokenizers(s: &Settings, point: &SettingsPoint) -> Result<Vec<Tokenizer>> {
    let spawn = s.spawns_server();
    let mut out = Vec::new();
    if !s.has(BackendKind::Inproc) && !spawn {
        return Ok(out);
    }
    let gguf = &point.llama.gguf;
    let vocab = std::rc::Rc::new(crate::backend::inproc::VocabOnly::open(gguf)?);
    let chat = if s.chat {
        Some(std::rc::Rc::new(vocab.chat_template(gguf)?))
    } else {
        None
    };
    for kind in [BackendKind::Inproc, BackendKind::Api] {
        if s.has(kind) && (kind == BackendKind::Inproc || spawn) {
            let (v, c) = (vocab.clone(), chat.clone());
            let source = format!("GGUF vocabulary of {} (llama.cpp)", gguf.display());
            out.push(Tokenizer::new(kind, source, Some(vocab.bos()), move |t| {
                let text = match &c {
                    Some(c) => c.render_user(t)?,
                    None => t.to_string(),
                };
                v.token_ids(&text).map_err(|e| e.to_string())
            }));
        }
    }
    Ok(out)
}
