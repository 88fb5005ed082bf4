//! What `edgefilter stats` shows, as rows of text: rates from two snapshots of
//! `GET /v1/stats` ([`rates`]), and every section ready to print ([`View`]), shared by the live
//! view and `--once`. Text that came from the daemon goes through [`printable`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::admin::StatsJson;
use crate::admin::stats_json::main_code;
use crate::cli::out::printable;

/// Rates over the time between two snapshots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rates {
    /// The time between the snapshots, in seconds.
    pub interval_seconds: f64,
    /// Requests per second by code (`OK`: forwarded), summed over routes.
    pub requests_per_second: BTreeMap<String, f64>,
    /// Upstream failures per second by class, summed over routes.
    pub upstream_errors_per_second: BTreeMap<String, f64>,
    /// XDP packets per second by action and reason; `None` when XDP is off.
    pub xdp_packets_per_second: Option<Vec<XdpRate>>,
}

/// One `(action, reason)` packet rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct XdpRate {
    /// `pass`, `drop` or `would_drop`.
    pub action: String,
    /// The reason (SPEC §8).
    pub reason: String,
    /// Packets per second.
    pub per_second: f64,
}

/// `(now - before) / seconds`; a counter that went down (the daemon restarted) counts as 0.
fn per_second(before: u64, now: u64, seconds: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let diff = now.saturating_sub(before) as f64;
    if seconds > 0.0 { diff / seconds } else { 0.0 }
}

fn upstream_by_class(s: &StatsJson) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in &s.upstream_errors {
        *out.entry(e.class.clone()).or_default() += e.count;
    }
    out
}

/// The rates between `before` and `now`, taken `elapsed` apart.
#[must_use]
pub fn rates(before: &StatsJson, now: &StatsJson, elapsed: Duration) -> Rates {
    let secs = elapsed.as_secs_f64();
    let diff = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
        b.iter()
            .map(|(k, &n)| {
                let was = a.get(k).copied().unwrap_or(0);
                (k.clone(), per_second(was, n, secs))
            })
            .collect::<BTreeMap<String, f64>>()
    };
    let xdp = now.xdp.as_ref().map(|rows| {
        rows.iter()
            .map(|r| {
                let was = before
                    .xdp
                    .iter()
                    .flatten()
                    .find(|p| p.action == r.action && p.reason == r.reason)
                    .map_or(0, |p| p.packets);
                XdpRate {
                    action: r.action.clone(),
                    reason: r.reason.clone(),
                    per_second: per_second(was, r.packets, secs),
                }
            })
            .collect()
    });
    Rates {
        interval_seconds: secs,
        requests_per_second: diff(&before.requests_by_code(), &now.requests_by_code()),
        upstream_errors_per_second: diff(&upstream_by_class(before), &upstream_by_class(now)),
        xdp_packets_per_second: xdp,
    }
}

/// Every section of the view, as rows of printable text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The snapshot's time.
    pub at: String,
    /// `[code, per second, total]`: `OK` first, then the most frequent; then `upstream CLASS`
    /// rows for upstream failures.
    pub requests: Vec<[String; 3]>,
    /// `[action, reason, per second, total]` for every pair with packets; `None`: XDP off.
    pub xdp: Option<Vec<[String; 4]>>,
    /// The top lists' title: the window, and whether the ranking is complete.
    pub denials_title: String,
    /// `[key id, refusals, main code]`.
    pub top_keys: Vec<[String; 3]>,
    /// `[source, refusals, main code]`.
    pub top_sources: Vec<[String; 3]>,
    /// One line per ban.
    pub bans: Vec<String>,
    /// Revocation propagation p99, in words.
    pub propagation: String,
    /// Store kind, revision and lag, in words.
    pub store: String,
}

/// A rate as shown: `-` before there are two snapshots.
fn rate_text(r: Option<f64>) -> String {
    match r {
        None => "-".to_owned(),
        Some(r) if r < 100.0 => format!("{r:.1}"),
        Some(r) => format!("{r:.0}"),
    }
}

/// Seconds as a short duration (`50 µs`, `2.5 ms`, `1.2 s`).
#[must_use]
pub fn duration_text(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{} ms", trim(secs * 1e3))
    } else {
        format!("{} s", trim(secs))
    }
}

/// One decimal, without a trailing `.0`.
fn trim(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// A ban as one line: its source, reason, expiry and host when present, else its JSON.
fn ban_text(v: &Value) -> String {
    let fields: Vec<String> = ["source", "reason", "expires_at", "host"]
        .iter()
        .filter_map(|k| match v.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        })
        .collect();
    let line = if fields.is_empty() {
        v.to_string()
    } else {
        fields.join("  ")
    };
    printable(&line).into_owned()
}

fn ranked(name: &str, count: u64, codes: &BTreeMap<String, u64>) -> [String; 3] {
    [
        printable(name).into_owned(),
        count.to_string(),
        printable(main_code(codes).unwrap_or("")).into_owned(),
    ]
}

impl View {
    /// The view of `now`, with `rates` when there was an earlier snapshot.
    #[must_use]
    pub fn new(now: &StatsJson, rates: Option<&Rates>) -> Self {
        let mut codes: Vec<(String, u64)> = now.requests_by_code().into_iter().collect();
        codes.sort_by(|a, b| {
            (b.0 == "OK")
                .cmp(&(a.0 == "OK"))
                .then(b.1.cmp(&a.1))
                .then(a.0.cmp(&b.0))
        });
        let mut requests: Vec<[String; 3]> = codes
            .iter()
            .map(|(code, total)| {
                let r = rates.map(|r| r.requests_per_second.get(code).copied().unwrap_or(0.0));
                [
                    printable(code).into_owned(),
                    rate_text(r),
                    total.to_string(),
                ]
            })
            .collect();
        for (class, total) in upstream_by_class(now) {
            let r = rates.map(|r| {
                r.upstream_errors_per_second
                    .get(&class)
                    .copied()
                    .unwrap_or(0.0)
            });
            requests.push([
                format!("upstream {}", printable(&class)),
                rate_text(r),
                total.to_string(),
            ]);
        }
        let xdp = now.xdp.as_ref().map(|rows| {
            rows.iter()
                .filter(|r| r.packets > 0)
                .map(|r| {
                    let rate = rates.map(|rates| {
                        rates
                            .xdp_packets_per_second
                            .iter()
                            .flatten()
                            .find(|x| x.action == r.action && x.reason == r.reason)
                            .map_or(0.0, |x| x.per_second)
                    });
                    [
                        printable(&r.action).into_owned(),
                        printable(&r.reason).into_owned(),
                        rate_text(rate),
                        r.packets.to_string(),
                    ]
                })
                .collect()
        });
        let d = &now.denials;
        let denials_title = format!(
            "last {} s{}",
            d.window_seconds,
            if d.complete {
                ""
            } else {
                ", newest refusals only"
            }
        );
        let p = &now.propagation;
        let propagation = match p.p99_seconds {
            None => "no key change measured yet".to_owned(),
            Some(b) => format!(
                "{} {} ({} changes)",
                if p.p99_beyond_buckets { ">" } else { "≤" },
                duration_text(b),
                p.samples
            ),
        };
        let s = &now.store;
        let lag = s
            .lag_seconds
            .map_or_else(|| "n/a".to_owned(), duration_text);
        let store = format!("{}, revision {}, lag {lag}", printable(&s.kind), s.revision);
        Self {
            at: printable(&now.at).into_owned(),
            requests,
            xdp,
            denials_title,
            top_keys: d
                .top_keys
                .iter()
                .map(|k| ranked(&k.key_id, k.count, &k.codes))
                .collect(),
            top_sources: d
                .top_sources
                .iter()
                .map(|k| ranked(&k.source, k.count, &k.codes))
                .collect(),
            bans: now.bans.iter().map(ban_text).collect(),
            propagation,
            store,
        }
    }

    /// The whole view as plain text (`stats --once`), under `title`.
    #[must_use]
    pub fn to_text(&self, title: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{title}");
        section(
            &mut out,
            "Requests by code",
            &["CODE", "PER SEC", "TOTAL"],
            &self.requests,
            "no requests yet",
        );
        match &self.xdp {
            Some(rows) => section(
                &mut out,
                "XDP packets by reason",
                &["ACTION", "REASON", "PER SEC", "TOTAL"],
                rows,
                "no packets judged yet",
            ),
            None => {
                let _ = writeln!(out, "\nXDP packets by reason\n  XDP is off");
            }
        }
        section(
            &mut out,
            &format!("Top denied keys ({})", self.denials_title),
            &["KEY ID", "DENIED", "CODE"],
            &self.top_keys,
            "none",
        );
        section(
            &mut out,
            &format!("Top denied sources ({})", self.denials_title),
            &["SOURCE", "DENIED", "CODE"],
            &self.top_sources,
            "none",
        );
        let _ = writeln!(out, "\nBans");
        if self.bans.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for b in &self.bans {
            let _ = writeln!(out, "  {b}");
        }
        let _ = writeln!(out, "\nRevocation propagation p99: {}", self.propagation);
        let _ = writeln!(out, "Store: {}", self.store);
        out
    }
}

/// A titled table with aligned columns (numbers right-aligned), or `empty` without rows.
fn section<const N: usize>(
    out: &mut String,
    title: &str,
    header: &[&str; N],
    rows: &[[String; N]],
    empty: &str,
) {
    let _ = writeln!(out, "\n{title}");
    if rows.is_empty() {
        let _ = writeln!(out, "  {empty}");
        return;
    }
    let mut width = header.map(|h| h.chars().count());
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric = |i: usize| i > 0 && header[i] != "REASON" && header[i] != "CODE";
    let line = |cells: Vec<&str>| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            s.push(' ');
            if numeric(i) {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', pad));
            }
            s.push(' ');
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn snapshot(ok: u64, revoked: u64, dropped: u64) -> StatsJson {
        serde_json::from_value(json!({
            "at": "2027-01-15T08:00:00Z",
            "requests": [
                {"route": "/v1/", "code": "OK", "count": ok},
                {"route": "/v1/", "code": "KEY_REVOKED", "count": revoked},
                {"route": "/b/", "code": "KEY_REVOKED", "count": 1},
            ],
            "upstream_errors": [{"route": "/v1/", "class": "connect", "count": 2}],
            "xdp": [
                {"action": "pass", "reason": "allowlisted", "packets": 10},
                {"action": "drop", "reason": "not_allowlisted", "packets": dropped},
                {"action": "drop", "reason": "not_ip", "packets": 0},
            ],
            "propagation": {"samples": 4, "p99_seconds": 0.00005, "p99_beyond_buckets": false},
            "store": {"kind": "sqlite", "revision": 9, "lag_seconds": null},
            "bans": [{"source": "192.0.2.7", "reason": "autoblock", "expires_at": "2027-01-15T08:10:00Z", "host": "edge-1"}],
            "denials": {
                "window_seconds": 60, "counted": 5, "complete": true,
                "top_keys": [{"key_id": "key_0123456789ab", "count": 3, "codes": {"KEY_REVOKED": 3}}],
                "top_sources": [{"source": "127.0.0.1", "count": 5, "codes": {"KEY_REVOKED": 3, "MALFORMED_KEY": 2}}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn rates_are_differences_per_second() {
        let (a, b) = (snapshot(10, 2, 100), snapshot(30, 3, 400));
        let r = rates(&a, &b, Duration::from_secs(2));
        assert_eq!(r.requests_per_second["OK"], 10.0);
        assert_eq!(r.requests_per_second["KEY_REVOKED"], 0.5);
        assert_eq!(r.upstream_errors_per_second["connect"], 0.0);
        let xdp = r.xdp_packets_per_second.unwrap();
        assert_eq!(xdp[1].per_second, 150.0);
        // A restarted daemon's counters went down: no negative rates.
        let back = rates(&b, &a, Duration::from_secs(1));
        assert_eq!(back.requests_per_second["OK"], 0.0);
    }

    #[test]
    fn the_text_view_has_every_section() {
        let (a, b) = (snapshot(10, 2, 100), snapshot(30, 3, 400));
        let r = rates(&a, &b, Duration::from_secs(2));
        let v = View::new(&b, Some(&r));
        assert_eq!(v.requests[0], ["OK", "10.0", "30"].map(String::from));
        assert_eq!(v.requests[1], ["KEY_REVOKED", "0.5", "4"].map(String::from));
        assert_eq!(
            v.requests[2],
            ["upstream connect", "0.0", "2"].map(String::from)
        );
        let xdp = v.xdp.as_ref().unwrap();
        assert_eq!(xdp.len(), 2, "pairs without packets are left out");
        let text = v.to_text("edgefilter stats");
        for want in [
            "Requests by code",
            "XDP packets by reason",
            "Top denied keys (last 60 s)",
            "key_0123456789ab       3  KEY_REVOKED",
            "127.0.0.1       5  KEY_REVOKED",
            "192.0.2.7  autoblock  2027-01-15T08:10:00Z  edge-1",
            "Revocation propagation p99: ≤ 50 µs (4 changes)",
            "Store: sqlite, revision 9, lag n/a",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        let first = View::new(&a, None);
        assert_eq!(first.requests[0][1], "-");
    }

    #[test]
    fn daemon_text_cannot_steer_the_terminal() {
        let mut s = snapshot(1, 1, 1);
        s.denials.top_sources[0].source = "\u{1b}[2J".into();
        let v = View::new(&s, None);
        assert_eq!(v.top_sources[0][0], "\\u{1b}[2J");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_text(0.000_05), "50 µs");
        assert_eq!(duration_text(0.002_5), "2.5 ms");
        assert_eq!(duration_text(1.0), "1 s");
    }
}
