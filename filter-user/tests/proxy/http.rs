//! HTTP/1.1 semantics through the proxy against a real origin: forwarding headers, request ids,
//! key stripping and credential injection, keep-alive, pipelining, HEAD/204/304, chunked both
//! ways, `Expect: 100-continue` (curl), `Connection: close`, routes, and gate answers.

use std::process::Command;
use std::sync::Arc;

use edgefilter::codes::ErrorCode;
use edgefilter::gate::{Denial, Gate, GateRequest, Identity, RateInfo, Verdict};
use edgefilter::names::{TenantName, UserName};

use crate::support::proxy_env::{Env, get};

#[test]
fn forwards_with_forwarding_headers_and_request_ids() {
    let env = Env::new("");
    let mut c = env.connect();
    let r = c.call(
        "GET /a/echo?x=1 HTTP/1.1\r\nHost: client.example\r\nX-Request-Id: caller-id.1\r\n\
         Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Edgefilter-User: forged\r\nProxy-Authorization: x\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id").as_deref(), Some("caller-id.1"));
    assert_eq!(r.header("x-upstream").as_deref(), Some("yes"));
    let seen = r.text().to_ascii_lowercase();
    assert!(seen.starts_with("get /a/echo?x=1 http/1.1\r\n"), "{seen}");
    assert!(seen.contains("x-request-id: caller-id.1\r\n"));
    assert!(
        seen.contains("x-forwarded-for: 127.0.0.1\r\n"),
        "untrusted XFF replaced: {seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\r\n"));
    assert!(seen.contains("x-forwarded-host: client.example\r\n"));
    assert!(seen.contains(&format!("host: {}\r\n", env.up.addr)));
    for gone in [
        "x-hop",
        "keep-alive",
        "connection",
        "6.6.6.6",
        "forged",
        "proxy-authorization",
    ] {
        assert!(!seen.contains(gone), "{gone} forwarded: {seen}");
    }
    // An insane caller id is replaced by a made one, on the answer and upstream alike.
    let r = c.call("GET /echo HTTP/1.1\r\nHost: h\r\nX-Request-Id: has space\r\n\r\n");
    let id = r.header("x-request-id").expect("made id");
    assert!(
        id.len() >= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{id}"
    );
    assert!(r.text().contains(&format!("X-Request-Id: {id}\r\n")));
    let r2 = c.call(&get("/echo"));
    assert_ne!(r2.header("x-request-id"), Some(id));
}

#[test]
fn keys_are_stripped_and_the_upstream_credential_injected() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("upstream.key");
    std::fs::write(&secret, "sk-upstream-secret\n").unwrap();
    let env = Env::new(&format!(
        "[[route]]\nprefix = \"/v1/\"\nupstream = \"http://UPSTREAM\"\nkey_in_query = true\n\
         inject_header = {{ name = \"Authorization\", value = \"@{}\" }}\n\
         [[route]]\nprefix = \"/raw/\"\nupstream = \"http://UPSTREAM\"\nstrip_key = false\n\
         [[route]]\nprefix = \"/env/\"\nupstream = \"http://UPSTREAM\"\n\
         inject_header = {{ name = \"X-Upstream-Auth\", value = \"Bearer ${{HOME}}\" }}\n",
        secret.display()
    ));
    let mut c = env.connect();
    let r = c.call(
        "GET /v1/echo?a=1&api_key=ef_live_clientkey&b=2 HTTP/1.1\r\nHost: h\r\n\
         Authorization: Bearer ef_live_clientkey\r\nX-API-Key: ef_live_clientkey\r\n\r\n",
    );
    let seen = r.text();
    assert!(
        seen.starts_with("GET /v1/echo?a=1&b=2 HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(
        !seen.contains("ef_live_clientkey"),
        "client key forwarded: {seen}"
    );
    assert!(
        seen.contains("Authorization: sk-upstream-secret\r\n"),
        "{seen}"
    );
    let r = c.call("GET /raw/echo HTTP/1.1\r\nHost: h\r\nX-API-Key: ef_live_kept\r\n\r\n");
    assert!(r.text().contains("X-API-Key: ef_live_kept\r\n"));
    let home = std::env::var("HOME").unwrap();
    let r = c.call("GET /env/echo HTTP/1.1\r\nHost: h\r\nX-Upstream-Auth: mine\r\n\r\n");
    let seen = r.text();
    assert!(
        seen.contains(&format!("X-Upstream-Auth: Bearer {home}\r\n")),
        "{seen}"
    );
    assert!(!seen.contains("mine"));
}

#[test]
fn keep_alive_reuses_upstream_and_pipelining_answers_in_order() {
    let env = Env::new("");
    let mut c = env.connect();
    for i in 0..5 {
        let r = c.call(&get(&format!("/echo/{i}")));
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        env.up.connections(),
        1,
        "one upstream connection for a keep-alive client"
    );
    // Ten pipelined requests in one write, mixed with bodies.
    let mut batch = String::new();
    for i in 0..10 {
        if i % 3 == 0 {
            batch.push_str(&format!(
                "POST /echo/{i} HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nb{i:02}"
            ));
        } else {
            batch.push_str(&get(&format!("/echo/{i}")));
        }
    }
    c.send(batch.as_bytes());
    for i in 0..10 {
        let r = c.read(false);
        let text = r.text();
        assert!(
            text.contains(&format!("/echo/{i} HTTP/1.1")),
            "answer {i} out of order: {text}"
        );
        if i % 3 == 0 {
            assert!(text.ends_with(&format!("b{i:02}")));
        }
    }
}

#[test]
fn head_204_304_and_close_have_the_right_shapes() {
    let env = Env::new("");
    let mut c = env.connect();
    let r = c.call("HEAD /echo HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some());
    let r = c.call(&get("/status/204"));
    assert_eq!(r.status, 204);
    let r = c.call(&get("/status/304"));
    assert_eq!(r.status, 304);
    // The connection is still in sync after bodiless answers.
    let r = c.call(&get("/status/200"));
    assert_eq!((r.status, r.text().as_str()), (200, "12345"));
    let r = c.call(&get("/chunked"));
    assert_eq!(r.text(), "hello world");
    assert!(r.head.contains("X-Sum: 11"), "trailer passed: {}", r.head);
    // An until-close answer closes the client connection too.
    let r = c.call(&get("/close"));
    assert_eq!(r.text(), "until close");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    // Connection: close from the client is honoured.
    let mut c = env.connect();
    let r = c.call("GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(c.closed());
    // HTTP/1.0 without keep-alive closes too.
    let mut c = env.connect();
    let r = c.call("GET /echo HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("GET /echo HTTP/1.0\r\n"),
        "{}",
        r.text()
    );
    assert!(c.closed());
}

#[test]
fn chunked_request_bodies_are_forwarded_and_curl_expect_continue_works() {
    let env = Env::new("");
    let mut c = env.connect();
    let r = c.call(
        "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
         4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nX-T: 1\r\n\r\n",
    );
    let seen = r.text();
    assert!(seen.contains("Transfer-Encoding: chunked\r\n"), "{seen}");
    assert!(seen.ends_with("wikipedia"), "{seen}");
    // A raw client waiting for `100 Continue` gets it (with its request id) before sending.
    let mut c = env.connect();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\
          X-Request-Id: cont-1\r\n\r\n",
    );
    let interim = c.read(false);
    assert_eq!(interim.status, 100);
    assert_eq!(interim.header("x-request-id").as_deref(), Some("cont-1"));
    c.send(b"hello");
    let r = c.read(false);
    assert!(r.text().ends_with("hello"), "{}", r.text());
    assert!(!r.text().to_ascii_lowercase().contains("expect:"));
    // curl sends `Expect: 100-continue` for bodies over 1 MiB.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, vec![b'x'; 3 << 20]).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{}/count", env.addr))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), (3 << 20).to_string());
}

#[test]
fn no_route_is_404_before_the_gate() {
    struct Panics;
    impl Gate for Panics {
        fn check(&mut self, _: &GateRequest<'_>) -> Verdict<'_> {
            panic!("gate called for an unrouted path");
        }
    }
    let env = Env::with_gates(
        "[[route]]\nprefix = \"/v1/\"\nupstream = \"http://UPSTREAM\"\n",
        Box::new(|_| Box::new(Panics)),
    );
    let mut c = env.connect();
    let r = c.call(&get("/nope"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "NO_ROUTE");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        r.json()["error"]["request_id"].as_str(),
        r.header("x-request-id").as_deref()
    );
}

/// Denies by path, allows `/ok` with an identity lent from its own names; sees borrowed
/// headers.
struct ByPath {
    tenant: TenantName,
    user: UserName,
}

impl ByPath {
    fn new() -> Self {
        Self {
            tenant: TenantName::parse("acme").unwrap(),
            user: UserName::parse("alice").unwrap(),
        }
    }
}

impl Gate for ByPath {
    fn check(&mut self, req: &GateRequest<'_>) -> Verdict<'_> {
        let has_key = req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("x-api-key"));
        match req.path {
            "/ok/echo" if has_key => Verdict::Allow(Some(Identity {
                key_id: "key_abc",
                tenant: &self.tenant,
                user: &self.user,
                rate: None,
            })),
            "/ok/echo" => Verdict::Deny(Denial::new(ErrorCode::MissingKey)),
            "/expired" => {
                let mut d = Denial::new(ErrorCode::KeyExpired);
                d.hint = Some("rotate the key".into());
                d.key_id = Some(Arc::from("key_abc"));
                Verdict::Deny(d)
            }
            _ => {
                let mut d = Denial::new(ErrorCode::RateLimited);
                d.rate = Some(RateInfo {
                    limit: 5,
                    remaining: 0,
                    reset_secs: 2,
                });
                Verdict::Deny(d)
            }
        }
    }
}

#[test]
fn gate_verdicts_are_forwarded_or_answered_per_spec() {
    let env = Env::with_gates("", Box::new(|_| Box::new(ByPath::new())));
    let mut c = env.connect();
    let r = c.call("GET /ok/echo HTTP/1.1\r\nHost: h\r\nX-API-Key: ef_live_x\r\n\r\n");
    let seen = r.text();
    for h in [
        "X-Edgefilter-Key-Id: key_abc",
        "X-Edgefilter-Tenant: acme",
        "X-Edgefilter-User: alice",
    ] {
        assert!(seen.contains(h), "{h}: {seen}");
    }
    let r = c.call(&get("/ok/echo"));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"edgefilter\"")
    );
    assert_eq!(r.json()["error"]["code"], "MISSING_KEY");
    let r = c.call(&get("/expired"));
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"edgefilter\", error=\"invalid_token\"")
    );
    let v = r.json();
    assert_eq!(v["error"]["code"], "KEY_EXPIRED");
    assert_eq!(v["error"]["hint"], "rotate the key");
    assert_eq!(v["error"]["key_id"], "key_abc");
    let r = c.call(&get("/limited"));
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("2"));
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some("\"key-rate\";q=5;w=1")
    );
    assert_eq!(
        r.header("ratelimit").as_deref(),
        Some("\"key-rate\";r=0;t=2")
    );
    // Denied requests never reach the origin; the connection stays usable.
    assert_eq!(env.up.heads().len(), 1);
    assert_eq!(c.call(&get("/ok/echo")).status, 401);

    let env = Env::with_gates(
        "[keys]\nerrors = \"opaque\"\n",
        Box::new(|_| Box::new(ByPath::new())),
    );
    let r = env.connect().call(&get("/expired"));
    let v = r.json();
    assert_eq!(v["error"]["code"], "INVALID_CREDENTIALS");
    assert!(v["error"].get("hint").is_none() && v["error"].get("key_id").is_none());
}
