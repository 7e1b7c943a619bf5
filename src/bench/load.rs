//! Load: many requests against one server, closed loop (`--concurrency N`: N clients, each sends
//! its next request when the previous one ended) or open loop (`--request-rate R`: arrivals with
//! gamma-distributed gaps, `--burstiness` 1 = Poisson, lower = burstier, higher = more regular;
//! vLLM's convention). Per request the same measurement as a single run; over the run: percentiles
//! of TTFT, TPOT, ITL and end-to-end latency, request and output-token throughput, and goodput
//! (requests per second meeting `--slo`).

use super::stats::SplitMix64;
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

impl LoadMode {
    /// The load offered: the request rate, or the number of clients.
    pub fn offered(self) -> f64 {
        match self {
            LoadMode::Open { rate, .. } => rate,
            LoadMode::Closed { concurrency } => f64::from(concurrency),
        }
    }
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

pub use super::load_report::{summarise, ContextProof, Dist, LoadReport, LoadSample, RunFacts};
pub use super::load_text::{render, render_sweep};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats;

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
}
