//! What goes over the wire and what comes back: the request body of a timed run, and the token
//! one SSE event carries (which is what stops the clock).

use super::context::prompt_value;
use super::{ApiBackend, ApiFlavor, Endpoint};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// One timed request: the prompt, after the token ids its slot holds (`--depth`, `--turns`),
/// and in a load run the llama-server slot it must run on (each client keeps its own context).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask<'a> {
    /// The prompt text.
    pub prompt: &'a str,
    /// Tokens to generate.
    pub max_new_tokens: u32,
    /// The cached context the prompt follows (empty: a cold request, cache off).
    pub context: &'a [u32],
    /// llama-server `id_slot`.
    pub slot: Option<u32>,
}

impl ApiBackend {
    /// The request for one run: greedy, `max_new_tokens`, streamed. With llama.cpp the prompt
    /// cache is switched off per request; OpenAI servers get only standard fields.
    ///
    /// `stream_options.include_usage` makes the timed request report its own token counts (a
    /// final chunk with `usage`). The openai flavor also asks for `continuous_usage_stats`
    /// (vLLM's and SGLang's per-chunk usage; other servers ignore unknown fields, and one that
    /// rejects it is asked again without it, see `stream_one`). llama-server does not offer it.
    pub(super) fn request_body(&self, ask: &Ask) -> Value {
        let (prompt, max_new_tokens) = (ask.prompt, ask.max_new_tokens);
        let mut stream_options = json!({"include_usage": true});
        if self.flavor == ApiFlavor::Openai && !self.no_continuous_usage.load(Ordering::Relaxed) {
            stream_options["continuous_usage_stats"] = json!(true);
        }
        let mut body = match self.settings.endpoint {
            Endpoint::Completion => json!({
                "prompt": prompt_value(ask.context, prompt),
                "n_predict": max_new_tokens,
            }),
            Endpoint::V1 => json!({
                "model": self.model,
                "prompt": prompt_value(ask.context, prompt),
                "max_tokens": max_new_tokens,
                "stream_options": stream_options,
            }),
            Endpoint::Chat => json!({
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new_tokens,
                "stream_options": stream_options,
            }),
        };
        body["stream"] = json!(true);
        body["temperature"] = json!(0.0);
        body["seed"] = json!(0);
        if self.flavor == ApiFlavor::Llama {
            // llama-server defaults cache_prompt to true: every timed run must be a cold prefill,
            // except on a primed context (`--depth`), which must be reused.
            body["cache_prompt"] = json!(!ask.context.is_empty());
            body["top_k"] = json!(1);
            if let Some(slot) = ask.slot {
                body["id_slot"] = json!(slot);
            }
        }
        self.ignore_eos
            .add_to(&mut body, self.flavor, max_new_tokens);
        body
    }
}

/// What one SSE event carries of the generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventToken<'a> {
    /// Its text: visible content, else (chat) reasoning text.
    pub text: &'a str,
    /// The text is visible answer content (not reasoning).
    pub visible: bool,
    /// chat: the event carries a `delta.tool_calls` entry.
    pub tool_call: bool,
    /// The event carries generated output: text, reasoning, a tool call, or (native) token ids.
    /// A role-only chat chunk, a usage-only chunk and a final chunk with only a finish reason
    /// do not: they are not a new token.
    pub arrived: bool,
    /// OpenAI endpoints: the choice's `finish_reason`, when the event has one.
    pub finish_reason: Option<&'a str>,
    /// native `/completion`: how many ids the event's `tokens` array holds (None: no array, or
    /// the final event, whose array is not per-token).
    pub ids: Option<u32>,
    /// native: the id of an event that carries exactly one token, when it is the n-th generated
    /// token (`tokens_predicted`) — so `(id, n)`.
    pub id: Option<(u32, Option<u64>)>,
}

/// Decode what one event carries for `endpoint`.
///
/// A token can arrive without text, and it still ends TTFT (the in-process backend stops its
/// clock at the same token): an end-of-generation token, a token that is part of a UTF-8
/// character (a server may hold its bytes back), a tool-call delta. The native endpoint shows
/// such a token as a non-empty `tokens` array; the OpenAI endpoints, for an EOS as the very first
/// token, only as a `finish_reason` (the caller treats that as the first token then, and as no
/// new token otherwise). `content: null` and `""` both mean no text.
pub fn event_token(endpoint: Endpoint, v: &Value) -> EventToken<'_> {
    match endpoint {
        Endpoint::Completion => native_token(v),
        Endpoint::V1 => {
            let choice = v.pointer("/choices/0");
            let text = str_at(choice, "/text");
            EventToken {
                text,
                visible: !text.is_empty(),
                arrived: !text.is_empty(),
                finish_reason: finish_reason(choice),
                ..EventToken::default()
            }
        }
        Endpoint::Chat => chat_token(v),
    }
}

/// A string field under `choice`; missing, `null` or not a string is "".
fn str_at<'a>(choice: Option<&'a Value>, ptr: &str) -> &'a str {
    choice
        .and_then(|c| c.pointer(ptr))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn finish_reason(choice: Option<&Value>) -> Option<&str> {
    choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
}

/// llama.cpp's `{"content": ..., "tokens": [id], "stop": false, "tokens_predicted": n}`.
fn native_token(v: &Value) -> EventToken<'_> {
    let text = v.get("content").and_then(Value::as_str).unwrap_or("");
    let stop = v.get("stop").and_then(Value::as_bool) == Some(true);
    let ids = v.get("tokens").and_then(Value::as_array).filter(|_| !stop);
    let n_ids = ids.map(|a| a.len() as u32);
    let id = ids
        .filter(|a| a.len() == 1)
        .and_then(|a| a[0].as_u64())
        .and_then(|x| u32::try_from(x).ok())
        .map(|x| (x, v.get("tokens_predicted").and_then(Value::as_u64)));
    EventToken {
        text,
        visible: !text.is_empty(),
        arrived: !text.is_empty() || n_ids.unwrap_or(0) > 0,
        ids: n_ids,
        id,
        ..EventToken::default()
    }
}

/// A chat chunk: `delta.content`, reasoning under `delta.reasoning` (current vLLM) or
/// `delta.reasoning_content` (older vLLM, DeepSeek, llama.cpp), `delta.tool_calls`.
fn chat_token(v: &Value) -> EventToken<'_> {
    let choice = v.pointer("/choices/0");
    let content = str_at(choice, "/delta/content");
    let reasoning = match str_at(choice, "/delta/reasoning") {
        "" => str_at(choice, "/delta/reasoning_content"),
        r => r,
    };
    let tool_call = choice
        .and_then(|c| c.pointer("/delta/tool_calls"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let text = if content.is_empty() {
        reasoning
    } else {
        content
    };
    EventToken {
        text,
        visible: !content.is_empty(),
        tool_call,
        arrived: !text.is_empty() || tool_call,
        finish_reason: finish_reason(choice),
        ..EventToken::default()
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
        let native = json!({"content": "", "tokens": [2], "stop": false, "tokens_predicted": 1});
        assert_eq!(tok(Endpoint::Completion, &native), ("", true));
        assert_eq!(
            event_token(Endpoint::Completion, &native).id,
            Some((2, Some(1)))
        );
        let final_only = json!({"content": "", "tokens": [], "stop": true});
        assert_eq!(tok(Endpoint::Completion, &final_only), ("", false));
        let final_all = json!({"content": "", "tokens": [5, 6], "stop": true});
        assert_eq!(event_token(Endpoint::Completion, &final_all).ids, None);
        let text = json!({"content": " Paris", "tokens": [7042]});
        assert_eq!(tok(Endpoint::Completion, &text), (" Paris", true));

        let oai = json!({"choices": [{"text": " Paris", "finish_reason": null}]});
        assert_eq!(tok(Endpoint::V1, &oai), (" Paris", true));
        let eog = json!({"choices": [{"text": "", "finish_reason": "stop"}]});
        let t = event_token(Endpoint::V1, &eog);
        assert_eq!((t.arrived, t.finish_reason), (false, Some("stop")));
        let usage_only = json!({"choices": [], "usage": {"prompt_tokens": 5}});
        assert_eq!(tok(Endpoint::V1, &usage_only), ("", false));
    }

    #[test]
    fn chat_reasoning_under_either_name_and_tool_calls_are_tokens() {
        let role = json!({"choices": [{"delta": {"role": "assistant", "content": null}}]});
        assert_eq!(tok(Endpoint::Chat, &role), ("", false));
        let empty = json!({"choices": [{"delta": {"content": ""}}]});
        assert_eq!(tok(Endpoint::Chat, &empty), ("", false));
        for field in ["reasoning", "reasoning_content"] {
            let r = json!({"choices": [{"delta": {"content": null, field: "Hmm"}}]});
            let t = event_token(Endpoint::Chat, &r);
            assert_eq!(
                (t.text, t.arrived, t.visible),
                ("Hmm", true, false),
                "{field}"
            );
        }
        let both = json!({"choices": [{"delta": {"content": "Hi", "reasoning": "x"}}]});
        let t = event_token(Endpoint::Chat, &both);
        assert_eq!((t.text, t.visible), ("Hi", true));
        let tool = json!({"choices": [{"delta": {"content": null, "tool_calls": [
            {"index": 0, "function": {"name": "get_weather", "arguments": ""}}]}}]});
        let t = event_token(Endpoint::Chat, &tool);
        assert_eq!(
            (t.text, t.arrived, t.tool_call, t.visible),
            ("", true, true, false)
        );
        let fin = json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]});
        let t = event_token(Endpoint::Chat, &fin);
        assert_eq!((t.arrived, t.finish_reason), (false, Some("tool_calls")));
    }
}
