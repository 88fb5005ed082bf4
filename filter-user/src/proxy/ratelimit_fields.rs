//! The `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers, as
//! structured-field lists): one item per policy that applies to the caller, e.g.
//! `RateLimit-Policy: "key-rate";q=100;w=1` and `RateLimit: "key-rate";r=42;t=1`. Written on
//! allowed answers and on 429s of limited keys (a 429 adds `Retry-After`).

use crate::gate::RateInfo;

/// The key's own request rate, the one policy kept today.
const KEY_RATE: &[u8] = b"\"key-rate\"";

/// Writes both fields for the key's rate limit `rate` (`\r\n`-terminated lines).
pub(crate) fn write(out: &mut Vec<u8>, rate: &RateInfo) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"RateLimit-Policy: ");
    out.extend_from_slice(KEY_RATE);
    out.extend_from_slice(b";q=");
    out.extend_from_slice(num.format(rate.limit).as_bytes());
    out.extend_from_slice(b";w=1\r\nRateLimit: ");
    out.extend_from_slice(KEY_RATE);
    out.extend_from_slice(b";r=");
    out.extend_from_slice(num.format(rate.remaining).as_bytes());
    out.extend_from_slice(b";t=");
    out.extend_from_slice(num.format(rate.reset_secs).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Adds both fields to the complete head in `head` (before its closing empty line).
pub(crate) fn add_to_head(head: &mut Vec<u8>, rate: &RateInfo) {
    if !head.ends_with(b"\r\n\r\n") {
        return;
    }
    // In place: no buffer of its own per request.
    head.truncate(head.len() - 2);
    write(head, rate);
    head.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_structured_lists_with_one_item_per_policy() {
        let rate = RateInfo {
            limit: 100,
            remaining: 42,
            reset_secs: 1,
        };
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
        add_to_head(&mut head, &rate);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nRateLimit-Policy: \"key-rate\";q=100;w=1\r\n\
             RateLimit: \"key-rate\";r=42;t=1\r\n\r\n"
        );
    }
}
