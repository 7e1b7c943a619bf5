//! "Say once what we wait for": a step before timing that takes longer than two seconds (a server
//! starting, a model loading, an untimed helper request) prints one line on stderr naming what it
//! waits for, so a stuck server is never a silent hang. Quick steps print nothing, keeping the
//! default output clean, and nothing prints once the step is over: the line comes from a watcher
//! thread that the guard stops when it is dropped, so it can never land inside a timed region
//! that follows the step.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How long a step may take before it is announced.
pub const SAY_AFTER: Duration = Duration::from_secs(2);

/// Where the announcement goes (stderr in the binary, a collector in tests).
type Sink = Box<dyn FnOnce(String) + Send>;

/// While alive, announces its step once if it lasts longer than [`SAY_AFTER`]. Drop it when the
/// step is over.
#[must_use = "the notice is cancelled when the guard is dropped"]
pub struct Waiting {
    stop: Option<mpsc::Sender<()>>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl Waiting {
    /// Watch one step: `what` it waits for (a URL, "llama-server to load X"), the `stage` (e.g.
    /// "prepare", "server start") and its `bound` (e.g. "--prepare-timeout 30 s"). The line reads
    /// `ttft: waiting for WHAT (STAGE, 2 s so far; BOUND)`.
    pub fn start(what: &str, stage: &str, bound: &str) -> Self {
        Self::start_with(
            SAY_AFTER,
            line(what, stage, SAY_AFTER, bound),
            Box::new(|l| eprintln!("{l}")),
        )
    }

    /// [`Waiting::start`] with the delay, the finished line and where it goes chosen by the caller.
    pub fn start_with(after: Duration, line: String, sink: Sink) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let watcher = std::thread::Builder::new()
            .name("ttft-waiting".into())
            .spawn(move || {
                // A message or a dropped sender both mean the step is over.
                if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(after) {
                    sink(line);
                }
            })
            .ok();
        Waiting {
            stop: Some(stop),
            watcher,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Disconnecting wakes the watcher at once; joining makes sure it has printed (or not)
        // before whatever comes after the step.
        drop(self.stop.take());
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

/// The announcement.
pub fn line(what: &str, stage: &str, after: Duration, bound: &str) -> String {
    format!(
        "ttft: waiting for {what} ({stage}, {} s so far; {bound})",
        after.as_secs()
    )
}

/// Run `f` under a [`Waiting`] guard.
pub fn announced<T>(what: &str, stage: &str, bound: &str, f: impl FnOnce() -> T) -> T {
    let _w = Waiting::start(what, stage, bound);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    fn collector() -> (Arc<Mutex<Vec<String>>>, Sink) {
        let said = Arc::new(Mutex::new(Vec::new()));
        let s = said.clone();
        (said, Box::new(move |l| s.lock().unwrap().push(l)))
    }

    #[test]
    fn a_quick_step_says_nothing_and_returns_at_once() {
        let (said, sink) = collector();
        let t = Instant::now();
        let w = Waiting::start_with(Duration::from_millis(300), "slow".into(), sink);
        std::thread::sleep(Duration::from_millis(50));
        drop(w);
        // Dropping does not wait for the delay.
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(400));
        assert!(said.lock().unwrap().is_empty());
    }

    #[test]
    fn a_slow_step_says_it_once() {
        let (said, sink) = collector();
        let w = Waiting::start_with(Duration::from_millis(100), "slow".into(), sink);
        std::thread::sleep(Duration::from_millis(250));
        // Said once, while the step is still going, not once per delay.
        assert_eq!(*said.lock().unwrap(), ["slow"]);
        std::thread::sleep(Duration::from_millis(250));
        drop(w);
        assert_eq!(*said.lock().unwrap(), ["slow"]);
    }

    #[test]
    fn the_line_names_what_the_stage_and_the_bound() {
        assert_eq!(
            line(
                "http://127.0.0.1:8080/tokenize",
                "prepare",
                SAY_AFTER,
                "--prepare-timeout 30 s"
            ),
            "ttft: waiting for http://127.0.0.1:8080/tokenize (prepare, 2 s so far; --prepare-timeout 30 s)"
        );
    }
}
