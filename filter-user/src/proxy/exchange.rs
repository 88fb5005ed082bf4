//! One forwarded request: send the prepared head (with whatever body is already buffered),
//! stream the rest of the body with bounded buffers, read the upstream's answer and stream it
//! back as it arrives. A reused upstream connection found dead before any answer byte is
//! retried once on a fresh one when the whole request is still in hand.

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::body::{BodyError, BodyState, Chunked};
use super::head::Prepared;
use super::io::{Conn, Flow, READ_CHUNK, refuse_code, spare, write_client};
use super::response::{self, RespFraming, RespHead, RespStep};
use super::settings::Settings;
use super::state::ShardState;
use super::upstream;
use crate::codes::ErrorCode;

/// Forwards the request `p` whose upstream head is in `c.out`.
pub(crate) async fn forward<S>(shard: &ShardState, c: &mut Conn, io: &mut S, p: &Prepared) -> Flow
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let st = &*shard.settings;
    let rid = p.request_id.as_str();
    c.buf.advance(p.head_len);
    let mut body = BodyState::new(p.framing, st.max_body_bytes);
    if p.expect_continue && !body.done() && c.buf.is_empty() {
        c.rout.clear();
        c.rout
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\nX-Request-Id: ");
        c.rout.extend_from_slice(p.request_id.as_bytes());
        c.rout.extend_from_slice(b"\r\n\r\n");
        if write_client(io, &c.rout, st.client_timeout).await.is_err() {
            return Flow::Close;
        }
    }
    match body.take(&c.buf) {
        Ok(n) => {
            c.out.extend_from_slice(&c.buf[..n]);
            c.buf.advance(n);
        }
        Err(e) => return refuse_code(c, io, st, body_code(e), rid, true).await,
    }
    // The whole request is in `c.out`: a stale pooled connection can be retried safely.
    let whole = body.done();
    let up_idx = st.routes.routes[p.route].upstream;
    let (mut up, mut reused) = match take_upstream(shard, c, up_idx).await {
        Ok(x) => x,
        Err(code) => return refuse_code(c, io, st, code, rid, !whole || !p.keep_alive).await,
    };
    let mut retried = false;
    loop {
        if timeout(st.upstream_timeout, up.write_all(&c.out))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            break;
        }
        if reused && whole && !retried {
            retried = true;
            match fresh(st, up_idx).await {
                Ok(s) => (up, reused) = (s, false),
                Err(code) => return refuse_code(c, io, st, code, rid, !p.keep_alive).await,
            }
            continue;
        }
        let close = !whole || !p.keep_alive;
        return refuse_code(c, io, st, ErrorCode::UpstreamUnavailable, rid, close).await;
    }
    // Stream the rest of the request body, one bounded buffer at a time.
    while !body.done() {
        if c.buf.is_empty() {
            spare(&mut c.buf, READ_CHUNK);
            match timeout(st.client_timeout, io.read_buf(&mut c.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Flow::Close,
            }
        }
        let n = match body.take(&c.buf) {
            Ok(n) => n,
            Err(e) => return refuse_code(c, io, st, body_code(e), rid, true).await,
        };
        if !matches!(
            timeout(st.upstream_timeout, up.write_all(&c.buf[..n])).await,
            Ok(Ok(()))
        ) {
            return refuse_code(c, io, st, ErrorCode::UpstreamUnavailable, rid, true).await;
        }
        c.buf.advance(n);
    }
    // Read the response head; interim (1xx) answers are passed on or dropped.
    c.rbuf.clear();
    let head = loop {
        // Decided late so a drain that starts while we wait still closes this connection.
        let close_client = !p.keep_alive || shard.stopping.get();
        match response::process(&c.rbuf, p.is_head, &p.request_id, close_client, &mut c.rout) {
            RespStep::Final(h) => break h,
            RespStep::Interim(n) => {
                if !c.rout.is_empty() && write_client(io, &c.rout, st.client_timeout).await.is_err()
                {
                    return Flow::Close;
                }
                c.rbuf.advance(n);
                continue;
            }
            RespStep::Bad => {
                return refuse_code(c, io, st, ErrorCode::UpstreamUnavailable, rid, true).await;
            }
            RespStep::Partial => {}
        }
        spare(&mut c.rbuf, READ_CHUNK);
        match timeout(st.upstream_timeout, up.read_buf(&mut c.rbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) if reused && whole && !retried && c.rbuf.is_empty() => {
                // The pooled connection was closed under us before answering: retry once.
                retried = true;
                match fresh(st, up_idx).await {
                    Ok(s) => (up, reused) = (s, false),
                    Err(code) => return refuse_code(c, io, st, code, rid, close_client).await,
                }
                if !matches!(
                    timeout(st.upstream_timeout, up.write_all(&c.out)).await,
                    Ok(Ok(()))
                ) {
                    return refuse_code(
                        c,
                        io,
                        st,
                        ErrorCode::UpstreamUnavailable,
                        rid,
                        close_client,
                    )
                    .await;
                }
            }
            Ok(_) => {
                return refuse_code(c, io, st, ErrorCode::UpstreamUnavailable, rid, close_client)
                    .await;
            }
            Err(_) => {
                return refuse_code(c, io, st, ErrorCode::UpstreamTimeout, rid, close_client).await;
            }
        }
    };
    let _ = reused;
    relay_response(st, c, io, up, up_idx, &head).await
}

/// Sends the response head and streams its body to the client as it arrives.
async fn relay_response<S>(
    st: &Settings,
    c: &mut Conn,
    io: &mut S,
    mut up: TcpStream,
    up_idx: usize,
    head: &RespHead,
) -> Flow
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    c.rbuf.advance(head.head_len);
    let mut body = match head.framing {
        RespFraming::Empty => BodyState::Done,
        RespFraming::Length(n) => BodyState::Length(n),
        RespFraming::Chunked => BodyState::Chunked(Chunked::new(u64::MAX)),
        RespFraming::UntilClose => BodyState::UntilClose,
    };
    // Whatever body bytes came with the head leave in the same write.
    let Ok(n) = body.take(&c.rbuf) else {
        return Flow::Close;
    };
    c.rout.extend_from_slice(&c.rbuf[..n]);
    c.rbuf.advance(n);
    if write_client(io, &c.rout, st.client_timeout).await.is_err() {
        return Flow::Close;
    }
    while !body.done() {
        spare(&mut c.rbuf, READ_CHUNK);
        match timeout(st.upstream_timeout, up.read_buf(&mut c.rbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // EOF ends an until-close body; anywhere else the answer is cut short.
            _ => return Flow::Close,
        }
        let Ok(n) = body.take(&c.rbuf) else {
            return Flow::Close;
        };
        if write_client(io, &c.rbuf[..n], st.client_timeout)
            .await
            .is_err()
        {
            return Flow::Close;
        }
        c.rbuf.advance(n);
    }
    if head.reusable && c.rbuf.is_empty() {
        c.up = Some((up_idx, up));
    } else {
        let _ = up.shutdown().await;
    }
    if head.close_client {
        Flow::Close
    } else {
        Flow::Continue
    }
}

/// The connection kept from the last request, a pooled one, or a new one. `true` = reused.
async fn take_upstream(
    shard: &ShardState,
    c: &mut Conn,
    up_idx: usize,
) -> Result<(TcpStream, bool), ErrorCode> {
    match c.up.take() {
        Some((i, s)) if i == up_idx => return Ok((s, true)),
        Some((i, s)) => shard.pool.borrow_mut().put(i, s),
        None => {}
    }
    if let Some(s) = shard.pool.borrow_mut().take(up_idx) {
        return Ok((s, true));
    }
    fresh(&shard.settings, up_idx).await.map(|s| (s, false))
}

async fn fresh(st: &Settings, up_idx: usize) -> Result<TcpStream, ErrorCode> {
    upstream::connect(st.routes.upstreams[up_idx].addr, st.upstream_timeout).await
}

fn body_code(e: BodyError) -> ErrorCode {
    match e {
        BodyError::Malformed => ErrorCode::BadRequest,
        BodyError::TooLarge => ErrorCode::PayloadTooLarge,
    }
}
