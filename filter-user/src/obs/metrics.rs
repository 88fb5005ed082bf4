//! Request metrics kept per shard and summed when `/metrics` is scraped, and the proxy's
//! connection counts.
//!
//! Each shard owns one [`ShardMetrics`] and is its only writer: a count is bumped with a plain
//! load and store (no locked instruction, no cache line written by another core), and the
//! scraper reads the atomics with relaxed loads, so a scrape may see a request counted but not
//! yet its duration — never a torn value. [`RequestMetrics`] holds every shard's block and
//! encodes the sums with `prometheus-client`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::codes::{ErrorCode, UpstreamErrorClass};
use crate::config::Config;

/// Upper bounds (seconds) of the request and upstream duration buckets: from 50 µs, where a
/// forwarded request on loopback lands, to 30 s, the default timeouts.
pub const DURATION_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label value of a forwarded request's `code`.
pub const CODE_OK: &str = "OK";

/// The `route` label of a request that matched no route.
pub const NO_ROUTE: &str = "(none)";

/// A count with one writer: bumped without a locked instruction, read from any thread.
#[derive(Debug, Default)]
struct Count(AtomicU64);

impl Count {
    #[inline]
    fn add(&self, n: u64) {
        // One writer (the owning shard): a load and a store cannot lose an update.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A duration histogram with one writer.
#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [Count; DURATION_BUCKETS.len() + 1],
    sum_nanos: Count,
}

/// Bucket bounds in nanoseconds, for the hot path's comparisons.
const BOUNDS_NANOS: [u64; DURATION_BUCKETS.len()] = {
    let mut out = [0u64; DURATION_BUCKETS.len()];
    // 50 µs .. 30 s, the same values as DURATION_BUCKETS.
    let micros: [u64; DURATION_BUCKETS.len()] = [
        50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
    ];
    let mut i = 0;
    while i < out.len() {
        out[i] = micros[i] * 1_000;
        i += 1;
    }
    out
};

impl Histogram {
    #[inline]
    fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NANOS.partition_point(|&b| b < nanos);
        self.buckets[i].add(1);
        self.sum_nanos.add(nanos);
    }

    fn add_into(&self, into: &mut HistogramSums) {
        for (sum, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *sum += b.get();
        }
        into.sum_nanos = into.sum_nanos.wrapping_add(self.sum_nanos.get());
    }
}

/// A histogram summed over shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSums {
    /// Per bucket (not cumulative); the last slot is `+Inf`.
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSums {
    /// Observations counted.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Encodes as a Prometheus histogram named `name`.
    ///
    /// # Errors
    /// When the encoder fails (formatting).
    pub fn encode(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
    ) -> std::fmt::Result {
        // The encoder takes per-bucket counts (it accumulates them) and `f64::MAX` for `+Inf`.
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .chain(std::iter::once(&f64::MAX))
            .zip(&self.buckets)
            .map(|(&le, &n)| (le, n))
            .collect();
        let sum = Duration::from_nanos(self.sum_nanos).as_secs_f64();
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        m.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }
}

/// Index of a code in a route's request counts: 0 is `OK`, then [`ErrorCode::ALL`] in order.
fn code_slot(code: Option<ErrorCode>) -> usize {
    code.map_or(0, |c| c as usize + 1)
}

const CODE_SLOTS: usize = ErrorCode::ALL.len() + 1;
const CLASS_SLOTS: usize = UpstreamErrorClass::ALL.len();

/// The row of requests that matched no route (labelled [`NO_ROUTE`]).
pub const NO_ROUTE_ROW: usize = 0;

/// The `kind` labels of `edgefilter_llm_tokens_total`, by slot: tokens reported as prompt
/// (input) and completion (output), and responses that reported none.
const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "unreported"];

/// One route's counts in one shard: requests by code, upstream failures by class, LLM tokens
/// by kind.
#[derive(Debug)]
struct RouteCounts {
    requests: [Count; CODE_SLOTS],
    upstream_errors: [Count; CLASS_SLOTS],
    llm_tokens: [Count; TOKEN_KINDS.len()],
}

impl Default for RouteCounts {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| Count::default()),
            upstream_errors: std::array::from_fn(|_| Count::default()),
            llm_tokens: std::array::from_fn(|_| Count::default()),
        }
    }
}

/// Rows in the first segment of [`Rows`]; each next segment holds twice the one before.
const FIRST_SEGMENT: usize = 8;
/// Segments of [`Rows`]: room for `FIRST_SEGMENT * (2^SEGMENTS - 1)` rows.
const SEGMENTS: usize = 24;

/// A shard's per-route counts by row number, growing as reloads bring new routes: a row is
/// made on its first use and never moves, so the shard counts into it without a lock while the
/// scraper reads it. Segment `s` holds `FIRST_SEGMENT << s` rows.
#[derive(Debug, Default)]
struct Rows {
    segments: [OnceLock<Box<[RouteCounts]>>; SEGMENTS],
}

impl Rows {
    /// The segment and the offset in it of `row` (`None`: beyond the last segment).
    fn locate(row: usize) -> Option<(usize, usize)> {
        let q = row / FIRST_SEGMENT + 1;
        let segment = (usize::BITS - 1 - q.leading_zeros()) as usize;
        let offset = row - FIRST_SEGMENT * ((1 << segment) - 1);
        (segment < SEGMENTS).then_some((segment, offset))
    }

    /// Row `row`, made (zeroed) if this is its first use.
    #[inline]
    fn get_or_make(&self, row: usize) -> Option<&RouteCounts> {
        let (segment, offset) = Self::locate(row)?;
        let rows = self.segments[segment].get_or_init(|| {
            (0..FIRST_SEGMENT << segment)
                .map(|_| RouteCounts::default())
                .collect()
        });
        Some(&rows[offset])
    }

    /// Row `row` if it was ever used.
    fn get(&self, row: usize) -> Option<&RouteCounts> {
        let (segment, offset) = Self::locate(row)?;
        Some(&self.segments[segment].get()?[offset])
    }
}

/// One shard's request metrics; only that shard writes them.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Per-route counts, by row ([`RouteRows`] says which row counts which route).
    rows: Rows,
    request_duration: Histogram,
    upstream_duration: Histogram,
    /// Connections closed at accept because their source had its limit open.
    refused_per_source: Count,
    /// Times accepting paused because `limits.max_connections` were open.
    paused_at_limit: Count,
    /// Times `accept` failed for want of descriptors or memory (and accepting paused).
    paused_starved: Count,
}

impl ShardMetrics {
    /// One answered request: the row of its route ([`RouteRows::row`]), its code (`None`:
    /// forwarded, whatever the upstream answered) and how long it took from its first byte to
    /// its last.
    #[inline]
    pub fn request(&self, row: usize, code: Option<ErrorCode>, took: Duration) {
        if let Some(counts) = self.rows.get_or_make(row) {
            counts.requests[code_slot(code)].add(1);
        }
        self.request_duration.observe(took);
    }

    /// The time from sending a request upstream to its response head.
    #[inline]
    pub fn upstream(&self, took: Duration) {
        self.upstream_duration.observe(took);
    }

    /// An upstream failure of `class` on the route counted in `row`.
    #[inline]
    pub fn upstream_error(&self, row: usize, class: UpstreamErrorClass) {
        if let Some(counts) = self.rows.get_or_make(row) {
            counts.upstream_errors[class as usize].add(1);
        }
    }

    /// The LLM token usage one response of the `ai` route counted in `row` reported:
    /// `(prompt, completion)`, or `None` when it reported none (counted as `unreported`).
    #[inline]
    pub fn llm_tokens(&self, row: usize, reported: Option<(u64, u64)>) {
        if let Some(counts) = self.rows.get_or_make(row) {
            match reported {
                Some((prompt, completion)) => {
                    counts.llm_tokens[0].add(prompt);
                    counts.llm_tokens[1].add(completion);
                }
                None => counts.llm_tokens[2].add(1),
            }
        }
    }

    /// A connection closed at accept: its source had `limits.max_connections_per_source` open.
    pub fn refused_per_source(&self) {
        self.refused_per_source.add(1);
    }

    /// Accepting paused: `limits.max_connections` connections were open.
    pub fn paused_at_limit(&self) {
        self.paused_at_limit.add(1);
    }

    /// Accepting paused: `accept` failed for want of descriptors or memory.
    pub fn paused_starved(&self) {
        self.paused_starved.add(1);
    }
}

/// Which row of the request metrics counts each route of one route table, by route index. A
/// row belongs to a prefix (its `route` label) for the daemon's life: a reload that adds,
/// removes or reorders routes gives a new prefix a row of its own and a kept prefix its old
/// row, so no count moves to another label.
#[derive(Debug, Clone)]
pub struct RouteRows(Arc<[usize]>);

impl RouteRows {
    /// The row of route `route` (`None` or unknown: [`NO_ROUTE_ROW`]).
    #[inline]
    #[must_use]
    pub fn row(&self, route: Option<usize>) -> usize {
        route
            .and_then(|r| self.0.get(r).copied())
            .unwrap_or(NO_ROUTE_ROW)
    }
}

/// Every shard's metrics and the route names, for the scrape.
#[derive(Debug)]
pub struct RequestMetrics {
    /// The `route` label of each row ([`NO_ROUTE`] first): only ever appended to.
    labels: Mutex<Vec<String>>,
    shards: Vec<Arc<ShardMetrics>>,
    /// Open client connections, every shard together: the proxy counts them here (at accept
    /// and close), and checks `limits.max_connections` against this count.
    open_connections: AtomicUsize,
}

/// Request counts summed over shards, keyed by route name and code (for `stats` and tests).
#[derive(Debug, Clone, Default)]
pub struct RequestSums {
    /// `(route, code, count)` for every non-zero count.
    pub requests: Vec<(String, &'static str, u64)>,
    /// `(route, class, count)` for every non-zero count.
    pub upstream_errors: Vec<(String, &'static str, u64)>,
    /// `(route, kind, count)` for every route that counted LLM tokens (all three kinds, zeros
    /// included, once any is non-zero).
    pub llm_tokens: Vec<(String, &'static str, u64)>,
    /// Request durations.
    pub request_duration: HistogramSums,
    /// Upstream durations.
    pub upstream_duration: HistogramSums,
    /// Connections closed at accept, their source over its limit.
    pub refused_per_source: u64,
    /// Times accepting paused at `limits.max_connections`.
    pub paused_at_limit: u64,
    /// Times accepting paused because `accept` failed for want of descriptors or memory.
    pub paused_starved: u64,
}

impl RequestMetrics {
    /// Blocks for `shards` shards, with a row for each of the routes named `routes` (their
    /// prefixes; more come with [`RequestMetrics::rows_for`]).
    #[must_use]
    pub fn new(routes: Vec<String>, shards: usize) -> Arc<Self> {
        let mut labels = vec![NO_ROUTE.to_owned()];
        for r in routes {
            if !labels.contains(&r) {
                labels.push(r);
            }
        }
        Arc::new(Self {
            labels: Mutex::new(labels),
            shards: (0..shards)
                .map(|_| Arc::new(ShardMetrics::default()))
                .collect(),
            open_connections: AtomicUsize::new(0),
        })
    }

    /// The rows that count the routes named `prefixes` (a route table's, in route order): a
    /// prefix seen before keeps its row, a new one gets the next.
    #[must_use]
    pub fn rows_for<'a>(&self, prefixes: impl IntoIterator<Item = &'a str>) -> RouteRows {
        let mut labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        let rows = prefixes
            .into_iter()
            .map(|p| {
                labels.iter().position(|l| l == p).unwrap_or_else(|| {
                    labels.push(p.to_owned());
                    labels.len() - 1
                })
            })
            .collect();
        RouteRows(rows)
    }

    /// The open-connection count (the proxy's admission adds and subtracts; read as a gauge).
    #[must_use]
    pub fn open_connections(&self) -> &AtomicUsize {
        &self.open_connections
    }

    /// Blocks for the config's shards, with a row for each of its routes (named by their
    /// prefixes).
    #[must_use]
    pub fn for_config(cfg: &Config) -> Arc<Self> {
        Self::new(
            cfg.routes.iter().map(|r| r.prefix.clone()).collect(),
            cfg.shard_count().max(1),
        )
    }

    /// Shard `n`'s block (a fresh, unscraped one for a shard beyond the count).
    #[must_use]
    pub fn shard(&self, n: usize) -> Arc<ShardMetrics> {
        self.shards.get(n).cloned().unwrap_or_default()
    }

    /// The sums over every shard: the routes in the order their rows were made, then requests
    /// that matched none.
    #[must_use]
    pub fn sums(&self) -> RequestSums {
        let labels = self
            .labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = RequestSums::default();
        let rows = (0..labels.len()).filter(|&r| r != NO_ROUTE_ROW);
        for row in rows.chain(std::iter::once(NO_ROUTE_ROW)) {
            let counts: Vec<&RouteCounts> =
                self.shards.iter().filter_map(|s| s.rows.get(row)).collect();
            for slot in 0..CODE_SLOTS {
                let n: u64 = counts.iter().map(|c| c.requests[slot].get()).sum();
                if n > 0 {
                    let code = if slot == 0 {
                        CODE_OK
                    } else {
                        ErrorCode::ALL[slot - 1].as_str()
                    };
                    out.requests.push((labels[row].clone(), code, n));
                }
            }
            for (slot, class) in UpstreamErrorClass::ALL.iter().enumerate() {
                let n: u64 = counts.iter().map(|c| c.upstream_errors[slot].get()).sum();
                if n > 0 {
                    out.upstream_errors
                        .push((labels[row].clone(), class.as_str(), n));
                }
            }
            let tokens: [u64; TOKEN_KINDS.len()] =
                std::array::from_fn(|slot| counts.iter().map(|c| c.llm_tokens[slot].get()).sum());
            if tokens.iter().any(|&n| n > 0) {
                for (kind, n) in TOKEN_KINDS.iter().zip(tokens) {
                    out.llm_tokens.push((labels[row].clone(), kind, n));
                }
            }
        }
        for s in &self.shards {
            s.request_duration.add_into(&mut out.request_duration);
            s.upstream_duration.add_into(&mut out.upstream_duration);
            out.refused_per_source += s.refused_per_source.get();
            out.paused_at_limit += s.paused_at_limit.get();
            out.paused_starved += s.paused_starved.get();
        }
        out
    }
}

/// A [`Collector`] over shared metrics, for a registry built at each scrape.
#[derive(Debug)]
pub struct Shared<T>(pub Arc<T>);

impl<T: Collector> Collector for Shared<T> {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.0.encode(encoder)
    }
}

impl Collector for RequestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let sums = self.sums();
        {
            let mut family = encoder.encode_descriptor(
                "edgefilter_requests",
                "Requests answered, by route and answer code (OK: forwarded).",
                None,
                MetricType::Counter,
            )?;
            for (route, code, n) in &sums.requests {
                let labels = [("route", route.as_str()), ("code", *code)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "edgefilter_upstream_errors",
                "Upstream failures, by route and class (connect, tls, reset, timeout, bad_response).",
                None,
                MetricType::Counter,
            )?;
            for (route, class, n) in &sums.upstream_errors {
                let labels = [("route", route.as_str()), ("class", *class)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "edgefilter_llm_tokens",
                "LLM tokens the responses of ai routes reported, by route and kind (prompt, completion); kind unreported counts responses that reported none.",
                None,
                MetricType::Counter,
            )?;
            for (route, kind, n) in &sums.llm_tokens {
                let labels = [("route", route.as_str()), ("kind", *kind)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        sums.request_duration.encode(
            &mut encoder,
            "edgefilter_request_duration_seconds",
            "From a request's first byte to its answer's last, every answer.",
        )?;
        sums.upstream_duration.encode(
            &mut encoder,
            "edgefilter_upstream_duration_seconds",
            "From sending a request upstream to its response head.",
        )?;
        let open = i64::try_from(self.open_connections.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        ConstGauge::new(open).encode(encoder.encode_descriptor(
            "edgefilter_connections_open",
            "Client connections open, every shard together.",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "edgefilter_connections_refused",
                "Client connections closed at accept, by reason (per_source: their source had limits.max_connections_per_source open).",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(sums.refused_per_source)
                .encode(family.encode_family(&[("reason", "per_source")])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "edgefilter_accept_paused",
            "Times the proxy stopped accepting for a while, by reason (max_connections: the limit was open; starved: accept failed for want of descriptors or memory).",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("max_connections", sums.paused_at_limit),
            ("starved", sums.paused_starved),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_match_the_published_buckets() {
        for (ns, s) in BOUNDS_NANOS.iter().zip(DURATION_BUCKETS) {
            #[allow(clippy::cast_precision_loss)]
            let back = *ns as f64 / 1e9;
            assert!((back - s).abs() < 1e-12, "{ns} ns vs {s} s");
        }
    }

    #[test]
    fn llm_tokens_are_summed_by_route_and_kind_and_unreported_counts_responses() {
        let m = RequestMetrics::new(vec!["/ai/".into(), "/v1/".into()], 2);
        let rows = m.rows_for(["/ai/", "/v1/"]);
        let (a, b) = (m.shard(0), m.shard(1));
        a.llm_tokens(rows.row(Some(0)), Some((10, 3)));
        b.llm_tokens(rows.row(Some(0)), Some((5, 4)));
        b.llm_tokens(rows.row(Some(0)), None);
        b.llm_tokens(rows.row(Some(0)), None);
        let s = m.sums();
        assert_eq!(
            s.llm_tokens,
            vec![
                ("/ai/".into(), "prompt", 15),
                ("/ai/".into(), "completion", 7),
                ("/ai/".into(), "unreported", 2),
            ],
            "a route that counted no tokens has no series"
        );
    }

    #[test]
    fn counts_from_every_shard_are_summed_by_route_and_code() {
        let m = RequestMetrics::new(vec!["/v1/".into(), "/".into()], 2);
        let rows = m.rows_for(["/v1/", "/"]);
        let (a, b) = (m.shard(0), m.shard(1));
        a.request(rows.row(Some(0)), None, Duration::from_micros(40));
        b.request(rows.row(Some(0)), None, Duration::from_micros(300));
        b.request(
            rows.row(Some(1)),
            Some(ErrorCode::KeyRevoked),
            Duration::from_millis(2),
        );
        a.request(
            rows.row(None),
            Some(ErrorCode::NoRoute),
            Duration::from_secs(60),
        );
        a.upstream_error(rows.row(Some(0)), UpstreamErrorClass::Reset);
        b.upstream(Duration::from_micros(120));
        let s = m.sums();
        assert!(s.requests.contains(&("/v1/".into(), "OK", 2)));
        assert!(s.requests.contains(&("/".into(), "KEY_REVOKED", 1)));
        assert!(s.requests.contains(&(NO_ROUTE.into(), "NO_ROUTE", 1)));
        assert_eq!(s.upstream_errors, vec![("/v1/".into(), "reset", 1)]);
        assert_eq!(s.request_duration.count(), 4);
        assert_eq!(s.request_duration.buckets[0], 1, "40 µs is under 50 µs");
        assert_eq!(
            s.request_duration.buckets[DURATION_BUCKETS.len()],
            1,
            "60 s is +Inf"
        );
        assert_eq!(s.upstream_duration.count(), 1);
    }

    #[test]
    fn the_exposition_parses_as_prometheus_text() {
        let m = RequestMetrics::new(vec!["/v1/".into()], 1);
        let rows = m.rows_for(["/v1/"]);
        m.shard(0)
            .request(rows.row(Some(0)), None, Duration::from_micros(70));
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(Shared(Arc::clone(&m))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        assert!(
            text.contains("edgefilter_requests_total{route=\"/v1/\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edgefilter_request_duration_seconds_bucket{le=\"0.0001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE edgefilter_upstream_errors counter"),
            "{text}"
        );
    }

    /// A reload's route table counts under the prefixes' own labels: a kept prefix keeps its
    /// row (wherever it moved), a new one gets a row of its own, a removed one keeps its
    /// counts; and rows far beyond the first segment are made as they are used.
    #[test]
    fn a_new_route_table_counts_each_prefix_under_its_own_label() {
        let m = RequestMetrics::new(vec!["/v1/".into()], 2);
        let before = m.rows_for(["/v1/"]);
        m.shard(0)
            .request(before.row(Some(0)), None, Duration::from_micros(70));
        let after = m.rows_for(["/v2/", "/v1/"]);
        assert_eq!(
            after.row(Some(1)),
            before.row(Some(0)),
            "/v1/ keeps its row"
        );
        assert_ne!(after.row(Some(0)), after.row(Some(1)));
        assert_eq!(after.row(Some(7)), NO_ROUTE_ROW);
        m.shard(1)
            .request(after.row(Some(0)), None, Duration::from_micros(70));
        m.shard(1)
            .request(after.row(Some(1)), None, Duration::from_micros(70));
        m.shard(0)
            .upstream_error(after.row(Some(0)), UpstreamErrorClass::Connect);
        let s = m.sums();
        assert!(s.requests.contains(&("/v1/".into(), "OK", 2)), "{s:?}");
        assert!(s.requests.contains(&("/v2/".into(), "OK", 1)), "{s:?}");
        assert_eq!(s.upstream_errors, vec![("/v2/".into(), "connect", 1)]);
        // Many reloads' worth of prefixes: each is counted in a row of its own.
        let many: Vec<String> = (0..1000).map(|i| format!("/r{i}/")).collect();
        let rows = m.rows_for(many.iter().map(String::as_str));
        for i in 0..many.len() {
            m.shard(0).request(rows.row(Some(i)), None, Duration::ZERO);
        }
        let s = m.sums();
        for p in &many {
            assert!(s.requests.contains(&(p.clone(), "OK", 1)), "{p}");
        }
        assert_eq!(s.requests.len(), many.len() + 2);
    }

    #[test]
    fn rows_are_laid_out_in_doubling_segments() {
        assert_eq!(Rows::locate(0), Some((0, 0)));
        assert_eq!(Rows::locate(7), Some((0, 7)));
        assert_eq!(Rows::locate(8), Some((1, 0)));
        assert_eq!(Rows::locate(23), Some((1, 15)));
        assert_eq!(Rows::locate(24), Some((2, 0)));
        let last = FIRST_SEGMENT * ((1 << SEGMENTS) - 1);
        assert_eq!(
            Rows::locate(last - 1),
            Some((SEGMENTS - 1, (FIRST_SEGMENT << (SEGMENTS - 1)) - 1))
        );
        assert_eq!(Rows::locate(last), None);
    }
}
