//! The hand-over from a running daemon to one taking over (`run --takeover`), over a unix
//! `SOCK_SEQPACKET` socket in the run directory, `takeover-<pid>.sock` (mode 0600; a peer of
//! another user than this one or root is refused). One JSON message per packet:
//!
//! 1. new connects; old sends `offer`: its listening sockets (proxy and admin) and its locks,
//!    each descriptor attached (`SCM_RIGHTS`), so the very same sockets keep accepting and
//!    nothing queued in them is lost (closing a `SO_REUSEPORT` socket would reset its queue).
//! 2. new loads its store, starts XDP (adopting the pins) and its shards, paused; sends `ready`.
//! 3. old pauses its accept loops and admin API, waits for admin requests under way, and sends
//!    `stopped` with the store revision it published.
//! 4. new catches up with the store, starts accepting, sends `serving`.
//! 5. old drains (each open connection gets one last answer) and exits; new sees its end close.
//!
//! Until `serving`, the old daemon goes on as before if the new one goes away.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::sockopt::{Timeout, set_socket_timeout, socket_peercred};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};

use super::claim::Guarded;

/// The protocol's version; a daemon refuses an offer of another.
pub const PROTOCOL: u32 = 1;

/// Descriptors per packet (the kernel takes up to 253).
const FDS_PER_PACKET: usize = 64;

/// Largest packet.
const MAX_PACKET: usize = 64 * 1024;

/// How long the daemon taking over waits for `stopped`, and the old one for `serving`.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// One handed-over descriptor: what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Item {
    /// A proxy listening socket.
    Listener {
        /// Its address.
        addr: SocketAddr,
        /// A `listen.https` socket.
        tls: bool,
    },
    /// The admin API's listening socket.
    Admin {
        /// Its address.
        addr: SocketAddr,
    },
    /// A lock file (its lock).
    Lock {
        /// What it guards.
        guards: Guarded,
        /// Its path.
        path: PathBuf,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Msg {
    Offer {
        protocol: u32,
        pid: u32,
        items: Vec<Item>,
        more: bool,
    },
    Ready,
    Stopped {
        revision: u64,
    },
    Serving,
}

/// A connected `SOCK_SEQPACKET` unix socket.
struct Channel(OwnedFd);

impl Channel {
    fn send(&self, msg: &Msg, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_PACKET))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many descriptors for one packet"));
        }
        rustix::net::sendmsg(
            &self.0,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }

    /// The next message and its descriptors; `None` when the peer closed, an error
    /// `TimedOut` after `timeout`.
    fn recv(&self, timeout: Duration) -> io::Result<Option<(Msg, Vec<OwnedFd>)>> {
        set_socket_timeout(&self.0, Timeout::Recv, Some(timeout))?;
        let mut data = vec![0u8; MAX_PACKET];
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_PACKET))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = match rustix::net::recvmsg(
            &self.0,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => got,
            Err(rustix::io::Errno::AGAIN) => return Err(io::ErrorKind::TimedOut.into()),
            Err(e) => return Err(e.into()),
        };
        // Owned (closed on any early return) before anything else is looked at.
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        if got.bytes == 0 {
            return Ok(None);
        }
        if got
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
        {
            return Err(io::Error::other("a hand-over packet was truncated"));
        }
        let msg = serde_json::from_slice(&data[..got.bytes]).map_err(io::Error::other)?;
        Ok(Some((msg, fds)))
    }

    /// Refuses a peer that runs as another user than this process (root excepted).
    fn check_peer(&self) -> io::Result<u32> {
        let cred = socket_peercred(&self.0)?;
        let (theirs, mine) = (cred.uid.as_raw(), nix::unistd::geteuid().as_raw());
        if theirs != mine && theirs != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("peer runs as uid {theirs}, this daemon as uid {mine}"),
            ));
        }
        Ok(u32::try_from(cred.pid.as_raw_nonzero().get()).unwrap_or(0))
    }

    fn expect(&self, timeout: Duration, what: &str) -> io::Result<Msg> {
        match self.recv(timeout)? {
            Some((msg, _)) => Ok(msg),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the other daemon went away before {what}"),
            )),
        }
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The running daemon's side: its takeover socket. Removed when dropped.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

impl Listener {
    /// Listens at `path` (replacing a file left there by a process with this pid before).
    ///
    /// # Errors
    /// Socket creation, bind or listen failing.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        let _ = std::fs::remove_file(path);
        rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        let me = Self {
            fd,
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        rustix::net::listen(&me.fd, 4)?;
        // `accept` returns every so often, so the thread serving it can see it should stop.
        set_socket_timeout(&me.fd, Timeout::Recv, Some(Duration::from_millis(200)))?;
        Ok(me)
    }

    /// The next daemon asking to take over, checked to run as this user (or root); `None`
    /// after a short wait with none.
    ///
    /// # Errors
    /// `accept` failing, or a peer of another user (refused and closed).
    pub fn accept(&self) -> io::Result<Option<Session>> {
        let fd = match rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let chan = Channel(fd);
        let pid = chan.check_peer()?;
        Ok(Some(Session { chan, pid }))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The running daemon's side of one takeover.
pub struct Session {
    chan: Channel,
    pid: u32,
}

impl Session {
    /// The pid of the daemon taking over.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends every descriptor of `items` with what it is (step 1).
    ///
    /// # Errors
    /// The socket failing.
    pub fn offer(&self, items: &[(Item, BorrowedFd<'_>)]) -> io::Result<()> {
        let mut chunks = items.chunks(FDS_PER_PACKET).peekable();
        if chunks.peek().is_none() {
            return self.chan.send(
                &Msg::Offer {
                    protocol: PROTOCOL,
                    pid: std::process::id(),
                    items: Vec::new(),
                    more: false,
                },
                &[],
            );
        }
        while let Some(chunk) = chunks.next() {
            let (what, fds): (Vec<Item>, Vec<BorrowedFd<'_>>) = chunk.iter().cloned().unzip();
            let msg = Msg::Offer {
                protocol: PROTOCOL,
                pid: std::process::id(),
                items: what,
                more: chunks.peek().is_some(),
            };
            self.chan.send(&msg, &fds)?;
        }
        Ok(())
    }

    /// Waits for `ready` (step 2), looking at `stop` every so often; `Ok(false)` when `stop`
    /// said so first.
    ///
    /// # Errors
    /// The new daemon went away (it failed to start) or sent something else.
    pub fn wait_ready(&self, stop: &dyn Fn() -> bool) -> io::Result<bool> {
        loop {
            if stop() {
                return Ok(false);
            }
            match self.chan.expect(Duration::from_millis(200), "it was ready") {
                Ok(Msg::Ready) => return Ok(true),
                Ok(other) => return Err(unexpected(&other)),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Tells the new daemon this one stopped accepting, at store revision `revision` (step 3),
    /// and waits for `serving` (step 4).
    ///
    /// # Errors
    /// The new daemon went away, did not answer within [`STEP_TIMEOUT`], or sent something else.
    pub fn stopped(&self, revision: u64) -> io::Result<()> {
        self.chan.send(&Msg::Stopped { revision }, &[])?;
        match self.chan.expect(STEP_TIMEOUT, "it was serving")? {
            Msg::Serving => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// The side of the daemon taking over, connected to the running one.
pub struct Takeover {
    chan: Channel,
    old_pid: u32,
}

/// What the running daemon handed over.
pub type Offered = Vec<(Item, OwnedFd)>;

impl Takeover {
    /// Connects to the daemon listening at `path` and receives its offer (step 1).
    ///
    /// # Errors
    /// Connecting, a peer of another user, a protocol mismatch, a broken offer.
    pub fn connect(path: &Path) -> io::Result<(Self, Offered)> {
        let fd = seqpacket()?;
        rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
        let chan = Channel(fd);
        chan.check_peer()?;
        let mut offered = Vec::new();
        let mut old_pid;
        loop {
            let Some((msg, fds)) = chan.recv(STEP_TIMEOUT)? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the running daemon closed the takeover socket",
                ));
            };
            let Msg::Offer {
                protocol,
                pid,
                items,
                more,
            } = msg
            else {
                return Err(unexpected(&msg));
            };
            if protocol != PROTOCOL {
                return Err(io::Error::other(format!(
                    "the running daemon speaks takeover protocol {protocol}, this one {PROTOCOL}"
                )));
            }
            if items.len() != fds.len() {
                return Err(io::Error::other(format!(
                    "the offer lists {} descriptors and carries {}",
                    items.len(),
                    fds.len()
                )));
            }
            old_pid = pid;
            offered.extend(items.into_iter().zip(fds));
            if !more {
                break;
            }
        }
        Ok((Self { chan, old_pid }, offered))
    }

    /// The pid of the daemon being replaced.
    #[must_use]
    pub fn old_pid(&self) -> u32 {
        self.old_pid
    }

    /// Tells the running daemon this one is ready (step 2) and waits until it stopped accepting
    /// (step 3); the store revision it published.
    ///
    /// # Errors
    /// It went away, did not answer within [`STEP_TIMEOUT`], or sent something else.
    pub fn ready(&self) -> io::Result<u64> {
        self.chan.send(&Msg::Ready, &[])?;
        match self.chan.expect(STEP_TIMEOUT, "it stopped accepting")? {
            Msg::Stopped { revision } => Ok(revision),
            other => Err(unexpected(&other)),
        }
    }

    /// Tells the running daemon this one accepts (step 4); it drains and exits.
    ///
    /// # Errors
    /// The socket failing.
    pub fn serving(self) -> io::Result<OldDaemon> {
        self.chan.send(&Msg::Serving, &[])?;
        Ok(OldDaemon {
            chan: self.chan,
            pid: self.old_pid,
        })
    }
}

/// The replaced daemon while it drains.
pub struct OldDaemon {
    chan: Channel,
    pid: u32,
}

impl OldDaemon {
    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until it has exited (its end of the socket closed), at most `limit`; whether it has.
    #[must_use]
    pub fn wait_exit(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            match self.chan.recv(Duration::from_millis(500)) {
                Ok(None) => return true,
                Ok(Some(_)) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}

fn unexpected(msg: &Msg) -> io::Error {
    io::Error::other(format!("unexpected takeover message {msg:?}"))
}

/// The fds of `items` as borrowed descriptors with what they are.
#[must_use]
pub fn borrowed<'a>(items: &'a [(Item, OwnedFd)]) -> Vec<(Item, BorrowedFd<'a>)> {
    items
        .iter()
        .map(|(i, fd)| (i.clone(), fd.as_fd()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn listening_sockets_and_locks_cross_with_the_takeover_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("takeover.sock");
        let old = Listener::bind(&path).unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = proxy.local_addr().unwrap();
        let lock = std::fs::File::create(dir.path().join("x.lock")).unwrap();
        let items = vec![
            (Item::Listener { addr, tls: false }, proxy.as_fd()),
            (
                Item::Lock {
                    guards: Guarded::Address(addr),
                    path: dir.path().join("x.lock"),
                },
                lock.as_fd(),
            ),
        ];
        std::thread::scope(|s| {
            let new = s.spawn(|| {
                let (t, offered) = Takeover::connect(&path).unwrap();
                assert_eq!(t.old_pid(), std::process::id());
                assert_eq!(offered.len(), 2);
                assert_eq!(offered[0].0, Item::Listener { addr, tls: false });
                let inherited = TcpListener::from(offered.into_iter().next().unwrap().1);
                assert_eq!(inherited.local_addr().unwrap(), addr);
                assert_eq!(t.ready().unwrap(), 7);
                let old = t.serving().unwrap();
                // The same socket: a connection made now is accepted through the new descriptor.
                let _c = std::net::TcpStream::connect(addr).unwrap();
                inherited.accept().unwrap();
                assert!(old.wait_exit(Duration::from_secs(10)));
            });
            let session = loop {
                if let Some(s) = old.accept().unwrap() {
                    break s;
                }
            };
            assert_eq!(session.pid(), std::process::id());
            session.offer(&items).unwrap();
            assert!(session.wait_ready(&|| false).unwrap());
            session.stopped(7).unwrap();
            drop(session);
            new.join().unwrap();
        });
    }

    #[test]
    fn an_offer_larger_than_one_packet_arrives_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let old = Listener::bind(&path).unwrap();
        let sockets: Vec<TcpListener> = (0..FDS_PER_PACKET + 3)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let items: Vec<(Item, BorrowedFd<'_>)> = sockets
            .iter()
            .map(|l| {
                let addr = l.local_addr().unwrap();
                (Item::Listener { addr, tls: true }, l.as_fd())
            })
            .collect();
        std::thread::scope(|s| {
            let new = s.spawn(|| Takeover::connect(&path).unwrap().1);
            let session = loop {
                if let Some(s) = old.accept().unwrap() {
                    break s;
                }
            };
            session.offer(&items).unwrap();
            let offered = new.join().unwrap();
            assert_eq!(offered.len(), sockets.len());
            for ((item, fd), l) in offered.into_iter().zip(&sockets) {
                let got = TcpListener::from(fd).local_addr().unwrap();
                assert_eq!(got, l.local_addr().unwrap());
                assert_eq!(
                    item,
                    Item::Listener {
                        addr: got,
                        tls: true
                    }
                );
            }
        });
    }
}
