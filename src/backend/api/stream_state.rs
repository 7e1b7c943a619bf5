//! What a timed stream delivered: [`StreamState`] is fed every SSE event of the timed request and
//! turns them, at the end, into the run's [`Measurement`] (TTFT, token counts, stop reason, the
//! server's own numbers). Kept apart from the request code so it can be tested on scripted events.

use super::{event_token, ApiFlavor, Endpoint, EventToken};
use crate::backend::sse::{SseEvent, SseParser};
use crate::backend::{Measurement, RunError, TokenCount};
use serde_json::Value;
use std::time::Instant;

/// What a timed stream has delivered so far: when tokens arrived, their text, and the server's
/// own numbers. One method per kind of event; [`StreamState::into_measurement`] at the end.
///
/// A *token chunk* is an event that carries generated output of any kind: content, reasoning,
/// a tool call, or (native) token ids. The first one ends TTFT; `itl_ms` has one gap per token
/// chunk after it (like vLLM's benchmark, a chunk with several tokens is one gap), while
/// `generated_tokens` and TPOT use the best token count the stream offers.
pub(super) struct StreamState {
    endpoint: Endpoint,
    flavor: ApiFlavor,
    /// The clock start (just before the request body was built).
    t0: Instant,
    /// When the first token chunk arrived (TTFT), and the latest one.
    pub(super) t_first: Option<Instant>,
    t_last: Instant,
    /// The first token chunk's text.
    first: String,
    /// Gaps between consecutive token chunks, ms.
    itl: Vec<f64>,
    /// First visible content (after any reasoning text or tool call).
    t_visible: Option<Instant>,
    /// First chunk with any text (reasoning included).
    t_char: Option<Instant>,
    /// First `delta.tool_calls` chunk.
    t_tool: Option<Instant>,
    output: String,
    /// Token chunks.
    pub(super) text_events: u32,
    /// native: the sum of the per-event `tokens` arrays' lengths.
    ids: Option<u32>,
    /// native: the first token's id and bytes, when the first event is the first token alone.
    first_id: Option<u32>,
    first_bytes: Option<String>,
    /// native: `tokens_predicted` of the first token event.
    first_event_tokens: Option<u32>,
    /// llama.cpp's `timings` from the latest event that had them.
    timings: Option<Value>,
    /// The stream's own end marker: native `"stop": true`, OpenAI `[DONE]` or a finish_reason.
    completed: bool,
    /// OpenAI `usage` from the latest event that had it (final, or per chunk).
    usage: Option<Value>,
    /// OpenAI `finish_reason`, native `stop_type`.
    finish_reason: Option<String>,
    stop_type: Option<String>,
    /// vLLM: `"stop_reason": null` beside finish_reason "stop" means it stopped at EOS (else it
    /// names the stop string or token).
    stopped_at_eos: bool,
}

impl StreamState {
    pub(super) fn new(t0: Instant, endpoint: Endpoint, flavor: ApiFlavor) -> Self {
        StreamState {
            endpoint,
            flavor,
            t0,
            t_first: None,
            t_last: t0,
            first: String::new(),
            itl: Vec::new(),
            t_visible: None,
            t_char: None,
            t_tool: None,
            output: String::new(),
            text_events: 0,
            ids: None,
            first_id: None,
            first_event_tokens: None,
            first_bytes: None,
            timings: None,
            completed: false,
            usage: None,
            finish_reason: None,
            stop_type: None,
            stopped_at_eos: false,
        }
    }

    /// One SSE event. Returns `true` at the `[DONE]` marker, after which nothing is read.
    pub(super) fn event(&mut self, ev: &SseEvent) -> Result<bool, RunError> {
        if ev.is_done() {
            self.completed = true;
            return Ok(true);
        }
        let v: Value = serde_json::from_str(&ev.data).map_err(|e| {
            RunError::new(format!(
                "malformed SSE data ({e}): {}",
                ev.data.chars().take(120).collect::<String>()
            ))
        })?;
        if let Some(err) = v.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            return Err(RunError::new(format!("server error event: {msg}")));
        }
        let tok = event_token(self.endpoint, &v);
        // A finish chunk without output is no new token, except when nothing came before it:
        // then it is the only sign of the first token (an EOS straight away).
        if tok.arrived || (tok.finish_reason.is_some() && self.t_first.is_none()) {
            self.token(&tok);
        }
        self.server_fields(&v, &tok);
        Ok(false)
    }

    /// The body ended without `[DONE]`: an event still in the parser (no blank line after it)
    /// is processed like any other; a cut-off one is a broken stream unless the end was seen.
    pub(super) fn flush(&mut self, parser: &mut SseParser) -> Result<(), RunError> {
        let ev = parser
            .finish()
            .map_err(|e| RunError::new(format!("malformed SSE: {e}")))?;
        let Some(ev) = ev else { return Ok(()) };
        if !ev.is_done() && serde_json::from_str::<Value>(&ev.data).is_err() {
            if self.completed {
                return Ok(());
            }
            return Err(RunError::new(format!(
                "stream closed inside an event after {} tokens (server died or connection dropped)",
                self.text_events
            )));
        }
        self.event(&ev).map(|_| ())
    }

    /// A token chunk has just been parsed: now is when it is on the host.
    fn token(&mut self, tok: &EventToken<'_>) {
        let now = Instant::now();
        if tok.visible && self.t_visible.is_none() {
            self.t_visible = Some(now);
        }
        if !tok.text.is_empty() && self.t_char.is_none() {
            self.t_char = Some(now);
        }
        if tok.tool_call && self.t_tool.is_none() {
            self.t_tool = Some(now);
        }
        if self.t_first.is_none() {
            self.t_first = Some(now);
            self.first = tok.text.to_string();
            self.first_event_tokens = tok
                .id
                .and_then(|(_, n)| n)
                .and_then(|n| u32::try_from(n).ok());
            // Only an event that is the first generated token alone names it (llama-server
            // holds back the tokens of an incomplete character and sends the last one's id).
            if let Some((id, _)) = tok.id.filter(|(_, n)| n.is_none_or(|n| n == 1)) {
                self.first_id = Some(id);
                self.first_bytes = (!tok.text.is_empty()).then(|| hex(tok.text.as_bytes()));
            }
        } else {
            self.itl.push((now - self.t_last).as_secs_f64() * 1e3);
        }
        self.t_last = now;
        self.text_events += 1;
        if let Some(n) = tok.ids {
            self.ids = Some(self.ids.unwrap_or(0) + n);
        }
        self.output.push_str(tok.text);
    }

    /// What an event says besides its token: llama.cpp's `timings`, the end marker and why,
    /// `usage`.
    fn server_fields(&mut self, v: &Value, tok: &EventToken<'_>) {
        // OpenAI flavor: nothing llama.cpp-specific is read, even if present.
        if let (Some(t), ApiFlavor::Llama) = (v.get("timings"), self.flavor) {
            self.timings = Some(t.clone());
        }
        if v.get("stop").and_then(Value::as_bool) == Some(true) {
            self.completed = true;
            self.stop_type = v
                .get("stop_type")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        if let Some(f) = tok.finish_reason {
            self.completed = true;
            self.finish_reason = Some(f.to_string());
            self.stopped_at_eos = v
                .pointer("/choices/0/stop_reason")
                .is_some_and(Value::is_null);
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
    }

    /// `eos`, `length`, or the server's own word. OpenAI's "stop" means EOS *or* a stop string;
    /// it becomes `eos` only where the server tells them apart: vLLM's `stop_reason: null`, and
    /// llama-server's /v1/completions, which ttft sends no stop strings (the chat endpoint can
    /// add the template's own, so there "stop" stays "stop").
    fn stop_reason(&self) -> Option<String> {
        if let Some(t) = &self.stop_type {
            return Some(match t.as_str() {
                "limit" => "length".into(),
                other => other.into(),
            });
        }
        let f = self.finish_reason.as_deref()?;
        let eos = self.stopped_at_eos
            || (self.flavor == ApiFlavor::Llama && self.endpoint == Endpoint::V1);
        Some(if f == "stop" && eos { "eos" } else { f }.to_string())
    }

    /// Generated tokens and where the count comes from: the timed request's own
    /// `usage.completion_tokens`, else llama.cpp's `predicted_n`, else the native `tokens`
    /// arrays, else one per token chunk. At least one: a first token arrived.
    fn token_count(&self, predicted_n: Option<u32>) -> (u32, TokenCount) {
        let usage = self
            .usage
            .as_ref()
            .and_then(|u| u.get("completion_tokens"))
            .and_then(Value::as_u64)
            .map(|n| n as u32);
        let (n, by) = match (usage, predicted_n, self.ids) {
            (Some(n), _, _) => (n, TokenCount::Usage),
            (None, Some(n), _) => (n, TokenCount::ServerPredicted),
            (None, None, Some(n)) => (n, TokenCount::TokensArrays),
            (None, None, None) => (self.text_events, TokenCount::Chunks),
        };
        (n.max(1), by)
    }

    /// The run's numbers once the stream is over; it must have carried a token and its end
    /// marker. `e2e_ms` is read here, as the last thing.
    pub(super) fn into_measurement(self) -> Result<Measurement, RunError> {
        let Some(t_first) = self.t_first else {
            let predicted = self
                .timings
                .as_ref()
                .and_then(|t| t.get("predicted_n"))
                .and_then(Value::as_u64)
                .filter(|&n| n > 0);
            return Err(RunError::new(match predicted {
                // llama-server streams no event for tokens that end inside a UTF-8 character.
                Some(n) if self.completed => format!("stream ended with no token: the server generated {n} but streamed none (they end inside a UTF-8 character, which llama-server holds back); raise --max-new-tokens"),
                _ => "stream ended with no token".to_string(),
            }));
        };
        if !self.completed {
            return Err(RunError::new(format!(
                "stream closed after {} tokens without its end marker (server died or connection dropped)",
                self.text_events
            )));
        }
        let t0 = self.t0;
        let ms = |t: Instant| (t - t0).as_secs_f64() * 1e3;
        let ttft_ms = ms(t_first);
        let num =
            |v: &Option<Value>, k: &str| v.as_ref().and_then(|t| t.get(k)).and_then(Value::as_f64);
        let (timings, usage) = (&self.timings, &self.usage);
        let server_prompt_ms = num(timings, "prompt_ms");
        let prompt_n = num(timings, "prompt_n").map(|x| x as u32);
        // llama.cpp's timings, else OpenAI's (vLLM's) usage.prompt_tokens_details.cached_tokens.
        let cache_n = num(timings, "cache_n").map(|x| x as u32).or_else(|| {
            usage
                .as_ref()
                .and_then(|u| u.pointer("/prompt_tokens_details/cached_tokens"))
                .and_then(Value::as_u64)
                .map(|x| x as u32)
        });
        let predicted_n = num(timings, "predicted_n").map(|x| x as u32);
        let prompt_tokens = match (prompt_n, cache_n) {
            (Some(p), c) => Some(p + c.unwrap_or(0)),
            (None, _) => num(usage, "prompt_tokens").map(|x| x as u32),
        };
        let (generated, counted_by) = self.token_count(predicted_n);
        let decode = (generated > 1)
            .then(|| (self.t_last - t_first).as_secs_f64() * 1e3 / f64::from(generated - 1));
        Ok(Measurement {
            ttft_ms,
            prompt_tokens,
            server_prompt_ms,
            server_prompt_n: prompt_n,
            cache_n,
            api_overhead_ms: server_prompt_ms.map(|p| ttft_ms - p),
            generated_tokens: generated,
            tokens_counted_by: Some(counted_by),
            stop_reason: self.stop_reason(),
            itl_ms: self.itl,
            first_visible_ms: self.t_visible.map(ms),
            first_char_ms: self.t_char.filter(|&t| t != t_first).map(ms),
            first_tool_call_ms: self.t_tool.map(ms),
            decode_ms_per_token: decode,
            first_token_id: self.first_id,
            first_event_tokens: self.first_event_tokens,
            first_token_bytes: self.first_bytes,
            first_token: self.first,
            output: self.output,
            e2e_ms: ms(Instant::now()),
            ..Measurement::default()
        })
    }
}

/// Lower-case hex of `bytes` (the first token's raw bytes).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
