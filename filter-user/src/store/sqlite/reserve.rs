//! The space reserve: `<store>.reserve`, a file beside the database holding real disk blocks
//! (`fallocate`, or written zeros where the file system cannot preallocate) that nobody else can
//! take. When a change that takes access away (a revocation, a suspension, a ban) fails because
//! the disk is full, the store gives one step of the reserve back to the file system and commits
//! again; the daemon fills the reserve back up once the file system has room for it twice over.
//!
//! The file also marks that a store exists at its path: a database that is missing while its
//! reserve is there was deleted or moved, and is not silently recreated empty.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{FallocateFlags, fallocate};

use super::guard::{free_bytes, suffixed};

/// The smallest step given back at a time.
const MIN_STEP: u64 = 64 * 1024;

/// At least this much must be free beside a full reserve before the store counts as having room
/// again (matters when the reserve is small or off).
const MIN_ROOM: u64 = 1024 * 1024;

/// The reserve of one store.
#[derive(Debug, Clone)]
pub struct Reserve {
    path: PathBuf,
    /// The size it should have (`store.reserve_bytes`; 0: no reserve, only the marker).
    want: u64,
}

/// What [`Reserve::refill`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// The reserve is whole and the file system has room beside it.
    Enough,
    /// Not enough room yet: the reserve holds `held` of its size, `free` bytes are free.
    Short {
        /// Bytes the reserve holds.
        held: u64,
        /// Bytes free on the file system.
        free: u64,
    },
}

impl Reserve {
    /// The reserve of the database at `db`, `want` bytes large.
    #[must_use]
    pub fn beside(db: &Path, want: u64) -> Self {
        Self {
            path: suffixed(db, ".reserve"),
            want,
        }
    }

    /// The reserve's file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size it should have.
    #[must_use]
    pub fn want(&self) -> u64 {
        self.want
    }

    /// Whether its file is there (a store was created at this path).
    #[must_use]
    pub fn exists(&self) -> bool {
        self.path.symlink_metadata().is_ok()
    }

    /// Bytes of disk it holds now.
    #[must_use]
    pub fn held(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len().min(m.blocks().saturating_mul(512)))
    }

    /// Creates the file when missing, as large as it should be.
    ///
    /// # Errors
    /// The file cannot be created, or the space not taken (it is left as large as it got).
    pub fn make(&self) -> io::Result<()> {
        if self.exists() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)?;
        file.sync_all()?;
        grow(&file, 0, self.want)
    }

    /// Gives one step (a quarter of its size, at least 64 KiB) back to the file system and
    /// makes that stick (`fsync`, so a journaling file system frees the blocks now); returns the
    /// bytes freed (0: nothing left to give).
    ///
    /// # Errors
    /// The file cannot be shrunk.
    pub fn release_step(&self) -> io::Result<u64> {
        let held = self.held();
        if held == 0 {
            return Ok(0);
        }
        let step = (self.want / 4).max(MIN_STEP).min(held);
        let file = OpenOptions::new().write(true).open(&self.path)?;
        file.set_len(held - step)?;
        file.sync_all()?;
        Ok(step)
    }

    /// Fills the reserve back up when the file system has room for what is missing and, beside
    /// it, as much again as a whole reserve (at least 1 MiB), so a refill never takes the last
    /// free space. Shrinks a reserve larger than it should be.
    ///
    /// # Errors
    /// The file cannot be created, grown or shrunk.
    pub fn refill(&self) -> io::Result<Room> {
        let held = self.held();
        let free = self.path.parent().and_then(free_bytes).unwrap_or(u64::MAX);
        let room = self.want.max(MIN_ROOM);
        if held >= self.want {
            if held > self.want {
                let file = OpenOptions::new().write(true).open(&self.path)?;
                file.set_len(self.want)?;
                file.sync_all()?;
            }
            return Ok(if free >= room {
                Room::Enough
            } else {
                Room::Short { held, free }
            });
        }
        let missing = self.want - held;
        if free < missing.saturating_add(room) {
            return Ok(Room::Short { held, free });
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        file.set_len(held)?;
        grow(&file, held, self.want)?;
        Ok(Room::Enough)
    }
}

/// Takes real blocks for `file` from `from` to `to` bytes: `fallocate`, or zeros written where
/// the file system cannot preallocate; then `fsync`.
fn grow(file: &File, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let off = |n: u64| libc::off_t::try_from(n).map_err(|_| io::Error::other("reserve too large"));
    match fallocate(file, FallocateFlags::empty(), off(from)?, off(to - from)?) {
        Ok(()) => {}
        Err(nix::errno::Errno::EOPNOTSUPP) => {
            let mut w = io::BufWriter::new(file);
            let zeros = [0u8; 64 * 1024];
            let mut left = to - from;
            while left > 0 {
                let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
                w.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            w.flush()?;
        }
        Err(e) => return Err(e.into()),
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reserve holds real blocks, gives them back a step at a time, and is refilled when there
    /// is room.
    #[test]
    fn a_reserve_holds_blocks_and_gives_them_back_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::beside(&dir.path().join("keys.db"), 1024 * 1024);
        assert!(!r.exists());
        r.make().unwrap();
        assert!(r.exists());
        assert_eq!(r.held(), 1024 * 1024);
        assert_eq!(r.release_step().unwrap(), 256 * 1024);
        assert_eq!(r.held(), 768 * 1024);
        for _ in 0..3 {
            assert_eq!(r.release_step().unwrap(), 256 * 1024);
        }
        assert_eq!(r.release_step().unwrap(), 0, "nothing left to give");
        assert!(r.exists(), "the file stays, as the store's marker");
        assert_eq!(r.refill().unwrap(), Room::Enough);
        assert_eq!(r.held(), 1024 * 1024);
    }
}
