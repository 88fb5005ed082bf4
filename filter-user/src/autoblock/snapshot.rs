//! The bans in force, as the shards see them: an immutable map of source → expiry, replaced as
//! a whole by the control plane (through `arc_swap`) whenever a ban comes or goes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use ipnet::IpNet;

use crate::store::bans::source_of;

/// An immutable set of banned sources with their expiry.
#[derive(Debug, Clone, Default)]
pub struct BanSnapshot {
    ipv6_prefix: u8,
    bans: HashMap<IpNet, Instant>,
}

impl BanSnapshot {
    /// No ban; IPv6 sources are looked up by their `/ipv6_prefix`.
    #[must_use]
    pub fn empty(ipv6_prefix: u8) -> Self {
        Self {
            ipv6_prefix,
            bans: HashMap::new(),
        }
    }

    /// The bans `bans` (source, expiry).
    #[must_use]
    pub fn new(ipv6_prefix: u8, bans: impl IntoIterator<Item = (IpNet, Instant)>) -> Self {
        Self {
            ipv6_prefix,
            bans: bans.into_iter().collect(),
        }
    }

    /// Whether nothing is banned.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// How many sources are banned (expired ones included until the next snapshot).
    #[must_use]
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    /// Whether `ip` falls in a source banned beyond `now`.
    #[must_use]
    pub fn holds(&self, ip: IpAddr, now: Instant) -> bool {
        self.bans
            .get(&source_of(ip, self.ipv6_prefix))
            .is_some_and(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bans_cover_their_source_until_they_expire() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let s = BanSnapshot::new(
            64,
            [
                ("198.18.0.2/32".parse().unwrap(), later),
                ("fd00:ef::/64".parse().unwrap(), later),
            ],
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(s.holds(ip("198.18.0.2"), now));
        assert!(s.holds(ip("::ffff:198.18.0.2"), now));
        assert!(!s.holds(ip("198.18.0.3"), now));
        assert!(s.holds(ip("fd00:ef::9:9"), now));
        assert!(!s.holds(ip("fd00:ef:0:1::9"), now));
        assert!(!s.holds(ip("198.18.0.2"), later));
    }
}
