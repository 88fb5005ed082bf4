//! One client connection: read a head (bounded in size and time), let [`head::process`] decide,
//! answer refusals, hand allowed requests to [`exchange`], and loop for keep-alive and
//! pipelined requests, which are answered in order because they are handled one at a time.
//! Each request is served with the settings in force when it began, and a kept-alive
//! connection whose source was banned since its accept (without XDP) is closed at its next
//! request.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use super::access;
use super::exchange;
use super::head::{self, HeadCtx, Prepared, Step};
use super::headers::Framing;
use super::io::{Conn, Flow, ReadReady, spare, write_refusal};
use super::settings::Settings;
use super::state::ShardState;
use super::upstream_error::UpstreamError;
use super::usage::Tokens;
use crate::codes::ErrorCode;

/// How long a closing connection keeps reading (and discarding) so the client sees our answer
/// rather than a reset.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;

/// Serves a client connection until it closes, errs, times out, or the shard drains.
pub(crate) async fn serve<S: ReadReady>(
    shard: &ShardState,
    mut io: S,
    peer: SocketAddr,
    tls: bool,
) {
    let mut c = Conn::new(peer, tls);
    let mut last = None;
    let flow = run(shard, &mut c, &mut io, &mut last).await;
    if let (Some((i, s)), Some(st)) = (c.up.take(), last) {
        shard.keep_pooled(&st.routes, i, s);
    }
    c.buf.clear();
    c.shed(&mut shard.buffers.borrow_mut());
    let _ = timeout(LINGER, io.shutdown()).await;
    if flow == Flow::Linger {
        linger(&mut io).await;
    }
}

async fn linger<S: AsyncRead + Unpin>(io: &mut S) {
    // On the heap: an array here would sit in every connection task, idle ones too.
    let mut sink = vec![0u8; 8192];
    let mut seen = 0;
    let deadline = Instant::now() + LINGER;
    while seen < LINGER_BYTES {
        match timeout_at(deadline, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => seen += n,
            _ => return,
        }
    }
}

/// Counts a connection as idle (in `ShardState::idle`) while it lives.
struct IdleMark<'a>(&'a Cell<usize>);

impl<'a> IdleMark<'a> {
    fn new(idle: &'a Cell<usize>) -> Self {
        idle.set(idle.get() + 1);
        Self(idle)
    }
}

impl Drop for IdleMark<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// One read into `buf` if it completes without waiting; `None` when it would wait.
async fn read_now<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
) -> Option<std::io::Result<usize>> {
    let mut read = pin!(io.read_buf(buf));
    poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Waits, without buffers, for the first bytes of the next request and reads them: the read's
/// result, or `None` when the connection is to close (its client timeout passed, or the shard
/// drains).
async fn read_when_idle<S: ReadReady>(
    shard: &ShardState,
    c: &mut Conn,
    io: &mut S,
    deadline: Instant,
) -> Option<std::io::Result<usize>> {
    let _idle = IdleMark::new(&shard.idle);
    // A readiness that finds nothing (left from the last read) is looked at again once;
    // should it recur, the read waits with its buffer as any other.
    let mut false_alarms = 0;
    loop {
        c.shed(&mut shard.buffers.borrow_mut());
        // Leave when the shard drains (at once, or when a hand-over's grace ends; a request
        // arriving before is answered, as the last).
        loop {
            let notified = shard.notify.notified();
            let until = shard.idle_deadline(deadline)?;
            tokio::select! {
                biased;
                r = timeout_at(until, io.read_ready()) => match r {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => return Some(Err(e)),
                    Err(_) => return None,
                },
                () = notified => {}
            }
        }
        c.equip(&mut shard.buffers.borrow_mut());
        spare(&mut c.buf, 4096);
        if false_alarms > 0 {
            let notified = shard.notify.notified();
            let until = shard.idle_deadline(deadline)?;
            return tokio::select! {
                biased;
                r = timeout_at(until, io.read_buf(&mut c.buf)) => r.ok(),
                () = notified => None,
            };
        }
        match read_now(io, &mut c.buf).await {
            Some(r) => return Some(r),
            None => false_alarms += 1,
        }
    }
}

/// Serves requests on `c` until it is to close; `last` ends as the settings of the last request
/// (whose route table `c.up`'s upstream index belongs to).
async fn run<S: ReadReady>(
    shard: &ShardState,
    c: &mut Conn,
    io: &mut S,
    last: &mut Option<Rc<Settings>>,
) -> Flow {
    let peer_ip = c.peer.ip();
    let peer_text = peer_ip.to_string();
    // The first request's source was checked against the bans at accept.
    let mut first = true;
    loop {
        // The settings in force for this request (a reload may have replaced them): its route,
        // gate rules, upstream and metrics row all come from them.
        let settings = shard.settings();
        if let Some(before) = last.replace(Rc::clone(&settings))
            && !Arc::ptr_eq(&before.routes, &settings.routes)
        {
            // The upstream kept from the last request is indexed in the old route table.
            c.up = None;
        }
        let st = &*settings;
        let deadline = Instant::now() + st.client_timeout;
        // When this request's first byte was here: now for a pipelined one, else at its read.
        let mut began = (!c.buf.is_empty()).then(Instant::now);
        // Whether this request's source was checked against the bans (once its bytes are here).
        let mut checked = std::mem::replace(&mut first, false);
        let step = loop {
            if !c.buf.is_empty() {
                // Banned since the connection was accepted (without XDP): close before this
                // request is looked at, so it costs the proxy nothing more.
                if !checked {
                    if shard.failures.refuses(peer_ip) {
                        return Flow::Close;
                    }
                    checked = true;
                }
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
                        gate_rules: st.gate_rules.as_deref(),
                        ids: &mut ids,
                    };
                    head::process(&c.buf, &mut ctx, &mut c.out)
                };
                if !matches!(step, Step::Partial) {
                    break step;
                }
            }
            let read = if c.buf.is_empty() {
                read_when_idle(shard, c, io, deadline).await
            } else {
                spare(&mut c.buf, 4096);
                timeout_at(deadline, io.read_buf(&mut c.buf)).await.ok()
            };
            match read {
                Some(Ok(n)) if n > 0 => {
                    began.get_or_insert_with(Instant::now);
                }
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
                let begin = access::Begin {
                    request_id: r.request_id.as_str(),
                    line: r.line,
                    route: r.route,
                    key_id: r.denial.key_id.as_deref(),
                    forwarded: None,
                };
                access::begin(shard, st, c, &peer_text, &begin);
                let rid = r.request_id.as_str();
                let flow = write_refusal(c, io, st, &r.denial, r.rule, rid, close).await;
                shard.record_denial(&r.denial, peer_ip);
                shard.failures.note(peer_ip, r.denial.code);
                let took = since(began);
                shard
                    .metrics
                    .request(st.route_rows.row(r.route), Some(r.denial.code), took);
                let finish = access::Finish {
                    status: r.denial.code.status(),
                    code: Some(r.denial.code),
                    upstream_took: None,
                    upstream_error: None,
                    tokens: None,
                    head_len: r.head_len.unwrap_or(0),
                    took,
                };
                access::finish(shard, c, &finish);
                if flow == Flow::Continue
                    && let Some(n) = r.head_len
                {
                    c.buf.advance(n);
                }
                flow
            }
            Step::Forward(p) => {
                let begin = access::Begin {
                    request_id: p.request_id.as_str(),
                    line: Some(p.line),
                    route: Some(p.route),
                    key_id: None,
                    forwarded: p.identity,
                };
                access::begin(shard, st, c, &peer_text, &begin);
                let outcome = exchange::forward(shard, st, c, io, &p).await;
                let row = st.route_rows.row(Some(p.route));
                if let Some(e) = &outcome.upstream_error {
                    shard.metrics.upstream_error(row, e.class);
                    log_upstream_error(st, &p, e);
                }
                let reported = match outcome.tokens {
                    Some(Tokens::Reported { prompt, completion }) => Some((prompt, completion)),
                    Some(Tokens::Unreported) | None => None,
                };
                if outcome.tokens.is_some() {
                    shard.metrics.llm_tokens(row, reported);
                }
                let took = since(began);
                shard.metrics.request(row, outcome.answered, took);
                let finish = access::Finish {
                    status: outcome
                        .answered
                        .map_or(outcome.status.unwrap_or(0), ErrorCode::status),
                    code: outcome.answered,
                    upstream_took: outcome.upstream_took,
                    upstream_error: outcome.upstream_error.as_ref().map(|e| e.class),
                    tokens: reported,
                    head_len: p.head_len,
                    took,
                };
                access::finish(shard, c, &finish);
                outcome.flow
            }
        };
        if flow != Flow::Continue {
            return flow;
        }
    }
}

/// How long since `began` (zero when unknown).
fn since(began: Option<Instant>) -> Duration {
    began.map_or(Duration::ZERO, |b| b.elapsed())
}

/// One line per failed upstream exchange: the route, the class and the cause (no key, no
/// request bytes). Debug level: while an upstream is down every request fails, and the metrics
/// and access log count them; a failed TLS handshake (expired, unknown issuer, name mismatch)
/// is a warning.
fn log_upstream_error(st: &Settings, p: &Prepared, e: &UpstreamError) {
    if e.class == crate::codes::UpstreamErrorClass::Tls {
        // A certificate that does not verify is a configuration problem to see at once.
        tracing::warn!(
            route = %st.routes.routes[p.route].prefix,
            class = e.class.as_str(),
            request_id = p.request_id.as_str(),
            cause = %e.source,
            "upstream TLS handshake failed"
        );
        return;
    }
    tracing::debug!(
        route = %st.routes.routes[p.route].prefix,
        class = e.class.as_str(),
        request_id = p.request_id.as_str(),
        cause = %e.source,
        "upstream failed"
    );
}
