//! One shard's failure counter: a table only its thread touches, bounded in size, that turns a
//! shard's key denials into [`Report`]s on the hub's queue. No lock, no shared cache line on
//! the request path; the table allocates only when it grows.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use super::{Autoblock, Report, Settings};
use crate::codes::ErrorCode;
use crate::store::bans::source_of;

/// Sources a shard tracks at once; past it, expired entries are swept and, if the table is
/// still full, a new source's failures go straight to the control plane one by one.
pub const MAX_TRACKED: usize = 65_536;

/// Whether a denial counts towards auto-block: the 401 codes and `MALFORMED_KEY` (a key that
/// is wrong), never 403/429 (a valid key that may not do this) nor non-key answers.
#[must_use]
pub const fn counts(code: ErrorCode) -> bool {
    code.status() == 401 || matches!(code, ErrorCode::MalformedKey)
}

#[derive(Debug, Clone, Copy)]
struct Window {
    since: Instant,
    count: u32,
    reported: u32,
}

/// One shard's counter (see the module docs of [`super`]).
#[derive(Debug)]
pub struct ShardFailures {
    hub: Arc<Autoblock>,
    table: RefCell<HashMap<IpNet, Window>>,
}

impl ShardFailures {
    pub(super) fn new(hub: Arc<Autoblock>) -> Self {
        Self {
            hub,
            table: RefCell::new(HashMap::new()),
        }
    }

    /// Counts a request from `ip` answered with `code` (does nothing for codes that do not
    /// count, exempt sources, or with `autoblock.enabled = false`).
    pub fn note(&self, ip: IpAddr, code: ErrorCode) {
        if !counts(code) {
            return;
        }
        let s = self.hub.current();
        if !s.enabled || s.exempts_ip(ip) {
            return;
        }
        self.count(&s, source_of(ip, s.ipv6_prefix), Instant::now());
    }

    fn count(&self, s: &Settings, source: IpNet, now: Instant) {
        let step = self.hub.step();
        let mut table = self.table.borrow_mut();
        if table.len() >= MAX_TRACKED && !table.contains_key(&source) {
            table.retain(|_, w| now.duration_since(w.since) < s.window);
            if table.len() >= MAX_TRACKED {
                self.hub.report(Report {
                    source,
                    failures: 1,
                    since: now,
                });
                return;
            }
        }
        let w = table.entry(source).or_insert(Window {
            since: now,
            count: 0,
            reported: 0,
        });
        if now.duration_since(w.since) >= s.window {
            *w = Window {
                since: now,
                count: 0,
                reported: 0,
            };
        }
        w.count = w.count.saturating_add(1);
        if w.count.is_multiple_of(step) || w.count == s.failures {
            let failures = w.count - w.reported;
            w.reported = w.count;
            self.hub.report(Report {
                source,
                failures,
                since: w.since,
            });
        }
    }

    /// Whether a connection from `ip` is to be closed (at accept, or before the next request of
    /// a kept-alive one): the daemon runs without XDP and `ip` is banned. One atomic load when
    /// nothing is refused; else a lock-free load of the ban snapshot and one hash lookup.
    #[must_use]
    pub fn refuses(&self, ip: IpAddr) -> bool {
        if !self.hub.refusing() {
            return false;
        }
        let bans = self.hub.snapshot();
        !bans.is_empty() && bans.holds(ip, Instant::now())
    }

    /// Sources this shard is tracking now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.table.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn hub(failures: u32, shards: usize) -> Arc<Autoblock> {
        Autoblock::with_settings(
            Settings {
                enabled: true,
                failures,
                window: Duration::from_secs(10),
                ban: Duration::from_secs(600),
                ipv6_prefix: 64,
                exempt: vec!["10.0.0.0/8".parse().unwrap()],
            },
            shards,
        )
    }

    fn drained(hub: &Autoblock) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        hub.drain(|r| out.push((r.source.to_string(), r.failures)));
        out
    }

    #[test]
    fn only_key_denials_count() {
        for code in ErrorCode::ALL {
            let want = matches!(
                code,
                ErrorCode::MissingKey
                    | ErrorCode::KeyInWrongPlace
                    | ErrorCode::MalformedKey
                    | ErrorCode::KeyChecksumMismatch
                    | ErrorCode::WrongEnvironment
                    | ErrorCode::UnknownKey
                    | ErrorCode::KeyRevoked
                    | ErrorCode::KeyNotYetValid
                    | ErrorCode::KeyExpired
                    | ErrorCode::UserSuspended
                    | ErrorCode::UserDeleted
                    | ErrorCode::InvalidCredentials
            );
            assert_eq!(counts(code), want, "{code:?}");
        }
    }

    #[test]
    fn one_shard_reports_every_step_and_at_the_threshold() {
        let hub = hub(5, 2);
        assert_eq!(hub.step(), 1, "5 failures over 2 shards × 4");
        let hub = self::hub(50, 2);
        assert_eq!(hub.step(), 7);
        let f = hub.shard();
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        for _ in 0..50 {
            f.note(ip, ErrorCode::UnknownKey);
        }
        let reports = drained(&hub);
        let sum: u32 = reports.iter().map(|r| r.1).sum();
        assert_eq!(sum, 50, "{reports:?}");
        assert_eq!(
            reports.len(),
            8,
            "7 steps of 7 and the last one: {reports:?}"
        );
        for _ in 0..10 {
            f.note(ip, ErrorCode::RateLimited);
            f.note(ip, ErrorCode::IpNotAllowed);
            f.note("10.1.2.3".parse().unwrap(), ErrorCode::UnknownKey);
        }
        assert!(
            drained(&hub).is_empty(),
            "403/429 and exempt sources never count"
        );
    }

    #[test]
    fn ipv6_is_counted_per_prefix_and_disabled_counts_nothing() {
        let hub = hub(3, 1);
        let f = hub.shard();
        for ip in ["fd00:ef::1", "fd00:ef::2", "fd00:ef::ffff:3"] {
            f.note(ip.parse().unwrap(), ErrorCode::KeyChecksumMismatch);
        }
        let reports = drained(&hub);
        assert!(reports.iter().all(|r| r.0 == "fd00:ef::/64"), "{reports:?}");
        assert_eq!(reports.iter().map(|r| r.1).sum::<u32>(), 3);
        assert_eq!(f.tracked(), 1);

        let mut off = (*hub.settings()).clone();
        off.enabled = false;
        let hub = Autoblock::with_settings(off, 1);
        let f = hub.shard();
        for _ in 0..10 {
            f.note("198.18.0.2".parse().unwrap(), ErrorCode::UnknownKey);
        }
        assert!(drained(&hub).is_empty());
        assert_eq!(f.tracked(), 0);
    }

    #[test]
    fn a_new_window_starts_after_the_window() {
        let hub = hub(4, 1);
        let f = hub.shard();
        let src: IpNet = "198.18.0.2/32".parse().unwrap();
        let t0 = Instant::now();
        let s = hub.settings();
        f.count(&s, src, t0);
        f.count(&s, src, t0 + Duration::from_secs(11));
        let mut since = Vec::new();
        hub.drain(|r| since.push(r.since));
        assert_eq!(since, [t0, t0 + Duration::from_secs(11)]);
    }
}
