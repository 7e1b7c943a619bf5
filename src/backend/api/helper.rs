//! The untimed helper requests' one way out: probe (`/props`, `/v1/models`), `/metrics`,
//! `/tokenize`, `/apply-template` and the OpenAI tokenize probes all go through
//! [`ApiBackend::helper`], which bounds each by `--prepare-timeout` (not by the timed runs'
//! `--request-timeout`: a stuck server must not hold up the start for ten minutes) and says what
//! it waits for after two seconds. A request that gets no answer in time is remembered: every
//! later helper request fails at once with the same message instead of waiting again.

use super::{error_chain, ApiBackend};
use crate::backend::waiting::Waiting;
use crate::backend::RunError;

/// Why an untimed helper request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HelperError {
    /// No answer within `--prepare-timeout`: ttft stops before timing (exit 2). The message names
    /// the server, the request and what to do.
    Stalled(String),
    /// Anything else (refused, HTTP error status handled by the caller, a broken body): the
    /// caller decides whether it matters.
    Failed(String),
}

impl HelperError {
    /// The one-line message.
    pub fn message(&self) -> &str {
        match self {
            HelperError::Stalled(m) | HelperError::Failed(m) => m,
        }
    }
}

impl From<HelperError> for RunError {
    fn from(e: HelperError) -> Self {
        RunError::new(e.message())
    }
}

impl ApiBackend {
    /// Which server this is, for messages: the flag that named it, or the spawned one.
    pub(super) fn who(&self) -> String {
        match &self.settings.url {
            Some(u) => format!("--api-url {u}"),
            None => format!("spawned llama-server at {}", self.base),
        }
    }

    /// A helper request that got no answer in time, if one did (later ones are not sent).
    pub fn stalled(&self) -> Option<&str> {
        self.stalled.get().map(String::as_str)
    }

    /// Send the untimed request `rb` (already carrying method, URL, body and key) for `path` and
    /// read its answer: (HTTP status, body text). Bounded by `--prepare-timeout`; announced on
    /// stderr after two seconds.
    pub(super) fn helper(
        &self,
        method: &str,
        path: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<(u16, String), HelperError> {
        if let Some(m) = self.stalled.get() {
            return Err(HelperError::Stalled(m.clone()));
        }
        let limit = self.settings.prepare_timeout;
        let url = format!("{}{path}", self.base);
        let _says = Waiting::start(
            &url,
            "prepare",
            &format!("--prepare-timeout {} s", limit.as_secs_f64()),
        );
        let answer = self.rt.block_on(async {
            let r = rb.timeout(limit).send().await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.text().await?))
        });
        answer.map_err(|e| {
            if e.is_timeout() {
                let m = stalled_message(&self.who(), method, path, limit.as_secs_f64());
                let _ = self.stalled.set(m.clone());
                HelperError::Stalled(m)
            } else {
                HelperError::Failed(format!("{path}: {}", error_chain(&e)))
            }
        })
    }
}

/// The one line for a request that got no answer within `--prepare-timeout`.
fn stalled_message(who: &str, method: &str, path: &str, secs: f64) -> String {
    format!(
        "{who}: {method} {path} got no answer within {secs} s (--prepare-timeout, before timing): \
         check that the server is up and not stuck, or raise --prepare-timeout"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_names_the_server_the_request_and_what_to_do() {
        let m = stalled_message("--api-url http://127.0.0.1:9", "POST", "/tokenize", 4.0);
        assert_eq!(
            m,
            "--api-url http://127.0.0.1:9: POST /tokenize got no answer within 4 s \
             (--prepare-timeout, before timing): check that the server is up and not stuck, or \
             raise --prepare-timeout"
        );
        assert!(!m.contains('\n'));
    }
}
