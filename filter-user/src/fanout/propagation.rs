//! `edgefilter_revocation_propagation_seconds`: a lock-free histogram of store commit → last
//! shard applied, filled by the fan-out's observer on a shard thread and read by `/metrics` ([`Propagation::buckets`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::PropagationObserver;

/// Bucket upper bounds in seconds (cumulative in the exposition; `+Inf` is implied).
pub const BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The metric's name.
pub const METRIC: &str = "edgefilter_revocation_propagation_seconds";

/// Counts per bucket, the sum and the count; every field is an atomic (no lock).
#[derive(Debug, Default)]
pub struct Propagation {
    /// Per bucket (not cumulative); the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Propagation {
    /// An empty histogram.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records one sample.
    pub fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// An observer for [`super::Fanout::new`] that records into this histogram.
    #[must_use]
    pub fn observer(self: &Arc<Self>) -> PropagationObserver {
        let me = Arc::clone(self);
        Arc::new(move |_rev, took| me.record(took))
    }

    /// Samples recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1): "at most this long";
    /// `None` without samples, `f64::INFINITY` when it falls beyond the last bucket.
    #[must_use]
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // Precision loss is irrelevant for sample counts far below 2^52.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let want = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    /// `(upper bound, count)` per bucket, not cumulative, the last bound `f64::MAX` for
    /// `+Inf`; the sum in seconds; the count: what a Prometheus histogram encoder takes.
    #[must_use]
    pub fn buckets(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .chain(std::iter::once(&f64::MAX))
            .zip(&self.counts)
            .map(|(&le, c)| (le, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        (buckets, sum, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_quantiles_and_exposition() {
        let h = Propagation::new();
        assert_eq!(h.quantile_bound(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(40));
        }
        h.record(Duration::from_micros(700));
        h.record(Duration::from_secs(3));
        assert_eq!(h.quantile_bound(0.5), Some(0.000_05));
        assert_eq!(h.quantile_bound(0.99), Some(0.001));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
        let (buckets, sum, count) = h.buckets();
        assert!(buckets.contains(&(0.000_05, 98)), "{buckets:?}");
        assert!(buckets.contains(&(0.001, 1)), "{buckets:?}");
        assert_eq!(buckets.last(), Some(&(f64::MAX, 1)));
        assert_eq!(count, 100);
        assert!((sum - (98.0 * 40e-6 + 700e-6 + 3.0)).abs() < 1e-9, "{sum}");
    }
}
