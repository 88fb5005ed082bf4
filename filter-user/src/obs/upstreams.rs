//! The shared state of upstream targets and provider credentials: what every shard reads and
//! writes when it picks a target or a credential (outstanding requests, consecutive failures,
//! ejections, resting credentials), and what `/metrics` shows of it
//! (`edgefilter_upstream_credential_state`, `edgefilter_upstream_addresses`,
//! `edgefilter_upstream_resolve_failures_total`, `edgefilter_upstream_ejected`).
//!
//! The proxy's route table owns one [`TargetHealth`] per target and one [`CredentialHealth`]
//! per credential value and lists them on the [`UpstreamBoard`]; a reload replaces the lists.
//! Times are milliseconds since the process's first call to [`now_ms`], in atomics: shards on
//! different cores read and write them without a lock.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// Milliseconds since this process first asked (monotonic).
#[must_use]
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Consecutive failures after which a target is ejected.
pub const EJECT_AFTER: u32 = 3;
/// How long an ejected target rests before it is tried again.
pub const EJECT_FOR: Duration = Duration::from_secs(10);

/// One upstream target of one route.
#[derive(Debug)]
pub struct TargetHealth {
    /// The route's prefix.
    pub route: String,
    /// The target as written (`https://host:port`, `unix:/path`).
    pub target: String,
    /// Requests on it now, over every shard.
    outstanding: AtomicUsize,
    /// Failures since its last success.
    failures: AtomicU32,
    /// Ejected until this [`now_ms`] (0: not ejected).
    ejected_until: AtomicU64,
    /// Addresses it resolves to now.
    pub addresses: AtomicU64,
    /// Times re-resolving its name failed.
    pub resolve_failures: AtomicU64,
    /// Its name does not resolve now (the last good addresses are kept).
    pub resolve_failing: AtomicBool,
}

impl TargetHealth {
    /// A healthy target with no address yet.
    #[must_use]
    pub fn new(route: &str, target: &str) -> Self {
        Self {
            route: route.to_string(),
            target: target.to_string(),
            outstanding: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            addresses: AtomicU64::new(0),
            resolve_failures: AtomicU64::new(0),
            resolve_failing: AtomicBool::new(false),
        }
    }

    /// Requests on it now.
    #[must_use]
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// A request starts on it.
    pub fn begin(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    /// A request on it ended.
    pub fn end(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    /// Until when it is ejected, when it is.
    #[must_use]
    pub fn ejected_until(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now).then_some(until)
    }

    /// It answered: its failure count starts again.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// It failed (connect, reset, timeout); whether this failure ejected it.
    pub fn failed(&self, now: u64) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= EJECT_AFTER && self.ejected_until(now).is_none() {
            let until = now + u64::try_from(EJECT_FOR.as_millis()).unwrap_or(u64::MAX);
            self.ejected_until.store(until, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// Where a provider credential stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CredentialState {
    /// In use.
    Ready = 0,
    /// The provider answered 429: resting until its `Retry-After` (or the pool's cooldown).
    RateLimited = 1,
    /// The provider answered 401 or 403: resting until the value changes (a reload re-reads it).
    Refused = 2,
}

impl CredentialState {
    /// Every state, in label order.
    pub const ALL: [Self; 3] = [Self::Ready, Self::RateLimited, Self::Refused];

    /// The `state` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::RateLimited => "rate_limited",
            Self::Refused => "refused",
        }
    }
}

/// One value of a route's credential pool (never the value itself).
#[derive(Debug)]
pub struct CredentialHealth {
    /// The route's prefix.
    pub route: String,
    /// Its index in `values`.
    pub index: usize,
    /// A digest of the value, to carry the state over a reload that did not change it.
    pub fingerprint: [u8; 32],
    state: AtomicU8,
    /// For `RateLimited`: until this [`now_ms`].
    until: AtomicU64,
}

impl CredentialHealth {
    /// A ready value.
    #[must_use]
    pub fn new(route: &str, index: usize, fingerprint: [u8; 32]) -> Self {
        Self {
            route: route.to_string(),
            index,
            fingerprint,
            state: AtomicU8::new(CredentialState::Ready as u8),
            until: AtomicU64::new(0),
        }
    }

    /// Its state at `now` (a rate-limited value whose rest is over is ready again).
    #[must_use]
    pub fn state(&self, now: u64) -> CredentialState {
        match self.state.load(Ordering::Relaxed) {
            1 if self.until.load(Ordering::Relaxed) > now => CredentialState::RateLimited,
            2 => CredentialState::Refused,
            _ => CredentialState::Ready,
        }
    }

    /// When a rate-limited value is ready again.
    #[must_use]
    pub fn ready_at(&self) -> u64 {
        self.until.load(Ordering::Relaxed)
    }

    /// The provider answered 429: rest until `now + rest`.
    pub fn rate_limited(&self, now: u64, rest: Duration) {
        let until = now + u64::try_from(rest.as_millis()).unwrap_or(u64::MAX / 2);
        self.until.store(until, Ordering::Relaxed);
        self.state
            .store(CredentialState::RateLimited as u8, Ordering::Relaxed);
    }

    /// The provider answered 401/403: rest until the value changes. Whether it was ready before.
    pub fn refused(&self) -> bool {
        self.state
            .swap(CredentialState::Refused as u8, Ordering::Relaxed)
            != CredentialState::Refused as u8
    }

    /// Takes over `old`'s state (a reload that kept this value).
    pub fn carry_over(&self, old: &Self) {
        self.until
            .store(old.until.load(Ordering::Relaxed), Ordering::Relaxed);
        self.state
            .store(old.state.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Every target and credential of the routes in force, for `/metrics`.
#[derive(Debug, Default)]
pub struct UpstreamBoard {
    targets: ArcSwap<Vec<Arc<TargetHealth>>>,
    credentials: ArcSwap<Vec<Arc<CredentialHealth>>>,
}

impl UpstreamBoard {
    /// Lists the routes' targets and credentials (replacing an earlier route table's).
    pub fn publish(
        &self,
        targets: Vec<Arc<TargetHealth>>,
        credentials: Vec<Arc<CredentialHealth>>,
    ) {
        self.targets.store(Arc::new(targets));
        self.credentials.store(Arc::new(credentials));
    }

    /// The targets in force.
    #[must_use]
    pub fn targets(&self) -> Arc<Vec<Arc<TargetHealth>>> {
        self.targets.load_full()
    }

    /// The credentials in force.
    #[must_use]
    pub fn credentials(&self) -> Arc<Vec<Arc<CredentialHealth>>> {
        self.credentials.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_ejected_after_consecutive_failures_only() {
        let t = TargetHealth::new("/v1/", "http://a:1");
        assert!(!t.failed(1000));
        t.succeeded();
        assert!(!t.failed(1000));
        assert!(!t.failed(1000));
        assert!(t.failed(1000), "third failure in a row ejects");
        assert!(t.ejected_until(1000).is_some());
        assert!(!t.failed(1001), "already ejected");
        let back = 1000 + u64::try_from(EJECT_FOR.as_millis()).unwrap();
        assert!(t.ejected_until(back).is_none(), "back after the cool-down");
    }

    #[test]
    fn a_rate_limited_credential_comes_back_a_refused_one_does_not() {
        let c = CredentialHealth::new("/v1/", 0, [0; 32]);
        assert_eq!(c.state(0), CredentialState::Ready);
        c.rate_limited(100, Duration::from_secs(2));
        assert_eq!(c.state(2099), CredentialState::RateLimited);
        assert_eq!(c.state(2100), CredentialState::Ready);
        assert!(c.refused());
        assert!(!c.refused(), "already refused");
        assert_eq!(c.state(u64::MAX), CredentialState::Refused);
        let d = CredentialHealth::new("/v1/", 0, [0; 32]);
        d.carry_over(&c);
        assert_eq!(d.state(0), CredentialState::Refused);
    }
}
