//! What one load point measured: latency percentiles, throughput over the whole run and over the
//! steady window (while the target load was in force), goodput against the objectives, how late
//! the open loop's sends went out and how busy the client was, and the cache proof of requests
//! with a context. Their text is in `load_text`.

use super::load::{LoadMode, Slo};
use super::stats;
use serde::Serialize;

/// Percentiles and mean of one latency.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Dist {
    /// Mean.
    pub mean: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

impl Dist {
    /// The 50th, 90th or (any other value) 99th percentile.
    pub fn at(&self, percentile: u8) -> Option<f64> {
        match percentile {
            50 => self.p50,
            90 => self.p90,
            _ => self.p99,
        }
    }

    /// Summarise a sample.
    pub fn of(xs: &[f64]) -> Self {
        Self {
            mean: stats::mean(xs),
            p50: stats::percentile(xs, 50.0),
            p90: stats::percentile(xs, 90.0),
            p99: stats::percentile(xs, 99.0),
        }
    }
}

/// One finished request of a load run.
#[derive(Debug, Clone, Default)]
pub struct LoadSample {
    /// TTFT, ms (None when the request failed).
    pub ttft_ms: Option<f64>,
    /// TPOT, ms.
    pub tpot_ms: Option<f64>,
    /// Inter-token gaps, ms.
    pub itl_ms: Vec<f64>,
    /// End-to-end, ms.
    pub e2e_ms: Option<f64>,
    /// Output tokens.
    pub output_tokens: u32,
    /// With a cached context: whether the row proved it (`cache_n` equal to the context).
    pub context_held: Option<bool>,
    /// Open loop: how late it was sent after its scheduled time, ms.
    pub lateness_ms: Option<f64>,
    /// When it was sent, s since the point's start.
    pub sent_s: f64,
    /// When it ended, s since the start.
    pub done_s: f64,
}

/// The successful requests of a point that had the server to themselves: no other request (of
/// this point, failed ones included) was in flight from their send to their end. Their latencies
/// are the point's unloaded ones, which no lower load can improve, so the saturation search stops
/// lowering the load once these already miss an objective.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alone {
    /// How many requests were alone.
    pub requests: usize,
    /// Their TTFT, ms.
    pub ttft_ms: Dist,
    /// Their TPOT, ms.
    pub tpot_ms: Dist,
    /// Their end-to-end latency, ms.
    pub e2e_ms: Dist,
}

impl Alone {
    /// The alone requests among `samples`, by their [sent_s, done_s] intervals (sorted by send: a
    /// request overlaps an earlier one when an earlier end is past its send, a later one when the
    /// next send is before its end).
    fn of(samples: &[LoadSample]) -> Self {
        let mut order: Vec<&LoadSample> = samples.iter().collect();
        order.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
        let mut alone = Vec::new();
        let mut latest_end = f64::NEG_INFINITY;
        for (i, s) in order.iter().enumerate() {
            let after = order.get(i + 1).is_some_and(|n| n.sent_s < s.done_s);
            if latest_end <= s.sent_s && !after && s.ttft_ms.is_some() {
                alone.push(*s);
            }
            latest_end = latest_end.max(s.done_s);
        }
        Self {
            requests: alone.len(),
            ttft_ms: Dist::of(&column(&alone, |s| s.ttft_ms)),
            tpot_ms: Dist::of(&column(&alone, |s| s.tpot_ms)),
            e2e_ms: Dist::of(&column(&alone, |s| s.e2e_ms)),
        }
    }
}

/// One latency of the samples that have it.
fn column(samples: &[&LoadSample], f: fn(&LoadSample) -> Option<f64>) -> Vec<f64> {
    samples.iter().filter_map(|s| f(s)).collect()
}

/// What the load loop knows about a point besides its samples.
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// The settings point's label (empty when there is one point).
    pub settings: String,
    /// The prompt set (or dataset, or conversations) the point's requests came from.
    pub set: String,
    /// `--repeat`: which repetition of the point (1-based).
    pub repeat: u32,
    /// How requests were issued.
    pub mode: LoadMode,
    /// The point's tag in row labels (`rate=2`, `concurrency=4`).
    pub label: String,
    /// Wall time, s.
    pub duration_s: f64,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// Server slots, when known.
    pub server_slots: Option<u64>,
    /// The objectives.
    pub slo: Slo,
    /// The client's CPU time over the point's wall time (1.0 = one core busy).
    pub client_cpu: Option<f64>,
    /// Untimed warm-up requests sent before the point.
    pub warmup: u32,
}

/// How many of a load run's requests with a cached context proved it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ContextProof {
    /// Requests that followed a cached context.
    pub requests: usize,
    /// Of those, the ones whose server reused exactly the context.
    pub held: usize,
}

/// Throughput over an interval of the point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Start, s since the point's start.
    pub from_s: f64,
    /// End, s.
    pub to_s: f64,
    /// Successful requests that ended inside it.
    pub requests: usize,
    /// Those per second.
    pub request_throughput: f64,
    /// Their generated tokens per second.
    pub output_tokens_per_s: f64,
    /// Those meeting every objective, per second.
    pub goodput: f64,
}

/// Open loop: how late the sends went out, ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lateness {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

/// Lateness p99 above this and the client did not hold the offered rate.
pub const LATENESS_LIMIT_MS: f64 = 1.0;

/// The client's CPU above this fraction of its one core and it may be what limits the run.
pub const CLIENT_CPU_LIMIT: f64 = 0.9;

/// The outcome of one load point.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The settings point's label (empty when there is one point).
    pub settings: String,
    /// The prompt set its requests came from: each set is its own workload, so latencies of
    /// different sets are never pooled into one percentile.
    pub set: String,
    /// `--repeat`: which repetition of the point (1-based).
    pub repeat: u32,
    /// The point's tag (`rate=2`, `concurrency=4`).
    pub label: String,
    /// How requests were issued.
    pub mode: LoadMode,
    /// Requests issued.
    pub requests: usize,
    /// Requests that produced a first token.
    pub ok: usize,
    /// Untimed warm-up requests sent before the point.
    pub warmup: u32,
    /// Wall time of the whole point, s.
    pub duration_s: f64,
    /// Most requests in flight at once, as seen by the client.
    pub max_in_flight: usize,
    /// Server slots (llama-server `--parallel`), when known.
    pub server_slots: Option<u64>,
    /// Successful requests per second over the whole point.
    pub request_throughput: f64,
    /// Generated tokens per second over the whole point.
    pub output_tokens_per_s: f64,
    /// Requests per second that met every objective, over the whole point.
    pub goodput: f64,
    /// The steady window: from the start to the last send, while the target load was in force.
    pub steady: Option<Window>,
    /// Until the first request ended, s.
    pub ramp_up_s: Option<f64>,
    /// From the last send to the end (the requests still in flight finishing), s.
    pub drain_s: Option<f64>,
    /// TTFT, ms (open loop: from the scheduled send).
    pub ttft_ms: Dist,
    /// TPOT, ms.
    pub tpot_ms: Dist,
    /// ITL, ms (pooled).
    pub itl_ms: Dist,
    /// End-to-end latency, ms.
    pub e2e_ms: Dist,
    /// The requests that had the server to themselves, and their latencies.
    pub alone: Alone,
    /// The objectives.
    pub slo: Slo,
    /// `--depth` / `--turns` warm: the requests' cache proof (None: no request had a context).
    pub context: Option<ContextProof>,
    /// Open loop: send lateness.
    pub lateness_ms: Option<Lateness>,
    /// The client's CPU use, fraction of one core.
    pub client_cpu: Option<f64>,
    /// What makes the point's figures doubtful (the client fell behind or was saturated).
    pub warnings: Vec<String>,
    /// The server's `/metrics` over the point (counter increases, gauges before and after), or
    /// why they are unavailable.
    pub server_metrics: serde_json::Value,
    /// llama-server's `/slots` before and after the point, or why it is unavailable.
    pub server_slots_state: serde_json::Value,
}

fn good(slo: &Slo, s: &LoadSample) -> bool {
    slo.met(
        s.ttft_ms.unwrap_or(f64::MAX),
        s.tpot_ms,
        s.e2e_ms.unwrap_or(f64::MAX),
    )
}

/// Throughput of the successful samples that ended in [from, to].
fn window(ok: &[&LoadSample], slo: &Slo, from: f64, to: f64) -> Option<Window> {
    let d = to - from;
    if d < 1e-3 {
        return None;
    }
    let inside: Vec<&&LoadSample> = ok.iter().filter(|s| s.done_s <= to).collect();
    Some(Window {
        from_s: from,
        to_s: to,
        requests: inside.len(),
        request_throughput: inside.len() as f64 / d,
        output_tokens_per_s: inside
            .iter()
            .map(|s| f64::from(s.output_tokens))
            .sum::<f64>()
            / d,
        goodput: inside.iter().filter(|s| good(slo, s)).count() as f64 / d,
    })
}

fn lateness(samples: &[LoadSample]) -> Option<Lateness> {
    let xs: Vec<f64> = samples.iter().filter_map(|s| s.lateness_ms).collect();
    (!xs.is_empty()).then(|| Lateness {
        p50: stats::percentile(&xs, 50.0),
        p99: stats::percentile(&xs, 99.0),
        max: xs.iter().copied().reduce(f64::max),
    })
}

fn warnings(late: Option<&Lateness>, cpu: Option<f64>) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(p99) = late.and_then(|l| l.p99).filter(|&p| p > LATENESS_LIMIT_MS) {
        w.push(format!("the client sent late: lateness p99 {p99:.2} ms > {LATENESS_LIMIT_MS} ms, so the offered rate was not held (latencies still count from the schedule); lower --request-rate or free the client's core"));
    }
    if let Some(c) = cpu.filter(|&c| c >= CLIENT_CPU_LIMIT) {
        w.push(format!(
            "the client used {:.0}% of its core: it may be what limits this point",
            c * 100.0
        ));
    }
    w
}

/// Summarise a load point.
pub fn summarise(samples: &[LoadSample], facts: &RunFacts) -> LoadReport {
    let ok: Vec<&LoadSample> = samples.iter().filter(|s| s.ttft_ms.is_some()).collect();
    let d = facts.duration_s.max(1e-9);
    let with_context: Vec<bool> = samples.iter().filter_map(|s| s.context_held).collect();
    let last_send = samples.iter().map(|s| s.sent_s).reduce(f64::max);
    let late = lateness(samples);
    LoadReport {
        settings: facts.settings.clone(),
        set: facts.set.clone(),
        repeat: facts.repeat,
        label: facts.label.clone(),
        mode: facts.mode,
        requests: samples.len(),
        ok: ok.len(),
        warmup: facts.warmup,
        duration_s: facts.duration_s,
        max_in_flight: facts.max_in_flight,
        server_slots: facts.server_slots,
        request_throughput: ok.len() as f64 / d,
        output_tokens_per_s: ok.iter().map(|s| f64::from(s.output_tokens)).sum::<f64>() / d,
        goodput: ok.iter().filter(|s| good(&facts.slo, s)).count() as f64 / d,
        steady: last_send.and_then(|t| window(&ok, &facts.slo, 0.0, t)),
        ramp_up_s: ok.iter().map(|s| s.done_s).reduce(f64::min),
        drain_s: last_send.map(|t| (facts.duration_s - t).max(0.0)),
        ttft_ms: Dist::of(&column(&ok, |s| s.ttft_ms)),
        tpot_ms: Dist::of(&column(&ok, |s| s.tpot_ms)),
        itl_ms: Dist::of(
            &ok.iter()
                .flat_map(|s| s.itl_ms.iter().copied())
                .collect::<Vec<_>>(),
        ),
        e2e_ms: Dist::of(&column(&ok, |s| s.e2e_ms)),
        alone: Alone::of(samples),
        slo: facts.slo,
        context: (!with_context.is_empty()).then(|| ContextProof {
            requests: with_context.len(),
            held: with_context.iter().filter(|&&h| h).count(),
        }),
        warnings: warnings(late.as_ref(), facts.client_cpu),
        lateness_ms: late,
        client_cpu: facts.client_cpu,
        server_metrics: serde_json::Value::Null,
        server_slots_state: serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::parse_slo;

    fn facts(slo: Slo) -> RunFacts {
        RunFacts {
            settings: String::new(),
            set: "short".into(),
            repeat: 1,
            mode: LoadMode::Closed { concurrency: 2 },
            label: "concurrency=2".into(),
            duration_s: 2.0,
            max_in_flight: 2,
            server_slots: Some(2),
            slo,
            client_cpu: Some(0.1),
            warmup: 0,
        }
    }

    fn sample(t: f64, sent_s: f64, done_s: f64) -> LoadSample {
        LoadSample {
            ttft_ms: Some(t),
            tpot_ms: Some(5.0),
            itl_ms: vec![5.0],
            e2e_ms: Some(t + 50.0),
            output_tokens: 10,
            sent_s,
            done_s,
            ..Default::default()
        }
    }

    #[test]
    fn slo_and_goodput() {
        let slo = parse_slo("ttft=100,tpot=10").unwrap();
        assert!(slo.met(90.0, Some(9.0), 1e9));
        assert!(!slo.met(110.0, Some(9.0), 0.0));
        assert!(parse_slo("ttft=fast").is_err());
        assert!(parse_slo("latency=5").is_err());
        let failed = LoadSample::default();
        let r = summarise(
            &[sample(50.0, 0.0, 0.5), sample(150.0, 0.0, 1.5), failed],
            &facts(slo),
        );
        assert_eq!((r.requests, r.ok), (3, 2));
        assert!((r.request_throughput - 1.0).abs() < 1e-9);
        assert!((r.goodput - 0.5).abs() < 1e-9);
        assert!((r.output_tokens_per_s - 10.0).abs() < 1e-9);
        assert_eq!(r.ttft_ms.p50, Some(100.0));
        assert!(r.warnings.is_empty() && r.lateness_ms.is_none());
    }

    #[test]
    fn the_steady_window_ends_at_the_last_send_and_drain_is_separate() {
        // Sends at 0, 1 and 2 s; the last request ends at 3.5 s.
        let samples = [
            sample(10.0, 0.0, 0.4),
            sample(10.0, 1.0, 1.4),
            sample(10.0, 2.0, 3.5),
        ];
        let r = summarise(
            &samples,
            &RunFacts {
                duration_s: 3.5,
                ..facts(Slo::default())
            },
        );
        let w = r.steady.unwrap();
        assert_eq!((w.to_s, w.requests), (2.0, 2));
        assert!((w.request_throughput - 1.0).abs() < 1e-9);
        assert!((r.drain_s.unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(r.ramp_up_s, Some(0.4));
        // The first two ran alone; the third was alone too (sent after the second ended).
        assert_eq!(r.alone.requests, 3);
        // Over the whole point the drain lowers the rate: 3 / 3.5 s.
        assert!((r.request_throughput - 3.0 / 3.5).abs() < 1e-9);
    }

    #[test]
    fn alone_are_the_requests_nothing_else_overlapped() {
        // [0, 1] overlaps [0.5, 2]; [3, 4] is alone; a failed one at [5, 6] is not counted but
        // still takes [5.5, 7] out.
        let failed = LoadSample {
            sent_s: 5.0,
            done_s: 6.0,
            ..Default::default()
        };
        let samples = [
            sample(10.0, 0.5, 2.0),
            sample(20.0, 0.0, 1.0),
            sample(30.0, 3.0, 4.0),
            failed,
            sample(40.0, 5.5, 7.0),
        ];
        let a = summarise(&samples, &facts(Slo::default())).alone;
        assert_eq!(a.requests, 1);
        assert_eq!((a.ttft_ms.p99, a.e2e_ms.p50), (Some(30.0), Some(80.0)));
    }

    #[test]
    fn a_late_or_busy_client_is_a_warning() {
        let mut late = sample(10.0, 0.0, 0.1);
        late.lateness_ms = Some(4.0);
        let f = RunFacts {
            client_cpu: Some(0.95),
            ..facts(Slo::default())
        };
        let r = summarise(&[late], &f);
        assert_eq!(r.lateness_ms.as_ref().unwrap().max, Some(4.0));
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("lateness p99 4.00 ms"));
        assert!(super::super::load_text::render(&r)
            .contains("warning: the client used 95% of its core"));
    }
}
