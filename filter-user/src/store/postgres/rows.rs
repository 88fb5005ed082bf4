//! SQL for the PostgreSQL key store: row decoding and the write steps of each change, every
//! one run inside the caller's transaction and ending with a `changes` append.

use serde_json::json;
use tokio_postgres::{Client, Row};

use super::{PgError, append_change};
use crate::store::audit::{self, Action, Actor, AuditEntry};
use crate::store::credits::{CreditChange, Credits, Lease, Refill, RefillPeriod};
use crate::store::ids::new_key_id;
use crate::store::model::{
    CreatedKey, KeyHash, KeyRecord, KeyRef, KeyStatus, KeyView, NewKey, RateLimit, User, UserStatus,
};
use crate::store::{Result, StoreError, rules};

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Key columns 0..=13, then the user's id, name, status and tenant (14..=17).
pub const SELECT_VIEW: &str = "SELECT k.id, k.hash, k.env, k.scopes, k.not_before, k.expires_at,
        k.allow_cidrs, k.rate, k.burst, k.status, k.revoked_at, k.grace_until, k.rotated_to,
        k.created_at, u.id, u.name, u.status, t.name,
        k.credits_remaining, k.refill_amount, k.refill_period, k.refill_due
     FROM keys k JOIN users u ON u.id = k.user_id JOIN tenants t ON t.id = u.tenant_id";

/// Where [`SELECT_VIEW`]'s credit columns start.
const VIEW_CREDITS: usize = 18;
/// Where [`SCAN_KEYS`]'s credit columns start.
pub const SCAN_CREDITS: usize = 16;

/// Key columns 0..=13, the user id (14) and the creation order (15), a page after a `seq`.
pub const SCAN_KEYS: &str = "SELECT k.id, k.hash, k.env, k.scopes, k.not_before, k.expires_at,
        k.allow_cidrs, k.rate, k.burst, k.status, k.revoked_at, k.grace_until, k.rotated_to,
        k.created_at, k.user_id, k.seq,
        k.credits_remaining, k.refill_amount, k.refill_period, k.refill_due
     FROM keys k WHERE k.seq > $1 ORDER BY k.seq LIMIT $2";

/// Users with their tenant, a page after an id.
pub const SCAN_USERS: &str = "SELECT u.id, u.name, u.status, t.name FROM users u
     JOIN tenants t ON t.id = u.tenant_id WHERE u.id > $1 ORDER BY u.id LIMIT $2";

const SELECT_USER: &str = "SELECT u.id, u.name, u.status, t.name FROM users u
     JOIN tenants t ON t.id = u.tenant_id WHERE u.name = $1";

/// A database error as a store error (classified later: reachable or not).
pub fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(PgError::Db(e))
}

fn col<'a, T: tokio_postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    r.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

fn u32_col(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

/// Decodes the credit columns from `at`: remaining, refill amount, period, due.
fn to_credits(r: &Row, at: usize) -> Result<Option<Credits>> {
    let Some(remaining) = col::<Option<i64>>(r, at)? else {
        return Ok(None);
    };
    let amount: Option<i64> = col(r, at + 1)?;
    let period: Option<&str> = col(r, at + 2)?;
    let refill = match (amount, period) {
        (Some(amount), Some(p)) => Some(Refill {
            amount: u64::try_from(amount).unwrap_or(0),
            period: RefillPeriod::parse(p)
                .ok_or_else(|| StoreError::Corrupt(format!("refill period {p}")))?,
        }),
        _ => None,
    };
    Ok(Some(Credits {
        remaining: u64::try_from(remaining).unwrap_or(0),
        refill,
        refill_due: col(r, at + 3)?,
    }))
}

/// Decodes key columns 0..=13, and the credit columns from `credits`.
pub fn to_record_at(r: &Row, credits: usize) -> Result<KeyRecord> {
    let mut rec = to_record(r)?;
    rec.credits = to_credits(r, credits)?;
    Ok(rec)
}

/// Decodes key columns 0..=13 (no credits).
fn to_record(r: &Row) -> Result<KeyRecord> {
    let hash: &[u8] = col(r, 1)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt("hash is not 32 bytes".into()))?;
    let cidrs: Vec<String> = col(r, 6)?;
    let allow_cidrs = cidrs
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|_| StoreError::Corrupt(format!("bad CIDR {c}")))
        })
        .collect::<Result<_>>()?;
    let rate = match (u32_col(col(r, 7)?), u32_col(col(r, 8)?)) {
        (Some(per_sec), Some(burst)) => Some(RateLimit { per_sec, burst }),
        _ => None,
    };
    let status: &str = col(r, 9)?;
    Ok(KeyRecord {
        id: col(r, 0)?,
        hash: KeyHash(hash),
        env: col(r, 2)?,
        scopes: col(r, 3)?,
        not_before: col(r, 4)?,
        expires_at: col(r, 5)?,
        allow_cidrs,
        rate,
        credits: None,
        status: KeyStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("key status {status}")))?,
        revoked_at: col(r, 10)?,
        grace_until: col(r, 11)?,
        rotated_to: col(r, 12)?,
        created_at: col(r, 13)?,
    })
}

fn user_status(s: &str) -> Result<UserStatus> {
    UserStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("user status {s}")))
}

/// Decodes a user row of [`SCAN_USERS`].
pub fn to_user(r: &Row) -> Result<User> {
    Ok(User {
        id: col(r, 0)?,
        name: col(r, 1)?,
        status: user_status(col(r, 2)?)?,
        tenant: col(r, 3)?,
    })
}

/// Decodes a row of [`SELECT_VIEW`].
pub fn to_view(r: &Row) -> Result<KeyView> {
    Ok(KeyView {
        key: to_record_at(r, VIEW_CREDITS)?,
        user: User {
            id: col(r, 14)?,
            name: col(r, 15)?,
            status: user_status(col(r, 16)?)?,
            tenant: col(r, 17)?,
        },
    })
}

/// A key by id or hash; `lock` takes its row lock until commit (for a change).
pub async fn view_by(c: &Client, key: KeyRef<'_>, lock: bool) -> Result<Option<KeyView>> {
    let tail = if lock { " FOR UPDATE OF k" } else { "" };
    let row = match key {
        KeyRef::Id(id) => {
            c.query_opt(&format!("{SELECT_VIEW} WHERE k.id = $1{tail}"), &[&id])
                .await
        }
        KeyRef::Hash(h) => {
            c.query_opt(
                &format!("{SELECT_VIEW} WHERE k.hash = $1{tail}"),
                &[&&h.0[..]],
            )
            .await
        }
    }
    .map_err(pg)?;
    row.as_ref().map(to_view).transpose()
}

/// Like [`view_by`], but a missing key is an error.
pub async fn must_view(c: &Client, key: KeyRef<'_>, lock: bool) -> Result<KeyView> {
    view_by(c, key, lock)
        .await?
        .ok_or_else(|| rules::no_such_key(key))
}

/// A user by name; `lock` takes its row lock.
pub async fn user_by_name(c: &Client, name: &str, lock: bool) -> Result<Option<User>> {
    let sql = if lock {
        format!("{SELECT_USER} FOR UPDATE OF u")
    } else {
        SELECT_USER.to_owned()
    };
    let row = c.query_opt(&sql, &[&name]).await.map_err(pg)?;
    row.as_ref().map(to_user).transpose()
}

/// Appends a change about a key (bumps the revision; `NOTIFY` at commit).
pub async fn log_key(c: &Client, kind: &str, id: &str) -> Result<u64> {
    Ok(append_change(c, kind, &json!({ "key_id": id })).await?)
}

/// Appends a change about a user.
pub async fn log_user(c: &Client, kind: &str, name: &str) -> Result<u64> {
    Ok(append_change(c, kind, &json!({ "user": name })).await?)
}

/// Appends `e` to the audit trail (no revision, no `NOTIFY`).
pub async fn insert_audit(c: &Client, e: &AuditEntry) -> Result<()> {
    audit::check(e)?;
    c.execute(
        "INSERT INTO audit (at, actor, action, object, result, host)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&e.at, &e.actor, &e.action, &e.object, &e.result, &e.host],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Records, inside the change's transaction, a change made on behalf of `by` (none: nothing).
pub async fn audit_ok(
    c: &Client,
    by: Option<&Actor>,
    action: Action,
    object: &str,
    now: i64,
) -> Result<()> {
    match by {
        Some(by) => insert_audit(c, &AuditEntry::ok(now, by, action, object)).await,
        None => Ok(()),
    }
}

/// Decodes a row of `SELECT id, at, actor, action, object, result, host FROM audit`.
pub fn to_audit(r: &Row) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: u64::try_from(col::<i64>(r, 0)?).unwrap_or(0),
        at: col(r, 1)?,
        actor: col(r, 2)?,
        action: col(r, 3)?,
        object: col(r, 4)?,
        result: col(r, 5)?,
        host: col(r, 6)?,
    })
}

/// The user to own a new key: created (with its tenant) when new.
async fn ensure_user(c: &Client, tenant: &str, user: &str, now: i64) -> Result<i64> {
    c.execute(
        "INSERT INTO tenants (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&tenant, &now],
    )
    .await
    .map_err(pg)?;
    c.execute(
        "INSERT INTO users (tenant_id, name, status, created_at, updated_at)
         SELECT id, $2, 'active', $3, $3 FROM tenants WHERE name = $1
         ON CONFLICT (name) DO NOTHING",
        &[&tenant, &user, &now],
    )
    .await
    .map_err(pg)?;
    let u = user_by_name(c, user, true)
        .await?
        .ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
    rules::check_key_owner(&u, tenant)?;
    Ok(u.id)
}

/// Inserts a new key and logs `key.create`.
pub async fn insert_key(c: &Client, new: &NewKey, now: i64) -> Result<CreatedKey> {
    let (secret, hash) = rules::new_key_secret(new)?;
    let user_id = ensure_user(c, &new.tenant, &new.user, now).await?;
    let id = new_key_id();
    let cidrs: Vec<String> = new.allow_cidrs.iter().map(ToString::to_string).collect();
    let status = if new.pending { "pending" } else { "active" };
    c.execute(
        "INSERT INTO keys (id, hash, user_id, env, scopes, not_before, expires_at, allow_cidrs,
             rate, burst, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
        &[
            &id,
            &&hash.0[..],
            &user_id,
            &new.env,
            &new.scopes,
            &new.not_before,
            &new.expires_at,
            &cidrs,
            &new.rate.map(|r| i64::from(r.per_sec)),
            &new.rate.map(|r| i64::from(r.burst)),
            &status,
            &now,
        ],
    )
    .await
    .map_err(pg)?;
    if let Some(remaining) = new.credits {
        let cr = Credits::new(remaining, new.refill, now);
        c.execute(
            "UPDATE keys SET credits_remaining = $1, refill_amount = $2, refill_period = $3,
                 refill_due = $4 WHERE id = $5",
            &[
                &to_i64(cr.remaining),
                &cr.refill.map(|r| to_i64(r.amount)),
                &cr.refill.map(|r| r.period.as_str()),
                &cr.refill_due,
                &id,
            ],
        )
        .await
        .map_err(pg)?;
    }
    log_key(c, "key.create", &id).await?;
    Ok(CreatedKey {
        view: must_view(c, KeyRef::Id(&id), false).await?,
        secret,
    })
}

/// Takes up to `want` credits of key `id` (row-locked until commit). `None`: no such key, or
/// not usage-limited.
pub async fn lease_credits(c: &Client, id: &str, want: u64) -> Result<Option<Lease>> {
    let row = c
        .query_opt(
            "SELECT credits_remaining, refill_due FROM keys WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(pg)?;
    let Some(row) = row else { return Ok(None) };
    let Some(remaining) = col::<Option<i64>>(&row, 0)? else {
        return Ok(None);
    };
    let remaining = u64::try_from(remaining).unwrap_or(0);
    let granted = want.min(remaining);
    if granted > 0 {
        c.execute(
            "UPDATE keys SET credits_remaining = $1 WHERE id = $2",
            &[&to_i64(remaining - granted), &id],
        )
        .await
        .map_err(pg)?;
    }
    Ok(Some(Lease {
        granted,
        left: remaining - granted,
        refill_due: col(&row, 1)?,
    }))
}

/// Gives `n` leased credits back unless the key was refilled since (`due` moved).
pub async fn return_credits(c: &Client, id: &str, n: u64, due: Option<i64>) -> Result<()> {
    c.execute(
        "UPDATE keys SET credits_remaining = credits_remaining + $1
         WHERE id = $2 AND credits_remaining IS NOT NULL AND refill_due IS NOT DISTINCT FROM $3",
        &[&to_i64(n), &id, &due],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Sets or adds to the credits of key `id` (in the caller's transaction).
pub async fn change_credits(c: &Client, id: &str, change: CreditChange) -> Result<()> {
    let cap = i64::MAX / 2;
    let (sql, n) = match change {
        CreditChange::Set(n) => (
            "UPDATE keys SET credits_remaining = LEAST($1::bigint, $3::bigint) WHERE id = $2",
            to_i64(n),
        ),
        CreditChange::Add(n) => (
            "UPDATE keys SET credits_remaining =
                 LEAST(COALESCE(credits_remaining, 0) + $1::bigint, $3::bigint) WHERE id = $2",
            to_i64(n),
        ),
    };
    c.execute(sql, &[&n, &id, &cap]).await.map_err(pg)?;
    Ok(())
}

/// Resets every due key's credits to its refill amount (row-locked); returns their ids.
pub async fn refill_credits(c: &Client, now: i64) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT id, refill_period FROM keys
             WHERE refill_due IS NOT NULL AND refill_due <= $1 AND status <> 'revoked'
             FOR UPDATE",
            &[&now],
        )
        .await
        .map_err(pg)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = col(r, 0)?;
        let period: &str = col(r, 1)?;
        let period = RefillPeriod::parse(period)
            .ok_or_else(|| StoreError::Corrupt(format!("refill period of {id}")))?;
        c.execute(
            "UPDATE keys SET credits_remaining = refill_amount, refill_due = $1 WHERE id = $2",
            &[&period.next_boundary(now), &id],
        )
        .await
        .map_err(pg)?;
        out.push(id);
    }
    Ok(out)
}

/// A rotation moves the old key's credits to its successor; whether it had any.
pub async fn move_credits(c: &Client, old: &str, new: &str) -> Result<bool> {
    let moved = c
        .execute(
            "UPDATE keys n SET credits_remaining = o.credits_remaining,
                 refill_amount = o.refill_amount, refill_period = o.refill_period,
                 refill_due = o.refill_due
             FROM keys o WHERE o.id = $1 AND n.id = $2 AND o.credits_remaining IS NOT NULL",
            &[&old, &new],
        )
        .await
        .map_err(pg)?;
    if moved > 0 {
        c.execute(
            "UPDATE keys SET credits_remaining = 0 WHERE id = $1",
            &[&old],
        )
        .await
        .map_err(pg)?;
    }
    Ok(moved > 0)
}
