//! PostgreSQL fleet-mode mechanics (SPEC §11): schema migrations, the `changes` log whose every
//! row bumps the store revision and `NOTIFY`s, and the [`ChangeFollower`] that every edge host
//! runs to apply changes in revision order and catch up after any disconnect.
//!
//! Key and user tables are not here: a `PgKeyStore` writes its rows and calls
//! [`append_change`] in the same transaction, so the change and its announcement commit together.

pub mod follower;
pub mod log;
pub mod schema;
pub mod tls;

pub use follower::{ChangeFollower, FollowerConfig, FollowerStatus};
pub use log::{ChangeRow, append_change, changes_since, current_revision};
pub use schema::{MIGRATIONS, Migration, migrate};

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
) -> Result<tokio_postgres::Client, PgError> {
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
