//! Why a store cannot take changes: its file was deleted or replaced while in use, it is
//! corrupt, read-only, or its disk is full. A [`StoreFault`] names the file and the cause; it is
//! what a refused write returns (inside [`super::StoreError::Unavailable`]) and what `/readyz`
//! reports while it lasts. The first three last until the daemon restarts (the daemon cannot
//! repair them); the other two clear by themselves once the file is writable or space is back.

use std::fmt;
use std::path::{Path, PathBuf};

/// What is wrong with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The file (or its write-ahead log) was deleted while in use.
    Deleted,
    /// Another file now has the store's path.
    Replaced,
    /// SQLite found the file damaged (`PRAGMA quick_check`, or an error on use).
    Corrupt,
    /// The file, its log or its directory cannot be written (permissions, `chattr +i`, a
    /// read-only mount).
    ReadOnly,
    /// No space left on the store's file system.
    Full,
    /// Another I/O error writing the file.
    Io,
}

impl FaultKind {
    /// The short name `/readyz` and the logs use.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::Replaced => "replaced",
            Self::Corrupt => "corrupt",
            Self::ReadOnly => "read-only",
            Self::Full => "full",
            Self::Io => "io-error",
        }
    }

    /// Whether it lasts until a restart (the daemon cannot mend it, nor see it mended).
    #[must_use]
    pub fn lasts_until_restart(self) -> bool {
        matches!(self, Self::Deleted | Self::Replaced | Self::Corrupt)
    }
}

/// One fault of one store file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFault {
    /// What is wrong.
    pub kind: FaultKind,
    /// The store's file.
    pub path: PathBuf,
    /// The cause in words (an OS error, SQLite's first complaint, the inodes ...).
    pub detail: String,
}

impl StoreFault {
    /// A fault of `kind` of the store at `path`.
    #[must_use]
    pub fn new(kind: FaultKind, path: &Path, detail: impl Into<String>) -> Self {
        Self {
            kind,
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    /// What the operator should do.
    #[must_use]
    pub fn hint(&self) -> &'static str {
        match self.kind {
            FaultKind::Deleted | FaultKind::Replaced => {
                "Changes are refused; a daemon keeps serving its last state. Put the store file back (a \
                 daemon that had it open saved its last state beside it as <store>.rescued-<time>) and \
                 restart the daemon."
            }
            FaultKind::Corrupt => {
                "Changes are refused; a daemon keeps serving its last state. Restore the store from a \
                 backup (or `sqlite3 <store> .recover`) and restart the daemon."
            }
            FaultKind::ReadOnly => {
                "Nothing was changed. Make the file, its -wal and its directory writable again (permissions, \
                 `chattr -i`, the mount); the daemon notices by itself."
            }
            FaultKind::Full => {
                "Free space on the store's file system; the daemon notices by itself. Revocations, suspensions \
                 and bans made by hand still commit from the space reserve (<store>.reserve) while it lasts."
            }
            FaultKind::Io => "Nothing was changed. Check the disk and the kernel log.",
        }
    }
}

impl fmt::Display for StoreFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let what = match self.kind {
            FaultKind::Deleted => "was deleted",
            FaultKind::Replaced => "was replaced by another file",
            FaultKind::Corrupt => "is corrupt",
            FaultKind::ReadOnly => "is read-only",
            FaultKind::Full => "has no space left on its file system",
            FaultKind::Io => "cannot be written",
        };
        write!(f, "key store {path} {what}: {}", self.detail)
    }
}
