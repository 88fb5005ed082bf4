//! The read-only settings every shard serves with, built once from the [`Config`] at start and
//! shared (`Arc`) by all shards: compiled routes, size and time limits, error detail and the
//! trusted proxies, the request metrics, the rings of recent denials and auto-block's hub.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::route::RouteTable;
use crate::autoblock::Autoblock;
use crate::config::{Config, ErrorDetail};
use crate::obs::Telemetry;
use crate::obs::access_log::AccessLog;
use crate::obs::metrics::RequestMetrics;
use crate::obs::recent::RecentDenials;

/// Read-only settings shared by every shard.
#[derive(Debug)]
pub(crate) struct Settings {
    pub routes: Arc<RouteTable>,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub client_timeout: Duration,
    pub upstream_timeout: Duration,
    pub opaque: bool,
    pub trusted_proxies: Vec<IpNet>,
    /// Every shard's request metrics (each shard writes only its own block).
    pub metrics: Arc<RequestMetrics>,
    /// The access log, when `log.access_log` is not `"off"`.
    pub access_log: Option<Arc<AccessLog>>,
    /// Every shard's ring of recent denials (each shard writes only its own).
    pub denials: Arc<RecentDenials>,
    /// Auto-block: where each shard's failure counter reports, and the bans refused at accept.
    pub autoblock: Arc<Autoblock>,
}

impl Settings {
    pub fn new(
        cfg: &Config,
        routes: Arc<RouteTable>,
        telemetry: Telemetry,
        autoblock: Arc<Autoblock>,
    ) -> Self {
        Self {
            routes,
            max_header_bytes: cfg.limits.max_header_bytes.max(256),
            max_body_bytes: cfg.limits.max_body_bytes,
            client_timeout: cfg.limits.client_timeout,
            upstream_timeout: cfg.limits.upstream_timeout,
            opaque: cfg.keys.errors == ErrorDetail::Opaque,
            trusted_proxies: cfg.keys.trusted_proxies.clone(),
            metrics: telemetry.requests,
            denials: telemetry.denials,
            access_log: telemetry.access_log,
            autoblock,
        }
    }
}
