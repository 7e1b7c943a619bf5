//! `--depth` on llama-server: the context is sent as token ids with `cache_prompt: true` in an
//! untimed priming request before *every* timed run, which leaves the slot holding exactly the
//! context (a timed run leaves it holding the prompt and its answer too, which the next run must
//! not reuse: the priming request's prompt is a prefix of that, so the server keeps only the
//! context's cells). The timed request then sends `[context ids…, "prompt text"]`, a mixed
//! prompt llama-server tokenizes without BOS after the ids (`tokenize_mixed`), and its
//! `timings.cache_n` proves per row how much of the context was reused.
//!
//! The spawned server runs with `--cache-ram 0` (no host-RAM prompt cache that could restore an
//! earlier timed run's state instead of the primed slot) and without `--cache-reuse` (0, the
//! default: no shifted-chunk reuse), and with one slot, so the primed slot is the one that
//! serves the timed request.

use super::{ApiBackend, ApiFlavor, Endpoint};
use crate::backend::RunError;
use serde_json::{json, Value};

impl ApiBackend {
    /// Keep `ids` as the context of the following runs (see the module doc).
    pub(super) fn keep_context(&mut self, ids: &[u32]) -> Result<(), RunError> {
        if !ids.is_empty() && self.flavor == ApiFlavor::Openai {
            return Err(RunError::new(
                "--depth > 0 needs llama-server (the llama flavor): an OpenAI-compatible server's prompt cache cannot be primed or proven",
            ));
        }
        if !ids.is_empty() && self.settings.endpoint == Endpoint::Chat {
            return Err(RunError::new(
                "--depth > 0 sends the context as token ids, which the chat endpoint does not take",
            ));
        }
        self.context = ids.to_vec();
        Ok(())
    }

    /// The untimed priming request: the context alone, one token generated, the slot's cache on.
    /// Returns the server's `cache_n` for it (for -v).
    pub(super) fn prime(&self) -> Result<Option<u64>, RunError> {
        let body = json!({
            "prompt": self.context,
            "n_predict": 1,
            "cache_prompt": true,
            "temperature": 0.0,
            "top_k": 1,
            "stream": false,
        });
        let v = self.post_json("/completion", &body)?;
        let cache_n = v.pointer("/timings/cache_n").and_then(Value::as_u64);
        if self.settings.verbose >= 1 {
            eprintln!(
                "ttft: api: primed the {}-token context (cache_n {})",
                self.context.len(),
                cache_n.map_or("?".into(), |c| c.to_string())
            );
        }
        Ok(cache_n)
    }

    /// The prompt field of a timed request: the text, or after a context `[ids…, text]`.
    pub(super) fn prompt_value(&self, prompt: &str) -> Value {
        if self.context.is_empty() {
            return json!(prompt);
        }
        let mut parts: Vec<Value> = self.context.iter().map(|&i| json!(i)).collect();
        parts.push(json!(prompt));
        Value::Array(parts)
    }
}
