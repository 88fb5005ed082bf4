//! Unix seconds ↔ RFC 3339 (UTC) for printing, for `--expires` / `--not-before` (a time ahead)
//! and for `--since` (a time back).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `2026-11-28T04:23:10Z`.
#[must_use]
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Parses an RFC 3339 timestamp with any offset into unix seconds.
///
/// # Errors
/// A message naming the expected format.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2027-01-31T00:00:00Z ({e})"))
}

/// `--expires 90d` or `--expires 2027-01-31T00:00:00Z` → unix seconds.
///
/// # Errors
/// Neither a duration nor an RFC 3339 time.
pub fn parse_when(s: &str, now: i64) -> Result<i64, String> {
    match duration_secs(s)? {
        Some(d) => Ok(now.saturating_add(d)),
        None => parse_rfc3339(s),
    }
}

/// A new key's validity: an expiry must be after `now` and after the key's `not_before` (a key
/// born expired is a mistake, never what was meant). `names` are the expiry's and not-before's
/// names as the caller knows them (`--expires` and `--not-before`, or `expires` and
/// `not_before`).
///
/// # Errors
/// A sentence naming the expiry, the time it is, and what it must be after.
pub fn check_validity(
    not_before: Option<i64>,
    expires_at: Option<i64>,
    now: i64,
    names: (&str, &str),
) -> Result<(), String> {
    let (expires, not_before_name) = names;
    let Some(e) = expires_at else { return Ok(()) };
    if e <= now {
        return Err(format!(
            "{expires} is {}, which is not in the future (now is {}): the key would be expired \
             from the start; give a time ahead or a duration such as 90d",
            rfc3339(e),
            rfc3339(now)
        ));
    }
    if let Some(nb) = not_before.filter(|&nb| e <= nb) {
        return Err(format!(
            "{expires} is {}, which is not after {not_before_name} ({}): the key would never be \
             valid",
            rfc3339(e),
            rfc3339(nb)
        ));
    }
    Ok(())
}

/// `--since 1h` (the last hour) or `--since 2027-01-31T00:00:00Z` → unix seconds.
///
/// # Errors
/// Neither a duration nor an RFC 3339 time.
pub fn parse_since(s: &str, now: i64) -> Result<i64, String> {
    match duration_secs(s)? {
        Some(d) => Ok(now.saturating_sub(d).max(0)),
        None => parse_rfc3339(s),
    }
}

/// `Some(seconds)` when `s` is a duration (`90d`, `1h`), `None` when it should be a time.
fn duration_secs(s: &str) -> Result<Option<i64>, String> {
    if s.bytes().next().is_some_and(|b| b.is_ascii_digit()) && !s.contains('-') {
        let d = crate::config::parse_duration(s)?;
        return Ok(Some(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2027-01-31T00:00:00Z").unwrap(),
            1_801_353_600
        );
        assert_eq!(
            parse_rfc3339("2027-01-31T01:00:00+01:00").unwrap(),
            1_801_353_600
        );
        assert_eq!(parse_when("90d", 100).unwrap(), 100 + 90 * 86400);
        assert!(parse_when("soon", 0).is_err());
        assert_eq!(parse_since("1h", 10_000).unwrap(), 10_000 - 3600);
        assert_eq!(parse_since("1h", 10).unwrap(), 0);
        assert_eq!(parse_since("1970-01-01T00:01:00Z", 0).unwrap(), 60);
        assert!(parse_since("yesterday", 0).is_err());
    }

    #[test]
    fn an_expiry_must_be_ahead_and_after_not_before() {
        let names = ("--expires", "--not-before");
        assert!(check_validity(None, None, 100, names).is_ok());
        assert!(check_validity(None, Some(101), 100, names).is_ok());
        assert!(check_validity(Some(200), Some(201), 100, names).is_ok());
        let past = check_validity(None, Some(100), 100, names).unwrap_err();
        assert!(
            past.starts_with("--expires is 1970-01-01T00:01:40Z"),
            "{past}"
        );
        let before = check_validity(Some(300), Some(200), 100, names).unwrap_err();
        assert!(before.contains("not after --not-before"), "{before}");
    }
}
