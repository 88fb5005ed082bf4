//! Listener sockets: one `SO_REUSEPORT` socket per shard and address, bound before the shards
//! start so bind errors surface at once and an ephemeral port (`:0`) is shared by every shard.
//! Sockets handed over by a running daemon (`run --takeover`) are used before any is bound:
//! they are the very sockets the old daemon accepted on, so their queued connections are kept.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog per socket.
const BACKLOG: i32 = 4096;

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The configured address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// One shard's listeners, each flagged TLS or plain.
#[derive(Debug)]
pub(crate) struct ShardListeners {
    /// `(listener, is_tls)`.
    pub list: Vec<(TcpListener, bool)>,
}

/// Everything bound.
#[derive(Debug)]
pub(crate) struct Bound {
    /// Resolved plain addresses.
    pub http: Vec<SocketAddr>,
    /// Resolved TLS addresses.
    pub https: Vec<SocketAddr>,
    /// Per shard.
    pub per_shard: Vec<ShardListeners>,
    /// Inherited sockets no configured address wanted.
    pub unused: Vec<ListenSocket>,
}

/// A listening socket with the address it listens on and whether it serves TLS: what a
/// running proxy can hand over, and what a new one is handed.
#[derive(Debug)]
pub struct ListenSocket {
    /// The bound address.
    pub addr: SocketAddr,
    /// Whether it is a `listen.https` socket.
    pub tls: bool,
    /// The socket.
    pub socket: TcpListener,
}

/// Binds `shards` sockets for each address, taking the matching sockets of `inherited` first
/// (same address, same TLS flag; never for port 0). When more sockets were inherited for an
/// address than there are shards, a shard accepts on several; the ones no address wants are
/// returned untouched in `Bound::unused`.
pub(crate) fn bind_all(
    http: &[SocketAddr],
    https: &[SocketAddr],
    shards: usize,
    mut inherited: Vec<ListenSocket>,
) -> Result<Bound, BindError> {
    let mut per_shard: Vec<ShardListeners> = (0..shards)
        .map(|_| ShardListeners { list: Vec::new() })
        .collect();
    let mut resolved = [Vec::new(), Vec::new()];
    for (tls, addrs) in [(false, http), (true, https)] {
        for &want in addrs {
            let (mine, rest): (Vec<_>, Vec<_>) = inherited
                .into_iter()
                .partition(|s| want.port() != 0 && s.addr == want && s.tls == tls);
            inherited = rest;
            let mut mine = mine.into_iter().map(|s| s.socket);
            let mut addr = want;
            for shard in &mut per_shard {
                let l = match mine.next() {
                    Some(l) => l,
                    None => bind_one(addr).map_err(|source| BindError { addr: want, source })?,
                };
                // The first socket fixes an ephemeral port; the others join it.
                addr = l
                    .local_addr()
                    .map_err(|source| BindError { addr: want, source })?;
                shard.list.push((l, tls));
            }
            for (n, l) in mine.enumerate() {
                per_shard[n % shards].list.push((l, tls));
            }
            resolved[usize::from(tls)].push(addr);
        }
    }
    let [http, https] = resolved;
    Ok(Bound {
        http,
        https,
        per_shard,
        unused: inherited,
    })
}

/// A second descriptor of every socket in `per_shard`, with its address and TLS flag.
pub(crate) fn duplicates(per_shard: &[ShardListeners]) -> std::io::Result<Vec<ListenSocket>> {
    let mut out = Vec::new();
    for shard in per_shard {
        for (l, tls) in &shard.list {
            out.push(ListenSocket {
                addr: l.local_addr()?,
                tls: *tls,
                socket: l.try_clone()?,
            });
        }
    }
    Ok(out)
}

/// One listening socket as every shard gets it: `SO_REUSEPORT`, `SO_REUSEADDR`, `TCP_NODELAY`,
/// non-blocking, IPv6-only for IPv6 addresses. Public so the bench's I/O-floor relay listens the
/// same way.
///
/// # Errors
/// Socket creation, an option, `bind` or `listen` failing.
pub fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_tcp_nodelay(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}
