//! Where the key is: looks in the route's accepted places in order, borrowing from the request.

use super::rules::{Place, RouteRules};

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
        }
    }
}

/// The raw value at `place`, if any.
fn find<'a>(
    place: Place,
    headers: &[httparse::Header<'a>],
    query: Option<&'a str>,
) -> Option<&'a str> {
    match place {
        Place::Bearer | Place::AuthorizationNoScheme => {
            let v = header(headers, "authorization")?;
            let bearer = v.len() >= 7 && v.as_bytes()[..7].eq_ignore_ascii_case(b"bearer ");
            match (place, bearer) {
                (Place::Bearer, true) => Some(&v[7..]),
                (Place::AuthorizationNoScheme, false) if v.starts_with("ef_") => Some(v),
                _ => None,
            }
        }
        Place::XApiKey => header(headers, "x-api-key"),
        Place::Query => query?.split('&').find_map(|kv| kv.strip_prefix("api_key=")),
    }
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| std::str::from_utf8(h.value).unwrap_or("\u{fffd}"))
}

/// Finds the key per `route`: the first accepted place holding one wins; else a key in any
/// other place is [`Extracted::WrongPlace`]; else [`Extracted::Missing`].
#[must_use]
pub fn extract<'a>(
    route: &RouteRules,
    headers: &[httparse::Header<'a>],
    query: Option<&'a str>,
) -> Extracted<'a> {
    for &place in &*route.accepted {
        if let Some(raw) = find(place, headers, query) {
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
}
