//! The PostgreSQL denylist: bans in the `bans` table, each write or lift one change in the
//! change log (so it bumps the revision and is announced with `NOTIFY`, and every host reads it
//! with `bans_since`), a lifted ban kept as a tombstone until purged.

use serde_json::json;
use tokio_postgres::{Client, Row};

use super::append_change;
use super::rows::pg;
use crate::store::bans::{Ban, BanReason, BanRow, source_text};
use crate::store::{Result, StoreError};

/// Writes `ban` (replacing any ban of its source) and logs it; returns the revision.
pub async fn put(c: &Client, ban: &Ban) -> Result<u64> {
    let source = source_text(&ban.source);
    let rev = append_change(c, "ban.add", &json!({ "ban": source })).await?;
    c.execute(
        "INSERT INTO bans (source, reason, host, created_at, expires_at, lifted, revision)
         VALUES ($1, $2, $3, $4, $5, false, $6)
         ON CONFLICT (source) DO UPDATE SET reason = excluded.reason, host = excluded.host,
             created_at = excluded.created_at, expires_at = excluded.expires_at,
             lifted = false, revision = excluded.revision",
        &[
            &source,
            &ban.reason.as_str(),
            &ban.host,
            &ban.created_at_ms,
            &ban.expires_at_ms,
            &i64::try_from(rev).unwrap_or(i64::MAX),
        ],
    )
    .await
    .map_err(pg)?;
    Ok(rev)
}

/// Lifts the ban of `source` if one holds at `now_ms` (the row locked first); returns the
/// revision of the change, or `None`.
pub async fn lift(c: &Client, source: &str, now_ms: i64) -> Result<Option<u64>> {
    let holds = c
        .query_opt(
            "SELECT 1 FROM bans WHERE source = $1 AND NOT lifted AND expires_at > $2 FOR UPDATE",
            &[&source, &now_ms],
        )
        .await
        .map_err(pg)?
        .is_some();
    if !holds {
        return Ok(None);
    }
    let rev = append_change(c, "ban.remove", &json!({ "ban": source })).await?;
    c.execute(
        "UPDATE bans SET lifted = true, expires_at = $2, revision = $3 WHERE source = $1",
        &[&source, &now_ms, &i64::try_from(rev).unwrap_or(i64::MAX)],
    )
    .await
    .map_err(pg)?;
    Ok(Some(rev))
}

/// Every ban row with a revision above `after`, in revision order.
pub async fn since(c: &Client, after: u64) -> Result<Vec<BanRow>> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT source, reason, host, created_at, expires_at, lifted, revision FROM bans
             WHERE revision > $1 ORDER BY revision",
            &[&after],
        )
        .await
        .map_err(pg)?;
    rows.iter().map(to_row).collect()
}

/// Deletes bans that expired (or were lifted) before `before_ms`.
pub async fn purge(c: &Client, before_ms: i64) -> Result<usize> {
    let n = c
        .execute("DELETE FROM bans WHERE expires_at < $1", &[&before_ms])
        .await
        .map_err(pg)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn to_row(r: &Row) -> Result<BanRow> {
    let get = |e: tokio_postgres::Error| StoreError::Corrupt(format!("bans row: {e}"));
    let source: String = r.try_get(0).map_err(get)?;
    let reason: String = r.try_get(1).map_err(get)?;
    let revision: i64 = r.try_get(6).map_err(get)?;
    Ok(BanRow {
        revision: u64::try_from(revision).unwrap_or(0),
        lifted: r.try_get(5).map_err(get)?,
        ban: Ban {
            source: crate::config::parse_cidr(&source)
                .map_err(|m| StoreError::Corrupt(format!("ban source: {m}")))?,
            reason: BanReason::parse(&reason)
                .ok_or_else(|| StoreError::Corrupt(format!("ban reason {reason}")))?,
            host: r.try_get(2).map_err(get)?,
            created_at_ms: r.try_get(3).map_err(get)?,
            expires_at_ms: r.try_get(4).map_err(get)?,
        },
    })
}
