//! The one JSON shape of a denylist ban (`docs/openapi.yaml` `Ban`): `GET /v1/denylist` answers
//! a list of them, `POST /v1/denylist` the ban made, and `edgefilter deny list --json` prints
//! them.

use serde::{Deserialize, Serialize};

use crate::store::Ban;
use crate::store::bans::source_text;
use crate::store::timefmt::rfc3339;

/// A ban as the admin API and `--json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanJson {
    /// An IPv4 address, or an IPv6 prefix (`fd00:ef::/64`).
    pub source: String,
    /// `autoblock` or `manual`.
    pub reason: String,
    /// When it ends (RFC 3339, UTC).
    pub expires_at: String,
    /// Seconds left (rounded up).
    pub expires_in_s: i64,
    /// When it was made (RFC 3339, UTC).
    pub created_at: String,
    /// The host that banned it.
    pub host: String,
}

impl BanJson {
    /// The JSON form of `ban` at `now_ms` (unix milliseconds).
    #[must_use]
    pub fn from_ban(ban: &Ban, now_ms: i64) -> Self {
        let left_ms = ban.expires_at_ms.saturating_sub(now_ms).max(0);
        Self {
            source: source_text(&ban.source),
            reason: ban.reason.as_str().to_owned(),
            expires_at: rfc3339(ban.expires_at_ms.div_euclid(1000)),
            expires_in_s: left_ms.saturating_add(999) / 1000,
            created_at: rfc3339(ban.created_at_ms.div_euclid(1000)),
            host: ban.host.clone(),
        }
    }
}
