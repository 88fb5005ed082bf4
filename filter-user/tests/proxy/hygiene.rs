//! Request hygiene, each finding reproduced as it was reported and shown fixed, through the real
//! daemon (`edgefilter run --no-xdp`, a key made with the CLI) and a recording origin that keeps
//! every byte it receives: every path shape an upstream would normalise into a traversal or a
//! NUL is refused with 400 naming its rule (a table), and routes are chosen on the path as the
//! upstream reads it.

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::proxy_env::{Client, Response};
use crate::support::upstream::Upstream;

/// A daemon with routes `/v1/` (scope `ai:invoke`, injecting `X-Upstream-Key`), `/admin/`
/// (scope `admin`) and `/` (scope `ai:invoke`) to one recording origin, and one key of
/// `acme`/`alice` with scope `ai:invoke`.
struct Edge {
    daemon: Daemon,
    upstream: Upstream,
    key: String,
}

impl Edge {
    fn start() -> Self {
        let upstream = Upstream::start();
        let up = upstream.addr;
        let tables = format!(
            r#"
[keys]
environment = "live"
[log]
format = "text"
access_log = "off"
[[route]]
prefix = "/v1/"
upstream = "http://{up}"
scopes = ["ai:invoke"]
inject_header = {{ name = "X-Upstream-Key", value = "${{HYGIENE_UPSTREAM_SECRET}}" }}
[[route]]
prefix = "/admin/"
upstream = "http://{up}"
scopes = ["admin"]
[[route]]
prefix = "/"
upstream = "http://{up}"
scopes = ["ai:invoke"]
"#
        );
        let mut daemon =
            Daemon::configure(&tables).with_env("HYGIENE_UPSTREAM_SECRET", "sk-upstream-real");
        let (_, key) = daemon.create_key("alice");
        daemon.restart();
        Self {
            daemon,
            upstream,
            key,
        }
    }

    /// Sends `raw` on a fresh connection and reads one answer.
    fn send(&self, raw: &[u8]) -> Response {
        let mut c = Client::connect(self.daemon.http);
        c.send(raw);
        c.read(false)
    }

    /// `GET target` with the key, on a fresh connection.
    fn get(&self, target: &str, extra: &str) -> Response {
        let raw = format!(
            "GET {target} HTTP/1.1\r\nHost: edge.example\r\nAuthorization: Bearer {}\r\n\
             {extra}\r\n",
            self.key
        );
        self.send(raw.as_bytes())
    }
}

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

#[test]
fn path_shapes_upstreams_normalise_are_refused_naming_the_rule() {
    let edge = Edge::start();
    // The key works under /v1/, and the origin answers.
    let ok = edge.get("/v1/echo/fine", "");
    assert_eq!(ok.status, 200, "{}", ok.text());
    let before = edge.upstream.received().len();
    let shapes = [
        ("/v1/..;/admin/x", "path_dot_segment"),
        ("/v1/.;/admin/x", "path_dot_segment"),
        ("/v1/..%3b/admin/x", "path_dot_segment"),
        ("/v1/../admin/x", "path_dot_segment"),
        ("/v1/%2e%2e/admin/x", "path_dot_segment"),
        ("/v1/%2E%2e/admin/x", "path_dot_segment"),
        ("/v1/.%2E/admin/x", "path_dot_segment"),
        ("/%2e%2e/admin/x", "path_dot_segment"),
        ("/./admin/x", "path_dot_segment"),
        ("/v1/./x", "path_dot_segment"),
        ("/v1/%5c..%5cadmin/x", "path_backslash"),
        ("/v1/%5C..%5Cadmin/x", "path_backslash"),
        ("/v1/\\..\\admin/x", "path_backslash"),
        ("/v1/..%2fadmin/x", "path_encoded_slash"),
        ("/v1/%252e%252e/admin/x", "path_double_encoding"),
        ("/v1/%25%32%65%25%32%65/admin/x", "path_double_encoding"),
        ("/v1/%c0%ae%c0%ae/admin/x", "path_not_utf8"),
        ("/v1/%C0%AE%C0%AE/admin/x", "path_not_utf8"),
        ("/v1/%e0%80%ae%e0%80%ae/admin/x", "path_not_utf8"),
        ("/v1/%c0%af../admin/x", "path_not_utf8"),
        ("/v1/%u002e%u002e/admin", "path_bad_escape"),
        ("/v1/%zz/admin", "path_bad_escape"),
        ("/v1/x%00", "path_control"),
        ("/v1/x%00.json", "path_control"),
        ("/v1/x%0d%0aX-Injected:%20y", "path_control"),
        ("//admin/x", "path_empty_segment"),
        ("/v1//admin/x", "path_empty_segment"),
        ("/v1/x#/../../admin/x", "target_form"),
    ];
    for (path, rule) in shapes {
        let r = edge.get(path, "");
        let v = json(&r);
        assert_eq!(
            (
                r.status,
                v["error"]["code"].as_str(),
                v["error"]["rule"].as_str()
            ),
            (400, Some("BAD_REQUEST"), Some(rule)),
            "{path}: {}",
            r.text()
        );
        let hint = v["error"]["hint"].as_str().unwrap_or("");
        assert!(!hint.is_empty(), "{path}: no hint: {}", r.text());
    }
    // Routes are chosen on the path as the upstream reads it: decoded, `;parameters` dropped.
    for path in ["/%61dmin/x", "/%61%64%6d%69%6e/x", "/admin;jsessionid=1/x"] {
        let r = edge.get(path, "");
        let v = json(&r);
        assert_eq!(
            (r.status, v["error"]["code"].as_str()),
            (403, Some("SCOPE_MISSING")),
            "{path}: {}",
            r.text()
        );
    }
    let after = edge.upstream.received();
    assert_eq!(
        after.len(),
        before,
        "a refused path reached the upstream: {}",
        String::from_utf8_lossy(&after[before..])
    );
    // Ordinary paths still pass, dots and escapes inside names included.
    for path in ["/v1/echo/file.json", "/v1/echo/caf%C3%A9", "/v1/echo/..a"] {
        assert_eq!(edge.get(path, "").status, 200, "{path}");
    }
}
