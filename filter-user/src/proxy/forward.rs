//! What of the client's request goes upstream, decided in one place: the head (the client's
//! end-to-end headers minus the names below, plus `Host`, `X-Forwarded-*`, `X-Request-Id`, the
//! caller's identity, the route's injected credential and normalised framing, written into a
//! reused buffer) and the trailer section of a chunked body (parsed as header lines, the same
//! names dropped and those a trailer may never carry).
//!
//! # Names the proxy owns, and their lookalikes
//!
//! A client field is dropped when its name is one the proxy sets or strips: hop-by-hop and
//! framing headers (`Connection` and what it names, `Keep-Alive`, `TE`, `Trailer`, `Upgrade`,
//! `Proxy-Connection`, `Proxy-Authorization`, `Expect`, `Host`, `Content-Length`,
//! `Transfer-Encoding`), `X-Forwarded-*`, `X-Request-Id`, `X-Edgefilter-*`, the route's
//! injected header, and the key's headers when the route strips the key. Names are compared as
//! CGI-style upstreams (CGI, WSGI, Rack, PHP) read them, case-insensitively with `_` read as
//! `-` ([`reads_as`]), so `X_Edgefilter_User`, `X_Forwarded_For` or `X_API_Key` can never
//! be folded into the variable of the header the proxy vouches for. Other names with
//! underscores (`X_Custom`) pass: they mean nothing to the proxy, and dropping every underscore
//! name (nginx's default, `underscores_in_headers off`) would break clients for no gain. This is
//! Envoy's `headers_with_underscores_action`, narrowed to the names that matter.
//!
//! # Nothing unsafe leaves
//!
//! Every field goes through one writer, [`field`], which refuses a value holding CR, LF, NUL or
//! another control character but HTAB: a tenant or user name from
//! the store, a configured value or anything else the proxy adds can never split the head, even
//! if the check at its entry missed it. The request is then answered `INTERNAL` (500) instead.

use super::headers::{Framing, Scan, has_bad_value_byte, reads_as, reads_as_prefix};
use super::reqid::RequestId;
use super::route::CompiledRoute;
use crate::codes::Rule;
use crate::gate::Identity;

/// Most fields read from a trailer section.
const MAX_TRAILERS: usize = 32;
/// Largest trailer section accepted, its final empty line included.
pub(crate) const MAX_TRAILER_BYTES: usize = 8192;

/// What [`write_head`] needs.
pub(crate) struct Forward<'a, 'b> {
    pub method: &'b str,
    pub path: &'b str,
    pub query: Option<&'b str>,
    pub headers: &'a [httparse::Header<'b>],
    pub scan: &'a Scan<'b>,
    pub route: &'a CompiledRoute,
    pub authority: &'a str,
    /// The credential to inject (`name`, `value`) for this attempt; never logged.
    pub credential: Option<(&'a str, &'a str)>,
    pub peer: &'a str,
    pub trusted: bool,
    pub tls: bool,
    pub request_id: &'a RequestId,
    /// Lent by the gate; written here, before the request's first `.await`.
    pub identity: Option<Identity<'a>>,
    pub framing: Framing,
    /// The client speaks HTTP/1.0: ask the same of the upstream so it never answers chunked.
    pub http10: bool,
    /// A WebSocket upgrade the route allows: `Connection: Upgrade` and `Upgrade: websocket` go
    /// upstream (the client's own are dropped as hop-by-hop, as always).
    pub upgrade: bool,
}

/// Where the caller's identity sits in a written head: byte ranges of the
/// `X-Edgefilter-Key-Id`, `-Tenant` and `-User` values, for the access log to copy without
/// searching the head again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentitySpans {
    /// `X-Edgefilter-Key-Id`'s value.
    pub key_id: (u32, u32),
    /// `X-Edgefilter-Tenant`'s value.
    pub tenant: (u32, u32),
    /// `X-Edgefilter-User`'s value.
    pub user: (u32, u32),
}

impl IdentitySpans {
    /// The three values, sliced from the head they were written into.
    #[must_use]
    pub fn values<'o>(&self, head: &'o [u8]) -> Option<[&'o [u8]; 3]> {
        let at = |(a, b): (u32, u32)| head.get(a as usize..b as usize);
        Some([at(self.key_id)?, at(self.tenant)?, at(self.user)?])
    }
}

/// A field [`field`] refused to write: the header it was, e.g. `X-Edgefilter-User`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsafe(pub &'static str);

/// Serialises the upstream request head into `out` (cleared first); returns where the
/// identity's values are in it (when there is one).
///
/// # Errors
/// [`Unsafe`]: a field holds a byte a field may not; `out` then holds a partial head that must
/// not be sent.
pub(crate) fn write_head(out: &mut Vec<u8>, f: &Forward<'_, '_>) -> Result<Written, Unsafe> {
    out.clear();
    // The request line's parts come from httparse: a token and a target of visible characters.
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
            field(out, h.name.as_bytes(), h.value, "a client header")?;
        }
    }
    let host = field(out, b"Host", f.authority.as_bytes(), "Host")?;
    if let Some(host) = f.scan.host {
        field(
            out,
            b"X-Forwarded-Host",
            host.as_bytes(),
            "X-Forwarded-Host",
        )?;
    }
    let xff = f.scan.xff.filter(|_| f.trusted);
    if xff.is_some_and(|v| has_bad_value_byte(v.as_bytes()))
        || has_bad_value_byte(f.peer.as_bytes())
    {
        return Err(Unsafe("X-Forwarded-For"));
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(xff) = xff {
        out.extend_from_slice(xff.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(f.peer.as_bytes());
    out.extend_from_slice(b"\r\n");
    let proto: &[u8] = if f.tls { b"https" } else { b"http" };
    field(out, b"X-Forwarded-Proto", proto, "X-Forwarded-Proto")?;
    field(
        out,
        b"X-Request-Id",
        f.request_id.as_bytes(),
        "X-Request-Id",
    )?;
    let spans = match f.identity {
        Some(id) => {
            let key_id = id.key_id.as_bytes();
            let key_id = field(out, b"X-Edgefilter-Key-Id", key_id, "X-Edgefilter-Key-Id")?;
            let tenant = id.tenant.as_bytes();
            let tenant = field(out, b"X-Edgefilter-Tenant", tenant, "X-Edgefilter-Tenant")?;
            let user = field(
                out,
                b"X-Edgefilter-User",
                id.user.as_bytes(),
                "X-Edgefilter-User",
            )?;
            Some(IdentitySpans {
                key_id,
                tenant,
                user,
            })
        }
        None => None,
    };
    let credential = match f.credential {
        Some((name, value)) => {
            let what = "the route's upstream credential";
            Some(field(out, name.as_bytes(), value.as_bytes(), what)?)
        }
        None => None,
    };
    if f.upgrade {
        out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n");
    }
    match f.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => {
            field(out, b"Transfer-Encoding", b"chunked", "Transfer-Encoding")?;
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Written {
        identity: spans,
        host,
        credential,
        len: u32::try_from(out.len()).unwrap_or(u32::MAX),
    })
}

/// Where the values of a written head are, so the access log copies them and a retry on
/// another target or with another credential rewrites them in place ([`replace_value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The caller's identity, when there is one.
    pub identity: Option<IdentitySpans>,
    /// `Host`'s value.
    pub host: (u32, u32),
    /// The injected credential's value.
    pub credential: Option<(u32, u32)>,
    /// The head's length.
    pub len: u32,
}

/// Replaces the value at `span` in `out` with `value`; returns how far everything after it
/// moved (what the caller adds to the spans after `span`).
///
/// # Errors
/// [`Unsafe`] when `value` holds a byte a field may not (nothing is changed).
pub(crate) fn replace_value(
    out: &mut Vec<u8>,
    span: (u32, u32),
    value: &[u8],
    what: &'static str,
) -> Result<i64, Unsafe> {
    if has_bad_value_byte(value) {
        return Err(Unsafe(what));
    }
    let (a, b) = (span.0 as usize, span.1 as usize);
    out.splice(a..b, value.iter().copied());
    Ok(value.len() as i64 - (b - a) as i64)
}

/// Writes `name: value\r\n` and returns where the value is in `out`, or refuses (as `what`) a
/// value with a byte a field value may not hold (RFC 9110 §5.5: CR, LF, NUL, any other control but HTAB). Names are tokens by
/// construction: the parser's, the proxy's own literals, and `inject_header`'s, checked at
/// start-up.
#[inline]
fn field(
    out: &mut Vec<u8>,
    name: &[u8],
    value: &[u8],
    what: &'static str,
) -> Result<(u32, u32), Unsafe> {
    if has_bad_value_byte(value) {
        return Err(Unsafe(what));
    }
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    let start = out.len();
    out.extend_from_slice(value);
    let end = out.len();
    out.extend_from_slice(b"\r\n");
    // A head is capped far below 4 GiB (`limits.max_header_bytes` plus what the proxy adds).
    Ok((
        u32::try_from(start).unwrap_or(u32::MAX),
        u32::try_from(end).unwrap_or(u32::MAX),
    ))
}

/// Whether a client header goes upstream.
fn keep(name: &str, f: &Forward<'_, '_>) -> bool {
    if owned(name, f.route, f.route.strip_key) {
        return false;
    }
    // Headers named by `Connection` are hop-by-hop too.
    !f.scan.connection[..f.scan.n_connection]
        .iter()
        .any(|v| v.split(',').any(|t| reads_as(name, t.trim())))
}

/// Whether the proxy sets or strips `name` (see the module docs), read as [`reads_as`] does;
/// `strip_key`: the key's headers count too.
fn owned(name: &str, route: &CompiledRoute, strip_key: bool) -> bool {
    let fixed = match name.len() {
        2 => reads_as(name, "te"),
        4 => reads_as(name, "host"),
        6 => reads_as(name, "expect"),
        7 => reads_as(name, "upgrade") || reads_as(name, "trailer"),
        9 => strip_key && reads_as(name, "x-api-key"),
        10 => reads_as(name, "connection") || reads_as(name, "keep-alive"),
        12 => reads_as(name, "x-request-id"),
        13 => strip_key && reads_as(name, "authorization"),
        14 => reads_as(name, "content-length"),
        16 => reads_as(name, "proxy-connection"),
        17 => reads_as(name, "transfer-encoding"),
        19 => reads_as(name, "proxy-authorization"),
        _ => false,
    };
    let x = name
        .as_bytes()
        .first()
        .is_some_and(|b| b.eq_ignore_ascii_case(&b'x'));
    fixed
        || (x && (reads_as_prefix(name, "x-edgefilter-") || reads_as_prefix(name, "x-forwarded-")))
        || route
            .credential_header()
            .is_some_and(|inject| reads_as(name, inject))
        || (strip_key && route.key_headers.iter().any(|k| reads_as(name, k)))
}

/// Whether a trailer field goes upstream: not a name the proxy owns (the key's headers and
/// `Authorization` always count: the key was checked in the head, never here), and none of
/// the fields RFC 9110 §6.5.1 says a trailer must not carry: authentication (`Cookie`),
/// request modifiers (`Cache-Control`, `Max-Forwards`, `Pragma`, `Range`, `If-*`) and how to
/// read the content (`Content-Type`, `Content-Encoding`, `Content-Range`).
fn trailer_kept(name: &str, route: &CompiledRoute) -> bool {
    let modifier = match name.len() {
        5 => reads_as(name, "range"),
        6 => reads_as(name, "cookie") || reads_as(name, "pragma"),
        12 => reads_as(name, "content-type") || reads_as(name, "max-forwards"),
        13 => reads_as(name, "cache-control") || reads_as(name, "content-range"),
        16 => reads_as(name, "content-encoding"),
        _ => false,
    };
    !modifier && !reads_as_prefix(name, "if-") && !owned(name, route, true)
}

/// Writes the trailer section that starts `section` (what follows a chunked body's last-chunk
/// line) into `out`: the fields a trailer may carry upstream ([`trailer_kept`]), then the empty
/// line that ends the body. `Ok(Some(n))`: the section was `n` bytes; `Ok(None)`: it is not
/// complete yet (nothing written).
///
/// # Errors
/// [`Rule::TrailerSection`]: the section is not header lines (a request line, a bare LF,
/// obs-fold, a bad name or value), has more than 32 fields, or is over 8 KiB.
pub(crate) fn write_trailers(
    out: &mut Vec<u8>,
    section: &[u8],
    route: &CompiledRoute,
) -> Result<Option<usize>, Rule> {
    let window = &section[..section.len().min(MAX_TRAILER_BYTES)];
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (n, fields) = match httparse::parse_headers(window, &mut fields) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if section.len() < MAX_TRAILER_BYTES => return Ok(None),
        Ok(httparse::Status::Partial) | Err(_) => return Err(Rule::TrailerSection),
    };
    // httparse also ends lines at a bare LF; the proxy's framing never does.
    let lines = &window[..n];
    if lines
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || lines[i - 1] != b'\r'))
    {
        return Err(Rule::TrailerSection);
    }
    let start = out.len();
    for t in fields.iter().filter(|t| trailer_kept(t.name, route)) {
        if field(out, t.name.as_bytes(), t.value, "a trailer").is_err() {
            out.truncate(start);
            return Err(Rule::TrailerSection);
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(n))
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
    use crate::names::{TenantName, UserName};
    use crate::proxy::credentials::Credentials;
    use crate::proxy::upstream::Target;
    use crate::proxy::upstream::balance::Targets;
    use std::sync::Arc;
    use std::time::Duration;

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

    fn route() -> CompiledRoute {
        CompiledRoute {
            prefix: "/v1/".into(),
            prefix_read: b"/v1/".to_vec(),
            targets: Targets::new(vec![Arc::new(
                Target::new(
                    0,
                    "/v1/",
                    "http://127.0.0.1:9000",
                    None,
                    None,
                    Duration::from_secs(30),
                )
                .unwrap(),
            )]),
            strip_key: true,
            key_in_query: false,
            key_headers: vec!["x-tenant-key".into()],
            credentials: Some(Credentials::fixed(
                "X-Upstream-Key".into(),
                "sk-upstream".into(),
            )),
            websocket: false,
            ai: None,
        }
    }

    /// The head written for `headers` with `identity`, or the refusal.
    fn head(
        headers: &[httparse::Header<'_>],
        identity: Option<Identity<'_>>,
    ) -> Result<String, Unsafe> {
        let route = route();
        let scan = Scan::default();
        let rid = RequestId::from_caller(b"rid-1").unwrap();
        let mut out = Vec::new();
        write_head(
            &mut out,
            &Forward {
                method: "GET",
                path: "/v1/x",
                query: None,
                headers,
                scan: &scan,
                route: &route,
                authority: "up:9000",
                credential: Some(("X-Upstream-Key", "sk-upstream")),
                peer: "203.0.113.7",
                trusted: false,
                tls: false,
                request_id: &rid,
                identity,
                framing: Framing::Empty,
                http10: false,
                upgrade: false,
            },
        )?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn h<'b>(name: &'b str, value: &'b str) -> httparse::Header<'b> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    fn names(tenant: &str, user: &str) -> (TenantName, UserName) {
        (
            TenantName::parse(tenant).unwrap(),
            UserName::parse(user).unwrap(),
        )
    }

    #[test]
    fn lookalikes_of_owned_names_are_dropped_and_other_underscores_kept() {
        let (acme, alice_name) = names("acme", "alice");
        let alice = Identity {
            key_id: "key_1",
            tenant: &acme,
            user: &alice_name,
            rate: None,
        };
        let sent = head(
            &[
                h("X_Edgefilter_User", "root"),
                h("x_edgefilter_tenant", "root-tenant"),
                h("X-Edgefilter_Key_Id", "key_forged"),
                h("X_EDGEFILTER_ANYTHING", "forged"),
                h("X_Forwarded_For", "6.6.6.6"),
                h("X_Forwarded_Port", "6666"),
                h("X-Forwarded-Prefix", "/forged"),
                h("X_Request_Id", "forged-id"),
                h("X_API_Key", "ef_live_forged"),
                h("X_Tenant_Key", "ef_live_forged"),
                h("X_Upstream_Key", "forged-credential"),
                h("Content_Length", "5"),
                h("Transfer_Encoding", "chunked"),
                h("Proxy_Authorization", "forged"),
                h("X_Custom_Thing", "kept"),
                h("Accept", "*/*"),
            ],
            Some(alice),
        )
        .unwrap();
        assert!(!sent.contains("forged") && !sent.contains("6666"), "{sent}");
        assert!(
            !sent.contains("root") && !sent.contains("6.6.6.6"),
            "{sent}"
        );
        assert!(
            !sent.contains("Content_Length") && !sent.contains("Transfer_"),
            "{sent}"
        );
        assert!(sent.contains("X_Custom_Thing: kept\r\n"), "{sent}");
        assert!(sent.contains("Accept: */*\r\n"), "{sent}");
        assert!(sent.contains("X-Edgefilter-User: alice\r\n"), "{sent}");
        assert!(sent.contains("X-Upstream-Key: sk-upstream\r\n"), "{sent}");
    }

    #[test]
    fn a_control_byte_in_any_value_the_proxy_adds_is_refused_not_written() {
        let injections = [
            "u\r\nX-Edgefilter-Tenant: root",
            "u\nX: y",
            "u\rX: y",
            "u\0",
            "u\x01",
            "u\x1b[31m",
            "u\x7f",
        ];
        for bad in injections {
            // Tenant and user names cannot hold such a byte (their types refuse it); the one
            // writer every field goes through refuses it all the same.
            assert!(TenantName::parse(bad).is_err() && UserName::parse(bad).is_err());
            for what in ["X-Edgefilter-User", "X-Edgefilter-Tenant"] {
                assert_eq!(
                    field(&mut Vec::new(), what.as_bytes(), bad.as_bytes(), what),
                    Err(Unsafe(what)),
                    "{bad:?}"
                );
            }
            let (acme, alice) = names("acme", "alice");
            let as_key = Identity {
                key_id: bad,
                tenant: &acme,
                user: &alice,
                rate: None,
            };
            assert_eq!(
                head(&[], Some(as_key)),
                Err(Unsafe("X-Edgefilter-Key-Id")),
                "{bad:?}"
            );
            // A client value that got past the parser somehow is refused the same way.
            assert_eq!(
                head(&[h("X-Note", bad)], None),
                Err(Unsafe("a client header")),
                "{bad:?}"
            );
        }
        // HTAB, spaces and obs-text (UTF-8 included) are field-value bytes.
        let sent = head(&[h("X-Note", "ac\tme José Müller")], None).unwrap();
        assert!(sent.contains("X-Note: ac\tme José Müller\r\n"), "{sent}");
    }

    #[test]
    fn an_upgrade_goes_upstream_as_one_with_its_websocket_fields_and_without_the_key() {
        let route = route();
        let scan = Scan::default();
        let rid = RequestId::from_caller(b"rid-1").unwrap();
        let mut out = Vec::new();
        let headers = [
            h("Connection", "keep-alive, Upgrade"),
            h("Upgrade", "WebSocket"),
            h("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            h("Sec-WebSocket-Version", "13"),
            h("Sec-WebSocket-Protocol", "realtime"),
            h("Authorization", "Bearer ef_live_secret"),
        ];
        for upgrade in [true, false] {
            write_head(
                &mut out,
                &Forward {
                    method: "GET",
                    path: "/v1/realtime",
                    query: None,
                    headers: &headers,
                    scan: &scan,
                    route: &route,
                    authority: "up:9000",
                    credential: None,
                    peer: "203.0.113.7",
                    trusted: false,
                    tls: false,
                    request_id: &rid,
                    identity: None,
                    framing: Framing::Empty,
                    http10: false,
                    upgrade,
                },
            )
            .unwrap();
            let sent = String::from_utf8(out.clone()).unwrap();
            assert!(
                sent.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
                    && sent.contains("Sec-WebSocket-Version: 13\r\n")
                    && sent.contains("Sec-WebSocket-Protocol: realtime\r\n"),
                "{sent}"
            );
            assert!(
                !sent.contains("ef_live") && !sent.contains("keep-alive"),
                "{sent}"
            );
            let hop = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
            assert_eq!(
                sent.matches("Connection").count(),
                usize::from(upgrade),
                "{sent}"
            );
            assert_eq!(
                sent.matches("Upgrade: ").count(),
                usize::from(upgrade),
                "{sent}"
            );
            assert_eq!(sent.contains(hop), upgrade, "{sent}");
        }
    }

    /// The trailer section as forwarded, or the refusal.
    fn trailers(section: &str) -> Result<Option<(usize, String)>, Rule> {
        let mut out = b"before".to_vec();
        let done = write_trailers(&mut out, section.as_bytes(), &route())?;
        Ok(done.map(|n| (n, String::from_utf8(out[6..].to_vec()).unwrap())))
    }

    #[test]
    fn trailers_keep_only_what_a_trailer_may_carry() {
        let section = "X-Edgefilter-User: root\r\nAuthorization: Bearer stolen\r\n\
                       X_Edgefilter_Tenant: evil\r\nX-API-Key: ef_live_x\r\nHost: evil\r\n\
                       Content-Length: 0\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\
                       X-Forwarded-For: 6.6.6.6\r\nX-Upstream-Key: forged\r\n\
                       Cookie: s=1\r\nContent-Type: text/plain\r\nIf-Match: *\r\n\
                       X-Checksum: 5d41\r\nDigest: sha-256=abc\r\n\r\nNEXT";
        let (n, kept) = trailers(section).unwrap().unwrap();
        assert_eq!(&section[n..], "NEXT");
        assert_eq!(kept, "X-Checksum: 5d41\r\nDigest: sha-256=abc\r\n\r\n");
        // No trailers: just the end.
        assert_eq!(trailers("\r\nNEXT"), Ok(Some((2, "\r\n".into()))));
    }

    #[test]
    fn a_trailer_section_that_is_not_header_lines_is_refused() {
        for bad in [
            "GET /admin/pwned HTTP/1.1\r\nHost: x\r\n\r\n",
            "X-A: 1\r\nGET /admin HTTP/1.1\r\n\r\n",
            "X-A: 1\nX-B: 2\n\n",
            "X-A: 1\r\n\n",
            " X-A: 1\r\n\r\n",
            "X-A: 1\r\n folded\r\n\r\n",
            "X A: 1\r\n\r\n",
            ": 1\r\n\r\n",
            "X-A: a\0b\r\n\r\n",
        ] {
            assert_eq!(trailers(bad), Err(Rule::TrailerSection), "{bad:?}");
        }
        let many: String = (0..=MAX_TRAILERS)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(trailers(&(many + "\r\n")), Err(Rule::TrailerSection));
        let huge = format!("X-Big: {}\r\n\r\n", "a".repeat(MAX_TRAILER_BYTES));
        assert_eq!(trailers(&huge), Err(Rule::TrailerSection));
        // Incomplete is not wrong yet, up to the limit.
        assert_eq!(trailers("X-A: 1\r\nX-B"), Ok(None));
        assert_eq!(trailers(""), Ok(None));
        let endless = format!("X-Big: {}", "a".repeat(MAX_TRAILER_BYTES));
        assert_eq!(trailers(&endless), Err(Rule::TrailerSection));
    }
}
