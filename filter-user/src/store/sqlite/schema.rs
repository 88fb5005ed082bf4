//! The SQLite store's migrations: its SQL, and its bookkeeping for the shared runner
//! ([`migrate::run`]): the version lives in `PRAGMA user_version`, each step in its own
//! transaction.

use std::future::{Future, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use rusqlite::Connection;

use crate::store::migrate::{self, Migration, TooNew};
use crate::store::{Result, StoreError};

/// Tenants, users, keys (hash only), revision counter and change log.
const KEYS_V1: &str = "CREATE TABLE meta (
         name  TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     );
     INSERT INTO meta (name, value) VALUES ('revision', 0);
     CREATE TABLE tenants (
         id         INTEGER PRIMARY KEY,
         name       TEXT NOT NULL UNIQUE,
         created_at INTEGER NOT NULL
     );
     CREATE TABLE users (
         id         INTEGER PRIMARY KEY,
         tenant_id  INTEGER NOT NULL REFERENCES tenants(id),
         name       TEXT NOT NULL UNIQUE,
         status     TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'deleted')),
         created_at INTEGER NOT NULL,
         updated_at INTEGER NOT NULL
     );
     CREATE TABLE keys (
         id          TEXT PRIMARY KEY,
         hash        BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
         user_id     INTEGER NOT NULL REFERENCES users(id),
         env         TEXT NOT NULL,
         scopes      TEXT NOT NULL,
         not_before  INTEGER,
         expires_at  INTEGER,
         allow_cidrs TEXT NOT NULL,
         rate        INTEGER,
         burst       INTEGER,
         status      TEXT NOT NULL CHECK (status IN ('pending', 'active', 'revoked')),
         revoked_at  INTEGER,
         grace_until INTEGER,
         rotated_to  TEXT,
         created_at  INTEGER NOT NULL,
         updated_rev INTEGER NOT NULL
     );
     CREATE INDEX keys_user ON keys(user_id);
     CREATE TABLE changes (
         revision INTEGER PRIMARY KEY,
         at       INTEGER NOT NULL,
         kind     TEXT NOT NULL CHECK (kind IN ('key', 'user')),
         subject  TEXT NOT NULL
     );";

/// The audit trail: who changed what, when, on which host, and how it ended. `AUTOINCREMENT`
/// so an id is never reused, even after the newest rows are deleted.
const AUDIT_V2: &str = "CREATE TABLE audit (
         id     INTEGER PRIMARY KEY AUTOINCREMENT,
         at     INTEGER NOT NULL,
         actor  TEXT NOT NULL,
         action TEXT NOT NULL,
         object TEXT NOT NULL,
         result TEXT NOT NULL,
         host   TEXT NOT NULL
     );
     CREATE INDEX audit_at ON audit(at);";

/// The denylist's bans (times in unix milliseconds; a lifted ban is kept as a tombstone until
/// purged), and the change log rebuilt so a ban is a change like any other (`kind = 'ban'`,
/// `subject` = the source). SQLite cannot widen a CHECK in place: the log is copied.
const BANS_V3: &str = "CREATE TABLE changes_v3 (
         revision INTEGER PRIMARY KEY,
         at       INTEGER NOT NULL,
         kind     TEXT NOT NULL CHECK (kind IN ('key', 'user', 'ban')),
         subject  TEXT NOT NULL
     );
     INSERT INTO changes_v3 (revision, at, kind, subject)
         SELECT revision, at, kind, subject FROM changes;
     DROP TABLE changes;
     ALTER TABLE changes_v3 RENAME TO changes;
     CREATE TABLE bans (
         source     TEXT PRIMARY KEY,
         reason     TEXT NOT NULL CHECK (reason IN ('autoblock', 'manual')),
         host       TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         expires_at INTEGER NOT NULL,
         lifted     INTEGER NOT NULL DEFAULT 0 CHECK (lifted IN (0, 1)),
         revision   INTEGER NOT NULL
     );
     CREATE INDEX bans_revision ON bans(revision);";

/// Usage-limited keys: credits the store still holds (NULL: not limited), the refill (amount and
/// period) and when it is next due (unix seconds).
const CREDITS_V4: &str = "ALTER TABLE keys ADD COLUMN credits_remaining INTEGER
         CHECK (credits_remaining IS NULL OR credits_remaining >= 0);
     ALTER TABLE keys ADD COLUMN refill_amount INTEGER CHECK (refill_amount >= 0);
     ALTER TABLE keys ADD COLUMN refill_period TEXT
         CHECK (refill_period IN ('hour', 'day', 'month'));
     ALTER TABLE keys ADD COLUMN refill_due INTEGER;
     CREATE INDEX keys_refill_due ON keys(refill_due) WHERE refill_due IS NOT NULL;";

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "tenants, users, keys (hash only), revision counter and change log",
        sql: KEYS_V1,
    },
    Migration {
        version: 2,
        name: "audit trail",
        sql: AUDIT_V2,
    },
    Migration {
        version: 3,
        name: "denylist bans, as changes",
        sql: BANS_V3,
    },
    Migration {
        version: 4,
        name: "credits of usage-limited keys",
        sql: CREDITS_V4,
    },
];

/// Newest schema version this build knows.
pub const VERSION: i64 = migrate::newest(MIGRATIONS) as i64;

impl From<TooNew> for StoreError {
    fn from(TooNew { found, known }: TooNew) -> Self {
        Self::TooNew { found, known }
    }
}

/// A SQLite database as the runner sees it. Its steps are synchronous: each future is ready.
struct Sqlite<'c>(&'c mut Connection);

impl migrate::Schema for Sqlite<'_> {
    type Error = StoreError;

    fn version(&mut self) -> impl Future<Output = Result<i64>> + Send {
        ready(
            self.0
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(StoreError::from),
        )
    }

    fn apply(&mut self, m: &Migration) -> impl Future<Output = Result<()>> + Send {
        ready(apply(self.0, m))
    }
}

/// Runs `m` and sets `user_version` to its version, in one transaction.
fn apply(conn: &mut Connection, m: &Migration) -> Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(m.sql)?;
    tx.pragma_update(None, "user_version", m.version)?;
    tx.commit()?;
    Ok(())
}

/// Brings the database to [`VERSION`], one transaction per step.
///
/// # Errors
/// A newer schema than known, or a failed step.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    migrate_with(conn, MIGRATIONS)
}

/// Brings the database to the newest version in `list` (a prefix of [`MIGRATIONS`] makes a
/// database as an older build left it, for upgrade tests).
///
/// # Errors
/// A newer schema than `list` knows, or a failed step.
pub fn migrate_with(conn: &mut Connection, list: &[Migration]) -> Result<()> {
    let mut db = Sqlite(conn);
    let run = pin!(migrate::run(&mut db, list));
    // Every step is a ready future, so the runner finishes on its first poll.
    match run.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(done) => done.map(|_| ()),
        Poll::Pending => unreachable!("SQLite migration steps never wait"),
    }
}
