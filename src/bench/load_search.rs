//! `--max-goodput`: the highest load at which the objectives hold. Each probe is a full load
//! point (warm-up, its own requests and statistics, its own rows): the load doubles from the
//! start until a probe fails (or halves until one holds), which brackets the answer, and then
//! bisection narrows the bracket to the tolerance. Open loop searches the request rate,
//! closed loop the concurrency (whole clients: it stops when the bracket is one client wide).
//!
//! The search only sees probes through a closure, so its steps are tested without a server.

use super::load::LoadMode;
use super::load_report::LoadReport;
use serde::Serialize;

/// A latency the objectives can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Time to first token.
    Ttft,
    /// Time per output token.
    Tpot,
    /// Inter-token latency.
    Itl,
    /// End-to-end latency.
    E2e,
    /// The open loop's send lateness (what limits the client itself: `scripts/bench-client.sh`).
    Late,
}

/// One objective: a percentile of a latency at most `ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Objective {
    /// The latency.
    pub metric: Metric,
    /// 50, 90 or 99.
    pub percentile: u8,
    /// Bound, ms.
    pub ms: f64,
}

impl Objective {
    fn name(&self) -> String {
        let m = serde_json::to_value(self.metric).unwrap_or_default();
        format!("{}_p{}", m.as_str().unwrap_or("?"), self.percentile)
    }

    /// The point's value of this percentile.
    pub fn value(&self, r: &LoadReport) -> Option<f64> {
        let d = match self.metric {
            Metric::Ttft => &r.ttft_ms,
            Metric::Tpot => &r.tpot_ms,
            Metric::Itl => &r.itl_ms,
            Metric::E2e => &r.e2e_ms,
            Metric::Late => {
                let l = r.lateness_ms.as_ref()?;
                return match self.percentile {
                    50 => l.p50,
                    99 => l.p99,
                    _ => None,
                };
            }
        };
        d.at(self.percentile)
    }

    /// This percentile over the point's requests that had the server to themselves (TTFT, TPOT
    /// and E2E only; None with fewer than [`MIN_ALONE`] of them).
    fn alone_value(&self, r: &LoadReport) -> Option<f64> {
        let a = &r.alone;
        let d = match self.metric {
            Metric::Ttft => &a.ttft_ms,
            Metric::Tpot => &a.tpot_ms,
            Metric::E2e => &a.e2e_ms,
            Metric::Itl | Metric::Late => return None,
        };
        (a.requests >= MIN_ALONE)
            .then(|| d.at(self.percentile))
            .flatten()
    }
}

/// Requests alone at least this often before their percentile says the objectives fail unloaded.
pub const MIN_ALONE: usize = 3;

/// Parse `ttft_p99=500,tpot_p99=50` (milliseconds).
pub fn parse_objectives(s: &str) -> Result<Vec<Objective>, String> {
    let bad = |what: &str| {
        format!("--max-goodput {s}: {what} (expected e.g. ttft_p99=500,tpot_p99=50: ttft, tpot, itl, e2e or late (send lateness); p50, p90 or p99; milliseconds)")
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(&format!("{part:?} has no =")))?;
        let (m, p) = k
            .split_once("_p")
            .ok_or_else(|| bad(&format!("{k:?} names no percentile")))?;
        let metric = match m {
            "ttft" => Metric::Ttft,
            "tpot" => Metric::Tpot,
            "itl" => Metric::Itl,
            "e2e" => Metric::E2e,
            "late" => Metric::Late,
            _ => return Err(bad(&format!("unknown latency {m:?}"))),
        };
        let percentile = match p {
            "50" => 50,
            "90" => 90,
            "99" => 99,
            _ => return Err(bad(&format!("unknown percentile p{p}"))),
        };
        let ms: f64 = v
            .trim_end_matches("ms")
            .parse()
            .ok()
            .filter(|x: &f64| *x > 0.0 && x.is_finite())
            .ok_or_else(|| bad(&format!("{v:?} is not a positive number of milliseconds")))?;
        out.push(Objective {
            metric,
            percentile,
            ms,
        });
    }
    if out.is_empty() {
        return Err(bad("no objective"));
    }
    Ok(out)
}

/// How the search runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchOptions {
    /// What must hold.
    pub objectives: Vec<Objective>,
    /// Stop bisecting when (high − low) / low is at most this.
    pub tolerance: f64,
    /// Probes at most.
    pub max_probes: usize,
}

/// One probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// "grow", "shrink" or "bisect".
    pub phase: &'static str,
    /// The load offered: request rate or concurrency.
    pub load: f64,
    /// Whether every objective held and every request succeeded.
    pub holds: bool,
    /// Each objective's value at this probe, in order (None: not measured).
    pub values: Vec<Option<f64>>,
    /// Requests that failed.
    pub failed: usize,
    /// An objective the requests that had the server to themselves already missed (so no lower
    /// load can meet it), e.g. "ttft_p99 2822.1 ms over 5 requests alone".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unloaded_miss: Option<String>,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchReport {
    /// The settings point's label (empty when there is one point).
    pub settings: String,
    /// The prompt set it searched with.
    pub set: String,
    /// `--repeat`: which repetition of the search (1-based).
    pub repeat: u32,
    /// What had to hold.
    pub objectives: Vec<Objective>,
    /// "request_rate" or "concurrency".
    pub searched: &'static str,
    /// The probes in order.
    pub probes: Vec<Probe>,
    /// Highest load that held (None: not even the smallest probe).
    pub low: Option<f64>,
    /// Lowest load that failed (None: none failed within the probes).
    pub high: Option<f64>,
    /// The tolerance asked for.
    pub tolerance: f64,
    /// Why the search stopped without a bracket, when it knows.
    pub note: Option<String>,
}

/// A start that fails is halved at most this often (1/64 of it) before the search gives up.
pub const MAX_HALVINGS: usize = 6;

/// The load `x` as a mode like `start` (a rate, or a whole number of clients).
fn at(start: LoadMode, x: f64) -> LoadMode {
    match start {
        LoadMode::Open { burstiness, .. } => LoadMode::Open {
            rate: x,
            burstiness,
        },
        LoadMode::Closed { .. } => LoadMode::Closed {
            concurrency: x.round().max(1.0) as u32,
        },
    }
}

/// Search from `start`, running each probe with `probe` (None when it could not run: Ctrl-C).
pub fn search(
    start: LoadMode,
    opts: &SearchOptions,
    probe: &mut dyn FnMut(LoadMode) -> Option<LoadReport>,
) -> SearchReport {
    let closed = matches!(start, LoadMode::Closed { .. });
    let mut s = Searcher {
        start,
        closed,
        opts,
        probe,
        rep: SearchReport {
            settings: String::new(),
            set: String::new(),
            repeat: 1,
            objectives: opts.objectives.clone(),
            searched: if closed {
                "concurrency"
            } else {
                "request_rate"
            },
            probes: Vec::new(),
            low: None,
            high: None,
            tolerance: opts.tolerance,
            note: None,
        },
    };
    if s.bracket() {
        s.bisect();
    }
    s.rep
}

/// A search in progress.
struct Searcher<'a> {
    start: LoadMode,
    closed: bool,
    opts: &'a SearchOptions,
    probe: &'a mut dyn FnMut(LoadMode) -> Option<LoadReport>,
    rep: SearchReport,
}

impl Searcher<'_> {
    /// Probe load `x`: whether it held (None: the probes are used up, or Ctrl-C).
    fn run(&mut self, phase: &'static str, x: f64) -> Option<bool> {
        if self.rep.probes.len() >= self.opts.max_probes {
            return None;
        }
        let mode = at(self.start, x);
        let r = (self.probe)(mode)?;
        let values: Vec<Option<f64>> = self.opts.objectives.iter().map(|o| o.value(&r)).collect();
        let failed = r.requests - r.ok;
        let holds = failed == 0
            && r.ok > 0
            && self
                .opts
                .objectives
                .iter()
                .zip(&values)
                .all(|(o, v)| v.is_some_and(|v| v <= o.ms));
        let unloaded_miss = self.opts.objectives.iter().find_map(|o| {
            let v = o.alone_value(&r).filter(|v| *v > o.ms)?;
            Some(format!(
                "{} {v:.1} ms over {} requests alone",
                o.name(),
                r.alone.requests
            ))
        });
        self.rep.probes.push(Probe {
            phase,
            load: mode.offered(),
            holds,
            values,
            failed,
            unloaded_miss,
        });
        Some(holds)
    }

    /// Grow from the start while it holds, or shrink while it fails: whether a bracket (a load
    /// that holds and one that fails) was found.
    fn bracket(&mut self) -> bool {
        let mut x = self.start.offered();
        match self.run("grow", x) {
            None => false,
            Some(true) => loop {
                self.rep.low = Some(x);
                x *= 2.0;
                match self.run("grow", x) {
                    None => return false,
                    Some(true) => {}
                    Some(false) => {
                        self.rep.high = Some(x);
                        return true;
                    }
                }
            },
            Some(false) => {
                self.rep.high = Some(x);
                if self.fails_unloaded() {
                    return false;
                }
                for _ in 0..MAX_HALVINGS {
                    x /= 2.0;
                    if self.closed && x < 1.0 {
                        return false;
                    }
                    match self.run("shrink", x) {
                        None => return false,
                        Some(false) if self.fails_unloaded() => {
                            self.rep.high = Some(x);
                            return false;
                        }
                        Some(false) if !self.improved() => {
                            self.rep.high = Some(x);
                            self.rep.note = Some(format!(
                                "halving the load did not lower {}: the objectives fail unloaded, not because of the load (a lower rate would only take longer)",
                                self.names()
                            ));
                            return false;
                        }
                        Some(false) => self.rep.high = Some(x),
                        Some(true) => {
                            self.rep.low = Some(x);
                            return true;
                        }
                    }
                }
                false
            }
        }
    }

    /// Whether the last probe failed even for the requests that had the server to themselves
    /// (then it says so in the note): a lower load would only take longer.
    fn fails_unloaded(&mut self) -> bool {
        let Some(miss) = self.rep.probes.last().and_then(|p| p.unloaded_miss.clone()) else {
            return false;
        };
        self.rep.note = Some(format!(
            "requests that had the server to themselves miss the objectives ({miss}): they fail unloaded, not because of the load (a lower rate would only take longer)"
        ));
        true
    }

    /// Whether the last probe's values came down by at least 10 % from the one before it on some
    /// objective (when the load halves and nothing improves, the load is not what fails them).
    fn improved(&self) -> bool {
        let p = &self.rep.probes;
        let [.., before, last] = &p[..] else {
            return true;
        };
        before
            .values
            .iter()
            .zip(&last.values)
            .any(|(b, l)| match (b, l) {
                (Some(b), Some(l)) => *l < 0.9 * b,
                _ => true,
            })
    }

    fn names(&self) -> String {
        let n: Vec<String> = self.opts.objectives.iter().map(Objective::name).collect();
        n.join(", ")
    }

    /// Halve the bracket until it is within the tolerance (one client for the closed loop).
    fn bisect(&mut self) {
        while let (Some(lo), Some(hi)) = (self.rep.low, self.rep.high) {
            let narrow = if self.closed {
                hi - lo <= 1.0
            } else {
                (hi - lo) / lo <= self.opts.tolerance
            };
            if narrow {
                return;
            }
            let mid = if self.closed {
                ((lo + hi) / 2.0).floor()
            } else {
                (lo + hi) / 2.0
            };
            match self.run("bisect", mid) {
                None => return,
                Some(true) => self.rep.low = Some(mid),
                Some(false) => self.rep.high = Some(mid),
            }
        }
    }
}

/// Which search: its settings point, prompt set and repetition.
fn which(r: &SearchReport) -> String {
    let mut parts = Vec::new();
    if !r.settings.is_empty() {
        parts.push(r.settings.clone());
    }
    if !r.set.is_empty() {
        parts.push(format!("set {}", r.set));
    }
    if r.repeat > 1 {
        parts.push(format!("repeat {}", r.repeat));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join(", "))
    }
}

/// The search as text: every probe, the bracket and the answer.
pub fn render(r: &SearchReport) -> String {
    let names: Vec<String> = r
        .objectives
        .iter()
        .map(|o| format!("{} ≤ {} ms", o.name(), o.ms))
        .collect();
    let unit = if r.searched == "concurrency" {
        "clients"
    } else {
        "req/s"
    };
    let mut s = format!(
        "max goodput search{} ({}), {} probes:\n",
        which(r),
        names.join(", "),
        r.probes.len()
    );
    for p in &r.probes {
        let vals: Vec<String> = r
            .objectives
            .iter()
            .zip(&p.values)
            .map(|(o, v)| {
                format!(
                    "{} {}",
                    o.name(),
                    v.map_or("-".into(), |v| format!("{v:.1}"))
                )
            })
            .collect();
        s.push_str(&format!(
            "  {:<6} {:>8.3} {unit}: {} ({}{})\n",
            p.phase,
            p.load,
            if p.holds { "holds" } else { "fails" },
            vals.join(", "),
            if p.failed > 0 {
                format!(", {} failed", p.failed)
            } else {
                String::new()
            },
        ));
    }
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
    s.push_str(&match (r.low, r.high) {
        (Some(lo), Some(hi)) => format!(
            "  saturation: {} {unit} (holds at {}, fails at {}{})\n",
            f(Some(lo)), f(Some(lo)), f(Some(hi)),
            if r.searched == "concurrency" { String::new() } else { format!("; tolerance {:.0}%", r.tolerance * 100.0) }
        ),
        (Some(lo), None) => format!("  holds up to {} {unit}: no probe failed within the probes; raise the start or --num-requests\n", f(Some(lo))),
        // (With a note the objectives fail unloaded: a lower start would not help.)
        (None, hi) => format!("  fails even at {} {unit}{}\n", f(hi), if r.note.is_none() { ": lower the start" } else { "" }),
    });
    if let Some(n) = &r.note {
        s.push_str(&format!("  {n}\n"));
    }
    s
}

#[cfg(test)]
#[path = "load_search_tests.rs"]
mod tests;
