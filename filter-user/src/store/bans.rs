//! Denylist bans as the store keeps them (SPEC §3 `deny`, §11): what a ban is, what a ban's
//! source may be, and how both backends name them. A ban is a change: writing or lifting one
//! bumps the store revision (and, in fleet mode, is announced with `NOTIFY`), so every host
//! reads it with [`super::KeyStore::bans_since`] and puts it into its own denylist. A lifted ban
//! stays in the table as a tombstone until [`super::KeyStore::purge_bans`], so hosts that read
//! after the lift see it go.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Tombstones and expired bans are deleted this long after they stopped mattering (hosts also
/// reconcile their whole denylist with the store regularly, so a host that was away longer
/// still converges).
pub const PURGE_AFTER_MS: i64 = 10 * 60 * 1000;

/// Why a source is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanReason {
    /// Auto-block: too many key denials within the window.
    Autoblock,
    /// `edgefilter deny add` / `POST /v1/denylist`.
    Manual,
}

impl BanReason {
    /// The stored and printed name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Autoblock => "autoblock",
            Self::Manual => "manual",
        }
    }

    /// From the stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "autoblock" => Some(Self::Autoblock),
            "manual" => Some(Self::Manual),
            _ => None,
        }
    }
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ban: packets from `source` are dropped until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// An IPv4 address (`/32`) or an IPv6 prefix, as [`ban_source`] makes it.
    pub source: IpNet,
    /// Why.
    pub reason: BanReason,
    /// The host that banned it.
    pub host: String,
    /// When (unix milliseconds).
    pub created_at_ms: i64,
    /// Until when (unix milliseconds).
    pub expires_at_ms: i64,
}

impl Ban {
    /// Whether the ban still holds at `now_ms`.
    #[must_use]
    pub fn holds_at(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// A ban as read back after a revision: written (`lifted == false`) or lifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRow {
    /// The revision of the change that wrote it.
    pub revision: u64,
    /// The ban.
    pub ban: Ban,
    /// Lifted before it expired (`deny remove`).
    pub lifted: bool,
}

/// Why a source cannot be banned as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanSourceError {
    /// An IPv4 network wider than one address.
    #[error(
        "{0} is a network: IPv4 bans are per address (ban each address, or take the network off the allowlist with `edgefilter allow remove`)"
    )]
    V4Network(IpNet),
    /// An IPv6 prefix wider than the configured ban prefix.
    #[error(
        "{net} is wider than one /{prefix}: IPv6 bans cover exactly one /{prefix} (autoblock.ipv6_prefix)"
    )]
    V6TooWide {
        /// What was given.
        net: IpNet,
        /// `autoblock.ipv6_prefix`.
        prefix: u8,
    },
}

/// The ban source of `net` (an address is its host prefix): an IPv4 address stays itself (an
/// IPv4-mapped IPv6 address becomes its IPv4 address); an IPv6 address or prefix becomes the
/// `/v6_prefix` network holding it, so an attacker cannot hop addresses inside it.
///
/// # Errors
/// An IPv4 network, or an IPv6 prefix wider than `/v6_prefix`.
pub fn ban_source(net: IpNet, v6_prefix: u8) -> Result<IpNet, BanSourceError> {
    match net {
        IpNet::V4(n) if n.prefix_len() == 32 => Ok(IpNet::from(IpAddr::V4(n.addr()))),
        IpNet::V4(_) => Err(BanSourceError::V4Network(net)),
        IpNet::V6(n) => {
            if let (Some(v4), 128) = (n.addr().to_ipv4_mapped(), n.prefix_len()) {
                return Ok(IpNet::from(IpAddr::V4(v4)));
            }
            let prefix = v6_prefix.clamp(1, 128);
            if n.prefix_len() < prefix {
                return Err(BanSourceError::V6TooWide { net, prefix });
            }
            Ok(source_of(IpAddr::V6(n.addr()), prefix))
        }
    }
}

/// The ban source a client address falls in: itself for IPv4 (and IPv4-mapped IPv6), its
/// `/v6_prefix` network for IPv6.
#[must_use]
pub fn source_of(ip: IpAddr, v6_prefix: u8) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpNet::from(IpAddr::V4(a)),
        IpAddr::V6(a) => {
            let bits = v6_prefix.clamp(1, 128);
            let masked = filter_common::xdp::mask_v6(a.octets(), u32::from(bits));
            IpNet::new(IpAddr::from(masked), bits).unwrap_or_else(|_| IpNet::from(IpAddr::V6(a)))
        }
    }
}

/// How a source is written (stored, printed, sent): an IPv4 address bare, an IPv6 prefix as
/// `net/len`.
#[must_use]
pub fn source_text(source: &IpNet) -> String {
    match source {
        IpNet::V4(n) if n.prefix_len() == 32 => n.addr().to_string(),
        other => other.to_string(),
    }
}

/// The current time in unix milliseconds.
#[must_use]
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        crate::config::parse_cidr(s).unwrap()
    }

    #[test]
    fn sources_are_addresses_or_one_v6_prefix() {
        let ok = |s: &str, p: u8| source_text(&ban_source(net(s), p).unwrap());
        assert_eq!(ok("198.18.0.2", 64), "198.18.0.2");
        assert_eq!(ok("198.18.0.2/32", 64), "198.18.0.2");
        assert_eq!(ok("::ffff:198.18.0.2", 64), "198.18.0.2");
        assert_eq!(ok("fd00:ef::2", 64), "fd00:ef::/64");
        assert_eq!(ok("fd00:ef::2/64", 64), "fd00:ef::/64");
        assert_eq!(ok("fd00:ef:0:0:8000::/72", 64), "fd00:ef::/64");
        assert_eq!(ok("fd00:ef:0:1234::9", 48), "fd00:ef::/48");
        assert_eq!(ok("fd00:ef::9", 128), "fd00:ef::9/128");
        assert!(matches!(
            ban_source(net("198.18.0.0/24"), 64),
            Err(BanSourceError::V4Network(_))
        ));
        let wide = ban_source(net("fd00:ef::/48"), 64).unwrap_err();
        assert!(wide.to_string().contains("exactly one /64"), "{wide}");
    }

    #[test]
    fn a_client_falls_in_its_source() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_text(&source_of(ip("198.18.0.9"), 64)), "198.18.0.9");
        assert_eq!(
            source_text(&source_of(ip("::ffff:198.18.0.9"), 64)),
            "198.18.0.9"
        );
        assert_eq!(
            source_of(ip("fd00:ef::1234"), 64),
            source_of(ip("fd00:ef::ffff:1"), 64)
        );
        assert_ne!(
            source_of(ip("fd00:ef::1"), 64),
            source_of(ip("fd00:ef:0:1::1"), 64)
        );
    }

    #[test]
    fn reasons_round_trip() {
        for r in [BanReason::Autoblock, BanReason::Manual] {
            assert_eq!(BanReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(BanReason::parse("other"), None);
    }
}
