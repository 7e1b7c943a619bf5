//! `--ignore-eos` over HTTP: the request fields that ask a server to generate exactly
//! `max_new_tokens`, and what became of them.
//!
//! llama-server (llama flavor) takes `"ignore_eos": true` and then sets the logits of every
//! end-of-generation token to -inf (tools/server/server-task.cpp, commit 9e3b928f), so no EOG
//! token can be sampled, the first one included. An OpenAI-compatible server (openai flavor) gets
//! vLLM's extensions `ignore_eos: true` and `min_tokens: max_new_tokens` (llama-cpp-python
//! honours `min_tokens`; servers that do not know a field usually ignore it). A server that
//! rejects one (HTTP 400/422 naming it) is asked again without it, and it is not sent any more.
//! A server that silently ignores them is caught by the rows: one that generated fewer than
//! `max_new_tokens` is flagged `ignore_eos_not_honoured` (see `bench::record`).

use super::ApiFlavor;
use crate::backend::RunError;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};

/// One request field that asks for a fixed output length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `ignore_eos: true` (llama.cpp, vLLM, SGLang).
    IgnoreEos,
    /// `min_tokens: max_new_tokens` (vLLM, llama-cpp-python).
    MinTokens,
}

impl Field {
    const ALL: [Field; 2] = [Field::IgnoreEos, Field::MinTokens];

    fn name(self) -> &'static str {
        match self {
            Field::IgnoreEos => "ignore_eos",
            Field::MinTokens => "min_tokens",
        }
    }

    fn value(self, max_new_tokens: u32) -> Value {
        match self {
            Field::IgnoreEos => json!(true),
            Field::MinTokens => json!(max_new_tokens),
        }
    }

    /// Whether the flavor sends this field: llama-server knows only `ignore_eos`.
    fn sent_by(self, flavor: ApiFlavor) -> bool {
        match self {
            Field::IgnoreEos => true,
            Field::MinTokens => flavor == ApiFlavor::Openai,
        }
    }
}

/// The `--ignore-eos` fields of one api backend: asked for or not, and which the server refused.
#[derive(Debug, Default)]
pub struct IgnoreEos {
    requested: bool,
    /// Indexed like [`Field::ALL`]: the server refused the field once, so it is not sent again.
    rejected: [AtomicBool; 2],
}

impl IgnoreEos {
    /// `requested`: `--ignore-eos` was given.
    pub fn new(requested: bool) -> Self {
        Self {
            requested,
            ..Self::default()
        }
    }

    fn is_rejected(&self, f: Field) -> bool {
        self.rejected[f as usize].load(Ordering::Relaxed)
    }

    /// The fields still sent for `flavor`.
    fn sent(&self, flavor: ApiFlavor) -> impl Iterator<Item = Field> + '_ {
        Field::ALL
            .into_iter()
            .filter(move |&f| self.requested && f.sent_by(flavor) && !self.is_rejected(f))
    }

    /// Put the fields into a request body (nothing without `--ignore-eos`).
    pub fn add_to(&self, body: &mut Value, flavor: ApiFlavor, max_new_tokens: u32) {
        for f in self.sent(flavor) {
            body[f.name()] = f.value(max_new_tokens);
        }
    }

    /// The fields an HTTP 400/422 refused by name, now marked as not to be sent (empty when the
    /// error is about something else). The request was refused while being validated: nothing
    /// was generated or cached, so asking again on a fresh clock is fair.
    pub fn take_rejected(&self, flavor: ApiFlavor, e: &RunError) -> Vec<&'static str> {
        if !(e.0.starts_with("HTTP 400") || e.0.starts_with("HTTP 422")) {
            return Vec::new();
        }
        let refused: Vec<Field> = self
            .sent(flavor)
            .filter(|f| e.0.contains(f.name()))
            .collect();
        for &f in &refused {
            self.rejected[f as usize].store(true, Ordering::Relaxed);
        }
        refused.into_iter().map(Field::name).collect()
    }

    /// For the backend's info: what was asked for, sent and refused.
    pub fn info(&self, flavor: ApiFlavor) -> Value {
        let names = |keep: &dyn Fn(Field) -> bool| -> Vec<&'static str> {
            Field::ALL
                .into_iter()
                .filter(|&f| self.requested && f.sent_by(flavor) && keep(f))
                .map(Field::name)
                .collect()
        };
        json!({
            "requested": self.requested,
            "sent": names(&|f| !self.is_rejected(f)),
            "rejected_by_server": names(&|f| self.is_rejected(f)),
            "check": "a row that generated fewer than max_new_tokens is flagged ignore_eos_not_honoured",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_gets_ignore_eos_and_openai_also_min_tokens() {
        let e = IgnoreEos::new(true);
        let mut llama = json!({});
        e.add_to(&mut llama, ApiFlavor::Llama, 32);
        assert_eq!(llama, json!({"ignore_eos": true}));
        let mut oai = json!({});
        e.add_to(&mut oai, ApiFlavor::Openai, 32);
        assert_eq!(oai, json!({"ignore_eos": true, "min_tokens": 32}));
        let mut off = json!({});
        IgnoreEos::new(false).add_to(&mut off, ApiFlavor::Openai, 32);
        assert_eq!(off, json!({}));
    }

    #[test]
    fn a_refused_field_is_dropped_and_reported() {
        let e = IgnoreEos::new(true);
        let other = RunError::new("HTTP 400: prompt too long");
        assert!(e.take_rejected(ApiFlavor::Openai, &other).is_empty());
        let not_400 = RunError::new("HTTP 500: ignore_eos crashed");
        assert!(e.take_rejected(ApiFlavor::Openai, &not_400).is_empty());
        let refused = RunError::new("HTTP 422: extra_forbidden body.ignore_eos");
        assert_eq!(e.take_rejected(ApiFlavor::Openai, &refused), ["ignore_eos"]);
        assert!(
            e.take_rejected(ApiFlavor::Openai, &refused).is_empty(),
            "once"
        );
        let mut body = json!({});
        e.add_to(&mut body, ApiFlavor::Openai, 8);
        assert_eq!(body, json!({"min_tokens": 8}));
        let info = e.info(ApiFlavor::Openai);
        assert_eq!(info["sent"], json!(["min_tokens"]));
        assert_eq!(info["rejected_by_server"], json!(["ignore_eos"]));
    }
}
