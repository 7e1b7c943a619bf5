//! What goes over the wire and what comes back: the request body of a timed run, and the token
//! one SSE event carries (which is what stops the clock).

use super::{ApiBackend, ApiFlavor, Endpoint};
use serde_json::{json, Value};

impl ApiBackend {
    /// The request for one run: greedy, `max_new_tokens`, streamed. With llama.cpp the prompt
    /// cache is switched off per request; OpenAI servers get only standard fields.
    pub fn request_body(&self, prompt: &str, max_new_tokens: u32) -> Value {
        let mut body = match self.settings.endpoint {
            Endpoint::Completion => json!({
                "prompt": prompt,
                "n_predict": max_new_tokens,
            }),
            Endpoint::V1 => json!({
                "model": self.model,
                "prompt": prompt,
                "max_tokens": max_new_tokens,
                "stream_options": {"include_usage": true},
            }),
            Endpoint::Chat => json!({
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new_tokens,
                "stream_options": {"include_usage": true},
            }),
        };
        body["stream"] = json!(true);
        body["temperature"] = json!(0.0);
        body["seed"] = json!(0);
        if self.flavor == ApiFlavor::Llama {
            // llama-server defaults cache_prompt to true: every timed run must be a cold prefill.
            body["cache_prompt"] = json!(false);
            body["top_k"] = json!(1);
        }
        body
    }
}

/// A generated token as one SSE event carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventToken<'a> {
    /// Its text (visible content or, in chat, reasoning text).
    pub text: &'a str,
    /// Visible answer text (chat: `delta.content`, not `delta.reasoning_content`).
    pub visible: bool,
    /// The event carries a generated token at all (a role-only chat chunk does not).
    pub arrived: bool,
}

/// Decode the token one event carries for `endpoint`.
///
/// Usually the first token arrives as non-empty text. Two cases carry a token without text, and
/// they end TTFT too (the in-process backend stops its clock at the same token): an
/// end-of-generation token as the very first token, and a token that is an incomplete UTF-8
/// sequence (the server holds its bytes back). The native endpoint shows them as a non-empty
/// `tokens` array; the OpenAI endpoints as a `finish_reason` without text.
pub fn event_token(endpoint: Endpoint, v: &Value) -> EventToken<'_> {
    if endpoint == Endpoint::Chat {
        let choice = v.pointer("/choices/0");
        let field = |k: &str| {
            choice
                .and_then(|c| c.pointer(&format!("/delta/{k}")))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let (content, reasoning) = (field("content"), field("reasoning_content"));
        let finished = choice
            .and_then(|c| c.get("finish_reason"))
            .is_some_and(|f| !f.is_null());
        let text = if content.is_empty() {
            reasoning
        } else {
            content
        };
        return EventToken {
            text,
            visible: !content.is_empty(),
            arrived: !text.is_empty() || finished,
        };
    }
    let (text, arrived) = match endpoint {
        Endpoint::Completion => {
            let text = v.get("content").and_then(Value::as_str).unwrap_or("");
            let ids = v
                .get("tokens")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            (text, !text.is_empty() || ids)
        }
        Endpoint::V1 => {
            let choice = v.pointer("/choices/0");
            let text = choice
                .and_then(|c| c.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let finished = choice
                .and_then(|c| c.get("finish_reason"))
                .is_some_and(|f| !f.is_null());
            (text, !text.is_empty() || finished)
        }
        Endpoint::Chat => unreachable!("handled above"),
    };
    EventToken {
        text,
        visible: !text.is_empty(),
        arrived,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(e: Endpoint, v: &Value) -> (&str, bool) {
        let t = event_token(e, v);
        (t.text, t.arrived)
    }

    #[test]
    fn a_token_without_text_still_ends_ttft() {
        let native = json!({"content": "", "tokens": [2], "stop": false});
        assert_eq!(tok(Endpoint::Completion, &native), ("", true));
        let final_only = json!({"content": "", "tokens": [], "stop": true});
        assert_eq!(tok(Endpoint::Completion, &final_only), ("", false));
        let text = json!({"content": " Paris", "tokens": [7042]});
        assert_eq!(tok(Endpoint::Completion, &text), (" Paris", true));

        let oai = json!({"choices": [{"text": " Paris", "finish_reason": null}]});
        assert_eq!(tok(Endpoint::V1, &oai), (" Paris", true));
        let eog = json!({"choices": [{"text": "", "finish_reason": "stop"}]});
        assert_eq!(tok(Endpoint::V1, &eog), ("", true));
        let usage_only = json!({"choices": [], "usage": {"prompt_tokens": 5}});
        assert_eq!(tok(Endpoint::V1, &usage_only), ("", false));
    }
}
