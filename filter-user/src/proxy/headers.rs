//! Header-level HTTP/1.1 helpers shared by the request side ([`super::head`],
//! [`super::forward`]) and the response side ([`super::response`]): body framing, the one pass
//! over request headers that finds framing, connection options and the few values the proxy
//! needs, and the name and value tests they are built from: [`is`] (exactly this name,
//! case-insensitive, for framing) and [`reads_as`] (the same name to a CGI-style upstream, which
//! reads `_` as `-`, for what the proxy drops).

use crate::codes::Rule;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length: n` (n > 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What one pass over the headers found.
#[derive(Default)]
pub(crate) struct Scan<'b> {
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub close: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Connection` names `upgrade`.
    pub connection_upgrade: bool,
    /// An `Upgrade` header offers `websocket`.
    pub upgrade_websocket: bool,
    pub host: Option<&'b str>,
    pub request_id: Option<&'b [u8]>,
    pub xff: Option<&'b str>,
    /// Values of `Connection` headers (their tokens name more hop-by-hop headers).
    pub connection: [&'b str; 4],
    pub n_connection: usize,
}

/// Case-insensitive header-name test against a lower-case literal.
#[inline]
pub(crate) fn is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.eq_ignore_ascii_case(lower)
}

/// Whether two header names are one name to an upstream that folds `-` and `_` together (CGI,
/// WSGI, Rack, PHP: `X_Edgefilter_User` and `X-Edgefilter-User` are both
/// `HTTP_X_EDGEFILTER_USER`): equal case-insensitively with every `_` read as `-`.
#[inline]
pub(crate) fn reads_as(name: &str, other: &str) -> bool {
    name.len() == other.len() && folded_eq(name.as_bytes(), other.as_bytes())
}

/// Whether `name` is longer than `prefix` and starts with it, read as [`reads_as`] does.
#[inline]
pub(crate) fn reads_as_prefix(name: &str, prefix: &str) -> bool {
    name.len() > prefix.len() && folded_eq(&name.as_bytes()[..prefix.len()], prefix.as_bytes())
}

/// `a` and `b` (same length) are equal lower-cased, with `_` read as `-`.
#[inline]
fn folded_eq(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// Whether `v` holds a byte a field value may not (RFC 9110 §5.5: CR, LF, NUL and every other
/// control character but HTAB; obs-text is allowed). Branch-free, so it vectorises.
#[inline]
pub(crate) fn has_bad_value_byte(v: &[u8]) -> bool {
    v.iter().fold(false, |bad, &b| {
        bad | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
    })
}

/// One pass over the headers: framing, connection options, and the few values we need.
///
/// Refuses (with the [`Rule`] broken) every smuggling shape: two different `Content-Length`s, a
/// `Content-Length` that is not plain digits, a `Transfer-Encoding` other than exactly `chunked`
/// (or given twice), two `Host`s. Obs-fold never gets here: httparse rejects it in requests.
/// Framing names are matched exactly ([`is`]): `Content_Length` frames nothing (and is dropped
/// before forwarding).
pub(crate) fn scan<'b>(headers: &[httparse::Header<'b>]) -> Result<Scan<'b>, Rule> {
    let mut s = Scan::default();
    for h in headers {
        let name = h.name;
        let value = h.value;
        match name.len() {
            4 if is(name, "host") => {
                if s.host.is_some() {
                    return Err(Rule::HostDuplicate);
                }
                s.host = Some(std::str::from_utf8(value).map_err(|_| Rule::HeaderNotUtf8)?);
            }
            6 if is(name, "expect") => {
                s.expect_continue |= trim(value).eq_ignore_ascii_case(b"100-continue");
            }
            10 if is(name, "connection") => {
                let v = std::str::from_utf8(value).map_err(|_| Rule::HeaderNotUtf8)?;
                for tok in v.split(',').map(str::trim) {
                    if tok.eq_ignore_ascii_case("close") {
                        s.close = true;
                    } else if tok.eq_ignore_ascii_case("keep-alive") {
                        s.keep_alive = true;
                    } else if tok.eq_ignore_ascii_case("upgrade") {
                        s.connection_upgrade = true;
                    }
                }
                if s.n_connection < s.connection.len() {
                    s.connection[s.n_connection] = v;
                    s.n_connection += 1;
                } else {
                    return Err(Rule::ConnectionHeaders);
                }
            }
            7 if is(name, "upgrade") => s.upgrade_websocket |= offers_websocket(value),
            12 if is(name, "x-request-id") => s.request_id = Some(value),
            14 if is(name, "content-length") => {
                let n = parse_length(value).map_err(|()| Rule::ContentLength)?;
                if s.content_length.is_some_and(|m| m != n) {
                    return Err(Rule::ContentLength);
                }
                s.content_length = Some(n);
            }
            15 if is(name, "x-forwarded-for") => {
                s.xff = Some(std::str::from_utf8(value).map_err(|_| Rule::HeaderNotUtf8)?);
            }
            17 if is(name, "transfer-encoding") => {
                if s.chunked || !trim(value).eq_ignore_ascii_case(b"chunked") {
                    return Err(Rule::TransferEncoding);
                }
                s.chunked = true;
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Whether an `Upgrade` value lists `websocket` (case-insensitive, RFC 6455 §4.2.1) among its
/// protocols.
fn offers_websocket(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|p| trim(p).eq_ignore_ascii_case(b"websocket"))
}

/// `Content-Length`: 1 to 19 ASCII digits, nothing else.
pub(crate) fn parse_length(v: &[u8]) -> Result<u64, ()> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    Ok(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// `v` without leading and trailing spaces and tabs.
pub(crate) fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_read_as_hyphens_for_reads_as_only() {
        assert!(reads_as("X_Edgefilter_User", "x-edgefilter-user"));
        assert!(reads_as("x-EDGEFILTER_user", "x-edgefilter-user"));
        assert!(reads_as("X-Forwarded-For", "x-forwarded-for"));
        assert!(!reads_as("X_Edgefilter_Users", "x-edgefilter-user"));
        assert!(!reads_as("X-Edgefilter.User", "x-edgefilter-user"));
        assert!(reads_as("X-Upstream-Key", "x_upstream_key"));
        assert!(reads_as_prefix("X_EDGEFILTER_Anything", "x-edgefilter-"));
        assert!(!reads_as_prefix("X_Edgefilter_", "x-edgefilter-"));
        assert!(!is("Content_Length", "content-length"));
    }

    #[test]
    fn a_websocket_upgrade_is_found_in_connection_and_upgrade() {
        let h = |name, value: &'static str| httparse::Header {
            name,
            value: value.as_bytes(),
        };
        let s = scan(&[
            h("Connection", "keep-alive, Upgrade"),
            h("Upgrade", "h2c, WebSocket"),
        ])
        .unwrap();
        assert!(s.connection_upgrade && s.upgrade_websocket);
        let s = scan(&[h("Connection", "close"), h("Upgrade", "websocket/13x")]).unwrap();
        assert!(!s.connection_upgrade && !s.upgrade_websocket);
        let s = scan(&[h("Upgrade", "h2c")]).unwrap();
        assert!(!s.upgrade_websocket);
    }

    #[test]
    fn field_value_bytes() {
        for bad in [&b"a\rb"[..], b"a\nb", b"\0", b"\x01", b"\x1f", b"x\x7f"] {
            assert!(has_bad_value_byte(bad), "{bad:?}");
        }
        for fine in [&b""[..], b"a\tb c", b"caf\xc3\xa9", b"\x80\xff", b"~!"] {
            assert!(!has_bad_value_byte(fine), "{fine:?}");
        }
    }
}
