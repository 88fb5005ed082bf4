//! This shard's access-log lines (SPEC §9): the fields known when the head is decided are
//! written into the connection's line buffer before any `.await` (the head is still in the read
//! buffer then), the rest once the answer is out; the whole line is then copied into the
//! shard's batch ([`crate::obs::access_log::ShardLog`]). Key-shaped text never reaches a line.

use std::time::Duration;

use super::forward::IdentitySpans;
use super::head::Line;
use super::io::Conn;
use super::settings::Settings;
use super::state::ShardState;
use crate::codes::{ErrorCode, UpstreamErrorClass};
use crate::obs::access_log::{push_json_str, push_target};

/// What the head told: written into `c.log` when the shard logs.
pub(crate) struct Begin<'a> {
    pub request_id: &'a str,
    pub line: Option<Line>,
    pub route: Option<usize>,
    /// The key id of a refused request, when known.
    pub key_id: Option<&'a str>,
    /// Where the identity is in the forwarded head (allowed requests).
    pub forwarded: Option<IdentitySpans>,
}

/// What the answer told.
pub(crate) struct Finish {
    pub status: u16,
    /// `None`: forwarded (`"OK"`); else the precise code the proxy answered with.
    pub code: Option<ErrorCode>,
    pub upstream_took: Option<Duration>,
    pub upstream_error: Option<UpstreamErrorClass>,
    /// The LLM token usage the answer reported (`prompt`, `completion`), `ai` routes only.
    pub tokens: Option<(u64, u64)>,
    pub head_len: usize,
    pub took: Duration,
}

/// Starts the line of the request whose head is at the front of `c.buf`.
pub(crate) fn begin(shard: &ShardState, st: &Settings, c: &mut Conn, peer: &str, b: &Begin<'_>) {
    let Some(log) = &shard.log else { return };
    c.body_in = 0;
    c.sent = 0;
    let out = &mut c.log;
    out.clear();
    out.extend_from_slice(b"{\"ts\":\"");
    log.borrow_mut().timestamp(out);
    out.extend_from_slice(b"\",\"request_id\":\"");
    push_json_str(out, b.request_id.as_bytes());
    out.extend_from_slice(b"\",\"client_ip\":\"");
    out.extend_from_slice(peer.as_bytes());
    out.extend_from_slice(b"\",\"method\":");
    match b.line {
        Some(line) => {
            out.push(b'"');
            push_json_str(out, line.method(&c.buf));
            out.extend_from_slice(b"\",\"path\":\"");
            push_target(out, line.target(&c.buf));
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null,\"path\":null"),
    }
    out.extend_from_slice(b",\"route\":");
    let route = b
        .route
        .and_then(|r| st.routes.routes.get(r))
        .map(|r| r.prefix.as_bytes());
    push_opt(out, route);
    let (mut key_id, mut tenant, mut user) = (b.key_id.map(str::as_bytes), None, None);
    if let Some([k, t, u]) = b.forwarded.and_then(|spans| spans.values(&c.out)) {
        (key_id, tenant, user) = (Some(k), Some(t), Some(u));
    }
    out.extend_from_slice(b",\"key_id\":");
    push_opt(out, key_id);
    out.extend_from_slice(b",\"tenant\":");
    push_opt(out, tenant);
    out.extend_from_slice(b",\"user\":");
    push_opt(out, user);
    out.extend_from_slice(b",\"shard\":");
    push_int(out, shard.n as u64);
}

/// Ends the line and hands it to the shard's batch.
pub(crate) fn finish(shard: &ShardState, c: &mut Conn, f: &Finish) {
    let Some(log) = &shard.log else { return };
    let out = &mut c.log;
    out.extend_from_slice(b",\"status\":");
    push_int(out, u64::from(f.status));
    out.extend_from_slice(b",\"code\":\"");
    out.extend_from_slice(f.code.map_or("OK", ErrorCode::as_str).as_bytes());
    out.extend_from_slice(b"\",\"upstream_ms\":");
    match f.upstream_took {
        Some(t) => push_millis(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"duration_us\":");
    push_int(out, u64::try_from(f.took.as_micros()).unwrap_or(u64::MAX));
    out.extend_from_slice(b",\"bytes_in\":");
    push_int(out, f.head_len as u64 + c.body_in);
    out.extend_from_slice(b",\"bytes_out\":");
    push_int(out, c.sent);
    if let Some(class) = f.upstream_error {
        out.extend_from_slice(b",\"upstream_error\":\"");
        out.extend_from_slice(class.as_str().as_bytes());
        out.push(b'"');
    }
    if let Some((prompt, completion)) = f.tokens {
        out.extend_from_slice(b",\"prompt_tokens\":");
        push_int(out, prompt);
        out.extend_from_slice(b",\"completion_tokens\":");
        push_int(out, completion);
    }
    out.extend_from_slice(b"}\n");
    let mut log = log.borrow_mut();
    log.line().extend_from_slice(out);
    log.commit();
}

/// Integers without `core::fmt` (this runs once per field per request).
fn push_int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `t` in milliseconds with three decimals (`12.345`), from its whole microseconds.
fn push_millis(out: &mut Vec<u8>, t: Duration) {
    let us = u64::try_from(t.as_micros()).unwrap_or(u64::MAX);
    push_int(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn push_opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            out.push(b'"');
            push_json_str(out, v);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}
