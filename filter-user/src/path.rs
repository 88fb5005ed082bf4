//! The request target's path, judged as upstreams will read it: one pass over the bytes already
//! in the read buffer refuses every shape that a common upstream would decode or normalise into
//! another path (a traversal out of the route, a NUL), naming the [`Rule`] it broke.
//!
//! Upstreams differ in how they read a path: most percent-decode it once, some twice (or a
//! second hop decodes again); IIS reads `%u002e` and `\`; lax UTF-8 decoders read the overlong
//! `%c0%ae` as `.`; Tomcat, Jetty and Spring drop `;parameters` from each segment before
//! resolving `..` (`/..;/`); many merge `//`. A path is forwarded only when all of these read
//! the same segments the route was chosen on, so it is refused when, decoded once with the
//! crate's one decoder ([`crate::percent`]):
//!
//! - a `%` is not followed by two hex digits ([`Rule::PathBadEscape`], so `%u002e`);
//! - the result still holds an escape: `%XX` or `%u` ([`Rule::PathDoubleEncoding`]);
//! - the result is not UTF-8 ([`Rule::PathNotUtf8`]: overlong forms are not UTF-8);
//! - it holds a control byte, NUL included ([`Rule::PathControl`]);
//! - it holds a backslash ([`Rule::PathBackslash`]) or an encoded slash
//!   ([`Rule::PathEncodedSlash`]);
//! - a segment before the last one is empty, its `;parameters` left out
//!   ([`Rule::PathEmptySegment`]: `//`, and `/;x/`, which reads as `//`);
//! - a segment, its `;parameters` left out, is `.` or `..` ([`Rule::PathDotSegment`]).
//!
//! Routes are then matched on that decoded path ([`upstream_reading`]), by the proxy and by
//! `explain` alike.

use crate::codes::Rule;
use crate::percent::{self, Plus};

/// Checks a request target, split at its first `?` into `path` and `query`, before routing.
///
/// # Errors
/// The first rule the target breaks.
pub(crate) fn check(path: &str, query: Option<&str>) -> Result<(), Rule> {
    if !path.starts_with('/') || query.is_some_and(|q| q.contains('#')) {
        return Err(Rule::TargetForm);
    }
    // Most paths hold no byte any rule looks at: two branch-free scans let them through.
    let bytes = path.as_bytes();
    let marked = bytes.iter().fold(false, |m, &b| {
        m | matches!(b, b'%' | b'.' | b'\\' | b'#') | (b < 0x20) | (b == 0x7f)
    });
    let doubled = bytes[1..]
        .iter()
        .zip(bytes)
        .fold(false, |d, (&b, &before)| {
            d | (((b == b'/') | (b == b';')) & (before == b'/'))
        });
    if !marked && !doubled {
        return Ok(());
    }
    // Without a `%` nothing is decoded: the path is the UTF-8 the parser checked, and nothing
    // in it can decode again.
    let escapes = bytes.contains(&b'%');
    let mut utf8 = Utf8::default();
    let mut escape = Escape::default();
    let mut dots = Dots::default();
    // One walk over the path after its leading `/`: a written `/` ends a segment.
    let mut decoded = percent::bytes(&path[1..], Plus::Literal);
    loop {
        let escaped = decoded.at_escape();
        let Some(b) = decoded.next() else {
            // The last segment may be empty (a trailing `/`).
            if dots.is_dot_segment() {
                return Err(Rule::PathDotSegment);
            }
            return utf8.finish();
        };
        let b = b.map_err(|percent::BadEscape| Rule::PathBadEscape)?;
        match (b, escaped) {
            (b'/', false) => {
                if dots.is_empty() {
                    return Err(Rule::PathEmptySegment);
                }
                if dots.is_dot_segment() {
                    return Err(Rule::PathDotSegment);
                }
                (dots, escape) = (Dots::default(), Escape::default());
                continue;
            }
            (b'#', false) => return Err(Rule::TargetForm),
            (b'/', true) => return Err(Rule::PathEncodedSlash),
            (b'\\', _) => return Err(Rule::PathBackslash),
            (0..=0x1f | 0x7f, _) => return Err(Rule::PathControl),
            _ => {}
        }
        if escapes {
            escape.push(b)?;
            utf8.push(b)?;
        }
        dots.push(b);
    }
}

/// What a decoded segment is up to its first `;`: empty, `.` or `..`, or something else.
#[derive(Default)]
struct Dots {
    dots: u8,
    other: bool,
    params: bool,
}

impl Dots {
    fn push(&mut self, b: u8) {
        if self.params {
            return;
        }
        match b {
            b';' => self.params = true,
            b'.' => self.dots = self.dots.saturating_add(1),
            _ => self.other = true,
        }
    }

    fn is_empty(&self) -> bool {
        self.dots == 0 && !self.other
    }

    fn is_dot_segment(&self) -> bool {
        !self.other && matches!(self.dots, 1 | 2)
    }
}

/// Whether the decoded bytes still hold a percent-escape (`%` then two hex digits, or `%u`).
#[derive(Default)]
struct Escape {
    /// 0: nothing; 1: a `%`; 2: a `%` and one hex digit.
    seen: u8,
}

impl Escape {
    fn push(&mut self, b: u8) -> Result<(), Rule> {
        self.seen = match (self.seen, b) {
            (_, b'%') => 1,
            (1, b'u' | b'U') => return Err(Rule::PathDoubleEncoding),
            (1, h) if h.is_ascii_hexdigit() => 2,
            (2, h) if h.is_ascii_hexdigit() => return Err(Rule::PathDoubleEncoding),
            _ => 0,
        };
        Ok(())
    }
}

/// An incremental UTF-8 validator (RFC 3629's table: no overlong forms, no surrogates, nothing
/// above U+10FFFF).
#[derive(Default)]
struct Utf8 {
    /// Continuation bytes still expected.
    need: u8,
    /// The range the next continuation byte must be in.
    lo: u8,
    hi: u8,
}

impl Utf8 {
    fn push(&mut self, b: u8) -> Result<(), Rule> {
        if self.need > 0 {
            if !(self.lo..=self.hi).contains(&b) {
                return Err(Rule::PathNotUtf8);
            }
            self.need -= 1;
            (self.lo, self.hi) = (0x80, 0xbf);
            return Ok(());
        }
        (self.need, self.lo, self.hi) = match b {
            0..=0x7f => return Ok(()),
            0xc2..=0xdf => (1, 0x80, 0xbf),
            0xe0 => (2, 0xa0, 0xbf),
            0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
            0xed => (2, 0x80, 0x9f),
            0xf0 => (3, 0x90, 0xbf),
            0xf1..=0xf3 => (3, 0x80, 0xbf),
            0xf4 => (3, 0x80, 0x8f),
            _ => return Err(Rule::PathNotUtf8),
        };
        Ok(())
    }

    fn finish(&self) -> Result<(), Rule> {
        if self.need == 0 {
            Ok(())
        } else {
            Err(Rule::PathNotUtf8)
        }
    }
}

/// The bytes of `path` as an upstream reads them: decoded, each segment's `;parameters` left out.
pub fn upstream_reading(path: &str) -> impl Iterator<Item = u8> + '_ {
    let mut in_params = false;
    percent::bytes(path, Plus::Literal)
        .map(|b| b.unwrap_or(b'%'))
        .filter(move |&b| match b {
            b'/' => {
                in_params = false;
                true
            }
            b';' => {
                in_params = true;
                false
            }
            _ => !in_params,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`check`] on a whole target, split as the head splits it.
    fn split_check(target: &str) -> Result<(), Rule> {
        match target.split_once('?') {
            Some((path, query)) => check(path, Some(query)),
            None => check(target, None),
        }
    }

    #[test]
    fn every_shape_an_upstream_would_normalise_is_refused_with_its_rule() {
        use Rule::*;
        for (target, rule) in [
            ("v1/x", TargetForm),
            ("*", TargetForm),
            ("http://h/v1/x", TargetForm),
            ("/v1/x#/../admin", TargetForm),
            ("/v1/x?a=1#frag", TargetForm),
            ("/v1/..;/admin/x", PathDotSegment),
            ("/v1/.;x=1/admin", PathDotSegment),
            ("/v1/..%3b/admin", PathDotSegment),
            ("/v1/../admin", PathDotSegment),
            ("/v1/./x", PathDotSegment),
            ("/./", PathDotSegment),
            ("/%2e%2e/", PathDotSegment),
            ("/v1/%2E%2e/admin", PathDotSegment),
            ("/v1/.%2E/admin", PathDotSegment),
            ("/v1/..", PathDotSegment),
            ("/v1/%5c..%5cadmin/x", PathBackslash),
            ("/v1/%5C..%5Cadmin/x", PathBackslash),
            ("/v1/\\..\\admin/x", PathBackslash),
            ("/v1/..%2fadmin", PathEncodedSlash),
            ("/v1/a%2Fb", PathEncodedSlash),
            ("/v1/%252e%252e/admin/x", PathDoubleEncoding),
            ("/v1/%25%32%65%25%32%65/admin", PathDoubleEncoding),
            ("/v1/%25u002e", PathDoubleEncoding),
            ("/v1/%2525", PathDoubleEncoding),
            ("/v1/%c0%ae%c0%ae/admin/x", PathNotUtf8),
            ("/v1/%C0%AE", PathNotUtf8),
            ("/v1/%e0%80%ae", PathNotUtf8),
            ("/v1/%f0%80%80%ae", PathNotUtf8),
            ("/v1/%ed%a0%80", PathNotUtf8),
            ("/v1/%ff", PathNotUtf8),
            ("/v1/%c3", PathNotUtf8),
            ("/v1/%c3/x", PathNotUtf8),
            ("/v1/%u002e%u002e/admin", PathBadEscape),
            ("/v1/%zz", PathBadEscape),
            ("/v1/%", PathBadEscape),
            ("/v1/%2", PathBadEscape),
            ("/v1/x%00", PathControl),
            ("/v1/x%0d%0aX-Injected:%20y", PathControl),
            ("/v1/x%7f", PathControl),
            ("/v1/x%09", PathControl),
            ("//", PathEmptySegment),
            ("//admin/x", PathEmptySegment),
            ("/v1//x", PathEmptySegment),
            ("/;x/admin/y", PathEmptySegment),
            ("/v1/;jsessionid=1/x", PathEmptySegment),
            ("/v1/%3bx/y", PathEmptySegment),
        ] {
            assert_eq!(split_check(target), Err(rule), "{target}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for target in [
            "/",
            "/v1/",
            "/v1/chat/completions?stream=true&x=../..",
            "/v1/file.json",
            "/v1/file%2ejson",
            "/v1/.well-known/x",
            "/v1/...",
            "/v1/..a",
            "/v1/a..",
            "/v1/x;jsessionid=1/y",
            "/v1/;x",
            "/v1/caf%C3%A9",
            "/v1/café",
            "/v1/%F0%9F%A6%80",
            "/v1/100%25off",
            "/v1/a%20b",
            "/v1/%3f%23",
            "/v1/x?q=%00%2e%2e",
        ] {
            assert_eq!(split_check(target), Ok(()), "{target}");
        }
    }
}
