//! The control plane's denylist: the bans this host enforces, kept in step with the store and
//! put where they take effect — the pinned XDP maps (expiry enforced by the kernel) and the
//! snapshot the shards check at accept when XDP is off.
//!
//! Every ban goes through the store first ([`KeyStore::put_ban`], a change like any other), so a
//! ban made here reaches every host of a fleet, and a ban made anywhere (another host, the CLI
//! without the daemon) reaches this one through [`BanBook::sync`], which the store watcher runs
//! whenever the revision moves and, in full, every [`RECONCILE_EVERY`]. The caller holds the
//! control plane's writer lock around every method.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::admin::{ApiError, BanJson};
use crate::autoblock::{Autoblock, BanSnapshot, Settings};
use crate::config::Config;
use crate::store::audit::this_host;
use crate::store::bans::{PURGE_AFTER_MS, ban_source, source_of, source_text, unix_now_ms};
use crate::store::{Ban, BanReason, KeyStore, StoreError};
use crate::xdp::{PinDir, XdpMaps, monotonic_ns, open_pinned};

/// How often the whole denylist is read again from the store (and the XDP maps made to match
/// it), whatever the revision says.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// How often expired bans are swept from the XDP maps and purged from the store.
pub const PURGE_EVERY: Duration = Duration::from_secs(30);

/// The bans this host enforces.
#[derive(Debug)]
pub struct BanBook {
    settings: Settings,
    /// The highest ban revision read from the store.
    cursor: u64,
    /// The store revision the bans were last read at (a ban is a change, so nothing new
    /// can have come while the revision stands still).
    read_at_revision: u64,
    active: HashMap<IpNet, Ban>,
    hub: Option<Arc<Autoblock>>,
    /// Where the XDP filter is pinned (its maps are written when they are there).
    pins: PinDir,
    last_full: Option<Instant>,
    last_purge: Instant,
}

impl BanBook {
    /// An empty book under `cfg`'s `[autoblock]`, writing the maps pinned where
    /// [`PinDir::from_env`] says.
    #[must_use]
    pub fn new(cfg: &Config) -> Self {
        Self::with_pins(cfg, PinDir::from_env())
    }

    /// An empty book writing the maps pinned in `pins`.
    #[must_use]
    pub fn with_pins(cfg: &Config, pins: PinDir) -> Self {
        Self {
            pins,
            settings: Settings::from_config(cfg),
            cursor: 0,
            read_at_revision: 0,
            active: HashMap::new(),
            hub: None,
            last_full: None,
            last_purge: Instant::now(),
        }
    }

    /// From now on the bans are also published to `hub`'s snapshot (the shards' accept check).
    pub fn attach(&mut self, hub: Arc<Autoblock>) {
        self.hub = Some(hub);
        self.publish();
    }

    /// Puts a reloaded `[autoblock]` in force: the hub's counting and deciding, this book's
    /// default ban, exemptions and IPv6 prefix. A new prefix re-keys the XDP denylist and the
    /// shards' snapshot (bans in force keep their source; the kernel matches them by the new
    /// prefix, as after a restart). Bans in force stay, exempt or not: `deny remove` lifts one.
    pub fn reconfigure(&mut self, settings: Settings) {
        let prefix = settings.ipv6_prefix;
        let rekey = prefix != self.settings.ipv6_prefix;
        if let Some(hub) = &self.hub {
            hub.reconfigure(settings.clone());
        }
        self.settings = settings;
        if rekey && let Some(mut maps) = pinned_maps(&self.pins) {
            let now = unix_now_ms();
            let wanted: Vec<_> = self
                .active
                .values()
                .map(|b| (b.source.network(), kernel_expiry(b, now)))
                .collect();
            match maps.rekey_ipv6_denylist(prefix, &wanted) {
                Ok(_) => tracing::info!(
                    ipv6_prefix = prefix,
                    "the XDP denylist now bans IPv6 sources by this prefix"
                ),
                Err(e) => tracing::warn!(error = %e, "could not re-key the XDP denylist"),
            }
        }
        self.publish();
    }

    /// `autoblock.ban`: a manual ban's default duration.
    #[must_use]
    pub fn default_ban(&self) -> Duration {
        self.settings.ban
    }

    /// How many bans hold now (`edgefilter_autoblocked_sources`).
    #[must_use]
    pub fn count(&self) -> usize {
        let now = unix_now_ms();
        self.active.values().filter(|b| b.holds_at(now)).count()
    }

    /// Whether `source` is banned now.
    #[must_use]
    pub fn holds(&self, source: &IpNet) -> bool {
        self.active
            .get(source)
            .is_some_and(|b| b.holds_at(unix_now_ms()))
    }

    /// The bans in force, by source.
    #[must_use]
    pub fn list(&self) -> Vec<BanJson> {
        let now = unix_now_ms();
        let mut bans: Vec<&Ban> = self.active.values().filter(|b| b.holds_at(now)).collect();
        bans.sort_by_key(|b| b.source);
        bans.iter().map(|b| BanJson::from_ban(b, now)).collect()
    }

    /// The ban source `text` names (an address, or an IPv6 prefix widened to
    /// `autoblock.ipv6_prefix`).
    ///
    /// # Errors
    /// 400 when `text` is not an address or prefix, or not one that can be banned.
    pub fn source(&self, text: &str) -> Result<IpNet, ApiError> {
        let net = crate::config::parse_cidr(text).map_err(ApiError::bad_request)?;
        ban_source(net, self.settings.ipv6_prefix).map_err(|e| ApiError::bad_request(e.to_string()))
    }

    /// Bans `source` for `ttl`: in the store (every host follows), then here.
    ///
    /// # Errors
    /// 409 for an exempt source; a store failure (nothing banned).
    pub fn ban(
        &mut self,
        store: &mut dyn KeyStore,
        source: IpNet,
        reason: BanReason,
        ttl: Duration,
    ) -> Result<Ban, ApiError> {
        if self.settings.exempts_source(&source) {
            return Err(ApiError::conflict(format!(
                "{} is exempt (autoblock.exempt or keys.trusted_proxies) and is never banned.",
                source_text(&source)
            )));
        }
        let now = unix_now_ms();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let ban = Ban {
            source,
            reason,
            host: this_host().to_owned(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        store.put_ban(&ban).map_err(store_error)?;
        self.enforce(&[(source, Some(ban.clone()))]);
        Ok(ban)
    }

    /// Lifts the ban of `source`: in the store (every host follows), then here.
    ///
    /// # Errors
    /// 404 when no ban of it holds; a store failure.
    pub fn lift(&mut self, store: &mut dyn KeyStore, source: IpNet) -> Result<(), ApiError> {
        let text = source_text(&source);
        match store.lift_ban(&text, unix_now_ms()).map_err(store_error)? {
            Some(_) => {
                self.enforce(&[(source, None)]);
                Ok(())
            }
            None => Err(ApiError::not_found(format!("{text} is not banned."))
                .with_hint("See `edgefilter deny list`.")),
        }
    }

    /// Whether a full reconcile with the store is due (at start, then every [`RECONCILE_EVERY`]).
    #[must_use]
    pub fn reconcile_due(&self) -> bool {
        self.last_full
            .is_none_or(|t| t.elapsed() >= RECONCILE_EVERY)
    }

    /// [`Self::sync`] when the store has moved past `revision` since the bans were last read
    /// (however it got there: the watcher, or a key change of this host that read the log
    /// further) or a full reconcile is due.
    ///
    /// # Errors
    /// Store failures (read again at the next call).
    pub fn sync_at(&mut self, store: &dyn KeyStore, revision: u64) -> Result<(), StoreError> {
        if revision == self.read_at_revision && !self.reconcile_due() {
            return Ok(());
        }
        self.sync(store, false)?;
        self.read_at_revision = revision;
        Ok(())
    }

    /// Reads the bans written since the last read (all of them when a full reconcile is due or
    /// `full`) and enforces what changed.
    ///
    /// # Errors
    /// Store failures (this host keeps enforcing what it has).
    pub fn sync(&mut self, store: &dyn KeyStore, full: bool) -> Result<(), StoreError> {
        let full = full || self.reconcile_due();
        let rows = store.bans_since(if full { 0 } else { self.cursor })?;
        let now = unix_now_ms();
        if full {
            let wanted: HashMap<IpNet, Ban> = rows
                .iter()
                .filter(|r| !r.lifted && r.ban.holds_at(now))
                .map(|r| (r.ban.source, r.ban.clone()))
                .collect();
            self.cursor = rows.iter().map(|r| r.revision).max().unwrap_or(0);
            self.active = wanted;
            self.last_full = Some(Instant::now());
            self.reconcile_xdp();
            self.publish();
            return Ok(());
        }
        let mut changed = Vec::with_capacity(rows.len());
        for r in rows {
            self.cursor = self.cursor.max(r.revision);
            let source = r.ban.source;
            let keep = (!r.lifted && r.ban.holds_at(now)).then_some(r.ban);
            changed.push((source, keep));
        }
        if !changed.is_empty() {
            self.enforce(&changed);
        }
        Ok(())
    }

    /// Forgets expired bans (the kernel already ignores them) and, every [`PURGE_EVERY`],
    /// deletes them from the XDP maps and purges old ones from the store.
    pub fn expire(&mut self, store: &mut dyn KeyStore) {
        let now = unix_now_ms();
        let before = self.active.len();
        self.active.retain(|_, b| b.holds_at(now));
        if self.active.len() != before {
            self.publish();
        }
        if self.last_purge.elapsed() < PURGE_EVERY {
            return;
        }
        self.last_purge = Instant::now();
        if let Some(mut maps) = pinned_maps(&self.pins)
            && let Err(e) = maps.purge_expired()
        {
            tracing::warn!(error = %e, "could not sweep expired bans from the XDP maps");
        }
        if let Err(e) = store.purge_bans(now.saturating_sub(PURGE_AFTER_MS)) {
            tracing::debug!(error = %e, "could not purge old bans from the store");
        }
    }

    /// Records `changes` (a ban to put, or `None` to lift) and puts them into the XDP maps and
    /// the shards' snapshot.
    fn enforce(&mut self, changes: &[(IpNet, Option<Ban>)]) {
        for (source, ban) in changes {
            match ban {
                Some(b) => self.active.insert(*source, b.clone()),
                None => self.active.remove(source),
            };
        }
        if let Some(mut maps) = pinned_maps(&self.pins) {
            let now = unix_now_ms();
            for (source, ban) in changes {
                let done = match ban {
                    Some(b) => maps.deny_until(source.network(), kernel_expiry(b, now)),
                    None => maps.undeny(source.network()).map(|_| ()),
                };
                if let Err(e) = done {
                    tracing::warn!(
                        source = %source_text(source),
                        error = %e,
                        "could not write a ban into the XDP denylist; retried at the next reconcile"
                    );
                }
            }
        }
        self.publish();
    }

    /// Makes the pinned XDP denylist hold exactly the active bans.
    fn reconcile_xdp(&self) {
        let Some(mut maps) = pinned_maps(&self.pins) else {
            return;
        };
        let now = unix_now_ms();
        let wanted: Vec<_> = self
            .active
            .values()
            .map(|b| (b.source.network(), kernel_expiry(b, now)))
            .collect();
        match maps.sync_denylist(&wanted) {
            Ok(0) => {}
            Ok(stale) => tracing::info!(
                stale,
                "removed bans the store no longer has from the XDP denylist"
            ),
            Err(e) => tracing::warn!(error = %e, "could not reconcile the XDP denylist"),
        }
    }

    /// Publishes the active bans to the shards' snapshot.
    fn publish(&self) {
        let Some(hub) = &self.hub else {
            return;
        };
        let now = unix_now_ms();
        let base = Instant::now();
        let prefix = self.settings.ipv6_prefix;
        // Keyed as the kernel keys them: by the source's network under the prefix in force
        // (a ban made under another prefix matches as it does in the XDP map).
        let mut bans: HashMap<IpNet, Instant> = HashMap::new();
        for b in self.active.values().filter(|b| b.holds_at(now)) {
            let left = u64::try_from(b.expires_at_ms.saturating_sub(now)).unwrap_or(0);
            let until = base + Duration::from_millis(left);
            let key = source_of(b.source.network(), prefix);
            let e = bans.entry(key).or_insert(until);
            *e = (*e).max(until);
        }
        hub.publish(BanSnapshot::new(prefix, bans));
    }
}

/// The bans in force according to `store` (what a host enforces after its next sync), by
/// source; for the CLI when no daemon runs.
///
/// # Errors
/// Store failures.
pub fn list_from_store(store: &dyn KeyStore) -> Result<Vec<BanJson>, StoreError> {
    let now = unix_now_ms();
    let mut bans: Vec<Ban> = store
        .bans_since(0)?
        .into_iter()
        .filter(|r| !r.lifted && r.ban.holds_at(now))
        .map(|r| r.ban)
        .collect();
    bans.sort_by_key(|b| b.source);
    Ok(bans.iter().map(|b| BanJson::from_ban(b, now)).collect())
}

/// The pinned XDP maps, when a filter is pinned (XDP on, or left in place by an earlier run).
fn pinned_maps(pins: &PinDir) -> Option<XdpMaps> {
    if !pins.has_maps() {
        return None;
    }
    match open_pinned(pins) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "could not open the pinned XDP maps for the denylist");
            None
        }
    }
}

/// `ban`'s expiry on the kernel's clock (`CLOCK_MONOTONIC` nanoseconds), from `now_ms`.
fn kernel_expiry(ban: &Ban, now_ms: i64) -> u64 {
    let left_ms = u64::try_from(ban.expires_at_ms.saturating_sub(now_ms)).unwrap_or(0);
    monotonic_ns().saturating_add(left_ms.saturating_mul(1_000_000))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Postgres(_) => ApiError::store_unavailable(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use super::*;
    use crate::store::{NewKey, SqliteStore};

    fn cfg() -> Config {
        Config::parse(
            "[autoblock]\nexempt = [\"10.0.0.0/8\"]\nban = \"1h\"\n",
            Path::new("/"),
        )
        .unwrap()
    }

    fn ban(source: &str) -> Ban {
        let now = unix_now_ms();
        Ban {
            source: source.parse().unwrap(),
            reason: BanReason::Manual,
            host: "elsewhere".into(),
            created_at_ms: now,
            expires_at_ms: now + 60_000,
        }
    }

    fn refused(hub: &Autoblock, ip: &str) -> bool {
        hub.bans()
            .holds(ip.parse::<IpAddr>().unwrap(), Instant::now())
    }

    /// Bans made elsewhere are read when the revision moves, however it moved; lifts too.
    #[test]
    fn bans_from_elsewhere_are_enforced_when_the_revision_moves() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        let cfg = cfg();
        let hub = Autoblock::new(&cfg, 1);
        let mut book = BanBook::with_pins(&cfg, PinDir::new(dir.path().join("no-pins")));
        book.attach(Arc::clone(&hub));
        book.sync(&st, true).unwrap();

        let r1 = st.put_ban(&ban("198.18.0.2/32")).unwrap();
        book.sync_at(&st, r1).unwrap();
        assert!(refused(&hub, "198.18.0.2"));
        assert_eq!(book.count(), 1);

        // Another ban, then a key change: the revision jumped past the ban; it is still read.
        st.put_ban(&ban("fd00:ef::/64")).unwrap();
        st.create_keys(&[NewKey::new("acme", "alice", "live")], 1)
            .unwrap();
        let r3 = st.revision().unwrap();
        book.sync_at(&st, r3).unwrap();
        assert!(refused(&hub, "fd00:ef::77"));
        let listed: Vec<String> = book.list().into_iter().map(|b| b.source).collect();
        assert_eq!(listed, ["198.18.0.2", "fd00:ef::/64"]);

        let r4 = st.lift_ban("198.18.0.2", unix_now_ms()).unwrap().unwrap();
        book.sync_at(&st, r4).unwrap();
        assert!(!refused(&hub, "198.18.0.2"));
        assert!(refused(&hub, "fd00:ef::1"));
    }

    #[test]
    fn bans_go_through_the_store_and_exempt_sources_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        let cfg = cfg();
        let mut book = BanBook::with_pins(&cfg, PinDir::new(dir.path().join("no-pins")));
        let src = book.source("fd00:ef::9").unwrap();
        assert_eq!(source_text(&src), "fd00:ef::/64");
        let made = book
            .ban(&mut st, src, BanReason::Manual, book.default_ban())
            .unwrap();
        assert_eq!(made.expires_at_ms - made.created_at_ms, 3_600_000);
        assert_eq!(st.bans_since(0).unwrap().len(), 1);
        assert!(book.holds(&src));
        let e = book
            .ban(
                &mut st,
                book.source("10.1.2.3").unwrap(),
                BanReason::Autoblock,
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(e.status, 409);
        assert_eq!(book.source("10.0.0.0/8").unwrap_err().status, 400);
        book.lift(&mut st, src).unwrap();
        assert!(!book.holds(&src));
        assert_eq!(book.lift(&mut st, src).unwrap_err().status, 404);
    }

    /// A reload's `[autoblock]`: the default ban, the exemptions and the IPv6 prefix apply at
    /// once; a ban made under the old prefix is matched under the new one, as the kernel does.
    #[test]
    fn a_reload_puts_new_settings_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        let cfg = cfg();
        let hub = Autoblock::new(&cfg, 1);
        let mut book = BanBook::with_pins(&cfg, PinDir::new(dir.path().join("no-pins")));
        book.attach(Arc::clone(&hub));
        let v6 = book.source("fd00:ef::9").unwrap();
        book.ban(&mut st, v6, BanReason::Manual, Duration::from_secs(60))
            .unwrap();
        assert!(!refused(&hub, "fd00:ef:0:77::1"), "outside the /64");

        let reloaded = Config::parse(
            "[autoblock]\nipv6_prefix = 48\nban = \"5m\"\nfailures = 7\nexempt = [\"198.18.0.9\"]\n",
            Path::new("/"),
        )
        .unwrap();
        book.reconfigure(Settings::from_config(&reloaded));
        assert_eq!(book.default_ban(), Duration::from_secs(300));
        assert_eq!(
            (hub.settings().ipv6_prefix, hub.settings().failures),
            (48, 7)
        );
        assert!(
            refused(&hub, "fd00:ef:0:77::1"),
            "the ban, keyed by the new /48"
        );
        assert_eq!(
            source_text(&book.source("fd00:ef::9").unwrap()),
            "fd00:ef::/48"
        );
        let e = book
            .ban(
                &mut st,
                book.source("198.18.0.9").unwrap(),
                BanReason::Manual,
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(e.status, 409, "newly exempt");
        book.ban(
            &mut st,
            book.source("10.1.2.3").unwrap(),
            BanReason::Manual,
            Duration::from_secs(1),
        )
        .expect("no longer exempt");
    }
}
