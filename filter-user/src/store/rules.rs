//! The business rules of the key store, written once for every backend: what a new key may
//! look like, who may own it, which state changes are allowed (deletion is final, a revoked key
//! stays revoked), and what a rotation creates. A backend reads the current rows, asks these
//! functions, and writes what they say inside its transaction.

use std::time::Duration;

use super::ids::new_secret;
use super::model::{
    KeyHash, KeyRecord, KeyRef, KeyStatus, KeyView, NewKey, Secret, User, UserStatus,
};
use super::{Result, StoreError};
use crate::names::{self, NameKind};

/// Checks a new key's tenant and user names, scopes ([`crate::names`]) and environment, then
/// makes its secret and hash. Every backend calls it before it writes a key, so no key is
/// stored for a name that breaks its rule, whoever asks.
///
/// # Errors
/// [`StoreError::InvalidName`] for a tenant, user or scope that breaks its rule;
/// [`StoreError::Conflict`] for an environment that is not 1 to 8 lowercase letters.
pub fn new_key_secret(new: &NewKey) -> Result<(Secret, KeyHash)> {
    names::check(NameKind::Tenant, &new.tenant)?;
    names::check(NameKind::User, &new.user)?;
    for s in &new.scopes {
        names::check(NameKind::Scope, s)?;
    }
    new_secret(&new.env).ok_or_else(|| {
        StoreError::Conflict(format!(
            "environment `{}` must be 1 to 8 lowercase letters",
            printable_env(&new.env)
        ))
    })
}

/// An environment as an error may repeat it: short, control characters as `?`.
fn printable_env(env: &str) -> String {
    env.chars()
        .take(16)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Whether existing user `u` may own a new key for `tenant`.
///
/// # Errors
/// [`StoreError::Conflict`] when `u` belongs to another tenant or is deleted.
pub fn check_key_owner(u: &User, tenant: &str) -> Result<()> {
    if u.tenant != tenant {
        return Err(StoreError::Conflict(format!(
            "user {} belongs to tenant {}, not {tenant}",
            u.name, u.tenant
        )));
    }
    if u.status == UserStatus::Deleted {
        return Err(StoreError::Conflict(format!(
            "user {} is deleted; it cannot get new keys",
            u.name
        )));
    }
    Ok(())
}

/// Whether revoking `k` changes it (revoking is idempotent).
#[must_use]
pub fn revoke_changes(k: &KeyRecord) -> bool {
    k.status != KeyStatus::Revoked
}

/// Whether approving `k` changes it (approving an active key does nothing).
///
/// # Errors
/// [`StoreError::Conflict`] when `k` is revoked.
pub fn approve_changes(k: &KeyRecord) -> Result<bool> {
    match k.status {
        KeyStatus::Revoked => Err(StoreError::Conflict(format!(
            "{} is revoked; create a new key instead",
            k.id
        ))),
        KeyStatus::Active => Ok(false),
        KeyStatus::Pending => Ok(true),
    }
}

/// Whether setting `u`'s state to `to` changes it.
///
/// # Errors
/// [`StoreError::Conflict`] when `u` is deleted and `to` is not: deletion is final.
pub fn user_status_changes(u: &User, to: UserStatus) -> Result<bool> {
    if u.status == UserStatus::Deleted && to != UserStatus::Deleted {
        return Err(StoreError::Conflict(format!(
            "user {} is deleted; deletion is final",
            u.name
        )));
    }
    Ok(u.status != to)
}

/// The key a rotation creates for `old` at `now` (same owner, scopes, networks, limit and
/// lifetime), or why `old` cannot be rotated.
///
/// # Errors
/// [`StoreError::Conflict`] when `old` is revoked or was already rotated.
pub fn rotation_successor(old: &KeyView, now: i64) -> Result<NewKey> {
    let k = &old.key;
    if k.status == KeyStatus::Revoked {
        return Err(StoreError::Conflict(format!(
            "{} is revoked; create a new key with `edgefilter keys create`",
            k.id
        )));
    }
    if let Some(to) = &k.rotated_to {
        return Err(StoreError::Conflict(format!(
            "{} was already rotated to {to}",
            k.id
        )));
    }
    let lifetime = k.expires_at.map(|e| (e - k.created_at).max(0));
    Ok(NewKey {
        tenant: old.user.tenant.clone(),
        user: old.user.name.clone(),
        env: k.env.clone(),
        scopes: k.scopes.clone(),
        not_before: None,
        expires_at: lifetime.map(|l| now.saturating_add(l)),
        allow_cidrs: k.allow_cidrs.clone(),
        rate: k.rate,
        // The store moves the credits over (the old key keeps only what a daemon holds).
        credits: None,
        refill: None,
        pending: k.status == KeyStatus::Pending,
    })
}

/// Until when a key rotated at `now` keeps working.
#[must_use]
pub fn grace_until(now: i64, grace: Duration) -> i64 {
    now.saturating_add(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX))
}

/// The error for a key that is not there (a full key is never echoed).
#[must_use]
pub fn no_such_key(key: KeyRef<'_>) -> StoreError {
    StoreError::NoSuchKey(match key {
        KeyRef::Id(id) => id.to_owned(),
        KeyRef::Hash(_) => "matching the given key".to_owned(),
    })
}

/// Every state [`key_state`] can answer, in the order `edgefilter_keys{status}` lists them.
pub const KEY_STATES: [&str; 9] = [
    "active",
    "pending",
    "in_grace",
    "not_yet_valid",
    "expired",
    "rotated",
    "revoked",
    "suspended",
    "deleted",
];

/// What the key amounts to now: revoked, rotated, expired, the user's inactive status,
/// not yet valid, in its rotation grace, or else its stored status.
/// [`key_state_sql`] is the same rule for a database to count with.
#[must_use]
pub fn key_state(v: &KeyView, now: i64) -> &'static str {
    let k = &v.key;
    if k.status == KeyStatus::Revoked {
        "revoked"
    } else if k.grace_until.is_some_and(|g| now >= g) {
        "rotated"
    } else if k.expires_at.is_some_and(|e| now >= e) {
        "expired"
    } else if v.user.status != UserStatus::Active {
        v.user.status.as_str()
    } else if k.not_before.is_some_and(|nb| now < nb) {
        "not_yet_valid"
    } else if k.grace_until.is_some() {
        "in_grace"
    } else {
        k.status.as_str()
    }
}

/// [`key_state`] as an SQL expression over `keys k JOIN users u` at `now` (unix seconds), in
/// the SQL that SQLite and PostgreSQL share; a store counts keys per state with it
/// (`edgefilter_keys{status}`) without reading every row out.
#[must_use]
pub fn key_state_sql(now: i64) -> String {
    format!(
        "CASE WHEN k.status = 'revoked' THEN 'revoked' \
         WHEN k.grace_until IS NOT NULL AND k.grace_until <= {now} THEN 'rotated' \
         WHEN k.expires_at IS NOT NULL AND k.expires_at <= {now} THEN 'expired' \
         WHEN u.status <> 'active' THEN u.status \
         WHEN k.not_before IS NOT NULL AND k.not_before > {now} THEN 'not_yet_valid' \
         WHEN k.grace_until IS NOT NULL THEN 'in_grace' \
         ELSE k.status END"
    )
}

/// The query that counts keys per state at `now`: rows of (state, count).
#[must_use]
pub fn count_key_states_sql(now: i64) -> String {
    format!(
        "SELECT {} AS state, count(*) FROM keys k JOIN users u ON u.id = k.user_id GROUP BY state",
        key_state_sql(now)
    )
}
