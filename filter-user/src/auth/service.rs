//! Wiring for the daemon: load the store once, build one [`ShardGate`] per shard as a
//! [`GateFactory`], and publish store changes to every shard through the lock-free
//! [`Fanout`] when the revision moves.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::cache::ShardCache;
use super::loader::{KeyLoader, KeySnapshot};
use super::rules::{AuthRules, RulesError};
use super::shard::{Batch, ShardGate};
use crate::config::Config;
use crate::fanout::{AckWatcher, Fanout, Propagation, ShardInbox};
use crate::gate::{Gate, GateFactory};
use crate::store::{self, KeyStore, StoreError};

/// Start-up failures of the key checks.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The routes' key rules are invalid.
    #[error(transparent)]
    Rules(#[from] RulesError),
}

/// Each shard's inbox, taken by the shard's gate when it is built.
type Inboxes = Arc<Mutex<Vec<Option<ShardInbox<Batch>>>>>;

/// The loaded key state of a daemon.
pub struct KeyService {
    rules: Arc<AuthRules>,
    /// Held until the shards have built their indexes, then released.
    snapshot: Option<Arc<KeySnapshot>>,
    loaded: usize,
    loader: KeyLoader,
    fanout: Fanout<Batch>,
    inboxes: Inboxes,
    propagation: Arc<Propagation>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("loaded", &self.loaded)
            .field("revision", &self.loader.revision())
            .field("published", &self.fanout.last_published())
            .finish_non_exhaustive()
    }
}

impl KeyService {
    /// Opens the configured store as the daemon does ([`store::open_for_daemon`]) and loads
    /// every key for `cfg.shard_count()` shards.
    ///
    /// # Errors
    /// Store or rules failures.
    pub fn open(cfg: &Config) -> Result<(Self, Box<dyn KeyStore>), ServiceError> {
        let store = store::open_for_daemon(cfg)?;
        let svc = Self::load(cfg, &*store, cfg.shard_count())?;
        Ok((svc, store))
    }

    /// Loads every key from `store` for `shards` shards.
    ///
    /// # Errors
    /// Store or rules failures.
    pub fn load(cfg: &Config, store: &dyn KeyStore, shards: usize) -> Result<Self, ServiceError> {
        let rules = Arc::new(AuthRules::from_config(cfg)?);
        let (loader, snapshot) = KeyLoader::load(store)?;
        let propagation = Propagation::new();
        let (fanout, inboxes) =
            Fanout::new(shards, snapshot.revision, Some(propagation.observer()));
        Ok(Self {
            rules,
            loaded: snapshot.entries.len(),
            snapshot: Some(Arc::new(snapshot)),
            loader,
            fanout,
            inboxes: Arc::new(Mutex::new(inboxes.into_iter().map(Some).collect())),
            propagation,
        })
    }

    /// The routes' key rules the gates were built with (from the config at start).
    #[must_use]
    pub fn rules(&self) -> Arc<AuthRules> {
        Arc::clone(&self.rules)
    }

    /// Keys loaded at start.
    #[must_use]
    pub fn loaded_keys(&self) -> usize {
        self.loaded
    }

    /// The wallets of the usage-limited keys (for the lease task and `keys credits`).
    #[must_use]
    pub fn credits(&self) -> Arc<crate::auth::credits::CreditBook> {
        Arc::clone(self.loader.credits())
    }

    /// The revision the service has caught up to.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.loader.revision()
    }

    /// Builds shard `n`'s gate (its own index over the shared entries); `None` once the
    /// snapshot has gone to [`KeyService::gate_factory`]. The first gate built for `n` takes
    /// that shard's inbox; a second one gets no changes.
    #[must_use]
    pub fn gate(&self, n: usize) -> Option<ShardGate> {
        let snap = self.snapshot.as_ref()?;
        Some(build_gate(snap, &self.rules, &self.inboxes, n))
    }

    /// A factory the proxy calls once per shard, on that shard's thread. It takes the loaded
    /// snapshot and lets go of it once every shard has its index, so the entries are then held
    /// only by the shards' indexes. A call for a shard beyond the configured count, or after
    /// that, gets a gate with an empty index (every key `UNKNOWN_KEY`) and logs an error.
    #[must_use]
    pub fn gate_factory(&mut self) -> GateFactory {
        let shards = self
            .inboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let held = Mutex::new((self.snapshot.take(), shards));
        let rules = Arc::clone(&self.rules);
        let inboxes = Arc::clone(&self.inboxes);
        Box::new(move |n| -> Box<dyn Gate> {
            // Take a reference under the lock, build outside it: shards build in parallel, and
            // the snapshot is freed when the last builder drops its reference.
            let snap = {
                let mut g = held.lock().unwrap_or_else(PoisonError::into_inner);
                let snap = g.0.clone();
                g.1 = g.1.saturating_sub(1);
                if g.1 == 0 {
                    g.0 = None;
                }
                snap
            };
            let gate = if let Some(snap) = snap {
                build_gate(&snap, &rules, &inboxes, n)
            } else {
                tracing::error!(
                    shard = n,
                    "key snapshot already released; shard starts empty"
                );
                build_gate(&KeySnapshot::default(), &rules, &inboxes, n)
            };
            Box::new(gate)
        })
    }

    /// Catches up with the store and publishes the changes to every shard; returns the new
    /// revision when it moved.
    ///
    /// # Errors
    /// Store failures (the shards keep serving their last state).
    pub fn poll(&mut self, store: &dyn KeyStore) -> Result<Option<u64>, StoreError> {
        self.poll_at(store, Instant::now())
    }

    /// [`Self::poll`] for a change committed at `committed_at` (propagation is measured from
    /// it).
    ///
    /// # Errors
    /// Store failures (the shards keep serving their last state).
    pub fn poll_at(
        &mut self,
        store: &dyn KeyStore,
        committed_at: Instant,
    ) -> Result<Option<u64>, StoreError> {
        let updates = self.loader.reload_if_revision_changed(store)?;
        let revision = self.loader.revision();
        if revision <= self.fanout.last_published() {
            return Ok(None);
        }
        let batch = Arc::new(Batch { revision, updates });
        // The loader's revision only grows and is above the last published one: in order.
        if let Err(e) = self.fanout.publish_at(revision, batch, committed_at) {
            tracing::error!(error = %e, "fan-out refused a store revision");
            return Ok(None);
        }
        Ok(Some(revision))
    }

    /// The last revision published to the shards.
    #[must_use]
    pub fn published(&self) -> u64 {
        self.fanout.last_published()
    }

    /// A handle that waits until every shard applied a revision.
    #[must_use]
    pub fn acks(&self) -> AckWatcher<Batch> {
        self.fanout.watcher()
    }

    /// The propagation histogram (store commit → last shard applied).
    #[must_use]
    pub fn propagation(&self) -> Arc<Propagation> {
        Arc::clone(&self.propagation)
    }

    /// The revision each shard has applied.
    #[must_use]
    pub fn applied(&self) -> Vec<u64> {
        self.fanout.watcher().applied()
    }
}

fn build_gate(
    snapshot: &KeySnapshot,
    rules: &Arc<AuthRules>,
    inboxes: &Inboxes,
    n: usize,
) -> ShardGate {
    let inbox = inboxes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(n)
        .and_then(Option::take);
    let cache = ShardCache::new(&snapshot.entries, &snapshot.inactive);
    ShardGate::new(cache, Arc::clone(rules), inbox)
}
