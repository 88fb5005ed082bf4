//! Where the key is: looks in the route's accepted places in order, borrowing from the request.
//!
//! `Authorization: Bearer <key>` is read as RFC 7235 writes it, the scheme case-insensitive,
//! and, leniently, with one or more spaces or tabs before the key (what follows them is the key,
//! checked as sent). Every `Authorization` header is looked at: a `Bearer` one is found behind
//! a `Basic` one; the same key twice is that key; two different `Bearer` values are refused
//! ([`FormatError::TwoKeys`], `MALFORMED_KEY`) rather than one guessed at.
//!
//! A `?api_key=` value is form-encoded: `%XX` is a byte and `+` a space. A value holding
//! neither is borrowed as it is (the common case); otherwise it is decoded into a small buffer
//! on the stack ([`QueryKey`]), never the heap. Only the value is decoded, never the name: the
//! parameter the proxy strips before forwarding is exactly the one read here.

use filter_common::apikey::{self, FormatError};

use super::rules::{Place, RouteRules};
use crate::percent::{self, Plus};

/// Bytes a decoded `?api_key=` value may have: the longest key plus room for what a careless
/// copy adds around it. A longer value is no key: it is refused as the wrong length.
pub const QUERY_KEY_CAP: usize = 64;
const _: () = assert!(QUERY_KEY_CAP > apikey::MAX_LEN + 3);

/// What the request holds, as far as the key is concerned. `Debug` never shows the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Extracted<'a> {
    /// No key anywhere.
    Missing,
    /// A key only in a place this route does not accept.
    WrongPlace(Place),
    /// A candidate key (maybe malformed) from an accepted place.
    Key {
        /// The raw value, exactly as sent.
        raw: &'a str,
        /// Where it was.
        place: Place,
    },
    /// A candidate key from the accepted `?api_key=`, which had to be percent-decoded.
    Decoded(QueryKey),
    /// An accepted place holds no single key: e.g. two `Authorization: Bearer` headers with
    /// different values ([`FormatError::TwoKeys`]).
    Refused(FormatError),
}

impl std::fmt::Debug for Extracted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("Missing"),
            Self::WrongPlace(p) => f.debug_tuple("WrongPlace").field(p).finish(),
            Self::Key { raw, place } => f
                .debug_struct("Key")
                .field("len", &raw.len())
                .field("place", place)
                .finish_non_exhaustive(),
            Self::Decoded(q) => q.fmt(f),
            Self::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
        }
    }
}

/// A percent-decoded `?api_key=` value, held inline. `Debug` never shows it.
#[derive(Clone, Copy)]
pub struct QueryKey {
    buf: [u8; QUERY_KEY_CAP],
    /// Bytes of `buf` in use, or, when the value did not fit, `None`.
    len: Option<u8>,
    /// Decoded length in bytes (also when it did not fit).
    decoded: usize,
}

impl QueryKey {
    /// Decodes a form-encoded value: `+` is a space, `%XX` a byte, and a `%` not followed by
    /// two hex digits stays a `%`. Bytes that are not UTF-8 become U+FFFD (and end the value:
    /// it is malformed from there on anyway).
    #[must_use]
    pub fn decode(raw: &str) -> Self {
        let mut q = Self {
            buf: [0; QUERY_KEY_CAP],
            len: None,
            decoded: 0,
        };
        for byte in percent::bytes(raw, Plus::Space).map(|b| b.unwrap_or(b'%')) {
            if let Some(slot) = q.buf.get_mut(q.decoded) {
                *slot = byte;
            }
            q.decoded += 1;
        }
        if q.decoded <= QUERY_KEY_CAP {
            q.len = u8::try_from(q.decoded).ok();
            q.repair_utf8();
        }
        q
    }

    /// Ends the value with U+FFFD at its first byte that is not UTF-8, if any.
    fn repair_utf8(&mut self) {
        let Some(len) = self.len else { return };
        let Err(e) = std::str::from_utf8(&self.buf[..usize::from(len)]) else {
            return;
        };
        let at = e.valid_up_to();
        let end = at + '\u{fffd}'.len_utf8();
        if end <= QUERY_KEY_CAP {
            '\u{fffd}'.encode_utf8(&mut self.buf[at..end]);
            self.len = u8::try_from(end).ok();
        } else {
            self.len = u8::try_from(at).ok();
        }
    }

    /// The decoded value, or, when it is longer than any key can be, the format error that says
    /// so (the expected length is the one for the key's environment when that can be read).
    ///
    /// # Errors
    /// [`FormatError::WrongLength`] for a value longer than [`QUERY_KEY_CAP`] bytes.
    pub fn text(&self) -> Result<&str, FormatError> {
        match self.len {
            Some(len) => Ok(std::str::from_utf8(&self.buf[..usize::from(len)]).unwrap_or("")),
            None => Err(FormatError::WrongLength {
                got: self.decoded,
                want: self.expected_len(),
            }),
        }
    }

    /// The length of a key with the environment `ef_<env>_` at the start of the buffer, else
    /// the longest key.
    fn expected_len(&self) -> usize {
        let rest = self
            .buf
            .strip_prefix(apikey::PREFIX.as_bytes())
            .unwrap_or_default();
        let env = rest
            .iter()
            .take(apikey::ENV_MAX + 1)
            .position(|&c| c == b'_')
            .filter(|&n| n > 0 && rest[..n].iter().all(u8::is_ascii_lowercase));
        env.map_or(apikey::MAX_LEN, |n| {
            apikey::PREFIX.len() + n + 1 + apikey::BODY_LEN
        })
    }
}

impl PartialEq for QueryKey {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl Eq for QueryKey {}

impl std::fmt::Debug for QueryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("len", &self.decoded)
            .field("place", &Place::Query)
            .finish_non_exhaustive()
    }
}

/// The raw value at `place`, if any (an error when the place holds two different ones).
fn find<'a>(
    place: Place,
    headers: &[httparse::Header<'a>],
    query: Option<&'a str>,
) -> Option<Result<&'a str, FormatError>> {
    match place {
        Place::Bearer => bearer(headers),
        Place::AuthorizationNoScheme => authorizations(headers)
            .find(|v| after_bearer(v).is_none() && v.starts_with(b"ef_"))
            .map(|v| Ok(text(v))),
        Place::XApiKey => header(headers, "x-api-key").map(Ok),
        Place::Query => query?
            .split('&')
            .find_map(|kv| kv.strip_prefix("api_key="))
            .map(Ok),
    }
}

/// The values of every `Authorization` header, in order.
fn authorizations<'h, 'a>(
    headers: &'h [httparse::Header<'a>],
) -> impl Iterator<Item = &'a [u8]> + 'h {
    headers
        .iter()
        .filter(|h| is_authorization(h.name))
        .map(|h| h.value)
}

/// The key of the `Authorization: Bearer` headers: the one value they hold, or
/// [`FormatError::TwoKeys`] when they hold different ones. Every header is looked at (a plain
/// loop: the iterator chain measured slower on the hot path).
fn bearer<'a>(headers: &[httparse::Header<'a>]) -> Option<Result<&'a str, FormatError>> {
    let mut found: Option<&'a [u8]> = None;
    for h in headers {
        if !is_authorization(h.name) {
            continue;
        }
        let Some(token) = after_bearer(h.value) else {
            continue;
        };
        match found {
            None => found = Some(token),
            Some(first) if first == token => {}
            Some(_) => return Some(Err(FormatError::TwoKeys)),
        }
    }
    found.map(|t| Ok(text(t)))
}

fn is_authorization(name: &str) -> bool {
    name.len() == 13 && name.eq_ignore_ascii_case("authorization")
}

/// What follows `Bearer` and one or more spaces or tabs (the scheme case-insensitive), or
/// `None` for another scheme.
fn after_bearer(v: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let rest = v
        .get(..SCHEME.len())
        .filter(|s| s.eq_ignore_ascii_case(SCHEME))
        .map(|_| &v[SCHEME.len()..])?;
    let mut gap = 0;
    while gap < rest.len() && matches!(rest[gap], b' ' | b'\t') {
        gap += 1;
    }
    (gap > 0).then(|| &rest[gap..])
}

/// A header value as text; one that is not UTF-8 reads as U+FFFD (a malformed key).
fn text(v: &[u8]) -> &str {
    std::str::from_utf8(v).unwrap_or("\u{fffd}")
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| text(h.value))
}

/// Finds the key per `route`: the first accepted place holding one wins (a query value with
/// `%` or `+` is decoded: [`Extracted::Decoded`]); else a key in any other place is
/// [`Extracted::WrongPlace`]; else [`Extracted::Missing`].
#[must_use]
pub fn extract<'a>(
    route: &RouteRules,
    headers: &[httparse::Header<'a>],
    query: Option<&'a str>,
) -> Extracted<'a> {
    for &place in &*route.accepted {
        if let Some(found) = find(place, headers, query) {
            let raw = match found {
                Ok(raw) => raw,
                Err(e) => return Extracted::Refused(e),
            };
            if place == Place::Query && raw.bytes().any(|b| b == b'%' || b == b'+') {
                return Extracted::Decoded(QueryKey::decode(raw));
            }
            return Extracted::Key { raw, place };
        }
    }
    for place in [
        Place::Bearer,
        Place::XApiKey,
        Place::Query,
        Place::AuthorizationNoScheme,
    ] {
        if !route.accepted.contains(&place) && find(place, headers, query).is_some() {
            return Extracted::WrongPlace(place);
        }
    }
    Extracted::Missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(accepted: &[Place]) -> RouteRules {
        RouteRules {
            prefix: "/".into(),
            accepted: accepted.into(),
            scopes: Box::new([]),
            cost: 1,
        }
    }

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn finds_in_order_and_names_wrong_places() {
        let def = route(&[Place::Bearer, Place::XApiKey]);
        let hs = [h("X-Api-Key", "B"), h("authorization", "bearer A")];
        assert_eq!(
            extract(&def, &hs, None),
            Extracted::Key {
                raw: "A",
                place: Place::Bearer
            }
        );
        let rev = route(&[Place::XApiKey, Place::Bearer]);
        assert_eq!(
            extract(&rev, &hs, None),
            Extracted::Key {
                raw: "B",
                place: Place::XApiKey
            }
        );
        assert_eq!(
            extract(&def, &[], Some("a=1&api_key=K")),
            Extracted::WrongPlace(Place::Query)
        );
        let q = route(&[Place::Bearer, Place::Query]);
        assert_eq!(
            extract(&q, &[], Some("a=1&api_key=K")),
            Extracted::Key {
                raw: "K",
                place: Place::Query
            }
        );
        assert_eq!(
            extract(&q, &[h("X-API-Key", "K")], None),
            Extracted::WrongPlace(Place::XApiKey)
        );
        assert_eq!(
            extract(&def, &[h("Authorization", "ef_live_x")], None),
            Extracted::WrongPlace(Place::AuthorizationNoScheme)
        );
        assert_eq!(
            extract(&def, &[h("Authorization", "Basic Zm9v")], None),
            Extracted::Missing
        );
        assert_eq!(extract(&def, &[], Some("a=1")), Extracted::Missing);
    }

    #[test]
    fn bearer_takes_one_or_more_spaces_or_tabs() {
        let def = route(&[Place::Bearer, Place::XApiKey]);
        for v in [
            "Bearer K",
            "bearer K",
            "BEARER\tK",
            "Bearer  K",
            "Bearer \t K",
        ] {
            assert_eq!(
                extract(&def, &[h("Authorization", v)], None),
                Extracted::Key {
                    raw: "K",
                    place: Place::Bearer
                },
                "{v:?}"
            );
        }
        // No gap: another scheme (and a key with no scheme is in the wrong place).
        for v in ["BearerK", "Bearer", "Bearers K"] {
            assert_eq!(
                extract(&def, &[h("Authorization", v)], None),
                Extracted::Missing,
                "{v:?}"
            );
        }
        // What follows the gap is the key as sent: its own whitespace stays malformed.
        assert_eq!(
            extract(&def, &[h("Authorization", "Bearer K ")], None),
            Extracted::Key {
                raw: "K ",
                place: Place::Bearer
            }
        );
    }

    #[test]
    fn every_authorization_header_is_looked_at() {
        let def = route(&[Place::Bearer]);
        let hs = [
            h("Authorization", "Basic Zm9vOmJhcg=="),
            h("Authorization", "Bearer K"),
        ];
        assert_eq!(
            extract(&def, &hs, None),
            Extracted::Key {
                raw: "K",
                place: Place::Bearer
            }
        );
        let same = [
            h("Authorization", "Bearer K"),
            h("authorization", "bearer\tK"),
        ];
        assert_eq!(
            extract(&def, &same, None),
            Extracted::Key {
                raw: "K",
                place: Place::Bearer
            }
        );
        let two = [
            h("Authorization", "Bearer K"),
            h("Authorization", "Basic x"),
            h("Authorization", "Bearer L"),
        ];
        assert_eq!(
            extract(&def, &two, None),
            Extracted::Refused(FormatError::TwoKeys)
        );
        // A key with no scheme behind a `Basic` one is still found (in the wrong place here).
        let bare = [
            h("Authorization", "Basic x"),
            h("Authorization", "ef_live_x"),
        ];
        assert_eq!(
            extract(&def, &bare, None),
            Extracted::WrongPlace(Place::AuthorizationNoScheme)
        );
    }

    /// What `extract` finds in `?query` on a route that accepts only the query.
    fn from_query(query: &str) -> Extracted<'_> {
        extract(&route(&[Place::Query]), &[], Some(query))
    }

    fn decoded(query: &str) -> String {
        match from_query(query) {
            Extracted::Decoded(q) => q.text().unwrap().to_owned(),
            other => panic!("expected a decoded value, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_query_value_is_borrowed() {
        let q = "a=%20&api_key=ef_live_abc&b=+";
        match from_query(q) {
            Extracted::Key { raw, place } => {
                assert_eq!((raw, place), ("ef_live_abc", Place::Query));
                assert!(std::ptr::eq(raw.as_ptr(), q[14..].as_ptr()), "copied");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn query_values_are_form_decoded() {
        assert_eq!(decoded("api_key=ef_live_abc%20"), "ef_live_abc ");
        assert_eq!(decoded("api_key=ef_live_abc+"), "ef_live_abc ");
        assert_eq!(decoded("api_key=ef_live_abc%0A"), "ef_live_abc\n");
        assert_eq!(decoded("api_key=%65f%5flive%5Fabc"), "ef_live_abc");
        assert_eq!(decoded("x=1&api_key=%22k%22&y=2"), "\"k\"");
        assert_eq!(decoded("api_key=a%2Bb"), "a+b");
        assert_eq!(decoded("api_key=%C3%A9"), "é");
        // Not an escape: the `%` stays, and the key is malformed at that character.
        assert_eq!(decoded("api_key=ab%2"), "ab%2");
        assert_eq!(decoded("api_key=ab%zz+"), "ab%zz ");
        assert_eq!(decoded("api_key=%"), "%");
        // Bytes that are not UTF-8 end the value with U+FFFD.
        assert_eq!(decoded("api_key=ab%FFcd+"), "ab\u{fffd}");
        assert_eq!(decoded("api_key=ab%C3"), "ab\u{fffd}");
    }

    #[test]
    fn a_query_value_too_long_for_any_key_is_the_wrong_length() {
        let long = format!("api_key=ef_test_{}%20", "a".repeat(60));
        let Extracted::Decoded(q) = from_query(&long) else {
            panic!("not decoded");
        };
        assert_eq!(
            q.text(),
            Err(FormatError::WrongLength {
                got: 8 + 60 + 1,
                want: 8 + apikey::BODY_LEN
            })
        );
        let Extracted::Decoded(q) = from_query(&format!("api_key={}+", "%41".repeat(70))) else {
            panic!("not decoded");
        };
        assert_eq!(
            q.text(),
            Err(FormatError::WrongLength {
                got: 71,
                want: apikey::MAX_LEN
            })
        );
        // Exactly the buffer still fits.
        let fits = format!("api_key={}+", "b".repeat(QUERY_KEY_CAP - 1));
        assert_eq!(decoded(&fits).len(), QUERY_KEY_CAP);
    }

    #[test]
    fn debug_never_shows_a_decoded_key() {
        let secret = "ef_live_SECRETsecretSECRETsecret";
        let q = format!("api_key={secret}%20");
        let text = format!("{:?}", from_query(&q));
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("len") && text.contains("Query"), "{text}");
    }

    #[test]
    fn only_the_value_is_decoded_never_the_name() {
        let q = route(&[Place::Query]);
        assert_eq!(extract(&q, &[], Some("api%5Fkey=K")), Extracted::Missing);
        assert_eq!(
            extract(&route(&[Place::Bearer]), &[], Some("api_key=K%20")),
            Extracted::WrongPlace(Place::Query)
        );
    }
}
