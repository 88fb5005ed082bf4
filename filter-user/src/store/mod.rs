//! All storage: the [`KeyStore`] trait, its records, [`open`], and the two backends, the
//! embedded SQLite store ([`sqlite`]) and the PostgreSQL store of fleet mode ([`postgres`]:
//! key store, change log, follower, TLS). The business rules both backends obey live once in
//! [`rules`], the audit trail's in [`audit`], the migration runner once in [`migrate`].
//!
//! Every change commits in one transaction that also bumps the store revision and appends a
//! row to the change log, so a host that saw revision R catches up with [`KeyStore::changes_since`],
//! and, when an actor is set ([`KeyStore::act_as`]), writes its audit entry.
//! Only SHA-256 hashes of keys are stored, never a key.
//!
//! A store that cannot take changes (its file deleted, replaced, corrupt, read-only, its disk
//! full) refuses them with a [`StoreFault`] naming the file, and reports it through
//! [`KeyStore::health`] for `/readyz`.

use std::path::PathBuf;
use std::time::Duration;

pub mod audit;
pub mod bans;
pub mod credits;
pub mod fault;
pub mod ids;
pub mod migrate;
pub mod model;
pub mod postgres;
pub mod rules;
pub mod sqlite;
pub mod timefmt;

pub use audit::{Action, Actor, AuditEntry};
pub use bans::{Ban, BanReason, BanRow};
pub use credits::{CreditChange, Credits, Lease, Refill, RefillPeriod};
pub use fault::{FaultKind, StoreFault};
pub use model::{
    Change, ChangeSubject, CreatedKey, KeyHash, KeyRecord, KeyRef, KeyStatus, KeyView, NewKey,
    RateLimit, Secret, User, UserStatus,
};
pub use sqlite::SqliteStore;

use crate::config::{Config, StoreKind, ValueProblem};
use crate::names::NameError;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(#[from] rusqlite::Error),
    /// The SQLite store at `path` failed.
    #[error("key store {}: {source}", path.display())]
    Sqlite {
        /// The store's file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The store cannot take changes (deleted, replaced, corrupt, read-only, full).
    #[error("{0}. {hint}", hint = .0.hint())]
    Unavailable(StoreFault),
    /// The database directory could not be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store at `path` could not be opened (for a failure whose own text does not name
    /// the file, such as [`Self::TooNew`]).
    #[error("key store {}: {source}", path.display())]
    Open {
        /// The store's file.
        path: PathBuf,
        /// What failed.
        source: Box<StoreError>,
    },
    /// The database was written by a newer edgefilter.
    #[error("store schema version {found} is newer than this edgefilter knows ({known})")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version known here.
        known: i64,
    },
    /// The configured backend is not available in this build.
    #[error("store.kind = \"{0}\" is not supported yet")]
    Unsupported(&'static str),
    /// No key with that id (or key).
    #[error("no key {0}")]
    NoSuchKey(String),
    /// No user with that name.
    #[error("no user {0}")]
    NoSuchUser(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The PostgreSQL store failed or could not be reached (fleet mode).
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
    /// A stored row does not decode.
    #[error("corrupt store row: {0}")]
    Corrupt(String),
    /// An audit entry breaks the rules of [`audit::check`].
    #[error("invalid audit entry: {0}")]
    BadAuditEntry(&'static str),
    /// A tenant name, user name or scope breaks its rule ([`crate::names`]).
    #[error(transparent)]
    InvalidName(#[from] NameError),
}

impl StoreError {
    /// A short code for the kind of failure, as the admin API names it (`NOT_FOUND`,
    /// `CONFLICT`, `INVALID_NAME`, `STORE_UNAVAILABLE`; `STORE_ERROR` for the rest).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoSuchKey(_) | Self::NoSuchUser(_) => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::InvalidName(_) => "INVALID_NAME",
            Self::Postgres(_) | Self::Unavailable(_) => "STORE_UNAVAILABLE",
            _ => "STORE_ERROR",
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A key store backend. All writes are transactional and durable when they return.
pub trait KeyStore: Send {
    /// Creates keys in one transaction; returns each record with its secret (shown once).
    ///
    /// # Errors
    /// Conflicts (user in another tenant, deleted user) and database failures.
    fn create_keys(&mut self, new: &[NewKey], now: i64) -> Result<Vec<CreatedKey>>;

    /// Finds a key by id or by full key.
    ///
    /// # Errors
    /// Database failures.
    fn find_key(&self, key: KeyRef<'_>) -> Result<Option<KeyView>>;

    /// Every key, optionally of one tenant, oldest first.
    ///
    /// # Errors
    /// Database failures.
    fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyView>>;

    /// Revokes a key (idempotent).
    ///
    /// # Errors
    /// Unknown key, database failures.
    fn revoke(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView>;

    /// Approves a pending key.
    ///
    /// # Errors
    /// Unknown or revoked key, database failures.
    fn approve(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView>;

    /// Creates a replacement key; the old one keeps working for `grace`, then answers
    /// `KEY_REVOKED`. Returns the old key's new state and the new key.
    ///
    /// # Errors
    /// Unknown, revoked or already rotated key, database failures.
    fn rotate(
        &mut self,
        key: KeyRef<'_>,
        grace: Duration,
        now: i64,
    ) -> Result<(KeyView, CreatedKey)>;

    /// Sets a user's state (deleted is final).
    ///
    /// # Errors
    /// Unknown user, re-activating a deleted user, database failures.
    fn set_user_status(&mut self, user: &str, status: UserStatus, now: i64) -> Result<User>;

    /// Streams every user, then every key with its user's id, from one consistent snapshot;
    /// returns its revision. (Users first, so a loader can join without a second copy.)
    ///
    /// # Errors
    /// Database failures.
    fn for_each_key(
        &self,
        user: &mut dyn FnMut(&User),
        key: &mut dyn FnMut(&KeyRecord, i64),
    ) -> Result<u64>;

    /// How many keys are in each [`rules::key_state`] at `now` (`edgefilter_keys{status}`),
    /// counted by the database; states with no key are left out.
    ///
    /// # Errors
    /// Database failures.
    fn count_key_states(&self, now: i64) -> Result<Vec<(String, u64)>>;

    /// A user by name.
    ///
    /// # Errors
    /// Database failures.
    fn find_user(&self, name: &str) -> Result<Option<User>>;

    /// The current revision (0 for an empty store).
    ///
    /// # Errors
    /// Database failures.
    fn revision(&self) -> Result<u64>;

    /// Every change after `revision`, in order.
    ///
    /// # Errors
    /// Database failures.
    fn changes_since(&self, revision: u64) -> Result<Vec<Change>>;

    /// Makes the following changes on behalf of `actor`: each one that is made writes its
    /// audit entry (result [`audit::OK`]) in its own transaction. `None` (the default for a
    /// store just opened) records nothing, e.g. for bulk loads.
    fn act_as(&mut self, actor: Option<Actor>);

    /// Appends one entry to the audit trail (a refused change, or a change made outside the
    /// store such as the XDP allowlist). Does not change the revision.
    ///
    /// # Errors
    /// An entry that breaks [`audit::check`], database failures.
    fn record_audit(&mut self, entry: &AuditEntry) -> Result<()>;

    /// The newest `limit` audit entries made at or after `since` (unix seconds; `None`: any
    /// time), oldest first.
    ///
    /// # Errors
    /// Database failures.
    fn audit_since(&self, since: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>>;

    /// Puts `ban` on the denylist (replacing any ban of its source) as one change; returns the
    /// change's revision. Not audited here: the caller records it (a ban is not a key change).
    ///
    /// # Errors
    /// Database failures.
    fn put_ban(&mut self, ban: &Ban) -> Result<u64>;

    /// Lifts the ban of `source` ([`bans::source_text`]) as one change, leaving a tombstone;
    /// returns the revision, or `None` when no ban of it holds at `now_ms`.
    ///
    /// # Errors
    /// Database failures.
    fn lift_ban(&mut self, source: &str, now_ms: i64) -> Result<Option<u64>>;

    /// Every ban written or lifted after `revision` (0: every ban in the table), in revision
    /// order.
    ///
    /// # Errors
    /// Database failures, a row that does not decode.
    fn bans_since(&self, revision: u64) -> Result<Vec<BanRow>>;

    /// Deletes the bans that expired, or were lifted, before `before_ms`; returns how many.
    ///
    /// # Errors
    /// Database failures.
    fn purge_bans(&mut self, before_ms: i64) -> Result<usize>;

    /// Takes up to `want` credits of the usage-limited key `id` for this daemon to spend, as one
    /// durable decrement. `None`: no such key, or not usage-limited.
    ///
    /// # Errors
    /// Database failures.
    fn lease_credits(&mut self, id: &str, want: u64) -> Result<Option<Lease>>;

    /// Gives back `n` unspent credits of a lease taken while the key's refill was due at `due`;
    /// nothing when the key was refilled since (its old credits are gone).
    ///
    /// # Errors
    /// Database failures.
    fn return_credits(&mut self, id: &str, n: u64, due: Option<i64>) -> Result<()>;

    /// `keys credits --set N | --add N`, as one change (revision, audit entry).
    ///
    /// # Errors
    /// Unknown key, database failures.
    fn change_credits(
        &mut self,
        key: KeyRef<'_>,
        change: CreditChange,
        now: i64,
    ) -> Result<KeyView>;

    /// Resets the credits of every key whose refill is due at `now` (the refill clock,
    /// [`credits::credit_now`]) to its refill amount; returns their ids.
    ///
    /// # Errors
    /// Database failures.
    fn refill_credits(&mut self, now: i64) -> Result<Vec<String>>;

    /// Whether the store can take changes, checked cheaply (a few `stat`s; a daemon calls it
    /// on each watcher round): the fault in force, if any. A backend without such faults (the
    /// PostgreSQL store, whose outages are fail-static) answers `None`.
    fn health(&mut self) -> Option<StoreFault> {
        None
    }

    /// The periodic deep check (SQLite: `PRAGMA quick_check` on a connection of its own), when
    /// one is due: a job the caller runs without holding anything the store's users need, which
    /// records what it finds for the next [`KeyStore::health`]. `None`: nothing due.
    fn integrity_job(&mut self) -> Option<IntegrityJob> {
        None
    }
}

/// A deep check of a store, run apart from the store (see [`KeyStore::integrity_job`]).
pub type IntegrityJob = Box<dyn FnOnce() + Send>;

/// Opens the configured store (`store.kind`, `store.path` resolved against the config file)
/// for a command: a SQLite store is checked (`PRAGMA quick_check`) before its first change.
///
/// # Errors
/// Unsupported backend, unopenable or missing (where a store was) database, failed migration.
pub fn open(cfg: &Config) -> Result<Box<dyn KeyStore>> {
    open_with(cfg, sqlite::CheckAt::FirstWrite)
}

/// [`open`] for the daemon: a SQLite store's first integrity check is left to the first
/// [`KeyStore::integrity_job`], so serving does not wait for a scan of the whole file.
///
/// # Errors
/// As [`open`].
pub fn open_for_daemon(cfg: &Config) -> Result<Box<dyn KeyStore>> {
    open_with(cfg, sqlite::CheckAt::FirstJob)
}

fn open_with(cfg: &Config, check: sqlite::CheckAt) -> Result<Box<dyn KeyStore>> {
    match cfg.store.kind {
        StoreKind::Sqlite => Ok(Box::new(SqliteStore::open_with(
            &cfg.resolve(&cfg.store.path),
            &sqlite::Options {
                reserve_bytes: cfg.store.reserve_bytes,
                check_interval: cfg.store.check_interval,
                check,
            },
        )?)),
        StoreKind::Postgres => Ok(Box::new(postgres::PgKeyStore::open(
            cfg.store.url.as_deref().unwrap_or_default(),
        )?)),
    }
}

/// The store's part of config validation (a [`crate::config::LayerCheck`]): a PostgreSQL
/// `store.url` must be a `postgres://` URL that parses, with a readable `sslrootcert`.
#[must_use]
pub fn check_config(cfg: &Config) -> Vec<ValueProblem> {
    let url = match (&cfg.store.kind, &cfg.store.url) {
        (StoreKind::Postgres, Some(url)) => url,
        _ => return Vec::new(),
    };
    let problem = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        postgres::tls::check(url).err().map(|e| e.to_string())
    } else {
        Some("store.url must start with postgres:// or postgresql://".into())
    };
    problem
        .map(|message| ValueProblem::at(&["store", "url"], message))
        .into_iter()
        .collect()
}

/// The current time in unix seconds.
#[must_use]
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The store's `store.url` checks, reported by config validation on the value's line.
    #[test]
    fn a_bad_store_url_is_a_config_problem_on_its_line() {
        let minimal = "[xdp]\ninterfaces = [\"lo\"]\nallow = [\"127.0.0.0/8\"]\n";
        for (url, needle) in [
            (
                "postgres://db/k?sslrootcert=/nonexistent/ca.pem",
                "sslrootcert /nonexistent/ca.pem",
            ),
            ("postgres://db/k?sslmode=sometimes", "store.url"),
            ("mysql://db/k", "must start with postgres://"),
        ] {
            let text = format!("{minimal}[store]\nkind = \"postgres\"\nurl = \"{url}\"\n");
            let problems = Config::parse_with(&text, Path::new("/etc/edgefilter"), &[check_config])
                .expect_err(url);
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert!(problems[0].message.contains(needle), "{url}: {problems:?}");
            assert_eq!(problems[0].line, 6, "{url}: {problems:?}");
        }
        let good = format!("{minimal}[store]\nkind = \"postgres\"\nurl = \"postgres://db/k\"\n");
        assert!(Config::parse_with(&good, Path::new("/"), &[check_config]).is_ok());
    }
}
