//! Unix seconds ↔ RFC 3339 (UTC) for printing and for `--expires` / `--not-before`.

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
    if s.bytes().next().is_some_and(|b| b.is_ascii_digit()) && !s.contains('-') {
        let d = crate::config::parse_duration(s)?;
        return Ok(now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    }
    parse_rfc3339(s)
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
    }
}
