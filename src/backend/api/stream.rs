//! The timed request: send the body, read the SSE stream, stamp the first token and every later
//! one, and turn what the stream delivered into a [`Measurement`].

use super::body::Ask;
use super::stream_state::StreamState;
use super::{conn, error_chain, ApiBackend, ApiFlavor};
use crate::backend::sse::SseParser;
use crate::backend::{Measurement, RunError};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How a timed request gets its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Connection {
    /// Opened just before the clock starts (a keep-alive client's setup is not per request).
    PreOpened,
    /// Opened inside the clock (`--fresh-connection`, and load runs).
    Fresh,
}

impl Connection {
    fn label(self) -> &'static str {
        match self {
            Connection::PreOpened => "pre-opened",
            Connection::Fresh => "fresh",
        }
    }
}

impl ApiBackend {
    pub(super) async fn stream_one(
        &self,
        ask: &Ask<'_>,
        how: Connection,
    ) -> Result<Measurement, RunError> {
        let mut headers = None;
        let mut r = self.stream_timed(ask, how, &mut headers).await;
        // A field the server refused while validating the request: nothing was generated or
        // cached, so the run is asked again, on a fresh clock, without it (and it is not sent
        // any more). Each field is dropped at most once, so this ends.
        loop {
            if r.as_ref().is_err_and(|e| self.rejects_continuous_usage(e)) {
                self.no_continuous_usage.store(true, Ordering::Relaxed);
                eprintln!("ttft: api: the server rejects stream_options.continuous_usage_stats; not sending it (counts come from the final usage)");
            } else if let Some(refused) = r
                .as_ref()
                .err()
                .map(|e| self.ignore_eos.take_rejected(self.flavor, e))
                .filter(|f| !f.is_empty())
            {
                eprintln!("ttft: api: the server rejects {} (--ignore-eos); not sending it (rows that stop early are flagged ignore_eos_not_honoured)", refused.join(", "));
            } else {
                break;
            }
            r = self.stream_timed(ask, how, &mut headers).await;
        }
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
    /// a client pays) and the first token is stamped the moment its event has been parsed. The
    /// connection is opened before the clock unless `how` is [`Connection::Fresh`].
    async fn stream_timed(
        &self,
        ask: &Ask<'_>,
        how: Connection,
        headers: &mut Option<(u16, Duration)>,
    ) -> Result<Measurement, RunError> {
        let connect = || async {
            self.target
                .open(self.settings.connect_timeout)
                .await
                .map_err(|e| RunError::new(format!("request failed: {}", error_chain(&e))))
        };
        let pre = match how {
            Connection::PreOpened => Some(connect().await?),
            Connection::Fresh => None,
        };
        let t0 = Instant::now();
        let mut conn = match pre {
            Some(c) => c,
            None => connect().await?,
        };
        let body = serde_json::to_vec(&self.request_body(ask))
            .map_err(|e| RunError::new(format!("request body: {e}")))?;
        let req = self
            .target
            .post(
                self.settings.endpoint.path(),
                body,
                self.settings.api_key.as_ref(),
            )
            .map_err(|e| RunError::new(format!("request failed: {}", error_chain(&e))))?;
        let resp = tokio::time::timeout(self.settings.first_token_timeout, conn.send(req))
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
            return Err(http_error(resp, status.as_u16()).await);
        }
        let ctype = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !ctype.starts_with("text/event-stream") {
            return Err(RunError::new(format!(
                "HTTP {} answer is not an event stream (content-type {ctype:?})",
                status.as_u16()
            )));
        }

        // Owned here, not in read_stream: dropping the stream (and `conn`, declared before it, so
        // dropped after it) closes the connection, and that must come after into_measurement has
        // read the end-to-end clock, not before.
        let mut stream = conn::body_stream(resp);
        let mut parser = SseParser::default();
        let mut m = self
            .read_stream(&mut stream, &mut parser, t0)
            .await?
            .into_measurement()?;
        m.connect_ms = Some(conn.connect_ms);
        m.connection = Some(how.label().to_string());
        Ok(m)
    }

    /// Read the event stream to its end, feeding every event to a [`StreamState`]. Until the
    /// first token the first-token deadline applies, after it the whole request's.
    async fn read_stream<C: AsRef<[u8]>, E: std::error::Error>(
        &self,
        stream: &mut (impl Stream<Item = Result<C, E>> + Unpin),
        parser: &mut SseParser,
        t0: Instant,
    ) -> Result<StreamState, RunError> {
        let mut st = StreamState::new(t0, self.settings.endpoint, self.flavor);
        let mut done = false;
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
                    done = true;
                    break 'read;
                }
            }
        }
        if !done {
            st.flush(parser)?;
        }
        Ok(st)
    }

    /// The openai flavor's `continuous_usage_stats` was refused (HTTP 400/422 naming it): a
    /// server that rejects fields it does not know.
    fn rejects_continuous_usage(&self, e: &RunError) -> bool {
        self.flavor == ApiFlavor::Openai
            && !self.no_continuous_usage.load(Ordering::Relaxed)
            && (e.0.starts_with("HTTP 400") || e.0.starts_with("HTTP 422"))
            && e.0.contains("continuous_usage_stats")
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

/// A non-2xx answer: a bounded read of the error body, keeping the server's own message and type
/// (llama-server: {"error": {"message": ..., "type": "exceed_context_size_error"}}).
async fn http_error(resp: hyper::Response<hyper::body::Incoming>, status: u16) -> RunError {
    let text = conn::read_bounded(resp, 64 * 1024).await;
    let v = serde_json::from_str::<Value>(&text).ok();
    let field = |k: &str| {
        v.as_ref()
            .and_then(|v| v.pointer(&format!("/error/{k}")))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let msg = field("message").unwrap_or_else(|| text.chars().take(300).collect());
    let kind = field("type").map(|t| format!(" {t}")).unwrap_or_default();
    RunError::new(format!("HTTP {status}{kind}: {}", msg.trim()))
}
