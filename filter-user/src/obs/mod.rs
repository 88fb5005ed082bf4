//! Observability: the logging subscriber, the per-shard request metrics and their Prometheus
//! exposition, and the per-shard rings of recent denials behind `edgefilter stats`.

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod recent;
pub mod upstreams;

pub use logging::init_logging;

use std::sync::Arc;

use crate::config::Config;

/// What the proxy's shards feed: request metrics, recent denials, and the access log when it
/// is on. Each shard writes only its own part of each.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Request counts and durations (`/metrics`).
    pub requests: Arc<metrics::RequestMetrics>,
    /// Recent refusals (`GET /v1/stats`).
    pub denials: Arc<recent::RecentDenials>,
    /// The access log, when `log.access_log` is not `"off"`.
    pub access_log: Option<Arc<access_log::AccessLog>>,
    /// Upstream targets' and credentials' shared state (`/metrics`).
    pub upstreams: Arc<upstreams::UpstreamBoard>,
}

impl Telemetry {
    /// Fresh metrics and rings for the config's shards and routes, and no access log.
    #[must_use]
    pub fn for_config(cfg: &Config) -> Self {
        Self {
            requests: metrics::RequestMetrics::for_config(cfg),
            denials: recent::RecentDenials::for_config(cfg),
            access_log: None,
            upstreams: Arc::default(),
        }
    }
}
