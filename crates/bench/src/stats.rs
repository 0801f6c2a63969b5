//! Statistics over repeated rounds: median, p99 and spread.
//!
//! Every scenario runs in rounds. Its samples (latencies, rates, memory sizes) are kept per
//! round, and three numbers summarise them:
//!
//! ```text
//!   round 1: [s, s, s, ...] ─┐
//!   round 2: [s, s, ...]     ├─► pooled ──► median, p99 (nearest rank)
//!   round 3: [s, s, s, ...] ─┘
//!            └─► per-round medians ──► spread = min – max
//! ```
//!
//! The spread shows how much one round differs from the next on a noisy machine; a ratio whose
//! spread crosses its target line is a coin toss, not a result.

use serde::Serialize;

/// The summary of one scenario's samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Median of all samples of all rounds.
    pub median: f64,
    /// 99th percentile (nearest rank) of all samples of all rounds.
    pub p99: f64,
    /// Smallest per-round median.
    pub spread_min: f64,
    /// Largest per-round median.
    pub spread_max: f64,
    /// Number of samples.
    pub samples: usize,
    /// Number of rounds that had at least one sample.
    pub rounds: usize,
}

/// Summarises samples kept per round; `None` when there is no sample at all.
///
/// Rounds without samples are left out of the spread. NaN samples are ignored.
pub fn summarize(rounds: &[Vec<f64>]) -> Option<Summary> {
    let mut pooled: Vec<f64> = rounds
        .iter()
        .flatten()
        .copied()
        .filter(|v| !v.is_nan())
        .collect();
    if pooled.is_empty() {
        return None;
    }
    pooled.sort_by(f64::total_cmp);

    let round_medians: Vec<f64> = rounds.iter().filter_map(|round| median(round)).collect();
    let spread_min = round_medians.iter().copied().fold(f64::INFINITY, f64::min);
    let spread_max = round_medians
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    Some(Summary {
        median: median_of_sorted(&pooled),
        p99: percentile_of_sorted(&pooled, 99.0),
        spread_min,
        spread_max,
        samples: pooled.len(),
        rounds: round_medians.len(),
    })
}

/// The median of unsorted samples (the mean of the two middle ones for an even count); `None`
/// for no samples. NaN samples are ignored.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(median_of_sorted(&sorted))
}

/// The median of sorted, non-empty samples.
fn median_of_sorted(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The nearest-rank percentile `p` (0–100) of sorted, non-empty samples: the smallest sample
/// with at least `p` percent of the samples at or below it.
pub fn percentile_of_sorted(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Evenly spaced quantiles (`count` points from the minimum to the maximum) of all samples,
/// for drawing a distribution; empty for no samples.
pub fn quantiles(rounds: &[Vec<f64>], count: usize) -> Vec<f64> {
    let mut pooled: Vec<f64> = rounds
        .iter()
        .flatten()
        .copied()
        .filter(|v| !v.is_nan())
        .collect();
    if pooled.is_empty() || count == 0 {
        return Vec::new();
    }
    pooled.sort_by(f64::total_cmp);
    if count == 1 {
        return vec![median_of_sorted(&pooled)];
    }
    (0..count)
        .map(|i| {
            let p = 100.0 * i as f64 / (count - 1) as f64;
            if i == 0 {
                pooled[0]
            } else {
                percentile_of_sorted(&pooled, p)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn p99_is_nearest_rank() {
        let sorted: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile_of_sorted(&sorted, 99.0), 198.0);
        let small = [1.0, 2.0, 3.0];
        assert_eq!(percentile_of_sorted(&small, 99.0), 3.0);
        assert_eq!(percentile_of_sorted(&small, 0.0), 1.0);
        assert_eq!(percentile_of_sorted(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn summary_pools_samples_and_spreads_round_medians() {
        let rounds = vec![
            vec![1.0, 2.0, 3.0],
            vec![10.0, 11.0, 12.0],
            vec![],
            vec![5.0],
        ];
        let summary = summarize(&rounds).expect("has samples");
        assert_eq!(summary.samples, 7);
        assert_eq!(summary.rounds, 3);
        assert_eq!(summary.median, 5.0);
        assert_eq!(summary.p99, 12.0);
        assert_eq!((summary.spread_min, summary.spread_max), (2.0, 11.0));
    }

    #[test]
    fn summary_of_nothing_is_none() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[vec![], vec![]]), None);
    }

    #[test]
    fn single_round_has_no_spread() {
        let summary = summarize(&[vec![4.0, 8.0]]).expect("has samples");
        assert_eq!((summary.spread_min, summary.spread_max), (6.0, 6.0));
    }

    #[test]
    fn quantiles_run_from_min_to_max() {
        let rounds = vec![(1..=100).map(f64::from).collect::<Vec<_>>()];
        let q = quantiles(&rounds, 5);
        assert_eq!(q, vec![1.0, 25.0, 50.0, 75.0, 100.0]);
        assert!(quantiles(&[], 5).is_empty());
    }
}
