//! Request hygiene, each finding reproduced as it was reported and shown fixed, through the real
//! daemon (`edgefilter run --no-xdp`, a key made with the CLI) and a recording origin that keeps
//! every byte it receives:
//!
//! - identity-header lookalikes (`X_Edgefilter_User: root`, `X_Forwarded_For`) never reach the
//!   upstream, where a CGI-style reader would fold them into the proxy's own headers;
//! - every path shape an upstream would normalise into a traversal or a NUL is refused with 400
//!   naming its rule (a table), and routes are chosen on the path as the upstream reads it;
//! - chunked trailers are parsed as header lines: reserved names never reach the upstream, and a
//!   request line hidden in them is refused.
//!
//! The head writer's own guard (a control byte in a value the proxy adds) is driven through the
//! in-process proxy, with a gate that lends such an identity.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use edgefilter::gate::{Gate, GateRequest, Identity, Verdict};
use edgefilter::names::{TenantName, UserName};

use crate::support::daemon::Daemon;
use crate::support::proxy_env::{Client, Env, Response};
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

    /// What the upstream received from the request line holding `marker` on.
    fn received_from(&self, marker: &str) -> String {
        let all = String::from_utf8_lossy(&self.upstream.received()).into_owned();
        let at = all
            .find(marker)
            .unwrap_or_else(|| panic!("the upstream never got {marker}: {all}"));
        all[all[..at].rfind("\r\n").map_or(0, |i| i + 2)..].to_string()
    }
}

/// The header fields of the first head in `raw`, each as a CGI/WSGI upstream names it:
/// `HTTP_` + the name upper-cased with `-` as `_` (`X_Edgefilter_User` and `X-Edgefilter-User`
/// both become `HTTP_X_EDGEFILTER_USER`).
fn cgi_variables(raw: &str) -> Vec<(String, String)> {
    let head = raw.split("\r\n\r\n").next().unwrap();
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| {
            let var = format!("HTTP_{}", n.to_ascii_uppercase().replace('-', "_"));
            (var, v.trim().to_string())
        })
        .collect()
}

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

#[test]
fn identity_header_lookalikes_never_reach_the_upstream() {
    let edge = Edge::start();
    let r = edge.get(
        "/v1/echo/lookalikes",
        "X_Edgefilter_User: root\r\nX_Edgefilter_Tenant: root-tenant\r\n\
         X_Edgefilter_Key_Id: key_forged\r\nX-Edgefilter_User: root2\r\n\
         X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Host: forged.example\r\n\
         X_Request_Id: forged-id\r\nX_Upstream_Key: forged-credential\r\n\
         X_Custom_Thing: kept\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = edge.received_from("/v1/echo/lookalikes");
    for forged in ["root", "6.6.6.6", "forged"] {
        assert!(
            !got.contains(forged),
            "{forged} reached the upstream:\n{got}"
        );
    }
    // Underscore names that mean nothing to the proxy pass.
    assert!(got.contains("X_Custom_Thing: kept\r\n"), "{got}");
    // A CGI-style upstream sees one value per identity variable: the proxy's.
    let vars = cgi_variables(&got);
    let values = |var: &str| -> Vec<&str> {
        vars.iter()
            .filter(|(n, _)| n == var)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("HTTP_X_EDGEFILTER_USER"), ["alice"], "{got}");
    assert_eq!(values("HTTP_X_EDGEFILTER_TENANT"), ["acme"], "{got}");
    assert_eq!(values("HTTP_X_EDGEFILTER_KEY_ID").len(), 1, "{got}");
    assert_eq!(values("HTTP_X_FORWARDED_FOR"), ["127.0.0.1"], "{got}");
    assert_eq!(values("HTTP_X_UPSTREAM_KEY"), ["sk-upstream-real"], "{got}");
    assert_eq!(values("HTTP_X_REQUEST_ID").len(), 1, "{got}");
    assert!(!values("HTTP_X_REQUEST_ID")[0].contains("forged"), "{got}");
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
        ("/;x/admin/x", "path_empty_segment"),
        ("/v1/;jsessionid=1/x", "path_empty_segment"),
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

/// A chunked POST of `hello` to `path` with the key, its trailer section being `trailers`.
fn chunked(edge: &Edge, path: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: edge.example\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n",
        edge.key
    )
}

const RESERVED_TRAILERS: &str = "X-Edgefilter-User: root\r\nX_Edgefilter_Tenant: root-tenant\r\n\
    Authorization: Bearer stolen-credential\r\nX-Upstream-Key: forged\r\n\
    X-Forwarded-For: 6.6.6.6\r\nHost: forged.example\r\nContent-Length: 0\r\n\
    Transfer-Encoding: chunked\r\nX-Checksum: 5d41\r\n\r\n";

#[test]
fn trailers_are_parsed_as_headers_and_reserved_names_dropped() {
    let edge = Edge::start();
    // The whole request in one write, trailers and all.
    let raw = chunked(&edge, "/v1/echo/trailers-whole") + RESERVED_TRAILERS;
    let r = edge.send(raw.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let got = edge.received_from("/v1/echo/trailers-whole");
    let (_, trailers) = got.split_once("\r\n5\r\nhello\r\n0\r\n").expect("the body");
    assert_eq!(trailers, "X-Checksum: 5d41\r\n\r\n", "{got}");

    // The trailers trickling in after the head went upstream.
    let mut c = Client::connect(edge.daemon.http);
    c.send((chunked(&edge, "/v1/echo/trailers-late") + "X-Edgefilter-Us").as_bytes());
    std::thread::sleep(Duration::from_millis(200));
    let (first, rest) = RESERVED_TRAILERS.split_at(40);
    c.send(first.as_bytes());
    std::thread::sleep(Duration::from_millis(100));
    c.send(rest.as_bytes());
    let r = c.read(false);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = edge.received_from("/v1/echo/trailers-late");
    let (_, trailers) = got.split_once("\r\n5\r\nhello\r\n0\r\n").expect("the body");
    assert_eq!(trailers, "X-Checksum: 5d41\r\n\r\n", "{got}");
    assert!(!got.contains("stolen") && !got.contains("root"), "{got}");
}

#[test]
fn a_request_line_in_the_trailers_is_refused_and_never_forwarded() {
    let edge = Edge::start();
    let smuggled = "GET /admin/pwned HTTP/1.1\r\nHost: edge.example\r\n\
                    Authorization: Bearer stolen-credential\r\n\r\n";
    // With the head, and after it (the head already upstream, the request never completed).
    for (path, late) in [
        ("/v1/echo/smuggle-whole", false),
        ("/v1/echo/smuggle-late", true),
    ] {
        let mut c = Client::connect(edge.daemon.http);
        if late {
            c.send(chunked(&edge, path).as_bytes());
            std::thread::sleep(Duration::from_millis(200));
            c.w.write_all(smuggled.as_bytes()).unwrap();
        } else {
            c.send((chunked(&edge, path) + smuggled).as_bytes());
        }
        let r = c.read(false);
        let v = json(&r);
        assert_eq!(
            (
                r.status,
                v["error"]["code"].as_str(),
                v["error"]["rule"].as_str()
            ),
            (400, Some("BAD_REQUEST"), Some("trailer_section")),
            "{path}: {}",
            r.text()
        );
        assert!(c.closed(), "{path}: the connection stays open");
    }
    std::thread::sleep(Duration::from_millis(200));
    let all = String::from_utf8_lossy(&edge.upstream.received()).into_owned();
    assert!(!all.contains("smuggle-whole"), "{all}");
    assert!(
        !all.contains("pwned") && !all.contains("stolen"),
        "the smuggled request reached the upstream:\n{all}"
    );
    // The late one's head went upstream, but its body never ended there.
    assert!(all.ends_with("5\r\nhello\r\n0\r\n"), "{all}");
}

/// A gate that allows every request as `acme`/`alice` with key id `key_id`, lent as the key
/// cache lends it. (Tenant and user names cannot hold a control byte: their types refuse it;
/// the key id is the one identity field still a plain string.)
struct Lends {
    key_id: String,
    tenant: TenantName,
    user: UserName,
}

impl Gate for Lends {
    fn check(&mut self, _req: &GateRequest<'_>) -> Verdict<'_> {
        Verdict::Allow(Some(Identity {
            key_id: &self.key_id,
            tenant: &self.tenant,
            user: &self.user,
            rate: None,
        }))
    }
}

#[test]
fn a_control_byte_in_an_identity_is_answered_500_and_never_forwarded() {
    let key_id =
        "key_1\r\nX-Edgefilter-Tenant: root\r\nContent-Length: 0\r\n\r\nGET /admin/pwned HTTP/1.1";
    let env = Env::with_gates(
        "",
        Box::new(move |_| {
            Box::new(Lends {
                key_id: key_id.to_string(),
                tenant: TenantName::parse("acme").unwrap(),
                user: UserName::parse("alice").unwrap(),
            })
        }),
    );
    let r = env
        .connect()
        .call("GET /v1/echo HTTP/1.1\r\nHost: h\r\n\r\n");
    let v = json(&r);
    assert_eq!(
        (r.status, v["error"]["code"].as_str()),
        (500, Some("INTERNAL")),
        "{}",
        r.text()
    );
    let hint = v["error"]["hint"].as_str().unwrap_or("");
    assert!(hint.contains("X-Edgefilter-Key-Id"), "{hint}");
    assert!(!r.text().contains("pwned"), "{}", r.text());
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        env.up.received().is_empty(),
        "forwarded: {}",
        String::from_utf8_lossy(&env.up.received())
    );
}
