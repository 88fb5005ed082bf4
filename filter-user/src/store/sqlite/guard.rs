//! Is the SQLite store still the file it opened, and can it be written? [`Watch`] remembers the
//! device and inode of the database and its write-ahead log at open and compares them with what
//! the paths name now (a deleted or replaced file keeps working under an open connection, so
//! SQLite itself never notices); it also asks the kernel whether the files and their directory
//! may be written. [`classify`] turns a SQLite error into the [`StoreFault`] it stands for.
//!
//! Nothing here opens the store's files: closing any descriptor of a file drops every POSIX lock
//! this process holds on it, SQLite's own included. `stat`, `access` and `statvfs` take none.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::AccessFlags;
use rusqlite::ErrorCode;

use crate::store::fault::{FaultKind, StoreFault};

/// The path of a database's write-ahead log.
#[must_use]
pub fn wal_path(db: &Path) -> PathBuf {
    suffixed(db, "-wal")
}

/// The path of a database's shared-memory index.
#[must_use]
pub fn shm_path(db: &Path) -> PathBuf {
    suffixed(db, "-shm")
}

/// `path` with `suffix` appended to its file name.
#[must_use]
pub fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The identity of a file: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The file `path` names now (`None`: nothing there).
    ///
    /// # Errors
    /// `stat` failing otherwise than with "not found".
    pub fn of(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(Self {
                dev: m.dev(),
                ino: m.ino(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inode {} on device {:#x}", self.ino, self.dev)
    }
}

/// The files of one open store, as they were when it was opened.
#[derive(Debug)]
pub struct Watch {
    db: PathBuf,
    db_id: FileId,
    wal: PathBuf,
    /// `None` when the connection had no log open (a read-only database, say).
    wal_id: Option<FileId>,
    shm: PathBuf,
    shm_id: Option<FileId>,
}

impl Watch {
    /// Remembers the files `db` and its log name now (call right after opening them).
    ///
    /// # Errors
    /// The database cannot be `stat`ed, or is not there.
    pub fn new(db: &Path) -> io::Result<Self> {
        let db_id = FileId::of(db)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let (wal, shm) = (wal_path(db), shm_path(db));
        Ok(Self {
            db: db.to_path_buf(),
            db_id,
            wal_id: FileId::of(&wal).ok().flatten(),
            wal,
            shm_id: FileId::of(&shm).ok().flatten(),
            shm,
        })
    }

    /// Moves this store's write-ahead log and shared-memory index (when the paths still name
    /// the ones opened) to `<db>.stale-<tag>-wal` and `-shm`, once its database was deleted or
    /// replaced: left in place, SQLite would replay that log into whatever database is put at
    /// the path next. The open connection keeps using them. Returns where each went.
    ///
    /// # Errors
    /// A rename failing.
    pub fn set_aside_logs(&self, tag: &str) -> io::Result<Vec<PathBuf>> {
        let mut moved = Vec::new();
        for (path, opened, suffix) in [
            (&self.wal, self.wal_id, "-wal"),
            (&self.shm, self.shm_id, "-shm"),
        ] {
            if opened.is_none() || FileId::of(path)? != opened {
                continue;
            }
            let to = suffixed(&self.db, &format!(".stale-{tag}{suffix}"));
            std::fs::rename(path, &to)?;
            moved.push(to);
        }
        Ok(moved)
    }

    /// The database's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.db
    }

    /// The database's identity at open.
    #[must_use]
    pub fn id(&self) -> FileId {
        self.db_id
    }

    /// The fault when the paths no longer name the files opened: deleted, or replaced.
    #[must_use]
    pub fn moved(&self) -> Option<StoreFault> {
        let checks = [
            (&self.db, Some(self.db_id), "the database"),
            (&self.wal, self.wal_id, "its write-ahead log"),
        ];
        for (path, opened, what) in checks {
            let Some(opened) = opened else { continue };
            let (kind, detail) = match FileId::of(path) {
                Ok(Some(now)) if now == opened => continue,
                Ok(Some(now)) => (
                    FaultKind::Replaced,
                    format!(
                        "{what} {} is now {now}, not the {opened} that was opened",
                        path.display()
                    ),
                ),
                Ok(None) => (
                    FaultKind::Deleted,
                    format!(
                        "{what} {} is gone ({opened} was deleted while open)",
                        path.display()
                    ),
                ),
                // Cannot tell (e.g. the directory lost its search permission): no verdict.
                Err(_) => continue,
            };
            return Some(StoreFault::new(kind, &self.db, detail));
        }
        None
    }

    /// The fault when the database, its log or its directory may not be written by this process
    /// (its effective ids: permissions, `chattr +i`, a read-only mount).
    #[must_use]
    pub fn read_only(&self) -> Option<StoreFault> {
        not_writable(&self.db)
    }
}

/// The read-only fault of the store at `db`, when `access(W_OK)` refuses its file, its log (when
/// there) or its directory.
#[must_use]
pub fn not_writable(db: &Path) -> Option<StoreFault> {
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let wal = wal_path(db);
    let checks = [
        (db, AccessFlags::W_OK, "the database"),
        (&wal, AccessFlags::W_OK, "its write-ahead log"),
        (dir, AccessFlags::W_OK | AccessFlags::X_OK, "its directory"),
    ];
    for (path, mode, what) in checks {
        match nix::unistd::eaccess(path, mode) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                let cause = io::Error::from(e);
                return Some(StoreFault::new(
                    FaultKind::ReadOnly,
                    db,
                    format!("{what} {} cannot be written: {cause}", path.display()),
                ));
            }
        }
    }
    None
}

/// Bytes free for this process on the file system holding `path` (`None`: cannot tell).
#[must_use]
pub fn free_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    #[allow(
        clippy::useless_conversion,
        reason = "u64 on 64-bit Linux, narrower elsewhere"
    )]
    let (blocks, size) = (
        u64::from(st.blocks_available()),
        u64::from(st.fragment_size()),
    );
    Some(blocks.saturating_mul(size))
}

/// Below this much free space, an I/O error writing the store is taken for a full disk.
const NEARLY_FULL: u64 = 64 * 1024;

/// The fault a SQLite error of the store at `db` stands for (`None`: an ordinary error, such as
/// a constraint or a busy database). An I/O or open error is explained by looking: a directory
/// or file that may not be written is read-only, a file system with (almost) no space is full.
#[must_use]
pub fn classify(db: &Path, e: &rusqlite::Error) -> Option<StoreFault> {
    let code = e.sqlite_error_code()?;
    let detail = e.to_string();
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty());
    let full = || {
        dir.and_then(free_bytes)
            .is_some_and(|free| free < NEARLY_FULL)
    };
    let fault = match code {
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
            StoreFault::new(FaultKind::Corrupt, db, detail)
        }
        ErrorCode::DiskFull => StoreFault::new(FaultKind::Full, db, detail),
        ErrorCode::ReadOnly | ErrorCode::PermissionDenied => {
            not_writable(db).unwrap_or_else(|| StoreFault::new(FaultKind::ReadOnly, db, detail))
        }
        ErrorCode::SystemIoFailure | ErrorCode::CannotOpen => {
            if let Some(ro) = not_writable(db) {
                ro
            } else if full() {
                StoreFault::new(FaultKind::Full, db, detail)
            } else {
                StoreFault::new(FaultKind::Io, db, detail)
            }
        }
        _ => return None,
    };
    Some(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deleting or replacing the file under a watch is seen; an untouched file is not.
    #[test]
    fn a_deleted_or_replaced_file_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keys.db");
        std::fs::write(&db, b"x").unwrap();
        let w = Watch::new(&db).unwrap();
        assert_eq!(w.moved(), None);
        let other = dir.path().join("other.db");
        std::fs::write(&other, b"y").unwrap();
        std::fs::rename(&other, &db).unwrap();
        let f = w.moved().expect("replaced");
        assert_eq!(f.kind, FaultKind::Replaced, "{f}");
        std::fs::remove_file(&db).unwrap();
        let f = w.moved().expect("deleted");
        assert_eq!(f.kind, FaultKind::Deleted, "{f}");
        assert!(f.to_string().contains(&db.display().to_string()), "{f}");
    }

    #[test]
    fn suffixes_go_on_the_file_name() {
        let db = Path::new("/var/lib/edgefilter/keys.db");
        assert_eq!(wal_path(db), Path::new("/var/lib/edgefilter/keys.db-wal"));
        assert_eq!(shm_path(db), Path::new("/var/lib/edgefilter/keys.db-shm"));
    }
}
