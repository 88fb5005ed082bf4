//! `/metrics` through the real daemon: after a known mix of answers (forwarded, a malformed
//! key, no route, an upstream that refuses connections) the exposition parses with the
//! official OpenMetrics parser (Python `prometheus_client`, Debian's `python3-prometheus-client`)
//! and counts exactly those requests by route and code, the upstream failure by class, and
//! both duration histograms; no key appears in it.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use crate::support::daemon::{Daemon, KeepAlive};
use crate::support::ports::free_addr;
use crate::support::upstream;

/// Parses an OpenMetrics exposition strictly; one `name{labels} value` per line, sorted.
const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;

const PYTHON: &str = "/usr/bin/python3";

/// `sample -> value` as the parser read them, or `None` when the parser is not installed.
fn parse(text: &str) -> Option<BTreeMap<String, f64>> {
    let child = Command::new(PYTHON)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return None;
    };
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named") {
        return None;
    }
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {stderr}\n{text}"
    );
    let mut samples = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (name, value) = line.rsplit_once(' ').unwrap();
        samples.insert(name.to_owned(), value.parse().unwrap());
    }
    Some(samples)
}

#[test]
fn metrics_count_every_answer_and_parse_as_openmetrics() {
    let up = upstream::Upstream::start();
    let down = free_addr(); // nothing listens there: connect refused
    let tables = format!(
        r#"
[keys]
environment = "live"
[log]
format = "text"
access_log = "off"
[[route]]
prefix = "/v1/"
upstream = "http://{}"
scopes = ["ai:invoke"]
[[route]]
prefix = "/down/"
upstream = "http://{down}"
"#,
        up.addr
    );
    let mut d = Daemon::configure(&tables);
    d.restart();
    let (_, key) = d.create_key("alice");
    let mut c = KeepAlive::new(d.http);
    for _ in 0..3 {
        assert_eq!(c.get("/v1/echo", &key).unwrap().status, 200);
    }
    assert_eq!(c.get("/v1/echo", "not-a-key").unwrap().status, 400);
    assert_eq!(c.get("/nowhere", &key).unwrap().status, 404);
    assert_eq!(c.get("/down/x", &key).unwrap().status, 502);

    // A shard counts a request once its answer is written, so the client may see the last
    // answer a moment before `/metrics` does: wait for it (bounded).
    let t = std::time::Instant::now();
    let text = loop {
        let (s, body) = d.admin_call("GET", "/metrics", None, None);
        assert_eq!(s, 200);
        let text = body.as_str().unwrap_or_default().to_owned();
        if text.contains("route=\"/down/\"") || t.elapsed() > std::time::Duration::from_secs(2) {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(!text.contains(&key[8..]), "a key in /metrics");
    let Some(m) = parse(&text) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{PYTHON} with prometheus_client is needed (apt-get install python3-prometheus-client; .ci/run does)"
        );
        eprintln!(
            "\n!!!!!!!!!! SKIPPED: no OpenMetrics parser ({PYTHON} prometheus_client) !!!!!!!!!!\n"
        );
        return;
    };
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in:\n{text}"))
    };
    assert_eq!(
        get(r#"edgefilter_requests_total{code="OK",route="/v1/"}"#),
        3.0
    );
    assert_eq!(
        get(r#"edgefilter_requests_total{code="MALFORMED_KEY",route="/v1/"}"#),
        1.0
    );
    assert_eq!(
        get(r#"edgefilter_requests_total{code="NO_ROUTE",route="(none)"}"#),
        1.0
    );
    assert_eq!(
        get(r#"edgefilter_requests_total{code="UPSTREAM_UNAVAILABLE",route="/down/"}"#),
        1.0
    );
    assert_eq!(
        get(r#"edgefilter_upstream_errors_total{class="connect",route="/down/"}"#),
        1.0
    );
    assert_eq!(get("edgefilter_request_duration_seconds_count{}"), 6.0);
    assert_eq!(
        get(r#"edgefilter_request_duration_seconds_bucket{le="+Inf"}"#),
        6.0
    );
    assert_eq!(get("edgefilter_upstream_duration_seconds_count{}"), 3.0);
    assert!(get("edgefilter_revocation_propagation_seconds_count{}") >= 0.0);
    assert!(
        get("edgefilter_store_revision{}") >= 1.0,
        "a key was created"
    );
}
