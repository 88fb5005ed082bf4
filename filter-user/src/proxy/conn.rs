//! One client connection: read a head (bounded in size and time), let [`head::process`] decide,
//! answer refusals, hand allowed requests to [`exchange`], and loop for keep-alive and
//! pipelined requests, which are answered in order because they are handled one at a time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use super::exchange;
use super::head::{self, Framing, HeadCtx, Step};
use super::respond;
use super::shard::{Settings, Shard};
use crate::codes::ErrorCode;
use crate::gate::Denial;

/// Read-buffer size for heads and bodies.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// How long a closing connection keeps reading (and discarding) so the client sees our answer
/// rather than a reset.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;

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
}

/// Makes sure `buf` can take at least `min` more bytes.
pub(crate) fn spare(buf: &mut BytesMut, min: usize) {
    if buf.capacity() - buf.len() < min {
        buf.reserve(min);
    }
}

/// Serves a client connection until it closes, errs, times out, or the shard drains.
pub(crate) async fn serve<S>(shard: &Shard, mut io: S, peer: SocketAddr, tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = Conn {
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(4096),
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        rout: Vec::with_capacity(4096),
        up: None,
        peer,
        tls,
    };
    let flow = run(shard, &mut c, &mut io).await;
    if let Some((i, s)) = c.up.take() {
        shard.pool.borrow_mut().put(i, s);
    }
    let _ = timeout(LINGER, io.shutdown()).await;
    if flow == Flow::Linger {
        linger(&mut io).await;
    }
}

async fn linger<S: AsyncRead + Unpin>(io: &mut S) {
    let mut sink = [0u8; 8192];
    let mut seen = 0;
    let deadline = Instant::now() + LINGER;
    while seen < LINGER_BYTES {
        match timeout_at(deadline, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => seen += n,
            _ => return,
        }
    }
}

async fn run<S>(shard: &Shard, c: &mut Conn, io: &mut S) -> Flow
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let st = &*shard.settings;
    let peer_ip = c.peer.ip();
    let peer_text = peer_ip.to_string();
    loop {
        let deadline = Instant::now() + st.client_timeout;
        let step = loop {
            if !c.buf.is_empty() {
                let step = {
                    let mut gate = shard.gate.borrow_mut();
                    let mut ids = shard.ids.borrow_mut();
                    let mut ctx = HeadCtx {
                        routes: &st.routes,
                        max_header_bytes: st.max_header_bytes,
                        max_body_bytes: st.max_body_bytes,
                        tls: c.tls,
                        peer: peer_ip,
                        peer_text: &peer_text,
                        trusted_proxies: &st.trusted_proxies,
                        gate: &mut **gate,
                        ids: &mut ids,
                    };
                    head::process(&c.buf, &mut ctx, &mut c.out)
                };
                if !matches!(step, Step::Partial) {
                    break step;
                }
            }
            spare(&mut c.buf, 4096);
            let read = if c.buf.is_empty() {
                // Idle between requests: leave at once when the shard drains.
                let notified = shard.notify.notified();
                if shard.stopping.get() {
                    return Flow::Close;
                }
                tokio::select! {
                    biased;
                    r = timeout_at(deadline, io.read_buf(&mut c.buf)) => r,
                    () = notified => return Flow::Close,
                }
            } else {
                timeout_at(deadline, io.read_buf(&mut c.buf)).await
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                // EOF, error, or idle/slow client past `client_timeout`.
                _ => return Flow::Close,
            }
        };
        let flow = match step {
            Step::Partial => unreachable!("the loop above only breaks on a decision"),
            Step::Refuse(r) => {
                let close = !r.keep_alive
                    || r.head_len.is_none()
                    || r.framing != Framing::Empty
                    || shard.stopping.get();
                let flow = write_refusal(c, io, st, &r.denial, r.request_id.as_str(), close).await;
                if flow == Flow::Continue
                    && let Some(n) = r.head_len
                {
                    c.buf.advance(n);
                }
                flow
            }
            Step::Forward(p) => exchange::forward(shard, c, io, &p).await,
        };
        if flow != Flow::Continue {
            return flow;
        }
    }
}

/// Writes an error answer; `close` makes it the connection's last.
pub(crate) async fn write_refusal<S>(
    c: &mut Conn,
    io: &mut S,
    st: &Settings,
    denial: &Denial,
    request_id: &str,
    close: bool,
) -> Flow
where
    S: AsyncWrite + Unpin,
{
    c.rout.clear();
    respond::write_error_response(&mut c.rout, denial, request_id, st.opaque, close);
    if write_client(io, &c.rout, st.client_timeout).await.is_err() {
        return Flow::Close;
    }
    if close { Flow::Linger } else { Flow::Continue }
}

/// A refusal built from a bare code.
pub(crate) async fn refuse_code<S>(
    c: &mut Conn,
    io: &mut S,
    st: &Settings,
    code: ErrorCode,
    request_id: &str,
    close: bool,
) -> Flow
where
    S: AsyncWrite + Unpin,
{
    write_refusal(c, io, st, &Denial::new(code), request_id, close).await
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
