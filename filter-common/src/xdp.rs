//! XDP map layouts, counter reasons and runtime config shared by kernel and userspace.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]`, `Copy`, built from fixed-width
//! integers only (`u32` flags, never `bool`) and has no padding, so both sides agree on every byte.
//! Addresses are kept as byte arrays in network byte order, exactly as they sit in the packet.

/// Name of the program that filters (SPEC §10).
pub const PROG_FILTER: &str = "edgefilter";
/// Name of the empty `XDP_PASS` program used only as the baseline of the cost bench.
pub const PROG_PASS_ALL: &str = "pass_all";

/// `Array<XdpConfig>` with one entry: enforce or monitor.
pub const MAP_CONFIG: &str = "EF_CONFIG";
/// `Array<PortBitmap>` with one entry: the protected destination ports.
pub const MAP_PORTS: &str = "EF_PORTS";
/// `LpmTrie<[u8; 4], u32>`: the IPv4 allowlist.
pub const MAP_ALLOW_V4: &str = "EF_ALLOW_V4";
/// `LpmTrie<[u8; 16], u32>`: the IPv6 allowlist.
pub const MAP_ALLOW_V6: &str = "EF_ALLOW_V6";
/// `LruHashMap<[u8; 4], DenyEntry>`: the IPv4 denylist.
pub const MAP_DENY_V4: &str = "EF_DENY_V4";
/// `LruHashMap<[u8; 16], DenyEntry>`: the IPv6 denylist, keyed by the source masked to
/// [`XdpConfig::ipv6_deny_prefix`] bits (one entry bans a whole prefix).
pub const MAP_DENY_V6: &str = "EF_DENY_V6";
/// `PerCpuArray<CounterValue>` indexed by [`counter_index`].
pub const MAP_COUNTERS: &str = "EF_COUNTERS";
/// `LruHashMap<[u8; 4], SynBucket>`: each IPv4 source's SYN allowance (`xdp.syn_rate`).
pub const MAP_SYN_V4: &str = "EF_SYN_V4";
/// `LruHashMap<[u8; 8], SynBucket>`: each IPv6 /64's SYN allowance (its first 8 bytes).
pub const MAP_SYN_V6: &str = "EF_SYN_V6";

/// `Array<TraceConfig>` with one entry: `edgefilter xdp trace`'s switch
/// ([`crate::trace::TraceConfig`]).
pub const MAP_TRACE: &str = "EF_TRACE";
/// The ring buffer aya-log writes trace events into (the name aya-log gives it).
pub const MAP_LOGS: &str = "AYA_LOGS";

/// Every map the filter needs, in a stable order (pinning, detaching, adopting).
pub const ALL_MAPS: [&str; 9] = [
    MAP_CONFIG,
    MAP_PORTS,
    MAP_ALLOW_V4,
    MAP_ALLOW_V6,
    MAP_DENY_V4,
    MAP_DENY_V6,
    MAP_COUNTERS,
    MAP_SYN_V4,
    MAP_SYN_V6,
];

/// The maps of `edgefilter xdp trace`, pinned beside [`ALL_MAPS`] (so a restart adopts the
/// program and `xdp detach` removes them) but not required of a pin directory: a filter pinned
/// by a build before tracing has none.
pub const TRACE_MAPS: [&str; 2] = [MAP_TRACE, MAP_LOGS];

/// Capacity of each allowlist trie (per address family).
pub const ALLOW_MAX_ENTRIES: u32 = 131_072;
/// Capacity of each denylist (per address family); least recently used entries go first.
pub const DENY_MAX_ENTRIES: u32 = 65_536;
/// Sources (IPv4 addresses, IPv6 /64s) whose SYN allowance is kept, per family; the least
/// recently seen go first, so a spoofed flood can only make a quiet source start afresh.
pub const SYN_MAX_ENTRIES: u32 = 65_536;
/// How many IPv6 extension headers the program walks before judging by source alone.
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;

/// Value stored for every allowlist prefix (the trie only needs presence).
pub const ALLOW_PRESENT: u32 = 1;

/// [`XdpConfig::mode`]: drop what fails the checks.
pub const MODE_ENFORCE: u32 = 0;
/// [`XdpConfig::mode`]: count what would be dropped, never drop.
pub const MODE_MONITOR: u32 = 1;

/// Runtime switches the program reads on every packet (one entry of [`MAP_CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// [`MODE_ENFORCE`] or [`MODE_MONITOR`].
    pub mode: u32,
    /// How many leading bits of an IPv6 source the denylist is keyed by (`autoblock.ipv6_prefix`,
    /// 1..=128); any other value (0 in a map written before this field existed) means 128.
    pub ipv6_deny_prefix: u32,
    /// `xdp.syn_rate` as the nanoseconds one SYN's allowance takes to come back; 0: no limit.
    pub syn_interval_ns: u64,
    /// `xdp.syn_burst` × `syn_interval_ns`: how far ahead of now a source's allowance may run.
    pub syn_window_ns: u64,
}

/// A source's SYN allowance (GCRA): when its next SYN would be on time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynBucket {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub tat_ns: u64,
}

/// The SYN-limit decision shared by the program and its tests: with the allowance at `tat_ns`
/// (0 for a source not seen yet), whether a SYN at `now_ns` is within `xdp.syn_rate` and, if
/// so, the allowance after it (GCRA: a source may run up to `window_ns` ahead of now).
#[must_use]
#[inline(always)]
pub const fn syn_take(tat_ns: u64, now_ns: u64, interval_ns: u64, window_ns: u64) -> Option<u64> {
    let start = if tat_ns > now_ns { tat_ns } else { now_ns };
    let next = start + interval_ns;
    if next - now_ns > window_ns {
        None
    } else {
        Some(next)
    }
}

/// The prefix length [`XdpConfig::ipv6_deny_prefix`] stands for: 1..=128 as is, else 128.
#[must_use]
#[inline(always)]
pub const fn effective_v6_prefix(configured: u32) -> u32 {
    if configured == 0 || configured > 128 {
        128
    } else {
        configured
    }
}

/// `addr` (an IPv6 address in network byte order) with every bit after the first `prefix`
/// cleared; `prefix` as [`effective_v6_prefix`] reads it. Branches and shifts only, no loop:
/// the XDP program masks every IPv6 source with it before the denylist lookup, and userspace
/// masks the keys it writes with it, so both agree on every byte.
#[must_use]
#[inline(always)]
pub const fn mask_v6(addr: [u8; 16], prefix: u32) -> [u8; 16] {
    let bits = effective_v6_prefix(prefix);
    let a = addr;
    let hi = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let (hi, lo) = if bits >= 64 {
        (hi, lo & high_bits(bits - 64))
    } else {
        (hi & high_bits(bits), 0)
    };
    let h = hi.to_be_bytes();
    let l = lo.to_be_bytes();
    [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6],
        l[7],
    ]
}

/// A u64 with its `n` (0..=64) most significant bits set.
#[inline(always)]
const fn high_bits(n: u32) -> u64 {
    if n == 0 { 0 } else { u64::MAX << (64 - n) }
}

/// Number of 64-bit words covering every port 0..=65535.
pub const PORT_WORDS: usize = 1024;

/// One bit per destination port; a set bit means "protected" (one entry of [`MAP_PORTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBitmap {
    /// Bit `port % 64` of word `port / 64`.
    pub words: [u64; PORT_WORDS],
}

impl PortBitmap {
    /// No port protected.
    pub const EMPTY: Self = Self {
        words: [0; PORT_WORDS],
    };

    /// Marks `port` protected.
    pub fn insert(&mut self, port: u16) {
        self.words[usize::from(port >> 6)] |= 1u64 << (port & 63);
    }

    /// Whether `port` is protected.
    #[must_use]
    pub fn contains(&self, port: u16) -> bool {
        self.words[usize::from(port >> 6)] & (1u64 << (port & 63)) != 0
    }
}

impl Default for PortBitmap {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// A denylist entry: the source is dropped until `expires_at_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEntry {
    /// `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns` returns); `u64::MAX` = never.
    pub expires_at_ns: u64,
}

/// One per-CPU counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    /// Packets counted.
    pub packets: u64,
    /// Bytes of those packets (frame length as XDP saw it).
    pub bytes: u64,
}

/// What the program did with a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `XDP_PASS`.
    Pass = 0,
    /// `XDP_DROP`.
    Drop = 1,
    /// Monitor mode: passed, but enforce mode would have dropped it.
    WouldDrop = 2,
}

impl Action {
    /// Every action, in index order.
    pub const ALL: [Self; 3] = [Self::Pass, Self::Drop, Self::WouldDrop];

    /// The metric label (`action="..."`, SPEC §8).
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Drop => "drop",
            Self::WouldDrop => "would_drop",
        }
    }
}

/// Why the program decided as it did (SPEC §10, metric label `reason`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Source in the allowlist.
    Allowlisted = 0,
    /// Source not in the allowlist.
    NotAllowlisted = 1,
    /// Source on the denylist, entry not expired.
    Denylisted = 2,
    /// Destination port not protected (or not TCP/UDP).
    Unprotected = 3,
    /// Not an IPv4/IPv6 packet (or an IP header too short to hold a source).
    NotIp = 4,
    /// A TCP SYN to a protected port over its source's `xdp.syn_rate`.
    SynRate = 5,
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Self; 6] = [
        Self::Allowlisted,
        Self::NotAllowlisted,
        Self::Denylisted,
        Self::Unprotected,
        Self::NotIp,
        Self::SynRate,
    ];

    /// The metric label (`reason="..."`, SPEC §8).
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Allowlisted => "allowlisted",
            Self::NotAllowlisted => "not_allowlisted",
            Self::Denylisted => "denylisted",
            Self::Unprotected => "unprotected",
            Self::NotIp => "not_ip",
            Self::SynRate => "syn_rate",
        }
    }
}

/// Number of reasons.
pub const REASONS: u32 = 6;
/// Number of counter slots in [`MAP_COUNTERS`].
pub const COUNTER_SLOTS: u32 = 3 * REASONS;

/// The [`MAP_COUNTERS`] slot of an (action, reason) pair.
#[must_use]
pub const fn counter_index(action: Action, reason: Reason) -> u32 {
    action as u32 * REASONS + reason as u32
}

#[cfg(feature = "user")]
mod pod {
    use super::{CounterValue, DenyEntry, PortBitmap, SynBucket, XdpConfig};

    // SAFETY: #[repr(C)], two u32 then two u64 fields, no padding; every bit pattern is valid.
    unsafe impl aya::Pod for XdpConfig {}
    // SAFETY: #[repr(C)], one u64 field, no padding; every bit pattern is a valid value.
    unsafe impl aya::Pod for SynBucket {}
    // SAFETY: #[repr(C)], a [u64; 1024] array, no padding; every bit pattern is a valid value.
    unsafe impl aya::Pod for PortBitmap {}
    // SAFETY: #[repr(C)], one u64 field, no padding; every bit pattern is a valid value.
    unsafe impl aya::Pod for DenyEntry {}
    // SAFETY: #[repr(C)], two u64 fields, no padding; every bit pattern is a valid value.
    unsafe impl aya::Pod for CounterValue {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<XdpConfig>(), 24);
        assert_eq!(align_of::<XdpConfig>(), 8);
        assert_eq!(offset_of!(XdpConfig, mode), 0);
        assert_eq!(offset_of!(XdpConfig, ipv6_deny_prefix), 4);
        assert_eq!(offset_of!(XdpConfig, syn_interval_ns), 8);
        assert_eq!(offset_of!(XdpConfig, syn_window_ns), 16);
        assert_eq!(size_of::<SynBucket>(), 8);

        assert_eq!(size_of::<PortBitmap>(), 8192);
        assert_eq!(align_of::<PortBitmap>(), 8);

        assert_eq!(size_of::<DenyEntry>(), 8);
        assert_eq!(align_of::<DenyEntry>(), 8);
        assert_eq!(offset_of!(DenyEntry, expires_at_ns), 0);

        assert_eq!(size_of::<CounterValue>(), 16);
        assert_eq!(align_of::<CounterValue>(), 8);
        assert_eq!(offset_of!(CounterValue, packets), 0);
        assert_eq!(offset_of!(CounterValue, bytes), 8);
    }

    #[test]
    fn ipv6_masks_keep_exactly_the_prefix() {
        let a: [u8; 16] = [
            0xfd, 0x00, 0x00, 0xef, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22,
            0x33, 0x44,
        ];
        assert_eq!(mask_v6(a, 128), a);
        assert_eq!(mask_v6(a, 0), a, "0 (unset) means the whole address");
        assert_eq!(mask_v6(a, 200), a);
        let m64 = mask_v6(a, 64);
        assert_eq!(m64[..8], a[..8]);
        assert_eq!(m64[8..], [0; 8]);
        let m48 = mask_v6(a, 48);
        assert_eq!(m48[..6], a[..6]);
        assert_eq!(m48[6..], [0; 10]);
        let m1 = mask_v6(a, 1);
        assert_eq!(m1[0], 0x80);
        assert_eq!(m1[1..], [0; 15]);
        let m68 = mask_v6(a, 68);
        assert_eq!(m68[..8], a[..8]);
        assert_eq!(m68[8], 0x90);
        assert_eq!(m68[9..], [0; 7]);
        assert_eq!(mask_v6(a, 127)[15], 0x44);
        assert_eq!(mask_v6(a, 120)[15], 0);
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        // BPF object names are 16 bytes including the trailing NUL.
        for name in ALL_MAPS
            .iter()
            .chain(&TRACE_MAPS)
            .chain(&[PROG_FILTER, PROG_PASS_ALL])
        {
            assert!(name.len() <= 15, "{name} is too long for a BPF object name");
        }
    }

    #[test]
    fn counter_indices_are_dense_and_unique() {
        let mut seen = [false; COUNTER_SLOTS as usize];
        for a in Action::ALL {
            for r in Reason::ALL {
                let i = counter_index(a, r) as usize;
                assert!(!seen[i], "slot {i} used twice");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(
            counter_index(Action::WouldDrop, Reason::SynRate),
            COUNTER_SLOTS - 1
        );
    }

    #[test]
    fn a_syn_burst_passes_then_the_rate_holds() {
        let (interval, burst) = (1_000_000_000 / 10, 3);
        let window = interval * burst;
        let now = 5_000_000_000;
        let mut tat = 0;
        for _ in 0..burst {
            tat = syn_take(tat, now, interval, window).expect("within the burst");
        }
        assert_eq!(syn_take(tat, now, interval, window), None, "burst spent");
        assert!(
            syn_take(tat, now + interval, interval, window).is_some(),
            "one back"
        );
        assert_eq!(syn_take(tat, now + interval / 2, interval, window), None);
    }

    #[test]
    fn port_bitmap_sets_exactly_one_bit() {
        let mut b = PortBitmap::EMPTY;
        for p in [0u16, 22, 63, 64, 8080, 65535] {
            assert!(!b.contains(p));
            b.insert(p);
            assert!(b.contains(p));
        }
        assert!(!b.contains(21) && !b.contains(23) && !b.contains(65534));
        let bits: u32 = b.words.iter().map(|w| w.count_ones()).sum();
        assert_eq!(bits, 6);
    }

    #[test]
    fn labels_match_the_metrics_contract() {
        let reasons: [&str; 6] = Reason::ALL.map(Reason::label);
        assert_eq!(
            reasons,
            [
                "allowlisted",
                "not_allowlisted",
                "denylisted",
                "unprotected",
                "not_ip",
                "syn_rate"
            ]
        );
        assert_eq!(
            Action::ALL.map(Action::label),
            ["pass", "drop", "would_drop"]
        );
    }
}
