//! The timed request: send the body, read the SSE stream, stamp the first token and every later
//! one, and turn what the stream delivered into a [`Measurement`].

use super::{error_chain, event_token, ApiBackend, ApiFlavor};
use crate::backend::sse::SseParser;
use crate::backend::{Measurement, RunError};
use futures_util::StreamExt;
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
            // Bounded read of the error body; keep the server's own message and type
            // (llama-server: {"error": {"message": ..., "type": "exceed_context_size_error"}}).
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
            return Err(RunError::new(format!(
                "HTTP {}{kind}: {}",
                status.as_u16(),
                msg.trim()
            )));
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

        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::default();
        let mut t_first: Option<Instant> = None;
        let mut t_last = t0;
        let mut first = String::new();
        let mut itl = Vec::new();
        // Chat: reasoning text can come before the visible answer; both moments are reported.
        let mut t_visible: Option<Instant> = None;
        let mut output = String::new();
        let mut text_events = 0u32;
        let mut timings: Option<Value> = None;
        // The stream's own end marker: native `"stop": true`, OpenAI `[DONE]` or a finish_reason.
        let mut completed = false;
        let mut usage: Option<Value> = None;
        let deadline_first = t0 + self.settings.first_token_timeout;
        let deadline_total = t0 + self.settings.total_timeout;
        'read: loop {
            let deadline = if t_first.is_none() {
                deadline_first
            } else {
                deadline_total
            };
            let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
            let chunk = match next {
                Err(_) => {
                    return Err(RunError::new(if t_first.is_none() {
                        format!(
                            "timeout (first token after {:.0} s)",
                            self.settings.first_token_timeout.as_secs_f64()
                        )
                    } else {
                        format!(
                            "timeout (request longer than {:.0} s)",
                            self.settings.total_timeout.as_secs_f64()
                        )
                    }))
                }
                Ok(None) => break 'read,
                Ok(Some(Err(e))) => {
                    return Err(RunError::new(format!(
                        "stream broke after {text_events} tokens: {}",
                        error_chain(&e)
                    )))
                }
                Ok(Some(Ok(c))) => c,
            };
            let events = parser
                .push(&chunk)
                .map_err(|e| RunError::new(format!("malformed SSE: {e}")))?;
            for ev in events {
                if ev.is_done() {
                    completed = true;
                    break 'read;
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
                let tok = event_token(self.settings.endpoint, &v);
                let (text, arrived) = (tok.text, tok.arrived);
                if arrived {
                    let now = Instant::now();
                    if tok.visible && t_visible.is_none() {
                        t_visible = Some(now);
                    }
                    if t_first.is_none() {
                        t_first = Some(now);
                        first = text.to_string();
                    } else {
                        itl.push((now - t_last).as_secs_f64() * 1e3);
                    }
                    t_last = now;
                    text_events += 1;
                    output.push_str(text);
                }
                // OpenAI flavor: nothing llama.cpp-specific is read, even if present.
                if let (Some(t), ApiFlavor::Llama) = (v.get("timings"), self.flavor) {
                    timings = Some(t.clone());
                }
                let stop = v.get("stop").and_then(Value::as_bool) == Some(true);
                let finish = v
                    .pointer("/choices/0/finish_reason")
                    .is_some_and(|f| !f.is_null());
                if stop || finish {
                    completed = true;
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    usage = Some(u.clone());
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
        let cache_n = num(&timings, "cache_n").map(|x| x as u32);
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
