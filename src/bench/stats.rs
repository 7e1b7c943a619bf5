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
    // Selection, not a sort: the bootstraps call this thousands of times per case, and a load
    // run's cases have hundreds of rows (the same values as sorting: the lo-th order statistic
    // and, above it, the smallest of the rest).
    let mut v = xs.to_vec();
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let (_, a, right) = v.select_nth_unstable_by(lo, f64::total_cmp);
    let a = *a;
    let b = if rank > lo as f64 {
        right.iter().copied().min_by(f64::total_cmp).unwrap_or(a)
    } else {
        a
    };
    Some(a + (b - a) * (rank - lo as f64))
}

/// Seed of every bootstrap in reports (results are reproducible run to run).
pub const BOOTSTRAP_SEED: u64 = 0x7474_6674;

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

/// Median absolute deviation (unscaled).
pub fn mad(xs: &[f64]) -> Option<f64> {
    let m = median(xs)?;
    let dev: Vec<f64> = xs.iter().map(|x| (x - m).abs()).collect();
    median(&dev)
}

/// Fewest runs of a case in which outliers are looked for: below it the MAD is the gap to the
/// nearest neighbour, and a 1 % difference can score as an outlier.
pub const OUTLIER_MIN_RUNS: usize = 5;

/// Indices of statistical outliers by the modified z-score (Iglewicz & Hoaglin):
/// `0.6745 * |x - median| / MAD > 3.5`, robust to the outliers themselves, unlike mean/stddev;
/// only with at least [`OUTLIER_MIN_RUNS`] values, and with the MAD floored at 1 % of the median
/// so that near-identical runs do not turn a small difference into an outlier.
pub fn outliers(xs: &[f64]) -> Vec<usize> {
    if xs.len() < OUTLIER_MIN_RUNS {
        return Vec::new();
    }
    let (Some(m), Some(d)) = (median(xs), mad(xs)) else {
        return Vec::new();
    };
    let d = d.max(m.abs() * 0.01);
    if d == 0.0 {
        return Vec::new();
    }
    xs.iter()
        .enumerate()
        .filter(|(_, x)| 0.6745 * (*x - m).abs() / d > 3.5)
        .map(|(i, _)| i)
        .collect()
}

/// Whether the first run is much slower than the rest (a cold start leaking into the timed runs):
/// slower than the median of the others by more than 5 MADs and by more than 10 %.
pub fn first_run_much_slower(xs: &[f64]) -> bool {
    if xs.len() < 3 {
        return false;
    }
    let rest = &xs[1..];
    let (Some(m), Some(d)) = (median(rest), mad(rest)) else {
        return false;
    };
    xs[0] > m * 1.1 && xs[0] - m > 5.0 * d.max(m * 0.01)
}

/// A small deterministic PRNG (SplitMix64), so bootstrap intervals are reproducible.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform index in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Percentile bootstrap confidence interval (level e.g. 0.95) of the median, `iters` resamples.
pub fn bootstrap_median_ci(xs: &[f64], iters: usize, level: f64, seed: u64) -> Option<(f64, f64)> {
    if xs.len() < 2 {
        return None;
    }
    // One group: the stratified resampler draws exactly as a plain bootstrap does.
    super::bootstrap::bootstrap_stratified(&[xs.to_vec()], iters, level, seed, |m| Some(m[0]))
}

/// Two-sided p-value of the Mann–Whitney U (Wilcoxon rank-sum) test that `a` and `b` come from
/// the same distribution: exact for small samples (n·m ≤ 400), the normal approximation with a
/// continuity correction above. Ties count one half. None when a side is empty. With 3 runs a
/// side the smallest possible p is 0.1: three runs cannot show a change at the 5 % level.
pub fn mann_whitney_p(a: &[f64], b: &[f64]) -> Option<f64> {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return None;
    }
    let u: f64 = a
        .iter()
        .map(|x| {
            b.iter()
                .map(|y| match x.total_cmp(y) {
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Less => 0.0,
                })
                .sum::<f64>()
        })
        .sum();
    let nm = (n * m) as f64;
    let extreme = u.min(nm - u);
    if n * m <= 400 {
        let counts = u_distribution(n, m);
        let total: f64 = counts.iter().sum();
        let tail: f64 = counts
            .iter()
            .enumerate()
            .filter(|(k, _)| (*k as f64) <= extreme + 1e-9)
            .map(|(_, c)| c)
            .sum();
        return Some((2.0 * tail / total).min(1.0));
    }
    let sd = (nm * (n + m + 1) as f64 / 12.0).sqrt();
    let z = (nm / 2.0 - extreme - 0.5).max(0.0) / sd;
    Some((2.0 * normal_upper_tail(z)).min(1.0))
}

/// How many orderings of n + m distinct values give each U = 0..=n·m (the recurrence
/// f(n, m, u) = f(n - 1, m, u - m) + f(n, m - 1, u)).
fn u_distribution(n: usize, m: usize) -> Vec<f64> {
    // prev[j] = distribution for (i - 1, j); built up row by row.
    let mut prev: Vec<Vec<f64>> = (0..=m).map(|_| vec![1.0]).collect();
    for i in 1..=n {
        let mut cur: Vec<Vec<f64>> = vec![vec![1.0]];
        for j in 1..=m {
            let mut d = vec![0.0; i * j + 1];
            for (u, c) in prev[j].iter().enumerate() {
                d[u + j] += c;
            }
            for (u, c) in cur[j - 1].iter().enumerate() {
                d[u] += c;
            }
            cur.push(d);
        }
        prev = cur;
    }
    prev.pop().unwrap_or_default()
}

/// P(Z > z) for a standard normal Z (Abramowitz & Stegun 7.1.26 for erfc, |error| < 1.5e-7).
fn normal_upper_tail(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    let erfc = if x >= 0.0 { erfc } else { 2.0 - erfc };
    erfc / 2.0
}

/// Ordinary least squares `y ≈ a + b x`; returns (a, b, R²). None below two distinct x values.
pub fn linear_fit(xs: &[f64], ys: &[f64]) -> Option<(f64, f64, f64)> {
    if xs.len() != ys.len() || xs.len() < 2 {
        return None;
    }
    let mx = mean(xs)?;
    let my = mean(ys)?;
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = sxy / sxx;
    let a = my - b * mx;
    let ss_tot: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    let ss_res: f64 = xs
        .iter()
        .zip(ys)
        .map(|(x, y)| (y - a - b * x).powi(2))
        .sum();
    let r2 = if ss_tot == 0.0 {
        1.0
    } else {
        1.0 - ss_res / ss_tot
    };
    Some((a, b, r2))
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
    /// 99th percentile TTFT, milliseconds.
    pub p99_ms: Option<f64>,
    /// Bootstrap 95 % confidence interval of the median (10,000 resamples, fixed seed).
    pub median_ci95_ms: Option<(f64, f64)>,
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
            p99_ms: percentile(ttft_ms, 99.0),
            median_ci95_ms: bootstrap_median_ci(ttft_ms, 10_000, 0.95, BOOTSTRAP_SEED),
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
    fn mad_outliers_and_slow_first_run() {
        let xs = [10.0, 11.0, 10.5, 10.2, 30.0, 10.8, 10.1];
        // median 10.5; |dev| = .5 .5 0 .3 19.5 .3 .4 -> MAD 0.4
        assert!(close(mad(&xs).unwrap(), 0.4));
        assert_eq!(outliers(&xs), [4]);
        assert!(outliers(&[5.0, 5.0, 5.0, 5.0, 5.0]).is_empty());
        // Three runs, or runs within a few percent of each other: nothing to call an outlier.
        assert!(outliers(&[10.0, 10.01, 10.5]).is_empty());
        assert!(outliers(&[10.0, 10.0, 10.0, 10.01, 10.2]).is_empty());
        assert!(first_run_much_slower(&[25.0, 10.0, 10.2, 9.9, 10.1]));
        assert!(!first_run_much_slower(&[10.3, 10.0, 10.2, 9.9, 10.1]));
    }

    #[test]
    fn bootstrap_is_reproducible_and_brackets_the_median() {
        let xs: Vec<f64> = (0..30).map(|i| 100.0 + (i * 7 % 11) as f64).collect();
        let a = bootstrap_median_ci(&xs, 2000, 0.95, 42).unwrap();
        let b = bootstrap_median_ci(&xs, 2000, 0.95, 42).unwrap();
        assert_eq!(a, b);
        let m = median(&xs).unwrap();
        assert!(a.0 <= m && m <= a.1, "{a:?} vs {m}");
        // A constant sample has a degenerate interval.
        assert_eq!(
            bootstrap_median_ci(&[3.0; 5], 100, 0.95, 1),
            Some((3.0, 3.0))
        );
        // SplitMix64 reference value for seed 0 (from the published algorithm).
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn least_squares_fit_recovers_a_line() {
        let xs = [16.0, 64.0, 256.0, 1024.0];
        let ys: Vec<f64> = xs.iter().map(|x| 5.0 + 2.0 * x).collect();
        let (a, b, r2) = linear_fit(&xs, &ys).unwrap();
        assert!(close(a, 5.0) && close(b, 2.0) && close(r2, 1.0));
        // Hand-computed: x = 1 2 3, y = 1 2 2 -> b = 0.5, a = 2/3, R² = 0.75
        let (a, b, r2) = linear_fit(&[1.0, 2.0, 3.0], &[1.0, 2.0, 2.0]).unwrap();
        assert!(close(a, 2.0 / 3.0) && close(b, 0.5) && close(r2, 0.75));
        assert_eq!(linear_fit(&[1.0, 1.0], &[2.0, 3.0]), None);
    }

    #[test]
    fn rank_test_p_values_match_tables() {
        // 3 vs 3, fully separated: 2 / C(6,3) = 0.1, the smallest possible.
        assert!(close(
            mann_whitney_p(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap(),
            0.1
        ));
        // 5 vs 5 fully separated: 2 / 252.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [6.0, 7.0, 8.0, 9.0, 10.0];
        assert!(close(mann_whitney_p(&a, &b).unwrap(), 2.0 / 252.0));
        assert!(close(mann_whitney_p(&a, &a).unwrap(), 1.0));
        // Large samples: the normal approximation, a clear shift is tiny, none is large.
        let x: Vec<f64> = (0..30).map(f64::from).collect();
        let y: Vec<f64> = (0..30).map(|i| f64::from(i) + 20.0).collect();
        assert!(mann_whitney_p(&x, &y).unwrap() < 1e-4);
        assert!(mann_whitney_p(&x, &x).unwrap() > 0.9);
        assert!((normal_upper_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert_eq!(mann_whitney_p(&[], &[1.0]), None);
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
