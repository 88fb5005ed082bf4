//! One forwarded request: send the prepared head (with whatever body is already buffered),
//! stream the rest of the body with bounded buffers (a chunked body's trailer section parsed and
//! filtered by [`forward::write_trailers`], never passed verbatim), read the upstream's answer
//! and stream it back as it arrives. A reused upstream connection found dead before any answer byte is
//! retried once on a fresh one when the whole request is still in hand. The [`Outcome`] says
//! whether the client connection goes on and, when the upstream failed, why (classified once,
//! by [`UpstreamError`]).

use std::time::{Duration, Instant};

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::body::{BodyError, BodyState, Chunked};
use super::forward;
use super::head::Prepared;
use super::io::{Conn, Flow, READ_CHUNK, spare, write_client, write_refusal};
use super::respond;
use super::response::{self, RespFraming, RespHead, RespStep};
use super::route::CompiledRoute;
use super::settings::Settings;
use super::state::ShardState;
use super::upstream;
use super::upstream_error::{UpstreamError, UpstreamErrorClass};
use crate::codes::{ErrorCode, Rule};
use crate::gate::Denial;

/// What became of one forwarded request.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Whether the client connection goes on.
    pub flow: Flow,
    /// Why the upstream failed, when it did: the client was then answered 502/504, or its
    /// answer was cut short.
    pub upstream_error: Option<UpstreamError>,
    /// The code the proxy answered with itself (a bad body, 502, 504); `None` when the
    /// upstream's answer was relayed.
    pub answered: Option<ErrorCode>,
    /// The upstream's status, when its answer was relayed.
    pub status: Option<u16>,
    /// From sending the request upstream to its response head.
    pub upstream_took: Option<Duration>,
}

impl From<Flow> for Outcome {
    fn from(flow: Flow) -> Self {
        Self {
            flow,
            upstream_error: None,
            answered: None,
            status: None,
            upstream_took: None,
        }
    }
}

/// Answers the client with `code` (no upstream failure behind it); `rule`: the one a
/// `BAD_REQUEST` broke.
async fn refused<S>(
    c: &mut Conn,
    io: &mut S,
    st: &Settings,
    (code, rule): (ErrorCode, Option<Rule>),
    request_id: &str,
    close: bool,
) -> Outcome
where
    S: AsyncWrite + Unpin,
{
    let mut denial = Denial::new(code);
    if code == ErrorCode::PayloadTooLarge {
        denial.hint = Some(respond::body_limit_hint(st.max_body_bytes));
    }
    Outcome {
        flow: write_refusal(c, io, st, &denial, rule, request_id, close).await,
        upstream_error: None,
        answered: Some(code),
        status: None,
        upstream_took: None,
    }
}

/// Forwards the request `p` whose upstream head is in `c.out`, with the settings `st` it was
/// routed by.
pub(crate) async fn forward<S>(
    shard: &ShardState,
    st: &Settings,
    c: &mut Conn,
    io: &mut S,
    p: &Prepared,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
            return Flow::Close.into();
        }
    }
    // Whatever of the body is here already leaves with the head (its trailers filtered).
    let route = &st.routes.routes[p.route];
    loop {
        let n = match next_piece(&mut body, &c.buf, route, &mut c.out) {
            Ok(Piece::Verbatim(n)) => {
                c.out.extend_from_slice(&c.buf[..n]);
                n
            }
            Ok(Piece::Trailers(n)) => n,
            Ok(Piece::Nothing) => break,
            Err(why) => return refused(c, io, st, why, rid, true).await,
        };
        c.buf.advance(n);
        c.body_in += n as u64;
    }
    // The whole request is in `c.out`: a stale pooled connection can be retried safely.
    let whole = body.done();
    let up_idx = st.routes.routes[p.route].upstream;
    let (mut up, mut reused) = match take_upstream(shard, st, c, up_idx).await {
        Ok(x) => x,
        Err(e) => {
            let close = !whole || !p.keep_alive;
            return failed(c, io, st, connect_code(&e), e, rid, close).await;
        }
    };
    let mut retried = false;
    loop {
        let Err(e) = send(&mut up, &c.out, st.upstream_timeout).await else {
            break;
        };
        if reused && whole && !retried {
            // A pooled connection found dead: not the upstream's failure, try a fresh one.
            retried = true;
            match fresh(st, up_idx).await {
                Ok(s) => (up, reused) = (s, false),
                Err(e) => return failed(c, io, st, connect_code(&e), e, rid, !p.keep_alive).await,
            }
            continue;
        }
        let close = !whole || !p.keep_alive;
        return failed(c, io, st, ErrorCode::UpstreamUnavailable, e, rid, close).await;
    }
    // Stream the rest of the request body, one bounded buffer at a time. The head has gone:
    // `c.out` only carries a filtered trailer section from here on (no retry needs it, as the
    // request was not whole).
    while !body.done() {
        c.out.clear();
        let piece = match next_piece(&mut body, &c.buf, route, &mut c.out) {
            Ok(piece) => piece,
            Err(why) => return refused(c, io, st, why, rid, true).await,
        };
        let (data, n) = match piece {
            Piece::Nothing => {
                spare(&mut c.buf, READ_CHUNK);
                match timeout(st.client_timeout, io.read_buf(&mut c.buf)).await {
                    Ok(Ok(n)) if n > 0 => continue,
                    _ => return Flow::Close.into(),
                }
            }
            Piece::Verbatim(n) => (&c.buf[..n], n),
            Piece::Trailers(n) => (&c.out[..], n),
        };
        if let Err(e) = send(&mut up, data, st.upstream_timeout).await {
            return failed(c, io, st, ErrorCode::UpstreamUnavailable, e, rid, true).await;
        }
        c.buf.advance(n);
        c.body_in += n as u64;
    }
    // Read the response head; interim (1xx) answers are passed on or dropped.
    let sent = Instant::now();
    c.rbuf.clear();
    let head = loop {
        // Decided late so a drain that starts while we wait still closes this connection.
        let close_client = !p.keep_alive || shard.stopping.get();
        match response::process(&c.rbuf, p.is_head, &p.request_id, close_client, &mut c.rout) {
            RespStep::Final(h) => {
                let took = sent.elapsed();
                shard.metrics.upstream(took);
                break (h, took);
            }
            RespStep::Interim(n) => {
                if !c.rout.is_empty() && write_client(io, &c.rout, st.client_timeout).await.is_err()
                {
                    return Flow::Close.into();
                }
                c.rbuf.advance(n);
                continue;
            }
            RespStep::Bad => {
                let e = UpstreamError::bad_response("unparsable, oversized or unsupported head");
                return failed(c, io, st, ErrorCode::UpstreamUnavailable, e, rid, true).await;
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
                    Err(e) => {
                        return failed(c, io, st, connect_code(&e), e, rid, close_client).await;
                    }
                }
                if let Err(e) = send(&mut up, &c.out, st.upstream_timeout).await {
                    let code = ErrorCode::UpstreamUnavailable;
                    return failed(c, io, st, code, e, rid, close_client).await;
                }
            }
            Ok(read) => {
                // Closed or broken before a complete head.
                let e = read.map_or_else(UpstreamError::io, |_| UpstreamError::closed_early());
                let code = ErrorCode::UpstreamUnavailable;
                return failed(c, io, st, code, e, rid, close_client).await;
            }
            Err(_) => {
                let (code, e) = (ErrorCode::UpstreamTimeout, UpstreamError::timeout());
                return failed(c, io, st, code, e, rid, close_client).await;
            }
        }
    };
    let _ = reused;
    let (head, took) = head;
    let mut outcome = relay_response(st, c, io, up, up_idx, &head).await;
    outcome.status = Some(head.status);
    outcome.upstream_took = Some(took);
    outcome
}

/// Sends the response head and streams its body to the client as it arrives.
async fn relay_response<S>(
    st: &Settings,
    c: &mut Conn,
    io: &mut S,
    mut up: TcpStream,
    up_idx: usize,
    head: &RespHead,
) -> Outcome
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
    // The answer is cut short: the client sees the connection close.
    let cut = |e: UpstreamError| Outcome {
        flow: Flow::Close,
        upstream_error: Some(e),
        ..Flow::Close.into()
    };
    // Whatever body bytes came with the head leave in the same write.
    let Ok(n) = body.take(&c.rbuf) else {
        return cut(UpstreamError::bad_response("malformed chunked body"));
    };
    c.rout.extend_from_slice(&c.rbuf[..n]);
    c.rbuf.advance(n);
    c.sent += c.rout.len() as u64;
    if write_client(io, &c.rout, st.client_timeout).await.is_err() {
        return Flow::Close.into();
    }
    while !body.done() {
        spare(&mut c.rbuf, READ_CHUNK);
        match timeout(st.upstream_timeout, up.read_buf(&mut c.rbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // EOF ends an until-close body; anywhere else the answer is cut short.
            Ok(Ok(_)) if matches!(body, BodyState::UntilClose) => return Flow::Close.into(),
            Ok(Ok(_)) => return cut(UpstreamError::closed_early()),
            Ok(Err(e)) => return cut(UpstreamError::io(e)),
            Err(_) => return cut(UpstreamError::timeout()),
        }
        let Ok(n) = body.take(&c.rbuf) else {
            return cut(UpstreamError::bad_response("malformed chunked body"));
        };
        c.sent += n as u64;
        if write_client(io, &c.rbuf[..n], st.client_timeout)
            .await
            .is_err()
        {
            return Flow::Close.into();
        }
        c.rbuf.advance(n);
    }
    if head.reusable && c.rbuf.is_empty() {
        c.up = Some((up_idx, up));
    } else {
        let _ = up.shutdown().await;
    }
    if head.close_client {
        Flow::Close.into()
    } else {
        Flow::Continue.into()
    }
}

/// Answers the client for a failed upstream with `code` and keeps `error` for the caller.
async fn failed<S>(
    c: &mut Conn,
    io: &mut S,
    st: &Settings,
    code: ErrorCode,
    error: UpstreamError,
    request_id: &str,
    close: bool,
) -> Outcome
where
    S: AsyncWrite + Unpin,
{
    Outcome {
        upstream_error: Some(error),
        ..refused(c, io, st, (code, None), request_id, close).await
    }
}

/// Writes all of `data` upstream within `limit`.
async fn send(up: &mut TcpStream, data: &[u8], limit: Duration) -> Result<(), UpstreamError> {
    match timeout(limit, up.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(UpstreamError::io(e)),
        Err(_) => Err(UpstreamError::timeout()),
    }
}

/// The answer to a failed connect: 504 when `limits.upstream_timeout` passed, else 502.
fn connect_code(e: &UpstreamError) -> ErrorCode {
    match e.class {
        UpstreamErrorClass::Timeout => ErrorCode::UpstreamTimeout,
        _ => ErrorCode::UpstreamUnavailable,
    }
}

/// The connection kept from the last request, a pooled one, or a new one. `true` = reused.
async fn take_upstream(
    shard: &ShardState,
    st: &Settings,
    c: &mut Conn,
    up_idx: usize,
) -> Result<(TcpStream, bool), UpstreamError> {
    match c.up.take() {
        Some((i, s)) if i == up_idx => return Ok((s, true)),
        Some((i, s)) => shard.keep_pooled(&st.routes, i, s),
        None => {}
    }
    if let Some(s) = shard.pooled(&st.routes, up_idx) {
        return Ok((s, true));
    }
    fresh(st, up_idx).await.map(|s| (s, false))
}

async fn fresh(st: &Settings, up_idx: usize) -> Result<TcpStream, UpstreamError> {
    upstream::connect(st.routes.upstreams[up_idx].addr, st.upstream_timeout).await
}

/// What the next bytes of a request body are.
enum Piece {
    /// This many bytes of `buf` go upstream as they are.
    Verbatim(usize),
    /// The trailer section was this many bytes of `buf`; what goes upstream of it is in `out`.
    Trailers(usize),
    /// Nothing to take now: the body is done, or more bytes are needed.
    Nothing,
}

/// Takes the next piece of the request body from `buf`: body bytes verbatim, or the trailer
/// section (once whole) filtered into `out`.
///
/// # Errors
/// The answer: `BAD_REQUEST` (bad chunked framing, a bad trailer section) or
/// `PAYLOAD_TOO_LARGE`.
fn next_piece(
    body: &mut BodyState,
    buf: &[u8],
    route: &CompiledRoute,
    out: &mut Vec<u8>,
) -> Result<Piece, (ErrorCode, Option<Rule>)> {
    if body.at_trailers() {
        return match forward::write_trailers(out, buf, route) {
            Ok(Some(n)) => {
                body.trailers_done();
                Ok(Piece::Trailers(n))
            }
            Ok(None) => Ok(Piece::Nothing),
            Err(rule) => Err((ErrorCode::BadRequest, Some(rule))),
        };
    }
    match body.take(buf) {
        Ok(0) => Ok(Piece::Nothing),
        Ok(n) => Ok(Piece::Verbatim(n)),
        Err(BodyError::Malformed) => Err((ErrorCode::BadRequest, Some(Rule::ChunkedFraming))),
        Err(BodyError::TooLarge) => Err((ErrorCode::PayloadTooLarge, None)),
    }
}

#[cfg(test)]
mod tests {
    //! The class of each upstream failure, seen through a real exchange: a client on an
    //! in-memory pipe, an upstream on a loopback socket that misbehaves one way each.

    use std::net::SocketAddr;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Config;
    use crate::gate::AllowAll;
    use crate::proxy::head::{self, HeadCtx, Step};
    use crate::proxy::route::RouteTable;
    use crate::proxy::settings::Published;

    fn shard(upstream: SocketAddr) -> ShardState {
        let cfg = Config::parse(
            &format!(
                "[limits]\nupstream_timeout = \"300ms\"\n\
                 [[route]]\nprefix = \"/\"\nupstream = \"http://{upstream}\"\n"
            ),
            std::path::Path::new("/"),
        )
        .unwrap();
        let routes = Arc::new(RouteTable::build(&cfg).unwrap());
        let settings = Arc::new(Published::new(Settings::new(
            &cfg,
            routes,
            crate::obs::Telemetry::for_config(&cfg),
            crate::autoblock::Autoblock::new(&cfg, 1),
            1000,
        )));
        ShardState::new(0, settings, Box::new(AllowAll))
    }

    /// Sends one GET through `forward`; the outcome and the first bytes the client got.
    async fn exchange(upstream: SocketAddr) -> (Outcome, String) {
        let shard = shard(upstream);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut c = Conn::new("127.0.0.1:40000".parse().unwrap(), false);
        c.buf
            .extend_from_slice(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
        let step = {
            let settings = shard.settings();
            let st = &*settings;
            let mut gate = shard.gate.borrow_mut();
            let mut ids = shard.ids.borrow_mut();
            let mut ctx = HeadCtx {
                routes: &st.routes,
                max_header_bytes: st.max_header_bytes,
                max_body_bytes: st.max_body_bytes,
                tls: false,
                peer: c.peer.ip(),
                peer_text: "127.0.0.1",
                trusted_proxies: &st.trusted_proxies,
                gate: &mut **gate,
                gate_rules: None,
                ids: &mut ids,
            };
            head::process(&c.buf, &mut ctx, &mut c.out)
        };
        let Step::Forward(p) = step else {
            panic!("not forwarded: {step:?}");
        };
        let outcome = forward(&shard, &shard.settings(), &mut c, &mut server, &p).await;
        drop(server);
        let mut seen = Vec::new();
        let _ = client.read_to_end(&mut seen).await;
        (outcome, String::from_utf8_lossy(&seen).into_owned())
    }

    /// An upstream that reads the request, then does `then` with the socket.
    async fn upstream<F, Fut>(then: F) -> SocketAddr
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            then(s).await;
        });
        addr
    }

    fn class(o: &Outcome) -> Option<UpstreamErrorClass> {
        o.upstream_error.as_ref().map(|e| e.class)
    }

    fn status(seen: &str) -> &str {
        seen.get(9..12).unwrap_or("")
    }

    #[tokio::test]
    async fn refused_is_connect_and_502() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (o, seen) = exchange(dead).await;
        assert_eq!(class(&o), Some(UpstreamErrorClass::Connect), "{o:?}");
        assert_eq!(status(&seen), "502", "{seen}");
    }

    #[tokio::test]
    async fn closed_before_the_head_is_reset_and_502() {
        let addr = upstream(|s| async move { drop(s) }).await;
        let (o, seen) = exchange(addr).await;
        assert_eq!(class(&o), Some(UpstreamErrorClass::Reset), "{o:?}");
        assert_eq!(status(&seen), "502", "{seen}");
    }

    #[tokio::test]
    async fn an_unparsable_head_is_bad_response_and_502() {
        let addr = upstream(|mut s| async move {
            let _ = s.write_all(b"garbage\r\n\r\n").await;
        })
        .await;
        let (o, seen) = exchange(addr).await;
        assert_eq!(class(&o), Some(UpstreamErrorClass::BadResponse), "{o:?}");
        assert_eq!(status(&seen), "502", "{seen}");
    }

    #[tokio::test]
    async fn no_answer_in_time_is_timeout_and_504() {
        let addr = upstream(|s| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        })
        .await;
        let (o, seen) = exchange(addr).await;
        assert_eq!(class(&o), Some(UpstreamErrorClass::Timeout), "{o:?}");
        assert_eq!(status(&seen), "504", "{seen}");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_reset_and_closes_the_client() {
        let addr = upstream(|mut s| async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                .await;
        })
        .await;
        let (o, seen) = exchange(addr).await;
        assert_eq!(class(&o), Some(UpstreamErrorClass::Reset), "{o:?}");
        assert_eq!(o.flow, Flow::Close);
        assert_eq!(status(&seen), "200", "{seen}");
    }

    #[tokio::test]
    async fn a_whole_answer_has_no_upstream_error() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
            // Until-close: the upstream's EOF is the body's end, not a failure.
            &b"HTTP/1.1 200 OK\r\n\r\nuntil close"[..],
        ] {
            let addr = upstream(move |mut s| async move {
                let _ = s.write_all(answer).await;
            })
            .await;
            let (o, seen) = exchange(addr).await;
            assert!(o.upstream_error.is_none(), "{o:?}");
            assert_eq!(status(&seen), "200", "{seen}");
        }
    }
}
