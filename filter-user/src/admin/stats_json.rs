//! The JSON of `GET /v1/stats` (SPEC §7): what `edgefilter stats` shows. The control plane
//! writes it, the CLI reads it; `docs/openapi.yaml` describes it (`Stats`).
//!
//! Counts are cumulative since the daemon started; a reader takes two snapshots and divides
//! their difference by the time between them for rates. The top denied key ids and sources
//! cover the last [`StatsJson::denials`]`.window_seconds`. Never holds a key: a denied key
//! appears by its public id only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsJson {
    /// When the snapshot was taken (RFC 3339).
    pub at: String,
    /// Requests answered, by route and code (`OK`: forwarded), cumulative; non-zero only.
    pub requests: Vec<RequestCount>,
    /// Upstream failures by route and class, cumulative; non-zero only.
    pub upstream_errors: Vec<UpstreamErrorCount>,
    /// Packets the XDP program judged, by action and reason (summed over CPUs), cumulative;
    /// `None` when XDP is off or its counters cannot be read.
    pub xdp: Option<Vec<XdpCount>>,
    /// Revocation propagation (store commit to the last shard applied).
    pub propagation: PropagationJson,
    /// The key store.
    pub store: StoreJson,
    /// Sources on the XDP denylist (auto-block's bans and manual ones), one object per entry
    /// as `GET /v1/denylist` shows it. Empty until auto-block fills it.
    pub bans: Vec<Value>,
    /// The key ids and sources refused most in the last minute.
    pub denials: DenialsJson,
}

/// One `(route, code)` request count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCount {
    /// The route's prefix, `(none)` before a route matched.
    pub route: String,
    /// `OK` or the answer code (SPEC §5).
    pub code: String,
    /// Requests.
    pub count: u64,
}

/// One `(route, class)` upstream error count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamErrorCount {
    /// The route's prefix.
    pub route: String,
    /// `connect`, `tls`, `reset`, `timeout` or `bad_response`.
    pub class: String,
    /// Failures.
    pub count: u64,
}

/// One `(action, reason)` XDP packet count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpCount {
    /// `pass`, `drop` or `would_drop`.
    pub action: String,
    /// `allowlisted`, `not_allowlisted`, `denylisted`, `unprotected`, `not_ip`.
    pub reason: String,
    /// Packets.
    pub packets: u64,
}

/// The propagation histogram's p99.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PropagationJson {
    /// Changes measured.
    pub samples: u64,
    /// The upper bound of the histogram bucket holding the 99th percentile, in seconds
    /// ("at most this long"); `None` without samples.
    pub p99_seconds: Option<f64>,
    /// The 99th percentile lies beyond the last bucket: it is more than `p99_seconds`.
    pub p99_beyond_buckets: bool,
}

/// The key store's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreJson {
    /// `sqlite` or `postgres`.
    pub kind: String,
    /// The store revision every shard has been sent.
    pub revision: u64,
    /// Fleet mode: time since the last contact with the database, in seconds; `None` when not
    /// in fleet mode (or not known yet).
    pub lag_seconds: Option<f64>,
}

/// The refusals of the last `window_seconds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialsJson {
    /// The window, in seconds.
    pub window_seconds: u64,
    /// Refusals counted in it.
    pub counted: u64,
    /// False when a shard refused more in the window than it remembers: the ranking is then
    /// over each shard's newest refusals only.
    pub complete: bool,
    /// Key ids refused most, most first (at most 10).
    pub top_keys: Vec<DeniedKey>,
    /// Sources refused most, most first (at most 10).
    pub top_sources: Vec<DeniedSource>,
}

/// A key id and how often it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedKey {
    /// The public key id (`key_…`).
    pub key_id: String,
    /// Refusals in the window.
    pub count: u64,
    /// Those refusals by code.
    pub codes: BTreeMap<String, u64>,
}

/// A source address and how often it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedSource {
    /// The client address.
    pub source: String,
    /// Refusals in the window.
    pub count: u64,
    /// Those refusals by code.
    pub codes: BTreeMap<String, u64>,
}

impl StatsJson {
    /// Requests summed over routes, by code.
    #[must_use]
    pub fn requests_by_code(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for r in &self.requests {
            *out.entry(r.code.clone()).or_default() += r.count;
        }
        out
    }
}

/// The most frequent code of a ranked entry (ties: the first by name).
#[must_use]
pub fn main_code(codes: &BTreeMap<String, u64>) -> Option<&str> {
    codes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(c, _)| c.as_str())
}
