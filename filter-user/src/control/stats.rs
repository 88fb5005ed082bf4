//! `GET /v1/stats`: one [`StatsJson`] snapshot from the daemon's live sources, read when asked
//! (nothing here is on the request path): the shards' request counters, the XDP program's
//! per-CPU counters (summed here), the propagation histogram's p99, the store revision and lag,
//! and the top denied key ids and sources from the shards' rings of recent denials.

use std::time::Duration;

use filter_common::xdp::{Action, Reason};
use serde_json::Value;

use crate::admin::stats_json::{
    DenialsJson, DeniedKey, DeniedSource, PropagationJson, RequestCount, StatsJson, StoreJson,
    UpstreamErrorCount, XdpCount,
};
use crate::fanout::Propagation;
use crate::obs::metrics::RequestMetrics;
use crate::obs::recent::{Ranked, RecentDenials};
use crate::store::timefmt::rfc3339;
use crate::xdp::{PinDir, open_pinned};

/// The window of the top denied key ids and sources.
pub const DENIALS_WINDOW: Duration = Duration::from_secs(60);

/// How many key ids and sources the top lists hold.
pub const TOP_N: usize = 10;

/// What a snapshot reads; each source is shared with its one writer.
#[derive(Debug)]
pub struct Sources<'a> {
    /// The shards' request counters (absent until the proxy starts).
    pub requests: Option<&'a RequestMetrics>,
    /// The shards' recent denials (absent until the proxy starts).
    pub denials: Option<&'a RecentDenials>,
    /// Store commit → last shard applied.
    pub propagation: &'a Propagation,
    /// The XDP program's pins, when XDP runs.
    pub xdp: Option<&'a PinDir>,
    /// `sqlite` or `postgres`.
    pub store_kind: &'a str,
    /// The store revision every shard has been sent.
    pub revision: u64,
    /// Fleet mode: time since the last contact with the database.
    pub lag: Option<Duration>,
    /// The denylist's entries (auto-block's bans and manual ones), as `GET /v1/denylist`
    /// shows them.
    pub bans: Vec<Value>,
}

/// The snapshot at `now_ms` (milliseconds since the Unix epoch).
#[must_use]
pub fn snapshot(src: Sources<'_>, now_ms: u64) -> StatsJson {
    let sums = src.requests.map(RequestMetrics::sums).unwrap_or_default();
    let top = src
        .denials
        .map(|d| d.top(now_ms, DENIALS_WINDOW, TOP_N))
        .unwrap_or_default();
    let p99 = src.propagation.quantile_bound(0.99);
    let beyond = p99.is_some_and(f64::is_infinite);
    let last_bucket = crate::fanout::propagation::BUCKETS.last().copied();
    StatsJson {
        at: rfc3339(i64::try_from(now_ms / 1000).unwrap_or(i64::MAX)),
        requests: sums
            .requests
            .into_iter()
            .map(|(route, code, count)| RequestCount {
                route,
                code: code.to_owned(),
                count,
            })
            .collect(),
        upstream_errors: sums
            .upstream_errors
            .into_iter()
            .map(|(route, class, count)| UpstreamErrorCount {
                route,
                class: class.to_owned(),
                count,
            })
            .collect(),
        xdp: src.xdp.and_then(xdp_counts),
        propagation: PropagationJson {
            samples: src.propagation.count(),
            p99_seconds: if beyond { last_bucket } else { p99 },
            p99_beyond_buckets: beyond,
        },
        store: StoreJson {
            kind: src.store_kind.to_owned(),
            revision: src.revision,
            lag_seconds: src.lag.map(|l| l.as_secs_f64()),
        },
        bans: src.bans,
        denials: DenialsJson {
            window_seconds: DENIALS_WINDOW.as_secs(),
            counted: top.counted,
            complete: top.complete,
            top_keys: top
                .keys
                .into_iter()
                .map(|r| {
                    let (key_id, count, codes) = parts(r);
                    DeniedKey {
                        key_id,
                        count,
                        codes,
                    }
                })
                .collect(),
            top_sources: top
                .sources
                .into_iter()
                .map(|r| {
                    let (source, count, codes) = parts(r);
                    DeniedSource {
                        source,
                        count,
                        codes,
                    }
                })
                .collect(),
        },
    }
}

fn parts(r: Ranked) -> (String, u64, std::collections::BTreeMap<String, u64>) {
    let codes = r
        .codes
        .into_iter()
        .map(|(c, n)| (c.as_str().to_owned(), n))
        .collect();
    (r.name, r.count, codes)
}

/// Every `(action, reason)` packet count, or `None` when the pinned counters cannot be read
/// (the program is being replaced, or was detached).
fn xdp_counts(pins: &PinDir) -> Option<Vec<XdpCount>> {
    let counters = match open_pinned(pins).and_then(|m| m.counters()) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "XDP counters unreadable for stats");
            return None;
        }
    };
    let mut out = Vec::with_capacity(Action::ALL.len() * Reason::ALL.len());
    for a in Action::ALL {
        for r in Reason::ALL {
            out.push(XdpCount {
                action: a.label().to_owned(),
                reason: r.label().to_owned(),
                packets: counters.packets(a, r),
            });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;
    use crate::codes::ErrorCode;

    #[test]
    fn a_snapshot_holds_every_source() {
        let requests = RequestMetrics::new(vec!["/v1/".into()], 1);
        let v1 = requests.rows_for(["/v1/"]).row(Some(0));
        requests
            .shard(0)
            .request(v1, None, Duration::from_micros(80));
        requests
            .shard(0)
            .request(v1, Some(ErrorCode::KeyRevoked), Duration::from_micros(80));
        let denials = RecentDenials::new(1);
        let now_ms = 1_800_000_000_000;
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        denials.shard(0).record_at(
            now_ms - 1_000,
            ErrorCode::KeyRevoked,
            Some("key_0123456789ab"),
            ip,
        );
        let propagation = Propagation::new();
        propagation.record(Duration::from_micros(40));
        let s = snapshot(
            Sources {
                requests: Some(&requests),
                denials: Some(&denials),
                propagation: &propagation,
                xdp: None,
                store_kind: "sqlite",
                revision: 7,
                lag: None,
                bans: Vec::new(),
            },
            now_ms,
        );
        assert_eq!(s.at, "2027-01-15T08:00:00Z");
        assert_eq!(s.requests_by_code().get("OK"), Some(&1));
        assert_eq!(s.requests_by_code().get("KEY_REVOKED"), Some(&1));
        assert_eq!(s.xdp, None);
        assert_eq!(s.propagation.samples, 1);
        assert_eq!(s.propagation.p99_seconds, Some(0.000_05));
        assert!(!s.propagation.p99_beyond_buckets);
        assert_eq!(s.store.revision, 7);
        assert_eq!(s.store.lag_seconds, None);
        assert_eq!(s.denials.top_keys[0].key_id, "key_0123456789ab");
        assert_eq!(s.denials.top_sources[0].source, "198.18.0.9");
        assert_eq!(s.denials.top_sources[0].codes.get("KEY_REVOKED"), Some(&1));
        let text = serde_json::to_string(&s).unwrap();
        let back: StatsJson = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_p99_beyond_the_last_bucket_says_so() {
        let propagation = Propagation::new();
        propagation.record(Duration::from_secs(5));
        let s = snapshot(
            Sources {
                requests: None,
                denials: None,
                propagation: &propagation,
                xdp: None,
                store_kind: "postgres",
                revision: 1,
                lag: Some(Duration::from_millis(1500)),
                bans: Vec::new(),
            },
            0,
        );
        assert_eq!(s.propagation.p99_seconds, Some(1.0));
        assert!(s.propagation.p99_beyond_buckets);
        assert_eq!(s.store.lag_seconds, Some(1.5));
        assert!(s.requests.is_empty() && s.denials.top_keys.is_empty());
    }
}
