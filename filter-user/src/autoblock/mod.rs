//! Auto-block's shard half: per-shard failure counting, reports to the control plane, and the
//! ban snapshot the shards check at accept when XDP is off.
//!
//! Each shard owns a [`ShardFailures`]: a small table of source → (window start, count) that only
//! its thread touches. A key denial (the 401 codes and `MALFORMED_KEY`, never 403/429) from a
//! source that is not exempt bumps its count; every [`Autoblock::step`] failures, and when the
//! shard's own count reaches `autoblock.failures`, the shard pushes the new failures as a
//! [`Report`] onto one lock-free queue (`crossbeam_queue::ArrayQueue`). The ban decision is
//! host-wide: the control plane drains the queue, sums the shards' reports per source within
//! the window ([`HostTally`]) and bans a source once the sum reaches `autoblock.failures`.
//!
//! IPv6 sources are counted, and banned, by their `autoblock.ipv6_prefix` network. Sources in
//! `autoblock.exempt`, and the trusted proxies (`keys.trusted_proxies`: banning one would cut
//! off every client behind it), are never counted.
//!
//! The control plane publishes the bans in force as a [`BanSnapshot`] (`arc_swap`): a shard
//! reads it without a lock, and only when the daemon runs without XDP (the kernel drops banned
//! sources otherwise), at accept and again before each further request of a kept-alive
//! connection.
//!
//! The settings are swapped whole on a config reload ([`Autoblock::reconfigure`]): a shard
//! reads them (lock-free, `arc_swap`) at each key denial it counts.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use ipnet::IpNet;

use crate::config::Config;

mod shard;
mod snapshot;
mod tally;

pub use shard::{ShardFailures, counts};
pub use snapshot::BanSnapshot;
pub use tally::HostTally;

/// Reports the queue holds before new ones are dropped (and counted in
/// [`Autoblock::dropped_reports`]); the control plane drains it every few milliseconds.
pub const QUEUE_CAPACITY: usize = 16_384;

/// New failures of one source seen by one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The source ([`crate::store::bans::source_of`]).
    pub source: IpNet,
    /// Failures since the shard's previous report of it.
    pub failures: u32,
    /// When the shard's window for this source began.
    pub since: Instant,
}

/// What auto-block counts with, from `[autoblock]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `autoblock.enabled`: count at all.
    pub enabled: bool,
    /// `autoblock.failures`.
    pub failures: u32,
    /// `autoblock.window`.
    pub window: Duration,
    /// `autoblock.ban`.
    pub ban: Duration,
    /// `autoblock.ipv6_prefix`.
    pub ipv6_prefix: u8,
    /// `autoblock.exempt` plus `keys.trusted_proxies`.
    pub exempt: Vec<IpNet>,
}

impl Settings {
    /// From the config.
    #[must_use]
    pub fn from_config(cfg: &Config) -> Self {
        let a = &cfg.autoblock;
        let mut exempt = a.exempt.clone();
        exempt.extend(cfg.keys.trusted_proxies.iter().copied());
        Self {
            enabled: a.enabled,
            failures: a.failures.max(1),
            window: a.window,
            ban: a.ban,
            ipv6_prefix: a.ipv6_prefix,
            exempt,
        }
    }

    /// Whether `ip` is never counted.
    #[must_use]
    pub fn exempts_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.exempt.iter().any(|n| n.contains(&ip))
    }

    /// Whether a ban of `source` would cover an exempt address (it is never banned then).
    #[must_use]
    pub fn exempts_source(&self, source: &IpNet) -> bool {
        self.exempt
            .iter()
            .any(|n| n.contains(&source.network()) || source.contains(&n.network()))
    }
}

/// The hub shared by the shards and the control plane: settings, the report queue, and the
/// ban snapshot.
pub struct Autoblock {
    settings: ArcSwap<Settings>,
    /// How many shards report (fixed for the daemon's life).
    shards: usize,
    /// A shard reports every `step` failures of a source (and when its count reaches the
    /// threshold): a fraction of the threshold per shard, so the reports of a source spread over
    /// every shard add up to within `shards × (step − 1)` of its failures.
    step: AtomicU32,
    reports: ArrayQueue<Report>,
    dropped: AtomicU64,
    bans: ArcSwap<BanSnapshot>,
    refuse_at_accept: AtomicBool,
}

impl std::fmt::Debug for Autoblock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoblock")
            .field("settings", &self.settings.load())
            .field("step", &self.step())
            .field("queued", &self.reports.len())
            .finish_non_exhaustive()
    }
}

impl Autoblock {
    /// The hub for `shards` shards under `cfg`'s `[autoblock]`; nothing refused at accept yet.
    #[must_use]
    pub fn new(cfg: &Config, shards: usize) -> Arc<Self> {
        Self::with_settings(Settings::from_config(cfg), shards)
    }

    /// The hub for explicit settings.
    #[must_use]
    pub fn with_settings(settings: Settings, shards: usize) -> Arc<Self> {
        Arc::new(Self {
            step: AtomicU32::new(step_for(settings.failures, shards)),
            shards,
            reports: ArrayQueue::new(QUEUE_CAPACITY),
            dropped: AtomicU64::new(0),
            bans: ArcSwap::from_pointee(BanSnapshot::empty(settings.ipv6_prefix)),
            refuse_at_accept: AtomicBool::new(false),
            settings: ArcSwap::from_pointee(settings),
        })
    }

    /// The settings in force.
    #[must_use]
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Puts `settings` in force (a config reload): the shards count with them from their next
    /// key denial, the control plane's ticker decides with them from its next round. Counts
    /// already made are kept.
    pub fn reconfigure(&self, settings: Settings) {
        self.step
            .store(step_for(settings.failures, self.shards), Ordering::Relaxed);
        self.settings.store(Arc::new(settings));
    }

    /// How many failures a shard gathers per report.
    #[must_use]
    pub fn step(&self) -> u32 {
        self.step.load(Ordering::Relaxed)
    }

    /// A shard's own counter (call once per shard, on its thread or before).
    #[must_use]
    pub fn shard(self: &Arc<Self>) -> ShardFailures {
        ShardFailures::new(Arc::clone(self))
    }

    /// Whether shards refuse banned sources at accept (the daemon turns it on when XDP is off).
    pub fn refuse_at_accept(&self, on: bool) {
        self.refuse_at_accept.store(on, Ordering::Release);
    }

    /// Publishes the bans in force (the shards see it on their next accept).
    pub fn publish(&self, snapshot: BanSnapshot) {
        self.bans.store(Arc::new(snapshot));
    }

    /// The bans in force as last published.
    #[must_use]
    pub fn bans(&self) -> Arc<BanSnapshot> {
        self.bans.load_full()
    }

    /// Takes every queued report.
    pub fn drain(&self, mut each: impl FnMut(Report)) {
        while let Some(r) = self.reports.pop() {
            each(r);
        }
    }

    /// Reports dropped because the queue was full.
    #[must_use]
    pub fn dropped_reports(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn report(&self, r: Report) {
        if self.reports.push(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn refusing(&self) -> bool {
        self.refuse_at_accept.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> arc_swap::Guard<Arc<BanSnapshot>> {
        self.bans.load()
    }

    fn current(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }
}

/// A fraction of `failures` for each of `shards` shards (see [`Autoblock::step`]).
fn step_for(failures: u32, shards: usize) -> u32 {
    let per_shard = u32::try_from(shards.max(1).saturating_mul(4)).unwrap_or(u32::MAX);
    failures.max(1).div_ceil(per_shard).max(1)
}
