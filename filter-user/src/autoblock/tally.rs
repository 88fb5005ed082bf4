//! The host-wide count: the control plane sums the shards' [`Report`]s per source within the
//! window and says when a source has reached `autoblock.failures`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::Report;

/// Sources tracked at once; past it, windows that ended are forgotten first.
pub const MAX_TRACKED: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
struct Sum {
    since: Instant,
    failures: u32,
}

/// Failures per source, summed over every shard, within a fixed window from the first report.
#[derive(Debug)]
pub struct HostTally {
    failures: u32,
    window: Duration,
    sums: HashMap<IpNet, Sum>,
}

impl HostTally {
    /// Bans at `failures` within `window`.
    #[must_use]
    pub fn new(failures: u32, window: Duration) -> Self {
        Self {
            failures: failures.max(1),
            window,
            sums: HashMap::new(),
        }
    }

    /// Decides at `failures` within `window` from now on (a config reload); the sums so far
    /// are kept.
    pub fn retune(&mut self, failures: u32, window: Duration) {
        self.failures = failures.max(1);
        self.window = window;
    }

    /// The threshold and window in force.
    #[must_use]
    pub fn tuning(&self) -> (u32, Duration) {
        (self.failures, self.window)
    }

    /// Adds a report; `true` when its source has now reached the threshold (its count starts
    /// over, so it is reported once).
    pub fn add(&mut self, r: Report) -> bool {
        if self.sums.len() >= MAX_TRACKED && !self.sums.contains_key(&r.source) {
            self.sweep(r.since);
        }
        let window = self.window;
        let sum = self.sums.entry(r.source).or_insert(Sum {
            since: r.since,
            failures: 0,
        });
        if r.since.saturating_duration_since(sum.since) >= window {
            *sum = Sum {
                since: r.since,
                failures: 0,
            };
        }
        sum.failures = sum.failures.saturating_add(r.failures);
        if sum.failures >= self.failures {
            self.sums.remove(&r.source);
            return true;
        }
        false
    }

    /// Forgets sources whose window ended before `now`.
    pub fn sweep(&mut self, now: Instant) {
        let window = self.window;
        self.sums
            .retain(|_, s| now.saturating_duration_since(s.since) < window);
    }

    /// Sources being counted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    /// Whether no source is being counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(src: &str, n: u32, since: Instant) -> Report {
        Report {
            source: src.parse().unwrap(),
            failures: n,
            since,
        }
    }

    #[test]
    fn shards_add_up_within_the_window() {
        let t = Instant::now();
        let mut tally = HostTally::new(10, Duration::from_secs(10));
        assert!(!tally.add(report("198.18.0.2/32", 4, t)));
        assert!(!tally.add(report("198.18.0.3/32", 9, t)));
        assert!(!tally.add(report("198.18.0.2/32", 5, t + Duration::from_secs(1))));
        assert!(tally.add(report("198.18.0.2/32", 1, t + Duration::from_secs(2))));
        assert!(
            !tally.add(report("198.18.0.2/32", 1, t + Duration::from_secs(2))),
            "counted afresh after the decision"
        );
        // A report from a later window starts over.
        assert!(!tally.add(report("198.18.0.3/32", 1, t + Duration::from_secs(10))));
        tally.sweep(t + Duration::from_secs(30));
        assert!(tally.is_empty());
    }
}
