//! The change log: append a change (bumping the store revision, announced by `NOTIFY` at
//! commit) and read changes after a revision, in order.

use std::time::SystemTime;

use serde_json::Value;
use tokio_postgres::GenericClient;

use super::PgError;

/// One committed change.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    /// Store revision (strictly increasing; gaps are possible after rolled-back appends).
    pub revision: u64,
    /// What changed, e.g. `key.revoke` (the store's change kind).
    pub kind: String,
    /// The change itself (the store's serialised change).
    pub payload: Value,
    /// When it was written (database clock).
    pub committed_at: SystemTime,
}

/// Appends a change and returns its revision. Inside a transaction (`client` being a
/// `Transaction`), call it as the last statement before commit: it takes the global append lock
/// until commit, and the `NOTIFY` goes out only when the transaction commits.
///
/// # Errors
/// [`PgError::Db`] (e.g. the database is unreachable: nothing was appended).
pub async fn append_change(
    client: &impl GenericClient,
    kind: &str,
    payload: &Value,
) -> Result<u64, PgError> {
    let row = client
        .query_one(
            "INSERT INTO changes (kind, payload) VALUES ($1, $2) RETURNING revision",
            &[&kind, payload],
        )
        .await?;
    Ok(to_rev(row.get(0)))
}

/// Up to `limit` changes with a revision above `after`, in revision order.
///
/// # Errors
/// [`PgError::Db`].
pub async fn changes_since(
    client: &impl GenericClient,
    after: u64,
    limit: i64,
) -> Result<Vec<ChangeRow>, PgError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT revision, kind, payload, committed_at FROM changes
             WHERE revision > $1 ORDER BY revision LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ChangeRow {
            revision: to_rev(r.get(0)),
            kind: r.get(1),
            payload: r.get(2),
            committed_at: r.get(3),
        })
        .collect())
}

/// The newest revision (0 when the log is empty).
///
/// # Errors
/// [`PgError::Db`].
pub async fn current_revision(client: &impl GenericClient) -> Result<u64, PgError> {
    let row = client
        .query_one("SELECT COALESCE(MAX(revision), 0) FROM changes", &[])
        .await?;
    Ok(to_rev(row.get(0)))
}

fn to_rev(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
