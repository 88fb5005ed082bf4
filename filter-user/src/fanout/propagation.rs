//! `edgefilter_revocation_propagation_seconds`: a lock-free histogram of store commit → last
//! shard applied, filled by the fan-out's observer on a shard thread and read by `/metrics`.

use std::fmt::Write as _;
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

    /// Prometheus text exposition of the histogram.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = format!(
            "# HELP {METRIC} Store commit to the last shard applying the change.\n# TYPE {METRIC} histogram\n"
        );
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{METRIC}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{METRIC}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        let _ = writeln!(out, "{METRIC}_sum {sum}");
        let _ = writeln!(out, "{METRIC}_count {}", self.count());
        out
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
        let text = h.render();
        assert!(
            text.contains("edgefilter_revocation_propagation_seconds_bucket{le=\"0.00005\"} 98")
        );
        assert!(text.contains("edgefilter_revocation_propagation_seconds_bucket{le=\"0.001\"} 99"));
        assert!(text.contains("edgefilter_revocation_propagation_seconds_bucket{le=\"+Inf\"} 100"));
        assert!(text.contains("edgefilter_revocation_propagation_seconds_count 100"));
    }
}
