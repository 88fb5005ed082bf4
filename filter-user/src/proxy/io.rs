//! Client-side I/O shared by the connection loop ([`super::conn`]) and the forwarding of one
//! request ([`super::exchange`]): the per-connection buffers, whether the connection goes on
//! ([`Flow`]), bounded writes to the client, and writing the proxy's own error answers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::respond;
use super::settings::Settings;
use crate::codes::{ErrorCode, Rule};
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

/// Per-connection buffers, reused across requests.
pub(crate) struct Conn {
    /// Client bytes (heads, bodies, pipelined requests).
    pub buf: BytesMut,
    /// The upstream request head (and any body bytes sent with it).
    pub out: Vec<u8>,
    /// Upstream bytes.
    pub rbuf: BytesMut,
    /// The client response head (and any body bytes sent with it).
    pub rout: Vec<u8>,
    /// The upstream connection kept between requests: `(upstream index, stream)`.
    pub up: Option<(usize, TcpStream)>,
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
}

impl Conn {
    /// Fresh buffers for a client at `peer`.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Self {
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(4096),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            rout: Vec::with_capacity(4096),
            up: None,
            peer,
            tls,
            body_in: 0,
            sent: 0,
            log: Vec::new(),
        }
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

/// A refusal built from a bare code (and the rule a `BAD_REQUEST` broke).
pub(crate) async fn refuse_code<S>(
    c: &mut Conn,
    io: &mut S,
    st: &Settings,
    code: ErrorCode,
    rule: Option<Rule>,
    request_id: &str,
    close: bool,
) -> Flow
where
    S: AsyncWrite + Unpin,
{
    write_refusal(c, io, st, &Denial::new(code), rule, request_id, close).await
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
