//! The upstream credential a route injects: one fixed `inject_header`, or a pool of provider
//! credentials (`[route.credentials]`) spread over requests in turn. A pooled value the
//! provider answers 429 rests for its `Retry-After` (or the pool's `cooldown`); one answered
//! 401 or 403 rests until a reload reads a different value for it, and is logged by index,
//! never by value. When every value rests, the caller gets `UPSTREAM_CREDENTIALS_EXHAUSTED`
//! with the time until the first one is back. The state is shared by every shard (atomics in
//! [`CredentialHealth`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::codes::ErrorCode;
use crate::gate::{Denial, RateInfo};
use crate::obs::upstreams::{CredentialHealth, CredentialState, now_ms};

/// A route's upstream credential.
#[derive(Debug)]
pub struct Credentials {
    /// The header it is sent in.
    pub name: String,
    /// The values (resolved; never logged).
    values: Vec<String>,
    /// Each pooled value's state; empty for a fixed `inject_header`.
    health: Vec<Arc<CredentialHealth>>,
    /// Rest after a 429 without `Retry-After`.
    cooldown: Duration,
    /// Where the next pick starts.
    turn: AtomicUsize,
}

/// Every pooled value rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// Seconds until the first one is back (at least 1).
    pub retry_after: u64,
}

impl Exhausted {
    /// The answer: `UPSTREAM_CREDENTIALS_EXHAUSTED` with `Retry-After` and a hint saying when the
    /// first value is back, and the caller's key id when known.
    #[must_use]
    pub fn denial(&self, key_id: Option<&str>) -> Denial {
        let mut denial = Denial::new(ErrorCode::UpstreamCredentialsExhausted);
        denial.hint = Some(format!(
            "every provider credential of this route is resting after the provider refused or \
             rate-limited it; the first is back in {}s",
            self.retry_after
        ));
        denial.key_id = key_id.map(Arc::from);
        denial.rate = Some(RateInfo {
            limit: 0,
            remaining: 0,
            reset_secs: self.retry_after,
        });
        denial
    }
}

impl Credentials {
    /// One value sent on every request (`inject_header`); it never rests.
    #[must_use]
    pub fn fixed(name: String, value: String) -> Self {
        Self {
            name,
            values: vec![value],
            health: Vec::new(),
            cooldown: Duration::ZERO,
            turn: AtomicUsize::new(0),
        }
    }

    /// A pool of `values` for `route`.
    #[must_use]
    pub fn pool(route: &str, name: String, values: Vec<String>, cooldown: Duration) -> Self {
        let health = values
            .iter()
            .enumerate()
            .map(|(i, v)| Arc::new(CredentialHealth::new(route, i, fingerprint(v))))
            .collect();
        Self {
            name,
            values,
            health,
            cooldown,
            turn: AtomicUsize::new(0),
        }
    }

    /// Whether values rest when the provider refuses them.
    #[must_use]
    pub fn is_pool(&self) -> bool {
        !self.health.is_empty()
    }

    /// Value `i` (never log it).
    #[must_use]
    pub fn value(&self, i: usize) -> &str {
        &self.values[i]
    }

    /// Each pooled value's state, for `/metrics`.
    #[must_use]
    pub fn health(&self) -> &[Arc<CredentialHealth>] {
        &self.health
    }

    /// Takes over the state of the values `old` had too (same route, same value): a reload
    /// that did not change a refused value keeps it resting.
    pub fn carry_over(&self, old: &Self) {
        for h in &self.health {
            if let Some(o) = old.health.iter().find(|o| o.fingerprint == h.fingerprint) {
                h.carry_over(o);
            }
        }
    }

    /// The value for the next attempt, skipping those in `tried` (bit `i`: value `i`) and the
    /// resting ones.
    ///
    /// # Errors
    /// [`Exhausted`] when no value is left.
    pub fn pick(&self, tried: u64) -> Result<usize, Exhausted> {
        if !self.is_pool() {
            return Ok(0);
        }
        let now = now_ms();
        let n = self.values.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let i = (start + k) % n;
            let untried = i >= 64 || tried & (1 << i) == 0;
            if untried && self.health[i].state(now) == CredentialState::Ready {
                return Ok(i);
            }
        }
        let soonest = self
            .health
            .iter()
            .filter(|h| h.state(now) == CredentialState::RateLimited)
            .map(|h| h.ready_at())
            .min();
        let wait_ms = match soonest {
            Some(at) => at.saturating_sub(now),
            // Refused values come back only with a new value; tried ones at once.
            None => u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX),
        };
        Err(Exhausted {
            retry_after: wait_ms.div_ceil(1000).max(1),
        })
    }

    /// The provider answered `status` to value `i` (with `Retry-After: retry_after` seconds);
    /// whether the value rests now (429, 401, 403 on a pool), so another may be tried.
    pub fn answered(&self, i: usize, status: u16, retry_after: Option<u64>) -> bool {
        let Some(h) = self.health.get(i) else {
            return false;
        };
        match status {
            429 => {
                let rest = retry_after.map_or(self.cooldown, Duration::from_secs);
                h.rate_limited(now_ms(), rest);
                tracing::warn!(
                    route = %h.route,
                    credential = i,
                    rest_secs = rest.as_secs(),
                    "the provider rate-limited upstream credential {i}: it rests"
                );
                true
            }
            401 | 403 => {
                if h.refused() {
                    tracing::error!(
                        route = %h.route,
                        credential = i,
                        status,
                        "the provider refused upstream credential {i}: it rests until its \
                         value changes (fix the variable or file, then reload)"
                    );
                }
                true
            }
            _ => false,
        }
    }
}

/// A digest of a value, to know it again after a reload without keeping it twice.
fn fingerprint(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Credentials {
        let values = vec!["Bearer a".into(), "Bearer b".into()];
        Credentials::pool(
            "/v1/",
            "Authorization".into(),
            values,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn values_are_taken_in_turn_and_a_rate_limited_one_is_skipped() {
        let c = pool();
        let picks: Vec<usize> = (0..4).map(|_| c.pick(0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        assert!(c.answered(0, 429, Some(30)));
        assert!((0..4).all(|_| c.pick(0) == Ok(1)));
        assert_eq!(c.pick(0b10), Err(Exhausted { retry_after: 30 }));
    }

    #[test]
    fn a_refused_value_rests_until_a_reload_brings_a_new_one() {
        let c = pool();
        assert!(c.answered(1, 401, None));
        assert!(
            !c.answered(0, 500, None),
            "a 500 is the provider's, not the credential's"
        );
        assert!((0..3).all(|_| c.pick(0) == Ok(0)));
        let same = pool();
        same.carry_over(&c);
        assert!(
            (0..3).all(|_| same.pick(0) == Ok(0)),
            "unchanged value still rests"
        );
        let values = vec!["Bearer a".into(), "Bearer c".into()];
        let changed = Credentials::pool("/v1/", "Authorization".into(), values, Duration::ZERO);
        changed.carry_over(&c);
        assert_eq!((0..2).map(|_| changed.pick(0).unwrap()).sum::<usize>(), 1);
    }

    #[test]
    fn a_fixed_value_never_rests() {
        let c = Credentials::fixed("X-Key".into(), "v".into());
        assert!(!c.answered(0, 429, None));
        assert_eq!(c.pick(u64::MAX), Ok(0));
    }
}
