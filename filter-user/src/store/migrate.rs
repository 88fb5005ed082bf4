//! Schema migrations, shared by both backends: what a migration is, and the one rule for which
//! of them a database still needs (refusing a database newer than this build).
//!
//! Each backend keeps its own SQL and its own bookkeeping (SQLite: `PRAGMA user_version`, one
//! transaction per step; PostgreSQL: an `edgefilter_schema` table, every step in one
//! transaction under an advisory lock), implements [`Schema`] for "which version is there" and
//! "apply this one", and calls [`run`].

use std::future::Future;

/// One migration: applied once, in version order, inside a transaction.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing from 1, with no gaps.
    pub version: i32,
    /// What it does.
    pub name: &'static str,
    /// The SQL (may hold several statements).
    pub sql: &'static str,
}

/// The database holds a schema newer than this build knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("schema version {found} is newer than the newest known here ({known})")]
pub struct TooNew {
    /// Version found in the database.
    pub found: i64,
    /// Newest version known here.
    pub known: i64,
}

/// The newest version in `list` (0 for none).
#[must_use]
pub const fn newest(list: &[Migration]) -> i32 {
    match list.last() {
        Some(m) => m.version,
        None => 0,
    }
}

/// The migrations a database at version `found` still needs, in the order to apply them.
///
/// # Errors
/// [`TooNew`] when `found` is above every version in `list`: such a database is left alone.
pub fn pending(found: i64, list: &[Migration]) -> Result<&[Migration], TooNew> {
    let known = i64::from(newest(list));
    if found > known {
        return Err(TooNew { found, known });
    }
    let done = list.partition_point(|m| i64::from(m.version) <= found);
    Ok(&list[done..])
}

/// A database being migrated, as a backend sees it.
pub trait Schema {
    /// The backend's error; [`TooNew`] converts into it.
    type Error: From<TooNew>;

    /// The version the database holds (0 when empty).
    fn version(&mut self) -> impl Future<Output = Result<i64, Self::Error>> + Send;

    /// Applies `m` and records its version, atomically.
    fn apply(&mut self, m: &Migration) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Brings `db` to the newest version in `list`, one migration at a time; returns that version.
///
/// # Errors
/// [`TooNew`] (converted) for a database newer than `list`, or the backend's failure.
pub async fn run<S: Schema>(db: &mut S, list: &[Migration]) -> Result<i32, S::Error> {
    let found = db.version().await?;
    for m in pending(found, list)? {
        db.apply(m).await?;
    }
    Ok(newest(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &[Migration] = &[
        Migration {
            version: 1,
            name: "one",
            sql: "",
        },
        Migration {
            version: 2,
            name: "two",
            sql: "",
        },
    ];

    fn versions(found: i64) -> Result<Vec<i32>, TooNew> {
        Ok(pending(found, LIST)?.iter().map(|m| m.version).collect())
    }

    #[test]
    fn pending_is_what_is_above_the_found_version() {
        assert_eq!(versions(0), Ok(vec![1, 2]));
        assert_eq!(versions(1), Ok(vec![2]));
        assert_eq!(versions(2), Ok(vec![]));
        assert_eq!(versions(3), Err(TooNew { found: 3, known: 2 }));
        assert_eq!(newest(LIST), 2);
        assert_eq!(newest(&[]), 0);
    }

    /// Every backend's list counts 1, 2, 3, … (a gap or a repeat would skip or rerun one).
    #[test]
    fn every_backend_counts_from_one() {
        for list in [
            super::super::sqlite::schema::MIGRATIONS,
            super::super::postgres::MIGRATIONS,
        ] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(usize::try_from(m.version).ok(), Some(i + 1), "{}", m.name);
            }
        }
    }
}
