//! Admission of client connections, shared by every shard: the open-connection count against
//! `limits.max_connections`, the per-source counts against `limits.max_connections_per_source`,
//! the default limit derived from `RLIMIT_NOFILE`, and the rate-limited warnings of the accept
//! loops (`accept` failing with `EMFILE` and friends, the limit reached).
//!
//! Nothing here is touched by a request: a connection is counted once when it is accepted and
//! once when it closes. The total is one atomic (held by the request metrics, which show it as
//! `edgefilter_connections_open`). The per-source counts live in a table split into
//! [`STRIPES`] independently locked parts chosen by the source's hash, so two shards accepting
//! from different sources rarely meet on one lock, and an entry is removed when its count falls
//! to zero (the table holds only sources with open connections).
//!
//! At the total limit an accept loop stops calling `accept` (the connections wait in the
//! kernel's queue) and parks until a connection closes ([`Admission::wait_below`]). Shards
//! check the count before they accept, and the connection that reaches the limit wakes the
//! loops waiting in `accept` to check again: only two loops accepting in the same instant can
//! take the count over the limit (by one connection per loop at most).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::Notify;

use crate::obs::metrics::RequestMetrics;
use crate::store::bans::source_of;

/// Descriptors kept apart from client connections when the limit is derived: the store, the
/// logs, the admin API, the listening sockets, the takeover desk.
pub const FD_RESERVE: u64 = 128;

/// How many independently locked parts the per-source table has.
pub const STRIPES: usize = 64;

/// How often at most each kind of accept warning is logged.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The first pause after `accept` failed for want of descriptors or memory; it doubles on each
/// failure in a row up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// The longest pause between two `accept` attempts that failed for want of resources.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; the soft limit in force after
/// (`None` when it cannot be read).
#[must_use]
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// `limits.max_connections` when it is not set: half of the open-file limit `nofile` less
/// [`FD_RESERVE`], as each client connection may hold one upstream connection too (at least 1).
#[must_use]
pub fn derived_max_connections(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(FD_RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// `limits.max_connections_per_source` when it is not set: a tenth of `max_connections` (at
/// least 1).
#[must_use]
pub fn default_per_source(max_connections: usize) -> usize {
    (max_connections / 10).max(1)
}

/// Why a connection was not taken (the `reason` label of
/// `edgefilter_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source had `limits.max_connections_per_source` open already: closed at once.
    PerSource,
}

/// The connection count and per-source counts every shard shares.
#[derive(Debug)]
pub(crate) struct Admission {
    /// The open-connection count (owned by the metrics, which expose it).
    metrics: Arc<RequestMetrics>,
    /// Accept loops parked at the limit.
    waiting: AtomicUsize,
    /// Woken when a connection closes while an accept loop is parked.
    freed: Notify,
    /// Woken when a connection taken reaches the limit: the other accept loops, waiting in
    /// `accept`, look at the count again before they take one more.
    pub full: Notify,
    /// Per-source counts, in [`STRIPES`] parts.
    sources: Box<[Mutex<HashMap<IpNet, u32>>]>,
    hasher: ahash::RandomState,
    /// `accept` failing for want of descriptors or memory.
    pub accept_errors: Throttled,
    /// The connection limit reached.
    pub at_limit: Throttled,
}

/// A connection counted by [`Admission::admit`]; uncounted by [`Admission::release`].
#[derive(Debug)]
pub(crate) struct Ticket {
    /// The source it was counted under, when a per-source limit was in force.
    source: Option<IpNet>,
}

impl Admission {
    pub fn new(metrics: Arc<RequestMetrics>) -> Self {
        Self {
            metrics,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            full: Notify::new(),
            sources: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: ahash::RandomState::new(),
            accept_errors: Throttled::default(),
            at_limit: Throttled::default(),
        }
    }

    fn open(&self) -> &AtomicUsize {
        self.metrics.open_connections()
    }

    /// Open client connections, all shards together.
    pub fn open_now(&self) -> usize {
        self.open().load(Ordering::SeqCst)
    }

    /// Whether a connection may be accepted now (fewer than `max` are open).
    pub fn below(&self, max: usize) -> bool {
        self.open_now() < max
    }

    /// Waits until fewer than `max` connections are open (or `patience` passed: the caller
    /// looks again, so a limit lowered or raised by a reload is seen).
    pub async fn wait_below(&self, max: usize, patience: Duration) {
        let freed = self.freed.notified();
        tokio::pin!(freed);
        // Registered before the count is read: a close after the read wakes this one.
        freed.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if !self.below(max) {
            let _ = tokio::time::timeout(patience, freed).await;
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Counts a connection accepted from `peer`; refused (not counted) when its source has
    /// `per_source` open already (0: no per-source limit, nothing kept per source). The one
    /// that reaches `max` wakes the accept loops ([`Admission::full`]).
    pub fn admit(
        &self,
        peer: IpAddr,
        max: usize,
        per_source: usize,
        v6_prefix: u8,
    ) -> Result<Ticket, Refusal> {
        let source = if per_source == 0 {
            None
        } else {
            let key = source_of(peer, v6_prefix);
            let mut part = self.part(&key);
            let n = part.entry(key).or_insert(0);
            if *n as usize >= per_source {
                return Err(Refusal::PerSource);
            }
            *n += 1;
            Some(key)
        };
        if self.open().fetch_add(1, Ordering::SeqCst) + 1 >= max {
            self.full.notify_waiters();
        }
        Ok(Ticket { source })
    }

    /// Uncounts a connection that closed, and wakes the accept loops parked at the limit.
    pub fn release(&self, ticket: &Ticket) {
        if let Some(key) = &ticket.source {
            let mut part = self.part(key);
            if let Some(n) = part.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    part.remove(key);
                }
            }
        }
        self.open().fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Sources with open connections counted (for tests and a look at the table's size).
    #[cfg(test)]
    pub fn sources(&self) -> usize {
        self.sources
            .iter()
            .map(|p| p.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn part(&self, key: &IpNet) -> std::sync::MutexGuard<'_, HashMap<IpNet, u32>> {
        let i = usize::try_from(self.hasher.hash_one(key) % STRIPES as u64).unwrap_or(0);
        // A count is never left half-updated: a poisoned part is still consistent.
        self.sources[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A warning logged at most once per [`WARN_EVERY`] (by whichever shard comes first), saying
/// how many times it was held back since the last one.
#[derive(Debug, Default)]
pub(crate) struct Throttled {
    /// When it was last logged: milliseconds since `epoch` + 1 (0: never).
    last: AtomicU64,
    held_back: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl Throttled {
    /// Whether to log now; when so, with how many were held back since the last one.
    pub fn due(&self) -> Option<u64> {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = u64::try_from(epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another shard logs this round.
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

/// Whether an `accept` error means the process or the system is out of descriptors or memory
/// (retrying at once would fail again: back off).
#[must_use]
pub fn starved(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Admission {
        Admission::new(RequestMetrics::new(vec!["/".into()], 1))
    }

    #[test]
    fn a_source_over_its_limit_is_refused_until_one_of_its_connections_closes() {
        let a = admission();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t1 = a.admit(ip, usize::MAX, 2, 64).unwrap();
        let _t2 = a.admit(ip, usize::MAX, 2, 64).unwrap();
        assert_eq!(
            a.admit(ip, usize::MAX, 2, 64).unwrap_err(),
            Refusal::PerSource
        );
        // Another source is not held back.
        let other = a
            .admit("192.0.2.2".parse().unwrap(), usize::MAX, 2, 64)
            .unwrap();
        assert_eq!(a.open_now(), 3);
        a.release(&t1);
        let _t3 = a.admit(ip, usize::MAX, 2, 64).unwrap();
        a.release(&other);
        assert_eq!(a.sources(), 1, "a source without connections is forgotten");
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_prefix() {
        let a = admission();
        let _t = a
            .admit("fd00:ef::1".parse().unwrap(), usize::MAX, 1, 64)
            .unwrap();
        assert!(
            a.admit("fd00:ef::2".parse().unwrap(), usize::MAX, 1, 64)
                .is_err()
        );
        assert!(
            a.admit("fd00:ef:0:1::2".parse().unwrap(), usize::MAX, 1, 64)
                .is_ok()
        );
    }

    #[test]
    fn no_per_source_limit_keeps_nothing_per_source() {
        let a = admission();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let tickets: Vec<_> = (0..100)
            .map(|_| a.admit(ip, usize::MAX, 0, 64).unwrap())
            .collect();
        assert_eq!((a.open_now(), a.sources()), (100, 0));
        for t in &tickets {
            a.release(t);
        }
        assert_eq!(a.open_now(), 0);
    }

    #[test]
    fn the_derived_limit_leaves_a_reserve_and_room_for_upstreams() {
        assert_eq!(derived_max_connections(1024), 448);
        assert_eq!(derived_max_connections(10), 1);
        assert_eq!(default_per_source(448), 44);
        assert_eq!(default_per_source(5), 1);
    }

    #[test]
    fn a_throttled_warning_is_due_once_per_interval_and_counts_the_rest() {
        let t = Throttled::default();
        assert_eq!(t.due(), Some(0));
        for _ in 0..5 {
            assert_eq!(t.due(), None);
        }
        assert_eq!(t.held_back.load(Ordering::Relaxed), 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_parked_accept_loop_wakes_when_a_connection_closes() {
        let a = Arc::new(admission());
        let t = a
            .admit("192.0.2.1".parse().unwrap(), usize::MAX, 0, 64)
            .unwrap();
        let waiter = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                a.wait_below(1, Duration::from_secs(60)).await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.release(&t);
        let waited = waiter.await.unwrap();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
