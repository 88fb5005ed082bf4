//! The allowlist tries: read them, and bring them to a wanted set by a diff (insert what is
//! missing, delete what is extra), never by clearing, so unchanged prefixes never blink.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use filter_common::xdp::ALLOW_PRESENT;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{XdpError, XdpMaps};

/// What a diff changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowDiff {
    /// Prefixes inserted.
    pub added: Vec<IpNet>,
    /// Prefixes deleted.
    pub removed: Vec<IpNet>,
}

impl AllowDiff {
    /// The diff that turns `current` into `wanted` (both normalised to network addresses).
    #[must_use]
    pub fn between(current: &[IpNet], wanted: &[IpNet]) -> Self {
        let cur: BTreeSet<IpNet> = current.iter().map(IpNet::trunc).collect();
        let want: BTreeSet<IpNet> = wanted.iter().map(IpNet::trunc).collect();
        Self {
            added: want.difference(&cur).copied().collect(),
            removed: cur.difference(&want).copied().collect(),
        }
    }

    /// Whether nothing changes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl XdpMaps {
    /// Every prefix in the live allowlist, sorted.
    ///
    /// # Errors
    /// A map read fails.
    pub fn allowlist(&self) -> Result<Vec<IpNet>, XdpError> {
        let mut out = Vec::new();
        for k in self.allow_v4.keys() {
            let k = k.map_err(|e| XdpError::map("reading the IPv4 allowlist", e))?;
            let net = Ipv4Net::new(Ipv4Addr::from(k.data()), prefix_u8(k.prefix_len())).map_err(
                |_| XdpError::Corrupt(format!("IPv4 allowlist prefix length {}", k.prefix_len())),
            )?;
            out.push(IpNet::V4(net));
        }
        for k in self.allow_v6.keys() {
            let k = k.map_err(|e| XdpError::map("reading the IPv6 allowlist", e))?;
            let net = Ipv6Net::new(Ipv6Addr::from(k.data()), prefix_u8(k.prefix_len())).map_err(
                |_| XdpError::Corrupt(format!("IPv6 allowlist prefix length {}", k.prefix_len())),
            )?;
            out.push(IpNet::V6(net));
        }
        out.sort();
        Ok(out)
    }

    /// Brings the live allowlist to exactly `wanted` by a diff; inserts go first so a prefix
    /// being narrowed or widened is never absent.
    ///
    /// # Errors
    /// A map read or update fails (the allowlist is then between the old and the new set;
    /// calling again finishes the job).
    pub fn sync_allowlist(&mut self, wanted: &[IpNet]) -> Result<AllowDiff, XdpError> {
        let diff = AllowDiff::between(&self.allowlist()?, wanted);
        for net in &diff.added {
            self.allow_insert(*net)?;
        }
        for net in &diff.removed {
            self.allow_remove(*net)?;
        }
        Ok(diff)
    }

    /// Inserts one prefix (idempotent).
    ///
    /// # Errors
    /// The map update fails (e.g. the trie is full).
    pub fn allow_insert(&mut self, net: IpNet) -> Result<(), XdpError> {
        let res = match net.trunc() {
            IpNet::V4(n) => self.allow_v4.insert(
                &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                ALLOW_PRESENT,
                0,
            ),
            IpNet::V6(n) => self.allow_v6.insert(
                &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                ALLOW_PRESENT,
                0,
            ),
        };
        res.map_err(|e| XdpError::map(format!("inserting {net} into the allowlist"), e))
    }

    /// Removes one prefix; `false` when it was not there.
    ///
    /// # Errors
    /// The map update fails for another reason than a missing key.
    pub fn allow_remove(&mut self, net: IpNet) -> Result<bool, XdpError> {
        let res = match net.trunc() {
            IpNet::V4(n) => self
                .allow_v4
                .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets())),
            IpNet::V6(n) => self
                .allow_v6
                .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets())),
        };
        match res {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(XdpError::map(
                format!("removing {net} from the allowlist"),
                e,
            )),
        }
    }
}

fn prefix_u8(len: u32) -> u8 {
    u8::try_from(len).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn diff_touches_only_changes() {
        let d = AllowDiff::between(
            &nets(&["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]),
            &nets(&["10.0.0.0/8", "198.51.100.0/24", "2001:db8::/32"]),
        );
        assert_eq!(d.added, nets(&["198.51.100.0/24"]));
        assert_eq!(d.removed, nets(&["192.0.2.0/24"]));
    }

    #[test]
    fn diff_normalises_host_bits() {
        let d = AllowDiff::between(&nets(&["10.0.0.0/8"]), &nets(&["10.1.2.3/8"]));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn diff_of_equal_sets_is_empty_and_changed_prefix_len_is_a_change() {
        assert!(AllowDiff::between(&nets(&["::1/128"]), &nets(&["::1/128"])).is_empty());
        let d = AllowDiff::between(&nets(&["10.0.0.0/8"]), &nets(&["10.0.0.0/16"]));
        assert_eq!(d.added, nets(&["10.0.0.0/16"]));
        assert_eq!(d.removed, nets(&["10.0.0.0/8"]));
    }
}
