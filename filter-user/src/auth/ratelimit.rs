//! Host-wide per-key token buckets: GCRA on one `AtomicU64` per key, shared by every shard
//! through the key's `Arc`'d entry, so a key has one budget however many shards serve it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::gate::RateInfo;

const NS: u64 = 1_000_000_000;

/// A bucket's shape: `per_sec` tokens a second, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    per_sec: u32,
    burst: u32,
    interval_ns: u64,
}

impl Limit {
    /// A limit; `per_sec` and `burst` are raised to at least 1.
    #[must_use]
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let per_sec = per_sec.max(1);
        Self {
            per_sec,
            burst: burst.max(1),
            interval_ns: NS / u64::from(per_sec),
        }
    }

    /// Tokens per second.
    #[must_use]
    pub fn per_sec(&self) -> u32 {
        self.per_sec
    }

    /// Bucket size.
    #[must_use]
    pub fn burst(&self) -> u32 {
        self.burst
    }

    fn window_ns(&self) -> u64 {
        self.interval_ns * u64::from(self.burst)
    }
}

/// One key's bucket: the theoretical arrival time (ns since the unix epoch) of the next request.
#[derive(Debug, Default)]
pub struct Bucket {
    tat: AtomicU64,
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NS)
}

impl Bucket {
    /// A bucket that continues where `other` is (a key's record was replaced, not its budget).
    #[must_use]
    pub fn continuing(other: &Bucket) -> Self {
        Self {
            tat: AtomicU64::new(other.tat.load(Ordering::Relaxed)),
        }
    }

    /// Takes one token at `now_ns`. `Ok` with what is left, or `Err` with when to retry
    /// (`reset_secs`, at least 1). Lock-free: a compare-and-swap loop.
    ///
    /// # Errors
    /// The bucket is empty.
    pub fn take(&self, limit: &Limit, now_ns: u64) -> Result<RateInfo, RateInfo> {
        let window = limit.window_ns();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now_ns) + limit.interval_ns;
            let ahead = new_tat - now_ns;
            if ahead > window {
                return Err(RateInfo {
                    limit: u64::from(limit.per_sec),
                    remaining: 0,
                    reset_secs: ceil_secs(ahead - window).max(1),
                });
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(RateInfo {
                        limit: u64::from(limit.per_sec),
                        remaining: (window - ahead) / limit.interval_ns,
                        reset_secs: ceil_secs(ahead),
                    });
                }
                Err(seen) => tat = seen,
            }
        }
    }

    /// What [`Bucket::take`] would say, without taking.
    #[must_use]
    pub fn peek(&self, limit: &Limit, now_ns: u64) -> u64 {
        let ahead = self.tat.load(Ordering::Relaxed).saturating_sub(now_ns);
        limit.window_ns().saturating_sub(ahead) / limit.interval_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = Limit::new(10, 3);
        let b = Bucket::default();
        let t0 = 1_000 * NS;
        assert_eq!(b.peek(&l, t0), 3);
        assert_eq!(b.take(&l, t0).unwrap().remaining, 2);
        assert_eq!(b.take(&l, t0).unwrap().remaining, 1);
        assert_eq!(b.take(&l, t0).unwrap().remaining, 0);
        let e = b.take(&l, t0).unwrap_err();
        assert_eq!((e.limit, e.remaining, e.reset_secs), (10, 0, 1));
        // One interval later exactly one token is back.
        assert!(b.take(&l, t0 + NS / 10).is_ok());
        assert!(b.take(&l, t0 + NS / 10).is_err());
        // After a long pause the bucket is full, not fuller.
        assert_eq!(b.take(&l, t0 + 100 * NS).unwrap().remaining, 2);
    }

    #[test]
    fn slow_rates_report_long_retry() {
        let l = Limit::new(1, 1);
        let b = Bucket::default();
        assert!(b.take(&l, 50 * NS).is_ok());
        assert_eq!(b.take(&l, 50 * NS + NS / 4).unwrap_err().reset_secs, 1);
    }
}
