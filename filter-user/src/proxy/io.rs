//! Client-side I/O shared by the connection loop ([`super::conn`]) and the forwarding of one
//! request ([`super::exchange`]): the per-connection buffers, whether the connection goes on
//! ([`Flow`]), bounded writes to the client, and writing the proxy's own error answers.
//!
//! A connection holds its buffers only while a request is under way: an idle one (before its
//! first request, or between two) has none, and waits for the client's bytes with
//! [`ReadReady`] rather than a read into a buffer. Buffers go back to the shard's
//! [`BufferPool`] when the connection goes idle, and come from it when bytes arrive.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::respond;
use super::settings::Settings;
use super::upstream::{UpKey, UpStream};
use crate::codes::Rule;
use crate::gate::Denial;

/// Read-buffer size for heads and bodies.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Whether the connection goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Next request.
    Continue,
    /// Close now (the answer, if any, was written).
    Close,
    /// Close after lingering: the client may still be sending a body we did not read.
    Linger,
}

/// Head buffers (`out`, `rout`) are made with this capacity.
const HEAD_CHUNK: usize = 4096;

/// Buffer sets a shard keeps for its connections' next requests.
const POOLED_SETS: usize = 64;

/// A buffer grown past this is freed rather than pooled.
const POOLED_MAX: usize = 4 * READ_CHUNK;

/// Per-connection buffers, held while a request is under way (empty while idle).
pub(crate) struct Conn {
    /// Client bytes (heads, bodies, pipelined requests).
    pub buf: BytesMut,
    /// The upstream request head (and any body bytes sent with it).
    pub out: Vec<u8>,
    /// Upstream bytes.
    pub rbuf: BytesMut,
    /// The client response head (and any body bytes sent with it).
    pub rout: Vec<u8>,
    /// The upstream connection kept between requests, and the target it goes to.
    pub up: Option<(UpKey, UpStream)>,
    /// The client address.
    pub peer: SocketAddr,
    /// The client connection is TLS.
    pub tls: bool,
    /// Body bytes taken from the client for the current request (the head is counted apart).
    pub body_in: u64,
    /// Bytes written to the client for the current request.
    pub sent: u64,
    /// The current request's access-log line while it is answered (empty when the log is off;
    /// allocated on the first logged request).
    pub log: Vec<u8>,
    /// The buffers above came from [`Conn::equip`] and go back with [`Conn::shed`].
    equipped: bool,
}

impl Conn {
    /// A client at `peer`, without buffers yet ([`Conn::equip`] gives them).
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Self {
            buf: BytesMut::new(),
            out: Vec::new(),
            rbuf: BytesMut::new(),
            rout: Vec::new(),
            up: None,
            peer,
            tls,
            body_in: 0,
            sent: 0,
            log: Vec::new(),
            equipped: false,
        }
    }

    /// Takes buffers from `pool` (or new ones) unless the connection has them.
    pub fn equip(&mut self, pool: &mut BufferPool) {
        if self.equipped {
            return;
        }
        self.equipped = true;
        let set = pool.sets.pop().unwrap_or_else(BufferSet::new);
        self.buf = set.buf;
        self.out = set.out;
        self.rbuf = set.rbuf;
        self.rout = set.rout;
        self.log = set.log;
    }

    /// Gives the buffers back to `pool` (or frees them) while the connection is idle; keeps
    /// them when unread client bytes are in `buf` (a pipelined request).
    pub fn shed(&mut self, pool: &mut BufferPool) {
        if !self.buf.is_empty() || !self.equipped {
            return;
        }
        self.equipped = false;
        let mut set = BufferSet {
            buf: std::mem::take(&mut self.buf),
            out: std::mem::take(&mut self.out),
            rbuf: std::mem::take(&mut self.rbuf),
            rout: std::mem::take(&mut self.rout),
            log: std::mem::take(&mut self.log),
        };
        if pool.sets.len() < POOLED_SETS && set.reusable() {
            set.clear();
            pool.sets.push(set);
        }
    }
}

/// One connection's buffers.
struct BufferSet {
    buf: BytesMut,
    out: Vec<u8>,
    rbuf: BytesMut,
    rout: Vec<u8>,
    log: Vec<u8>,
}

impl BufferSet {
    fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(HEAD_CHUNK),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            rout: Vec::with_capacity(HEAD_CHUNK),
            log: Vec::new(),
        }
    }

    /// Worth keeping: none grew large (a set used by a large head or answer is freed).
    fn reusable(&self) -> bool {
        [
            self.buf.capacity(),
            self.out.capacity(),
            self.rbuf.capacity(),
            self.rout.capacity(),
            self.log.capacity(),
        ]
        .iter()
        .all(|&c| c <= POOLED_MAX)
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.out.clear();
        self.rbuf.clear();
        self.rout.clear();
        self.log.clear();
    }
}

/// A shard's spare buffer sets (at most [`POOLED_SETS`]): a busy keep-alive connection going
/// idle and waking again takes and gives back a set without allocating.
#[derive(Default)]
pub(crate) struct BufferPool {
    sets: Vec<BufferSet>,
}

/// A client stream that can wait until a read would find something, without a buffer.
pub(crate) trait ReadReady: AsyncRead + AsyncWrite + Unpin {
    /// Returns when a read may make progress (bytes, end of stream, or an error to report).
    fn read_ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>>;
}

impl ReadReady for TcpStream {
    fn read_ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> {
        self.readable()
    }
}

impl ReadReady for tokio_rustls::server::TlsStream<TcpStream> {
    async fn read_ready(&mut self) -> std::io::Result<()> {
        let (tcp, session) = self.get_ref();
        // Plaintext already decrypted (or the peer's close) is read at once.
        if !session.wants_read() {
            return Ok(());
        }
        tcp.readable().await
    }
}

/// Makes sure `buf` can take at least `min` more bytes.
pub(crate) fn spare(buf: &mut BytesMut, min: usize) {
    if buf.capacity() - buf.len() < min {
        buf.reserve(min);
    }
}

/// Writes an error answer (`rule`: the one a `BAD_REQUEST` broke); `close` makes it the
/// connection's last.
pub(crate) async fn write_refusal<S>(
    c: &mut Conn,
    io: &mut S,
    st: &Settings,
    denial: &Denial,
    rule: Option<Rule>,
    request_id: &str,
    close: bool,
) -> Flow
where
    S: AsyncWrite + Unpin,
{
    c.rout.clear();
    respond::write_error_response(&mut c.rout, denial, rule, request_id, st.opaque, close);
    c.sent += c.rout.len() as u64;
    if write_client(io, &c.rout, st.client_timeout).await.is_err() {
        return Flow::Close;
    }
    if close { Flow::Linger } else { Flow::Continue }
}

/// Writes and flushes to the client (flush matters for TLS), within `limit`.
pub(crate) async fn write_client<S: AsyncWrite + Unpin>(
    io: &mut S,
    data: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    match timeout(limit, async {
        io.write_all(data).await?;
        io.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
