//! The SQLite store's credits of usage-limited keys: decoding them, a new key's, moving them to
//! a rotated key's successor, leases taken and given back, operator changes and refills. Each
//! write is one statement or one transaction: a lease is a durable decrement.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::corrupt;
use crate::store::credits::{CreditChange, Credits, Lease, Refill, RefillPeriod};
use crate::store::model::NewKey;
use crate::store::{Result, StoreError};

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The credit columns `credits_remaining, refill_amount, refill_period, refill_due` from `at`.
pub(super) fn decode(r: &Row<'_>, at: usize) -> rusqlite::Result<Option<Credits>> {
    let Some(remaining) = r.get::<_, Option<i64>>(at)? else {
        return Ok(None);
    };
    let refill = match (
        r.get::<_, Option<i64>>(at + 1)?,
        r.get::<_, Option<String>>(at + 2)?,
    ) {
        (Some(amount), Some(p)) => Some(Refill {
            amount: to_u64(amount),
            period: RefillPeriod::parse(&p)
                .ok_or_else(|| corrupt(at + 2, format!("refill period {p}")))?,
        }),
        _ => None,
    };
    Ok(Some(Credits {
        remaining: to_u64(remaining),
        refill,
        refill_due: r.get(at + 3)?,
    }))
}

/// Writes a new key's credits (nothing for a key without).
pub(super) fn set_new(tx: &Transaction<'_>, id: &str, new: &NewKey, now: i64) -> Result<()> {
    let Some(remaining) = new.credits else {
        return Ok(());
    };
    let c = Credits::new(remaining, new.refill, now);
    tx.prepare_cached(
        "UPDATE keys SET credits_remaining = ?1, refill_amount = ?2, refill_period = ?3,
             refill_due = ?4 WHERE id = ?5",
    )?
    .execute(params![
        to_i64(c.remaining),
        c.refill.map(|r| to_i64(r.amount)),
        c.refill.map(|r| r.period.as_str()),
        c.refill_due,
        id
    ])?;
    Ok(())
}

/// A rotation moves the old key's credits (and refill) to its successor; the old key keeps
/// none in the store. Whether it had any.
pub(super) fn move_to_successor(tx: &Transaction<'_>, old: &str, new: &str) -> Result<bool> {
    let moved = tx.execute(
        "UPDATE keys SET (credits_remaining, refill_amount, refill_period, refill_due) =
             (SELECT credits_remaining, refill_amount, refill_period, refill_due
              FROM keys WHERE id = ?1)
         WHERE id = ?2 AND (SELECT credits_remaining FROM keys WHERE id = ?1) IS NOT NULL",
        params![old, new],
    )?;
    if moved > 0 {
        tx.execute("UPDATE keys SET credits_remaining = 0 WHERE id = ?1", [old])?;
    }
    Ok(moved > 0)
}

/// Takes up to `want` credits of key `id`, in one immediate transaction. `None`: no such key,
/// or not usage-limited.
pub(super) fn lease(conn: &mut Connection, id: &str, want: u64) -> Result<Option<Lease>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let row: Option<(Option<i64>, Option<i64>)> = tx
        .prepare_cached("SELECT credits_remaining, refill_due FROM keys WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((Some(remaining), refill_due)) = row else {
        return Ok(None);
    };
    let remaining = to_u64(remaining);
    let granted = want.min(remaining);
    if granted > 0 {
        tx.prepare_cached("UPDATE keys SET credits_remaining = ?1 WHERE id = ?2")?
            .execute(params![to_i64(remaining - granted), id])?;
    }
    tx.commit()?;
    Ok(Some(Lease {
        granted,
        left: remaining - granted,
        refill_due,
    }))
}

/// Gives `n` unspent leased credits back, unless the key was refilled since the lease (then
/// its period's credits are fresh and the old ones are gone).
pub(super) fn give_back(conn: &Connection, id: &str, n: u64, due: Option<i64>) -> Result<()> {
    conn.prepare_cached(
        "UPDATE keys SET credits_remaining = credits_remaining + ?1
         WHERE id = ?2 AND credits_remaining IS NOT NULL AND refill_due IS ?3",
    )?
    .execute(params![to_i64(n), id, due])?;
    Ok(())
}

/// Sets or adds to a key's credits (a key without becomes usage-limited). Whether the key is
/// there.
pub(super) fn change(tx: &Transaction<'_>, id: &str, change: CreditChange) -> Result<bool> {
    let n = match change {
        CreditChange::Set(n) => tx.execute(
            "UPDATE keys SET credits_remaining = ?1 WHERE id = ?2",
            params![to_i64(n), id],
        )?,
        CreditChange::Add(n) => tx.execute(
            "UPDATE keys SET credits_remaining = min(coalesce(credits_remaining, 0) + ?1, ?3)
             WHERE id = ?2",
            params![to_i64(n), id, i64::MAX / 2],
        )?,
    };
    Ok(n > 0)
}

/// Resets the credits of every key whose refill is due at `now` to its refill amount, and sets
/// its next due time; returns the ids refilled.
pub(super) fn refill(conn: &mut Connection, now: i64) -> Result<Vec<String>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let due: Vec<(String, i64, String)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id, refill_amount, refill_period FROM keys
             WHERE refill_due IS NOT NULL AND refill_due <= ?1 AND status != 'revoked'",
        )?;
        let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, amount, period) in &due {
        let period = RefillPeriod::parse(period)
            .ok_or_else(|| StoreError::Corrupt(format!("refill period of {id}")))?;
        tx.prepare_cached("UPDATE keys SET credits_remaining = ?1, refill_due = ?2 WHERE id = ?3")?
            .execute(params![amount, period.next_boundary(now), id])?;
    }
    tx.commit()?;
    Ok(due.into_iter().map(|(id, ..)| id).collect())
}
