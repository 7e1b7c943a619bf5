//! `inproc`: the GGUF run in this process through llama.cpp (llama-cpp-2), the same commit the
//! spawned llama-server is built from.
//!
//! Per timed run: the KV cache is cleared *before* the clock starts; then tokenize → prefill
//! (one `llama_decode` over the prompt, logits for the last position only) → greedy argmax →
//! detokenize. `llama_get_logits_ith` synchronises the context, so on a GPU build the prefill time
//! ends only when the logits are really available on the host.

use super::detok::{Detokenizer, TextOf};
use super::{
    check_gguf, decode_tail, Backend, BackendKind, FirstToken, Generator, InprocClock, LlamaParams,
    Measurement, OpenError, RunError,
};
use crate::bench::chat::ChatTemplate;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{AddBos, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::Instant;

/// Silence llama.cpp's and ggml's own logging: ttft reports errors itself, one line each.
pub fn quiet_llama_logs() {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        llama_cpp_2::send_logs_to_tracing(
            llama_cpp_2::LogOptions::default().with_logs_enabled(false),
        )
    });
}

/// llama.cpp's global backend may be initialised once per process. The lock makes a second
/// thread wait for the first one's init instead of calling it again (which fails with
/// `BackendAlreadyInitialized`: seen when two tests open a backend at once).
fn llama_backend() -> Result<&'static LlamaBackend, OpenError> {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    quiet_llama_logs();
    let b = LlamaBackend::init().map_err(|e| OpenError::Model(format!("llama.cpp init: {e}")))?;
    Ok(BACKEND.get_or_init(|| b))
}

/// The CPU/GPU feature string llama.cpp was compiled with ("CPU : SSE3 = 1 | AVX2 = 1 | ...").
/// Compared with the server's log line to prove both sides run the same ggml build flags.
pub fn system_info() -> String {
    // SAFETY: returns a pointer to a static, NUL-terminated string owned by llama.cpp.
    unsafe {
        std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info())
            .to_string_lossy()
            .trim()
            .to_string()
    }
}

/// The GGUF's chat template (`tokenizer.chat_template`) with its BOS/EOS texts.
fn gguf_chat_template(
    model: &LlamaModel,
    path: &std::path::Path,
) -> Result<ChatTemplate, OpenError> {
    let src = model
        .chat_template(None)
        .ok()
        .and_then(|t| t.to_string().ok())
        .ok_or_else(|| {
            OpenError::Model(format!(
                "--chat: {} has no tokenizer.chat_template",
                path.display()
            ))
        })?;
    let text = |tok: LlamaToken| {
        model
            .token_to_piece_bytes(tok, 64, true, None)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    ChatTemplate::new(&src, &text(model.token_bos()), &text(model.token_eos()))
        .map_err(|e| OpenError::Model(format!("--chat: {}: {e}", path.display())))
}

/// The GGUF's vocabulary alone (llama.cpp `vocab_only`): loads in milliseconds, proves llama.cpp
/// knows the architecture, and tokenizes prompts before anything is timed.
pub struct VocabOnly {
    model: LlamaModel,
}

impl VocabOnly {
    /// Load only the vocabulary of `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, OpenError> {
        let info = super::gguf::inspect(path)?;
        let backend = llama_backend()?;
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|_| {
            OpenError::Model(format!(
                "{}: llama.cpp {} cannot load this GGUF (architecture `{}`): an architecture or \
                 tokenizer this llama.cpp does not know, or corrupt metadata",
                path.display(),
                &super::LLAMA_CPP_COMMIT[..7],
                info.architecture.as_deref().unwrap_or("?")
            ))
        })?;
        Ok(Self { model })
    }

    /// The GGUF's chat template (for `--chat`).
    pub fn chat_template(&self, path: &std::path::Path) -> Result<ChatTemplate, OpenError> {
        gguf_chat_template(&self.model, path)
    }

    /// Token ids llama.cpp evaluates for `prompt` (BOS as the GGUF says).
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<u32>, RunError> {
        self.model
            .str_to_token(prompt, AddBos::Always)
            .map(|t| t.iter().map(|x| x.0 as u32).collect())
            .map_err(|e| RunError::new(format!("tokenize: {e}")))
    }

    /// The BOS token id (to detect a doubled BOS).
    pub fn bos(&self) -> u32 {
        self.model.token_bos().0 as u32
    }
}

/// In-process llama.cpp backend: one model, one context, reused across runs with the KV cache
/// cleared before each.
pub struct InprocBackend {
    // Field order matters: the context borrows the model and must drop first.
    ctx: LlamaContext<'static>,
    model: Box<LlamaModel>,
    batch: LlamaBatch<'static>,
    params: LlamaParams,
    load_ms: f64,
    n_ctx: u32,
    chat: Option<ChatTemplate>,
    /// `--ignore-eos`: the end-of-generation ids greedy sampling may not pick (empty: any).
    banned: Vec<usize>,
    ignore_eos: bool,
    /// Tokens of cached context (`set_context`) at positions `0..context_len` of sequence 0.
    context_len: usize,
}

impl InprocBackend {
    /// Load the GGUF and create the context (timed as `load_ms`, never as TTFT).
    pub fn open(params: &LlamaParams) -> Result<Self, OpenError> {
        Self::open_with(params, false)
    }

    /// As `open`; with `chat`, every prompt is one user message put through the GGUF's template.
    pub fn open_with(params: &LlamaParams, chat: bool) -> Result<Self, OpenError> {
        check_gguf(&params.gguf)?;
        let backend = llama_backend()?;
        let t0 = Instant::now();
        let mparams = LlamaModelParams::default().with_n_gpu_layers(params.n_gpu_layers);
        let model = LlamaModel::load_from_file(backend, &params.gguf, &mparams).map_err(|e| {
            OpenError::Model(format!(
                "llama.cpp could not load {}: {e} (truncated file, or an architecture this llama.cpp \
                 commit does not know)",
                params.gguf.display()
            ))
        })?;
        let model = Box::new(model);
        // SAFETY: the model lives in a Box owned by the returned struct; the Box's heap address
        // never changes, and the context (declared first) is dropped before the model.
        let model_ref: &'static LlamaModel = unsafe { &*(model.as_ref() as *const LlamaModel) };
        let threads = params.threads as i32;
        let cparams = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(params.ctx_size))
            .with_n_batch(params.batch)
            .with_n_ubatch(params.ubatch)
            .with_n_seq_max(1)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_flash_attention_policy(flash_attn_type(params.flash_attn))
            .with_type_k(kv_cache_type(&params.cache_type_k)?)
            .with_type_v(kv_cache_type(&params.cache_type_v)?);
        let ctx = model_ref.new_context(backend, cparams).map_err(|e| {
            OpenError::Model(format!(
                "llama.cpp could not create a context of {} tokens for {}: {e} (try a smaller --ctx-size)",
                params.ctx_size,
                params.gguf.display()
            ))
        })?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let n_ctx = ctx.n_ctx();
        let batch = LlamaBatch::new(params.batch as usize, 1);
        let chat = if chat {
            Some(gguf_chat_template(&model, &params.gguf)?)
        } else {
            None
        };
        Ok(Self {
            chat,
            ctx,
            model,
            batch,
            params: params.clone(),
            load_ms,
            n_ctx,
            banned: Vec::new(),
            ignore_eos: false,
            context_len: 0,
        })
    }

    /// `--ignore-eos`: no end-of-generation token (llama.cpp's EOG set: EOS, EOT, EOM, ...) can
    /// be sampled, the first token included, so every run generates exactly max_new_tokens, as
    /// llama-server's `ignore_eos` (which sets their logits to -inf). The set is read here,
    /// outside any clock.
    pub fn set_ignore_eos(&mut self, on: bool) {
        self.ignore_eos = on;
        self.banned = if on {
            (0..self.model.n_vocab())
                .filter(|&i| self.model.is_eog_token(LlamaToken::new(i)))
                .map(|i| i as usize)
                .collect()
        } else {
            Vec::new()
        };
    }

    /// Token ids llama.cpp evaluates for `prompt` (the parity check compares them with hf's).
    pub fn ids(&self, prompt: &str) -> Result<Vec<u32>, RunError> {
        Ok(self.tokenize(prompt)?.iter().map(|t| t.0 as u32).collect())
    }

    /// Tokens in sequence 0's KV cache: its largest position + 1 (positions are contiguous from
    /// 0 here), so a row can prove how much context its prefill started on.
    fn kv_len(&self) -> usize {
        usize::try_from(self.ctx.kv_cache_seq_pos_max(0) + 1).unwrap_or(0)
    }

    /// Back to exactly the cached context, outside the clock: the previous run's prompt and
    /// generated cells (positions from `context_len` on) are removed, the context's stay.
    fn reset_to_context(&mut self) -> Result<usize, RunError> {
        if self.context_len == 0 {
            self.ctx.clear_kv_cache();
        } else {
            let pos = u32::try_from(self.context_len).map_err(|e| RunError::new(e.to_string()))?;
            self.ctx
                .clear_kv_cache_seq(Some(0), Some(pos), None)
                .map_err(|e| RunError::new(format!("llama_memory_seq_rm: {e}")))?;
        }
        let cached = self.kv_len();
        if cached != self.context_len {
            return Err(RunError::new(format!(
                "the KV cache holds {cached} tokens, not the {}-token context",
                self.context_len
            )));
        }
        Ok(cached)
    }

    fn tokenize(&self, prompt: &str) -> Result<Vec<LlamaToken>, RunError> {
        // --chat: the template is part of the backend's work, so it runs inside the clock.
        let templated;
        let text = match &self.chat {
            Some(t) => {
                templated = t.render_user(prompt).map_err(RunError::new)?;
                templated.as_str()
            }
            None => prompt,
        };
        // AddBos::Always = llama_tokenize(add_special = true, parse_special = true): BOS only if
        // the GGUF says the model wants one, special tokens in the text parsed, exactly like
        // llama-server's prompt tokenization (also of a chat template's output).
        // After a cached context the prompt continues a sequence: no BOS (add_special = false).
        let bos = if self.context_len > 0 {
            AddBos::Never
        } else {
            AddBos::Always
        };
        self.model
            .str_to_token(text, bos)
            .map_err(|e| RunError::new(format!("tokenize: {e}")))
    }

    /// The token's bytes as llama.cpp renders them (special tokens as nothing, like
    /// llama-server's streamed text); may be part of a UTF-8 character.
    fn piece_bytes(&self, tok: LlamaToken) -> Vec<u8> {
        match self.model.token_to_piece_bytes(tok, 64, false, None) {
            Err(llama_cpp_2::TokenToStringError::InsufficientBufferSpace(n)) => self
                .model
                .token_to_piece_bytes(tok, n.unsigned_abs() as usize, false, None)
                .unwrap_or_default(),
            other => other.unwrap_or_default(),
        }
    }

    /// Evaluate `tokens` starting at position `pos`, in chunks of n_batch, asking for logits of the
    /// final token only.
    fn decode(&mut self, tokens: &[LlamaToken], pos: usize) -> Result<(), RunError> {
        let chunk = self.params.batch as usize;
        for (ci, part) in tokens.chunks(chunk).enumerate() {
            self.batch.clear();
            let last_chunk = (ci + 1) * chunk >= tokens.len();
            for (i, &t) in part.iter().enumerate() {
                let p = (pos + ci * chunk + i) as i32;
                let logits = last_chunk && i + 1 == part.len();
                self.batch
                    .add(t, p, &[0], logits)
                    .map_err(|e| RunError::new(format!("batch: {e}")))?;
            }
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| RunError::new(format!("llama_decode: {e}")))?;
        }
        Ok(())
    }

    /// Greedy choice over the last position's logits. Reading the logits synchronises the context.
    fn argmax_last(&self) -> LlamaToken {
        let logits = self.ctx.get_logits_ith(self.batch.n_tokens() - 1);
        LlamaToken::new(argmax_allowed(logits, &self.banned) as i32)
    }
}

/// Index of the largest value (first on ties, like llama.cpp's greedy sampler).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// [`argmax`] over the ids not in `banned` (their logits as -inf). The same choice as masking
/// first: when the plain argmax is allowed it is also the first maximum among the allowed ids, so
/// the masked scan is needed only when it is banned (rarely), and the common step costs nothing.
pub fn argmax_allowed(xs: &[f32], banned: &[usize]) -> usize {
    let best = argmax(xs);
    if !banned.contains(&best) {
        return best;
    }
    let mut pick: Option<usize> = None;
    for (i, &x) in xs.iter().enumerate() {
        if !banned.contains(&i) && pick.is_none_or(|p| x > xs[p]) {
            pick = Some(i);
        }
    }
    pick.unwrap_or(best)
}

impl Backend for InprocBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Inproc
    }

    fn load_ms(&self) -> f64 {
        self.load_ms
    }

    fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "gguf": self.params.gguf.display().to_string(),
            "llama_cpp_commit": super::LLAMA_CPP_COMMIT,
            "llama_cpp_crate": "llama-cpp-2 =0.1.153 / llama-cpp-sys-2 =0.1.153",
            "ggml_build": {
                "GGML_NATIVE": "OFF",
                "GGML_OPENMP": "ON",
                "BUILD_SHARED_LIBS": "OFF",
                "gpu": if cfg!(feature = "cuda") { "cuda" } else if cfg!(feature = "metal") { "metal" } else { "none" },
            },
            "system_info": system_info(),
            "n_ctx": self.n_ctx,
            "n_batch": self.params.batch,
            "n_ubatch": self.params.ubatch,
            "threads": self.params.threads,
            "n_gpu_layers": self.params.n_gpu_layers,
            "flash_attn": self.params.flash_attn,
            "cache_type_k": self.params.cache_type_k,
            "cache_type_v": self.params.cache_type_v,
            "n_params": self.model.n_params(),
            "model_shape": super::gguf::model_shape(&self.params.gguf, self.model.n_params() as f64),
            "n_vocab": self.model.n_vocab(),
            "ignore_eos": {"requested": self.ignore_eos, "masked_eog_ids": self.banned},
            "model_size_bytes": self.model.size(),
            "weight_bytes": super::gguf::weight_bytes(&self.params.gguf),
        })
    }

    fn token_ids(&mut self, prompt: &str) -> Result<Vec<u32>, RunError> {
        self.ids(prompt)
    }

    fn set_context(&mut self, ids: &[u32]) -> Result<(), RunError> {
        self.context_len = 0;
        self.ctx.clear_kv_cache();
        if ids.is_empty() {
            return Ok(());
        }
        if ids.len() >= self.n_ctx as usize {
            return Err(RunError::new(format!(
                "a {}-token context does not fit the {}-token context window (raise --ctx-size)",
                ids.len(),
                self.n_ctx
            )));
        }
        let toks: Vec<LlamaToken> = ids.iter().map(|&i| LlamaToken::new(i as i32)).collect();
        // Untimed: the context is decoded once per depth, outside every clock.
        self.decode(&toks, 0)?;
        self.context_len = ids.len();
        self.reset_to_context().map(|_| ())
    }

    fn measure(&mut self, prompt: &str, max_new_tokens: u32) -> Result<Measurement, RunError> {
        // Outside the clock: a fresh KV state, or exactly the cached context (`set_context`).
        let cached = self.reset_to_context()?;

        let start = Instant::now();
        let tokens = self.tokenize(prompt)?;
        let tokenized = Instant::now();
        if tokens.is_empty() {
            return Err(RunError::new("prompt tokenized to zero tokens"));
        }
        let needed = cached + tokens.len() + max_new_tokens as usize;
        if needed > self.n_ctx as usize {
            return Err(RunError::new(format!(
                "{cached} cached + prompt {} tokens + {} new > context {} (raise --ctx-size)",
                tokens.len(),
                max_new_tokens,
                self.n_ctx
            )));
        }
        self.decode(&tokens, cached)?;
        // Prefill ends when the last logits are readable (get_logits_ith synchronises).
        let _ = self.ctx.get_logits_ith(self.batch.n_tokens() - 1);
        let prefilled = Instant::now();
        let tok = self.argmax_last();
        let sampled = Instant::now();
        let mut gen = InprocGen {
            be: self,
            pos: cached + tokens.len(),
        };
        // llama.cpp's pieces do not depend on their neighbours: no context needed.
        let mut detok = Detokenizer::new(&[], 0, &gen);
        let first = FirstToken::detokenize(tok.0 as u32, &mut detok, &gen);
        let clock = InprocClock {
            start,
            tokenized,
            prefilled,
            sampled,
            first_text: Instant::now(),
        };
        let tail = decode_tail(&first, max_new_tokens, &clock, &mut detok, &mut gen)?;
        let mut m = clock.measurement(tokens.len(), first, tail, &gen);
        m.cached_tokens = Some(cached as u32);
        Ok(m)
    }
}

/// The decode loop's view of the backend: one token at the next position per step.
struct InprocGen<'a> {
    be: &'a mut InprocBackend,
    pos: usize,
}

impl TextOf for InprocGen<'_> {
    fn text_of(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter()
            .flat_map(|&i| self.be.piece_bytes(LlamaToken::new(i as i32)))
            .collect()
    }
}

impl Generator for InprocGen<'_> {
    fn step(&mut self, prev: u32) -> Result<u32, RunError> {
        self.be.decode(&[LlamaToken::new(prev as i32)], self.pos)?;
        self.pos += 1;
        Ok(self.be.argmax_last().0 as u32)
    }

    fn is_eog(&self, id: u32) -> bool {
        self.be.model.is_eog_token(LlamaToken::new(id as i32))
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.be.piece_bytes(LlamaToken::new(id as i32))
    }
}

/// llama.cpp's enum for `--flash-attn` (llama.h: -1 auto, 0 disabled, 1 enabled).
fn flash_attn_type(f: crate::backend::FlashAttn) -> llama_cpp_sys_2::llama_flash_attn_type {
    match f {
        crate::backend::FlashAttn::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
        crate::backend::FlashAttn::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        crate::backend::FlashAttn::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }
}

/// The ggml type of a `--cache-type-k/-v` name, as llama-server's `kv_cache_type_from_str` maps it.
fn kv_cache_type(name: &str) -> Result<llama_cpp_2::context::params::KvCacheType, OpenError> {
    use llama_cpp_2::context::params::KvCacheType as K;
    Ok(match name {
        "f32" => K::F32,
        "f16" => K::F16,
        "bf16" => K::BF16,
        "q8_0" => K::Q8_0,
        "q4_0" => K::Q4_0,
        "q4_1" => K::Q4_1,
        "iq4_nl" => K::IQ4_NL,
        "q5_0" => K::Q5_0,
        "q5_1" => K::Q5_1,
        other => {
            return Err(OpenError::Model(format!(
                "--cache-type {other}: not a KV cache type (choose from {})",
                crate::backend::KV_CACHE_TYPES.join(", ")
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_banned_id_is_never_the_greedy_choice_and_ties_keep_the_first() {
        let xs = [0.5, 3.0, 1.0, 3.0, 2.0];
        assert_eq!(argmax_allowed(&xs, &[]), 1);
        assert_eq!(argmax_allowed(&xs, &[0, 2]), 1, "allowed best: unchanged");
        assert_eq!(argmax_allowed(&xs, &[1]), 3, "the next maximum, a tie");
        assert_eq!(argmax_allowed(&xs, &[1, 3]), 4);
    }
}
