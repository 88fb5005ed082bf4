//! The program's maps; names, layouts and sizes come from `filter_common::xdp`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray},
};
use filter_common::trace::TraceConfig;
use filter_common::xdp::{
    ALLOW_MAX_ENTRIES, COUNTER_SLOTS, CounterValue, DENY_MAX_ENTRIES, DenyEntry, PortBitmap,
    SYN_MAX_ENTRIES, SynBucket, XdpConfig,
};

/// Enforce or monitor (one entry).
#[map(name = "EF_CONFIG")]
pub static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

/// Protected destination ports (one entry).
#[map(name = "EF_PORTS")]
pub static PORTS: Array<PortBitmap> = Array::with_max_entries(1, 0);

/// IPv4 allowlist (longest-prefix match).
#[map(name = "EF_ALLOW_V4")]
pub static ALLOW_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(ALLOW_MAX_ENTRIES, 0);

/// IPv6 allowlist (longest-prefix match).
#[map(name = "EF_ALLOW_V6")]
pub static ALLOW_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(ALLOW_MAX_ENTRIES, 0);

/// IPv4 denylist with per-entry expiry.
#[map(name = "EF_DENY_V4")]
pub static DENY_V4: LruHashMap<[u8; 4], DenyEntry> =
    LruHashMap::with_max_entries(DENY_MAX_ENTRIES, 0);

/// IPv6 denylist with per-entry expiry.
#[map(name = "EF_DENY_V6")]
pub static DENY_V6: LruHashMap<[u8; 16], DenyEntry> =
    LruHashMap::with_max_entries(DENY_MAX_ENTRIES, 0);

/// Each IPv4 source's SYN allowance (`xdp.syn_rate`).
#[map(name = "EF_SYN_V4")]
pub static SYN_V4: LruHashMap<[u8; 4], SynBucket> =
    LruHashMap::with_max_entries(SYN_MAX_ENTRIES, 0);

/// Each IPv6 /64's SYN allowance (keyed by the source's first 8 bytes).
#[map(name = "EF_SYN_V6")]
pub static SYN_V6: LruHashMap<[u8; 8], SynBucket> =
    LruHashMap::with_max_entries(SYN_MAX_ENTRIES, 0);

/// Per-CPU packet/byte counters per (action, reason).
#[map(name = "EF_COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterValue> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// `edgefilter xdp trace`'s switch (one entry; off = `expires_at_ns == 0`). The events go to
/// aya-log's own ring buffer, `AYA_LOGS`.
#[map(name = "EF_TRACE")]
pub static TRACE: Array<TraceConfig> = Array::with_max_entries(1, 0);
