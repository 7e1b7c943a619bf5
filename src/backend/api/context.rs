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

use super::{error_chain, ApiBackend, ApiFlavor, Endpoint};
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

    /// The untimed priming request ([`prime_body`]). Returns the server's `cache_n` for it (for -v).
    pub(super) fn prime(&self) -> Result<Option<u64>, RunError> {
        let v = self.post_json("/completion", &prime_body(&self.context, None))?;
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

    /// A load client's priming request on its own `slot` (untimed, before each of its
    /// requests): as [`Self::prime`], bounded by `--request-timeout` (it is a generation).
    pub(super) async fn prime_slot(&self, context: &[u32], slot: u32) -> Result<(), RunError> {
        let fail = |e: String| {
            RunError::new(format!(
                "priming the {}-token context on slot {slot} (untimed): {e}",
                context.len()
            ))
        };
        let send = async {
            let mut conn = self
                .target
                .open(self.settings.connect_timeout)
                .await
                .map_err(|e| fail(error_chain(&e)))?;
            let body = serde_json::to_vec(&prime_body(context, Some(slot)))
                .map_err(|e| fail(e.to_string()))?;
            let req = self
                .target
                .post("/completion", body, self.settings.api_key.as_ref())
                .map_err(|e| fail(error_chain(&e)))?;
            let resp = conn.send(req).await.map_err(|e| fail(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let text = super::conn::read_bounded(resp, 1 << 20).await;
            if !(200..300).contains(&status) {
                let head: String = text.chars().take(300).collect();
                return Err(fail(format!("HTTP {status}: {}", head.trim())));
            }
            Ok(())
        };
        tokio::time::timeout(self.settings.total_timeout, send)
            .await
            .map_err(|_| {
                fail(format!(
                    "no answer within {:.0} s",
                    self.settings.total_timeout.as_secs_f64()
                ))
            })?
    }
}

/// The priming request's body: the context alone, one token generated, the slot's cache on.
fn prime_body(context: &[u32], slot: Option<u32>) -> Value {
    let mut body = json!({
        "prompt": context,
        "n_predict": 1,
        "cache_prompt": true,
        "temperature": 0.0,
        "top_k": 1,
        "stream": false,
    });
    if let Some(s) = slot {
        body["id_slot"] = json!(s);
    }
    body
}

/// The prompt field of a timed request: the text, or after a context `[ids…, text]`.
pub(super) fn prompt_value(context: &[u32], prompt: &str) -> Value {
    if context.is_empty() {
        return json!(prompt);
    }
    let mut parts: Vec<Value> = context.iter().map(|&i| json!(i)).collect();
    parts.push(json!(prompt));
    Value::Array(parts)
}
