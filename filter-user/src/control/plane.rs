//! The control plane: the one writer of the key store. Each key change is committed (durable),
//! then loaded and published to every shard as one batch, and answered only once every shard
//! has applied it. The store watcher publishes through the same lock, so there is one sequence.
//!
//! Every change is made by an [`Actor`] and recorded in the audit trail once: a store change in
//! its own transaction, a refused one and a change outside the store (the XDP allowlist, and
//! the denylist through [`ControlPlane::audited_change`]) right after, under the same lock.
//!
//! The watcher also asks the store whether it can take changes ([`KeyStore::health`], and the
//! periodic integrity check outside the lock): while it cannot (its file deleted, replaced,
//! corrupt, read-only, its disk full), `/readyz` answers 503 with the reason, changes are
//! refused with `STORE_UNAVAILABLE` naming the file, and the shards keep serving their last
//! state; one log line says when that starts and one when it ends.
//!
//! The denylist ([`BanBook`]) lives under the same lock: bans are written to the store, then
//! enforced here; the store watcher brings in bans made elsewhere, and auto-block's decisions
//! arrive through [`ControlPlane::autoban`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::{Value, json};

use super::credits::CreditLeases;
use super::denylist::BanBook;
use crate::admin::{
    AdminOps, AllowlistRequest, ApiError, AuditJson, AuditQuery, CreateKeyRequest, CreatedKeyJson,
    CreditsRequest, DenylistRequest, ExplainRequest, KeyJson, ListKeysQuery, OpFuture, Readiness,
    RotateRequest, UserAction,
};
use crate::auth::KeyService;
use crate::auth::shard::Batch;
use crate::autoblock::Autoblock;
use crate::config::StoreKind;
use crate::config::{Config, parse_duration};
use crate::fanout::boost;
use crate::fanout::{AckWatcher, Propagation};
use crate::names::{Scope, TenantName, UserName};
use crate::obs::access_log::AccessLog;
use crate::obs::metrics::RequestMetrics;
use crate::obs::recent::{RecentDenials, unix_ms};
use crate::obs::upstreams::UpstreamBoard;
use crate::store::audit::{self, key_object, new_key_object};
use crate::store::bans::source_text;
use crate::store::postgres::FollowerStatus;
use crate::store::timefmt::{check_validity, parse_when};
use crate::store::{
    self, Action, Actor, AuditEntry, BanReason, CreditChange, KeyRef, KeyStore, NewKey, RateLimit,
    Refill, StoreError, StoreFault, UserStatus,
};
use crate::xdp::{AllowFile, PinDir, allowfile_path, open_pinned};

/// How long a key change waits for every shard before answering `PROPAGATION_TIMEOUT`.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Default grace of a rotated key.
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

struct Inner {
    keys: KeyService,
    store: Box<dyn KeyStore>,
    bans: BanBook,
}

/// The control plane; implements [`AdminOps`].
pub struct ControlPlane {
    inner: Mutex<Inner>,
    acks: AckWatcher<Batch>,
    propagation: Arc<Propagation>,
    /// The config in force (a reload replaces it).
    cfg: arc_swap::ArcSwap<Config>,
    timeout: Duration,
    /// The shards' request counters, once the proxy has them (for `/metrics`).
    requests: OnceLock<Arc<RequestMetrics>>,
    /// Upstream targets' and credentials' state, once the proxy has them (for `/metrics`).
    upstreams: OnceLock<Arc<UpstreamBoard>>,
    /// The XDP program's pins, once XDP runs (for `/metrics`).
    xdp: OnceLock<PinDir>,
    /// The access log, when it is on (for `/metrics`).
    access_log: OnceLock<Arc<AccessLog>>,
    /// The shards' rings of recent denials, once the proxy has them (for `GET /v1/stats`).
    denials: OnceLock<Arc<RecentDenials>>,
    /// Fleet mode: the change listener's progress, for the store lag.
    listener: OnceLock<FollowerStatus>,
    /// The last count of keys per state (`edgefilter_keys`).
    key_counts: Mutex<Option<KeyCount>>,
    /// `/readyz`'s state, once the daemon hands it over (the store's problems go there).
    ready: OnceLock<Arc<Readiness>>,
    /// Why the store could not take changes at the last look (`None`: it could).
    store_fault: Mutex<Option<StoreFault>>,
    /// The watcher has looked at the store once (its first integrity check included): until
    /// then `/readyz` says the store is not checked yet, whatever a change found.
    looked: AtomicBool,
}

/// How long a count of keys per state serves scrapes before the store is asked again (keys
/// expire and become valid without a change).
const KEY_COUNT_TTL: Duration = Duration::from_secs(10);

/// Keys per state, when they were counted and at which revision.
struct KeyCount {
    at: Instant,
    revision: u64,
    states: Vec<(String, u64)>,
}

impl ControlPlane {
    /// Takes over the loaded key service (its gates already handed to the shards) and the
    /// store it was loaded from.
    #[must_use]
    pub fn new(cfg: Arc<Config>, keys: KeyService, store: Box<dyn KeyStore>) -> Arc<Self> {
        Arc::new(Self {
            acks: keys.acks(),
            propagation: keys.propagation(),
            inner: Mutex::new(Inner {
                keys,
                store,
                bans: BanBook::new(&cfg),
            }),
            cfg: arc_swap::ArcSwap::new(cfg),
            timeout: APPLY_TIMEOUT,
            requests: OnceLock::new(),
            upstreams: OnceLock::new(),
            xdp: OnceLock::new(),
            access_log: OnceLock::new(),
            denials: OnceLock::new(),
            listener: OnceLock::new(),
            key_counts: Mutex::new(None),
            ready: OnceLock::new(),
            store_fault: Mutex::new(None),
            looked: AtomicBool::new(false),
        })
    }

    /// `/readyz` reports the store's problems into `ready` from now on; until the watcher's
    /// first look at the store (its first integrity check included), the store is not ready.
    pub fn show_readiness(&self, ready: Arc<Readiness>) {
        ready.set_store_problem(Some("first check of the store not done yet".to_owned()));
        let _ = self.ready.set(ready);
    }

    /// Looks at whether the store can take changes (the integrity check, when one is due, run
    /// without the writer lock) and reports it ([`Self::report_store`]).
    fn check_store(&self) {
        let job = self.lock().store.integrity_job();
        if let Some(job) = job {
            job();
        }
        let fault = self.lock().store.health();
        self.looked.store(true, Ordering::Release);
        self.report_store(fault);
    }

    /// Whether the store had a fault at the last look.
    fn store_faulted(&self) -> bool {
        self.store_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Puts the store's fault (or its absence) into `/readyz`, and logs when a fault starts,
    /// changes kind, or ends.
    fn report_store(&self, fault: Option<StoreFault>) {
        let mut last = self
            .store_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (&*last, &fault) {
            (before, Some(f)) if before.as_ref().map(|b| b.kind) != Some(f.kind) => {
                tracing::error!(
                    store = %f.path.display(),
                    problem = f.kind.as_str(),
                    error = %f,
                    hint = f.hint(),
                    "the key store cannot take changes: they are refused and /readyz answers 503; the shards keep serving their last state"
                );
            }
            (Some(before), None) => {
                tracing::info!(
                    store = %before.path.display(),
                    was = before.kind.as_str(),
                    "the key store can take changes again; /readyz is back"
                );
            }
            _ => {}
        }
        if let Some(ready) = self.ready.get()
            && self.looked.load(Ordering::Acquire)
        {
            ready.set_store_problem(fault.as_ref().map(ToString::to_string));
        }
        *last = fault;
    }

    /// The config in force.
    #[must_use]
    pub fn cfg(&self) -> Arc<Config> {
        self.cfg.load_full()
    }

    /// Puts a reloaded config in force for what the control plane runs, and returns the config
    /// it runs with: `[autoblock]` (counting, deciding, the denylist's default ban, exemptions
    /// and IPv6 prefix) and, when XDP runs, `xdp.mode`, `xdp.protected_ports` and `xdp.allow`
    /// (written into the pinned maps, the allowlist as a diff). When the XDP part cannot be
    /// applied (e.g. enforce with an empty allowlist) it is logged and the running `[xdp]` kept.
    pub fn reconfigure(&self, mut cfg: Config) -> Arc<Config> {
        let mut g = self.lock();
        g.bans
            .reconfigure(crate::autoblock::Settings::from_config(&cfg));
        if let Some(pins) = self.xdp.get() {
            match crate::xdp::reconfigure(pins, &cfg) {
                Ok(diff) if !diff.added.is_empty() || !diff.removed.is_empty() => {
                    tracing::info!(
                        added = diff.added.len(),
                        removed = diff.removed.len(),
                        "XDP allowlist reloaded"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "xdp.mode, xdp.protected_ports and xdp.allow not reloaded: the XDP filter keeps the running ones"
                    );
                    cfg.xdp = self.cfg().xdp.clone();
                }
            }
        }
        let cfg = Arc::new(cfg);
        self.cfg.store(Arc::clone(&cfg));
        drop(g);
        cfg
    }

    /// `/metrics` shows these request counters (the ones the proxy counts into) from now on.
    pub fn show_requests(&self, metrics: Arc<RequestMetrics>) {
        let _ = self.requests.set(metrics);
    }

    /// `/metrics` shows the upstream targets and credentials listed on `board` from now on.
    pub fn show_upstreams(&self, board: Arc<UpstreamBoard>) {
        let _ = self.upstreams.set(board);
    }

    /// Bans are published to `hub` (the shards refuse them at accept when it says so), and
    /// the denylist is read in full from the store and enforced (the XDP maps made to match).
    ///
    /// # Errors
    /// Store failures (the bans are read again at the next watcher round).
    pub fn use_autoblock(&self, hub: Arc<Autoblock>) -> Result<(), StoreError> {
        let mut g = self.lock();
        let Inner { store, bans, .. } = &mut *g;
        bans.attach(hub);
        bans.sync(&**store, true)
    }

    /// Bans `source` (auto-block's decision), unless it is banned already; recorded in the
    /// audit trail as made by `autoblock`.
    pub fn autoban(&self, source: ipnet::IpNet) {
        let by = Actor::autoblock();
        let object = source_text(&source);
        let done = self.audited_in(&by, Action::DenyAdd, &object, |inner| {
            if inner.bans.holds(&source) {
                return Ok(false);
            }
            let ttl = inner.bans.default_ban();
            let ban = inner
                .bans
                .ban(&mut *inner.store, source, BanReason::Autoblock, ttl)?;
            tracing::warn!(
                source = %object,
                until = %crate::store::timefmt::rfc3339(ban.expires_at_ms / 1000),
                "auto-block: source banned after repeated key denials"
            );
            Ok(true)
        });
        if let Err(e) = done {
            tracing::warn!(source = %object, error = %e, "auto-block could not ban a source");
        }
    }

    /// Forgets expired bans (and, now and then, purges them); auto-block's ticker calls it.
    pub fn expire_bans(&self) {
        let mut g = self.lock();
        let Inner { store, bans, .. } = &mut *g;
        bans.expire(&mut **store);
    }

    /// How many bans hold now.
    #[must_use]
    pub fn ban_count(&self) -> usize {
        self.lock().bans.count()
    }

    /// `/metrics` shows the access log's dropped lines from now on.
    pub fn show_access_log(&self, log: Arc<AccessLog>) {
        let _ = self.access_log.set(log);
    }

    /// `GET /v1/stats` ranks the refusals the shards record into `denials` from now on.
    pub fn show_denials(&self, denials: Arc<RecentDenials>) {
        let _ = self.denials.set(denials);
    }

    /// `/metrics` shows the counters of the XDP program pinned in `pins` from now on.
    pub fn show_xdp(&self, pins: PinDir) {
        let _ = self.xdp.set(pins);
    }

    /// The propagation histogram (`edgefilter_revocation_propagation_seconds`).
    #[must_use]
    pub fn propagation(&self) -> &Arc<Propagation> {
        &self.propagation
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts keys per state in the store when there is no count yet, the revision moved
    /// since, or (`on_time`) the count is older than [`KEY_COUNT_TTL`]. The watcher calls it
    /// with `on_time` after each successful poll; a scrape without, so a scrape never waits for
    /// a store that has not changed (e.g. one that is unreachable). While the store cannot
    /// answer, the last count stays (fail-static).
    fn recount_keys(&self, on_time: bool) {
        let revision = self.lock().keys.published();
        let fresh = self
            .key_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|c| {
                c.revision == revision && !(on_time && c.at.elapsed() >= KEY_COUNT_TTL)
            });
        if fresh {
            return;
        }
        match self.lock().store.count_key_states(store::unix_now()) {
            Ok(states) => {
                *self
                    .key_counts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(KeyCount {
                    at: Instant::now(),
                    revision,
                    states,
                });
            }
            Err(e) => tracing::debug!(error = %e, "counting keys per state failed"),
        }
    }

    /// Keys per state for a scrape: recounted first when the revision moved (a change shows at
    /// once), else the last count.
    fn key_counts(&self) -> Option<Vec<(String, u64)>> {
        self.recount_keys(false);
        self.key_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|c| c.states.clone())
    }

    /// Publishes whatever the store holds beyond the last published revision (changes made by
    /// other processes); returns the revision to wait for.
    ///
    /// # Errors
    /// Store failures.
    pub fn sync(&self) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let Inner { keys, store, bans } = &mut *g;
        keys.poll(&**store)?;
        // A ban is a change: when the revision moved, there may be bans to enforce.
        bans.sync_at(&**store, keys.published())?;
        Ok(keys.published())
    }

    /// Runs a store write as `by` under the writer lock, then publishes what changed; returns
    /// the write's result and the revision every shard must reach. The store records the write
    /// in the audit trail in its transaction; a refused write is recorded as `action` on the
    /// object `object` names.
    fn write<T>(
        &self,
        by: &Actor,
        action: Action,
        object: &dyn Fn(&dyn KeyStore) -> String,
        op: impl FnOnce(&mut dyn KeyStore, i64) -> Result<T, StoreError>,
    ) -> Result<(T, u64), ApiError> {
        // Real-time from before the commit until the shards have been raised and sent the
        // change, so a busy core cannot park the writer between the two.
        let _raised = boost::RaisedSelf::now();
        let mut g = self.lock();
        let Inner { keys, store, .. } = &mut *g;
        let now = store::unix_now();
        let out = audit::audited(&mut **store, by, action, object, now, |st| op(st, now));
        let committed = Instant::now();
        let published = match out {
            Ok(out) => keys
                .poll_at(&**store, committed)
                .map(|_| (out, keys.published())),
            Err(e) => Err(e),
        };
        // A refused change may be the first sign of a fault; a change from the reserve leaves one.
        let fault = store.health();
        drop(g);
        self.report_store(fault);
        published.map_err(store_error)
    }

    async fn applied(&self, rev: u64) -> Result<(), ApiError> {
        self.acks
            .wait_applied(rev, self.timeout)
            .await
            .map(|_| ())
            .map_err(|e| {
                ApiError::propagation_timeout(e.to_string())
                    .with_hint("The change is committed; shards apply it when they catch up.")
            })
    }

    /// Catches up with the store on a thread of its own until the handle is dropped: at once
    /// when `wake` (fleet mode: PostgreSQL `NOTIFY`) reports a commit, and at least every `every`.
    #[must_use]
    pub fn spawn_watcher(
        self: &Arc<Self>,
        every: Duration,
        wake: Option<crate::store::postgres::ChangeNotifier>,
    ) -> PlaneWatcher {
        if let Some(n) = &wake {
            let _ = self.listener.set(n.status());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let me = Arc::clone(self);
        let join = std::thread::Builder::new()
            .name("store-watch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    me.check_store();
                    match me.sync() {
                        Ok(_) => me.recount_keys(true),
                        // A store with a known fault was reported once already.
                        Err(e) if me.store_faulted() => {
                            tracing::debug!(error = %e, "key store poll failed; shards keep their last state");
                        }
                        Err(e) => tracing::warn!(error = %e, "key store poll failed; shards keep their last state"),
                    }
                    match &wake {
                        Some(n) => {
                            n.wait_for_change(every);
                        }
                        None => std::thread::sleep(every),
                    }
                }
            })
            .ok();
        PlaneWatcher { stop, join }
    }

    /// Starts the credit lease task ([`super::credits`]): one round now, so the keys loaded
    /// have credits before the first request, then on a thread of its own.
    #[must_use]
    pub fn spawn_credit_leases(self: &Arc<Self>) -> CreditLeases {
        let book = self.lock().keys.credits();
        let me = Arc::clone(self);
        CreditLeases::spawn(
            book,
            Arc::new(move |f: &mut dyn FnMut(&mut dyn KeyStore)| {
                let mut g = me.lock();
                f(&mut *g.store);
            }),
        )
    }

    /// Supplies the wallet of key `id` from the store now (a key just created, or its credits
    /// just changed), so its requests pass once the change is answered.
    fn lease_now(&self, id: &str) {
        let mut g = self.lock();
        let Inner { keys, store, .. } = &mut *g;
        let Some(w) = keys.credits().get(id) else {
            return;
        };
        w.take_request();
        if let Err(e) = super::credits::top_up(&mut **store, &w) {
            w.ask();
            tracing::warn!(key_id = %id, error = %e, "could not lease credits; the lease task retries");
        }
    }

    /// What is left of key `id`'s credits on this host beyond the store's (its unspent lease).
    fn credits_held(&self, id: &str) -> u64 {
        self.lock().keys.credits().get(id).map_or(0, |w| w.held())
    }

    /// The key's JSON with its remaining credits as this daemon sees them (the store's plus
    /// the unspent lease).
    fn key_json(&self, v: &store::KeyView, now: i64) -> KeyJson {
        let mut j = KeyJson::from_view(v, now);
        if let Some(left) = j.credits_remaining.as_mut() {
            *left = left.saturating_add(self.credits_held(&v.key.id));
        }
        j
    }

    fn new_key(&self, r: CreateKeyRequest, now: i64) -> Result<NewKey, ApiError> {
        let needed = |what: &str| {
            ApiError::bad_request(format!("`{what}` is required (or `like`, naming a key)"))
        };
        let tenant = r.tenant.ok_or_else(|| needed("tenant"))?;
        let user = r.user.ok_or_else(|| needed("user"))?;
        let tenant = TenantName::parse(&tenant).map_err(|e| ApiError::invalid_name(&e))?;
        let user = UserName::parse(&user).map_err(|e| ApiError::invalid_name(&e))?;
        let scopes = r.scopes.unwrap_or_default();
        for s in &scopes {
            Scope::parse(s).map_err(|e| ApiError::invalid_name(&e))?;
        }
        let small = |n: u64, what: &str| {
            u32::try_from(n).map_err(|_| ApiError::bad_request(format!("`{what}` is too large")))
        };
        let rate = match (r.rate, r.burst) {
            (Some(0), _) => return Err(ApiError::bad_request("`rate` must be at least 1")),
            (Some(per_sec), burst) => {
                let per_sec = small(per_sec, "rate")?;
                let burst = burst.map_or(Ok(per_sec), |b| small(b, "burst"))?.max(1);
                Some(RateLimit { per_sec, burst })
            }
            (None, Some(_)) => return Err(ApiError::bad_request("`burst` needs `rate`")),
            (None, None) => None,
        };
        let refill = r
            .refill
            .as_deref()
            .map(|s| Refill::parse(s).map_err(|m| ApiError::bad_request(format!("`refill`: {m}"))))
            .transpose()?;
        if refill.is_some() && r.credits.is_none() {
            return Err(ApiError::bad_request("`refill` needs `credits`"));
        }
        let when = |s: Option<String>, what: &str| {
            s.map(|s| {
                parse_when(&s, now).map_err(|m| ApiError::bad_request(format!("`{what}`: {m}")))
            })
            .transpose()
        };
        let not_before = when(r.not_before, "not_before")?;
        let expires_at = when(r.expires, "expires")?;
        check_validity(not_before, expires_at, now, ("`expires`", "`not_before`"))
            .map_err(ApiError::bad_request)?;
        Ok(NewKey {
            tenant: tenant.into(),
            user: user.into(),
            env: r.env.unwrap_or_else(|| self.cfg().keys.environment.clone()),
            scopes,
            not_before,
            expires_at,
            allow_cidrs: r.allowed_cidrs.iter().flatten().map(IpNet::trunc).collect(),
            rate,
            credits: r.credits,
            refill,
            pending: r.pending,
        })
    }

    /// Runs `change`, a change outside the key store (e.g. to the XDP denylist), under the
    /// writer lock, and records it in the audit trail as `action` on `object` made by `by`:
    /// made when it returns `Ok`, refused with its error otherwise. A failure to record is
    /// logged, not returned: the change has been made (or not) either way.
    ///
    /// # Errors
    /// Whatever `change` returns.
    pub fn audited_change<T>(
        &self,
        by: &Actor,
        action: Action,
        object: &str,
        change: impl FnOnce() -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.audited_in(by, action, object, |_| change())
    }

    /// [`Self::audited_change`] for a change that needs what the writer lock guards (the
    /// denylist and the store it writes first).
    fn audited_in<T>(
        &self,
        by: &Actor,
        action: Action,
        object: &str,
        change: impl FnOnce(&mut Inner) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut g = self.lock();
        let out = change(&mut g);
        let now = store::unix_now();
        let entry = match &out {
            Ok(_) => AuditEntry::ok(now, by, action, object),
            Err(e) => AuditEntry::failed(now, by, action, object, &api_failure(e)),
        };
        record(&mut *g.store, &entry);
        out
    }

    /// Records that `by` was refused `action` on the object `object` names before the store
    /// was asked (a bad request), and returns the refusal.
    fn refused(
        &self,
        by: &Actor,
        action: Action,
        object: &dyn Fn(&dyn KeyStore) -> String,
        e: ApiError,
    ) -> ApiError {
        let mut g = self.lock();
        let object = object(&*g.store);
        let entry = AuditEntry::failed(store::unix_now(), by, action, &object, &api_failure(&e));
        record(&mut *g.store, &entry);
        e
    }

    /// Adds `net` to (or removes it from) the allowlist file and the pinned map, if any. The
    /// caller holds the writer lock.
    fn allow_change(&self, net: IpNet, add: bool) -> Result<Value, ApiError> {
        let cfg = self.cfg();
        let path = allowfile_path(&cfg);
        let mut file = AllowFile::load(&path).map_err(xdp_error)?;
        let changed = if add {
            file.add(&cfg.xdp.allow, net)
        } else {
            file.remove(&cfg.xdp.allow, net)
        };
        if !add && !changed {
            return Err(ApiError::not_found(format!(
                "{net} is not in the allowlist."
            )));
        }
        if changed {
            file.save(&path).map_err(xdp_error)?;
        }
        let pins = PinDir::from_env();
        if pins.has_maps() {
            let mut maps = open_pinned(&pins).map_err(xdp_error)?;
            if add {
                maps.allow_insert(net).map_err(xdp_error)?;
            } else {
                maps.allow_remove(net).map_err(xdp_error)?;
            }
        }
        Ok(allow_json(&file, &cfg))
    }
}

impl ControlPlane {
    /// The denylist's entries for `GET /v1/stats`' `bans`, one JSON object per entry as
    /// `GET /v1/denylist` shows it.
    fn bans(&self) -> Vec<Value> {
        self.lock()
            .bans
            .list()
            .iter()
            .filter_map(|b| serde_json::to_value(b).ok())
            .collect()
    }
}

/// Stops the store watcher when dropped.
#[derive(Debug)]
pub struct PlaneWatcher {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Drop for PlaneWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn allow_json(file: &AllowFile, cfg: &Config) -> Value {
    let cidrs: Vec<String> = file
        .effective(&cfg.xdp.allow)
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    json!({ "cidrs": cidrs })
}

/// Appends `entry` to the audit trail; a failure is logged (the change it records is done).
fn record(store: &mut dyn KeyStore, entry: &AuditEntry) {
    if let Err(e) = store.record_audit(entry) {
        if matches!(e, StoreError::Unavailable(_)) {
            // The store's fault is logged (and shown by /readyz) once, not with every change.
            tracing::debug!(error = %e, action = %entry.action, "could not record a change in the audit trail");
            return;
        }
        tracing::warn!(
            error = %e,
            action = %entry.action,
            object = %entry.object,
            "could not record a change in the audit trail"
        );
    }
}

/// The audit result of a refused API call: its code and message (never a key).
fn api_failure(e: &ApiError) -> String {
    format!("{}: {}", e.code, e.message)
}

/// Maps a store failure to an API error; never echoes a key.
fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NoSuchKey(_) => ApiError::not_found("No such key."),
        StoreError::NoSuchUser(_) => ApiError::not_found("No such user."),
        StoreError::Conflict(m) => ApiError::conflict(m),
        StoreError::InvalidName(e) => ApiError::invalid_name(&e),
        StoreError::Unavailable(f) => {
            ApiError::new(503, "STORE_UNAVAILABLE", f.to_string()).with_hint(f.hint())
        }
        StoreError::Postgres(crate::store::postgres::PgError::CommitUnknown(m)) => {
            ApiError::new(503, "STORE_UNAVAILABLE", m).with_hint(
                "The connection was lost during the commit: check with `edgefilter keys show` before retrying.",
            )
        }
        other => ApiError::store_unavailable(other.to_string()),
    }
}

fn xdp_error(e: crate::xdp::XdpError) -> ApiError {
    ApiError::internal(format!("XDP allowlist: {e}"))
}

fn key_ref(id: &str) -> KeyRef<'_> {
    KeyRef::from_arg(id)
}

fn boxed<'a>(f: impl Future<Output = Result<Value, ApiError>> + Send + 'a) -> OpFuture<'a> {
    Box::pin(f)
}

/// `v` as a JSON value (the admin API's answer body).
fn to_value(v: &impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

impl AdminOps for ControlPlane {
    fn create_key(&self, by: Actor, mut req: CreateKeyRequest) -> OpFuture<'_> {
        boxed(async move {
            let now = store::unix_now();
            let action = Action::KeyCreate;
            if let Some(like) = req.like.clone() {
                let found = self
                    .lock()
                    .store
                    .find_key(key_ref(&like))
                    .map_err(store_error)?;
                let Some(from) = found else {
                    let object = |st: &dyn KeyStore| key_object(st, &like);
                    let e = ApiError::not_found("No such key to copy (`like`).");
                    return Err(self.refused(&by, action, &object, e));
                };
                req.inherit(&from);
            }
            let named = new_key_object(
                req.tenant.as_deref().unwrap_or("-"),
                req.user.as_deref().unwrap_or("-"),
            );
            let object = |_: &dyn KeyStore| named.clone();
            let new = self
                .new_key(req, now)
                .map_err(|e| self.refused(&by, action, &object, e))?;
            let (created, rev) = self.write(&by, action, &object, |st, now| {
                st.create_keys(std::slice::from_ref(&new), now)
            })?;
            let c = created
                .first()
                .ok_or_else(|| ApiError::internal("the store created no key"))?;
            if new.credits.is_some() {
                self.lease_now(&c.view.key.id);
            }
            self.applied(rev).await?;
            let mut v = CreatedKeyJson::from_created(c, now);
            v.revision = Some(rev);
            to_value(&v)
        })
    }

    fn list_keys(&self, query: ListKeysQuery) -> OpFuture<'_> {
        boxed(async move {
            if let Some(t) = &query.tenant {
                TenantName::parse(t).map_err(|e| ApiError::invalid_name(&e))?;
            }
            let now = store::unix_now();
            let keys = self
                .lock()
                .store
                .list_keys(query.tenant.as_deref())
                .map_err(store_error)?;
            to_value(
                &keys
                    .iter()
                    .map(|v| KeyJson::from_view(v, now))
                    .collect::<Vec<_>>(),
            )
        })
    }

    fn show_key(&self, id: String) -> OpFuture<'_> {
        boxed(async move {
            let found = self
                .lock()
                .store
                .find_key(key_ref(&id))
                .map_err(store_error)?;
            let v = found.ok_or_else(|| ApiError::not_found("No such key."))?;
            to_value(&self.key_json(&v, store::unix_now()))
        })
    }

    fn revoke_key(&self, by: Actor, id: String) -> OpFuture<'_> {
        boxed(async move {
            let object = |st: &dyn KeyStore| key_object(st, &id);
            let (v, rev) = self.write(&by, Action::KeyRevoke, &object, |st, now| {
                st.revoke(key_ref(&id), now)
            })?;
            self.applied(rev).await?;
            Ok(json!({"revision": rev, "key": KeyJson::from_view(&v, store::unix_now())}))
        })
    }

    fn rotate_key(&self, by: Actor, id: String, req: RotateRequest) -> OpFuture<'_> {
        boxed(async move {
            let action = Action::KeyRotate;
            let object = |st: &dyn KeyStore| key_object(st, &id);
            let grace = match req.grace.as_deref() {
                Some(g) => parse_duration(g).map_err(|m| {
                    let e = ApiError::bad_request(format!("`grace`: {m}"));
                    self.refused(&by, action, &object, e)
                })?,
                None => DEFAULT_GRACE,
            };
            let ((old, new), rev) = self.write(&by, action, &object, |st, now| {
                st.rotate(key_ref(&id), grace, now)
            })?;
            self.applied(rev).await?;
            let now = store::unix_now();
            let mut created = CreatedKeyJson::from_created(&new, now);
            created.revision = Some(rev);
            Ok(json!({"revision": rev, "old": KeyJson::from_view(&old, now), "new": created}))
        })
    }

    fn approve_key(&self, by: Actor, id: String) -> OpFuture<'_> {
        boxed(async move {
            let object = |st: &dyn KeyStore| key_object(st, &id);
            let (v, rev) = self.write(&by, Action::KeyApprove, &object, |st, now| {
                st.approve(key_ref(&id), now)
            })?;
            self.applied(rev).await?;
            Ok(json!({"revision": rev, "key": KeyJson::from_view(&v, store::unix_now())}))
        })
    }

    fn key_credits(&self, by: Actor, id: String, req: CreditsRequest) -> OpFuture<'_> {
        boxed(async move {
            let action = Action::KeyCredits;
            let object = |st: &dyn KeyStore| key_object(st, &id);
            let change = match (req.set, req.add) {
                (Some(n), None) => CreditChange::Set(n),
                (None, Some(n)) => CreditChange::Add(n),
                _ => {
                    let e = ApiError::bad_request("give exactly one of `set` and `add`");
                    return Err(self.refused(&by, action, &object, e));
                }
            };
            let book = self.lock().keys.credits();
            let (v, rev) = self.write(&by, action, &object, |st, now| {
                let v = st.change_credits(key_ref(&id), change, now)?;
                // Under the writer lock, so no lease is taken between the commit and this:
                // what this daemon held is void once the store holds exactly N.
                if let (CreditChange::Set(_), Some(w)) = (change, book.get(&v.key.id)) {
                    w.forfeit();
                }
                Ok(v)
            })?;
            self.lease_now(&v.key.id);
            self.applied(rev).await?;
            // Read again: the lease just taken moved credits from the store to this daemon.
            let found = self.lock().store.find_key(KeyRef::Id(&v.key.id));
            let v = found.map_err(store_error)?.unwrap_or(v);
            Ok(json!({"revision": rev, "key": self.key_json(&v, store::unix_now())}))
        })
    }

    fn user_action(&self, by: Actor, user: String, action: UserAction) -> OpFuture<'_> {
        boxed(async move {
            let status = match action {
                UserAction::Suspend => UserStatus::Suspended,
                UserAction::Activate => UserStatus::Active,
                UserAction::Delete => UserStatus::Deleted,
            };
            let object = |_: &dyn KeyStore| user.clone();
            let audited = Action::user_status(status);
            UserName::parse(&user)
                .map_err(|e| self.refused(&by, audited, &object, ApiError::invalid_name(&e)))?;
            let ((u, keys), rev) = self.write(&by, audited, &object, |st, now| {
                let u = st.set_user_status(&user, status, now)?;
                let keys = st
                    .list_keys(Some(&u.tenant))?
                    .iter()
                    .filter(|v| v.user.id == u.id)
                    .count();
                Ok((u, keys))
            })?;
            self.applied(rev).await?;
            Ok(json!({
                "revision": rev, "user": u.name, "tenant": u.tenant,
                "status": u.status.as_str(), "keys": keys,
            }))
        })
    }

    fn allowlist(&self) -> OpFuture<'_> {
        boxed(async move {
            let cfg = self.cfg();
            let file = AllowFile::load(&allowfile_path(&cfg)).map_err(xdp_error)?;
            Ok(allow_json(&file, &cfg))
        })
    }

    fn allowlist_add(&self, by: Actor, req: AllowlistRequest) -> OpFuture<'_> {
        boxed(async move {
            let net = req.cidr.trunc();
            self.audited_change(&by, Action::AllowAdd, &net.to_string(), || {
                self.allow_change(net, true)
            })
        })
    }

    fn allowlist_remove(&self, by: Actor, req: AllowlistRequest) -> OpFuture<'_> {
        boxed(async move {
            let net = req.cidr.trunc();
            self.audited_change(&by, Action::AllowRemove, &net.to_string(), || {
                self.allow_change(net, false)
            })
        })
    }

    fn denylist(&self) -> OpFuture<'_> {
        boxed(async move { to_value(&self.lock().bans.list()) })
    }

    fn denylist_add(&self, by: Actor, req: DenylistRequest) -> OpFuture<'_> {
        boxed(async move {
            let object = req.source.trim().to_owned();
            self.audited_in(&by, Action::DenyAdd, &object, |inner| {
                let source = inner.bans.source(&object)?;
                let ttl = match req.duration.as_deref() {
                    Some(d) => {
                        parse_duration(d)
                            .ok()
                            .filter(|d| !d.is_zero())
                            .ok_or_else(|| {
                                ApiError::bad_request(format!("`for`: `{d}` is not a duration"))
                                    .with_hint("e.g. 10m, 24h, 7d")
                            })?
                    }
                    None => inner.bans.default_ban(),
                };
                let ban = inner
                    .bans
                    .ban(&mut *inner.store, source, BanReason::Manual, ttl)?;
                to_value(&crate::admin::BanJson::from_ban(
                    &ban,
                    store::bans::unix_now_ms(),
                ))
            })
        })
    }

    fn denylist_remove(&self, by: Actor, req: DenylistRequest) -> OpFuture<'_> {
        boxed(async move {
            let object = req.source.trim().to_owned();
            self.audited_in(&by, Action::DenyRemove, &object, |inner| {
                if req.duration.is_some() {
                    return Err(ApiError::bad_request("`for` is for adding a ban only."));
                }
                let source = inner.bans.source(&object)?;
                inner.bans.lift(&mut *inner.store, source)?;
                to_value(&inner.bans.list())
            })
        })
    }

    fn explain(&self, req: ExplainRequest) -> OpFuture<'_> {
        boxed(async move {
            let ip = req.ip.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
            let method = req.method.as_deref().unwrap_or("GET");
            let inner = self.lock();
            let book = inner.keys.credits();
            let explained = crate::auth::explain::explain_held(
                &self.cfg(),
                &*inner.store,
                &req.key,
                ip,
                method,
                req.path.as_deref(),
                &|id| book.get(id).map_or(0, |w| w.held()),
            )
            .map_err(|e| match e {
                crate::auth::explain::ExplainError::Store(e) => store_error(e),
                crate::auth::explain::ExplainError::Rules(e) => ApiError::internal(e.to_string()),
            })?;
            Ok(explained.to_json())
        })
    }

    fn audit(&self, query: AuditQuery) -> OpFuture<'_> {
        boxed(async move {
            let entries = self
                .lock()
                .store
                .audit_since(query.since, audit::limit(query.limit))
                .map_err(store_error)?;
            to_value(
                &entries
                    .iter()
                    .map(AuditJson::from_entry)
                    .collect::<Vec<_>>(),
            )
        })
    }

    fn stats(&self) -> OpFuture<'_> {
        boxed(async move {
            let revision = self.lock().keys.published();
            let snapshot = super::stats::snapshot(
                super::stats::Sources {
                    requests: self.requests.get().map(|r| &**r),
                    denials: self.denials.get().map(|d| &**d),
                    propagation: &self.propagation,
                    xdp: self.xdp.get(),
                    store_kind: match self.cfg().store.kind {
                        StoreKind::Sqlite => "sqlite",
                        StoreKind::Postgres => "postgres",
                    },
                    revision,
                    lag: self.listener.get().map(FollowerStatus::lag),
                    bans: self.bans(),
                },
                unix_ms(),
            );
            to_value(&snapshot)
        })
    }

    fn metrics(&self) -> String {
        let (revision, bans) = {
            let g = self.lock();
            (g.keys.published(), g.bans.count())
        };
        super::metrics::render(&super::metrics::Sources {
            keys: self.key_counts(),
            store_lag: match self.cfg().store.kind {
                // A local store is never behind.
                StoreKind::Sqlite => Some(Duration::ZERO),
                StoreKind::Postgres => self.listener.get().map(FollowerStatus::lag),
            },
            requests: self.requests.get().cloned(),
            upstreams: self.upstreams.get().cloned(),
            propagation: Arc::clone(&self.propagation),
            xdp: self.xdp.get().cloned(),
            access_log_dropped: self.access_log.get().map(|l| l.dropped()),
            revision,
            autoblocked_sources: u64::try_from(bans).unwrap_or(u64::MAX),
        })
    }
}
