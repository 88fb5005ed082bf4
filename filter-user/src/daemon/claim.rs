//! One daemon per listen address and per store: exclusive `flock` locks holding the holder's
//! pid, taken before anything else starts, and a probe for a listener of another program.
//!
//! - `<store>.lock` beside a SQLite store. A PostgreSQL store is shared by many hosts by design
//!   (fleet mode), so only the addresses are locked there.
//! - `listen-<address>.lock` in the run directory ([`RunDir`]) for every proxy and admin address.
//!   An address also conflicts with the wildcard address of its port and family (`0.0.0.0:443`
//!   and `10.0.0.1:443` cannot both be served by two daemons).
//!
//! A lock belongs to an open file: its descriptor, handed to a daemon taking over, hands over
//! the lock with no moment when it is free. A releasing holder unlinks its files while still
//! holding them, so a lock is only taken on the file its path names.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::config::{Config, StoreKind};

/// Environment variable naming the run directory (tests, or several separate installations).
pub const RUN_DIR_ENV: &str = "EDGEFILTER_RUN_DIR";

/// Where the address locks and the takeover sockets live. An address lock names the network
/// namespace too: daemons in two namespaces may serve the same address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
    /// This process's network namespace (the inode of `/proc/self/ns/net`; 0 if unknown).
    net: u64,
}

impl RunDir {
    /// `$EDGEFILTER_RUN_DIR`, else systemd's `$RUNTIME_DIRECTORY` (`RuntimeDirectory=`), else
    /// `/run/edgefilter` for root, else `$XDG_RUNTIME_DIR/edgefilter`, else
    /// `/tmp/edgefilter-<uid>`. Every daemon of one user finds the same one; daemons of two
    /// users cannot share a port anyway (the kernel refuses `SO_REUSEPORT` across users).
    #[must_use]
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var(RUN_DIR_ENV) {
            return Self::at(dir);
        }
        if let Some(dir) = var("RUNTIME_DIRECTORY") {
            // systemd may list several, separated by ':'; the first is this service's.
            let first = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned();
            return Self::at(first);
        }
        let uid = nix::unistd::geteuid().as_raw();
        if uid == 0 {
            return Self::at("/run/edgefilter");
        }
        match var("XDG_RUNTIME_DIR") {
            Some(dir) => Self::at(PathBuf::from(dir).join("edgefilter")),
            None => Self::at(std::env::temp_dir().join(format!("edgefilter-{uid}"))),
        }
    }

    /// A run directory at `path`.
    #[must_use]
    pub fn at(path: impl Into<PathBuf>) -> Self {
        let net = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
        Self {
            path: path.into(),
            net,
        }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory (0755) if missing, and refuses one that someone else could have
    /// planted: not a directory, owned by another user than this one or root, or writable by
    /// group or others.
    ///
    /// # Errors
    /// [`ClaimError::Io`] or [`ClaimError::UnsafeRunDir`].
    pub fn ensure(&self) -> Result<(), ClaimError> {
        let io = |source| ClaimError::Io {
            context: format!("run directory {}", self.path.display()),
            source,
        };
        if !self.path.exists() {
            std::fs::create_dir_all(&self.path).map_err(io)?;
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755))
                .map_err(io)?;
        }
        let meta = std::fs::symlink_metadata(&self.path).map_err(io)?;
        let uid = nix::unistd::geteuid().as_raw();
        let problem = if !meta.is_dir() {
            Some("is not a directory")
        } else if meta.uid() != uid && meta.uid() != 0 {
            Some("belongs to another user")
        } else if meta.mode() & 0o022 != 0 {
            Some("is writable by group or others")
        } else {
            None
        };
        match problem {
            Some(why) => Err(ClaimError::UnsafeRunDir {
                path: self.path.clone(),
                why,
            }),
            None => Ok(()),
        }
    }

    /// Removes what daemons that were killed left here: address lock files nobody holds (taken,
    /// then unlinked while held, as a releasing holder does) and takeover sockets of pids that
    /// no longer run.
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with("listen-") && name.ends_with(".lock") {
                if let Ok(Ok(file)) = acquire(&path, 1) {
                    let _ = std::fs::remove_file(&path);
                    drop(file);
                }
                continue;
            }
            let pid = name
                .strip_prefix("takeover-")
                .and_then(|n| n.strip_suffix(".sock"))
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// The socket where daemon `pid` hands over to a daemon taking over.
    #[must_use]
    pub fn takeover_socket(&self, pid: u32) -> PathBuf {
        self.path.join(format!("takeover-{pid}.sock"))
    }

    fn address_lock(&self, addr: SocketAddr) -> PathBuf {
        self.path
            .join(format!("listen-{addr}-net{}.lock", self.net))
    }

    /// Every address with a lock file of this network namespace here, and its file.
    fn address_locks(&self) -> Vec<(SocketAddr, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let suffix = format!("-net{}.lock", self.net);
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let addr = name
                    .to_str()?
                    .strip_prefix("listen-")?
                    .strip_suffix(suffix.as_str())?
                    .parse()
                    .ok()?;
                Some((addr, e.path()))
            })
            .collect()
    }
}

/// What a lock guards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarded {
    /// A SQLite store file.
    Store(PathBuf),
    /// A proxy or admin address.
    Address(SocketAddr),
}

impl fmt::Display for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(p) => write!(f, "the SQLite store {}", p.display()),
            Self::Address(a) => write!(f, "{a}"),
        }
    }
}

/// The pid a lock file names, when it names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder(pub Option<u32>);

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("a pid not yet written"),
        }
    }
}

/// Why this daemon may not start.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another edgefilter daemon holds the lock.
    #[error(
        "{what} is in use by another edgefilter daemon ({holder}; lock {}): stop it first, or \
         replace it with `edgefilter run --takeover`",
        path.display()
    )]
    Held {
        /// What is held.
        what: Guarded,
        /// Who holds it.
        holder: Holder,
        /// The lock file.
        path: PathBuf,
    },
    /// A program that is not an edgefilter daemon (of this run directory) listens there.
    #[error(
        "{addr} is in use by another program ({holder}), not by an edgefilter daemon: free the \
         address or change the config"
    )]
    Foreign {
        /// The address.
        addr: SocketAddr,
        /// `pid N (name)` when `/proc` tells, else how to find out.
        holder: String,
    },
    /// The run directory could have been planted by someone else.
    #[error("run directory {} {why}: remove it or set {RUN_DIR_ENV}", path.display())]
    UnsafeRunDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: io::Error,
    },
}

/// One held lock.
#[derive(Debug)]
pub struct Lock {
    what: Guarded,
    path: PathBuf,
    file: File,
    /// Handed over by a daemon that may still hold it: never unlinked by this one.
    shared: bool,
}

impl Lock {
    /// Adopts the descriptor of a lock handed over by the daemon this one takes over from.
    #[must_use]
    pub fn adopt(what: Guarded, path: PathBuf, file: File) -> Self {
        Self {
            what,
            path,
            file,
            shared: true,
        }
    }

    /// What it guards.
    #[must_use]
    pub fn guarded(&self) -> &Guarded {
        &self.what
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its descriptor (to hand over).
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Every lock this daemon holds. Dropped normally, it removes its lock files (still holding
/// them); once handed over ([`Claims::hand_over`]) it only closes its descriptors.
#[derive(Debug, Default)]
pub struct Claims {
    locks: Vec<Lock>,
    handed_over: bool,
}

impl Claims {
    /// Claims what `cfg` serves: its SQLite store and every proxy and admin address with a port
    /// (port 0 is claimed once bound, with [`Claims::claim_bound`]). A lock in `inherited` is
    /// taken over as is; any other is taken here, and its address probed for another program.
    /// `inherited` keeps the locks no part of `cfg` wanted.
    ///
    /// # Errors
    /// [`ClaimError::Held`] naming what is held and by which pid, [`ClaimError::Foreign`],
    /// [`ClaimError::Io`].
    pub fn claim_config(
        cfg: &Config,
        dir: &RunDir,
        inherited: &mut Vec<Lock>,
    ) -> Result<Self, ClaimError> {
        let mut claims = Self::default();
        for what in wanted(cfg) {
            let path = lock_path(dir, &what);
            if let Some(i) = inherited.iter().position(|l| l.what == what) {
                claims.locks.push(inherited.swap_remove(i));
                continue;
            }
            claims.take(dir, what.clone(), path)?;
            if let Guarded::Address(addr) = what {
                probe(addr)?;
            }
        }
        Ok(claims)
    }

    /// Claims `addr`, bound already (an ephemeral port resolved), unless claimed before.
    ///
    /// # Errors
    /// As [`Claims::claim_config`] (no probe: this daemon listens there).
    pub fn claim_bound(&mut self, dir: &RunDir, addr: SocketAddr) -> Result<(), ClaimError> {
        let what = Guarded::Address(addr);
        if self.locks.iter().any(|l| l.what == what) {
            return Ok(());
        }
        let path = lock_path(dir, &what);
        self.take(dir, what, path)
    }

    fn take(&mut self, dir: &RunDir, what: Guarded, path: PathBuf) -> Result<(), ClaimError> {
        let io = |source| ClaimError::Io {
            context: format!("lock file {}", path.display()),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        match acquire(&path, TRIES).map_err(io)? {
            Ok(file) => self.locks.push(Lock {
                what: what.clone(),
                path,
                file,
                shared: false,
            }),
            Err(holder) => return Err(ClaimError::Held { what, holder, path }),
        }
        if let Guarded::Address(addr) = what {
            // The wildcard address of the port and a specific one overlap.
            for (other, other_path) in dir.address_locks() {
                if !overlaps(addr, other) || self.holds(&Guarded::Address(other)) {
                    continue;
                }
                if let Some(holder) = held_by(&other_path) {
                    if let Some(mine) = self.locks.pop() {
                        release(mine);
                    }
                    return Err(ClaimError::Held {
                        what: Guarded::Address(other),
                        holder,
                        path: other_path,
                    });
                }
            }
        }
        Ok(())
    }

    fn holds(&self, what: &Guarded) -> bool {
        self.locks.iter().any(|l| &l.what == what)
    }

    /// Every lock held.
    #[must_use]
    pub fn locks(&self) -> &[Lock] {
        &self.locks
    }

    /// A daemon that took over serves: its pid goes into every lock file, and the locks are
    /// its own (the replaced daemon accepts nothing any more and only closes its descriptors).
    pub fn took_over(&mut self) {
        for l in &mut self.locks {
            l.shared = false;
            if let Err(e) = write_pid(&l.file) {
                tracing::warn!(lock = %l.path.display(), error = %e, "cannot write the pid into the lock file");
            }
        }
    }

    /// The locks now belong to the daemon that took over too: on drop, close the descriptors
    /// only (never unlock or unlink).
    pub fn hand_over(&mut self) {
        self.handed_over = true;
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        if !self.handed_over {
            for l in self.locks.drain(..) {
                release(l);
            }
        }
    }
}

/// The pids of the daemons holding the locks `cfg` would take (the daemon a takeover replaces);
/// empty when none is held.
#[must_use]
pub fn holders(cfg: &Config, dir: &RunDir) -> BTreeSet<Option<u32>> {
    let mut pids = BTreeSet::new();
    for what in wanted(cfg) {
        if let Some(Holder(pid)) = held_by(&lock_path(dir, &what)) {
            pids.insert(pid);
        }
        if let Guarded::Address(addr) = what {
            for (other, path) in dir.address_locks() {
                if other != addr
                    && overlaps(addr, other)
                    && let Some(Holder(pid)) = held_by(&path)
                {
                    pids.insert(pid);
                }
            }
        }
    }
    pids
}

/// What `cfg` claims: the SQLite store, then every address with a fixed port.
fn wanted(cfg: &Config) -> Vec<Guarded> {
    let mut out = Vec::new();
    if cfg.store.kind == StoreKind::Sqlite {
        let path = cfg.resolve(&cfg.store.path);
        out.push(Guarded::Store(std::path::absolute(&path).unwrap_or(path)));
    }
    let addrs = cfg.listen.http.iter().chain(&cfg.listen.https);
    for &addr in addrs.chain(std::iter::once(&cfg.admin.listen)) {
        if addr.port() != 0 && !out.contains(&Guarded::Address(addr)) {
            out.push(Guarded::Address(addr));
        }
    }
    out
}

fn lock_path(dir: &RunDir, what: &Guarded) -> PathBuf {
    match what {
        Guarded::Store(p) => {
            let mut name = p.as_os_str().to_owned();
            name.push(".lock");
            PathBuf::from(name)
        }
        Guarded::Address(a) => dir.address_lock(*a),
    }
}

/// Same port and family, and the same address or one of them the wildcard.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// How often a claim tries a held lock before it reports the holder: another daemon's sweep or
/// overlap check holds a free lock file for a moment.
const TRIES: u32 = 5;
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// Locks the file at `path` (created if missing), trying `tries` times 20 ms apart while it is
/// held: the file, or who holds it.
fn acquire(path: &Path, tries: u32) -> io::Result<Result<File, Holder>> {
    let mut attempt = 1;
    loop {
        match acquire_once(path)? {
            Err(_) if attempt < tries => {
                attempt += 1;
                std::thread::sleep(RETRY_AFTER);
            }
            done => return Ok(done),
        }
    }
}

fn acquire_once(path: &Path) -> io::Result<Result<File, Holder>> {
    for _ in 0..8 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(Err(Holder(read_pid(&file)))),
            Err(e) => return Err(e.into()),
        }
        // A holder that released unlinked the file it held: lock only the file the path names.
        let here = std::fs::symlink_metadata(path);
        let mine = file.metadata()?;
        if here.is_ok_and(|h| h.dev() == mine.dev() && h.ino() == mine.ino()) {
            // The flock is the claim; the pid only names the holder in a refusal. A full disk
            // (the store's own reserve may be all that is left) must not stop a restart.
            if let Err(e) = write_pid(&file) {
                tracing::warn!(lock = %path.display(), error = %e, "cannot write the pid into the lock file; the lock holds");
            }
            return Ok(Ok(file));
        }
    }
    Err(io::Error::other("the lock file keeps being replaced"))
}

/// Who holds the lock file at `path` (tried [`TRIES`] times); `None` when nobody does (or it
/// does not exist).
fn held_by(path: &Path) -> Option<Holder> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    for attempt in 1..=TRIES {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            // Free (closing the file releases it again).
            Ok(()) => return None,
            Err(rustix::io::Errno::WOULDBLOCK) if attempt < TRIES => {
                std::thread::sleep(RETRY_AFTER)
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Some(Holder(read_pid(&file))),
            Err(_) => return None,
        }
    }
    None
}

fn read_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; 16];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

fn write_pid(file: &File) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
}

/// Unlinks the lock file while still holding it (unless another daemon may hold it too), then
/// closes it.
fn release(lock: Lock) {
    if !lock.shared {
        let _ = std::fs::remove_file(&lock.path);
    }
    drop(lock.file);
}

/// Refuses `addr` when any socket listens there: bound without `SO_REUSEPORT`, the probe fails
/// on every listener, also one that would let our `SO_REUSEPORT` sockets join it.
fn probe(addr: SocketAddr) -> Result<(), ClaimError> {
    use socket2::{Domain, Socket, Type};
    let io = |source| ClaimError::Io {
        context: format!("probing {addr}"),
        source,
    };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(io)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(io)?;
    }
    // Not refused by connections of a previous daemon lingering in TIME_WAIT.
    sock.set_reuse_address(true).map_err(io)?;
    match sock.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ClaimError::Foreign {
            addr,
            holder: super::holder::listener_of(addr).map_or_else(
                || format!("`ss -ltnp 'sport = :{}'` shows which", addr.port()),
                |(pid, name)| format!("pid {pid}, {name}"),
            ),
        }),
        // Anything else (no such local address, ...) is for the real bind to report.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_specific_address_overlaps_the_wildcard_of_its_port_and_family_only() {
        assert!(overlaps(addr("127.0.0.1:80"), addr("0.0.0.0:80")));
        assert!(overlaps(addr("0.0.0.0:80"), addr("10.0.0.1:80")));
        assert!(overlaps(addr("[::1]:80"), addr("[::]:80")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("10.0.0.1:80")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("0.0.0.0:81")));
        assert!(!overlaps(addr("0.0.0.0:80"), addr("[::]:80")));
    }

    #[test]
    fn a_held_lock_names_its_pid_and_a_released_one_is_free_and_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.lock");
        let file = acquire(&path, 1).unwrap().unwrap();
        assert_eq!(read_pid(&file), Some(std::process::id()));
        // A second open file of the same path is refused (flock is per open file).
        assert_eq!(
            acquire(&path, 2).unwrap().unwrap_err(),
            Holder(Some(std::process::id()))
        );
        assert_eq!(held_by(&path), Some(Holder(Some(std::process::id()))));
        release(Lock {
            what: Guarded::Store(path.clone()),
            path: path.clone(),
            file,
            shared: false,
        });
        assert!(!path.exists());
        assert_eq!(held_by(&path), None);
        assert!(acquire(&path, 1).unwrap().is_ok());
    }

    #[test]
    fn a_sweep_removes_free_lock_files_and_dead_sockets_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::at(tmp.path());
        let mut held = Claims::default();
        held.claim_bound(&dir, addr("127.0.0.1:4000")).unwrap();
        let left = dir.address_lock(addr("127.0.0.1:4001"));
        std::fs::write(&left, "123\n").unwrap();
        let mine = dir.takeover_socket(std::process::id());
        let dead = dir.takeover_socket(u32::MAX - 1);
        std::fs::write(&mine, "").unwrap();
        std::fs::write(&dead, "").unwrap();
        dir.sweep();
        assert!(dir.address_lock(addr("127.0.0.1:4000")).exists());
        assert!(!left.exists());
        assert!(mine.exists());
        assert!(!dead.exists());
    }

    #[test]
    fn a_wildcard_claim_is_refused_while_a_specific_address_of_its_port_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::at(tmp.path());
        let mut first = Claims::default();
        first.claim_bound(&dir, addr("127.0.0.1:4321")).unwrap();
        let mut second = Claims::default();
        let e = second.claim_bound(&dir, addr("0.0.0.0:4321")).unwrap_err();
        assert!(
            matches!(&e, ClaimError::Held { what: Guarded::Address(a), .. } if *a == addr("127.0.0.1:4321")),
            "{e}"
        );
        // Its own lock file was released and removed again.
        assert!(!dir.address_lock(addr("0.0.0.0:4321")).exists());
        second.claim_bound(&dir, addr("127.0.0.2:4321")).unwrap();
        drop(first);
        second.claim_bound(&dir, addr("0.0.0.0:4321")).unwrap();
    }
}
