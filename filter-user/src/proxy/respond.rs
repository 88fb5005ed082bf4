//! Error answers (SPEC §5): the JSON body, `X-Request-Id`, `WWW-Authenticate` on 401s,
//! `Retry-After` and `RateLimit-*` on 429s, opaque mode's `INVALID_CREDENTIALS`, and the
//! [`Rule`] a `BAD_REQUEST` broke (its `rule` field, and its hint when the denial has none).
//!
//! Rendered straight into a byte buffer; usable by the admin API and `explain` too.

use crate::codes::{ErrorCode, Rule};
use crate::gate::Denial;

/// The code, message, hint and key id a caller sees, after opaque mode is applied.
fn visible(denial: &Denial, opaque: bool) -> (ErrorCode, &str, Option<&str>, Option<&str>) {
    if opaque && denial.code.is_hidden_when_opaque() {
        let code = ErrorCode::InvalidCredentials;
        (code, code.default_message(), None, None)
    } else {
        (
            denial.code,
            denial.message.as_str(),
            denial.hint.as_deref(),
            denial.key_id.as_deref(),
        )
    }
}

/// Writes the JSON error body:
/// `{"error":{"code":"…","rule":"…","message":"…","hint":"…","key_id":"…","request_id":"…"}}`
/// (`rule`, `hint` and `key_id` only when present; `rule` is the [`Rule`] a `BAD_REQUEST` broke,
/// and its hint stands in when the denial has none).
pub fn write_error_body(
    buf: &mut Vec<u8>,
    denial: &Denial,
    rule: Option<Rule>,
    request_id: &str,
    opaque: bool,
) {
    let (code, message, hint, key_id) = visible(denial, opaque);
    let rule = rule.filter(|_| code == ErrorCode::BadRequest);
    buf.extend_from_slice(b"{\"error\":{\"code\":\"");
    buf.extend_from_slice(code.as_str().as_bytes());
    if let Some(r) = rule {
        buf.extend_from_slice(b"\",\"rule\":\"");
        buf.extend_from_slice(r.as_str().as_bytes());
    }
    buf.extend_from_slice(b"\",\"message\":");
    json_string(buf, message);
    if let Some(h) = hint.or(rule.map(Rule::hint)) {
        buf.extend_from_slice(b",\"hint\":");
        json_string(buf, h);
    }
    if let Some(k) = key_id {
        buf.extend_from_slice(b",\"key_id\":");
        json_string(buf, k);
    }
    buf.extend_from_slice(b",\"request_id\":");
    json_string(buf, request_id);
    buf.extend_from_slice(b"}}");
}

/// Appends a complete HTTP/1.1 error response (keep-alive) to `buf`.
pub fn write_error(buf: &mut Vec<u8>, denial: &Denial, request_id: &str, opaque: bool) {
    write_error_response(buf, denial, None, request_id, opaque, false);
}

/// Appends a complete HTTP/1.1 error response to `buf`; `rule`: the rule a `BAD_REQUEST` broke;
/// `close` adds `Connection: close`.
pub fn write_error_response(
    buf: &mut Vec<u8>,
    denial: &Denial,
    rule: Option<Rule>,
    request_id: &str,
    opaque: bool,
    close: bool,
) {
    let (code, ..) = visible(denial, opaque);
    let status = code.status();
    let mut num = itoa::Buffer::new();
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(num.format(status).as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(reason(status).as_bytes());
    buf.extend_from_slice(b"\r\nContent-Type: application/json\r\nX-Request-Id: ");
    buf.extend_from_slice(request_id.as_bytes());
    buf.extend_from_slice(b"\r\n");
    if status == 401 {
        buf.extend_from_slice(b"WWW-Authenticate: Bearer realm=\"edgefilter\"");
        if code != ErrorCode::MissingKey {
            buf.extend_from_slice(b", error=\"invalid_token\"");
        }
        buf.extend_from_slice(b"\r\n");
    }
    if code == ErrorCode::RateLimited {
        let rate = denial.rate.unwrap_or(crate::gate::RateInfo {
            limit: 0,
            remaining: 0,
            reset_secs: 1,
        });
        let retry = rate.reset_secs.max(1);
        buf.extend_from_slice(b"Retry-After: ");
        buf.extend_from_slice(num.format(retry).as_bytes());
        buf.extend_from_slice(b"\r\n");
        super::ratelimit_fields::write(
            buf,
            &crate::gate::RateInfo {
                reset_secs: retry,
                ..rate
            },
        );
    }
    // Spent credits: until the refill (none when they never refill: waiting does not help).
    if code == ErrorCode::CreditsExhausted
        && let Some(rate) = denial.rate
    {
        buf.extend_from_slice(b"Retry-After: ");
        buf.extend_from_slice(num.format(rate.reset_secs.max(1)).as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if code == ErrorCode::UpstreamCredentialsExhausted {
        let retry = denial.rate.map_or(1, |r| r.reset_secs.max(1));
        buf.extend_from_slice(b"Retry-After: ");
        buf.extend_from_slice(num.format(retry).as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if close {
        buf.extend_from_slice(b"Connection: close\r\n");
    }
    let mut body = Vec::with_capacity(256);
    write_error_body(&mut body, denial, rule, request_id, opaque);
    buf.extend_from_slice(b"Content-Length: ");
    buf.extend_from_slice(num.format(body.len()).as_bytes());
    buf.extend_from_slice(b"\r\n\r\n");
    buf.extend_from_slice(&body);
}

/// The hint of a `HEADERS_TOO_LARGE` (431): the limits a request head broke.
#[must_use]
pub fn head_limit_hint(max_header_bytes: usize, max_fields: usize) -> String {
    format!(
        "the limit is {max_header_bytes} bytes for the request line and headers \
         (limits.max_header_bytes), and {max_fields} header fields"
    )
}

/// The hint of a `PAYLOAD_TOO_LARGE` (413): the body limit.
#[must_use]
pub fn body_limit_hint(max_body_bytes: u64) -> String {
    format!("the limit is {max_body_bytes} bytes for the request body (limits.max_body_bytes)")
}

/// Standard reason phrase for the statuses edgefilter answers itself.
#[must_use]
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Writes `s` as a JSON string literal.
fn json_string(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            0..=0x1f => {
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[usize::from(b >> 4)]);
                buf.push(HEX[usize::from(b & 0xf)]);
            }
            _ => buf.push(b),
        }
    }
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::RateInfo;

    fn split(resp: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(resp.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn expired_key_body_has_every_field() {
        let mut d = Denial::new(ErrorCode::KeyExpired);
        d.hint = Some("rotate it: \"edgefilter keys rotate\"".into());
        d.key_id = Some("key_abc".into());
        let mut buf = Vec::new();
        write_error(&mut buf, &d, "rid-1", false);
        let (head, v) = split(&buf);
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(
            head.contains("WWW-Authenticate: Bearer realm=\"edgefilter\", error=\"invalid_token\"")
        );
        assert!(head.contains("Content-Type: application/json"));
        assert!(head.contains("X-Request-Id: rid-1"));
        assert_eq!(v["error"]["code"], "KEY_EXPIRED");
        assert_eq!(v["error"]["hint"], "rotate it: \"edgefilter keys rotate\"");
        assert_eq!(v["error"]["key_id"], "key_abc");
        assert_eq!(v["error"]["request_id"], "rid-1");
    }

    #[test]
    fn missing_key_has_no_error_param_and_opaque_hides_codes() {
        let mut buf = Vec::new();
        write_error(&mut buf, &Denial::new(ErrorCode::MissingKey), "r", false);
        let (head, v) = split(&buf);
        assert!(head.contains("WWW-Authenticate: Bearer realm=\"edgefilter\"\r\n"));
        assert!(v["error"].get("hint").is_none() && v["error"].get("key_id").is_none());

        let mut d = Denial::new(ErrorCode::KeyRevoked);
        d.hint = Some("make a new key".into());
        d.key_id = Some("key_x".into());
        buf.clear();
        write_error(&mut buf, &d, "r", true);
        let (_, v) = split(&buf);
        assert_eq!(v["error"]["code"], "INVALID_CREDENTIALS");
        assert!(v["error"].get("hint").is_none());
        // Non-401 codes keep their detail in opaque mode.
        buf.clear();
        write_error(&mut buf, &Denial::new(ErrorCode::ScopeMissing), "r", true);
        assert_eq!(split(&buf).1["error"]["code"], "SCOPE_MISSING");
    }

    #[test]
    fn a_bad_request_names_its_rule_and_its_hint() {
        let mut buf = Vec::new();
        let d = Denial::new(ErrorCode::BadRequest);
        write_error_response(&mut buf, &d, Some(Rule::PathDotSegment), "r", true, true);
        let (head, v) = split(&buf);
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert_eq!(v["error"]["code"], "BAD_REQUEST");
        assert_eq!(v["error"]["rule"], "path_dot_segment");
        assert_eq!(v["error"]["hint"], Rule::PathDotSegment.hint());
        // A rule is only ever rendered beside BAD_REQUEST.
        buf.clear();
        let d = Denial::new(ErrorCode::Internal);
        write_error_response(&mut buf, &d, Some(Rule::PathDotSegment), "r", false, true);
        let (head, v) = split(&buf);
        assert!(
            head.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{head}"
        );
        assert!(v["error"].get("rule").is_none() && v["error"].get("hint").is_none());
        // Every rule renders as valid JSON.
        for rule in Rule::ALL {
            buf.clear();
            let d = Denial::new(ErrorCode::BadRequest);
            write_error_response(&mut buf, &d, Some(rule), "r", false, false);
            assert_eq!(split(&buf).1["error"]["rule"], rule.as_str());
        }
    }

    #[test]
    fn size_limits_state_the_limit_in_opaque_mode_too() {
        let mut d = Denial::new(ErrorCode::PayloadTooLarge);
        d.hint = Some(body_limit_hint(1000));
        let mut buf = Vec::new();
        write_error_response(&mut buf, &d, None, "r", true, true);
        let (head, v) = split(&buf);
        assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
        assert_eq!(
            v["error"]["hint"],
            "the limit is 1000 bytes for the request body (limits.max_body_bytes)"
        );
        let mut d = Denial::new(ErrorCode::HeadersTooLarge);
        d.hint = Some(head_limit_hint(2048, 100));
        buf.clear();
        write_error_response(&mut buf, &d, None, "r", true, true);
        let hint = split(&buf).1["error"]["hint"].as_str().unwrap().to_owned();
        assert!(
            hint.contains("2048 bytes") && hint.contains("limits.max_header_bytes"),
            "{hint}"
        );
    }

    #[test]
    fn rate_limited_carries_retry_after() {
        let mut d = Denial::new(ErrorCode::RateLimited);
        d.rate = Some(RateInfo {
            limit: 10,
            remaining: 0,
            reset_secs: 3,
        });
        let mut buf = Vec::new();
        write_error_response(&mut buf, &d, None, "r", false, true);
        let (head, _) = split(&buf);
        assert!(head.starts_with("HTTP/1.1 429 "));
        for h in [
            "Retry-After: 3",
            "RateLimit-Policy: \"key-rate\";q=10;w=1",
            "RateLimit: \"key-rate\";r=0;t=3",
            "Connection: close",
        ] {
            assert!(head.contains(h), "{h} in {head}");
        }
    }
}
