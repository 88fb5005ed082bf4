//! Versioned SQLite schema migrations, tracked in `PRAGMA user_version`.

use rusqlite::Connection;

use crate::store::{Result, StoreError};

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: tenants, users, keys (hash only), revision counter and change log.
    "CREATE TABLE meta (
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
     );",
];

/// Newest schema version this build knows.
#[allow(clippy::cast_possible_wrap)] // a handful of migrations
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`VERSION`], one transaction per step.
///
/// # Errors
/// A newer schema than known, or a failed step.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let mut current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > VERSION {
        return Err(StoreError::TooNew {
            found: current,
            known: VERSION,
        });
    }
    while current < VERSION {
        let tx = conn.transaction()?;
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)] // 0 <= current < len
        tx.execute_batch(MIGRATIONS[current as usize])?;
        current += 1;
        tx.pragma_update(None, "user_version", current)?;
        tx.commit()?;
    }
    Ok(())
}
