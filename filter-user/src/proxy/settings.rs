//! The read-only settings every shard serves with, built from the [`Config`] at start:
//! compiled routes, size and time limits, error detail and the trusted proxies, the request
//! metrics, the rings of recent denials and auto-block's hub.
//!
//! A config reload publishes a new [`Settings`] ([`Published::retune`]: limits, `keys.errors`,
//! `keys.trusted_proxies`; routes stay until a restart). Each shard keeps its own `Rc` copy and
//! takes the new one at its next request, when one atomic load shows the generation moved: no
//! lock, and no reference count shared between cores, on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use super::route::RouteTable;
use crate::autoblock::Autoblock;
use crate::config::{Config, ErrorDetail};
use crate::obs::Telemetry;
use crate::obs::access_log::AccessLog;
use crate::obs::metrics::RequestMetrics;
use crate::obs::recent::RecentDenials;

/// Read-only settings shared by every shard.
#[derive(Debug, Clone)]
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

impl Settings {
    /// These settings with `cfg`'s limits, error detail and trusted proxies.
    #[must_use]
    pub fn retuned(&self, cfg: &Config) -> Self {
        Self {
            max_header_bytes: cfg.limits.max_header_bytes.max(256),
            max_body_bytes: cfg.limits.max_body_bytes,
            client_timeout: cfg.limits.client_timeout,
            upstream_timeout: cfg.limits.upstream_timeout,
            opaque: cfg.keys.errors == ErrorDetail::Opaque,
            trusted_proxies: cfg.keys.trusted_proxies.clone(),
            ..self.clone()
        }
    }
}

/// The settings in force, replaced whole by a reload; every shard copies them when the
/// generation moves.
#[derive(Debug)]
pub(crate) struct Published {
    current: ArcSwap<Settings>,
    generation: AtomicU64,
}

impl Published {
    pub fn new(settings: Settings) -> Self {
        Self {
            current: ArcSwap::from_pointee(settings),
            generation: AtomicU64::new(0),
        }
    }

    /// The settings in force and their generation.
    pub fn load(&self) -> (Arc<Settings>, u64) {
        let generation = self.generation.load(Ordering::Acquire);
        (self.current.load_full(), generation)
    }

    /// The generation of the settings in force (one atomic load).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `cfg`'s limits, error detail and trusted proxies in force.
    pub fn retune(&self, cfg: &Config) {
        let next = self.current.load().retuned(cfg);
        self.current.store(Arc::new(next));
        self.generation.fetch_add(1, Ordering::Release);
    }
}
