//! PostgreSQL fleet-mode mechanics (SPEC §11): schema migrations, the `changes` log whose every
//! row bumps the store revision and `NOTIFY`s, and the [`ChangeFollower`] that every edge host
//! runs to apply changes in revision order and catch up after any disconnect.
//!
//! Key and user tables are not here: a `PgKeyStore` writes its rows and calls
//! [`append_change`] in the same transaction, so the change and its announcement commit together.

pub mod follower;
pub mod log;
pub mod schema;

pub use follower::{ChangeFollower, FollowerConfig, FollowerStatus};
pub use log::{ChangeRow, append_change, changes_since, current_revision};
pub use schema::{MIGRATIONS, Migration, migrate};

/// The `LISTEN`/`NOTIFY` channel; the payload is the new revision in decimal.
pub const CHANNEL: &str = "edgefilter_changes";

/// PostgreSQL store failures.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database refused, failed, or could not be reached.
    #[error("postgres: {0}")]
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
) -> Result<tokio_postgres::Client, PgError> {
    let mut cfg: tokio_postgres::Config = url.parse().map_err(PgError::Url)?;
    cfg.connect_timeout(timeout);
    let (client, conn) = tokio::time::timeout(timeout, cfg.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| PgError::Timeout(timeout))??;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}
