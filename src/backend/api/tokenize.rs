//! Untimed helper requests: tokenizing a prompt (`/tokenize`, `/extras/tokenize`), the server's
//! chat template, and the prompt token count from `usage`. None of them is inside a clock.

use super::{error_chain, ApiBackend, Endpoint};
use crate::backend::RunError;
use serde_json::{json, Value};

impl ApiBackend {
    /// OpenAI-compatible servers have no standard tokenize call; llama-cpp-python's server offers
    /// `POST /extras/tokenize`. Chat prompts cannot be checked this way (the template is applied
    /// inside the chat endpoint).
    pub(super) fn extras_tokenize(&self, prompt: &str) -> Result<Vec<u32>, RunError> {
        if self.settings.endpoint == Endpoint::Chat {
            return Err(RunError::new(
                "an OpenAI-compatible server cannot tokenize a chat prompt",
            ));
        }
        let v = self.post_json("/extras/tokenize", &json!({"input": prompt}))?;
        token_list(&v, "/extras/tokenize")
    }

    /// The server's `usage.prompt_tokens` for `prompt`, from one untimed, non-streamed request
    /// for a single token (OpenAI-compatible servers that stream no usage, like llama-cpp-python).
    pub(super) fn usage_prompt_tokens(&self, prompt: &str) -> Result<u32, RunError> {
        let mut body = self.request_body(prompt, 1);
        body["stream"] = json!(false);
        if let Some(o) = body.as_object_mut() {
            o.remove("stream_options");
        }
        let v = self.post_json(self.settings.endpoint.path(), &body)?;
        v.pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .map(|n| n as u32)
            .ok_or_else(|| RunError::new("the server reports no usage.prompt_tokens"))
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
