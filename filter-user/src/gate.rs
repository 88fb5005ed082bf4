//! The seam between the proxy and the key checks: the proxy parses a request head, hands a
//! borrowed view of it to its shard's [`Gate`], and forwards or answers per the [`Verdict`].
//!
//! Each shard owns its own gate (no sharing, no locks); the daemon hands the proxy a
//! [`GateFactory`] and each shard builds its gate with it on its own thread. An allowed request's
//! [`Identity`] is lent from the gate's own data for as long as the proxy writes the forwarded
//! head (synchronously, never across an `.await`), so allowing a request writes to no memory other
//! shards read.
//!
//! What the checks take from the config per route (for the daemon's gate: where each route's
//! key may be and the scopes it needs) is built with the route table from the same config and
//! travels with it ([`GateRules`], opaque to the proxy): each request hands the gate the rules
//! of the table that matched it, so a config reload switches both for a request at once.

use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;

use crate::codes::ErrorCode;
use crate::names::{TenantName, UserName};

/// A borrowed view of one request head, as the gate sees it. Nothing here is copied.
#[derive(Debug, Clone, Copy)]
pub struct GateRequest<'a> {
    /// Client address (from the socket; from `X-Forwarded-For` only behind a trusted proxy).
    pub peer: IpAddr,
    /// Request method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query string without the `?`, if any.
    pub query: Option<&'a str>,
    /// Every request header, as parsed.
    pub headers: &'a [httparse::Header<'a>],
    /// Index of the matched route in `Config::routes`.
    pub route: usize,
    /// The gate's rules built from the config whose routes `route` indexes ([`GateRules`]);
    /// `None`: the rules the gate was built with.
    pub rules: Option<&'a (dyn Any + Send + Sync)>,
}

/// A gate's per-route rules, built from one config alongside its route table and published
/// with it (the daemon's gate reads `auth::AuthRules` here). Opaque to the proxy, which only
/// hands them to the gate with each request ([`GateRequest::rules`]).
pub type GateRules = Arc<dyn Any + Send + Sync>;

/// Who the caller is, for an allowed request (forwarded as `X-Edgefilter-*` headers). Borrowed
/// from the gate that allowed it: nothing is copied or reference-counted per request. The names
/// are valid by type ([`crate::names`]), so none can hold a byte that ends a header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    /// Public key id (`key_` + 12 base62).
    pub key_id: &'a str,
    /// Tenant name.
    pub tenant: &'a TenantName,
    /// User name.
    pub user: &'a UserName,
    /// The key's rate limit after this request took its token, when it has one (the
    /// `RateLimit-Policy` and `RateLimit` fields of the answer).
    pub rate: Option<RateInfo>,
}

/// Rate-limit state to report in `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// Requests per second allowed (the bucket's refill rate).
    pub limit: u64,
    /// Tokens left.
    pub remaining: u64,
    /// Seconds until the bucket is full again / a token is available.
    pub reset_secs: u64,
}

/// Why a request is refused, with everything the answer and the log need. Never holds the key.
#[derive(Debug, Clone)]
pub struct Denial {
    /// The code (status follows from it).
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The key's public id when known.
    pub key_id: Option<Arc<str>>,
    /// For `RATE_LIMITED`: `Retry-After` seconds and `RateLimit-*` values.
    pub rate: Option<RateInfo>,
}

impl Denial {
    /// A denial with the code's default message and no hint.
    #[must_use]
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: code.default_message().to_string(),
            hint: None,
            key_id: None,
            rate: None,
        }
    }
}

/// The gate's answer; an allowed identity borrows from the gate.
#[derive(Debug, Clone)]
pub enum Verdict<'a> {
    /// Forward; `None` when no key was required or checked.
    Allow(Option<Identity<'a>>),
    /// Answer with an error.
    Deny(Denial),
}

/// A shard's key checker. Called on the shard's own thread only.
pub trait Gate: Send {
    /// Decides one request. Must not block. The verdict may borrow from the gate (the allowed
    /// identity), so the gate is not used again until the verdict is dropped.
    fn check(&mut self, req: &GateRequest<'_>) -> Verdict<'_>;

    /// A signal the shard awaits while idle; when it fires the shard calls [`Gate::on_wake`],
    /// so changes are applied even when no request arrives. `None`: the gate has no changes.
    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// Applies pending changes (called by the shard after [`Gate::change_signal`] fired).
    fn on_wake(&mut self) {}

    /// Called once on the shard's own thread before it serves (e.g. to register the thread so
    /// the control plane can raise it while a change waits).
    fn on_thread_start(&mut self) {}
}

/// Builds the gate of shard `n`. The proxy shares one factory between its shard threads and
/// each shard calls it once, on its own thread, before it serves; calls may run in parallel.
pub type GateFactory = Box<dyn Fn(usize) -> Box<dyn Gate> + Send + Sync>;

/// Placeholder gate that lets every request through (used until the key checks are wired, and
/// by proxy benches that measure forwarding alone).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Gate for AllowAll {
    fn check(&mut self, _req: &GateRequest<'_>) -> Verdict<'_> {
        Verdict::Allow(None)
    }
}
