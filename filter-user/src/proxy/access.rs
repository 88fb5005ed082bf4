//! This shard's access-log lines (SPEC §9): the fields known when the head is decided are
//! written into the connection's line buffer before any `.await` (the head is still in the read
//! buffer then), the rest once the answer is out; the whole line is then copied into the
//! shard's batch ([`crate::obs::access_log::ShardLog`]). Key-shaped text never reaches a line.

use std::io::Write as _;
use std::time::Duration;

use super::head::Line;
use super::io::Conn;
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
    /// Read identity headers from the forwarded head (allowed requests).
    pub forwarded: bool,
}

/// What the answer told.
pub(crate) struct Finish {
    pub status: u16,
    /// `None`: forwarded (`"OK"`); else the precise code the proxy answered with.
    pub code: Option<ErrorCode>,
    pub upstream_took: Option<Duration>,
    pub upstream_error: Option<UpstreamErrorClass>,
    pub head_len: usize,
    pub took: Duration,
}

/// Starts the line of the request whose head is at the front of `c.buf`.
pub(crate) fn begin(shard: &ShardState, c: &mut Conn, peer: &str, b: &Begin<'_>) {
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
    let settings = shard.settings();
    let route = b
        .route
        .and_then(|r| settings.routes.routes.get(r))
        .map(|r| r.prefix.as_bytes());
    push_opt(out, route);
    let (mut key_id, mut tenant, mut user) = (b.key_id.map(str::as_bytes), None, None);
    if b.forwarded {
        key_id = header(&c.out, b"X-Edgefilter-Key-Id");
        tenant = header(&c.out, b"X-Edgefilter-Tenant");
        user = header(&c.out, b"X-Edgefilter-User");
    }
    out.extend_from_slice(b",\"key_id\":");
    push_opt(out, key_id);
    out.extend_from_slice(b",\"tenant\":");
    push_opt(out, tenant);
    out.extend_from_slice(b",\"user\":");
    push_opt(out, user);
    let _ = write!(out, ",\"shard\":{}", shard.n);
}

/// Ends the line and hands it to the shard's batch.
pub(crate) fn finish(shard: &ShardState, c: &mut Conn, f: &Finish) {
    let Some(log) = &shard.log else { return };
    let out = &mut c.log;
    let _ = write!(out, ",\"status\":{},\"code\":\"", f.status);
    out.extend_from_slice(f.code.map_or("OK", ErrorCode::as_str).as_bytes());
    out.extend_from_slice(b"\",\"upstream_ms\":");
    match f.upstream_took {
        Some(t) => {
            let _ = write!(out, "{:.3}", t.as_secs_f64() * 1000.0);
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"duration_us\":{},\"bytes_in\":{},\"bytes_out\":{}",
        f.took.as_micros(),
        f.head_len as u64 + c.body_in,
        c.sent
    );
    if let Some(class) = f.upstream_error {
        let _ = write!(out, ",\"upstream_error\":\"{}\"", class.as_str());
    }
    out.extend_from_slice(b"}\n");
    let mut log = log.borrow_mut();
    log.line().extend_from_slice(out);
    log.commit();
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

/// The value of header `name` in the head `out` wrote (`Name: value\r\n`, exact case).
fn header<'o>(out: &'o [u8], name: &[u8]) -> Option<&'o [u8]> {
    let at = out
        .windows(name.len() + 2)
        .position(|w| w.starts_with(name) && w.ends_with(b": "))?;
    let rest = &out[at + name.len() + 2..];
    let end = rest.iter().position(|&b| b == b'\r')?;
    Some(&rest[..end])
}
