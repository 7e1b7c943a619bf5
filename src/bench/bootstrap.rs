//! Bootstrap intervals for statistics over several groups (a prompt set's prompts, two reports'
//! runs of one case): resampling happens within each group, so an interval measures noise, never
//! the spread between groups.

use super::stats::{mean, median, percentile, SplitMix64};

/// Mean of the groups' medians, e.g. a prompt set summarised from its prompts (each prompt one
/// group, so a long prompt does not widen the set's interval by being long).
pub fn mean_of_medians(groups: &[Vec<f64>]) -> Option<f64> {
    let m: Option<Vec<f64>> = groups.iter().map(|g| median(g)).collect();
    mean(&m?)
}

/// Stratified percentile bootstrap of [`mean_of_medians`]: each resample draws within every group
/// (the groups themselves are fixed), so the interval is measurement noise, not group spread.
pub fn bootstrap_mean_of_medians_ci(
    groups: &[Vec<f64>],
    iters: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    bootstrap_stratified(groups, iters, level, seed, mean)
}

/// Geometric mean over groups of `median(a) / median(b)` and its stratified bootstrap interval
/// (each side resampled within its group): "a is r × b over these prompts".
pub fn geomean_median_ratio(
    pairs: &[(Vec<f64>, Vec<f64>)],
    iters: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, (f64, f64))> {
    let point = geomean_of_ratios(
        &pairs
            .iter()
            .map(|(a, b)| Some(median(a)? / median(b)?))
            .collect::<Option<Vec<f64>>>()?,
    )?;
    // Interleave the two sides as groups 2i and 2i+1, so one stratified resampler serves both.
    let groups: Vec<Vec<f64>> = pairs
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    let ci = bootstrap_stratified(&groups, iters, level, seed, |meds| {
        geomean_of_ratios(&meds.chunks(2).map(|c| c[0] / c[1]).collect::<Vec<_>>())
    })?;
    Some((point, ci))
}

fn geomean_of_ratios(rs: &[f64]) -> Option<f64> {
    if rs.is_empty() || rs.iter().any(|r| r.is_nan() || *r <= 0.0 || !r.is_finite()) {
        return None;
    }
    Some((rs.iter().map(|r| r.ln()).sum::<f64>() / rs.len() as f64).exp())
}

/// Resample within each group, hand the groups' medians to `stat`, and take the percentile
/// interval of `stat` over `iters` resamples. None when a group has no value.
pub(crate) fn bootstrap_stratified(
    groups: &[Vec<f64>],
    iters: usize,
    level: f64,
    seed: u64,
    stat: impl Fn(&[f64]) -> Option<f64>,
) -> Option<(f64, f64)> {
    if groups.is_empty() || groups.iter().any(|g| g.is_empty()) {
        return None;
    }
    let mut rng = SplitMix64::new(seed);
    let mut stats = Vec::with_capacity(iters);
    let mut meds = vec![0.0; groups.len()];
    let mut sample = Vec::new();
    for _ in 0..iters {
        for (g, m) in groups.iter().zip(meds.iter_mut()) {
            sample.clear();
            sample.extend((0..g.len()).map(|_| g[rng.below(g.len())]));
            *m = median(&sample)?;
        }
        stats.push(stat(&meds)?);
    }
    let alpha = (1.0 - level) / 2.0;
    Some((
        percentile(&stats, alpha * 100.0)?,
        percentile(&stats, (1.0 - alpha) * 100.0)?,
    ))
}

/// Percentile bootstrap interval of `median(b) - median(a)` for two independent samples (the
/// statistic `ttft compare` judges, on the same median the threshold is on).
pub fn bootstrap_median_diff_ci(
    a: &[f64],
    b: &[f64],
    iters: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    bootstrap_stratified(&[a.to_vec(), b.to_vec()], iters, level, seed, |m| {
        Some(m[1] - m[0])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::bootstrap_median_ci;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn set_statistics_come_from_the_prompts() {
        // Two prompts, 10 ms and 100 ms, each with a little noise.
        let fast = vec![10.0, 10.2, 9.8, 10.1, 9.9];
        let slow = vec![100.0, 101.0, 99.0, 100.5, 99.5];
        let groups = vec![fast.clone(), slow.clone()];
        assert!(close(mean_of_medians(&groups).unwrap(), 55.0));
        let (lo, hi) = bootstrap_mean_of_medians_ci(&groups, 2000, 0.95, 1).unwrap();
        // Noise only: about ±0.5 ms, not the 90 ms between the prompts.
        assert!(lo > 54.0 && hi < 56.0, "{lo} {hi}");
        let pooled: Vec<f64> = fast.iter().chain(&slow).copied().collect();
        let (plo, phi) = bootstrap_median_ci(&pooled, 2000, 0.95, 1).unwrap();
        assert!(
            phi - plo > 50.0,
            "the pooled interval spans the prompts: {plo} {phi}"
        );
        // b is twice as slow as a on both prompts.
        let pairs = vec![
            (fast.clone(), fast.iter().map(|x| x * 2.0).collect()),
            (slow.clone(), slow.iter().map(|x| x * 2.0).collect()),
        ];
        let (r, (rlo, rhi)) = geomean_median_ratio(&pairs, 2000, 0.95, 1).unwrap();
        assert!(close(r, 0.5), "{r}");
        assert!(rlo <= 0.5 && 0.5 <= rhi && rhi - rlo < 0.05, "{rlo} {rhi}");
        let (dlo, dhi) = bootstrap_median_diff_ci(&fast, &slow, 2000, 0.95, 1).unwrap();
        assert!(dlo > 85.0 && dhi < 95.0, "{dlo} {dhi}");
        assert_eq!(mean_of_medians(&[vec![], vec![1.0]]), None);
    }
}
