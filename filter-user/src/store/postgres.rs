//! The PostgreSQL key store for fleet mode (SPEC §11): the same records and change semantics as
//! SQLite, every change in one transaction that also appends to the `changes` log (bumping the
//! revision, `NOTIFY` at commit). The [`KeyStore`] trait is synchronous, so the store owns a
//! private current-thread tokio runtime; every call is bounded by a timeout, so a dead database
//! gives a clear [`StoreError`] within seconds instead of hanging a command.

mod notify;
mod rows;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

pub use notify::ChangeNotifier;

use self::rows::{
    SCAN_KEYS, SCAN_USERS, SELECT_VIEW, insert_key, log_key, log_user, must_view, pg, to_record,
    to_user, to_view, user_by_name, view_by,
};
use super::model::{
    Change, ChangeSubject, CreatedKey, KeyRecord, KeyRef, KeyStatus, KeyView, NewKey, User,
    UserStatus,
};
use super::{KeyStore, Result, StoreError};
use crate::pgstore::{self, PgError};

/// What a key change does to a key in its current state: `None` (nothing to do), or the
/// `SET` clause (`$1` = now) and the change kind to log.
type KeyStep = fn(&KeyView) -> Result<Option<(&'static str, &'static str)>>;

/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on any one store call (and the server-side `statement_timeout`).
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows per page when loading every key.
const PAGE: i64 = 10_000;

struct Session {
    client: Arc<Client>,
    driver: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A key store in a PostgreSQL database shared by every edge host.
pub struct PgKeyStore {
    rt: Runtime,
    cfg: tokio_postgres::Config,
    /// `host:port` for messages (never the password).
    target: String,
    session: Mutex<Option<Session>>,
    base: Instant,
    /// Nanoseconds after `base` of the last successful call; `u64::MAX` = never.
    last_contact: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PgKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKeyStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// `host:port[,host:port]` of a parsed config, for messages.
fn target_of(cfg: &tokio_postgres::Config) -> String {
    let ports = cfg.get_ports();
    cfg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` in a transaction: `COMMIT` when it succeeds, `ROLLBACK` otherwise.
async fn in_tx<T>(c: &Client, f: impl Future<Output = Result<T>>) -> Result<T> {
    c.batch_execute("BEGIN").await.map_err(pg)?;
    match f.await {
        Ok(v) => match c.batch_execute("COMMIT").await {
            Ok(()) => Ok(v),
            // The server refused the commit: nothing was made.
            Err(e) if !connection_lost(&e) => Err(pg(e)),
            Err(e) => Err(StoreError::Postgres(PgError::CommitUnknown(e.to_string()))),
        },
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Whether `e` means the connection is gone (refused, closed, I/O, or the server shutting
/// down: SQLSTATE classes 08 and 57P) rather than a refusal of this statement.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl PgKeyStore {
    /// Connects to `url` (`postgres://…`), migrates the schema and returns the store.
    ///
    /// # Errors
    /// A bad URL, an unreachable database (within about 2 s), a failed migration, a schema
    /// newer than this build.
    pub fn open(url: &str) -> Result<Self> {
        let mut cfg: tokio_postgres::Config = url.parse().map_err(PgError::Url)?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        let user_opts = cfg
            .get_options()
            .map(|o| format!("{o} "))
            .unwrap_or_default();
        cfg.options(format!(
            "{user_opts}-c statement_timeout={}",
            OP_TIMEOUT.as_millis()
        ));
        if cfg.get_application_name().is_none() {
            cfg.application_name("edgefilter");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PgError::Unreachable(format!("cannot start its runtime: {e}")))?;
        let store = Self {
            rt,
            target: target_of(&cfg),
            cfg,
            session: Mutex::new(None),
            base: Instant::now(),
            last_contact: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        let (mut client, conn) = store.connect_raw()?;
        let driver = store.rt.spawn(async move {
            let _ = conn.await;
        });
        store
            .block_on(async {
                tokio::time::timeout(OP_TIMEOUT, pgstore::migrate(&mut client)).await
            })
            .map_err(|_| store.unreachable(format!("migration: no answer within {OP_TIMEOUT:?}")))?
            .map_err(|e| store.classify(e.into()))?;
        *lock(&store.session) = Some(Session {
            client: Arc::new(client),
            driver,
        });
        store.touch();
        Ok(store)
    }

    /// Time since the last successful call to the database (`None` before the first).
    #[must_use]
    pub fn lag(&self) -> Option<Duration> {
        let at = self.last_contact.load(std::sync::atomic::Ordering::Acquire);
        (at != u64::MAX).then(|| self.base.elapsed().saturating_sub(Duration::from_nanos(at)))
    }

    /// A notifier that wakes when another writer commits a change after `from` (a `LISTEN`
    /// on its own connection, with reconnects and lag). See [`ChangeNotifier`].
    ///
    /// # Errors
    /// [`PgError::Url`] only; an unreachable database is retried in the background.
    pub fn notifier(url: &str, from: u64) -> Result<ChangeNotifier> {
        Ok(ChangeNotifier::spawn(url, from)?)
    }

    fn touch(&self) {
        let n = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_contact
            .store(n, std::sync::atomic::Ordering::Release);
    }

    fn unreachable(&self, what: String) -> StoreError {
        StoreError::Postgres(PgError::Unreachable(format!("{}: {what}", self.target)))
    }

    /// Connection-level failures (refused, closed, I/O) become [`PgError::Unreachable`]; errors
    /// the server reported stay as they are.
    fn classify(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Postgres(PgError::Db(e)) if connection_lost(&e) => {
                self.unreachable(e.to_string())
            }
            StoreError::Postgres(PgError::Timeout(t)) => {
                self.unreachable(format!("no answer within {t:?}"))
            }
            e => e,
        }
    }

    /// Drives `f` on the store's runtime; from inside another tokio runtime, on a scoped thread
    /// (a runtime cannot block inside another).
    fn block_on<R: Send>(&self, f: impl Future<Output = R> + Send) -> R {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.rt.block_on(f);
        }
        std::thread::scope(|s| {
            s.spawn(|| self.rt.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn connect_raw(
        &self,
    ) -> Result<(
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    )> {
        let cfg = &self.cfg;
        self.block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(NoTls)).await })
            .map_err(|_| self.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| self.unreachable(e.to_string()))
    }

    /// The live client, reconnecting when the last connection died.
    fn client(&self) -> Result<Arc<Client>> {
        let mut slot = lock(&self.session);
        if let Some(s) = slot.as_ref().filter(|s| !s.client.is_closed()) {
            return Ok(Arc::clone(&s.client));
        }
        *slot = None;
        let (client, conn) = self.connect_raw()?;
        let driver = self.rt.spawn(async move {
            let _ = conn.await;
        });
        let client = Arc::new(client);
        *slot = Some(Session {
            client: Arc::clone(&client),
            driver,
        });
        tracing::info!(target = %self.target, "connected to the key store database");
        Ok(client)
    }

    fn reset(&self) {
        *lock(&self.session) = None;
    }

    /// Runs one bounded operation with the live client. A timeout or a dead connection drops
    /// the connection (the next call reconnects) and answers [`PgError::Unreachable`].
    fn run<T, F>(&self, op: impl FnOnce(Arc<Client>) -> F) -> Result<T>
    where
        T: Send,
        F: Future<Output = Result<T>> + Send,
    {
        self.run_on(&self.client()?, op)
    }

    /// [`Self::run`] on a given connection (several calls inside one transaction).
    fn run_on<T, F>(&self, client: &Arc<Client>, op: impl FnOnce(Arc<Client>) -> F) -> Result<T>
    where
        T: Send,
        F: Future<Output = Result<T>> + Send,
    {
        let fut = op(Arc::clone(client));
        let out = self.block_on(async move { tokio::time::timeout(OP_TIMEOUT, fut).await });
        match out {
            Ok(Ok(v)) => {
                self.touch();
                Ok(v)
            }
            Ok(Err(e)) => {
                let e = self.classify(e);
                if client.is_closed() || matches!(e, StoreError::Postgres(PgError::Unreachable(_)))
                {
                    self.reset();
                }
                Err(e)
            }
            Err(_) => {
                self.reset();
                Err(self.unreachable(format!("no answer within {OP_TIMEOUT:?}")))
            }
        }
    }

    /// Retried once on a fresh connection when the old one had died (e.g. the database
    /// restarted since the last call). Safe for writes too: a transaction that failed before
    /// its commit made nothing, and a commit that may have happened is
    /// [`PgError::CommitUnknown`], never retried.
    fn retrying<T, F>(&self, op: impl Fn(Arc<Client>) -> F) -> Result<T>
    where
        T: Send,
        F: Future<Output = Result<T>> + Send,
    {
        let had = lock(&self.session).is_some();
        match self.run(&op) {
            Err(StoreError::Postgres(PgError::Unreachable(_))) if had => self.run(op),
            r => r,
        }
    }

    fn change_key(&self, key: KeyRef<'_>, now: i64, step: KeyStep) -> Result<KeyView> {
        self.retrying(|c| async move {
            in_tx(&c, async {
                let v = must_view(&c, key, true).await?;
                if let Some((set, kind)) = step(&v)? {
                    let sql = format!("UPDATE keys SET {set}, updated_at = $1 WHERE id = $2");
                    c.execute(&sql, &[&now, &v.key.id]).await.map_err(pg)?;
                    log_key(&c, kind, &v.key.id).await?;
                }
                must_view(&c, KeyRef::Id(&v.key.id), false).await
            })
            .await
        })
    }
}

impl KeyStore for PgKeyStore {
    fn create_keys(&mut self, new: &[NewKey], now: i64) -> Result<Vec<CreatedKey>> {
        self.retrying(|c| async move {
            in_tx(&c, async {
                let mut out = Vec::with_capacity(new.len());
                for n in new {
                    out.push(insert_key(&c, n, now).await?);
                }
                Ok(out)
            })
            .await
        })
    }

    fn find_key(&self, key: KeyRef<'_>) -> Result<Option<KeyView>> {
        self.retrying(|c| async move { view_by(&c, key, false).await })
    }

    fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyView>> {
        self.retrying(|c| async move {
            let sql = format!("{SELECT_VIEW} WHERE $1::text IS NULL OR t.name = $1 ORDER BY k.seq");
            let rows = c.query(&sql, &[&tenant]).await.map_err(pg)?;
            rows.iter().map(to_view).collect()
        })
    }

    fn revoke(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView> {
        self.change_key(key, now, |v| {
            Ok((v.key.status != KeyStatus::Revoked)
                .then_some(("status = 'revoked', revoked_at = $1", "key.revoke")))
        })
    }

    fn approve(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView> {
        self.change_key(key, now, |v| match v.key.status {
            KeyStatus::Revoked => Err(StoreError::Conflict(format!(
                "{} is revoked; create a new key instead",
                v.key.id
            ))),
            KeyStatus::Active => Ok(None),
            KeyStatus::Pending => Ok(Some(("status = 'active'", "key.approve"))),
        })
    }

    fn rotate(
        &mut self,
        key: KeyRef<'_>,
        grace: Duration,
        now: i64,
    ) -> Result<(KeyView, CreatedKey)> {
        self.retrying(|c| async move {
            in_tx(&c, async {
                let old = must_view(&c, key, true).await?;
                let k = &old.key;
                if k.status == KeyStatus::Revoked {
                    return Err(StoreError::Conflict(format!(
                        "{} is revoked; create a new key with `edgefilter keys create`",
                        k.id
                    )));
                }
                if let Some(to) = &k.rotated_to {
                    return Err(StoreError::Conflict(format!(
                        "{} was already rotated to {to}",
                        k.id
                    )));
                }
                let lifetime = k.expires_at.map(|e| (e - k.created_at).max(0));
                let new = NewKey {
                    tenant: old.user.tenant.clone(),
                    user: old.user.name.clone(),
                    env: k.env.clone(),
                    scopes: k.scopes.clone(),
                    not_before: None,
                    expires_at: lifetime.map(|l| now.saturating_add(l)),
                    allow_cidrs: k.allow_cidrs.clone(),
                    rate: k.rate,
                    pending: k.status == KeyStatus::Pending,
                };
                let created = insert_key(&c, &new, now).await?;
                let secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
                let grace_until = now.saturating_add(secs);
                c.execute(
                    "UPDATE keys SET grace_until = $1, rotated_to = $2, updated_at = $3
                     WHERE id = $4",
                    &[&grace_until, &created.view.key.id, &now, &k.id],
                )
                .await
                .map_err(pg)?;
                log_key(&c, "key.rotate", &k.id).await?;
                let old = must_view(&c, KeyRef::Id(&k.id), false).await?;
                Ok((old, created))
            })
            .await
        })
    }

    fn set_user_status(&mut self, user: &str, status: UserStatus, now: i64) -> Result<User> {
        self.retrying(|c| async move {
            in_tx(&c, async {
                let u = user_by_name(&c, user, true)
                    .await?
                    .ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
                if u.status == UserStatus::Deleted && status != UserStatus::Deleted {
                    return Err(StoreError::Conflict(format!(
                        "user {user} is deleted; deletion is final"
                    )));
                }
                if u.status != status {
                    c.execute(
                        "UPDATE users SET status = $1, updated_at = $2 WHERE id = $3",
                        &[&status.as_str(), &now, &u.id],
                    )
                    .await
                    .map_err(pg)?;
                    let kind = match status {
                        UserStatus::Active => "user.activate",
                        UserStatus::Suspended => "user.suspend",
                        UserStatus::Deleted => "user.delete",
                    };
                    log_user(&c, kind, user).await?;
                }
                Ok(User { status, ..u })
            })
            .await
        })
    }

    fn for_each_key(
        &self,
        user: &mut dyn FnMut(&User),
        key: &mut dyn FnMut(&KeyRecord, i64),
    ) -> Result<u64> {
        // One snapshot across pages; callbacks run on the caller's thread between pages.
        let client = self.client()?;
        let rev = self.run_on(&client, |c| async move {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg)?;
            Ok(pgstore::current_revision(&*c).await?)
        })?;
        let mut scan = || -> Result<()> {
            let mut after = 0_i64;
            loop {
                let page = self.run_on(&client, |c| async move {
                    let rows = c.query(SCAN_USERS, &[&after, &PAGE]).await.map_err(pg)?;
                    rows.iter().map(to_user).collect::<Result<Vec<_>>>()
                })?;
                page.iter().for_each(&mut *user);
                match page.last() {
                    Some(u) if page.len() == usize::try_from(PAGE).unwrap_or(0) => after = u.id,
                    _ => break,
                }
            }
            let mut after = 0_i64;
            loop {
                let page = self.run_on(&client, |c| async move {
                    let rows = c.query(SCAN_KEYS, &[&after, &PAGE]).await.map_err(pg)?;
                    rows.iter()
                        .map(|r| {
                            Ok((
                                to_record(r)?,
                                r.try_get(14).map_err(pg)?,
                                r.try_get(15).map_err(pg)?,
                            ))
                        })
                        .collect::<Result<Vec<(KeyRecord, i64, i64)>>>()
                })?;
                for (rec, user_id, _) in &page {
                    key(rec, *user_id);
                }
                match page.last() {
                    Some(&(_, _, seq)) if page.len() == usize::try_from(PAGE).unwrap_or(0) => {
                        after = seq;
                    }
                    _ => break,
                }
            }
            self.run_on(&client, |c| async move {
                c.batch_execute("COMMIT").await.map_err(pg)
            })
        };
        if let Err(e) = scan() {
            // The session may sit inside the snapshot transaction: start afresh.
            self.reset();
            return Err(e);
        }
        Ok(rev)
    }

    fn find_user(&self, name: &str) -> Result<Option<User>> {
        self.retrying(|c| async move { user_by_name(&c, name, false).await })
    }

    fn revision(&self) -> Result<u64> {
        self.retrying(|c| async move { Ok(pgstore::current_revision(&*c).await?) })
    }

    fn changes_since(&self, revision: u64) -> Result<Vec<Change>> {
        let rows = self.retrying(|c| async move {
            let mut out = Vec::new();
            let mut after = revision;
            loop {
                let page = pgstore::changes_since(&*c, after, PAGE).await?;
                let full = page.len() == usize::try_from(PAGE).unwrap_or(0);
                after = page.last().map_or(after, |r| r.revision);
                out.extend(page);
                if !full {
                    return Ok(out);
                }
            }
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let p = &r.payload;
                let subject = if let Some(id) = p.get("key_id").and_then(|v| v.as_str()) {
                    ChangeSubject::Key(id.to_owned())
                } else if let Some(user) = p.get("user").and_then(|v| v.as_str()) {
                    ChangeSubject::User(user.to_owned())
                } else {
                    tracing::warn!(
                        revision = r.revision,
                        kind = %r.kind,
                        "change log row names neither a key_id nor a user; ignored"
                    );
                    return None;
                };
                Some(Change {
                    revision: r.revision,
                    at: unix(r.committed_at),
                    subject,
                })
            })
            .collect())
    }
}
