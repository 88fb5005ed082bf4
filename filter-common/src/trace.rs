//! `edgefilter xdp trace`: the switch userspace writes into [`crate::xdp::MAP_TRACE`] and the
//! shape of the events the program then logs (aya-log) for each decision on a matching packet.
//!
//! Off ([`TraceConfig::OFF`], `expires_at_ns == 0`) the program pays one array read and one
//! compare per packet. On, it logs every packet whose source matches until the kernel's clock
//! reaches `expires_at_ns`, so a tracer that dies cannot leave tracing on for longer.
//!
//! Every event is one aya-log record with target [`TRACE_TARGET`] and the message
//! `family=F src=ADDR dport=P action=A reason=R`, where `F` is [`FAMILY_V4`], [`FAMILY_V6`] or
//! [`FAMILY_NONE`] (not IP; `src` is then `::`), `ADDR` the source as an IPv6 address (an IPv4
//! source IPv4-mapped, `::ffff:a.b.c.d`), `P` the TCP/UDP destination port or [`NO_PORT`], and
//! `A`/`R` the [`Action`]/[`Reason`] numbers. One shape for every packet keeps the program to
//! a single log call.

use crate::xdp::{Action, Reason, mask_v6};

/// The aya-log target of trace events (userspace ignores records with any other).
pub const TRACE_TARGET: &str = "edgefilter::trace";

/// [`TraceConfig::family`]: every packet, IP or not.
pub const TRACE_ALL: u32 = 0;
/// [`TraceConfig::family`] and event family: IPv4.
pub const FAMILY_V4: u32 = 4;
/// [`TraceConfig::family`] and event family: IPv6.
pub const FAMILY_V6: u32 = 6;
/// Event family of a packet that is not IPv4/IPv6 (no source address).
pub const FAMILY_NONE: u32 = 0;

/// The event's `dport` when the packet has none (not TCP/UDP, or the port could not be read).
pub const NO_PORT: u32 = u32::MAX;

/// The one entry of [`crate::xdp::MAP_TRACE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns` returns) until which packets are
    /// traced; 0 = off.
    pub expires_at_ns: u64,
    /// [`TRACE_ALL`], or [`FAMILY_V4`]/[`FAMILY_V6`] for sources inside `addr/prefix_len`.
    pub family: u32,
    /// Prefix length in bits (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix_len: u32,
    /// The network in network byte order, host bits cleared; an IPv4 network in the first 4
    /// bytes, the rest 0.
    pub addr: [u8; 16],
}

impl TraceConfig {
    /// Tracing off.
    pub const OFF: Self = Self {
        expires_at_ns: 0,
        family: TRACE_ALL,
        prefix_len: 0,
        addr: [0; 16],
    };

    /// Whether tracing is switched on (it may have expired already).
    #[must_use]
    #[inline(always)]
    pub const fn is_on(&self) -> bool {
        self.expires_at_ns != 0
    }

    /// Whether a packet that is not IPv4/IPv6 is traced (only when every source is).
    #[must_use]
    #[inline(always)]
    pub const fn matches_non_ip(&self) -> bool {
        self.family == TRACE_ALL
    }

    /// Whether an IPv4 source (network byte order) is traced.
    #[must_use]
    #[inline(always)]
    pub const fn matches_v4(&self, src: [u8; 4]) -> bool {
        match self.family {
            TRACE_ALL => true,
            FAMILY_V4 => {
                let mask = if self.prefix_len == 0 {
                    0
                } else if self.prefix_len >= 32 {
                    u32::MAX
                } else {
                    u32::MAX << (32 - self.prefix_len)
                };
                let a = self.addr;
                u32::from_be_bytes(src) & mask == u32::from_be_bytes([a[0], a[1], a[2], a[3]])
            }
            _ => false,
        }
    }

    /// Whether an IPv6 source (network byte order) is traced. Compared as two `u64` halves:
    /// an array `==` could become a `memcmp` call, which BPF has not.
    #[must_use]
    #[inline(always)]
    pub const fn matches_v6(&self, src: [u8; 16]) -> bool {
        match self.family {
            TRACE_ALL => true,
            FAMILY_V6 => {
                if self.prefix_len == 0 {
                    // `mask_v6` reads 0 as "the whole address".
                    return true;
                }
                let (sh, sl) = halves(mask_v6(src, self.prefix_len));
                let (ah, al) = halves(self.addr);
                sh == ah && sl == al
            }
            _ => false,
        }
    }
}

/// An IPv6 address as its high and low 64 bits.
#[inline(always)]
const fn halves(a: [u8; 16]) -> (u64, u64) {
    (
        u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

/// An IPv4 source as the event carries it: IPv4-mapped (`::ffff:a.b.c.d`).
#[must_use]
#[inline(always)]
pub const fn v4_mapped(src: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, src[0], src[1], src[2], src[3],
    ]
}

impl Action {
    /// The action numbered `n` (`Action as u32`), as a trace event carries it.
    #[must_use]
    pub const fn from_u32(n: u32) -> Option<Self> {
        match n {
            0 => Some(Self::Pass),
            1 => Some(Self::Drop),
            2 => Some(Self::WouldDrop),
            _ => None,
        }
    }
}

impl Reason {
    /// The reason numbered `n` (`Reason as u32`), as a trace event carries it.
    #[must_use]
    pub const fn from_u32(n: u32) -> Option<Self> {
        match n {
            0 => Some(Self::Allowlisted),
            1 => Some(Self::NotAllowlisted),
            2 => Some(Self::Denylisted),
            3 => Some(Self::Unprotected),
            4 => Some(Self::NotIp),
            5 => Some(Self::SynRate),
            _ => None,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::TraceConfig;

    // SAFETY: #[repr(C)], a u64, two u32 and a [u8; 16], no padding; every bit pattern is a
    // valid value.
    unsafe impl aya::Pod for TraceConfig {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    fn v4(prefix: &[u8; 4], len: u32) -> TraceConfig {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(prefix);
        TraceConfig {
            expires_at_ns: 1,
            family: FAMILY_V4,
            prefix_len: len,
            addr,
        }
    }

    fn v6(addr: [u8; 16], len: u32) -> TraceConfig {
        TraceConfig {
            expires_at_ns: 1,
            family: FAMILY_V6,
            prefix_len: len,
            addr: mask_v6(addr, len),
        }
    }

    #[test]
    fn layout_has_no_padding() {
        assert_eq!(size_of::<TraceConfig>(), 32);
        assert_eq!(align_of::<TraceConfig>(), 8);
        assert_eq!(offset_of!(TraceConfig, expires_at_ns), 0);
        assert_eq!(offset_of!(TraceConfig, family), 8);
        assert_eq!(offset_of!(TraceConfig, prefix_len), 12);
        assert_eq!(offset_of!(TraceConfig, addr), 16);
    }

    #[test]
    fn off_is_off_and_all_matches_everything() {
        assert!(!TraceConfig::OFF.is_on());
        let all = TraceConfig {
            expires_at_ns: 5,
            ..TraceConfig::OFF
        };
        assert!(all.is_on());
        assert!(all.matches_non_ip());
        assert!(all.matches_v4([10, 1, 2, 3]));
        assert!(all.matches_v6([0xfd; 16]));
    }

    #[test]
    fn ipv4_prefixes_match_exactly_their_sources() {
        let host = v4(&[198, 18, 0, 2], 32);
        assert!(host.matches_v4([198, 18, 0, 2]));
        assert!(!host.matches_v4([198, 18, 0, 3]));
        assert!(!host.matches_non_ip());
        assert!(!host.matches_v6(v4_mapped([198, 18, 0, 2])));
        let net = v4(&[198, 18, 0, 0], 24);
        assert!(net.matches_v4([198, 18, 0, 255]));
        assert!(!net.matches_v4([198, 18, 1, 0]));
        let odd = v4(&[198, 18, 0, 128], 25);
        assert!(odd.matches_v4([198, 18, 0, 200]));
        assert!(!odd.matches_v4([198, 18, 0, 127]));
        let any = v4(&[0, 0, 0, 0], 0);
        assert!(any.matches_v4([203, 0, 113, 9]));
        assert!(!any.matches_v6([0; 16]));
    }

    #[test]
    fn ipv6_prefixes_match_exactly_their_sources() {
        let a: [u8; 16] = [0xfd, 0, 0, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut b = a;
        b[15] = 3;
        let host = v6(a, 128);
        assert!(host.matches_v6(a));
        assert!(!host.matches_v6(b));
        assert!(!host.matches_v4([198, 18, 0, 2]));
        let net = v6(a, 64);
        assert!(net.matches_v6(b));
        let mut far = a;
        far[7] = 1;
        assert!(!net.matches_v6(far));
        let any = v6([0; 16], 0);
        assert!(any.matches_v6(far));
        assert!(!any.matches_non_ip());
    }

    #[test]
    fn numbers_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::from_u32(a as u32), Some(a));
        }
        for r in Reason::ALL {
            assert_eq!(Reason::from_u32(r as u32), Some(r));
        }
        assert_eq!(Action::from_u32(3), None);
        assert_eq!(Reason::from_u32(6), None);
    }

    #[test]
    fn ipv4_sources_are_carried_mapped() {
        assert_eq!(
            v4_mapped([198, 18, 0, 2]),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 2]
        );
    }
}
