//! Percent-decoding (`%XX` is a byte), the one decoder of the crate: admin path segments and
//! query values, `sslrootcert` in `store.url`, and `?api_key=` on the hot path.
//!
//! The core, [`bytes`], is an iterator over the decoded bytes that never allocates; what to do
//! with a malformed escape is the caller's choice (refuse it, or read the `%` as itself).
//! [`decode_utf8`] is the strict, allocating convenience for everything off the hot path.
//! Depends on nothing else in the crate.

/// How a `+` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plus {
    /// As itself (paths, URLs).
    Literal,
    /// As a space (form encoding, e.g. a query value).
    Space,
}

/// A `%` not followed by two hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEscape;

/// The decoded bytes of `text`, without allocating.
///
/// A `%` not followed by two hex digits yields `Err(BadEscape)` in its place, and decoding goes
/// on with the byte after that `%`: `.map(|b| b.unwrap_or(b'%'))` reads it as a literal `%`,
/// collecting into a `Result` refuses the text.
#[must_use]
pub fn bytes(text: &str, plus: Plus) -> Bytes<'_> {
    Bytes {
        rest: text.as_bytes(),
        plus,
    }
}

/// Iterator returned by [`bytes`].
#[derive(Debug, Clone)]
pub struct Bytes<'a> {
    rest: &'a [u8],
    plus: Plus,
}

impl Bytes<'_> {
    /// Whether the next item is decoded from an escape (a `%`, well-formed or not), rather
    /// than being a byte as written: lets a caller tell a `/` from a `%2f`.
    #[inline]
    #[must_use]
    pub fn at_escape(&self) -> bool {
        self.rest.first() == Some(&b'%')
    }
}

impl Iterator for Bytes<'_> {
    type Item = Result<u8, BadEscape>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(match first {
            b'%' => match rest {
                [hi, lo, tail @ ..] => match (hex(*hi), hex(*lo)) {
                    (Some(hi), Some(lo)) => {
                        self.rest = tail;
                        Ok((hi << 4) | lo)
                    }
                    _ => Err(BadEscape),
                },
                _ => Err(BadEscape),
            },
            b'+' if self.plus == Plus::Space => Ok(b' '),
            other => Ok(other),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.len();
        (n.div_ceil(3), Some(n))
    }
}

/// The value of a hex digit, if `c` is one.
#[inline]
fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes `text` (`+` as itself) into a string: `None` when an escape is malformed or the
/// bytes are not UTF-8.
#[must_use]
pub fn decode_utf8(text: &str) -> Option<String> {
    let out = bytes(text, Plus::Literal)
        .collect::<Result<Vec<u8>, BadEscape>>()
        .ok()?;
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenient(text: &str, plus: Plus) -> Vec<u8> {
        bytes(text, plus).map(|b| b.unwrap_or(b'%')).collect()
    }

    #[test]
    fn escapes_decode_in_either_case() {
        assert_eq!(decode_utf8("a%20b%2fc%2Fd").as_deref(), Some("a b/c/d"));
        assert_eq!(decode_utf8("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode_utf8("").as_deref(), Some(""));
        assert_eq!(decode_utf8("a+b").as_deref(), Some("a+b"));
        assert_eq!(lenient("a+b%2B", Plus::Space), b"a b+");
    }

    #[test]
    fn escaped_bytes_are_told_from_written_ones() {
        let mut d = bytes("a%2fb/%zz", Plus::Literal);
        let mut seen = Vec::new();
        while d.clone().next().is_some() {
            let escaped = d.at_escape();
            seen.push((d.next().unwrap(), escaped));
        }
        assert_eq!(
            seen,
            [
                (Ok(b'a'), false),
                (Ok(b'/'), true),
                (Ok(b'b'), false),
                (Ok(b'/'), false),
                (Err(BadEscape), true),
                (Ok(b'z'), false),
                (Ok(b'z'), false),
            ]
        );
    }

    #[test]
    fn malformed_escapes_are_refused_or_kept_as_a_percent() {
        for bad in ["%", "%2", "%zz", "a%g1", "%+1", "%-1", "%C3"] {
            assert_eq!(decode_utf8(bad), None, "{bad}");
        }
        assert_eq!(lenient("ab%2", Plus::Space), b"ab%2");
        assert_eq!(lenient("ab%zz+", Plus::Space), b"ab%zz ");
        assert_eq!(lenient("%", Plus::Literal), b"%");
        assert_eq!(lenient("%%41", Plus::Literal), b"%A");
    }
}
