//! An unwind boundary around a backend, so that a panic inside it (tch turns every libtorch error
//! — CUDA out of memory, a shape error, an index past GPT-2's position table — into a panic)
//! becomes a failed row or a load error instead of ending the process before the JSON is written
//! and before the other backends have run.
//!
//! A caught panic prints one line (what failed and where), not the default hook's message and
//! backtrace; panics outside a guarded call keep the previous hook, so real bugs stay loud.

use super::{Backend, BackendKind, Measurement, RunError};
use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    /// What the current thread is running inside [`catch`] (None outside any guard).
    static GUARDED: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// A backend whose panics ended this many *different* prompts in a row (no success between) is
/// taken as broken: its remaining runs fail at once instead of each paying for another failure.
/// The same prompt panicking again (a prompt the model cannot take) does not count twice.
pub const MAX_PANICKING_PROMPTS: usize = 3;

/// Install (once) a panic hook that prints one line for panics inside [`catch`] and hands every
/// other panic to the hook that was there before.
fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| match GUARDED.with(Cell::get) {
            Some(what) => {
                let at = info
                    .location()
                    .map(|l| format!(" ({}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                eprintln!(
                    "ttft: caught a panic in {what}{at}: {}",
                    describe(info.payload())
                );
            }
            None => previous(info),
        }));
    });
}

/// Run `f` behind an unwind boundary; a panic comes back as its one-line description.
/// `what` names the call for the hook's line ("hf measure").
pub fn catch<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = GUARDED.with(|g| g.replace(Some(what)));
    // AssertUnwindSafe: after a panic the caller either drops what `f` touched (a failed open) or
    // keeps using a backend whose per-run state (the KV cache) is made fresh by every run.
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    r.map_err(|p| describe(p.as_ref()))
}

/// The panic's message on one line. tch panics with the `Debug` form of its error,
/// `called Result::unwrap() on an Err value: Torch("msg\nException raised from …")`: that
/// becomes `libtorch error: msg` (libtorch's C++ backtrace dropped).
pub fn describe(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".into());
    match text.split_once("Torch(\"") {
        Some((_, rest)) => {
            let msg = rest.trim_end_matches("\")");
            let first = msg.split("\\n").next().unwrap_or(msg).trim();
            format!("libtorch error: {first}")
        }
        None => {
            let first = text.lines().next().unwrap_or("").trim();
            format!("panic: {first}")
        }
    }
}

/// A [`Backend`] behind the unwind boundary: `measure`, `token_ids` and `prompt_token_count`
/// panics become [`RunError`]s. Generic, so any backend whose library can panic can use it.
pub struct Guarded<B> {
    inner: B,
    /// `(kind) measure` / `(kind) token ids`, for the hook's line.
    names: [&'static str; 2],
    /// Prompts whose runs panicked since the last success.
    panicked: HashSet<String>,
    /// Set once [`MAX_PANICKING_PROMPTS`] is reached: why every further run fails at once.
    broken: Option<String>,
}

impl<B: Backend> Guarded<B> {
    /// Wrap `inner`.
    pub fn new(inner: B) -> Self {
        let names = match inner.kind() {
            BackendKind::Hf => ["hf measure", "hf tokenize"],
            BackendKind::Inproc => ["inproc measure", "inproc tokenize"],
            BackendKind::Api => ["api measure", "api tokenize"],
        };
        Self {
            inner,
            names,
            panicked: HashSet::new(),
            broken: None,
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn guarded<T>(
        &mut self,
        which: usize,
        prompt: &str,
        f: impl FnOnce(&mut B) -> Result<T, RunError>,
    ) -> Result<T, RunError> {
        if let Some(why) = &self.broken {
            return Err(RunError::new(why.clone()));
        }
        let inner = &mut self.inner;
        match catch(self.names[which], || f(inner)) {
            Ok(r) => {
                if r.is_ok() {
                    self.panicked.clear();
                }
                r
            }
            Err(msg) => {
                self.panicked.insert(prompt.to_string());
                if self.panicked.len() >= MAX_PANICKING_PROMPTS {
                    self.broken = Some(format!(
                        "not run: the {} backend panicked on {} different prompts in a row (last: {msg})",
                        self.inner.kind(),
                        self.panicked.len()
                    ));
                }
                Err(RunError::new(msg))
            }
        }
    }
}

impl<B: Backend> Backend for Guarded<B> {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn load_ms(&self) -> f64 {
        self.inner.load_ms()
    }

    fn info(&self) -> serde_json::Value {
        self.inner.info()
    }

    fn token_ids(&mut self, prompt: &str) -> Result<Vec<u32>, RunError> {
        self.guarded(1, prompt, |b| b.token_ids(prompt))
    }

    fn prompt_token_count(&mut self, prompt: &str) -> Result<u32, RunError> {
        self.guarded(1, prompt, |b| b.prompt_token_count(prompt))
    }

    fn set_context(&mut self, ids: &[u32]) -> Result<(), RunError> {
        self.guarded(1, "(context)", |b| b.set_context(ids))
    }

    fn measure(&mut self, prompt: &str, max_new_tokens: u32) -> Result<Measurement, RunError> {
        self.guarded(0, prompt, |b| b.measure(prompt, max_new_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tch_panics_read_as_one_libtorch_line() {
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from(
            "called `Result::unwrap()` on an `Err` value: Torch(\"index out of range in self\\nException raised from operator() at aten/src/ATen/native/TensorAdvancedIndexing.cpp:1190\")",
        ));
        assert_eq!(
            describe(p.as_ref()),
            "libtorch error: index out of range in self"
        );
        let p: Box<dyn std::any::Any + Send> = Box::new("boom\nmore");
        assert_eq!(describe(p.as_ref()), "panic: boom");
    }

    #[test]
    fn catch_returns_the_value_or_the_message() {
        assert_eq!(catch("test", || 7), Ok(7));
        let e = catch("test", || -> u32 { panic!("inside") }).unwrap_err();
        assert_eq!(e, "panic: inside");
        // Outside a guard the thread is not marked (the previous hook handles real bugs).
        assert_eq!(GUARDED.with(Cell::get), None);
    }

    /// A backend that panics on prompts containing "bad".
    struct Panicky;

    impl Backend for Panicky {
        fn kind(&self) -> BackendKind {
            BackendKind::Hf
        }
        fn load_ms(&self) -> f64 {
            0.0
        }
        fn info(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn token_ids(&mut self, prompt: &str) -> Result<Vec<u32>, RunError> {
            Ok(vec![0; prompt.len()])
        }
        fn measure(&mut self, prompt: &str, _: u32) -> Result<Measurement, RunError> {
            assert!(!prompt.contains("bad"), "cannot take {prompt}");
            Ok(Measurement::default())
        }
    }

    #[test]
    fn a_panicking_run_is_an_error_and_the_backend_stays_until_it_is_broken() {
        let mut b = Guarded::new(Panicky);
        let e = b.measure("bad one", 2).unwrap_err();
        assert!(e.0.starts_with("panic: cannot take bad one"), "{e}");
        // The same prompt again does not count as another prompt; a success resets the count.
        assert!(b.measure("bad one", 2).is_err());
        assert!(b.measure("bad two", 2).is_err());
        assert!(b.measure("good", 2).is_ok());
        for p in ["bad a", "bad b", "bad c"] {
            assert!(b.measure(p, 2).is_err());
        }
        let e = b.measure("good", 2).unwrap_err();
        assert!(e.0.contains("panicked on 3 different prompts"), "{e}");
    }
}
