//! The PostgreSQL store's migrations: its SQL, and its bookkeeping for the shared runner
//! ([`migrate::run`]): versions recorded in an `edgefilter_schema` table, every step in one
//! transaction under an advisory lock, so several hosts starting at once migrate exactly once.

use std::future::Future;

use tokio_postgres::{Client, Transaction};

use super::PgError;
use crate::store::migrate::{self, Migration, TooNew};

/// Advisory-lock id serialising migrations.
const MIGRATE_LOCK: i64 = 0x6566_6d69; // "efmi"

/// Advisory-lock id serialising change appends (see the trigger in migration 1).
pub const CHANGES_LOCK: i64 = 0x6566_6368; // "efch"

/// The change log. Revisions come from a sequence, but are assigned by a trigger that first
/// takes a transaction-scoped advisory lock: appends are serialised across every host, so
/// revisions commit in increasing order and a reader that has seen revision N has seen every
/// revision below N. Rows inserted by hand (`INSERT INTO changes (kind, payload) ...`) get the
/// same treatment, including the `NOTIFY` delivered at commit.
const CHANGES_V1: &str = r"
CREATE SEQUENCE changes_revision_seq AS bigint;
CREATE TABLE changes (
    revision     bigint PRIMARY KEY,
    kind         text NOT NULL,
    payload      jsonb NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER SEQUENCE changes_revision_seq OWNED BY changes.revision;
CREATE FUNCTION edgefilter_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1701208936);
    NEW.revision := nextval('changes_revision_seq');
    NEW.committed_at := clock_timestamp();
    PERFORM pg_notify('edgefilter_changes', NEW.revision::text);
    RETURN NEW;
END
$$;
CREATE TRIGGER changes_stamp BEFORE INSERT ON changes
    FOR EACH ROW EXECUTE FUNCTION edgefilter_stamp_change();
";

/// The key store's tables, the same shape as the SQLite store's: times in unix seconds, only
/// the SHA-256 of a key (`hash`, 32 bytes), scopes and CIDRs as text arrays. `seq` keeps the
/// creation order (`keys list`, oldest first).
const KEYS_V2: &str = r"
CREATE TABLE tenants (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at bigint NOT NULL
);
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES tenants(id),
    name       text NOT NULL UNIQUE,
    status     text NOT NULL CHECK (status IN ('active', 'suspended', 'deleted')),
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);
CREATE TABLE keys (
    seq         bigserial NOT NULL UNIQUE,
    id          text PRIMARY KEY,
    hash        bytea NOT NULL UNIQUE CHECK (length(hash) = 32),
    user_id     bigint NOT NULL REFERENCES users(id),
    env         text NOT NULL,
    scopes      text[] NOT NULL,
    not_before  bigint,
    expires_at  bigint,
    allow_cidrs text[] NOT NULL,
    rate        bigint CHECK (rate >= 0),
    burst       bigint CHECK (burst >= 0),
    status      text NOT NULL CHECK (status IN ('pending', 'active', 'revoked')),
    revoked_at  bigint,
    grace_until bigint,
    rotated_to  text,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL
);
CREATE INDEX keys_user ON keys(user_id);
";

/// The audit trail: who changed what, when, on which host, and how it ended. Entries are not
/// changes: they take no revision and send no `NOTIFY`.
const AUDIT_V3: &str = r"
CREATE TABLE audit (
    id     bigserial PRIMARY KEY,
    at     bigint NOT NULL,
    actor  text NOT NULL,
    action text NOT NULL,
    object text NOT NULL,
    result text NOT NULL,
    host   text NOT NULL
);
CREATE INDEX audit_at ON audit (at);
";

/// The denylist shared by the fleet: one row per banned source (times in unix milliseconds),
/// `revision` the change that last wrote it, a lifted ban kept as a tombstone until purged.
const BANS_V4: &str = r"
CREATE TABLE bans (
    source     text PRIMARY KEY,
    reason     text NOT NULL CHECK (reason IN ('autoblock', 'manual')),
    host       text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    lifted     boolean NOT NULL DEFAULT false,
    revision   bigint NOT NULL
);
CREATE INDEX bans_revision ON bans (revision);
";

/// Usage-limited keys, the same columns as the SQLite store's: credits the store still holds
/// (NULL: not limited), the refill and when it is next due (unix seconds).
const CREDITS_V5: &str = r"
ALTER TABLE keys ADD COLUMN credits_remaining bigint
    CHECK (credits_remaining IS NULL OR credits_remaining >= 0);
ALTER TABLE keys ADD COLUMN refill_amount bigint CHECK (refill_amount >= 0);
ALTER TABLE keys ADD COLUMN refill_period text CHECK (refill_period IN ('hour', 'day', 'month'));
ALTER TABLE keys ADD COLUMN refill_due bigint;
CREATE INDEX keys_refill_due ON keys (refill_due) WHERE refill_due IS NOT NULL;
";

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "changes log with serialised revisions and NOTIFY",
        sql: CHANGES_V1,
    },
    Migration {
        version: 2,
        name: "tenants, users and keys (SHA-256 only)",
        sql: KEYS_V2,
    },
    Migration {
        version: 3,
        name: "audit trail",
        sql: AUDIT_V3,
    },
    Migration {
        version: 4,
        name: "denylist bans shared by the fleet",
        sql: BANS_V4,
    },
    Migration {
        version: 5,
        name: "credits of usage-limited keys",
        sql: CREDITS_V5,
    },
];

impl From<TooNew> for PgError {
    fn from(TooNew { found, known }: TooNew) -> Self {
        let narrow = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
        Self::SchemaTooNew {
            found: narrow(found),
            known: narrow(known),
        }
    }
}

/// The database as the runner sees it: one transaction holding the migration lock.
struct Postgres<'t>(&'t Transaction<'t>);

impl migrate::Schema for Postgres<'_> {
    type Error = PgError;

    fn version(&mut self) -> impl Future<Output = Result<i64, PgError>> + Send {
        let tx = self.0;
        async move {
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS edgefilter_schema (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await?;
            let found: i32 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM edgefilter_schema",
                    &[],
                )
                .await?
                .get(0);
            Ok(i64::from(found))
        }
    }

    fn apply(&mut self, m: &Migration) -> impl Future<Output = Result<(), PgError>> + Send {
        let tx = self.0;
        let m = *m;
        async move {
            tx.batch_execute(m.sql).await?;
            tx.execute(
                "INSERT INTO edgefilter_schema (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await?;
            tracing::info!(
                version = m.version,
                name = m.name,
                "postgres schema migrated"
            );
            Ok(())
        }
    }
}

/// Brings the schema to the newest version, every step in one transaction under an advisory
/// lock (so several hosts starting at once migrate exactly once); returns that version.
///
/// # Errors
/// [`PgError`] on a database error, or when the database is newer than this binary.
pub async fn migrate(client: &mut Client) -> Result<i32, PgError> {
    migrate_with(client, MIGRATIONS).await
}

/// [`migrate`] to the newest version in `list` (a prefix of [`MIGRATIONS`] makes a database as
/// an older build left it, for upgrade tests).
///
/// # Errors
/// [`PgError`] on a database error, or when the database is newer than `list`.
pub async fn migrate_with(client: &mut Client, list: &[Migration]) -> Result<i32, PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    let known = migrate::run(&mut Postgres(&tx), list).await?;
    tx.commit().await?;
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_the_trigger_uses_the_changes_lock() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(MIGRATIONS[0].version, 1);
        assert!(CHANGES_V1.contains(&format!("pg_advisory_xact_lock({CHANGES_LOCK})")));
        assert!(CHANGES_V1.contains(&format!("pg_notify('{}'", super::super::CHANNEL)));
    }
}
