//! The read-only settings every shard serves with, built from the [`Config`] at start:
//! compiled routes, size and time limits, error detail and the trusted proxies, the request
//! metrics, the rings of recent denials and auto-block's hub.
//!
//! A config reload publishes a new [`Settings`] ([`Published::reconfigure`]: the routes and
//! the gate's rules built from the same config, limits, `keys.errors`, `keys.trusted_proxies`).
//! Each shard keeps its own `Rc` copy and takes the new one at its next request, when one
//! atomic load shows the generation moved: no lock, and no reference count shared between
//! cores, on the request path. A request keeps the copy it began with to its end, so its route
//! index, its gate rules, its upstream and its metrics row all come from one config.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use super::admit::{self, Admission};
use super::route::{RouteError, RouteTable};
use crate::autoblock::Autoblock;
use crate::config::{Config, ErrorDetail};
use crate::gate::GateRules;
use crate::obs::Telemetry;
use crate::obs::access_log::AccessLog;
use crate::obs::metrics::{RequestMetrics, RouteRows};
use crate::obs::recent::RecentDenials;
use crate::obs::upstreams::UpstreamBoard;

/// Read-only settings shared by every shard.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub routes: Arc<RouteTable>,
    /// The gate's rules for `routes` (built from the same config); `None`: the gate's own.
    pub gate_rules: Option<GateRules>,
    /// The metrics row of each route of `routes`.
    pub route_rows: RouteRows,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub client_timeout: Duration,
    pub upstream_timeout: Duration,
    /// `limits.max_connections`, or the figure derived from `RLIMIT_NOFILE`.
    pub max_connections: usize,
    /// `limits.max_connections_per_source`, or its default (0: no per-source limit).
    pub max_per_source: usize,
    /// IPv6 sources are counted per network of this prefix (`autoblock.ipv6_prefix`).
    pub v6_prefix: u8,
    /// `limits.drain_timeout`.
    pub drain_timeout: Duration,
    /// `limits.max_connections` when the config leaves it out (derived at start).
    pub derived_max_connections: usize,
    /// The connection counts every shard shares.
    pub admission: Arc<Admission>,
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
    /// The routes' targets and credentials as `/metrics` shows them.
    pub upstreams: Arc<UpstreamBoard>,
}

impl Settings {
    /// `derived_max_connections`: `limits.max_connections` when the config leaves it out.
    pub fn new(
        cfg: &Config,
        routes: Arc<RouteTable>,
        telemetry: Telemetry,
        autoblock: Arc<Autoblock>,
        derived_max_connections: usize,
    ) -> Self {
        let (max_connections, max_per_source) = connection_limits(cfg, derived_max_connections);
        Self {
            route_rows: rows_of(&telemetry.requests, &routes),
            routes,
            gate_rules: None,
            max_header_bytes: cfg.limits.max_header_bytes.max(256),
            max_body_bytes: cfg.limits.max_body_bytes,
            client_timeout: cfg.limits.client_timeout,
            upstream_timeout: cfg.limits.upstream_timeout,
            max_connections,
            max_per_source,
            v6_prefix: cfg.autoblock.ipv6_prefix,
            drain_timeout: cfg.limits.drain_timeout,
            derived_max_connections,
            admission: Arc::new(Admission::new(Arc::clone(&telemetry.requests))),
            opaque: cfg.keys.errors == ErrorDetail::Opaque,
            trusted_proxies: cfg.keys.trusted_proxies.clone(),
            metrics: telemetry.requests,
            denials: telemetry.denials,
            access_log: telemetry.access_log,
            upstreams: telemetry.upstreams,
            autoblock,
        }
    }
}

impl Settings {
    /// These settings with `cfg`'s routes (compiled as `routes`, with the gate's rules for
    /// them), limits, error detail and trusted proxies.
    #[must_use]
    pub fn reconfigured(
        &self,
        cfg: &Config,
        routes: Arc<RouteTable>,
        gate_rules: Option<GateRules>,
    ) -> Self {
        let (max_connections, max_per_source) =
            connection_limits(cfg, self.derived_max_connections);
        Self {
            route_rows: rows_of(&self.metrics, &routes),
            routes,
            gate_rules,
            max_header_bytes: cfg.limits.max_header_bytes.max(256),
            max_body_bytes: cfg.limits.max_body_bytes,
            client_timeout: cfg.limits.client_timeout,
            upstream_timeout: cfg.limits.upstream_timeout,
            max_connections,
            max_per_source,
            v6_prefix: cfg.autoblock.ipv6_prefix,
            drain_timeout: cfg.limits.drain_timeout,
            opaque: cfg.keys.errors == ErrorDetail::Opaque,
            trusted_proxies: cfg.keys.trusted_proxies.clone(),
            ..self.clone()
        }
    }
}

/// The metrics rows of `routes`' routes (each counted under its prefix).
fn rows_of(metrics: &RequestMetrics, routes: &RouteTable) -> RouteRows {
    metrics.rows_for(routes.routes.iter().map(|r| r.prefix.as_str()))
}

/// `(max_connections, max_connections_per_source)` in force for `cfg`: the configured values,
/// or the derived limit and a tenth of the limit (0 per source: none).
#[must_use]
pub fn connection_limits(cfg: &Config, derived_max_connections: usize) -> (usize, usize) {
    let max = cfg
        .limits
        .max_connections
        .unwrap_or(derived_max_connections)
        .max(1);
    let per_source = cfg
        .limits
        .max_connections_per_source
        .unwrap_or_else(|| admit::default_per_source(max));
    (max, per_source)
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

    /// The settings in force now (for the handle: the drain timeout).
    pub fn current(&self) -> Arc<Settings> {
        self.current.load_full()
    }

    /// Puts `cfg`'s routes (with `gate_rules`, the gate's rules built from `cfg`), limits,
    /// error detail and trusted proxies in force, all in one step. The routes are compiled
    /// first (upstreams resolved, injected credentials read anew): when that fails nothing
    /// changes.
    ///
    /// # Errors
    /// A route that does not compile.
    pub fn reconfigure(
        &self,
        cfg: &Config,
        gate_rules: Option<GateRules>,
    ) -> Result<(), RouteError> {
        let current = self.current.load();
        let routes = Arc::new(RouteTable::build_after(cfg, Some(&current.routes))?);
        routes.publish(&current.upstreams);
        let next = current.reconfigured(cfg, routes, gate_rules);
        self.current.store(Arc::new(next));
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }
}
