//! Load: many requests against one server, closed loop (`--concurrency N`: N clients, each sends
//! its next request when the previous one ended) or open loop (`--request-rate R`: arrivals with
//! gamma-distributed gaps, `--burstiness` 1 = Poisson, lower = burstier, higher = more regular;
//! vLLM's convention). Per request the same measurement as a single run; over the run: percentiles
//! of TTFT, TPOT, ITL and end-to-end latency, request and output-token throughput, and goodput
//! (requests per second meeting `--slo`).

use super::stats::{self, SplitMix64};
use serde::Serialize;

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum LoadMode {
    /// N clients back to back.
    Closed {
        /// Clients in flight.
        concurrency: u32,
    },
    /// Scheduled arrivals.
    Open {
        /// Mean requests per second.
        rate: f64,
        /// Gamma shape of the gaps (1 = Poisson).
        burstiness: f64,
    },
}

/// What a load run issues.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    /// How requests are issued.
    pub mode: LoadMode,
    /// Requests at most.
    pub requests: usize,
    /// Stop issuing after this long.
    pub duration: Option<std::time::Duration>,
    /// Seed of the arrival schedule.
    pub seed: u64,
}

/// Service-level objectives for goodput (a request counts when it meets all that are set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slo {
    /// Maximum TTFT, ms.
    pub ttft_ms: Option<f64>,
    /// Maximum TPOT, ms.
    pub tpot_ms: Option<f64>,
    /// Maximum end-to-end latency, ms.
    pub e2e_ms: Option<f64>,
}

/// Parse `ttft=500,tpot=50,e2e=2000` (milliseconds).
pub fn parse_slo(s: &str) -> Result<Slo, String> {
    let mut slo = Slo::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("--slo {s}: expected key=milliseconds, got {part:?}"))?;
        let v: f64 = v
            .trim_end_matches("ms")
            .parse()
            .map_err(|_| format!("--slo {s}: {v:?} is not a number of milliseconds"))?;
        match k {
            "ttft" => slo.ttft_ms = Some(v),
            "tpot" => slo.tpot_ms = Some(v),
            "e2e" => slo.e2e_ms = Some(v),
            _ => {
                return Err(format!(
                    "--slo {s}: unknown objective {k:?} (ttft, tpot, e2e)"
                ))
            }
        }
    }
    Ok(slo)
}

impl Slo {
    /// Whether a request with these figures meets every objective that is set.
    pub fn met(&self, ttft: f64, tpot: Option<f64>, e2e: f64) -> bool {
        self.ttft_ms.is_none_or(|m| ttft <= m)
            && self.tpot_ms.is_none_or(|m| tpot.is_none_or(|t| t <= m))
            && self.e2e_ms.is_none_or(|m| e2e <= m)
    }
}

/// A gamma variate with `shape` and `scale` (Marsaglia & Tsang; shape < 1 by boosting).
pub fn gamma(rng: &mut SplitMix64, shape: f64, scale: f64) -> f64 {
    let uniform =
        |rng: &mut SplitMix64| ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    if shape < 1.0 {
        let u = uniform(rng);
        return gamma(rng, shape + 1.0, scale) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        // Standard normal by Box-Muller.
        let (u1, u2) = (uniform(rng), uniform(rng));
        let x = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = uniform(rng);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v * scale;
        }
    }
}

/// Arrival times (seconds from the start) of `n` requests at `rate` per second with gamma gaps
/// of shape `burstiness` (mean gap 1 / rate whatever the shape).
pub fn arrivals(n: usize, rate: f64, burstiness: f64, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    let scale = 1.0 / (rate * burstiness);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            t += gamma(&mut rng, burstiness, scale);
            t
        })
        .collect()
}

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
#[derive(Debug, Clone)]
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
}

/// How many of a load run's requests with a cached context proved it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ContextProof {
    /// Requests that followed a cached context.
    pub requests: usize,
    /// Of those, the ones whose server reused exactly the context.
    pub held: usize,
}

/// The outcome of a load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// How requests were issued.
    pub mode: LoadMode,
    /// Requests issued.
    pub requests: usize,
    /// Requests that produced a first token.
    pub ok: usize,
    /// Wall time of the whole run, s.
    pub duration_s: f64,
    /// Most requests in flight at once, as seen by the client.
    pub max_in_flight: usize,
    /// Server slots (llama-server `--parallel`), when known.
    pub server_slots: Option<u64>,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Generated tokens per second.
    pub output_tokens_per_s: f64,
    /// TTFT, ms.
    pub ttft_ms: Dist,
    /// TPOT, ms.
    pub tpot_ms: Dist,
    /// ITL, ms (pooled).
    pub itl_ms: Dist,
    /// End-to-end latency, ms.
    pub e2e_ms: Dist,
    /// The objectives.
    pub slo: Slo,
    /// Requests per second that met every objective.
    pub goodput: f64,
    /// `--depth` / `--turns` warm: the requests' cache proof (None: no request had a context).
    pub context: Option<ContextProof>,
}

/// Summarise a load run.
pub fn summarise(
    mode: LoadMode,
    samples: &[LoadSample],
    duration_s: f64,
    max_in_flight: usize,
    server_slots: Option<u64>,
    slo: Slo,
) -> LoadReport {
    let ok: Vec<&LoadSample> = samples.iter().filter(|s| s.ttft_ms.is_some()).collect();
    let col = |f: &dyn Fn(&LoadSample) -> Option<f64>| -> Vec<f64> {
        ok.iter().filter_map(|s| f(s)).collect()
    };
    let good = ok
        .iter()
        .filter(|s| {
            slo.met(
                s.ttft_ms.unwrap_or(f64::MAX),
                s.tpot_ms,
                s.e2e_ms.unwrap_or(f64::MAX),
            )
        })
        .count();
    let d = duration_s.max(1e-9);
    let with_context: Vec<bool> = samples.iter().filter_map(|s| s.context_held).collect();
    LoadReport {
        mode,
        requests: samples.len(),
        ok: ok.len(),
        duration_s,
        max_in_flight,
        server_slots,
        request_throughput: ok.len() as f64 / d,
        output_tokens_per_s: ok.iter().map(|s| f64::from(s.output_tokens)).sum::<f64>() / d,
        ttft_ms: Dist::of(&col(&|s| s.ttft_ms)),
        tpot_ms: Dist::of(&col(&|s| s.tpot_ms)),
        itl_ms: Dist::of(
            &ok.iter()
                .flat_map(|s| s.itl_ms.iter().copied())
                .collect::<Vec<_>>(),
        ),
        e2e_ms: Dist::of(&col(&|s| s.e2e_ms)),
        slo,
        goodput: good as f64 / d,
        context: (!with_context.is_empty()).then(|| ContextProof {
            requests: with_context.len(),
            held: with_context.iter().filter(|&&h| h).count(),
        }),
    }
}

/// The load summary as text.
pub fn render(r: &LoadReport) -> String {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    let row = |name: &str, d: &Dist| {
        format!(
            "  {name:<6} mean {:>9}  p50 {:>9}  p90 {:>9}  p99 {:>9} ms\n",
            f(d.mean),
            f(d.p50),
            f(d.p90),
            f(d.p99)
        )
    };
    let mode = match r.mode {
        LoadMode::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
        LoadMode::Open { rate, burstiness } => {
            format!("open loop, {rate} req/s, burstiness {burstiness}")
        }
    };
    let mut s = format!(
        "load: {mode}; {}/{} requests ok in {:.2} s; max in flight {}{}\n",
        r.ok,
        r.requests,
        r.duration_s,
        r.max_in_flight,
        r.server_slots
            .map(|n| format!(", server slots {n}"))
            .unwrap_or_default()
    );
    s.push_str(&format!(
        "  throughput {:.2} req/s, {:.1} output tokens/s, goodput {:.2} req/s (SLO {})\n",
        r.request_throughput,
        r.output_tokens_per_s,
        r.goodput,
        serde_json::to_string(&r.slo).unwrap_or_default()
    ));
    if let Some(c) = r.context {
        s.push_str(&format!(
            "  context: {}/{} requests proved their cached context (cache_n); each client re-primes its own slot, untimed, before each request (filled before the clock; the duration includes the re-priming)\n",
            c.held, c.requests
        ));
    }
    s.push_str(&row("TTFT", &r.ttft_ms));
    s.push_str(&row("TPOT", &r.tpot_ms));
    s.push_str(&row("ITL", &r.itl_ms));
    s.push_str(&row("E2E", &r.e2e_ms));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_arrivals_have_the_requested_mean_gap() {
        let a = arrivals(200, 20.0, 1.0, 42);
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).chain([a[0]]).collect();
        let mean = stats::mean(&gaps).unwrap();
        assert!((mean - 0.05).abs() / 0.05 < 0.10, "mean gap {mean}");
        // Exponential gaps: coefficient of variation near 1.
        let cv = stats::stddev(&gaps).unwrap() / mean;
        assert!((0.75..1.25).contains(&cv), "cv {cv}");
        assert_eq!(arrivals(200, 20.0, 1.0, 42), a, "fixed seed, same schedule");
    }

    #[test]
    fn burstiness_changes_regularity_not_the_mean() {
        for (b, lo, hi) in [(0.25, 1.5, 2.6), (4.0, 0.3, 0.7)] {
            let a = arrivals(2000, 10.0, b, 7);
            let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
            let mean = stats::mean(&gaps).unwrap();
            assert!(
                (mean - 0.1).abs() / 0.1 < 0.10,
                "burstiness {b}: mean gap {mean}"
            );
            // Gamma(k): cv = 1 / sqrt(k).
            let cv = stats::stddev(&gaps).unwrap() / mean;
            assert!((lo..hi).contains(&cv), "burstiness {b}: cv {cv}");
        }
    }

    #[test]
    fn slo_and_goodput() {
        let slo = parse_slo("ttft=100,tpot=10").unwrap();
        assert!(slo.met(90.0, Some(9.0), 1e9));
        assert!(!slo.met(110.0, Some(9.0), 0.0));
        assert!(parse_slo("ttft=fast").is_err());
        assert!(parse_slo("latency=5").is_err());
        let s = |t: f64| LoadSample {
            ttft_ms: Some(t),
            tpot_ms: Some(5.0),
            itl_ms: vec![5.0],
            e2e_ms: Some(t + 50.0),
            output_tokens: 10,
            context_held: None,
        };
        let failed = LoadSample {
            ttft_ms: None,
            tpot_ms: None,
            itl_ms: vec![],
            e2e_ms: None,
            output_tokens: 0,
            context_held: None,
        };
        let r = summarise(
            LoadMode::Closed { concurrency: 2 },
            &[s(50.0), s(150.0), failed],
            2.0,
            2,
            Some(2),
            slo,
        );
        assert_eq!((r.requests, r.ok), (3, 2));
        assert!((r.request_throughput - 1.0).abs() < 1e-9);
        assert!((r.goodput - 0.5).abs() < 1e-9);
        assert!((r.output_tokens_per_s - 10.0).abs() < 1e-9);
        assert_eq!(r.ttft_ms.p50, Some(100.0));
    }
}
