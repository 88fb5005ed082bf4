//! The head sent upstream: the client's end-to-end headers minus hop-by-hop ones, the client's
//! key (when the route strips it) and anything the client must not set (`X-Edgefilter-*`,
//! forwarding headers), plus `Host`, `X-Forwarded-*`, `X-Request-Id`, the caller's identity,
//! the route's injected credential and normalised framing. Written into a reused buffer.

use super::headers::{Framing, Scan, is};
use super::reqid::RequestId;
use super::route::CompiledRoute;
use crate::gate::Identity;

/// What [`write_head`] needs.
pub(crate) struct Forward<'a, 'b> {
    pub method: &'b str,
    pub path: &'b str,
    pub query: Option<&'b str>,
    pub headers: &'a [httparse::Header<'b>],
    pub scan: &'a Scan<'b>,
    pub route: &'a CompiledRoute,
    pub authority: &'a str,
    pub peer: &'a str,
    pub trusted: bool,
    pub tls: bool,
    pub request_id: &'a RequestId,
    /// Lent by the gate; written here, before the request's first `.await`.
    pub identity: Option<Identity<'a>>,
    pub framing: Framing,
    /// The client speaks HTTP/1.0: ask the same of the upstream so it never answers chunked.
    pub http10: bool,
}

/// Serialises the upstream request head into `out` (cleared first).
pub(crate) fn write_head(out: &mut Vec<u8>, f: &Forward<'_, '_>) {
    out.clear();
    out.extend_from_slice(f.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(f.path.as_bytes());
    if let Some(q) = f.query {
        write_query(out, q, f.route.strip_key);
    }
    out.extend_from_slice(if f.http10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for h in f.headers {
        if keep(h.name, f) {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    header(out, b"Host", f.authority.as_bytes());
    if let Some(host) = f.scan.host {
        header(out, b"X-Forwarded-Host", host.as_bytes());
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if f.trusted
        && let Some(xff) = f.scan.xff
    {
        out.extend_from_slice(xff.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(f.peer.as_bytes());
    out.extend_from_slice(b"\r\n");
    header(
        out,
        b"X-Forwarded-Proto",
        if f.tls { b"https" } else { b"http" },
    );
    header(out, b"X-Request-Id", f.request_id.as_bytes());
    if let Some(id) = f.identity {
        header(out, b"X-Edgefilter-Key-Id", id.key_id.as_bytes());
        header(out, b"X-Edgefilter-Tenant", id.tenant.as_bytes());
        header(out, b"X-Edgefilter-User", id.user.as_bytes());
    }
    if let Some((name, value)) = &f.route.inject {
        header(out, name.as_bytes(), value.as_bytes());
    }
    match f.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => header(out, b"Transfer-Encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a client header goes upstream.
fn keep(name: &str, f: &Forward<'_, '_>) -> bool {
    let dropped = match name.len() {
        2 => is(name, "te"),
        4 => is(name, "host"),
        6 => is(name, "expect"),
        7 => is(name, "upgrade") || is(name, "trailer"),
        9 => f.route.strip_key && is(name, "x-api-key"),
        10 => is(name, "connection") || is(name, "keep-alive"),
        12 => is(name, "x-request-id"),
        13 => f.route.strip_key && is(name, "authorization"),
        14 => is(name, "content-length"),
        15 => is(name, "x-forwarded-for"),
        16 => is(name, "x-forwarded-host") || is(name, "proxy-connection"),
        17 => is(name, "transfer-encoding") || is(name, "x-forwarded-proto"),
        19 => is(name, "proxy-authorization"),
        _ => false,
    };
    if dropped || (name.len() > 13 && name.as_bytes()[..13].eq_ignore_ascii_case(b"x-edgefilter-"))
    {
        return false;
    }
    if let Some((inject, _)) = &f.route.inject
        && name.eq_ignore_ascii_case(inject)
    {
        return false;
    }
    if f.route.strip_key && f.route.key_headers.iter().any(|k| is(name, k)) {
        return false;
    }
    // Headers named by `Connection` are hop-by-hop too.
    !f.scan.connection[..f.scan.n_connection]
        .iter()
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(name)))
}

/// Writes `?query`, leaving out `api_key` parameters when the key is stripped.
fn write_query(out: &mut Vec<u8>, q: &str, strip_key: bool) {
    if !strip_key {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
        return;
    }
    let mut first = true;
    for param in q.split('&') {
        let name = param.split_once('=').map_or(param, |(n, _)| n);
        if name == "api_key" {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        first = false;
        out.extend_from_slice(param.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_key_is_removed_and_the_rest_kept() {
        let mut out = Vec::new();
        write_query(&mut out, "a=1&api_key=ef_x&b=2", true);
        assert_eq!(out, b"?a=1&b=2");
        out.clear();
        write_query(&mut out, "api_key=ef_x", true);
        assert_eq!(out, b"");
        out.clear();
        write_query(&mut out, "api_key=ef_x", false);
        assert_eq!(out, b"?api_key=ef_x");
    }
}
