//! One client connection: read a head (bounded in size and time), let [`head::process`] decide,
//! answer refusals, hand allowed requests to [`exchange`], and loop for keep-alive and
//! pipelined requests, which are answered in order because they are handled one at a time.
//! Each request is served with the settings in force when it began, and a kept-alive
//! connection whose source was banned since its accept (without XDP) is closed at its next
//! request.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use super::access;
use super::exchange;
use super::head::{self, HeadCtx, Prepared, Step};
use super::headers::Framing;
use super::io::{Conn, Flow, spare, write_refusal};
use super::settings::Settings;
use super::state::ShardState;
use super::upstream_error::UpstreamError;
use crate::codes::ErrorCode;

/// How long a closing connection keeps reading (and discarding) so the client sees our answer
/// rather than a reset.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;

/// Serves a client connection until it closes, errs, times out, or the shard drains.
pub(crate) async fn serve<S>(shard: &ShardState, mut io: S, peer: SocketAddr, tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = Conn::new(peer, tls);
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

async fn run<S>(shard: &ShardState, c: &mut Conn, io: &mut S) -> Flow
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer_ip = c.peer.ip();
    let peer_text = peer_ip.to_string();
    // The first request's source was checked against the bans at accept.
    let mut first = true;
    loop {
        // The settings in force for this request (a reload may have replaced them).
        let settings = shard.settings();
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
                // Idle between requests: leave when the shard drains (at once, or when a
                // hand-over's grace ends; a request arriving before is answered, as the last).
                loop {
                    let notified = shard.notify.notified();
                    let Some(until) = shard.idle_deadline(deadline) else {
                        return Flow::Close;
                    };
                    tokio::select! {
                        biased;
                        r = timeout_at(until, io.read_buf(&mut c.buf)) => break r,
                        () = notified => {}
                    }
                }
            } else {
                timeout_at(deadline, io.read_buf(&mut c.buf)).await
            };
            match read {
                Ok(Ok(n)) if n > 0 => {
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
                access::begin(shard, c, &peer_text, &begin);
                let rid = r.request_id.as_str();
                let flow = write_refusal(c, io, st, &r.denial, r.rule, rid, close).await;
                shard.record_denial(&r.denial, peer_ip);
                shard.failures.note(peer_ip, r.denial.code);
                let took = since(began);
                shard.metrics.request(r.route, Some(r.denial.code), took);
                let finish = access::Finish {
                    status: r.denial.code.status(),
                    code: Some(r.denial.code),
                    upstream_took: None,
                    upstream_error: None,
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
                access::begin(shard, c, &peer_text, &begin);
                let outcome = exchange::forward(shard, c, io, &p).await;
                if let Some(e) = &outcome.upstream_error {
                    shard.metrics.upstream_error(p.route, e.class);
                    log_upstream_error(st, &p, e);
                }
                let took = since(began);
                shard.metrics.request(Some(p.route), outcome.answered, took);
                let finish = access::Finish {
                    status: outcome
                        .answered
                        .map_or(outcome.status.unwrap_or(0), ErrorCode::status),
                    code: outcome.answered,
                    upstream_took: outcome.upstream_took,
                    upstream_error: outcome.upstream_error.as_ref().map(|e| e.class),
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
/// and access log count them.
fn log_upstream_error(st: &Settings, p: &Prepared, e: &UpstreamError) {
    tracing::debug!(
        route = %st.routes.routes[p.route].prefix,
        class = e.class.as_str(),
        request_id = p.request_id.as_str(),
        cause = %e.source,
        "upstream failed"
    );
}
