//! The one JSON shape of a key (`docs/openapi.yaml` `Key`): the admin API answers it and the
//! CLI prints it, so a command shows the same thing whether it went through the daemon or
//! straight to the store. It never holds a secret, except [`CreatedKeyJson::key`], shown once.

use serde::{Deserialize, Serialize};

use crate::store::rules::key_state;
use crate::store::timefmt::rfc3339;
use crate::store::{CreatedKey, KeyView};

/// A key as the admin API and `--json` show it; never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyJson {
    /// Public id (`key_…`).
    pub id: String,
    /// Tenant of the key's user.
    pub tenant: String,
    /// The key's user.
    pub user: String,
    /// The user's status (`active`, `suspended`, `deleted`).
    pub user_status: String,
    /// The stored status (`pending`, `active`, `revoked`).
    pub status: String,
    /// What the key amounts to now (see [`key_state`]).
    pub state: String,
    /// Environment (`live`, `test`, …).
    pub env: String,
    /// Scopes the key grants.
    pub scopes: Vec<String>,
    /// Not valid before (RFC 3339).
    pub not_before: Option<String>,
    /// Expiry (RFC 3339).
    pub expires_at: Option<String>,
    /// Networks the key may be used from; empty = any.
    pub allowed_cidrs: Vec<String>,
    /// Requests per second; `None` = unlimited.
    pub rate: Option<u32>,
    /// Token-bucket burst, with `rate`.
    pub burst: Option<u32>,
    /// A usage-limited key's credits left (through a running daemon: the store's plus what
    /// the daemon holds unspent); absent: not usage-limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_remaining: Option<u64>,
    /// How the credits refill (`1000/day`: reset to 1000 each day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<String>,
    /// When they refill next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_at: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// For a rotated key: when it stops working.
    pub grace_until: Option<String>,
    /// For a rotated key: the id of its successor.
    pub rotated_to: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
}

impl KeyJson {
    /// The shape of `v` at `now` (the `state` depends on the time).
    #[must_use]
    pub fn from_view(v: &KeyView, now: i64) -> Self {
        let k = &v.key;
        Self {
            id: k.id.clone(),
            tenant: v.user.tenant.clone(),
            user: v.user.name.clone(),
            user_status: v.user.status.as_str().to_owned(),
            status: k.status.as_str().to_owned(),
            state: key_state(v, now).to_owned(),
            env: k.env.clone(),
            scopes: k.scopes.clone(),
            not_before: k.not_before.map(rfc3339),
            expires_at: k.expires_at.map(rfc3339),
            allowed_cidrs: k.allow_cidrs.iter().map(ToString::to_string).collect(),
            rate: k.rate.map(|r| r.per_sec),
            burst: k.rate.map(|r| r.burst),
            credits_remaining: k.credits.map(|c| c.remaining),
            refill: k.credits.and_then(|c| c.refill).map(|r| r.to_string()),
            refill_at: k.credits.and_then(|c| c.refill_due).map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
            grace_until: k.grace_until.map(rfc3339),
            rotated_to: k.rotated_to.clone(),
            created_at: rfc3339(k.created_at),
        }
    }
}

/// A newly created key: its record plus the full key, shown this once. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKeyJson {
    /// The key's record.
    #[serde(flatten)]
    pub record: KeyJson,
    /// The full key (`ef_…`).
    pub key: String,
    /// Store revision of the change (admin API only; the CLI leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

impl CreatedKeyJson {
    /// The shape of a created key at `now`, without a revision.
    #[must_use]
    pub fn from_created(c: &CreatedKey, now: i64) -> Self {
        Self {
            record: KeyJson::from_view(&c.view, now),
            key: c.secret.expose().to_owned(),
            revision: None,
        }
    }
}

impl std::fmt::Debug for CreatedKeyJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKeyJson")
            .field("record", &self.record)
            .field("key", &"<redacted>")
            .field("revision", &self.revision)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_never_shows_in_debug_and_round_trips_through_json() {
        let record = KeyJson {
            id: "key_AAAAAAAAAAAA".into(),
            tenant: "t".into(),
            user: "u".into(),
            user_status: "active".into(),
            status: "active".into(),
            state: "active".into(),
            env: "live".into(),
            scopes: vec!["ai:invoke".into()],
            not_before: None,
            expires_at: None,
            allowed_cidrs: vec!["198.18.0.0/15".into()],
            rate: Some(5),
            burst: Some(9),
            credits_remaining: None,
            refill: None,
            refill_at: None,
            revoked_at: None,
            grace_until: None,
            rotated_to: None,
            created_at: "2026-12-02T00:00:00Z".into(),
        };
        let c = CreatedKeyJson {
            record,
            key: "ef_live_secretsecret".into(),
            revision: Some(7),
        };
        assert!(!format!("{c:?}").contains("secretsecret"));
        let v = serde_json::to_value(&c).expect("serialise");
        assert_eq!(v["key"], "ef_live_secretsecret");
        assert_eq!(v["rate"], 5);
        assert_eq!(v["allowed_cidrs"][0], "198.18.0.0/15");
        let back: CreatedKeyJson = serde_json::from_value(v).expect("parse");
        assert_eq!(back, c);
    }
}
