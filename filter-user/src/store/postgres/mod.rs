//! The PostgreSQL backend for fleet mode (SPEC §11), everything in one place:
//!
//! - [`PgKeyStore`]: the [`KeyStore`] with the same records and change semantics as SQLite,
//!   every change in one transaction that also appends to the `changes` log (bumping the
//!   revision, `NOTIFY` at commit). The trait is synchronous, so the store owns a private
//!   current-thread tokio runtime (`conn`); every call is bounded by a timeout, so a dead
//!   database gives a clear [`StoreError`] within seconds instead of hanging a command. A change
//!   made on behalf of an actor writes its audit entry in the same transaction.
//! - `log`: the change log ([`append_change`], [`changes_since`], [`current_revision`]).
//! - `follower`: the [`ChangeFollower`] every edge host runs to apply changes in revision order
//!   and catch up after any disconnect; `notify` turns it into the watcher's wake-up.
//! - `bans`: the denylist's bans, each write or lift a change like any other.
//! - `schema`: the versioned migrations; `tls`: `store.url` parsing and its TLS settings.

mod bans;
mod conn;
pub mod follower;
pub mod log;
mod notify;
mod rows;
pub mod schema;
pub mod tls;

use std::time::Duration;

pub use follower::{ChangeFollower, FollowerConfig, FollowerStatus};
pub use log::{ChangeRow, append_change, changes_since, current_revision};
pub use notify::ChangeNotifier;
pub use schema::{MIGRATIONS, migrate, migrate_with};

use self::conn::{Conn, PAGE, in_tx};
use self::rows::{
    SCAN_KEYS, SCAN_USERS, SELECT_VIEW, audit_ok, insert_audit, insert_key, log_key, log_user,
    must_view, pg, to_audit, to_record_at, to_user, to_view, user_by_name, view_by,
};
use super::audit::{Action, Actor, AuditEntry};
use super::bans::{Ban, BanRow};
use super::credits::{CreditChange, Lease};
use super::model::{
    Change, ChangeSubject, CreatedKey, KeyRecord, KeyRef, KeyView, NewKey, User, UserStatus,
};
use super::{KeyStore, Result, StoreError, rules};

/// The `LISTEN`/`NOTIFY` channel; the payload is the new revision in decimal.
pub const CHANNEL: &str = "edgefilter_changes";

/// `e` and its chain of causes, `: `-separated ("error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer").
#[must_use]
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// PostgreSQL store failures.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database refused, failed, or could not be reached (the message carries the causes,
    /// e.g. why a TLS handshake failed).
    #[error("postgres: {}", with_causes(.0))]
    Db(#[from] tokio_postgres::Error),
    /// `store.url` does not parse.
    #[error("store.url: {0}")]
    Url(tokio_postgres::Error),
    /// The database holds a schema newer than this binary knows.
    #[error(
        "database schema version {found} is newer than this edgefilter's {known}: upgrade edgefilter"
    )]
    SchemaTooNew {
        /// Version found in the database.
        found: i32,
        /// Highest version this binary knows.
        known: i32,
    },
    /// The TLS settings of `store.url` cannot be used (e.g. an unreadable `sslrootcert`).
    #[error("store.url TLS: {0}")]
    Tls(String),
    /// The database did not answer in time.
    #[error("postgres: no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection failed while committing: the change may or may not have been made.
    #[error(
        "key store database (PostgreSQL) connection lost during commit ({0}); the change may or may not have been made: check with `edgefilter keys show`"
    )]
    CommitUnknown(String),
    /// The database cannot be reached (refused, closed, timed out): nothing was changed.
    #[error("key store database (PostgreSQL) unreachable: {0}")]
    Unreachable(String),
}

/// Connects to `url` (a `postgres://` URL or `key=value` string) and drives the connection on
/// the current tokio runtime. For writers; followers manage their own connections.
///
/// # Errors
/// [`PgError`] when the URL is invalid or the database cannot be reached in `timeout`.
pub async fn connect(
    url: &str,
    timeout: std::time::Duration,
) -> std::result::Result<tokio_postgres::Client, PgError> {
    let mut target = tls::parse(url)?;
    target.config.connect_timeout(timeout);
    let (client, conn) = tokio::time::timeout(timeout, target.config.connect(target.tls))
        .await
        .map_err(|_| PgError::Timeout(timeout))??;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// What a key change does to a key in its current state: `None` (nothing to do), or the
/// `SET` clause (`$1` = now) and the change kind to log.
type KeyStep = fn(&KeyView) -> Result<Option<(&'static str, &'static str)>>;

/// A key store in a PostgreSQL database shared by every edge host.
#[derive(Debug)]
pub struct PgKeyStore {
    conn: Conn,
    /// On whose behalf changes are made (see [`KeyStore::act_as`]).
    actor: Option<Actor>,
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
        Ok(Self {
            conn: Conn::open(url)?,
            actor: None,
        })
    }

    /// Time since the last successful call to the database (`None` before the first).
    #[must_use]
    pub fn lag(&self) -> Option<Duration> {
        self.conn.lag()
    }

    /// A notifier that wakes when another writer commits a change after `from` (a `LISTEN`
    /// on its own connection, with reconnects and lag). See [`ChangeNotifier`].
    ///
    /// # Errors
    /// [`PgError::Url`] or [`PgError::Tls`] only; an unreachable database is retried in the background.
    pub fn notifier(url: &str, from: u64) -> Result<ChangeNotifier> {
        Ok(ChangeNotifier::spawn(url, from)?)
    }

    fn change_key(
        &self,
        key: KeyRef<'_>,
        now: i64,
        action: Action,
        step: KeyStep,
    ) -> Result<KeyView> {
        let by = self.actor.as_ref();
        self.conn.retrying(|c| async move {
            in_tx(&c, async {
                let v = must_view(&c, key, true).await?;
                if let Some((set, kind)) = step(&v)? {
                    let sql = format!("UPDATE keys SET {set}, updated_at = $1 WHERE id = $2");
                    c.execute(&sql, &[&now, &v.key.id]).await.map_err(pg)?;
                    log_key(&c, kind, &v.key.id).await?;
                }
                audit_ok(&c, by, action, &v.key.id, now).await?;
                must_view(&c, KeyRef::Id(&v.key.id), false).await
            })
            .await
        })
    }
}

impl KeyStore for PgKeyStore {
    fn create_keys(&mut self, new: &[NewKey], now: i64) -> Result<Vec<CreatedKey>> {
        let by = self.actor.as_ref();
        self.conn.retrying(|c| async move {
            in_tx(&c, async {
                let mut out = Vec::with_capacity(new.len());
                for n in new {
                    let created = insert_key(&c, n, now).await?;
                    audit_ok(&c, by, Action::KeyCreate, &created.view.key.id, now).await?;
                    out.push(created);
                }
                Ok(out)
            })
            .await
        })
    }

    fn find_key(&self, key: KeyRef<'_>) -> Result<Option<KeyView>> {
        self.conn
            .retrying(|c| async move { view_by(&c, key, false).await })
    }

    fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyView>> {
        self.conn.retrying(|c| async move {
            let sql = format!("{SELECT_VIEW} WHERE $1::text IS NULL OR t.name = $1 ORDER BY k.seq");
            let rows = c.query(&sql, &[&tenant]).await.map_err(pg)?;
            rows.iter().map(to_view).collect()
        })
    }

    fn revoke(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView> {
        self.change_key(key, now, Action::KeyRevoke, |v| {
            Ok(rules::revoke_changes(&v.key)
                .then_some(("status = 'revoked', revoked_at = $1", "key.revoke")))
        })
    }

    fn approve(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView> {
        self.change_key(key, now, Action::KeyApprove, |v| {
            Ok(rules::approve_changes(&v.key)?.then_some(("status = 'active'", "key.approve")))
        })
    }

    fn rotate(
        &mut self,
        key: KeyRef<'_>,
        grace: Duration,
        now: i64,
    ) -> Result<(KeyView, CreatedKey)> {
        let by = self.actor.as_ref();
        self.conn.retrying(|c| async move {
            in_tx(&c, async {
                let old = must_view(&c, key, true).await?;
                let k = &old.key;
                let new = rules::rotation_successor(&old, now)?;
                let mut created = insert_key(&c, &new, now).await?;
                if rows::move_credits(&c, &k.id, &created.view.key.id).await? {
                    created.view = must_view(&c, KeyRef::Id(&created.view.key.id), false).await?;
                }
                let grace_until = rules::grace_until(now, grace);
                c.execute(
                    "UPDATE keys SET grace_until = $1, rotated_to = $2, updated_at = $3
                     WHERE id = $4",
                    &[&grace_until, &created.view.key.id, &now, &k.id],
                )
                .await
                .map_err(pg)?;
                log_key(&c, "key.rotate", &k.id).await?;
                audit_ok(&c, by, Action::KeyRotate, &k.id, now).await?;
                let old = must_view(&c, KeyRef::Id(&k.id), false).await?;
                Ok((old, created))
            })
            .await
        })
    }

    fn lease_credits(&mut self, id: &str, want: u64) -> Result<Option<Lease>> {
        self.conn
            .retrying(|c| async move { in_tx(&c, rows::lease_credits(&c, id, want)).await })
    }

    fn return_credits(&mut self, id: &str, n: u64, due: Option<i64>) -> Result<()> {
        self.conn
            .retrying(|c| async move { rows::return_credits(&c, id, n, due).await })
    }

    fn change_credits(
        &mut self,
        key: KeyRef<'_>,
        change: CreditChange,
        now: i64,
    ) -> Result<KeyView> {
        let by = self.actor.as_ref();
        self.conn.retrying(|c| async move {
            in_tx(&c, async {
                let v = must_view(&c, key, true).await?;
                rows::change_credits(&c, &v.key.id, change).await?;
                c.execute(
                    "UPDATE keys SET updated_at = $1 WHERE id = $2",
                    &[&now, &v.key.id],
                )
                .await
                .map_err(pg)?;
                log_key(&c, "key.credits", &v.key.id).await?;
                audit_ok(&c, by, Action::KeyCredits, &v.key.id, now).await?;
                must_view(&c, KeyRef::Id(&v.key.id), false).await
            })
            .await
        })
    }

    fn refill_credits(&mut self, now: i64) -> Result<Vec<String>> {
        self.conn
            .retrying(|c| async move { in_tx(&c, rows::refill_credits(&c, now)).await })
    }

    fn set_user_status(&mut self, user: &str, status: UserStatus, now: i64) -> Result<User> {
        let by = self.actor.as_ref();
        self.conn.retrying(|c| async move {
            in_tx(&c, async {
                let u = user_by_name(&c, user, true)
                    .await?
                    .ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
                if rules::user_status_changes(&u, status)? {
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
                audit_ok(&c, by, Action::user_status(status), &u.name, now).await?;
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
        let client = self.conn.client()?;
        let rev = self.conn.run_on(&client, |c| async move {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg)?;
            Ok(current_revision(&*c).await?)
        })?;
        let mut scan = || -> Result<()> {
            let mut after = 0_i64;
            loop {
                let page = self.conn.run_on(&client, |c| async move {
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
                let page = self.conn.run_on(&client, |c| async move {
                    let rows = c.query(SCAN_KEYS, &[&after, &PAGE]).await.map_err(pg)?;
                    rows.iter()
                        .map(|r| {
                            Ok((
                                to_record_at(r, rows::SCAN_CREDITS)?,
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
            self.conn.run_on(&client, |c| async move {
                c.batch_execute("COMMIT").await.map_err(pg)
            })
        };
        if let Err(e) = scan() {
            // The session may sit inside the snapshot transaction: start afresh.
            self.conn.reset();
            return Err(e);
        }
        Ok(rev)
    }

    fn find_user(&self, name: &str) -> Result<Option<User>> {
        self.conn
            .retrying(|c| async move { user_by_name(&c, name, false).await })
    }

    fn revision(&self) -> Result<u64> {
        self.conn
            .retrying(|c| async move { Ok(current_revision(&*c).await?) })
    }

    fn count_key_states(&self, now: i64) -> Result<Vec<(String, u64)>> {
        let sql = rules::count_key_states_sql(now);
        self.conn.retrying(|c| {
            let sql = sql.clone();
            async move {
                let rows = c.query(sql.as_str(), &[]).await.map_err(pg)?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        let n: i64 = r.get(1);
                        (r.get::<_, String>(0), u64::try_from(n).unwrap_or(0))
                    })
                    .collect())
            }
        })
    }

    fn changes_since(&self, revision: u64) -> Result<Vec<Change>> {
        let rows = self.conn.retrying(|c| async move {
            let mut out = Vec::new();
            let mut after = revision;
            loop {
                let page = changes_since(&*c, after, PAGE).await?;
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
                } else if let Some(source) = p.get("ban").and_then(|v| v.as_str()) {
                    ChangeSubject::Ban(source.to_owned())
                } else {
                    tracing::warn!(
                        revision = r.revision,
                        kind = %r.kind,
                        "change log row names neither a key_id, a user nor a ban; ignored"
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

    fn act_as(&mut self, actor: Option<Actor>) {
        self.actor = actor;
    }

    fn record_audit(&mut self, entry: &AuditEntry) -> Result<()> {
        // In a transaction, so a commit whose answer was lost is never retried (no duplicate).
        self.conn
            .retrying(|c| async move { in_tx(&c, insert_audit(&c, entry)).await })
    }

    fn audit_since(&self, since: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn.retrying(|c| async move {
            let rows = c
                .query(
                    "SELECT id, at, actor, action, object, result, host FROM (
                         SELECT * FROM audit WHERE $1::bigint IS NULL OR at >= $1
                         ORDER BY id DESC LIMIT $2
                     ) newest ORDER BY id",
                    &[&since, &limit],
                )
                .await
                .map_err(pg)?;
            rows.iter().map(to_audit).collect()
        })
    }

    fn put_ban(&mut self, ban: &Ban) -> Result<u64> {
        self.conn
            .retrying(|c| async move { in_tx(&c, bans::put(&c, ban)).await })
    }

    fn lift_ban(&mut self, source: &str, now_ms: i64) -> Result<Option<u64>> {
        self.conn
            .retrying(|c| async move { in_tx(&c, bans::lift(&c, source, now_ms)).await })
    }

    fn bans_since(&self, revision: u64) -> Result<Vec<BanRow>> {
        self.conn
            .retrying(|c| async move { bans::since(&c, revision).await })
    }

    fn purge_bans(&mut self, before_ms: i64) -> Result<usize> {
        self.conn
            .retrying(|c| async move { bans::purge(&c, before_ms).await })
    }
}
