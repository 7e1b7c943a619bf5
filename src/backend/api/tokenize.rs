//! Untimed helper requests: tokenizing a prompt (`/tokenize`, `/extras/tokenize`) and the server's
//! chat template. None of them is inside a clock, and none generates: a prompt sent for generation
//! before its timed run would sit in the server's prefix cache and make the timed run warm.

use super::{error_chain, ApiBackend, Endpoint};
use crate::backend::RunError;
use serde_json::{json, Value};

/// A tokenize endpoint an OpenAI-compatible server may have (none is standard). None of them
/// generates, so using one before timing warms no prefix cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenizeVia {
    /// vLLM (and SGLang): `POST /tokenize` `{"model", "prompt"}` or, for chat, `{"model",
    /// "messages"}` with the server's template → `{"tokens", "count"}`.
    Vllm,
    /// llama-cpp-python's server: `POST /extras/tokenize` `{"input"}` → `{"tokens"}`.
    Extras,
    /// llama-server reached as a plain OpenAI server: `POST /tokenize` `{"content"}`.
    LlamaServer,
}

impl ApiBackend {
    /// Token ids from an OpenAI-compatible server's tokenize endpoint: the first of
    /// [`TokenizeVia`] that answers is remembered; none answering is remembered too (the count is
    /// then unknown before timing and comes from the timed request's own `usage`).
    pub(super) fn openai_tokenize(&mut self, prompt: &str) -> Result<Vec<u32>, RunError> {
        if let Some(via) = self.tokenize_via {
            return match via {
                Some(v) => self.tokenize_with(v, prompt),
                None => Err(RunError::new(
                    "the server has no tokenize endpoint (/tokenize, /extras/tokenize)",
                )),
            };
        }
        for v in [
            TokenizeVia::Vllm,
            TokenizeVia::Extras,
            TokenizeVia::LlamaServer,
        ] {
            if let Ok(ids) = self.tokenize_with(v, prompt) {
                self.tokenize_via = Some(Some(v));
                return Ok(ids);
            }
        }
        self.tokenize_via = Some(None);
        self.openai_tokenize(prompt)
    }

    fn tokenize_with(&self, via: TokenizeVia, prompt: &str) -> Result<Vec<u32>, RunError> {
        let chat = self.settings.endpoint == Endpoint::Chat;
        let (path, body) = match (via, chat) {
            (TokenizeVia::Vllm, false) => {
                ("/tokenize", json!({"model": self.model, "prompt": prompt}))
            }
            (TokenizeVia::Vllm, true) => (
                "/tokenize",
                json!({
                    "model": self.model,
                    "messages": [{"role": "user", "content": prompt}],
                    "add_generation_prompt": true,
                }),
            ),
            (TokenizeVia::Extras, false) => ("/extras/tokenize", json!({"input": prompt})),
            (TokenizeVia::LlamaServer, false) => (
                "/tokenize",
                json!({"content": prompt, "add_special": true, "parse_special": true}),
            ),
            // Their chat template is applied inside the chat endpoint only.
            (_, true) => return Err(RunError::new("no chat tokenize endpoint")),
        };
        let v = self.post_json(path, &body)?;
        // llama-server answers a /tokenize without "content" with an empty list: only vLLM's
        // answer (which has "count") counts as vLLM's.
        if via == TokenizeVia::Vllm && v.get("count").is_none() {
            return Err(RunError::new("/tokenize: not vLLM's answer (no count)"));
        }
        token_list(&v, path)
    }

    /// POST a JSON body to `path` and return the JSON answer (tokenize / template helpers).
    pub(super) fn post_json(&self, path: &str, body: &Value) -> Result<Value, RunError> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let r = self
                .authed(self.client.post(&url))
                .json(body)
                .timeout(self.settings.total_timeout)
                .send()
                .await
                .map_err(|e| RunError::new(format!("{path}: {}", error_chain(&e))))?;
            if !r.status().is_success() {
                return Err(RunError::new(format!(
                    "{path}: HTTP {}",
                    r.status().as_u16()
                )));
            }
            r.json()
                .await
                .map_err(|e| RunError::new(format!("{path}: {}", error_chain(&e))))
        })
    }

    /// llama-server's `/apply-template`: the text its chat endpoint builds for one user message.
    pub(super) fn apply_template(&self, prompt: &str) -> Result<String, RunError> {
        let body = json!({"messages": [{"role": "user", "content": prompt}]});
        self.post_json("/apply-template", &body)?
            .get("prompt")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| RunError::new("/apply-template: no prompt"))
    }
}

/// The `tokens` array of a tokenize answer.
pub(super) fn token_list(v: &Value, path: &str) -> Result<Vec<u32>, RunError> {
    v.get("tokens")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect()
        })
        .ok_or_else(|| RunError::new(format!("{path}: no tokens array")))
}
