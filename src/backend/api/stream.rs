//! The timed request: send the body, read the SSE stream, stamp the first token and every later
//! one, and turn what the stream delivered into a [`Measurement`].

use super::{error_chain, event_token, ApiBackend, ApiFlavor, Endpoint, EventToken};
use crate::backend::sse::{SseEvent, SseParser};
use crate::backend::{Measurement, RunError};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::time::{Duration, Instant};

impl ApiBackend {
    pub(super) async fn stream_one(
        &self,
        prompt: &str,
        max_new_tokens: u32,
    ) -> Result<Measurement, RunError> {
        let mut headers = None;
        let r = self
            .stream_timed(prompt, max_new_tokens, &mut headers)
            .await;
        if let Some((status, after)) = headers {
            eprintln!(
                "ttft: api: POST {}{} -> HTTP {status}, headers after {:.1} ms",
                self.base,
                self.settings.endpoint.path(),
                after.as_secs_f64() * 1e3
            );
        }
        r
    }

    /// One timed run. The clock starts before the body is built (serialising it is part of what
    /// a client pays) and the first token is stamped the moment its event has been parsed.
    async fn stream_timed(
        &self,
        prompt: &str,
        max_new_tokens: u32,
        headers: &mut Option<(u16, Duration)>,
    ) -> Result<Measurement, RunError> {
        let t0 = Instant::now();
        let body = self.request_body(prompt, max_new_tokens);
        let url = format!("{}{}", self.base, self.settings.endpoint.path());
        let resp = tokio::time::timeout(
            self.settings.first_token_timeout,
            self.authed(self.client.post(&url).json(&body)).send(),
        )
        .await
        .map_err(|_| {
            RunError::new(format!(
                "timeout (no response headers after {:.0} s)",
                self.settings.first_token_timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| RunError::new(format!("request failed: {}", error_chain(&e))))?;

        let status = resp.status();
        if self.settings.verbose >= 2 {
            // Only noted here; printed after the run, so -vv adds nothing inside the clock.
            *headers = Some((status.as_u16(), t0.elapsed()));
        }
        if !status.is_success() {
            return Err(http_error(resp, status).await);
        }
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !ctype.starts_with("text/event-stream") {
            return Err(RunError::new(format!(
                "HTTP {} answer is not an event stream (content-type {ctype:?})",
                status.as_u16()
            )));
        }

        // Owned here, not in read_stream: dropping the stream closes the connection, and that
        // must come after into_measurement has read the end-to-end clock, not before.
        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::default();
        self.read_stream(&mut stream, &mut parser, t0)
            .await?
            .into_measurement()
    }

    /// Read the event stream to its end, feeding every event to a [`StreamState`]. Until the
    /// first token the first-token deadline applies, after it the whole request's.
    async fn read_stream<C: AsRef<[u8]>>(
        &self,
        stream: &mut (impl Stream<Item = reqwest::Result<C>> + Unpin),
        parser: &mut SseParser,
        t0: Instant,
    ) -> Result<StreamState, RunError> {
        let mut st = StreamState::new(t0, self.settings.endpoint, self.flavor);
        let deadline_first = t0 + self.settings.first_token_timeout;
        let deadline_total = t0 + self.settings.total_timeout;
        'read: loop {
            let deadline = if st.t_first.is_none() {
                deadline_first
            } else {
                deadline_total
            };
            let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
            let chunk = match next {
                Err(_) => return Err(self.timeout_error(st.t_first.is_none())),
                Ok(None) => break 'read,
                Ok(Some(Err(e))) => {
                    return Err(RunError::new(format!(
                        "stream broke after {} tokens: {}",
                        st.text_events,
                        error_chain(&e)
                    )))
                }
                Ok(Some(Ok(c))) => c,
            };
            let events = parser
                .push(chunk.as_ref())
                .map_err(|e| RunError::new(format!("malformed SSE: {e}")))?;
            for ev in events {
                if st.event(&ev)? {
                    break 'read;
                }
            }
        }
        if let Some(ev) = parser
            .finish()
            .map_err(|e| RunError::new(format!("malformed SSE: {e}")))?
        {
            if !ev.is_done() && ev.data.contains("\"error\"") {
                return Err(RunError::new(format!("server error event: {}", ev.data)));
            }
        }
        Ok(st)
    }

    /// A deadline passed: the first token's (`before_first`) or the whole request's.
    fn timeout_error(&self, before_first: bool) -> RunError {
        RunError::new(if before_first {
            format!(
                "timeout (first token after {:.0} s)",
                self.settings.first_token_timeout.as_secs_f64()
            )
        } else {
            format!(
                "timeout (request longer than {:.0} s)",
                self.settings.total_timeout.as_secs_f64()
            )
        })
    }
}

/// What a timed stream has delivered so far: when tokens arrived, their text, and the server's
/// own numbers. One method per kind of event; [`StreamState::into_measurement`] at the end.
struct StreamState {
    endpoint: Endpoint,
    flavor: ApiFlavor,
    /// The clock start (just before the request body was built).
    t0: Instant,
    /// When the first token arrived (TTFT), and the latest one.
    t_first: Option<Instant>,
    t_last: Instant,
    /// The first token's text.
    first: String,
    /// Gaps between consecutive tokens, ms.
    itl: Vec<f64>,
    /// Chat: reasoning text can come before the visible answer; both moments are reported.
    t_visible: Option<Instant>,
    output: String,
    /// Events that carried a token.
    text_events: u32,
    /// llama.cpp's `timings` from the latest event that had them.
    timings: Option<Value>,
    /// The stream's own end marker: native `"stop": true`, OpenAI `[DONE]` or a finish_reason.
    completed: bool,
    /// OpenAI `usage` from the latest event that had it.
    usage: Option<Value>,
}

impl StreamState {
    fn new(t0: Instant, endpoint: Endpoint, flavor: ApiFlavor) -> Self {
        StreamState {
            endpoint,
            flavor,
            t0,
            t_first: None,
            t_last: t0,
            first: String::new(),
            itl: Vec::new(),
            t_visible: None,
            output: String::new(),
            text_events: 0,
            timings: None,
            completed: false,
            usage: None,
        }
    }

    /// One SSE event. Returns `true` at the `[DONE]` marker, after which nothing is read.
    fn event(&mut self, ev: &SseEvent) -> Result<bool, RunError> {
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
        if tok.arrived {
            self.token(tok);
        }
        self.server_fields(&v);
        Ok(false)
    }

    /// A generated token's event has just been parsed: now is when it is on the host.
    fn token(&mut self, tok: EventToken<'_>) {
        let now = Instant::now();
        if tok.visible && self.t_visible.is_none() {
            self.t_visible = Some(now);
        }
        if self.t_first.is_none() {
            self.t_first = Some(now);
            self.first = tok.text.to_string();
        } else {
            self.itl.push((now - self.t_last).as_secs_f64() * 1e3);
        }
        self.t_last = now;
        self.text_events += 1;
        self.output.push_str(tok.text);
    }

    /// What an event says besides its token: llama.cpp's `timings`, the end marker, `usage`.
    fn server_fields(&mut self, v: &Value) {
        // OpenAI flavor: nothing llama.cpp-specific is read, even if present.
        if let (Some(t), ApiFlavor::Llama) = (v.get("timings"), self.flavor) {
            self.timings = Some(t.clone());
        }
        let stop = v.get("stop").and_then(Value::as_bool) == Some(true);
        let finish = v
            .pointer("/choices/0/finish_reason")
            .is_some_and(|f| !f.is_null());
        if stop || finish {
            self.completed = true;
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
    }

    /// The run's numbers once the stream is over; it must have carried a token and its end
    /// marker. `e2e_ms` is read here, as the last thing.
    fn into_measurement(self) -> Result<Measurement, RunError> {
        let StreamState {
            t0,
            t_first,
            t_last,
            first,
            itl,
            t_visible,
            output,
            text_events,
            timings,
            completed,
            usage,
            ..
        } = self;
        let Some(t_first) = t_first else {
            return Err(RunError::new("stream ended with no token"));
        };
        if !completed {
            return Err(RunError::new(format!(
                "stream closed after {text_events} tokens without its end marker (server died or connection dropped)"
            )));
        }
        let ttft_ms = (t_first - t0).as_secs_f64() * 1e3;
        let num =
            |v: &Option<Value>, k: &str| v.as_ref().and_then(|t| t.get(k)).and_then(Value::as_f64);
        let server_prompt_ms = num(&timings, "prompt_ms");
        let prompt_n = num(&timings, "prompt_n").map(|x| x as u32);
        // llama.cpp's timings, else OpenAI's (vLLM's) usage.prompt_tokens_details.cached_tokens.
        let cache_n = num(&timings, "cache_n").map(|x| x as u32).or_else(|| {
            usage
                .as_ref()
                .and_then(|u| u.pointer("/prompt_tokens_details/cached_tokens"))
                .and_then(Value::as_u64)
                .map(|x| x as u32)
        });
        let predicted_n = num(&timings, "predicted_n").map(|x| x as u32);
        let prompt_tokens = match (prompt_n, cache_n) {
            (Some(p), c) => Some(p + c.unwrap_or(0)),
            (None, _) => num(&usage, "prompt_tokens").map(|x| x as u32),
        };
        let generated = predicted_n.unwrap_or(text_events).max(text_events.min(1));
        Ok(Measurement {
            ttft_ms,
            prompt_tokens,
            server_prompt_ms,
            server_prompt_n: prompt_n,
            cache_n,
            api_overhead_ms: server_prompt_ms.map(|p| ttft_ms - p),
            generated_tokens: generated,
            itl_ms: itl,
            first_visible_ms: t_visible.map(|t| (t - t0).as_secs_f64() * 1e3),
            decode_ms_per_token: (text_events > 1)
                .then(|| (t_last - t_first).as_secs_f64() * 1e3 / f64::from(text_events - 1)),
            e2e_ms: (Instant::now() - t0).as_secs_f64() * 1e3,
            first_token: first,
            output,
            ..Measurement::default()
        })
    }
}

/// A non-2xx answer: a bounded read of the error body, keeping the server's own message and type
/// (llama-server: {"error": {"message": ..., "type": "exceed_context_size_error"}}).
async fn http_error(resp: reqwest::Response, status: reqwest::StatusCode) -> RunError {
    let text = read_bounded(resp, 64 * 1024).await;
    let v = serde_json::from_str::<Value>(&text).ok();
    let field = |k: &str| {
        v.as_ref()
            .and_then(|v| v.pointer(&format!("/error/{k}")))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let msg = field("message").unwrap_or_else(|| text.chars().take(300).collect());
    let kind = field("type").map(|t| format!(" {t}")).unwrap_or_default();
    RunError::new(format!("HTTP {}{kind}: {}", status.as_u16(), msg.trim()))
}

/// Read at most `limit` bytes of a response body as text (an error page can be anything).
async fn read_bounded(resp: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await
    {
        buf.extend_from_slice(&chunk);
        if buf.len() >= limit {
            buf.truncate(limit);
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}
