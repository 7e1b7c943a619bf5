//! Untimed helper requests: tokenizing a prompt (`/tokenize`, `/extras/tokenize`) and the server's
//! chat template. None of them is inside a clock, and none generates: a prompt sent for generation
//! before its timed run would sit in the server's prefix cache and make the timed run warm.

use super::helper::HelperError;
use super::{ApiBackend, Endpoint};
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
                Some(v) => self.tokenize_with(v, prompt).map_err(RunError::from),
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
            match self.tokenize_with(v, prompt) {
                Ok(ids) => {
                    self.tokenize_via = Some(Some(v));
                    return Ok(ids);
                }
                // A server that does not answer at all is not asked the next endpoint.
                Err(HelperError::Stalled(m)) => return Err(RunError::new(m)),
                Err(HelperError::Failed(_)) => {}
            }
        }
        self.tokenize_via = Some(None);
        self.openai_tokenize(prompt)
    }

    fn tokenize_with(&self, via: TokenizeVia, prompt: &str) -> Result<Vec<u32>, HelperError> {
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
            (_, true) => return Err(HelperError::Failed("no chat tokenize endpoint".into())),
        };
        let v = self.post_json(path, &body)?;
        // llama-server answers a /tokenize without "content" with an empty list: only vLLM's
        // answer (which has "count") counts as vLLM's.
        if via == TokenizeVia::Vllm && v.get("count").is_none() {
            return Err(HelperError::Failed(
                "/tokenize: not vLLM's answer (no count)".into(),
            ));
        }
        token_list(&v, path).map_err(|e| HelperError::Failed(e.0))
    }

    /// POST a JSON body to `path` and return the JSON answer (tokenize / template helpers).
    pub(super) fn post_json(&self, path: &str, body: &Value) -> Result<Value, HelperError> {
        let url = format!("{}{path}", self.base);
        let rb = self.authed(self.client.post(&url)).json(body);
        let (status, text) = self.helper("POST", path, rb)?;
        if !(200..300).contains(&status) {
            return Err(HelperError::Failed(format!("{path}: HTTP {status}")));
        }
        serde_json::from_str(&text)
            .map_err(|e| HelperError::Failed(format!("{path}: the answer is not JSON: {e}")))
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
