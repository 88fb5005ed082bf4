//! `/metrics`: the families of SPEC §8 the daemon keeps, encoded with `prometheus-client` at
//! each scrape from their sources: the shards' request counters, the propagation histogram,
//! the XDP program's per-CPU counters (summed here), the store revision and lag, the keys per
//! state and the number of bans in force. Nothing here is on the request path.

use std::sync::Arc;
use std::time::Duration;

use filter_common::xdp::{Action, Reason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::fanout::Propagation;
use crate::obs::metrics::{RequestMetrics, Shared};
use crate::obs::upstreams::{CredentialState, UpstreamBoard, now_ms};
use crate::store::rules::KEY_STATES;
use crate::xdp::{PinDir, open_pinned};

/// What a scrape reads; each source is shared with its one writer.
#[derive(Debug)]
pub struct Sources {
    /// The shards' request counters (absent until the proxy starts).
    pub requests: Option<Arc<RequestMetrics>>,
    /// Upstream targets and credentials (absent until the proxy starts).
    pub upstreams: Option<Arc<UpstreamBoard>>,
    /// Store commit → last shard applied.
    pub propagation: Arc<Propagation>,
    /// The XDP program's pins, when XDP runs.
    pub xdp: Option<PinDir>,
    /// The store revision every shard has been sent.
    pub revision: u64,
    /// Bans in force on this host (`edgefilter_autoblocked_sources`).
    pub autoblocked_sources: u64,
    /// Access-log lines dropped because the writer fell behind (`None`: the log is off).
    pub access_log_dropped: Option<u64>,
    /// Keys per state (`None`: the store has not answered yet).
    pub keys: Option<Vec<(String, u64)>>,
    /// Time since the store was last heard from (`None`: not known yet).
    pub store_lag: Option<Duration>,
}

/// The exposition (Prometheus text, OpenMetrics flavour) of every source.
#[must_use]
pub fn render(src: &Sources) -> String {
    let mut reg = Registry::default();
    if let Some(r) = &src.requests {
        reg.register_collector(Box::new(Shared(Arc::clone(r))));
    }
    if let Some(u) = &src.upstreams {
        reg.register_collector(Box::new(UpstreamCollector(Arc::clone(u))));
    }
    reg.register_collector(Box::new(PropagationCollector(Arc::clone(&src.propagation))));
    reg.register_collector(Box::new(StoreCollector(src.revision)));
    if let Some(lag) = src.store_lag {
        reg.register_collector(Box::new(LagCollector(lag)));
    }
    if let Some(keys) = &src.keys {
        reg.register_collector(Box::new(KeysCollector(keys.clone())));
    }
    reg.register_collector(Box::new(BansCollector(src.autoblocked_sources)));
    if let Some(n) = src.access_log_dropped {
        reg.register_collector(Box::new(DroppedCollector(n)));
    }
    if let Some(pins) = &src.xdp {
        reg.register_collector(Box::new(XdpCollector(pins.clone())));
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::error!(error = %e, "encoding /metrics failed");
    }
    out
}

#[derive(Debug)]
struct PropagationCollector(Arc<Propagation>);

impl Collector for PropagationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let (buckets, sum, count) = self.0.buckets();
        let mut m = encoder.encode_descriptor(
            crate::fanout::propagation::METRIC,
            "Store commit to the last shard applying the change.",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

#[derive(Debug)]
struct StoreCollector(u64);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let rev = i64::try_from(self.0).unwrap_or(i64::MAX);
        let g = ConstGauge::new(rev);
        let m = encoder.encode_descriptor(
            "edgefilter_store_revision",
            "The store revision every shard has been sent.",
            None,
            g.metric_type(),
        )?;
        g.encode(m)
    }
}

#[derive(Debug)]
struct LagCollector(Duration);

impl Collector for LagCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let g = ConstGauge::new(self.0.as_secs_f64());
        let m = encoder.encode_descriptor(
            "edgefilter_store_lag_seconds",
            "Time since the store was last heard from (0 for the embedded store).",
            None,
            g.metric_type(),
        )?;
        g.encode(m)
    }
}

/// `edgefilter_keys{status}`: every state of [`KEY_STATES`] (0 when no key is in it), then any
/// other the store reported.
#[derive(Debug)]
struct KeysCollector(Vec<(String, u64)>);

impl Collector for KeysCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "edgefilter_keys",
            "Keys in the store by what they amount to now (active, pending, expired, ...).",
            None,
            MetricType::Gauge,
        )?;
        let count = |state: &str| {
            self.0
                .iter()
                .filter(|(s, _)| s == state)
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
        let others = self
            .0
            .iter()
            .map(|(s, _)| s.as_str())
            .filter(|s| !KEY_STATES.contains(s));
        for state in KEY_STATES.into_iter().chain(others) {
            let n = i64::try_from(count(state)).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(family.encode_family(&[("status", state)])?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct BansCollector(u64);

impl Collector for BansCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let g = ConstGauge::new(i64::try_from(self.0).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "edgefilter_autoblocked_sources",
            "Sources on the denylist now (auto-block's bans and manual ones).",
            None,
            g.metric_type(),
        )?;
        g.encode(m)
    }
}

#[derive(Debug)]
struct DroppedCollector(u64);

impl Collector for DroppedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let c = ConstCounter::new(self.0);
        let m = encoder.encode_descriptor(
            "edgefilter_access_log_dropped",
            "Access-log lines dropped because the writer fell behind (requests never wait).",
            None,
            c.metric_type(),
        )?;
        c.encode(m)
    }
}

#[derive(Debug)]
struct XdpCollector(PinDir);

impl Collector for XdpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        // A scrape while the program is being replaced or was detached shows no XDP family
        // (the "XDP detached" alert watches for that), never an error page.
        let counters = match open_pinned(&self.0).and_then(|m| m.counters()) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "XDP counters unreadable at scrape");
                return Ok(());
            }
        };
        let mut family = encoder.encode_descriptor(
            "edgefilter_xdp_packets",
            "Packets the XDP program judged, by action and reason (summed over CPUs).",
            None,
            MetricType::Counter,
        )?;
        for a in Action::ALL {
            for r in Reason::ALL {
                let n = counters.packets(a, r);
                let labels = [("action", a.label()), ("reason", r.label())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Upstream targets (addresses, resolve failures, ejection) and pooled credentials (state).
#[derive(Debug)]
struct UpstreamCollector(Arc<UpstreamBoard>);

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now_ms();
        let targets = self.0.targets();
        let credentials = self.0.credentials();
        if !targets.is_empty() {
            let mut family = encoder.encode_descriptor(
                "edgefilter_upstream_addresses",
                "Addresses each upstream target resolves to now (0 for a Unix socket).",
                None,
                MetricType::Gauge,
            )?;
            for t in targets.iter() {
                let labels = [("route", t.route.as_str()), ("target", t.target.as_str())];
                let n = i64::try_from(t.addresses.load(Relaxed)).unwrap_or(i64::MAX);
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "edgefilter_upstream_resolve_failures",
                "Times re-resolving a target's host name failed (its last good addresses kept).",
                None,
                MetricType::Counter,
            )?;
            for t in targets.iter() {
                let labels = [("route", t.route.as_str()), ("target", t.target.as_str())];
                ConstCounter::new(t.resolve_failures.load(Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "edgefilter_upstream_ejected",
                "1 while a target rests after consecutive failures (passive health).",
                None,
                MetricType::Gauge,
            )?;
            for t in targets.iter() {
                let labels = [("route", t.route.as_str()), ("target", t.target.as_str())];
                let ejected = i64::from(t.ejected_until(now).is_some());
                ConstGauge::new(ejected).encode(family.encode_family(&labels)?)?;
            }
        }
        if !credentials.is_empty() {
            let mut family = encoder.encode_descriptor(
                "edgefilter_upstream_credential_state",
                "1 for the state each pooled provider credential is in (by index; never the value).",
                None,
                MetricType::Gauge,
            )?;
            for c in credentials.iter() {
                let index = c.index.to_string();
                let now_state = c.state(now);
                for s in CredentialState::ALL {
                    let labels = [
                        ("route", c.route.as_str()),
                        ("index", index.as_str()),
                        ("state", s.label()),
                    ];
                    ConstGauge::new(i64::from(s == now_state))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}
