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
        server_port: a.server_port,
        server_slots: a.server_slots,
        api_key: a.api_key.clone(),
        rpc: a.rpc.clone(),
        spawn_rpc: a.spawn_rpc,
        verbose: s.output.verbose,
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
        BackendKind::Hf => Ok(Box::new(crate::backend::hf::HfBackend::open(
            &hf_settings(s, point),
        )?)),
        #[cfg(feature = "llama")]
        BackendKind::Inproc => Ok(Box::new(crate::backend::inproc::InprocBackend::open_with(
            &point.llama,
            s.chat,
        )?)),
        BackendKind::Api => Ok(Box::new(ApiBackend::open(
            &point.llama,
            &api_settings(s, server_log),
        )?)),
        #[allow(unreachable_patterns)] // reachable in builds without some backend features
        other => Err(OpenError::NotBuilt(other.not_built_reason().to_string())),
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
        if let Ok(mut b) = ApiBackend::open(&point.llama, &api) {
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
