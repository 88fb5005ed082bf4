//! The embedded SQLite backend: WAL, `synchronous = FULL`, one transaction per change (with its
//! audit entry when an actor is set). Its migrations are in [`schema`].
//!
//! The store keeps an eye on its file: before each change it makes sure the path still names
//! the file it opened and that it may be written ([`guard`]), a SQLite error becomes the
//! [`StoreFault`] it stands for, the file is checked for damage at open and periodically
//! ([`integrity`]), and a change that takes access away commits on a full disk from the space
//! reserve ([`reserve`]). A missing database is created only where no store was before.

mod credits;
pub mod guard;
pub mod integrity;
pub mod reserve;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use self::guard::{FileId, Watch, classify, shm_path, suffixed, wal_path};
use self::integrity::Checked;
use self::reserve::{Reserve, Room};
use super::audit::{self, Action, Actor, AuditEntry};
use super::bans::{Ban, BanReason, BanRow, source_text};
use super::credits::{CreditChange, Lease};
use super::fault::{FaultKind, StoreFault};
use super::ids::new_key_id;
use super::model::{
    Change, ChangeSubject, CreatedKey, KeyHash, KeyRecord, KeyRef, KeyStatus, KeyView, NewKey,
    RateLimit, User, UserStatus,
};
use super::{IntegrityJob, KeyStore, Result, StoreError, rules};

/// When a store is first checked for damage (`PRAGMA quick_check` reads the whole file: about
/// a second for a million keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckAt {
    /// Before its first change (a command: one that only reads does not wait for a check).
    FirstWrite,
    /// In the first [`KeyStore::integrity_job`] (the daemon: serving does not wait for it).
    FirstJob,
}

/// How a store is opened (`[store]` in the config).
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of the space reserve ([`reserve`]); 0: none.
    pub reserve_bytes: u64,
    /// How often [`KeyStore::integrity_job`] has a check due.
    pub check_interval: Duration,
    /// When the first check runs.
    pub check: CheckAt,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reserve_bytes: 8 * 1024 * 1024,
            check_interval: Duration::from_secs(600),
            check: CheckAt::FirstWrite,
        }
    }
}

/// The faults a store has found, shared with its integrity job.
#[derive(Debug, Default)]
struct Faults {
    /// Deleted, replaced or corrupt: until the store is opened again.
    lasting: Option<StoreFault>,
    /// Full, or an I/O error, seen by a change: until there is room again (the reserve whole)
    /// or, for an I/O error, a change succeeds.
    passing: Option<StoreFault>,
}

/// Whether a change may spend the space reserve: only one an operator makes to take access
/// away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spend {
    /// A revocation, a suspension or deletion of a user, a ban made by hand.
    Reserve,
    /// Any other change.
    Never,
}

/// A key store in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
    /// On whose behalf changes are made (see [`KeyStore::act_as`]).
    actor: Option<Actor>,
    /// The files as opened.
    watch: Watch,
    reserve: Reserve,
    faults: Arc<Mutex<Faults>>,
    check_interval: Duration,
    /// When the next integrity check is due.
    next_check: Instant,
    /// The file is checked before the next change ([`CheckAt::FirstWrite`]).
    check_before_write: bool,
}

impl Drop for SqliteStore {
    /// A store whose file was deleted or replaced is never closed by SQLite: closing would
    /// checkpoint and delete the `-wal` and `-shm` files by name, files that may belong to
    /// another database by then. Its descriptors close with the process.
    fn drop(&mut self) {
        let moved = self
            .faults()
            .lasting
            .as_ref()
            .is_some_and(|f| matches!(f.kind, FaultKind::Deleted | FaultKind::Replaced));
        if moved && let Ok(stand_in) = Connection::open_in_memory() {
            std::mem::forget(std::mem::replace(&mut self.conn, stand_in));
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.watch.path())
            .finish_non_exhaustive()
    }
}

const SELECT_VIEW: &str = "SELECT k.id, k.hash, k.env, k.scopes, k.not_before, k.expires_at,
        k.allow_cidrs, k.rate, k.burst, k.status, k.revoked_at, k.grace_until, k.rotated_to,
        k.created_at, u.id, u.name, u.status, t.name,
        k.credits_remaining, k.refill_amount, k.refill_period, k.refill_due
     FROM keys k JOIN users u ON u.id = k.user_id JOIN tenants t ON t.id = u.tenant_id";

/// Where [`SELECT_VIEW`]'s credit columns start.
const VIEW_CREDITS: usize = 18;
/// Where [`SCAN_KEYS`]'s credit columns start.
const SCAN_CREDITS: usize = 15;

fn corrupt(idx: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, what.into())
}

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(' ').filter(|w| !w.is_empty())
}

/// Decodes the key columns 0..=13 of [`SELECT_VIEW`] / [`SCAN_KEYS`], and their credit
/// columns from `credits` on.
fn row_to_record(r: &Row<'_>, credits: usize) -> rusqlite::Result<KeyRecord> {
    let hash: [u8; 32] = r
        .get_ref(1)?
        .as_blob()?
        .try_into()
        .map_err(|_| corrupt(1, "hash is not 32 bytes".into()))?;
    let scopes = r.get_ref(3)?.as_str()?;
    let cidrs = r.get_ref(6)?.as_str()?;
    let allow_cidrs = words(cidrs)
        .map(|c| c.parse().map_err(|_| corrupt(6, format!("bad CIDR {c}"))))
        .collect::<rusqlite::Result<_>>()?;
    let rate = match (r.get::<_, Option<u32>>(7)?, r.get::<_, Option<u32>>(8)?) {
        (Some(per_sec), Some(burst)) => Some(RateLimit { per_sec, burst }),
        _ => None,
    };
    let status = r.get_ref(9)?.as_str()?;
    Ok(KeyRecord {
        id: r.get(0)?,
        hash: KeyHash(hash),
        env: r.get(2)?,
        scopes: words(scopes).map(str::to_owned).collect(),
        not_before: r.get(4)?,
        expires_at: r.get(5)?,
        allow_cidrs,
        rate,
        credits: credits::decode(r, credits)?,
        status: KeyStatus::parse(status)
            .ok_or_else(|| corrupt(9, format!("key status {status}")))?,
        revoked_at: r.get(10)?,
        grace_until: r.get(11)?,
        rotated_to: r.get(12)?,
        created_at: r.get(13)?,
    })
}

/// Every key without its user (the caller joins users in memory); user id is column 14.
const SCAN_KEYS: &str = "SELECT k.id, k.hash, k.env, k.scopes, k.not_before, k.expires_at,
        k.allow_cidrs, k.rate, k.burst, k.status, k.revoked_at, k.grace_until, k.rotated_to,
        k.created_at, k.user_id,
        k.credits_remaining, k.refill_amount, k.refill_period, k.refill_due
     FROM keys k";

const SELECT_USERS: &str = "SELECT u.id, u.name, u.status, t.name FROM users u
     JOIN tenants t ON t.id = u.tenant_id";

fn row_to_user(r: &Row<'_>) -> rusqlite::Result<User> {
    let s = r.get_ref(2)?.as_str()?;
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        status: UserStatus::parse(s).ok_or_else(|| corrupt(2, format!("user status {s}")))?,
        tenant: r.get(3)?,
    })
}

fn row_to_view(r: &Row<'_>) -> rusqlite::Result<KeyView> {
    let key = row_to_record(r, VIEW_CREDITS)?;
    let user_status = r.get_ref(16)?.as_str()?;
    Ok(KeyView {
        key,
        user: User {
            id: r.get(14)?,
            name: r.get(15)?,
            status: UserStatus::parse(user_status)
                .ok_or_else(|| corrupt(16, format!("user status {user_status}")))?,
            tenant: r.get(17)?,
        },
    })
}

/// Bumps the revision and logs the change; returns the new revision.
fn bump(tx: &Transaction<'_>, now: i64, subject: &ChangeSubject) -> Result<u64> {
    let rev: i64 = tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    let (kind, name) = match subject {
        ChangeSubject::Key(id) => ("key", id),
        ChangeSubject::User(u) => ("user", u),
        ChangeSubject::Ban(source) => ("ban", source),
    };
    tx.prepare_cached("INSERT INTO changes (revision, at, kind, subject) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![rev, now, kind, name])?;
    u64::try_from(rev).map_err(|_| StoreError::Corrupt(format!("revision {rev}")))
}

fn view_by(conn: &Connection, key: KeyRef<'_>) -> Result<Option<KeyView>> {
    let v = match key {
        KeyRef::Id(id) => conn
            .prepare_cached(&format!("{SELECT_VIEW} WHERE k.id = ?1"))?
            .query_row([id], row_to_view)
            .optional()?,
        KeyRef::Hash(h) => conn
            .prepare_cached(&format!("{SELECT_VIEW} WHERE k.hash = ?1"))?
            .query_row([&h.0[..]], row_to_view)
            .optional()?,
    };
    Ok(v)
}

fn must_view(conn: &Connection, key: KeyRef<'_>) -> Result<KeyView> {
    view_by(conn, key)?.ok_or_else(|| rules::no_such_key(key))
}

fn user_by_name(conn: &Connection, name: &str) -> Result<Option<User>> {
    Ok(conn
        .prepare_cached(&format!("{SELECT_USERS} WHERE u.name = ?1"))?
        .query_row([name], row_to_user)
        .optional()?)
}

/// The user to own a new key: created (with its tenant) when new.
fn ensure_user(tx: &Transaction<'_>, tenant: &str, user: &str, now: i64) -> Result<i64> {
    if let Some(u) = user_by_name(tx, user)? {
        rules::check_key_owner(&u, tenant)?;
        return Ok(u.id);
    }
    tx.prepare_cached("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)")?
        .execute(params![tenant, now])?;
    let tenant_id: i64 = tx
        .prepare_cached("SELECT id FROM tenants WHERE name = ?1")?
        .query_row([tenant], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO users (tenant_id, name, status, created_at, updated_at)
         VALUES (?1, ?2, 'active', ?3, ?3)",
    )?
    .execute(params![tenant_id, user, now])?;
    Ok(tx.last_insert_rowid())
}

fn insert_key(tx: &Transaction<'_>, new: &NewKey, now: i64) -> Result<CreatedKey> {
    let (secret, hash) = rules::new_key_secret(new)?;
    let user_id = ensure_user(tx, &new.tenant, &new.user, now)?;
    let id = new_key_id();
    let rev = bump(tx, now, &ChangeSubject::Key(id.clone()))?;
    let cidrs: Vec<String> = new.allow_cidrs.iter().map(ToString::to_string).collect();
    tx.prepare_cached(
        "INSERT INTO keys (id, hash, user_id, env, scopes, not_before, expires_at, allow_cidrs,
             rate, burst, status, created_at, updated_rev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        id,
        &hash.0[..],
        user_id,
        new.env,
        new.scopes.join(" "),
        new.not_before,
        new.expires_at,
        cidrs.join(" "),
        new.rate.map(|r| r.per_sec),
        new.rate.map(|r| r.burst),
        if new.pending { "pending" } else { "active" },
        now,
        i64::try_from(rev).unwrap_or(i64::MAX),
    ])?;
    credits::set_new(tx, &id, new, now)?;
    Ok(CreatedKey {
        view: must_view(tx, KeyRef::Id(&id))?,
        secret,
    })
}

/// Appends `e` to the audit trail.
fn insert_audit(conn: &Connection, e: &AuditEntry) -> Result<()> {
    audit::check(e)?;
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, object, result, host)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![e.at, e.actor, e.action, e.object, e.result, e.host])?;
    Ok(())
}

/// Records, inside the change's transaction, a change made on behalf of `by` (none: nothing).
fn audit_ok(
    tx: &Transaction<'_>,
    by: Option<&Actor>,
    action: Action,
    object: &str,
    now: i64,
) -> Result<()> {
    match by {
        Some(by) => insert_audit(tx, &AuditEntry::ok(now, by, action, object)),
        None => Ok(()),
    }
}

fn row_to_audit(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        object: r.get(4)?,
        result: r.get(5)?,
        host: r.get(6)?,
    })
}

fn set_rev(tx: &Transaction<'_>, id: &str, now: i64) -> Result<()> {
    let rev = bump(tx, now, &ChangeSubject::Key(id.to_owned()))?;
    tx.execute(
        "UPDATE keys SET updated_rev = ?1 WHERE id = ?2",
        params![i64::try_from(rev).unwrap_or(i64::MAX), id],
    )?;
    Ok(())
}

/// Opens the database at `path` (creating it when missing) and migrates it.
fn connect(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// The fault of a database that is missing where something shows a store was: its reserve, its
/// write-ahead log or its shared-memory index (`None`: no trace, a first start).
fn missing_store(db: &Path, reserve: &Reserve) -> Option<StoreFault> {
    let traces: Vec<PathBuf> = [reserve.path().to_path_buf(), wal_path(db), shm_path(db)]
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if traces.is_empty() {
        return None;
    }
    let listed = traces
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ");
    let mut detail = format!(
        "the file is missing, yet {listed} remain(s) of a store that was there, so no empty one is made in its place"
    );
    if let Some(copy) = rescued_copies(db).last() {
        detail.push_str(&format!(
            "; the last state a daemon saw was saved to {} (with no daemon running, move it to {})",
            copy.display(),
            db.display()
        ));
    }
    detail.push_str(&format!(
        ". To start with an empty store on purpose, delete {listed}"
    ));
    Some(StoreFault::new(FaultKind::Deleted, db, detail))
}

/// The copies a daemon saved of the database at `db` (`<db>.rescued-<unix time>`), oldest first.
fn rescued_copies(db: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.rescued-", name.to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

impl SqliteStore {
    /// Opens (creating if needed, with its directory) and migrates the database at `path`, with
    /// the default [`Options`].
    ///
    /// # Errors
    /// As [`SqliteStore::open_with`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, &Options::default())
    }

    /// Opens and migrates the database at `path`. A missing database is created (with its
    /// directory) only when nothing shows a store was there ([`reserve`]); a full disk that
    /// keeps it from opening spends a step of the reserve. The space reserve is made when
    /// missing. The file is checked for damage when `opts.check` says ([`CheckAt`]).
    ///
    /// # Errors
    /// A store missing where one was, an unopenable or damaged file, a full disk, a failed
    /// migration, a schema newer than this build.
    pub fn open_with(path: &Path, opts: &Options) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let reserve = Reserve::beside(path, opts.reserve_bytes);
        let existed = path.symlink_metadata().is_ok();
        if !existed && let Some(f) = missing_store(path, &reserve) {
            return Err(StoreError::Unavailable(f));
        }
        let conn = loop {
            let e = match connect(path) {
                Ok(conn) => break conn,
                Err(StoreError::Db(e)) => e,
                Err(other) => {
                    return Err(StoreError::Open {
                        path: path.to_path_buf(),
                        source: Box::new(other),
                    });
                }
            };
            let Some(fault) = classify(path, &e) else {
                return Err(StoreError::Sqlite {
                    path: path.to_path_buf(),
                    source: e,
                });
            };
            if fault.kind == FaultKind::Full && spend_reserve(&reserve, &fault) {
                continue;
            }
            return Err(StoreError::Unavailable(fault));
        };
        if !existed {
            tracing::warn!(
                store = %path.display(),
                "no key store was at this path: created a new, empty one"
            );
        }
        if let Err(e) = reserve.make() {
            tracing::warn!(
                reserve = %reserve.path().display(),
                error = %e,
                "could not make the store's space reserve: a full disk could refuse revocations"
            );
        }
        let watch = Watch::new(path).map_err(|e| {
            StoreError::Unavailable(StoreFault::new(FaultKind::Io, path, e.to_string()))
        })?;
        let first_job = opts.check == CheckAt::FirstJob;
        Ok(Self {
            conn,
            actor: None,
            watch,
            reserve,
            faults: Arc::default(),
            check_interval: opts.check_interval,
            next_check: if first_job {
                Instant::now()
            } else {
                Instant::now() + opts.check_interval
            },
            check_before_write: !first_job,
        })
    }

    /// Checks the file for damage on this connection (a fault found is recorded).
    fn check_now(&self) -> Option<StoreFault> {
        match integrity::check(&self.conn) {
            Checked::Sound => None,
            Checked::Corrupt(detail) => {
                let f = StoreFault::new(FaultKind::Corrupt, self.watch.path(), detail);
                self.note(&f);
                Some(f)
            }
            Checked::NotRun(why) => {
                tracing::warn!(store = %self.watch.path().display(), error = %why, "the store's integrity check could not run");
                None
            }
        }
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a fault found. The first lasting one is kept; when the file was deleted or
    /// replaced, the state this connection still sees is saved beside it.
    fn note(&self, f: &StoreFault) {
        let mut g = self.faults();
        if !f.kind.lasts_until_restart() {
            // Read-only is looked at afresh each time (`refusal`), so it ends by itself.
            if f.kind != FaultKind::ReadOnly {
                g.passing = Some(f.clone());
            }
            return;
        }
        if g.lasting.is_some() {
            return;
        }
        g.lasting = Some(f.clone());
        drop(g);
        if matches!(f.kind, FaultKind::Deleted | FaultKind::Replaced) {
            self.rescue();
        }
    }

    /// Saves the last state this connection sees (of a file deleted or replaced under it: this
    /// copy may be the only one left) to `<store>.rescued-<unix time>`, and sets the log files
    /// of the file that is gone aside ([`Watch::set_aside_logs`]).
    fn rescue(&self) {
        let path = self.watch.path();
        let now = super::unix_now();
        let to = suffixed(path, &format!(".rescued-{now}"));
        match self
            .conn
            .execute("VACUUM INTO ?1", [to.to_string_lossy().as_ref()])
        {
            Ok(_) => tracing::warn!(
                store = %path.display(),
                saved_to = %to.display(),
                "the key store's file was deleted or replaced while open; its last state was saved: with the daemon stopped, move the copy to the store's path to keep it"
            ),
            Err(e) => tracing::error!(
                store = %path.display(),
                to = %to.display(),
                error = %e,
                "the key store's file was deleted or replaced while open, and its last state could not be saved"
            ),
        }
        match self.watch.set_aside_logs(&now.to_string()) {
            Ok(moved) if moved.is_empty() => {}
            Ok(moved) => tracing::warn!(
                store = %path.display(),
                moved_to = ?moved,
                "the write-ahead log and index of the file that is gone were moved aside, so no database put at the path replays them"
            ),
            Err(e) => tracing::error!(
                store = %path.display(),
                error = %e,
                "the write-ahead log of the file that is gone could not be moved aside: delete the store's -wal and -shm files before putting a database back at its path"
            ),
        }
    }

    /// The fault that refuses a change now: one that lasts, a moved file, a read-only one (or a
    /// connection SQLite opened read-only because the file was, at open).
    fn refusal(&self) -> Option<StoreFault> {
        if let Some(f) = self.faults().lasting.clone() {
            return Some(f);
        }
        if let Some(f) = self.watch.moved() {
            self.note(&f);
            return Some(f);
        }
        self.watch.read_only().or_else(|| {
            self.opened_read_only().then(|| {
                StoreFault::new(
                    FaultKind::ReadOnly,
                    self.watch.path(),
                    "it could not be written when it was opened, so it was opened for reading only",
                )
            })
        })
    }

    /// Whether SQLite opened the database for reading only (it does so, silently, when the file
    /// may not be written).
    fn opened_read_only(&self) -> bool {
        self.conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false)
    }

    /// Opens the database again for writing when it was opened read-only and may be written
    /// now (the same file still at the path).
    fn reopen_if_writable(&mut self) {
        if !self.opened_read_only()
            || self.faults().lasting.is_some()
            || self.watch.moved().is_some()
            || self.watch.read_only().is_some()
        {
            return;
        }
        match connect(self.watch.path()) {
            Ok(conn) if !conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) => {
                self.conn = conn;
                tracing::info!(store = %self.watch.path().display(), "the key store is writable now: opened again for writing");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(store = %self.watch.path().display(), error = %e, "the key store could not be opened again for writing");
            }
        }
    }

    /// A failed call's error: a fault (recorded) when it stands for one, else SQLite's error
    /// naming the file.
    fn failed(&self, e: StoreError) -> StoreError {
        let StoreError::Db(db) = e else { return e };
        let path = self.watch.path();
        match self.watch.moved().or_else(|| classify(path, &db)) {
            Some(f) => {
                self.note(&f);
                StoreError::Unavailable(f)
            }
            None => StoreError::Sqlite {
                path: path.to_path_buf(),
                source: db,
            },
        }
    }

    /// A read's result, its error naming the file.
    fn read<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| self.failed(e))
    }

    /// Runs one change, refused up front when the store cannot take it. A change that may
    /// spend the reserve and fails for a full disk is run again after each step of the reserve
    /// given back, until it commits or the reserve is spent.
    fn write<T>(
        &mut self,
        spend: Spend,
        mut op: impl FnMut(&mut Connection, Option<&Actor>) -> Result<T>,
    ) -> Result<T> {
        if let Some(f) = self.refusal() {
            return Err(StoreError::Unavailable(f));
        }
        if std::mem::take(&mut self.check_before_write)
            && let Some(f) = self.check_now()
        {
            return Err(StoreError::Unavailable(f));
        }
        loop {
            let e = match op(&mut self.conn, self.actor.as_ref()) {
                // The file went away while the change committed: it is in the copy saved from
                // this connection, but not at the path; no success is reported for it.
                Ok(_) if let Some(f) = self.watch.moved() => {
                    self.note(&f);
                    return Err(StoreError::Unavailable(f));
                }
                Ok(v) => {
                    let mut g = self.faults();
                    if g.passing.as_ref().is_some_and(|f| f.kind == FaultKind::Io) {
                        g.passing = None;
                    }
                    return Ok(v);
                }
                Err(e) => self.failed(e),
            };
            match &e {
                StoreError::Unavailable(f)
                    if f.kind == FaultKind::Full
                        && spend == Spend::Reserve
                        && spend_reserve(&self.reserve, f) => {}
                _ => return Err(e),
            }
        }
    }
}

/// Gives a step of the reserve back to the file system for a change that failed with `full`;
/// whether there was one to give.
fn spend_reserve(reserve: &Reserve, full: &StoreFault) -> bool {
    match reserve.release_step() {
        Ok(0) => {
            tracing::error!(
                store = %full.path.display(),
                reserve = %reserve.path().display(),
                "disk full and the space reserve is spent: the change is refused"
            );
            false
        }
        Ok(freed) => {
            tracing::warn!(
                store = %full.path.display(),
                reserve = %reserve.path().display(),
                freed_bytes = freed,
                left_bytes = reserve.held(),
                "disk full: gave part of the space reserve back to commit a change that takes access away; free space on this file system"
            );
            true
        }
        Err(e) => {
            tracing::error!(
                store = %full.path.display(),
                reserve = %reserve.path().display(),
                error = %e,
                "disk full and the space reserve cannot be given back: the change is refused"
            );
            false
        }
    }
}

impl SqliteStore {
    /// Sets SQLite's page cache size (KiB) for this connection: large for bulk loads, the
    /// default (2 MiB) for a daemon that should stay small.
    ///
    /// # Errors
    /// Database failures.
    pub fn set_cache_kib(&self, kib: u32) -> Result<()> {
        self.conn
            .pragma_update(None, "cache_size", -i64::from(kib))?;
        Ok(())
    }
}

impl KeyStore for SqliteStore {
    fn create_keys(&mut self, new: &[NewKey], now: i64) -> Result<Vec<CreatedKey>> {
        self.write(Spend::Never, |conn, actor| {
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(new.len());
            for n in new {
                let created = insert_key(&tx, n, now)?;
                let id = &created.view.key.id;
                audit_ok(&tx, actor, Action::KeyCreate, id, now)?;
                out.push(created);
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn find_key(&self, key: KeyRef<'_>) -> Result<Option<KeyView>> {
        self.read(view_by(&self.conn, key))
    }

    fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyView>> {
        let list = || -> Result<Vec<KeyView>> {
            let sql = format!("{SELECT_VIEW} WHERE ?1 IS NULL OR t.name = ?1 ORDER BY k.rowid");
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map([tenant], row_to_view)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        self.read(list())
    }

    fn revoke(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView> {
        self.write(Spend::Reserve, |conn, actor| {
            let tx = conn.transaction()?;
            let v = must_view(&tx, key)?;
            if rules::revoke_changes(&v.key) {
                tx.execute(
                    "UPDATE keys SET status = 'revoked', revoked_at = ?1 WHERE id = ?2",
                    params![now, v.key.id],
                )?;
                set_rev(&tx, &v.key.id, now)?;
            }
            audit_ok(&tx, actor, Action::KeyRevoke, &v.key.id, now)?;
            let v = must_view(&tx, KeyRef::Id(&v.key.id))?;
            tx.commit()?;
            Ok(v)
        })
    }

    fn approve(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView> {
        self.write(Spend::Never, |conn, actor| {
            let tx = conn.transaction()?;
            let v = must_view(&tx, key)?;
            if rules::approve_changes(&v.key)? {
                tx.execute(
                    "UPDATE keys SET status = 'active' WHERE id = ?1",
                    [&v.key.id],
                )?;
                set_rev(&tx, &v.key.id, now)?;
            }
            audit_ok(&tx, actor, Action::KeyApprove, &v.key.id, now)?;
            let v = must_view(&tx, KeyRef::Id(&v.key.id))?;
            tx.commit()?;
            Ok(v)
        })
    }

    fn rotate(
        &mut self,
        key: KeyRef<'_>,
        grace: Duration,
        now: i64,
    ) -> Result<(KeyView, CreatedKey)> {
        self.write(Spend::Never, |conn, actor| {
            let tx = conn.transaction()?;
            let old = must_view(&tx, key)?;
            let k = &old.key;
            let new = rules::rotation_successor(&old, now)?;
            let mut created = insert_key(&tx, &new, now)?;
            tx.execute(
                "UPDATE keys SET grace_until = ?1, rotated_to = ?2 WHERE id = ?3",
                params![rules::grace_until(now, grace), created.view.key.id, k.id],
            )?;
            if credits::move_to_successor(&tx, &k.id, &created.view.key.id)? {
                created.view = must_view(&tx, KeyRef::Id(&created.view.key.id))?;
            }
            set_rev(&tx, &k.id, now)?;
            audit_ok(&tx, actor, Action::KeyRotate, &k.id, now)?;
            let old = must_view(&tx, KeyRef::Id(&k.id))?;
            tx.commit()?;
            Ok((old, created))
        })
    }

    fn lease_credits(&mut self, id: &str, want: u64) -> Result<Option<Lease>> {
        self.write(Spend::Never, |conn, _| credits::lease(conn, id, want))
    }

    fn return_credits(&mut self, id: &str, n: u64, due: Option<i64>) -> Result<()> {
        self.write(Spend::Never, |conn, _| credits::give_back(conn, id, n, due))
    }

    fn change_credits(
        &mut self,
        key: KeyRef<'_>,
        change: CreditChange,
        now: i64,
    ) -> Result<KeyView> {
        self.write(Spend::Never, |conn, actor| {
            let tx = conn.transaction()?;
            let v = must_view(&tx, key)?;
            credits::change(&tx, &v.key.id, change)?;
            set_rev(&tx, &v.key.id, now)?;
            audit_ok(&tx, actor, Action::KeyCredits, &v.key.id, now)?;
            let v = must_view(&tx, KeyRef::Id(&v.key.id))?;
            tx.commit()?;
            Ok(v)
        })
    }

    fn refill_credits(&mut self, now: i64) -> Result<Vec<String>> {
        self.write(Spend::Never, |conn, _| credits::refill(conn, now))
    }

    fn set_user_status(&mut self, user: &str, status: UserStatus, now: i64) -> Result<User> {
        let spend = match status {
            UserStatus::Suspended | UserStatus::Deleted => Spend::Reserve,
            UserStatus::Active => Spend::Never,
        };
        self.write(spend, |conn, actor| {
            let tx = conn.transaction()?;
            let u = user_by_name(&tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
            if rules::user_status_changes(&u, status)? {
                tx.execute(
                    "UPDATE users SET status = ?1, updated_at = ?2 WHERE id = ?3",
                    params![status.as_str(), now, u.id],
                )?;
                bump(&tx, now, &ChangeSubject::User(user.to_owned()))?;
            }
            let action = Action::user_status(status);
            audit_ok(&tx, actor, action, &u.name, now)?;
            tx.commit()?;
            Ok(User { status, ..u })
        })
    }

    fn for_each_key(
        &self,
        user: &mut dyn FnMut(&User),
        key: &mut dyn FnMut(&KeyRecord, i64),
    ) -> Result<u64> {
        let mut scan = || -> Result<u64> {
            let tx = self.conn.unchecked_transaction()?;
            let rev = read_revision(&tx)?;
            {
                let mut stmt = tx.prepare(SELECT_USERS)?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    user(&row_to_user(r)?);
                }
                let mut stmt = tx.prepare(SCAN_KEYS)?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    key(&row_to_record(r, SCAN_CREDITS)?, r.get(14)?);
                }
            }
            tx.commit()?;
            Ok(rev)
        };
        self.read(scan())
    }

    fn find_user(&self, name: &str) -> Result<Option<User>> {
        self.read(user_by_name(&self.conn, name))
    }

    fn revision(&self) -> Result<u64> {
        self.read(read_revision(&self.conn))
    }

    fn count_key_states(&self, now: i64) -> Result<Vec<(String, u64)>> {
        let count = || -> Result<Vec<(String, u64)>> {
            let mut stmt = self
                .conn
                .prepare(&super::rules::count_key_states_sql(now))?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (state, n) = row?;
                out.push((state, u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        };
        self.read(count())
    }

    fn changes_since(&self, revision: u64) -> Result<Vec<Change>> {
        let changes = || -> Result<Vec<Change>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT revision, at, kind, subject FROM changes WHERE revision > ?1 ORDER BY revision",
            )?;
            let rows = stmt.query_map([i64::try_from(revision).unwrap_or(i64::MAX)], |r| {
                let kind: String = r.get(2)?;
                let subject: String = r.get(3)?;
                Ok(Change {
                    revision: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                    at: r.get(1)?,
                    subject: match kind.as_str() {
                        "user" => ChangeSubject::User(subject),
                        "ban" => ChangeSubject::Ban(subject),
                        _ => ChangeSubject::Key(subject),
                    },
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        self.read(changes())
    }

    fn act_as(&mut self, actor: Option<Actor>) {
        self.actor = actor;
    }

    fn record_audit(&mut self, entry: &AuditEntry) -> Result<()> {
        self.write(Spend::Never, |conn, _| insert_audit(conn, entry))
    }

    fn audit_since(&self, since: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>> {
        let entries = || -> Result<Vec<AuditEntry>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, at, actor, action, object, result, host FROM (
                     SELECT * FROM audit WHERE ?1 IS NULL OR at >= ?1 ORDER BY id DESC LIMIT ?2
                 ) ORDER BY id",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![since, limit], row_to_audit)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        self.read(entries())
    }

    fn put_ban(&mut self, ban: &Ban) -> Result<u64> {
        let source = source_text(&ban.source);
        // An operator's ban may spend the reserve; auto-block's, many and unattended, may not.
        let spend = match ban.reason {
            BanReason::Manual => Spend::Reserve,
            BanReason::Autoblock => Spend::Never,
        };
        self.write(spend, |conn, _| {
            let tx = conn.transaction()?;
            let rev = bump(
                &tx,
                ban.created_at_ms / 1000,
                &ChangeSubject::Ban(source.clone()),
            )?;
            tx.prepare_cached(
                "INSERT INTO bans (source, reason, host, created_at, expires_at, lifted, revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)
                 ON CONFLICT (source) DO UPDATE SET reason = excluded.reason, host = excluded.host,
                     created_at = excluded.created_at, expires_at = excluded.expires_at,
                     lifted = 0, revision = excluded.revision",
            )?
            .execute(params![
                source,
                ban.reason.as_str(),
                ban.host,
                ban.created_at_ms,
                ban.expires_at_ms,
                i64::try_from(rev).unwrap_or(i64::MAX),
            ])?;
            tx.commit()?;
            Ok(rev)
        })
    }

    fn lift_ban(&mut self, source: &str, now_ms: i64) -> Result<Option<u64>> {
        self.write(Spend::Never, |conn, _| {
            let tx = conn.transaction()?;
            let holds: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM bans WHERE source = ?1 AND lifted = 0 AND expires_at > ?2)",
                params![source, now_ms],
                |r| r.get(0),
            )?;
            if !holds {
                return Ok(None);
            }
            let rev = bump(&tx, now_ms / 1000, &ChangeSubject::Ban(source.to_owned()))?;
            tx.execute(
                "UPDATE bans SET lifted = 1, expires_at = ?2, revision = ?3 WHERE source = ?1",
                params![source, now_ms, i64::try_from(rev).unwrap_or(i64::MAX)],
            )?;
            tx.commit()?;
            Ok(Some(rev))
        })
    }

    fn bans_since(&self, revision: u64) -> Result<Vec<BanRow>> {
        let bans = || -> Result<Vec<BanRow>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT source, reason, host, created_at, expires_at, lifted, revision FROM bans
                 WHERE revision > ?1 ORDER BY revision",
            )?;
            let rows = stmt.query_map([i64::try_from(revision).unwrap_or(i64::MAX)], |r| {
                let source: String = r.get(0)?;
                let reason: String = r.get(1)?;
                Ok(BanRow {
                    revision: r.get::<_, i64>(6)?.try_into().unwrap_or(0),
                    lifted: r.get(5)?,
                    ban: Ban {
                        source: crate::config::parse_cidr(&source)
                            .map_err(|m| corrupt(0, format!("ban source: {m}")))?,
                        reason: BanReason::parse(&reason)
                            .ok_or_else(|| corrupt(1, format!("ban reason {reason}")))?,
                        host: r.get(2)?,
                        created_at_ms: r.get(3)?,
                        expires_at_ms: r.get(4)?,
                    },
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        self.read(bans())
    }

    fn purge_bans(&mut self, before_ms: i64) -> Result<usize> {
        self.write(Spend::Never, |conn, _| {
            Ok(conn.execute("DELETE FROM bans WHERE expires_at < ?1", [before_ms])?)
        })
    }

    fn health(&mut self) -> Option<StoreFault> {
        self.reopen_if_writable();
        if let Some(f) = self.refusal() {
            return Some(f);
        }
        let room = match self.reserve.refill() {
            Ok(room) => room,
            Err(e) => {
                return Some(StoreFault::new(
                    FaultKind::Io,
                    self.watch.path(),
                    format!(
                        "the space reserve {} cannot be made: {e}",
                        self.reserve.path().display()
                    ),
                ));
            }
        };
        let want = self.reserve.want();
        let reserve = self.reserve.path().display();
        let mut g = self.faults();
        let short = |held: u64, free: u64| {
            StoreFault::new(
                FaultKind::Full,
                self.watch.path(),
                format!(
                    "{free} bytes are free and the space reserve {reserve} holds {held} of its {want} \
                     bytes; it is made whole again once the file system has room for it twice over"
                ),
            )
        };
        match (room, &g.passing) {
            (Room::Enough, Some(f)) if f.kind == FaultKind::Full => {
                g.passing = None;
                None
            }
            (Room::Short { held, free }, Some(f)) if f.kind == FaultKind::Full => {
                Some(short(held, free))
            }
            (_, Some(f)) => Some(f.clone()),
            (Room::Short { held, free }, None) if held < want => Some(short(held, free)),
            _ => None,
        }
    }

    fn integrity_job(&mut self) -> Option<IntegrityJob> {
        if self.faults().lasting.is_some() || Instant::now() < self.next_check {
            return None;
        }
        self.next_check = Instant::now() + self.check_interval;
        let path = self.watch.path().to_path_buf();
        let opened = self.watch.id();
        let faults = Arc::clone(&self.faults);
        Some(Box::new(move || {
            // Another file at the path is the watch's to report, not this check's.
            if FileId::of(&path).ok().flatten() != Some(opened) {
                return;
            }
            match integrity::check_file(&path) {
                Checked::Sound => {
                    tracing::debug!(store = %path.display(), "integrity check passed");
                }
                Checked::Corrupt(detail) => {
                    let mut g = faults.lock().unwrap_or_else(PoisonError::into_inner);
                    if g.lasting.is_none() {
                        g.lasting = Some(StoreFault::new(FaultKind::Corrupt, &path, detail));
                    }
                }
                Checked::NotRun(why) => {
                    tracing::warn!(store = %path.display(), error = %why, "the store's integrity check could not run");
                }
            }
        }))
    }
}

fn read_revision(conn: &Connection) -> Result<u64> {
    let rev: i64 = conn.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| {
        r.get(0)
    })?;
    u64::try_from(rev).map_err(|_| StoreError::Corrupt(format!("revision {rev}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrate::newest;

    fn small_reserve() -> Options {
        Options {
            reserve_bytes: 64 * 1024,
            ..Options::default()
        }
    }

    fn is_fault(e: &StoreError, kind: FaultKind) -> bool {
        matches!(e, StoreError::Unavailable(f) if f.kind == kind)
    }

    /// A store deleted under an open connection refuses changes naming its file and still
    /// answers reads; it saves its last state beside the path, and the next open does not
    /// recreate it empty but names the saved copy, which opens with the keys.
    #[test]
    fn a_deleted_store_refuses_changes_and_is_not_recreated_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let mut st = SqliteStore::open_with(&path, &small_reserve()).unwrap();
        let made = st
            .create_keys(&[NewKey::new("acme", "alice", "live")], 10)
            .unwrap();
        let id = made[0].view.key.id.clone();
        std::fs::remove_file(&path).unwrap();
        let e = st.revoke(KeyRef::Id(&id), 20).unwrap_err();
        assert!(is_fault(&e, FaultKind::Deleted), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let e = st
            .create_keys(&[NewKey::new("acme", "bob", "live")], 20)
            .unwrap_err();
        assert!(is_fault(&e, FaultKind::Deleted), "{e}");
        assert_eq!(st.list_keys(None).unwrap().len(), 1, "reads still answer");
        assert_eq!(st.health().map(|f| f.kind), Some(FaultKind::Deleted));
        let copies = rescued_copies(&path);
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert!(
            !wal_path(&path).exists() && !shm_path(&path).exists(),
            "the log of the file that is gone is set aside, never replayed into another"
        );
        drop(st);

        let e = SqliteStore::open(&path).unwrap_err();
        assert!(is_fault(&e, FaultKind::Deleted), "{e}");
        let text = e.to_string();
        assert!(text.contains("keys.db.reserve"), "{text}");
        assert!(text.contains(&copies[0].display().to_string()), "{text}");
        assert!(!path.exists(), "not recreated empty");

        std::fs::rename(&copies[0], &path).unwrap();
        let mut st = SqliteStore::open(&path).unwrap();
        let keys = st.list_keys(None).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key.status, KeyStatus::Active);
        st.revoke(KeyRef::Id(&id), 30).unwrap();
        assert_eq!(st.health(), None);
    }

    /// Another database moved over the path is seen as a replacement: changes are refused, and
    /// the store keeps reading the file it opened.
    #[test]
    fn a_replaced_store_refuses_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let mut st = SqliteStore::open_with(&path, &small_reserve()).unwrap();
        st.create_keys(&[NewKey::new("acme", "alice", "live")], 10)
            .unwrap();
        let other = dir.path().join("other.db");
        drop(SqliteStore::open_with(&other, &small_reserve()).unwrap());
        std::fs::rename(&other, &path).unwrap();
        let e = st
            .create_keys(&[NewKey::new("acme", "bob", "live")], 20)
            .unwrap_err();
        assert!(is_fault(&e, FaultKind::Replaced), "{e}");
        assert_eq!(st.list_keys(None).unwrap().len(), 1, "the file opened");
        assert_eq!(st.health().map(|f| f.kind), Some(FaultKind::Replaced));
    }

    /// Garbage over a store's pages is found before a command's first change, and by the
    /// daemon's integrity job; changes are refused from then on.
    #[test]
    fn a_damaged_store_is_found_at_open_and_by_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        {
            let mut st = SqliteStore::open_with(&path, &small_reserve()).unwrap();
            let many: Vec<NewKey> = (0..300)
                .map(|i| NewKey::new("acme", format!("user{i}"), "live"))
                .collect();
            st.create_keys(&many, 10).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 8 * 4096, "{len}");
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::io::{Seek, SeekFrom, Write};
        f.seek(SeekFrom::Start(4096 * 2)).unwrap();
        f.write_all(&vec![0x5a; usize::try_from(len).unwrap() - 4096 * 3])
            .unwrap();
        drop(f);

        let mut st = SqliteStore::open_with(&path, &small_reserve()).unwrap();
        let e = st
            .create_keys(&[NewKey::new("acme", "bob", "live")], 20)
            .unwrap_err();
        assert!(is_fault(&e, FaultKind::Corrupt), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        drop(st);

        let later = Options {
            check: CheckAt::FirstJob,
            ..small_reserve()
        };
        let mut st = SqliteStore::open_with(&path, &later).unwrap();
        let job = st.integrity_job().expect("the first check is due at once");
        job();
        assert_eq!(st.health().map(|f| f.kind), Some(FaultKind::Corrupt));
        assert!(st.integrity_job().is_none(), "no check of a file known bad");
        let e = st.revoke(KeyRef::Id("key_000000000000"), 20).unwrap_err();
        assert!(is_fault(&e, FaultKind::Corrupt), "{e}");
    }

    /// A database an older build left (before the audit trail) is upgraded in place when
    /// opened: its keys stay, the audit table is there and works.
    #[test]
    fn a_database_from_before_the_audit_trail_upgrades_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            schema::migrate_with(&mut conn, &schema::MIGRATIONS[..1]).unwrap();
            let v: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, 1);
            let audit_tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'audit'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(audit_tables, 0);
        }
        {
            // An older build's store, used as it was: keys and all.
            let mut old = SqliteStore {
                conn: Connection::open(&path).unwrap(),
                actor: None,
                watch: Watch::new(&path).unwrap(),
                reserve: Reserve::beside(&path, 0),
                faults: Arc::default(),
                check_interval: Duration::from_secs(600),
                next_check: Instant::now(),
                check_before_write: false,
            };
            old.create_keys(&[NewKey::new("acme", "alice", "live")], 10)
                .unwrap_err();
            // This build reads columns a version-1 store lacks: the row goes in as that build
            // wrote it.
            old.conn
                .execute_batch(
                    "INSERT INTO tenants (id, name, created_at) VALUES (1, 'acme', 10);
                     INSERT INTO users (id, tenant_id, name, status, created_at, updated_at)
                         VALUES (1, 1, 'alice', 'active', 10, 10);
                     INSERT INTO keys (id, hash, user_id, env, scopes, allow_cidrs, status,
                         created_at, updated_rev)
                         VALUES ('key_000000000001', zeroblob(32), 1, 'live', '', '', 'active',
                             10, 1);",
                )
                .unwrap();
        }
        let mut st = SqliteStore::open(&path).unwrap();
        let v: i64 = st
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, i64::from(newest(schema::MIGRATIONS)));
        assert_eq!(st.list_keys(None).unwrap().len(), 1);
        assert!(st.audit_since(None, 10).unwrap().is_empty());
        // The old key is not usage-limited, and can be made so (the credit columns are there).
        let old_key = KeyRef::Id("key_000000000001");
        assert_eq!(st.find_key(old_key).unwrap().unwrap().key.credits, None);
        let v = st
            .change_credits(old_key, CreditChange::Add(5), 15)
            .unwrap();
        assert_eq!(v.key.credits.map(|c| c.remaining), Some(5));
        let by = Actor::cli("root", None);
        st.act_as(Some(by.clone()));
        let made = st
            .create_keys(&[NewKey::new("acme", "alice", "live")], 20)
            .unwrap();
        st.act_as(None);
        st.revoke(KeyRef::Id(&made[0].view.key.id), 30).unwrap();
        let trail = st.audit_since(None, 10).unwrap();
        assert_eq!(
            trail.len(),
            1,
            "only the change made as an actor: {trail:?}"
        );
        assert_eq!(
            (
                trail[0].actor.as_str(),
                trail[0].action.as_str(),
                trail[0].object.as_str()
            ),
            ("cli:root", "key.create", made[0].view.key.id.as_str())
        );
    }
}
