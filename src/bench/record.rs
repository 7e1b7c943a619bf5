//! Typed rows: a prompt's identity, and one timed run that either has a measurement or an error,
//! never both and never neither (the constructors are the only way to make one).

use crate::backend::{BackendKind, Measurement};
use serde::Serialize;

/// A prompt: its set and its index in the set. Serialised as the seed's `prompt_type` and
/// `prompt_idx` columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PromptId {
    /// Prompt set name ("short", "long", ...).
    #[serde(rename = "prompt_type")]
    pub set: String,
    /// Index of the prompt in its set.
    #[serde(rename = "prompt_idx")]
    pub idx: usize,
}

impl PromptId {
    /// Prompt `idx` of `set`.
    pub fn new(set: impl Into<String>, idx: usize) -> Self {
        Self {
            set: set.into(),
            idx,
        }
    }
}

impl std::fmt::Display for PromptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.set, self.idx)
    }
}

/// Where a run belongs: prompt, backend, settings point.
#[derive(Debug, Clone, PartialEq)]
pub struct RunContext<'a> {
    /// The prompt.
    pub prompt: &'a PromptId,
    /// Its text.
    pub text: &'a str,
    /// The backend.
    pub runner: BackendKind,
    /// The settings point's label for this backend ("" without a grid), with `depth=N` under
    /// `--depth`.
    pub point: &'a str,
    /// Max new tokens the request was given (a dataset line's `output_tokens`, else
    /// `--max-new-tokens`).
    pub max_new_tokens: u32,
    /// Tokens of cached context the prompt follows (`--depth`, `--turns` warm; 0: the cold case).
    pub depth: u32,
    /// `--turns`: the conversation's user turn this prompt is, from 1.
    pub turn: Option<u32>,
}

/// One timed run, successful or not.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// The prompt.
    #[serde(flatten)]
    pub prompt: PromptId,
    /// Repetition number, from 0.
    pub run_idx: u32,
    /// The backend (the seed's column name).
    pub runner: BackendKind,
    /// The settings point, as `threads=1 dtype=bf16` ("" without a grid).
    pub point: String,
    /// The prompt text.
    pub prompt_text: String,
    /// Max new tokens the request was given (a dataset line's `output_tokens`, else
    /// `--max-new-tokens`); `generated_tokens` is at most this.
    pub max_new_tokens: u32,
    /// Tokens of cached context before the prompt (`--depth`, `--turns` warm; 0: none).
    pub depth: u32,
    /// `--turns`: the conversation's user turn, from 1 (None without `--turns`).
    pub turn: Option<u32>,
    /// Whether a first token was produced.
    pub ok: bool,
    /// Why not, when `ok` is false.
    pub error: Option<String>,
    /// Warnings about this row (cache hit, token count differing from the tokenizer count).
    pub flags: Vec<String>,
    /// What was measured, when `ok`.
    #[serde(flatten)]
    pub measurement: Option<Measurement>,
}

impl RunRecord {
    /// A run that produced a first token.
    pub fn success(ctx: &RunContext, run_idx: u32, m: Measurement, flags: Vec<String>) -> Self {
        Self::new(ctx, run_idx, Ok(m), flags)
    }

    /// A run that did not; `error` becomes the row's reason.
    pub fn failure(ctx: &RunContext, run_idx: u32, error: impl Into<String>) -> Self {
        Self::new(ctx, run_idx, Err(error.into()), Vec::new())
    }

    fn new(
        ctx: &RunContext,
        run_idx: u32,
        r: Result<Measurement, String>,
        flags: Vec<String>,
    ) -> Self {
        let (measurement, error) = match r {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            prompt: ctx.prompt.clone(),
            run_idx,
            runner: ctx.runner,
            point: ctx.point.to_string(),
            prompt_text: ctx.text.to_string(),
            max_new_tokens: ctx.max_new_tokens,
            depth: ctx.depth,
            turn: ctx.turn,
            ok: measurement.is_some(),
            error,
            flags,
            measurement,
        }
    }

    /// TTFT in milliseconds of a successful run.
    pub fn ttft_ms(&self) -> Option<f64> {
        self.measurement.as_ref().map(|m| m.ttft_ms)
    }
}

/// Warnings for one successful row: a server-side cache hit (the run is not a cold prefill) and
/// a prompt token count that differs from what the backend's tokenizer said beforehand.
pub fn row_flags(m: &Measurement, tokenizer_count: Option<u32>) -> Vec<String> {
    let mut flags = Vec::new();
    if m.first_token.is_empty() {
        // TTFT ended at a token with no complete character (part of a UTF-8 character, or EOS);
        // `first_char_ms` says when the first character came.
        flags.push("first_token_without_text".to_string());
    }
    if let Some(n) = m.first_event_tokens.filter(|&n| n > 1) {
        // The server held back a token that ends inside a character: its TTFT spans n tokens.
        flags.push(format!("first_event_after_tokens:{n}"));
    }
    if let Some(c) = m.cache_n.filter(|&c| c > 0) {
        flags.push(format!("cache_hit:{c}"));
    }
    if let (Some(used), Some(counted)) = (m.prompt_tokens, tokenizer_count) {
        if used != counted {
            flags.push(format!("prompt_tokens_{used}_vs_tokenizer_{counted}"));
        }
    }
    flags
}

/// `--ignore-eos`: a row that generated fewer than `max_new_tokens` stopped early anyway (a
/// server that ignored `ignore_eos`/`min_tokens`, or a stop it was not asked for), so its TPOT
/// and E2E are not over the work the other backends did.
pub fn ignore_eos_flags(m: &Measurement, ignore_eos: bool, max_new_tokens: u32) -> Vec<String> {
    if ignore_eos && m.generated_tokens < max_new_tokens {
        vec!["ignore_eos_not_honoured".to_string()]
    } else {
        Vec::new()
    }
}

/// With a cache-busting prefix: flag a row whose prompt length cannot be checked against the
/// expected one (prompt + prefix), or whose prefix length no tokenizer measured. A row whose
/// count differs is already flagged by [`row_flags`] (it is given the expected count).
pub fn cache_bust_flags(m: &Measurement, expected: Option<u32>, verified: bool) -> Vec<String> {
    let mut flags = Vec::new();
    if !verified {
        flags.push("cache_bust_tokens_unmeasured".to_string());
    }
    if m.prompt_tokens.is_none() || expected.is_none() {
        flags.push("cache_bust_unverified".to_string());
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_hits_and_token_mismatch_are_flagged() {
        let m = Measurement {
            first_token: " x".into(),
            cache_n: Some(12),
            prompt_tokens: Some(20),
            ..Measurement::default()
        };
        let f = row_flags(&m, Some(21));
        assert_eq!(f, ["cache_hit:12", "prompt_tokens_20_vs_tokenizer_21"]);
        let clean = Measurement {
            first_token: " x".into(),
            cache_n: Some(0),
            prompt_tokens: Some(20),
            ..Measurement::default()
        };
        assert!(row_flags(&clean, Some(20)).is_empty());
        let eog = Measurement::default();
        assert_eq!(row_flags(&eog, None), ["first_token_without_text"]);
        let held_back = Measurement {
            first_token: " 😀".into(),
            first_event_tokens: Some(2),
            ..Measurement::default()
        };
        assert_eq!(row_flags(&held_back, None), ["first_event_after_tokens:2"]);
    }

    #[test]
    fn a_row_that_stopped_early_under_ignore_eos_is_flagged() {
        let m = |n| Measurement {
            generated_tokens: n,
            ..Measurement::default()
        };
        assert_eq!(
            ignore_eos_flags(&m(8), true, 32),
            ["ignore_eos_not_honoured"]
        );
        assert!(ignore_eos_flags(&m(32), true, 32).is_empty());
        assert!(
            ignore_eos_flags(&m(8), false, 32).is_empty(),
            "EOS is fine without it"
        );
    }

    #[test]
    fn a_prefix_that_cannot_be_checked_is_flagged() {
        let m = Measurement {
            prompt_tokens: Some(25),
            ..Measurement::default()
        };
        assert!(cache_bust_flags(&m, Some(25), true).is_empty());
        assert_eq!(cache_bust_flags(&m, None, true), ["cache_bust_unverified"]);
        let unknown = Measurement::default();
        assert_eq!(
            cache_bust_flags(&unknown, Some(25), false),
            ["cache_bust_tokens_unmeasured", "cache_bust_unverified"]
        );
    }

    #[test]
    fn a_record_has_a_measurement_or_an_error() {
        let id = PromptId::new("short", 2);
        let ctx = RunContext {
            prompt: &id,
            text: "hi",
            runner: BackendKind::Api,
            point: "threads=1",
            max_new_tokens: 10,
            depth: 0,
            turn: None,
        };
        let ok = RunRecord::success(&ctx, 0, Measurement::default(), vec![]);
        assert!(ok.ok && ok.error.is_none() && ok.measurement.is_some());
        let bad = RunRecord::failure(&ctx, 1, "timeout");
        assert!(!bad.ok && bad.error.as_deref() == Some("timeout") && bad.measurement.is_none());
        let v = serde_json::to_value(&bad).unwrap();
        assert_eq!(v["prompt_type"], "short");
        assert_eq!(v["prompt_idx"], 2);
        assert_eq!(v["point"], "threads=1");
        assert_eq!(v["max_new_tokens"], 10);
    }
}
