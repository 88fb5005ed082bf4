//! One forwarded request: pick a target and a credential, send the prepared head (with whatever
//! body is already buffered), stream the rest of the body with bounded buffers (a chunked
//! body's trailer section parsed and filtered by [`forward::write_trailers`], never passed
//! verbatim), read the upstream's answer and stream it back as it arrives.
//!
//! A request is sent again only when that cannot make an upstream act twice:
//! - a connect that failed (nothing was sent) moves to another target of the route;
//! - a reused pooled connection found closed before any answer byte is retried once on a fresh
//!   one, when the whole request is still in hand;
//! - a target that closed or reset the connection before any answer byte is left for another
//!   target only when the whole request is held (body at most 64 KiB) and its method is
//!   idempotent (a timeout never: the target may be acting on it);
//! - a provider that answers 429, 401 or 403 to a pooled credential did not act: the request
//!   goes again with the next credential (when held whole), and the value rests.
//!
//! A `101` to a WebSocket upgrade is passed on and the connection becomes a [`tunnel`] until
//! either side closes.
//!
//! The [`Outcome`] says whether the client connection goes on and, when the upstream failed,
//! why (classified once, by [`UpstreamError`]); the client's 502/504 carries the key id and a
//! hint naming the stage that failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::body::{BodyError, BodyState, Chunked};
use super::credentials::Exhausted;
use super::forward;
use super::head::Prepared;
use super::io::{Conn, Flow, READ_CHUNK, spare, write_client, write_refusal};
use super::respond;
use super::response::{self, RespFraming, RespHead, RespStep};
use super::route::CompiledRoute;
use super::settings::Settings;
use super::state::ShardState;
use super::tunnel::{self, End};
use super::upstream::{Target, UpKey, UpStream};
use super::upstream_error::{UpstreamError, UpstreamErrorClass};
use super::usage::{Tokens, UsageScanner};
use crate::codes::{ErrorCode, Rule};
use crate::gate::Denial;
use crate::obs::upstreams::now_ms;

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
    /// The LLM token usage the relayed answer reported (`ai` routes only).
    pub tokens: Option<Tokens>,
}

impl From<Flow> for Outcome {
    fn from(flow: Flow) -> Self {
        Self {
            flow,
            upstream_error: None,
            answered: None,
            status: None,
            upstream_took: None,
            tokens: None,
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
        tokens: None,
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
    let key_id = KeyIdCopy::new(&c.out, p.identity);
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
    // The whole request is in `c.out` when `whole`: it can be sent again.
    let whole = body.done();
    let mut att = Attempt::new(p, whole, c.out.len());
    let mut in_flight: Option<InFlight<'_>> = None;
    let mut fresh_only = false;
    let (up, head, took, key) = loop {
        let t = &route.targets.all()[att.target];
        if route.targets.all().len() > 1 {
            in_flight = Some(InFlight::new(t));
        }
        let key = UpKey {
            slot: t.slot,
            generation: t.generation(),
        };
        let (mut up, reused) = match take_upstream(shard, c, key, t, st, fresh_only).await {
            Ok(x) => x,
            Err(e) => {
                // Nothing was sent: any other target may take it.
                t.health.failed(now_ms());
                if att.next_target(route, &mut c.out) {
                    continue;
                }
                let close = !whole || !p.keep_alive;
                let why = Why {
                    code: connect_code(&e),
                    stage: stage_of(&e, Stage::Connect),
                    error: e,
                    key_id: &key_id,
                    target: t.label(),
                };
                return failed(c, io, st, why, rid, close).await;
            }
        };
        fresh_only = false;
        let rt = round_trip(shard, st, c, io, &mut up, &mut body, p, route).await;
        let fail = match rt {
            Trip::Answered(head, took) => {
                if let (Some(creds), Some(ci)) = (&route.credentials, att.credential)
                    && creds.answered(ci, head.status, head.retry_after)
                    && whole
                {
                    // The provider did not act on it: send it again with another value.
                    let _ = up.shutdown().await;
                    match att.next_credential(creds, &mut c.out) {
                        Ok(()) => continue,
                        Err(exhausted) => {
                            return credentials_exhausted(c, io, st, &key_id, exhausted, p).await;
                        }
                    }
                }
                t.health.succeeded();
                break (up, head, took, key);
            }
            Trip::Done(outcome) => return outcome,
            Trip::Failed(fail) => fail,
        };
        if reused && whole && fail.unanswered && !att.retried_fresh {
            // A pooled connection found dead: not the target's failure; a fresh one.
            att.retried_fresh = true;
            fresh_only = true;
            continue;
        }
        t.health.failed(now_ms());
        // Reached the target, which answered nothing: another may take it only when the whole
        // request is held and sending it twice cannot act twice.
        if fail.unanswered && att.replayable && att.next_target(route, &mut c.out) {
            continue;
        }
        let close = !whole || !p.keep_alive || fail.close_client;
        let why = Why {
            code: fail.code,
            stage: fail.stage,
            error: fail.error,
            key_id: &key_id,
            target: t.label(),
        };
        return failed(c, io, st, why, rid, close).await;
    };
    if let Some(rate) = &p.rate
        && head.status != 101
    {
        super::ratelimit_fields::add_to_head(&mut c.rout, rate);
    }
    // Only a `RespStep::Switch` has status 101.
    let mut outcome = if head.status == 101 {
        switch(st, c, io, up, &head).await
    } else {
        let chunked = head.framing == RespFraming::Chunked;
        let mut usage = route
            .ai
            .map(|ai| UsageScanner::new(ai, head.payload, chunked));
        let mut outcome = relay_response(st, c, io, up, key, &head, usage.as_mut()).await;
        outcome.tokens = usage.map(|u| u.tokens());
        outcome
    };
    // Outstanding on its target until the answer (a stream of tokens, a tunnel) is over.
    drop(in_flight);
    outcome.status = Some(head.status);
    outcome.upstream_took = Some(took);
    outcome
}

/// What one attempt left: an answer head, an outcome already written (a client-side end), or
/// an upstream failure.
enum Trip {
    Answered(RespHead, Duration),
    Done(Outcome),
    Failed(Failure),
}

/// An attempt that failed upstream.
struct Failure {
    error: UpstreamError,
    code: ErrorCode,
    stage: Stage,
    /// Closed or reset before any answer byte (a timeout is not: the target may be acting).
    unanswered: bool,
    /// The client connection must close (part of an answer or of the body went).
    close_client: bool,
}

/// Where an upstream exchange failed, named in the error's hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connect,
    Tls,
    /// Sending the request or waiting for the response head.
    ResponseHead,
    /// The upstream stopped reading the request body.
    Idle,
}

impl Stage {
    fn words(self) -> &'static str {
        match self {
            Self::Connect => "connecting to the upstream",
            Self::Tls => "the TLS handshake with the upstream",
            Self::ResponseHead => "waiting for the upstream's response head",
            Self::Idle => "sending the request body (the upstream stopped reading)",
        }
    }
}

/// A connect failure's stage: `tls` for a failed handshake.
fn stage_of(e: &UpstreamError, otherwise: Stage) -> Stage {
    if e.class == UpstreamErrorClass::Tls {
        Stage::Tls
    } else {
        otherwise
    }
}

/// The state of a request's attempts: which target and credential now, which were tried, and
/// where the head's rewritable values are.
struct Attempt {
    target: usize,
    credential: Option<usize>,
    tried_targets: u64,
    tried_credentials: u64,
    written: forward::Written,
    /// The whole request is held and small enough, and its method safe to send twice.
    replayable: bool,
    retried_fresh: bool,
}

impl Attempt {
    fn new(p: &Prepared, whole: bool, held: usize) -> Self {
        let body = held.saturating_sub(p.written.len as usize);
        let bit = |i: usize| if i < 64 { 1u64 << i } else { 0 };
        Self {
            target: p.target,
            credential: p.credential,
            tried_targets: bit(p.target),
            tried_credentials: p.credential.map_or(0, bit),
            written: p.written,
            replayable: whole && body <= RETRY_BODY_MAX && p.idempotent,
            retried_fresh: false,
        }
    }

    /// Moves to an untried target (rewriting `Host` in `out`); whether there was one.
    fn next_target(&mut self, route: &CompiledRoute, out: &mut Vec<u8>) -> bool {
        let Some((i, t)) = route.targets.pick(self.tried_targets) else {
            return false;
        };
        self.tried_targets |= if i < 64 { 1 << i } else { 0 };
        self.target = i;
        let authority = t.endpoint.authority.as_bytes();
        match forward::replace_value(out, self.written.host, authority, "Host") {
            Ok(moved) => self.shift_after(self.written.host.0, moved, authority.len()),
            Err(_) => return false,
        }
        self.retried_fresh = false;
        true
    }

    /// Moves to another credential value (rewriting it in `out`).
    fn next_credential(
        &mut self,
        creds: &super::credentials::Credentials,
        out: &mut Vec<u8>,
    ) -> Result<(), Exhausted> {
        let i = creds.pick(self.tried_credentials)?;
        self.tried_credentials |= if i < 64 { 1 << i } else { 0 };
        self.credential = Some(i);
        let Some(span) = self.written.credential else {
            return Ok(());
        };
        let value = creds.value(i).as_bytes();
        if let Ok(moved) = forward::replace_value(out, span, value, "credential") {
            self.shift_after(span.0, moved, value.len());
        }
        self.retried_fresh = false;
        Ok(())
    }

    /// The value at `at` now has `len` bytes and everything after it moved by `moved`.
    fn shift_after(&mut self, at: u32, moved: i64, len: usize) {
        let shift = |v: u32| u32::try_from(i64::from(v) + moved).unwrap_or(v);
        let w = &mut self.written;
        let end = at + u32::try_from(len).unwrap_or(0);
        if w.host.0 == at {
            w.host.1 = end;
        } else if w.host.0 > at {
            w.host = (shift(w.host.0), shift(w.host.1));
        }
        if let Some(c) = &mut w.credential {
            if c.0 == at {
                c.1 = end;
            } else if c.0 > at {
                *c = (shift(c.0), shift(c.1));
            }
        }
        w.len = shift(w.len);
    }
}

/// Bodies up to this size are held for a retry on another target.
const RETRY_BODY_MAX: usize = 64 * 1024;

/// A request counted on a target (least-outstanding balancing) until dropped.
struct InFlight<'a>(&'a Target);

impl<'a> InFlight<'a> {
    fn new(t: &'a Target) -> Self {
        t.health.begin();
        Self(t)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.health.end();
    }
}

/// Sends the request in `c.out`, streams the rest of the body, and reads the answer's head
/// (interim answers passed on or dropped).
#[allow(clippy::too_many_arguments)]
async fn round_trip<S>(
    shard: &ShardState,
    st: &Settings,
    c: &mut Conn,
    io: &mut S,
    up: &mut UpStream,
    body: &mut BodyState,
    p: &Prepared,
    route: &CompiledRoute,
) -> Trip
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let rid = p.request_id.as_str();
    let upstream_failure = |error: UpstreamError, stage: Stage, unanswered: bool| {
        let code = match error.class {
            UpstreamErrorClass::Timeout => ErrorCode::UpstreamTimeout,
            _ => ErrorCode::UpstreamUnavailable,
        };
        Trip::Failed(Failure {
            error,
            code,
            stage,
            unanswered,
            close_client: false,
        })
    };
    if let Err(e) = send(up, &c.out, st.upstream_timeout).await {
        let unanswered = e.class != UpstreamErrorClass::Timeout;
        return upstream_failure(e, Stage::ResponseHead, unanswered);
    }
    // Stream the rest of the request body, one bounded buffer at a time. The head has gone:
    // `c.out` only carries a filtered trailer section from here on (no retry needs it, as the
    // request was not whole).
    while !body.done() {
        c.out.clear();
        let piece = match next_piece(body, &c.buf, route, &mut c.out) {
            Ok(piece) => piece,
            Err(why) => return Trip::Done(refused(c, io, st, why, rid, true).await),
        };
        let (data, n) = match piece {
            Piece::Nothing => {
                spare(&mut c.buf, READ_CHUNK);
                match timeout(st.client_timeout, io.read_buf(&mut c.buf)).await {
                    Ok(Ok(n)) if n > 0 => continue,
                    _ => return Trip::Done(Flow::Close.into()),
                }
            }
            Piece::Verbatim(n) => (&c.buf[..n], n),
            Piece::Trailers(n) => (&c.out[..], n),
        };
        if let Err(e) = send(up, data, st.upstream_timeout).await {
            let stage = if e.class == UpstreamErrorClass::Timeout {
                Stage::Idle
            } else {
                Stage::ResponseHead
            };
            let mut f = upstream_failure(e, stage, false);
            if let Trip::Failed(f) = &mut f {
                f.close_client = true;
            }
            return f;
        }
        c.buf.advance(n);
        c.body_in += n as u64;
    }
    let sent = Instant::now();
    c.rbuf.clear();
    let mut passed_interim = false;
    loop {
        // Decided late so a drain that starts while we wait still closes this connection.
        let close_client = !p.keep_alive || shard.stopping.get();
        match response::process(&c.rbuf, p.is_head, &p.request_id, close_client, &mut c.rout) {
            RespStep::Final(h) => {
                let took = sent.elapsed();
                shard.metrics.upstream(took);
                return Trip::Answered(h, took);
            }
            // Switching protocols is welcome only after an upgrade request.
            RespStep::Switch(h) if p.upgrade => {
                let took = sent.elapsed();
                shard.metrics.upstream(took);
                return Trip::Answered(h, took);
            }
            RespStep::Interim(n) => {
                if !c.rout.is_empty() {
                    passed_interim = true;
                    if write_client(io, &c.rout, st.client_timeout).await.is_err() {
                        return Trip::Done(Flow::Close.into());
                    }
                }
                c.rbuf.advance(n);
                continue;
            }
            RespStep::Bad | RespStep::Switch(_) => {
                let e = UpstreamError::bad_response("unparsable, oversized or unsupported head");
                let mut f = upstream_failure(e, Stage::ResponseHead, false);
                if let Trip::Failed(f) = &mut f {
                    f.close_client = true;
                }
                return f;
            }
            RespStep::Partial => {}
        }
        spare(&mut c.rbuf, READ_CHUNK);
        match timeout(st.upstream_timeout, up.read_buf(&mut c.rbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(read) => {
                // Closed or broken before a complete head.
                let unanswered = c.rbuf.is_empty() && !passed_interim;
                let e = read.map_or_else(UpstreamError::io, |_| UpstreamError::closed_early());
                let mut f = upstream_failure(e, Stage::ResponseHead, unanswered);
                if let Trip::Failed(f) = &mut f {
                    f.close_client = !unanswered;
                }
                return f;
            }
            Err(_) => {
                return upstream_failure(UpstreamError::timeout(), Stage::ResponseHead, false);
            }
        }
    }
}

/// Every credential of the route rests: `UPSTREAM_CREDENTIALS_EXHAUSTED` with `Retry-After`.
async fn credentials_exhausted<S>(
    c: &mut Conn,
    io: &mut S,
    st: &Settings,
    key_id: &KeyIdCopy,
    exhausted: Exhausted,
    p: &Prepared,
) -> Outcome
where
    S: AsyncWrite + Unpin,
{
    let denial = exhausted.denial(key_id.get());
    let code = denial.code;
    let rid = p.request_id.as_str();
    Outcome {
        flow: write_refusal(c, io, st, &denial, None, rid, !p.keep_alive).await,
        upstream_error: None,
        answered: Some(code),
        status: None,
        upstream_took: None,
        tokens: None,
    }
}

/// The caller's key id, copied from the forwarded head before anything rewrites it (an error
/// answer carries it).
pub(crate) struct KeyIdCopy {
    bytes: [u8; 64],
    len: u8,
}

impl KeyIdCopy {
    fn new(out: &[u8], identity: Option<forward::IdentitySpans>) -> Self {
        let mut copy = Self {
            bytes: [0; 64],
            len: 0,
        };
        if let Some(v) = identity.and_then(|i| i.values(out)).map(|[k, _, _]| k)
            && v.len() <= copy.bytes.len()
        {
            copy.bytes[..v.len()].copy_from_slice(v);
            copy.len = u8::try_from(v.len()).unwrap_or(0);
        }
        copy
    }

    fn get(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .ok()
            .filter(|s| !s.is_empty())
    }
}

/// Sends the response head and streams its body to the client as it arrives (the body's bytes
/// shown to `usage` as they pass).
async fn relay_response<S>(
    st: &Settings,
    c: &mut Conn,
    io: &mut S,
    mut up: UpStream,
    key: UpKey,
    head: &RespHead,
    mut usage: Option<&mut UsageScanner>,
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
    if let Some(u) = usage.as_deref_mut() {
        u.feed(&c.rbuf[..n]);
    }
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
        if let Some(u) = usage.as_deref_mut() {
            u.feed(&c.rbuf[..n]);
        }
        c.rbuf.advance(n);
    }
    if head.reusable && c.rbuf.is_empty() {
        c.up = Some((key, up));
    } else {
        let _ = up.shutdown().await;
    }
    if head.close_client {
        Flow::Close.into()
    } else {
        Flow::Continue.into()
    }
}

/// Passes the `101` head on, then relays bytes both ways ([`tunnel::relay`]) until either side
/// closes or both are silent for `limits.client_timeout`, counting them as the request's bytes
/// in and out. The upstream connection is closed, never reused; the client's closes too.
async fn switch<S, U>(
    st: &Settings,
    c: &mut Conn,
    io: &mut S,
    mut up: U,
    head: &RespHead,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    c.rbuf.advance(head.head_len);
    c.sent += c.rout.len() as u64;
    if write_client(io, &c.rout, st.client_timeout).await.is_err() {
        return Flow::Close.into();
    }
    let relayed = tunnel::relay(io, &mut up, &mut c.buf, &mut c.rbuf, st.client_timeout).await;
    c.body_in += relayed.to_upstream;
    c.sent += relayed.to_client;
    c.buf.clear();
    c.rbuf.clear();
    let _ = timeout(st.upstream_timeout, up.shutdown()).await;
    Outcome {
        upstream_error: match relayed.end {
            End::UpstreamFailed(e) => Some(UpstreamError::io(e)),
            End::ClientClosed | End::UpstreamClosed | End::Idle | End::ClientFailed => None,
        },
        ..Flow::Close.into()
    }
}

/// Why an upstream exchange failed, for the answer and the caller's outcome.
struct Why<'a> {
    code: ErrorCode,
    stage: Stage,
    error: UpstreamError,
    key_id: &'a KeyIdCopy,
    /// The target as written (named in the hint unless `keys.errors = "opaque"`).
    target: &'a str,
}

/// Answers the client for a failed upstream (502/504 with the key id and a hint naming the
/// failing stage) and keeps the error for the caller.
async fn failed<S>(
    c: &mut Conn,
    io: &mut S,
    st: &Settings,
    why: Why<'_>,
    rid: &str,
    close: bool,
) -> Outcome
where
    S: AsyncWrite + Unpin,
{
    let mut denial = Denial::new(why.code);
    denial.key_id = why.key_id.get().map(Arc::from);
    denial.hint = Some(if st.opaque {
        format!(
            "{} failed; the edge operator's logs have the cause",
            why.stage.words()
        )
    } else {
        format!(
            "{} failed ({}: {}) at upstream {}",
            why.stage.words(),
            why.error.class,
            why.error.source,
            why.target
        )
    });
    Outcome {
        flow: write_refusal(c, io, st, &denial, None, rid, close).await,
        upstream_error: Some(why.error),
        answered: Some(why.code),
        status: None,
        upstream_took: None,
        tokens: None,
    }
}

/// Writes all of `data` upstream within `limit` (and flushes what TLS holds back).
async fn send(up: &mut UpStream, data: &[u8], limit: Duration) -> Result<(), UpstreamError> {
    let write = async {
        up.write_all(data).await?;
        up.flush().await
    };
    match timeout(limit, write).await {
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

/// The connection kept from the last request, a pooled one, or a new one (only a new one when
/// `fresh_only`). `true` = reused.
async fn take_upstream(
    shard: &ShardState,
    c: &mut Conn,
    key: UpKey,
    t: &Target,
    st: &Settings,
    fresh_only: bool,
) -> Result<(UpStream, bool), UpstreamError> {
    match c.up.take() {
        Some((k, s)) if k == key && !fresh_only => return Ok((s, true)),
        Some((k, s)) => shard.keep_pooled(&st.routes, k, s),
        None => {}
    }
    if !fresh_only && let Some(s) = shard.pooled(&st.routes, key) {
        return Ok((s, true));
    }
    let deadline = tokio::time::Instant::now() + st.upstream_timeout;
    t.connect(deadline).await.map(|s| (s, false))
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
