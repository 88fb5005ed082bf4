//! Recent denials kept per shard, for `edgefilter stats`' top denied key ids and sources.
//!
//! Each shard owns one [`ShardDenials`]: a fixed ring of [`SLOTS`] records (when, the source
//! address, the answer code and the public key id when known, in a fixed-size inline buffer),
//! allocated once at start. The shard is the ring's only writer and records a refusal with
//! plain atomic stores (no locked instruction, no allocation, no lock); each slot carries a
//! sequence number that is odd while the slot is being written (a seqlock), so a reader on
//! another thread skips a record it caught half-written instead of seeing a torn one.
//! [`RecentDenials`] holds every shard's ring and ranks the records of the last minute when the
//! control plane asks ([`RecentDenials::top`]).
//!
//! Under a flood a ring keeps only its shard's newest [`SLOTS`] refusals; the ranking then says
//! it is incomplete ([`TopDenials::complete`]). Only a public key id (`key_` + 12 base62) is
//! ever kept: anything else offered as a key id is dropped, so a full key cannot end up here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::codes::ErrorCode;
use crate::config::Config;

/// Records per shard: the newest refusals a shard remembers.
pub const SLOTS: usize = 1024;

/// The longest key id kept: `key_` + 12 base62.
pub const KEY_ID_LEN: usize = 16;

/// The prefix of every public key id.
const KEY_ID_PREFIX: &str = "key_";

/// `meta` bits: the code's index in [`ErrorCode::ALL`] (low byte), the key id's length (next
/// byte), whether the source is IPv6 (next bit).
const META_LEN_SHIFT: u32 = 8;
const META_V6: u64 = 1 << 16;

/// One record. Every field is an atomic so a reader racing the writer reads stale or new
/// values, never undefined ones; `seq` tells it whether they belong together.
#[derive(Debug, Default)]
struct Slot {
    /// Even: the record is whole (0: never written); odd: being written.
    seq: AtomicU64,
    at_ms: AtomicU64,
    /// The source as an IPv6 address (an IPv4 one in the low 32 bits), high and low halves.
    addr: [AtomicU64; 2],
    /// The key id's bytes, little-endian, zero-padded.
    key: [AtomicU64; 2],
    meta: AtomicU64,
}

/// One shard's recent refusals; only that shard writes them.
#[derive(Debug)]
pub struct ShardDenials {
    slots: Box<[Slot]>,
    /// Records written so far (the next slot is `next % SLOTS`); one writer.
    next: AtomicUsize,
}

impl Default for ShardDenials {
    fn default() -> Self {
        Self::new()
    }
}

/// A record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The answer code.
    pub code: ErrorCode,
    /// The public key id, when the key was known.
    pub key_id: Option<String>,
    /// The client address.
    pub source: IpAddr,
}

/// Milliseconds since the Unix epoch, now.
#[must_use]
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `id` packed into the inline buffer, if it is a public key id; else `None` (and nothing of it
/// is kept).
fn pack_key_id(id: &str) -> Option<([u64; 2], usize)> {
    let b = id.as_bytes();
    let plausible = b.len() <= KEY_ID_LEN
        && b.len() > KEY_ID_PREFIX.len()
        && id.starts_with(KEY_ID_PREFIX)
        && b[KEY_ID_PREFIX.len()..]
            .iter()
            .all(u8::is_ascii_alphanumeric);
    if !plausible {
        return None;
    }
    let mut buf = [0u8; KEY_ID_LEN];
    buf[..b.len()].copy_from_slice(b);
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&buf[..8]);
    hi.copy_from_slice(&buf[8..]);
    Some(([u64::from_le_bytes(lo), u64::from_le_bytes(hi)], b.len()))
}

fn unpack_key_id(words: [u64; 2], len: usize) -> Option<String> {
    if len == 0 || len > KEY_ID_LEN {
        return None;
    }
    let mut buf = [0u8; KEY_ID_LEN];
    buf[..8].copy_from_slice(&words[0].to_le_bytes());
    buf[8..].copy_from_slice(&words[1].to_le_bytes());
    std::str::from_utf8(&buf[..len]).ok().map(str::to_owned)
}

fn pack_addr(ip: IpAddr) -> ([u64; 2], bool) {
    let (bits, v6) = match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => (u128::from(a), true),
    };
    // The halves of a u128: the casts keep exactly the bits wanted.
    #[allow(clippy::cast_possible_truncation)]
    let halves = [(bits >> 64) as u64, bits as u64];
    (halves, v6)
}

fn unpack_addr(halves: [u64; 2], v6: bool) -> IpAddr {
    let bits = (u128::from(halves[0]) << 64) | u128::from(halves[1]);
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(bits).unwrap_or(0)))
    }
}

impl ShardDenials {
    /// An empty ring of [`SLOTS`] records.
    #[must_use]
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// One refusal answered now: its code, the key id when known, the client address. A key id
    /// that is not a public one (`key_…`) is left out.
    #[inline]
    pub fn record(&self, code: ErrorCode, key_id: Option<&str>, source: IpAddr) {
        self.record_at(unix_ms(), code, key_id, source);
    }

    /// [`Self::record`] at `at_ms` (milliseconds since the Unix epoch).
    pub fn record_at(&self, at_ms: u64, code: ErrorCode, key_id: Option<&str>, source: IpAddr) {
        // One writer (the owning shard): a load and a store cannot lose an update.
        let n = self.next.load(Ordering::Relaxed);
        self.next.store(n.wrapping_add(1), Ordering::Relaxed);
        let slot = &self.slots[n % SLOTS];
        let (key, key_len) = key_id.and_then(pack_key_id).unwrap_or(([0, 0], 0));
        let (addr, v6) = pack_addr(source);
        let meta =
            (code as u64) | ((key_len as u64) << META_LEN_SHIFT) | if v6 { META_V6 } else { 0 };
        let seq = slot.seq.load(Ordering::Relaxed);
        // Odd while writing; the fence keeps the field stores after it (a reader that sees
        // any of them sees the odd sequence on its second look).
        slot.seq.store(seq | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        slot.at_ms.store(at_ms, Ordering::Relaxed);
        slot.addr[0].store(addr[0], Ordering::Relaxed);
        slot.addr[1].store(addr[1], Ordering::Relaxed);
        slot.key[0].store(key[0], Ordering::Relaxed);
        slot.key[1].store(key[1], Ordering::Relaxed);
        slot.meta.store(meta, Ordering::Relaxed);
        slot.seq.store((seq | 1).wrapping_add(1), Ordering::Release);
    }

    /// Refusals recorded since the start (also those the ring no longer holds).
    #[must_use]
    pub fn recorded(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// Every whole record the ring holds, in no particular order; one being written is
    /// skipped.
    pub fn read(&self, mut each: impl FnMut(Denied)) {
        for slot in &*self.slots {
            let before = slot.seq.load(Ordering::Acquire);
            if before == 0 || before & 1 == 1 {
                continue;
            }
            let at_ms = slot.at_ms.load(Ordering::Relaxed);
            let addr = [
                slot.addr[0].load(Ordering::Relaxed),
                slot.addr[1].load(Ordering::Relaxed),
            ];
            let key = [
                slot.key[0].load(Ordering::Relaxed),
                slot.key[1].load(Ordering::Relaxed),
            ];
            let meta = slot.meta.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            let code_index = usize::try_from(meta & 0xff).unwrap_or(usize::MAX);
            let Some(&code) = ErrorCode::ALL.get(code_index) else {
                continue;
            };
            let key_len = usize::try_from((meta >> META_LEN_SHIFT) & 0xff).unwrap_or(0);
            each(Denied {
                at_ms,
                code,
                key_id: unpack_key_id(key, key_len),
                source: unpack_addr(addr, meta & META_V6 != 0),
            });
        }
    }
}

/// Every shard's ring, for the control plane.
#[derive(Debug)]
pub struct RecentDenials {
    shards: Vec<Arc<ShardDenials>>,
}

/// One ranked key id or source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    /// The key id, or the source address as text.
    pub name: String,
    /// Refusals in the window.
    pub count: u64,
    /// Those refusals by code, most frequent first.
    pub codes: Vec<(ErrorCode, u64)>,
}

/// The ranking over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopDenials {
    /// Refusals counted in the window.
    pub counted: u64,
    /// False when a shard's ring was overwritten within the window: the counts are then over
    /// each shard's newest [`SLOTS`] refusals only.
    pub complete: bool,
    /// Key ids by refusals, most first.
    pub keys: Vec<Ranked>,
    /// Sources by refusals, most first.
    pub sources: Vec<Ranked>,
}

/// Per name: the count and the count per code.
#[derive(Default)]
struct Tally(HashMap<String, (u64, HashMap<ErrorCode, u64>)>);

impl Tally {
    fn add(&mut self, name: String, code: ErrorCode) {
        let e = self.0.entry(name).or_default();
        e.0 += 1;
        *e.1.entry(code).or_default() += 1;
    }

    /// The `n` names with the most refusals (ties by name), each with its codes.
    fn top(self, n: usize) -> Vec<Ranked> {
        let mut all: Vec<Ranked> = self
            .0
            .into_iter()
            .map(|(name, (count, codes))| {
                let mut codes: Vec<(ErrorCode, u64)> = codes.into_iter().collect();
                codes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_str().cmp(b.0.as_str())));
                Ranked { name, count, codes }
            })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        all.truncate(n);
        all
    }
}

impl RecentDenials {
    /// Rings for `shards` shards.
    #[must_use]
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..shards).map(|_| Arc::new(ShardDenials::new())).collect(),
        })
    }

    /// Rings for the config's shards.
    #[must_use]
    pub fn for_config(cfg: &Config) -> Arc<Self> {
        Self::new(cfg.shard_count().max(1))
    }

    /// Shard `n`'s ring (a fresh, unread one for a shard beyond the count).
    #[must_use]
    pub fn shard(&self, n: usize) -> Arc<ShardDenials> {
        self.shards
            .get(n)
            .cloned()
            .unwrap_or_else(|| Arc::new(ShardDenials::new()))
    }

    /// The `n` key ids and the `n` sources refused most in the `window` before `now_ms`.
    #[must_use]
    pub fn top(&self, now_ms: u64, window: Duration, n: usize) -> TopDenials {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let since = now_ms.saturating_sub(window_ms);
        let (mut keys, mut sources) = (Tally::default(), Tally::default());
        let mut counted = 0;
        let mut complete = true;
        for shard in &self.shards {
            let wrapped = shard.recorded() > SLOTS;
            let mut oldest = u64::MAX;
            shard.read(|d| {
                oldest = oldest.min(d.at_ms);
                if d.at_ms < since {
                    return;
                }
                counted += 1;
                if let Some(id) = d.key_id {
                    keys.add(id, d.code);
                }
                sources.add(d.source.to_string(), d.code);
            });
            if wrapped && oldest >= since {
                complete = false;
            }
        }
        TopDenials {
            counted,
            complete,
            keys: keys.top(n),
            sources: sources.top(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));

    #[test]
    fn records_read_back_whole_with_v4_and_v6_sources() {
        let s = ShardDenials::new();
        let v6: IpAddr = "2001:db8::1:2".parse().unwrap();
        s.record_at(5, ErrorCode::KeyRevoked, Some("key_AbCdEf012345"), V4);
        s.record_at(6, ErrorCode::MalformedKey, None, v6);
        let mut got = Vec::new();
        s.read(|d| got.push(d));
        got.sort_by_key(|d| d.at_ms);
        assert_eq!(
            got,
            vec![
                Denied {
                    at_ms: 5,
                    code: ErrorCode::KeyRevoked,
                    key_id: Some("key_AbCdEf012345".into()),
                    source: V4
                },
                Denied {
                    at_ms: 6,
                    code: ErrorCode::MalformedKey,
                    key_id: None,
                    source: v6
                },
            ]
        );
    }

    #[test]
    fn nothing_but_a_public_key_id_is_kept() {
        let s = ShardDenials::new();
        for not_an_id in [
            "ef_live_0123456789abcdefghijABCDEFGHIJ012345",
            "key_0123456789abcdef",
            "key_",
            "key_a b",
            "secret",
        ] {
            s.record_at(1, ErrorCode::UnknownKey, Some(not_an_id), V4);
        }
        let mut ids = Vec::new();
        s.read(|d| ids.push(d.key_id));
        assert_eq!(ids.len(), 5);
        assert!(ids.iter().all(Option::is_none), "{ids:?}");
    }

    #[test]
    fn top_ranks_the_window_by_key_and_source() {
        let d = RecentDenials::new(2);
        let (a, b) = (d.shard(0), d.shard(1));
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            a.record_at(100_000, ErrorCode::KeyRevoked, Some("key_aaaaaaaaaaaa"), V4);
        }
        b.record_at(
            100_500,
            ErrorCode::ScopeMissing,
            Some("key_aaaaaaaaaaaa"),
            other,
        );
        b.record_at(101_000, ErrorCode::MalformedKey, None, other);
        b.record_at(101_000, ErrorCode::MalformedKey, None, other);
        // Older than the window.
        a.record_at(1_000, ErrorCode::KeyRevoked, Some("key_bbbbbbbbbbbb"), V4);
        let top = d.top(101_000, Duration::from_secs(60), 10);
        assert_eq!(top.counted, 6);
        assert!(top.complete);
        assert_eq!(top.keys.len(), 1, "{top:?}");
        assert_eq!(top.keys[0].name, "key_aaaaaaaaaaaa");
        assert_eq!(top.keys[0].count, 4);
        assert_eq!(
            top.keys[0].codes,
            vec![(ErrorCode::KeyRevoked, 3), (ErrorCode::ScopeMissing, 1)]
        );
        let names: Vec<(&str, u64)> = top
            .sources
            .iter()
            .map(|r| (r.name.as_str(), r.count))
            .collect();
        assert_eq!(names, vec![("192.0.2.1", 3), ("198.18.0.7", 3)]);
        assert_eq!(d.top(101_000, Duration::from_secs(60), 1).sources.len(), 1);
    }

    #[test]
    fn a_ring_overwritten_within_the_window_says_so() {
        let d = RecentDenials::new(1);
        let s = d.shard(0);
        for i in 0..SLOTS as u64 + 10 {
            s.record_at(50_000 + i, ErrorCode::UnknownKey, None, V4);
        }
        let top = d.top(60_000, Duration::from_secs(60), 10);
        assert_eq!(top.counted, SLOTS as u64);
        assert!(!top.complete);
        // Once the window is past the oldest record kept, it is complete again.
        let later = d.top(50_000 + 60_000 + 20, Duration::from_secs(60), 10);
        assert!(later.complete, "{later:?}");
    }

    #[test]
    fn a_reader_racing_the_writer_never_sees_a_torn_record() {
        let d = RecentDenials::new(1);
        let s = d.shard(0);
        let writer = std::thread::spawn(move || {
            for i in 0..200_000u32 {
                // Every field derives from `i`, so a mix of two records shows.
                let ip = IpAddr::V4(Ipv4Addr::from(i));
                let id = format!("key_{i:012}");
                let code = ErrorCode::ALL[i as usize % ErrorCode::ALL.len()];
                s.record_at(u64::from(i), code, Some(&id), ip);
            }
        });
        let reader = d.shard(0);
        let mut seen = 0u64;
        while !writer.is_finished() {
            reader.read(|r| {
                let i = u32::try_from(r.at_ms).unwrap();
                assert_eq!(r.source, IpAddr::V4(Ipv4Addr::from(i)));
                assert_eq!(r.key_id, Some(format!("key_{i:012}")));
                assert_eq!(r.code, ErrorCode::ALL[i as usize % ErrorCode::ALL.len()]);
                seen += 1;
            });
        }
        writer.join().unwrap();
        assert!(seen > 0);
    }
}
