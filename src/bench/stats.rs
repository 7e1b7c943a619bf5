//! Summary statistics as pure functions, so every number in the table can be checked by hand.

use serde::Serialize;

/// Arithmetic mean; `None` for an empty sample.
pub fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        None
    } else {
        Some(xs.iter().sum::<f64>() / xs.len() as f64)
    }
}

/// Percentile `p` in [0, 100] with linear interpolation between closest ranks (numpy's default
/// "linear" method), so p50 of an even-sized sample is the mean of the two middle values.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (rank - lo as f64))
}

/// Median, the 50th percentile.
pub fn median(xs: &[f64]) -> Option<f64> {
    percentile(xs, 50.0)
}

/// Sample standard deviation (n - 1 in the denominator); `None` below two values.
pub fn stddev(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    Some(var.sqrt())
}

/// The numbers the summary table shows for one (prompt set, backend) case.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Runs attempted (successful and failed).
    pub runs: usize,
    /// Runs that produced a first token.
    pub ok: usize,
    /// Mean TTFT of the successful runs, milliseconds.
    pub mean_ms: Option<f64>,
    /// Median TTFT, milliseconds.
    pub median_ms: Option<f64>,
    /// 90th percentile TTFT, milliseconds.
    pub p90_ms: Option<f64>,
    /// Sample standard deviation of TTFT, milliseconds.
    pub stddev_ms: Option<f64>,
    /// Fastest successful run, milliseconds.
    pub min_ms: Option<f64>,
    /// Slowest successful run, milliseconds.
    pub max_ms: Option<f64>,
}

impl Summary {
    /// Summarise TTFT values (ms) of the successful runs out of `runs` attempts.
    pub fn of(ttft_ms: &[f64], runs: usize) -> Self {
        Self {
            runs,
            ok: ttft_ms.len(),
            mean_ms: mean(ttft_ms),
            median_ms: median(ttft_ms),
            p90_ms: percentile(ttft_ms, 90.0),
            stddev_ms: stddev(ttft_ms),
            min_ms: ttft_ms.iter().copied().min_by(f64::total_cmp),
            max_ms: ttft_ms.iter().copied().max_by(f64::total_cmp),
        }
    }

    /// Fraction of runs that succeeded, in [0, 1]; 0 when nothing ran.
    pub fn success_rate(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.ok as f64 / self.runs as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_linearly() {
        let xs = [4.0, 1.0, 3.0, 2.0]; // sorted: 1 2 3 4
        assert!(close(median(&xs).unwrap(), 2.5));
        // rank = 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3)
        assert!(close(percentile(&xs, 90.0).unwrap(), 3.7));
        assert!(close(percentile(&xs, 0.0).unwrap(), 1.0));
        assert!(close(percentile(&xs, 100.0).unwrap(), 4.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&xs, 101.0), None);
    }

    #[test]
    fn single_value_is_every_percentile() {
        assert!(close(percentile(&[7.0], 90.0).unwrap(), 7.0));
        assert!(close(median(&[7.0]).unwrap(), 7.0));
    }

    #[test]
    fn mean_and_sample_stddev_match_hand_values() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert!(close(mean(&xs).unwrap(), 5.0));
        // sum of squared deviations = 32, n - 1 = 7
        assert!(close(stddev(&xs).unwrap(), (32.0f64 / 7.0).sqrt()));
        assert_eq!(stddev(&[1.0]), None);
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn summary_counts_failures_in_success_rate() {
        let s = Summary::of(&[10.0, 30.0, 20.0], 4);
        assert_eq!(s.ok, 3);
        assert!(close(s.success_rate(), 0.75));
        assert_eq!(s.min_ms, Some(10.0));
        assert_eq!(s.max_ms, Some(30.0));
        assert!(close(s.median_ms.unwrap(), 20.0));
        let empty = Summary::of(&[], 0);
        assert_eq!(empty.success_rate(), 0.0);
        assert_eq!(empty.mean_ms, None);
    }
}
