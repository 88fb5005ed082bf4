//! Upstream response heads: parsed in place, framing decided (HEAD, 1xx, 204 and 304 have no
//! body), hop-by-hop headers removed, `X-Request-Id` set, and rewritten into a reused buffer. A
//! `101 Switching Protocols` keeps its `Upgrade` and says `Connection: Upgrade`; whether it is
//! welcome (only after a WebSocket upgrade request) is the caller's call.

use std::mem::MaybeUninit;

use super::headers::{is, parse_length, trim};
use super::reqid::RequestId;
use super::usage::Payload;

/// Largest upstream response head accepted (502 above).
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RespFraming {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A final response head, rewritten into the output buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RespHead {
    /// The upstream's status code (passed on to the client).
    pub status: u16,
    pub head_len: usize,
    pub framing: RespFraming,
    /// The upstream connection may be reused after this response.
    pub reusable: bool,
    /// The client connection must close after this response.
    pub close_client: bool,
    /// `Retry-After` in seconds, when it is given as a number (a provider's 429).
    pub retry_after: Option<u64>,
    /// What the body is, for reading an LLM provider's usage report from it.
    pub payload: Payload,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub(crate) enum RespStep {
    Partial,
    /// An interim (1xx) response of `head_len` bytes; `out` holds it rewritten, or is empty when
    /// it is not passed on (`100 Continue`, which the proxy answers itself).
    Interim(usize),
    Final(RespHead),
    /// `101 Switching Protocols` with an `Upgrade` header: what follows its head is the new
    /// protocol's.
    Switch(RespHead),
    /// Unparseable, oversized, or a shape we do not pass (a `101` without `Upgrade`).
    Bad,
}

/// Parses and rewrites one upstream response head.
pub(crate) fn process(
    buf: &[u8],
    is_head: bool,
    request_id: &RequestId,
    close_client: bool,
    out: &mut Vec<u8>,
) -> RespStep {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {
            return RespStep::Partial;
        }
        _ => return RespStep::Bad,
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return RespStep::Bad;
    };
    let mut conn_close = version == 0;
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    let mut connection: Option<&str> = None;
    let mut retry_after: Option<u64> = None;
    let mut upgrade = false;
    let mut payload = Payload::Other;
    let mut encoded = false;
    for h in resp.headers.iter() {
        match h.name.len() {
            12 if is(h.name, "content-type") => payload = payload_of(h.value),
            16 if is(h.name, "content-encoding") => {
                encoded |= !trim(h.value).eq_ignore_ascii_case(b"identity");
            }
            10 if is(h.name, "connection") => {
                let v = std::str::from_utf8(h.value).unwrap_or("");
                for t in v.split(',').map(str::trim) {
                    if t.eq_ignore_ascii_case("close") {
                        conn_close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") && version == 0 {
                        conn_close = false;
                    }
                }
                connection = Some(v);
            }
            14 if is(h.name, "content-length") => {
                let Ok(n) = parse_length(h.value) else {
                    return RespStep::Bad;
                };
                if length.is_some_and(|m| m != n) {
                    return RespStep::Bad;
                }
                length = Some(n);
            }
            11 if is(h.name, "retry-after") => {
                retry_after = std::str::from_utf8(trim(h.value))
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
            }
            17 if is(h.name, "transfer-encoding") => {
                let last = trim(h.value).rsplit(|&b| b == b',').next().map(trim);
                te = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
            }
            7 if is(h.name, "upgrade") => upgrade = true,
            _ => {}
        }
    }
    let switch = code == 101;
    let interim = (100..200).contains(&code) && !switch;
    // httparse takes any three digits; "004" would be re-sent as an unreadable "4" (found by
    // fuzzing). Codes below 100 do not exist.
    if (switch && !upgrade) || code < 100 {
        return RespStep::Bad;
    }
    let framing = if switch || interim || is_head || code == 204 || code == 304 {
        RespFraming::Empty
    } else {
        match (te, length) {
            (Some(true), _) => RespFraming::Chunked,
            (Some(false), _) | (None, None) => RespFraming::UntilClose,
            (None, Some(n)) => RespFraming::Length(n),
        }
    };
    out.clear();
    if interim && code == 100 {
        return RespStep::Interim(head_len);
    }
    let close_client = close_client || framing == RespFraming::UntilClose;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        // A switch keeps its `Upgrade` (the protocol switched to) and has no body framing.
        let kept_upgrade = switch && is(h.name, "upgrade");
        let drop = match h.name.len() {
            2 => is(h.name, "te"),
            7 => is(h.name, "trailer") || (is(h.name, "upgrade") && !kept_upgrade),
            10 => is(h.name, "connection") || is(h.name, "keep-alive"),
            12 => is(h.name, "x-request-id"),
            14 => (te.is_some() || switch) && is(h.name, "content-length"),
            16 => is(h.name, "proxy-connection"),
            17 => switch && is(h.name, "transfer-encoding"),
            _ => false,
        } || (!kept_upgrade
            && connection
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(h.name))));
        if !drop {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"X-Request-Id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    if interim {
        out.extend_from_slice(b"\r\n");
        return RespStep::Interim(head_len);
    }
    if switch {
        out.extend_from_slice(b"Connection: Upgrade\r\n\r\n");
        return RespStep::Switch(RespHead {
            status: code,
            head_len,
            framing,
            reusable: false,
            close_client: true,
            retry_after: None,
            payload: Payload::Other,
        });
    }
    if close_client {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    RespStep::Final(RespHead {
        status: code,
        head_len,
        framing,
        reusable: !conn_close && framing != RespFraming::UntilClose,
        close_client,
        retry_after,
        payload: if encoded { Payload::Encoded } else { payload },
    })
}

/// The payload a `Content-Type` value names (parameters ignored).
fn payload_of(value: &[u8]) -> Payload {
    let media = trim(value.split(|&b| b == b';').next().unwrap_or(b""));
    if media.eq_ignore_ascii_case(b"text/event-stream") {
        Payload::EventStream
    } else if media.len() >= 4 && media[media.len() - 4..].eq_ignore_ascii_case(b"json") {
        Payload::Json
    } else {
        Payload::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(raw: &[u8], is_head: bool) -> (RespStep, String) {
        let mut out = Vec::new();
        let id = RequestId::from_caller(b"rid").unwrap();
        let step = process(raw, is_head, &id, false, &mut out);
        (step, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_status_below_100_is_refused() {
        assert!(matches!(
            run(b"HTTP/1.1 004 Odd\r\n\r\n", false).0,
            RespStep::Bad
        ));
        assert!(matches!(
            run(b"HTTP/1.1 099 Odd\r\n\r\n", false).0,
            RespStep::Bad
        ));
    }

    #[test]
    fn framing_follows_status_and_method() {
        let (s, out) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Request-Id: up\r\n\r\nhello",
            false,
        );
        let RespStep::Final(h) = s else { panic!() };
        assert_eq!(h.framing, RespFraming::Length(5));
        assert!(h.reusable);
        assert!(out.contains("X-Request-Id: rid\r\n"));
        assert!(!out.contains("X-Hop") && !out.contains("up\r\n") && !out.contains("onnection"));
        let (s, _) = run(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert!(matches!(
            s,
            RespStep::Final(RespHead {
                framing: RespFraming::Empty,
                ..
            })
        ));
        let (s, _) = run(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert!(matches!(
            s,
            RespStep::Final(RespHead {
                framing: RespFraming::Empty,
                ..
            })
        ));
        let (s, out) = run(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert!(matches!(
            s,
            RespStep::Final(RespHead {
                framing: RespFraming::UntilClose,
                reusable: false,
                close_client: true,
                ..
            })
        ));
        assert!(out.contains("Connection: close"));
        let (s, _) = run(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false);
        assert!(matches!(s, RespStep::Interim(_)));
        let (s, _) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false,
        );
        assert!(matches!(s, RespStep::Bad));
    }

    #[test]
    fn the_payload_follows_content_type_and_content_encoding() {
        for (headers, want) in [
            ("Content-Type: application/json\r\n", Payload::Json),
            (
                "Content-Type: Application/JSON; charset=utf-8\r\n",
                Payload::Json,
            ),
            ("Content-Type: application/problem+json\r\n", Payload::Json),
            (
                "Content-Type: text/event-stream;charset=utf-8\r\n",
                Payload::EventStream,
            ),
            ("Content-Type: text/plain\r\n", Payload::Other),
            ("", Payload::Other),
            (
                "Content-Type: text/event-stream\r\nContent-Encoding: identity\r\n",
                Payload::EventStream,
            ),
            (
                "Content-Encoding: gzip\r\nContent-Type: application/json\r\n",
                Payload::Encoded,
            ),
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\n{headers}Content-Length: 0\r\n\r\n");
            let (s, _) = run(raw.as_bytes(), false);
            let RespStep::Final(h) = s else {
                panic!("{s:?}")
            };
            assert_eq!(h.payload, want, "{headers}");
        }
    }

    #[test]
    fn a_switch_keeps_its_upgrade_and_drops_other_hop_by_hop_headers() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
              Content-Length: 0\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
        let (s, out) = run(raw, false);
        let RespStep::Switch(h) = s else {
            panic!("{s:?}")
        };
        assert_eq!((h.status, h.framing), (101, RespFraming::Empty));
        assert!(!h.reusable);
        assert_eq!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Request-Id: rid\r\n\
             Connection: Upgrade\r\n\r\n"
        );
        // The frame after the head is not part of it.
        assert_eq!(h.head_len, raw.len() - 4);
        // A switch to nothing named is not passed on.
        let (s, _) = run(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false);
        assert!(matches!(s, RespStep::Bad));
    }
}
