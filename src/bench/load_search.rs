//! `--max-goodput`: the highest load at which the objectives hold. Each probe is a full load
//! point (warm-up, its own requests and statistics, its own rows): the load doubles from the
//! start until a probe fails (or halves until one holds), which brackets the answer, and then
//! bisection narrows the bracket to the tolerance. Open loop searches the request rate,
//! closed loop the concurrency (whole clients: it stops when the bracket is one client wide).
//!
//! The search only sees probes through a closure, so its steps are tested without a server.

use super::load::LoadMode;
use super::load_report::{Dist, LoadReport};
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
        let d: &Dist = match self.metric {
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
        match self.percentile {
            50 => d.p50,
            90 => d.p90,
            _ => d.p99,
        }
    }
}

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
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchReport {
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

fn offered(m: LoadMode) -> f64 {
    match m {
        LoadMode::Open { rate, .. } => rate,
        LoadMode::Closed { concurrency } => f64::from(concurrency),
    }
}

/// Search from `start`, running each probe with `probe` (None when it could not run: Ctrl-C).
pub fn search(
    start: LoadMode,
    opts: &SearchOptions,
    probe: &mut dyn FnMut(LoadMode) -> Option<LoadReport>,
) -> SearchReport {
    let closed = matches!(start, LoadMode::Closed { .. });
    let mut rep = SearchReport {
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
    };
    let mut run = |phase: &'static str, x: f64, rep: &mut SearchReport| -> Option<bool> {
        if rep.probes.len() >= opts.max_probes {
            return None;
        }
        let r = probe(at(start, x))?;
        let values: Vec<Option<f64>> = opts.objectives.iter().map(|o| o.value(&r)).collect();
        let failed = r.requests - r.ok;
        let holds = failed == 0
            && r.ok > 0
            && opts
                .objectives
                .iter()
                .zip(&values)
                .all(|(o, v)| v.is_some_and(|v| v <= o.ms));
        rep.probes.push(Probe {
            phase,
            load: offered(at(start, x)),
            holds,
            values,
            failed,
        });
        Some(holds)
    };
    // Bracket: grow from the start while it holds, or shrink while it fails.
    let mut x = offered(start);
    match run("grow", x, &mut rep) {
        None => return rep,
        Some(true) => {
            rep.low = Some(x);
            loop {
                x *= 2.0;
                match run("grow", x, &mut rep) {
                    None => return rep,
                    Some(true) => rep.low = Some(x),
                    Some(false) => {
                        rep.high = Some(x);
                        break;
                    }
                }
            }
        }
        Some(false) => {
            rep.high = Some(x);
            for _ in 0..MAX_HALVINGS {
                x /= 2.0;
                if closed && x < 1.0 {
                    return rep;
                }
                match run("shrink", x, &mut rep) {
                    None => return rep,
                    Some(false) => rep.high = Some(x),
                    Some(true) => {
                        rep.low = Some(x);
                        break;
                    }
                }
            }
            if rep.low.is_none() {
                return rep;
            }
        }
    }
    // Bisect.
    while let (Some(lo), Some(hi)) = (rep.low, rep.high) {
        let narrow = if closed {
            hi - lo <= 1.0
        } else {
            (hi - lo) / lo <= opts.tolerance
        };
        if narrow {
            break;
        }
        let mid = if closed {
            ((lo + hi) / 2.0).floor()
        } else {
            (lo + hi) / 2.0
        };
        match run("bisect", mid, &mut rep) {
            None => break,
            Some(true) => rep.low = Some(mid),
            Some(false) => rep.high = Some(mid),
        }
    }
    rep
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
        "max goodput search ({}), {} probes:\n",
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
        (None, hi) => format!("  fails even at {} {unit}: lower the start\n", f(hi)),
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::Slo;
    use crate::bench::load_report::{summarise, LoadSample, RunFacts};

    /// A load point whose TTFT is 100 ms per unit of load (and `failed` failures).
    fn point(mode: LoadMode, failed: usize) -> LoadReport {
        let t = offered(mode) * 100.0;
        let mut samples = vec![
            LoadSample {
                ttft_ms: Some(t),
                e2e_ms: Some(t),
                done_s: 1.0,
                ..Default::default()
            };
            4
        ];
        samples.extend(vec![LoadSample::default(); failed]);
        let facts = RunFacts {
            mode,
            label: String::new(),
            duration_s: 1.0,
            max_in_flight: 1,
            server_slots: None,
            slo: Slo::default(),
            client_cpu: None,
            warmup: 0,
        };
        summarise(&samples, &facts)
    }

    fn opts(s: &str) -> SearchOptions {
        SearchOptions {
            objectives: parse_objectives(s).unwrap(),
            tolerance: 0.1,
            max_probes: 12,
        }
    }

    fn loads(r: &SearchReport) -> Vec<(&str, f64, bool)> {
        r.probes
            .iter()
            .map(|p| (p.phase, p.load, p.holds))
            .collect()
    }

    #[test]
    fn the_rate_doubles_to_a_bracket_then_bisects_to_the_tolerance() {
        let start = LoadMode::Open {
            rate: 1.0,
            burstiness: 1.0,
        };
        let r = search(start, &opts("ttft_p99=330"), &mut |m| Some(point(m, 0)));
        assert_eq!(
            loads(&r),
            [
                ("grow", 1.0, true),
                ("grow", 2.0, true),
                ("grow", 4.0, false),
                ("bisect", 3.0, true),
                ("bisect", 3.5, false),
                ("bisect", 3.25, true),
            ]
        );
        assert_eq!((r.low, r.high), (Some(3.25), Some(3.5)));
        let text = render(&r);
        assert!(
            text.contains("saturation: 3.250 req/s (holds at 3.250, fails at 3.500"),
            "{text}"
        );
    }

    #[test]
    fn a_start_that_fails_halves_until_one_holds() {
        let start = LoadMode::Open {
            rate: 8.0,
            burstiness: 1.0,
        };
        let r = search(start, &opts("ttft_p50=150"), &mut |m| Some(point(m, 0)));
        assert_eq!(
            &loads(&r)[..3],
            [
                ("grow", 8.0, false),
                ("shrink", 4.0, false),
                ("shrink", 2.0, false)
            ]
        );
        assert_eq!(loads(&r)[3], ("shrink", 1.0, true));
        let (lo, hi) = (r.low.unwrap(), r.high.unwrap());
        assert!(lo <= 1.5 && hi > 1.5 && (hi - lo) / lo <= 0.1, "{lo} {hi}");
    }

    #[test]
    fn a_start_that_never_holds_gives_up_after_six_halvings() {
        let start = LoadMode::Open {
            rate: 64.0,
            burstiness: 1.0,
        };
        let r = search(start, &opts("ttft_p99=0.001"), &mut |m| Some(point(m, 0)));
        assert_eq!(r.probes.len(), 1 + MAX_HALVINGS);
        assert_eq!((r.low, r.high), (None, Some(1.0)));
        assert!(
            render(&r).contains("fails even at 1.000 req/s"),
            "{}",
            render(&r)
        );
    }

    #[test]
    fn concurrency_is_searched_in_whole_clients() {
        let start = LoadMode::Closed { concurrency: 1 };
        let r = search(start, &opts("ttft_p99=550"), &mut |m| Some(point(m, 0)));
        assert_eq!(
            loads(&r),
            [
                ("grow", 1.0, true),
                ("grow", 2.0, true),
                ("grow", 4.0, true),
                ("grow", 8.0, false),
                ("bisect", 6.0, false),
                ("bisect", 5.0, true),
            ]
        );
        assert_eq!(
            (r.low, r.high, r.searched),
            (Some(5.0), Some(6.0), "concurrency")
        );
    }

    #[test]
    fn failed_requests_fail_a_probe_and_an_interrupt_ends_the_search() {
        let start = LoadMode::Open {
            rate: 1.0,
            burstiness: 1.0,
        };
        let r = search(start, &opts("ttft_p99=10000"), &mut |m| Some(point(m, 1)));
        assert_eq!(loads(&r)[0], ("grow", 1.0, false));
        assert_eq!(r.probes[0].failed, 1);
        let mut n = 0;
        let r = search(start, &opts("ttft_p99=10000"), &mut |m| {
            n += 1;
            (n <= 2).then(|| point(m, 0))
        });
        assert_eq!((r.probes.len(), r.low, r.high), (2, Some(2.0), None));
        assert!(render(&r).contains("holds up to 2.000 req/s"));
    }

    #[test]
    fn objectives_parse_or_name_what_is_wrong() {
        let o = parse_objectives("ttft_p99=500, tpot_p50=40ms").unwrap();
        assert_eq!(
            o[1],
            Objective {
                metric: Metric::Tpot,
                percentile: 50,
                ms: 40.0
            }
        );
        for (bad, why) in [
            ("ttft=500", "names no percentile"),
            ("lat_p99=5", "unknown latency"),
            ("ttft_p95=5", "unknown percentile"),
            ("ttft_p99=-1", "not a positive number"),
            ("", "no objective"),
        ] {
            let e = parse_objectives(bad).unwrap_err();
            assert!(
                e.contains(why) && e.starts_with("--max-goodput"),
                "{bad}: {e}"
            );
        }
    }
}
