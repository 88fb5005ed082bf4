//! The integrity check: `PRAGMA quick_check` (every page and record well formed, without the
//! index cross-checks of `integrity_check`). Run on the store's own connection when a command
//! opens it, and by the daemon on a read-only connection of its own, so the check reads the file
//! as it is on disk (not pages the daemon has cached) and never holds up a change.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

/// How many of SQLite's complaints a failed check keeps.
const KEEP: usize = 3;

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The file is sound.
    Sound,
    /// The file is damaged: SQLite's first complaints.
    Corrupt(String),
    /// The check could not run (the file is busy, cannot be opened ...): why.
    NotRun(String),
}

/// Checks the database `conn` has open.
#[must_use]
pub fn check(conn: &Connection) -> Checked {
    let run = || -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(&format!("PRAGMA quick_check({KEEP})"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    };
    match run() {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Checked::Sound,
        Ok(lines) => Checked::Corrupt(lines.join("; ")),
        Err(e) => verdict(&e),
    }
}

/// Checks the database at `path` on a read-only connection of its own (never creating it).
#[must_use]
pub fn check_file(path: &Path) -> Checked {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    match Connection::open_with_flags(path, flags) {
        Ok(conn) => {
            if let Err(e) = conn.busy_timeout(Duration::from_secs(5)) {
                return verdict(&e);
            }
            check(&conn)
        }
        Err(e) => verdict(&e),
    }
}

/// A failed check's verdict: damage, or no verdict.
fn verdict(e: &rusqlite::Error) -> Checked {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            Checked::Corrupt(e.to_string())
        }
        _ => Checked::NotRun(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    /// A sound file passes; the same file with garbage over its pages does not.
    #[test]
    fn garbage_in_the_pages_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO t SELECT i, printf('%0100d', i) FROM n;",
            )
            .unwrap();
        }
        assert_eq!(check_file(&path), Checked::Sound);
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(4096 * 3)).unwrap();
        f.write_all(&[0x5a; 4096 * 4]).unwrap();
        drop(f);
        assert!(
            matches!(check_file(&path), Checked::Corrupt(_)),
            "{:?}",
            check_file(&path)
        );
        assert!(matches!(
            check_file(&dir.path().join("missing.db")),
            Checked::NotRun(_)
        ));
        assert!(
            !dir.path().join("missing.db").exists(),
            "a check never creates"
        );
    }
}
