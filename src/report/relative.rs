//! "inproc is 1.83× faster than api on long prompts": per prompt set, the fastest case against
//! each other one, as the geometric mean of per-prompt median ratios with a 95 % CI from a
//! bootstrap within each prompt, so the interval is measurement noise and not the spread of
//! prompt lengths.

use super::cases::SetKey;
use super::Report;
use crate::bench::bootstrap::geomean_median_ratio;
use crate::bench::stats::BOOTSTRAP_SEED;
use std::collections::BTreeSet;

fn keys_of(label: &str) -> BTreeSet<&str> {
    label
        .split(' ')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect()
}

/// `label` restricted to the settings in `keep`.
fn restrict(label: &str, keep: &BTreeSet<&str>) -> String {
    label
        .split(' ')
        .filter(|kv| kv.split_once('=').is_some_and(|(k, _)| keep.contains(k)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn name(key: &SetKey) -> String {
    if key.2.is_empty() {
        key.1.to_string()
    } else {
        format!("{} [{}]", key.1, key.2)
    }
}

impl Report {
    /// Per prompt set and group of comparable settings points, the fastest case against each
    /// other one.
    pub fn relative(&self) -> Vec<String> {
        let keys = self.set_keys();
        let mut sets: Vec<&str> = Vec::new();
        for k in &keys {
            if !sets.contains(&k.0.as_str()) {
                sets.push(&k.0);
            }
        }
        let mut out = Vec::new();
        for set in sets {
            let rows: Vec<&SetKey> = keys.iter().filter(|k| k.0 == set).collect();
            // Settings every row of the set names: points agreeing on them are compared.
            let common = rows
                .iter()
                .map(|k| keys_of(&k.2))
                .reduce(|a, b| a.intersection(&b).copied().collect())
                .unwrap_or_default();
            let mut groups: Vec<(String, Vec<&SetKey>)> = Vec::new();
            for k in rows {
                let g = restrict(&k.2, &common);
                match groups.iter_mut().find(|(l, _)| *l == g) {
                    Some((_, v)) => v.push(k),
                    None => groups.push((g, vec![k])),
                }
            }
            for (_, group) in groups {
                out.extend(self.relative_group(set, &group));
            }
        }
        out
    }

    fn relative_group(&self, set: &str, group: &[&SetKey]) -> Vec<String> {
        let mut ranked: Vec<(&SetKey, f64)> = group
            .iter()
            .filter_map(|k| Some((*k, self.set_case(k).ttft.median_ms?)))
            .collect();
        if ranked.len() < 2 {
            return Vec::new();
        }
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
        let best = ranked[0].0;
        let mut out = Vec::new();
        for (other, _) in &ranked[1..] {
            let pairs = self.paired_samples(best, other);
            let Some((r, (lo, hi))) = geomean_median_ratio(&pairs, 10_000, 0.95, BOOTSTRAP_SEED)
            else {
                continue;
            };
            let how = if pairs.len() == 1 {
                "ratio of medians".to_string()
            } else {
                format!("geometric mean of {} per-prompt median ratios", pairs.len())
            };
            out.push(format!(
                "{} is {r:.2}× faster than {} on {set} prompts ({how}, 95% CI {lo:.2}–{hi:.2})",
                name(best),
                name(other)
            ));
        }
        out
    }

    /// (slower's TTFTs, faster's TTFTs) per prompt both measured; a synthetic set is one pair.
    fn paired_samples(&self, fast: &SetKey, slow: &SetKey) -> Vec<(Vec<f64>, Vec<f64>)> {
        if self.one_case(&fast.0) {
            return vec![(self.all_ttfts(slow), self.all_ttfts(fast))];
        }
        let idxs: BTreeSet<usize> = self
            .runs
            .iter()
            .filter(|r| r.prompt.set == fast.0)
            .map(|r| r.prompt.idx)
            .collect();
        idxs.into_iter()
            .map(|i| (self.ttfts(slow, i), self.ttfts(fast, i)))
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            .collect()
    }
}
