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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::credits::{CreditChange, Refill, RefillPeriod};
    use crate::store::{KeyRef, KeyStore, NewKey, SqliteStore};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        (dir, st)
    }

    fn left(st: &SqliteStore, id: &str) -> u64 {
        let v = st.find_key(KeyRef::Id(id)).unwrap().unwrap();
        v.key.credits.unwrap().remaining
    }

    #[test]
    fn leases_take_durably_and_never_more_than_is_left() {
        let (_dir, mut st) = store();
        let made = st
            .create_keys(
                &[NewKey::new("acme", "a", "live").with_credits(150, None)],
                10,
            )
            .unwrap();
        let id = &made[0].view.key.id;
        let l = st.lease_credits(id, 100).unwrap().unwrap();
        assert_eq!((l.granted, l.left), (100, 50));
        let l = st.lease_credits(id, 100).unwrap().unwrap();
        assert_eq!((l.granted, l.left), (50, 0));
        let l = st.lease_credits(id, 100).unwrap().unwrap();
        assert_eq!((l.granted, l.left), (0, 0));
        st.return_credits(id, 30, None).unwrap();
        assert_eq!(left(&st, id), 30);
        let plain = st
            .create_keys(&[NewKey::new("acme", "a", "live")], 10)
            .unwrap();
        assert_eq!(st.lease_credits(&plain[0].view.key.id, 100).unwrap(), None);
    }

    #[test]
    fn refills_reset_to_the_amount_and_void_returns_from_before() {
        let (_dir, mut st) = store();
        let refill = Refill {
            amount: 40,
            period: RefillPeriod::Hour,
        };
        let made = st
            .create_keys(
                &[NewKey::new("acme", "a", "live").with_credits(10, Some(refill))],
                3_600 * 5 + 7,
            )
            .unwrap();
        let id = &made[0].view.key.id;
        let c = made[0].view.key.credits.unwrap();
        assert_eq!(c.refill_due, Some(3_600 * 6));
        let lease = st.lease_credits(id, 100).unwrap().unwrap();
        assert_eq!(lease.granted, 10);
        assert!(st.refill_credits(3_600 * 6 - 1).unwrap().is_empty());
        assert_eq!(
            st.refill_credits(3_600 * 6 + 5).unwrap(),
            std::slice::from_ref(id)
        );
        assert_eq!(left(&st, id), 40, "reset, not added");
        st.return_credits(id, 4, lease.refill_due).unwrap();
        assert_eq!(left(&st, id), 40, "held from the period before: void");
        let v = st.find_key(KeyRef::Id(id)).unwrap().unwrap();
        assert_eq!(v.key.credits.unwrap().refill_due, Some(3_600 * 7));
    }

    #[test]
    fn operator_changes_and_rotation_move_credits() {
        let (_dir, mut st) = store();
        let made = st
            .create_keys(
                &[NewKey::new("acme", "a", "live").with_credits(5, None)],
                10,
            )
            .unwrap();
        let id = made[0].view.key.id.clone();
        let rev = st.revision().unwrap();
        st.change_credits(KeyRef::Id(&id), CreditChange::Add(7), 11)
            .unwrap();
        assert_eq!(left(&st, &id), 12);
        assert!(st.revision().unwrap() > rev, "a change like any other");
        st.change_credits(KeyRef::Id(&id), CreditChange::Set(3), 12)
            .unwrap();
        assert_eq!(left(&st, &id), 3);
        let (old, new) = st
            .rotate(KeyRef::Id(&id), Duration::from_secs(60), 13)
            .unwrap();
        assert_eq!(old.key.credits.unwrap().remaining, 0);
        assert_eq!(new.view.key.credits.unwrap().remaining, 3);
    }
}
