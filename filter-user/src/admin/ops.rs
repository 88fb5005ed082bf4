//! What the admin API does, as a trait the control plane implements: typed requests in, JSON out.
//!
//! The server validates and parses requests (so a bad body is a 400 before any operation runs);
//! an [`AdminOps`] implementation performs the operation and returns the JSON response body.
//! Key-changing operations must return only after every shard applied the change (SPEC §3).
//! Every changing operation is told who asks ([`Actor`]: the token's holder and their address)
//! and records the change, or its refusal, in the audit trail (SPEC §7).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::names::{NameError, NameKind};
use crate::store::{Actor, KeyView};

/// The request header in which a caller may say on whose behalf it acts (the CLI sends its
/// local user, e.g. `cli:alice`); recorded after the authenticated actor, as its claim.
pub const ACTOR_HEADER: &str = "x-edgefilter-actor";

/// The future every operation returns.
pub type OpFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send + 'a>>;

/// An admin API error: rendered as `{"error":{"code","message","hint","request_id"}}`, plus
/// `field` and `rule` for an [`ApiError::invalid_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code, e.g. `NOT_FOUND`.
    pub code: &'static str,
    /// What happened. Must never contain a key.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The request field at fault (`tenant`, `user`, `scopes`), when one is.
    pub field: Option<&'static str>,
    /// The rule it breaks, machine-readable ([`NameError::rule`]), when one does.
    pub rule: Option<&'static str>,
}

impl ApiError {
    /// Any error.
    #[must_use]
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            hint: None,
            field: None,
            rule: None,
        }
    }

    /// 400 `INVALID_NAME`: a name breaks its rule ([`crate::names`]). Names the request field
    /// (`tenant`, `user` or `scopes`) and the rule; never repeats the name.
    #[must_use]
    pub fn invalid_name(e: &NameError) -> Self {
        let kind = e.kind;
        let field = match kind {
            NameKind::Tenant => "tenant",
            NameKind::User => "user",
            NameKind::Scope => "scopes",
        };
        let mut err = Self::new(400, "INVALID_NAME", format!("`{field}`: {}.", e.problem()))
            .with_hint(format!(
                "A {} is {}. See docs/keys.md#names.",
                kind.noun(),
                kind.rule()
            ));
        err.field = Some(field);
        err.rule = Some(e.rule());
        err
    }

    /// Adds a hint.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// 400 `BAD_REQUEST`.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BAD_REQUEST", message)
    }

    /// 401 `UNAUTHORIZED`.
    #[must_use]
    pub fn unauthorized() -> Self {
        Self::new(401, "UNAUTHORIZED", "A valid admin token is required.")
            .with_hint("Send `Authorization: Bearer <token>` with the token from admin.token_file.")
    }

    /// 404 `NOT_FOUND` (unknown key, user or route).
    #[must_use]
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NOT_FOUND", message)
    }

    /// 405 `METHOD_NOT_ALLOWED`.
    #[must_use]
    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            405,
            "METHOD_NOT_ALLOWED",
            "Method not allowed on this path.",
        )
        .with_hint(format!("Allowed: {allowed}."))
    }

    /// 409 `CONFLICT` (e.g. approving an active key).
    #[must_use]
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "CONFLICT", message)
    }

    /// 413 `PAYLOAD_TOO_LARGE`.
    #[must_use]
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(413, "PAYLOAD_TOO_LARGE", "The request body is too large.")
            .with_hint(format!("At most {limit} bytes."))
    }

    /// 500 `INTERNAL`.
    #[must_use]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "INTERNAL", message)
    }

    /// 503 `STORE_UNAVAILABLE`: the change was not made (e.g. PostgreSQL unreachable).
    #[must_use]
    pub fn store_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "STORE_UNAVAILABLE", message)
            .with_hint("Nothing was changed; retry when the store is reachable.")
    }

    /// 504 `PROPAGATION_TIMEOUT`: committed, but not every shard confirmed in time.
    #[must_use]
    pub fn propagation_timeout(message: impl Into<String>) -> Self {
        Self::new(504, "PROPAGATION_TIMEOUT", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// `POST /v1/keys`. With `like`, every field it leaves out is copied from that key
/// ([`CreateKeyRequest::inherit`]); without it `tenant` and `user` are required (a body without
/// them is refused as it is parsed). `like` may hold a full key: `Debug` redacts it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Tenant name (created if new); required unless `like` names a key.
    #[serde(default)]
    pub tenant: Option<String>,
    /// User name within the tenant (created if new); required unless `like` names a key.
    #[serde(default)]
    pub user: Option<String>,
    /// Scopes granted; left out: none, or `like`'s.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Expiry: a duration from now (`90d`, `12h`) or RFC 3339.
    #[serde(default)]
    pub expires: Option<String>,
    /// Not valid before: a duration from now or RFC 3339.
    #[serde(default)]
    pub not_before: Option<String>,
    /// Client CIDRs allowed (empty = any); left out: any, or `like`'s.
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// Requests per second (token-bucket refill); none = unlimited, or `like`'s.
    #[serde(default)]
    pub rate: Option<u64>,
    /// Token-bucket size.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Credits to start with: a usage-limited key (never copied by `like`).
    #[serde(default)]
    pub credits: Option<u64>,
    /// How the credits refill: `N/hour`, `N/day` or `N/month` (reset to N each period).
    #[serde(default)]
    pub refill: Option<String>,
    /// Create as `pending` (needs approval).
    #[serde(default)]
    pub pending: bool,
    /// Environment (`live`, `test`, ...); default: `like`'s, else the edge's `keys.environment`.
    #[serde(default)]
    pub env: Option<String>,
    /// A key (`key_…` or the full key) whose tenant, user, scopes, networks, limit and
    /// environment the new key copies, where the request leaves them out.
    #[serde(default)]
    pub like: Option<String>,
}

impl<'de> Deserialize<'de> for CreateKeyRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The derived (`remote = "Self"`) parser, then the rule across fields.
        let r = Self::deserialize(d)?;
        if r.like.is_none() && (r.tenant.is_none() || r.user.is_none()) {
            return Err(serde::de::Error::custom(
                "`tenant` and `user` are required unless `like` names a key",
            ));
        }
        Ok(r)
    }
}

impl CreateKeyRequest {
    /// Copies from `from` every field this request leaves out: tenant, user, scopes, allowed
    /// networks, rate and burst (a request with `burst` alone keeps `from`'s rate), and the
    /// environment. Validity times, approval and credentials are never copied.
    pub fn inherit(&mut self, from: &KeyView) {
        let k = &from.key;
        self.tenant.get_or_insert_with(|| from.user.tenant.clone());
        self.user.get_or_insert_with(|| from.user.name.clone());
        self.scopes.get_or_insert_with(|| k.scopes.clone());
        self.allowed_cidrs
            .get_or_insert_with(|| k.allow_cidrs.clone());
        self.env.get_or_insert_with(|| k.env.clone());
        if let (None, Some(r)) = (self.rate, k.rate) {
            self.rate = Some(u64::from(r.per_sec));
            self.burst.get_or_insert(u64::from(r.burst));
        }
    }
}

impl std::fmt::Debug for CreateKeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let like = self.like.as_deref().map(|l| {
            if crate::store::ids::is_key_id(l) {
                l
            } else {
                "(a key)"
            }
        });
        f.debug_struct("CreateKeyRequest")
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("scopes", &self.scopes)
            .field("expires", &self.expires)
            .field("not_before", &self.not_before)
            .field("allowed_cidrs", &self.allowed_cidrs)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("pending", &self.pending)
            .field("env", &self.env)
            .field("like", &like)
            .finish()
    }
}

/// `GET /v1/keys?tenant=T`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListKeysQuery {
    /// Only this tenant's keys.
    pub tenant: Option<String>,
}

/// `GET /v1/audit?since=T&limit=N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries made at or after this time (unix seconds).
    pub since: Option<i64>,
    /// At most this many (the newest); none = the default.
    pub limit: Option<usize>,
}

/// `POST /v1/keys/{id}/credits`: exactly one of `set` and `add`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreditsRequest {
    /// Remaining credits become exactly this.
    #[serde(default)]
    pub set: Option<u64>,
    /// Remaining credits grow by this.
    #[serde(default)]
    pub add: Option<u64>,
}

/// `POST /v1/keys/{id}/rotate`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old key keeps working (`24h`); none = the default grace.
    #[serde(default)]
    pub grace: Option<String>,
}

/// `POST|DELETE /v1/allowlist`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowlistRequest {
    /// The CIDR to add or remove.
    pub cidr: IpNet,
}

/// `POST|DELETE /v1/denylist`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DenylistRequest {
    /// An address, or an IPv6 prefix (widened to `autoblock.ipv6_prefix`).
    pub source: String,
    /// `POST` only: how long (`10m`, `24h`); none = `autoblock.ban`.
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
}

/// `POST /v1/explain`. Holds a key: its `Debug` output redacts it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The full key to check (never logged).
    pub key: String,
    /// Client address to check against the key's CIDRs.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// Request method.
    #[serde(default)]
    pub method: Option<String>,
    /// Request path (selects the route and its scopes).
    #[serde(default)]
    pub path: Option<String>,
}

impl std::fmt::Debug for ExplainRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExplainRequest")
            .field("key", &"***")
            .field("ip", &self.ip)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish()
    }
}

/// `POST /v1/users/{user}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAction {
    /// Suspend: every key of the user is refused (`USER_SUSPENDED`).
    Suspend,
    /// Activate again.
    Activate,
    /// Delete: every key of the user is refused (`USER_DELETED`).
    Delete,
}

impl UserAction {
    /// From the path segment.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "suspend" => Some(Self::Suspend),
            "activate" => Some(Self::Activate),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// The admin operations. Implemented by the control plane; every method's JSON result is the
/// response body (status 200, or 201 for `create_key`). `id` arguments are a key id (`key_…`)
/// or a full key (SPEC §3). Implementations must never put a key into an error message. A
/// changing operation is made `by` an actor and recorded in the audit trail, made or refused.
pub trait AdminOps: Send + Sync + 'static {
    /// Creates a key; the result holds the full key, the only time it is ever shown.
    fn create_key(&self, by: Actor, req: CreateKeyRequest) -> OpFuture<'_>;
    /// Lists keys (a JSON array), never a secret.
    fn list_keys(&self, query: ListKeysQuery) -> OpFuture<'_>;
    /// One key, never its secret.
    fn show_key(&self, id: String) -> OpFuture<'_>;
    /// Revokes a key; returns once every shard applied it.
    fn revoke_key(&self, by: Actor, id: String) -> OpFuture<'_>;
    /// Rotates a key: the result holds the new full key; the old one works until its grace ends.
    fn rotate_key(&self, by: Actor, id: String, req: RotateRequest) -> OpFuture<'_>;
    /// Approves a pending key.
    fn approve_key(&self, by: Actor, id: String) -> OpFuture<'_>;
    /// Sets or adds to a usage-limited key's credits; answers once every shard spends them.
    fn key_credits(&self, by: Actor, id: String, req: CreditsRequest) -> OpFuture<'_>;
    /// Suspends, activates or deletes a user.
    fn user_action(&self, by: Actor, user: String, action: UserAction) -> OpFuture<'_>;
    /// The XDP allowlist.
    fn allowlist(&self) -> OpFuture<'_>;
    /// Adds a CIDR to the XDP allowlist.
    fn allowlist_add(&self, by: Actor, req: AllowlistRequest) -> OpFuture<'_>;
    /// Removes a CIDR from the XDP allowlist.
    fn allowlist_remove(&self, by: Actor, req: AllowlistRequest) -> OpFuture<'_>;
    /// The bans in force (a JSON array of [`super::BanJson`]).
    fn denylist(&self) -> OpFuture<'_>;
    /// Bans a source (`manual`); answers the ban made.
    fn denylist_add(&self, by: Actor, req: DenylistRequest) -> OpFuture<'_>;
    /// Lifts the ban of a source (404 when none holds).
    fn denylist_remove(&self, by: Actor, req: DenylistRequest) -> OpFuture<'_>;
    /// Runs every check for a key, in order.
    fn explain(&self, req: ExplainRequest) -> OpFuture<'_>;
    /// The audit trail (a JSON array of [`super::AuditJson`], oldest first): the newest
    /// `limit` entries since `since`.
    fn audit(&self, query: AuditQuery) -> OpFuture<'_>;
    /// What `edgefilter stats` shows: a [`super::StatsJson`] snapshot.
    fn stats(&self) -> OpFuture<'_>;
    /// The `/metrics` exposition (OpenMetrics text).
    fn metrics(&self) -> String {
        String::new()
    }
}

/// What `/readyz` reports: ready only when XDP, the store and every shard are up, and the store
/// can take changes.
#[derive(Debug, Default)]
pub struct Readiness {
    xdp: AtomicBool,
    store: AtomicBool,
    shards: AtomicBool,
    /// Why the store cannot take changes (its file deleted, corrupt, read-only, full ...).
    store_problem: Mutex<Option<String>>,
}

impl Readiness {
    /// Nothing ready yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// XDP attached (or deliberately off: `--no-xdp`).
    pub fn set_xdp(&self, up: bool) {
        self.xdp.store(up, Ordering::Release);
    }

    /// Store state loaded. In fleet mode it stays set during a database outage (fail-static).
    pub fn set_store(&self, up: bool) {
        self.store.store(up, Ordering::Release);
    }

    /// Why the store cannot take changes now (`None`: it can). While there is a reason the
    /// daemon is not ready, though its shards keep serving their last state.
    pub fn set_store_problem(&self, problem: Option<String>) {
        *self
            .store_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = problem;
    }

    /// Why the store cannot take changes, if it cannot.
    #[must_use]
    pub fn store_problem(&self) -> Option<String> {
        self.store_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every shard is serving.
    pub fn set_shards(&self, up: bool) {
        self.shards.store(up, Ordering::Release);
    }

    /// `(xdp, store, shards)`; `store` is false while the store has a problem.
    #[must_use]
    pub fn parts(&self) -> (bool, bool, bool) {
        (
            self.xdp.load(Ordering::Acquire),
            self.store.load(Ordering::Acquire) && self.store_problem().is_none(),
            self.shards.load(Ordering::Acquire),
        )
    }

    /// Why the daemon is not ready, one sentence per part that is not up (empty: ready).
    #[must_use]
    pub fn reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.xdp.load(Ordering::Acquire) {
            out.push("xdp: not attached yet".to_owned());
        }
        if !self.store.load(Ordering::Acquire) {
            out.push("store: not loaded yet".to_owned());
        }
        if let Some(p) = self.store_problem() {
            out.push(format!("store: {p}"));
        }
        if !self.shards.load(Ordering::Acquire) {
            out.push("shards: not every shard is serving".to_owned());
        }
        out
    }
}
