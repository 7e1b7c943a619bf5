//! A scripted backend for the fast test tier: the runner, statistics, exporters, exit codes and
//! `ttft compare` can be driven without a model, a server or libtorch. It never stands in for a
//! real component in the integration tests; `--backend` cannot select it.

use super::{Backend, BackendKind, Measurement, RunError};
use std::collections::BTreeMap;

/// What a prompt does on the fake backend.
#[derive(Debug, Clone)]
pub struct Script {
    /// TTFT of successive calls, ms (cycled; warm-ups are calls too).
    pub ttft_ms: Vec<f64>,
    /// Calls (by the prompt's call number, from 0, warm-ups included) that fail with this error.
    pub failures: BTreeMap<u32, String>,
    /// The token ids the prompt tokenizes to.
    pub ids: Vec<u32>,
    /// Text of the first generated token.
    pub first_token: String,
}

impl Script {
    /// A prompt that always succeeds with these TTFTs, `n_ids` prompt tokens, first token " a".
    pub fn ttfts(ttft_ms: &[f64], n_ids: u32) -> Self {
        Self {
            ttft_ms: ttft_ms.to_vec(),
            failures: BTreeMap::new(),
            ids: (0..n_ids).collect(),
            first_token: " a".into(),
        }
    }

    /// The same with run `n` failing.
    pub fn failing(mut self, n: u32, error: &str) -> Self {
        self.failures.insert(n, error.into());
        self
    }
}

/// A backend whose every answer is scripted per prompt text.
#[derive(Debug, Clone)]
pub struct FakeBackend {
    kind: BackendKind,
    scripts: BTreeMap<String, Script>,
    /// Calls seen per prompt (warm-ups included: the runner does not tell the backend).
    calls: BTreeMap<String, u32>,
    /// Sleep for the scripted TTFT, so that time-based scheduling (`--min-time`) sees it.
    sleeps: bool,
    /// Whether `set_context` is honoured (`with_cache`); otherwise a context is refused, as a
    /// backend that cannot control its cache does.
    holds_context: bool,
    /// The context `set_context` holds (reported as `cached_tokens`).
    context: Vec<u32>,
    /// Every `set_context` call's ids, in order (for tests of the protocol).
    pub contexts_set: Vec<Vec<u32>>,
}

impl FakeBackend {
    /// A fake `kind` answering `scripts` (prompt text → script).
    pub fn new(kind: BackendKind, scripts: BTreeMap<String, Script>) -> Self {
        Self {
            kind,
            scripts,
            calls: BTreeMap::new(),
            sleeps: false,
            holds_context: false,
            context: Vec::new(),
            contexts_set: Vec::new(),
        }
    }

    /// The same, taking as long as each scripted TTFT.
    pub fn sleeping(mut self) -> Self {
        self.sleeps = true;
        self
    }

    /// The same, holding what `set_context` gives it as cached context.
    pub fn with_cache(mut self) -> Self {
        self.holds_context = true;
        self
    }

    fn script(&self, prompt: &str) -> Result<&Script, RunError> {
        self.scripts
            .get(prompt)
            .ok_or_else(|| RunError::new(format!("fake backend: no script for {prompt:?}")))
    }
}

impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn load_ms(&self) -> f64 {
        1.0
    }

    fn info(&self) -> serde_json::Value {
        serde_json::json!({"fake": true, "n_params": 1.0e6})
    }

    fn token_ids(&mut self, prompt: &str) -> Result<Vec<u32>, RunError> {
        Ok(self.script(prompt)?.ids.clone())
    }

    fn set_context(&mut self, ids: &[u32]) -> Result<(), RunError> {
        if !self.holds_context && !ids.is_empty() {
            return Err(RunError::new(
                "fake: this backend cannot hold a cached context (--depth)",
            ));
        }
        self.context = ids.to_vec();
        self.contexts_set.push(ids.to_vec());
        Ok(())
    }

    fn measure(&mut self, prompt: &str, max_new_tokens: u32) -> Result<Measurement, RunError> {
        let call = {
            let c = self.calls.entry(prompt.to_string()).or_insert(0);
            *c += 1;
            *c - 1
        };
        let s = self.script(prompt)?;
        if let Some(e) = s.failures.get(&call) {
            return Err(RunError::new(e.clone()));
        }
        let ttft = s.ttft_ms[call as usize % s.ttft_ms.len()];
        if self.sleeps {
            std::thread::sleep(std::time::Duration::from_secs_f64(ttft / 1e3));
        }
        let decode = 2.0 * f64::from(max_new_tokens.saturating_sub(1));
        Ok(Measurement {
            ttft_ms: ttft,
            prompt_tokens: Some(s.ids.len() as u32),
            prefill_ms: Some(ttft * 0.9),
            generated_tokens: max_new_tokens,
            decode_ms_per_token: (max_new_tokens > 1).then_some(2.0),
            itl_ms: vec![2.0; max_new_tokens.saturating_sub(1) as usize],
            e2e_ms: ttft + decode,
            first_token: s.first_token.clone(),
            output: s.first_token.clone(),
            cached_tokens: Some(self.context.len() as u32),
            ..Measurement::default()
        })
    }
}
