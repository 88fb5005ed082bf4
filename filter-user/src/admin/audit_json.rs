//! The one JSON shape of an audit entry (`docs/openapi.yaml` `AuditEntry`): `GET /v1/audit`
//! answers it and `edgefilter audit --json` prints it.

use serde::{Deserialize, Serialize};

use crate::store::AuditEntry;
use crate::store::timefmt::rfc3339;

/// An audit entry as the admin API and `--json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditJson {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who: `admin@ADDRESS` (the admin token's holder) or `cli:USER`.
    pub actor: String,
    /// What, e.g. `key.revoke`.
    pub action: String,
    /// To what: a key id, a user, a CIDR or source, `tenant/user`, or `(a key)`.
    pub object: String,
    /// `ok`, or the error that refused it.
    pub result: String,
    /// The host that made the change.
    pub host: String,
}

impl AuditJson {
    /// The JSON form of a stored entry.
    #[must_use]
    pub fn from_entry(e: &AuditEntry) -> Self {
        Self {
            at: rfc3339(e.at),
            actor: e.actor.clone(),
            action: e.action.clone(),
            object: e.object.clone(),
            result: e.result.clone(),
            host: e.host.clone(),
        }
    }
}
