//! The admin API server in-process with a recording fake `AdminOps`: every endpoint of
//! `docs/openapi.yaml` is called and its real response validated against the document; requests
//! without or with a wrong token get 401 and reach no operation; every change is handed the
//! actor the audit trail records; a paused server (a hand-over) answers an open connection's
//! next request as its last and accepts nothing until resumed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use edgefilter::admin::{
    AdminClient, AdminHandle, AdminOps, AdminServer, AdminToken, AllowlistRequest, ApiError,
    AuditQuery, CreateKeyRequest, CreditsRequest, DenylistRequest, ExplainRequest, ListKeysQuery,
    OpFuture, Readiness, RotateRequest, UserAction,
};
use edgefilter::config::Config;
use edgefilter::store::Actor;
use serde_json::{Value, json};

use crate::support::openapi::{assert_documented, check, openapi};
use crate::support::ports;

/// Records every call (and the actor of every change); answers with fixtures shaped like the
/// real thing.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    actors: Mutex<Vec<String>>,
}

impl Fake {
    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }
    fn by(&self, actor: &Actor) {
        self.actors
            .lock()
            .expect("actors")
            .push(actor.as_str().to_owned());
    }
    fn actors(&self) -> Vec<String> {
        self.actors.lock().expect("actors").clone()
    }
    fn answer(&self, call: String, v: Value) -> OpFuture<'_> {
        self.record(call);
        Box::pin(async move { Ok(v) })
    }
}

fn key_json(id: &str, status: &str) -> Value {
    json!({
        "id": id, "tenant": "acme", "user": "alice", "status": status, "env": "live",
        "scopes": ["ai:invoke"], "expires_at": "2027-01-01T00:00:00Z", "not_before": null,
        "created_at": "2026-11-28T00:00:00Z", "allowed_cidrs": ["198.18.0.0/15"],
        "rate": 10, "burst": 20, "grace_until": null
    })
}

fn ban_json(source: &str, reason: &str) -> Value {
    json!({
        "source": source, "reason": reason, "expires_at": "2026-11-28T00:10:00Z",
        "expires_in_s": 600, "created_at": "2026-11-28T00:00:00Z", "host": "edge-1"
    })
}

fn created(id: &str) -> Value {
    let mut v = key_json(id, "active");
    v["key"] = json!("ef_live_0123456789abcdefghijABCDEFGHIJ012345");
    v["revision"] = json!(7);
    v
}

impl AdminOps for Fake {
    fn create_key(&self, by: Actor, req: CreateKeyRequest) -> OpFuture<'_> {
        self.by(&by);
        self.answer(
            format!(
                "create_key {} {}",
                req.tenant.unwrap_or_default(),
                req.user.unwrap_or_default()
            ),
            created("key_0123456789ab"),
        )
    }
    fn list_keys(&self, q: ListKeysQuery) -> OpFuture<'_> {
        let v = json!([key_json("key_0123456789ab", "active")]);
        self.answer(format!("list_keys {:?}", q.tenant), v)
    }
    fn show_key(&self, id: String) -> OpFuture<'_> {
        if id == "key_missing00000" {
            self.record(format!("show_key {id}"));
            return Box::pin(async { Err(ApiError::not_found("No such key.")) });
        }
        let v = key_json(&id, "active");
        self.answer(format!("show_key {id}"), v)
    }
    fn revoke_key(&self, by: Actor, id: String) -> OpFuture<'_> {
        self.by(&by);
        let v = json!({"revision": 8, "key": key_json(&id, "revoked")});
        self.answer(format!("revoke_key {id}"), v)
    }
    fn rotate_key(&self, by: Actor, id: String, req: RotateRequest) -> OpFuture<'_> {
        self.by(&by);
        let mut old = key_json(&id, "active");
        old["grace_until"] = json!("2026-11-29T00:00:00Z");
        let v = json!({"revision": 9, "old": old, "new": created("key_newnewnewnew")});
        self.answer(format!("rotate_key {id} {:?}", req.grace), v)
    }
    fn approve_key(&self, by: Actor, id: String) -> OpFuture<'_> {
        self.by(&by);
        let v = json!({"revision": 10, "key": key_json(&id, "active")});
        self.answer(format!("approve_key {id}"), v)
    }
    fn key_credits(&self, by: Actor, id: String, _req: CreditsRequest) -> OpFuture<'_> {
        self.by(&by);
        let v = json!({"revision": 10, "key": key_json(&id, "active")});
        self.answer(format!("key_credits {id}"), v)
    }
    fn user_action(&self, by: Actor, user: String, action: UserAction) -> OpFuture<'_> {
        self.by(&by);
        let status = match action {
            UserAction::Suspend => "suspended",
            UserAction::Activate => "active",
            UserAction::Delete => "deleted",
        };
        let v = json!({"revision": 11, "user": user, "status": status, "keys": 2});
        self.answer(format!("user_action {user} {action:?}"), v)
    }
    fn allowlist(&self) -> OpFuture<'_> {
        self.answer("allowlist".into(), json!({"cidrs": ["198.18.0.0/15"]}))
    }
    fn allowlist_add(&self, by: Actor, req: AllowlistRequest) -> OpFuture<'_> {
        self.by(&by);
        let v = json!({"cidrs": ["198.18.0.0/15", req.cidr.to_string()]});
        self.answer(format!("allowlist_add {}", req.cidr), v)
    }
    fn allowlist_remove(&self, by: Actor, req: AllowlistRequest) -> OpFuture<'_> {
        self.by(&by);
        self.answer(
            format!("allowlist_remove {}", req.cidr),
            json!({"cidrs": []}),
        )
    }
    fn denylist(&self) -> OpFuture<'_> {
        self.answer(
            "denylist".into(),
            json!([ban_json("198.18.0.2", "autoblock")]),
        )
    }
    fn denylist_add(&self, by: Actor, req: DenylistRequest) -> OpFuture<'_> {
        self.by(&by);
        self.answer(
            format!("denylist_add {} {:?}", req.source, req.duration),
            ban_json(&req.source, "manual"),
        )
    }
    fn denylist_remove(&self, by: Actor, req: DenylistRequest) -> OpFuture<'_> {
        self.by(&by);
        self.answer(format!("denylist_remove {}", req.source), json!([]))
    }
    fn explain(&self, req: ExplainRequest) -> OpFuture<'_> {
        let v = json!({"decision": "deny", "code": "KEY_REVOKED", "status": 401, "rule": null,
        "key_id": "key_0123456789ab", "verdict": "verdict: DENY KEY_REVOKED 401",
        "request": {"method": "GET", "path": null, "ip": "198.18.0.1",
            "at": "2026-11-28T00:00:00Z", "environment": "live", "route": null},
        "checks": [
            {"check": "format", "result": "pass", "passed": true, "code": null, "status": null,
             "answer": false, "rule": null, "detail": "well-formed", "fix": null, "command": null},
            {"check": "revoked", "result": "fail", "passed": false, "code": "KEY_REVOKED",
             "status": 401, "answer": true, "rule": null, "detail": "revoked",
             "fix": "edgefilter keys create --like key_0123456789ab",
             "command": "edgefilter keys create --like key_0123456789ab"}
        ]});
        self.answer(format!("explain {:?}", req.ip), v)
    }
    fn audit(&self, q: AuditQuery) -> OpFuture<'_> {
        let v = json!([{"at": "2026-11-28T00:00:00Z", "actor": "admin@127.0.0.1",
            "action": "key.revoke", "object": "key_0123456789ab", "result": "ok", "host": "edge-1"}]);
        self.answer(format!("audit {:?} {:?}", q.since, q.limit), v)
    }
    fn stats(&self) -> OpFuture<'_> {
        let v = json!({
            "at": "2026-11-28T00:00:00Z",
            "requests": [{"route": "/v1/", "code": "OK", "count": 3},
                {"route": "(none)", "code": "NO_ROUTE", "count": 1}],
            "upstream_errors": [{"route": "/v1/", "class": "connect", "count": 1}],
            "xdp": [{"action": "drop", "reason": "not_allowlisted", "packets": 12}],
            "propagation": {"samples": 2, "p99_seconds": 0.00005, "p99_beyond_buckets": false},
            "store": {"kind": "sqlite", "revision": 7, "lag_seconds": null},
            "bans": [],
            "denials": {"window_seconds": 60, "counted": 2, "complete": true,
                "top_keys": [{"key_id": "key_0123456789ab", "count": 1, "codes": {"KEY_REVOKED": 1}}],
                "top_sources": [{"source": "198.18.0.1", "count": 2,
                    "codes": {"KEY_REVOKED": 1, "MALFORMED_KEY": 1}}]}
        });
        self.answer("stats".into(), v)
    }
    fn metrics(&self) -> String {
        "# edgefilter metrics are wired in a later issue\n".into()
    }
}

struct Running {
    fake: Arc<Fake>,
    ready: Arc<Readiness>,
    handle: AdminHandle,
    client: AdminClient,
    token: String,
    _dir: tempfile::TempDir,
}

fn start() -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_path = dir.path().join("admin.token");
    let token = AdminToken::load_or_create(&token_path).expect("token");
    let fake = Arc::new(Fake::default());
    let ready = Arc::new(Readiness::new());
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        token.clone(),
        Arc::clone(&fake) as Arc<dyn AdminOps>,
        Arc::clone(&ready),
    )
    .expect("bind");
    // `POST /v1/reload` is the daemon's to serve: here a hook that records it on the fake.
    let reloads = Arc::clone(&fake);
    let server = server.on_reload(Arc::new(move |by: Actor| {
        reloads.by(&by);
        reloads.record("reload".to_owned());
        Box::pin(async move {
            Ok(
                json!({"reloaded": true, "config": "/etc/edgefilter/edgefilter.toml",
                "applied": ["keys.errors"], "needs_restart": [], "tls": "not served"}),
            )
        })
    }));
    let handle = server.spawn().expect("spawn");
    let secret = token.expose().to_string();
    let client = AdminClient::new(handle.local_addr(), token);
    assert!(
        !format!("{client:?}").contains(&secret),
        "Debug must not show the token"
    );
    Running {
        token: secret,
        fake,
        ready,
        handle,
        client,
        _dir: dir,
    }
}

/// The OpenAPI document as JSON.
/// A request body valid for each operation that takes one.
fn sample_body(path: &str, method: &str) -> Option<Value> {
    match (path, method) {
        ("/v1/keys", "post") => Some(json!({"tenant": "acme", "user": "alice",
            "scopes": ["ai:invoke"], "expires": "90d", "allowed_cidrs": ["198.18.0.0/15"],
            "rate": 10, "burst": 20})),
        ("/v1/keys/{id}/rotate", "post") => Some(json!({"grace": "24h"})),
        ("/v1/keys/{id}/credits", "post") => Some(json!({"add": 100})),
        ("/v1/allowlist", "post" | "delete") => Some(json!({"cidr": "fd00:ef::/64"})),
        ("/v1/denylist", "post") => Some(json!({"source": "198.18.0.2", "for": "10m"})),
        ("/v1/denylist", "delete") => Some(json!({"source": "fd00:ef::/64"})),
        ("/v1/explain", "post") => Some(json!({"key": "ef_live_notarealkey", "ip": "198.18.0.1",
            "method": "POST", "path": "/v1/chat"})),
        _ => None,
    }
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "key_0123456789ab")
        .replace("{user}", "alice")
}

/// Every documented (path, method).
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in ["get", "post", "delete", "put", "patch"] {
            if item.get(m).is_some() {
                ops.push((path.clone(), m.to_string()));
            }
        }
    }
    ops
}

fn is_public(doc: &Value, path: &str, method: &str) -> bool {
    doc["paths"][path][method]
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
}

/// One raw HTTP/1.1 request (no client-side help at all); returns status, headers, body.
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").expect("response head");
    let status = h[9..12].parse().expect("status");
    (
        status,
        h.to_ascii_lowercase(),
        serde_json::from_str(b).unwrap_or(Value::Null),
    )
}

#[test]
fn every_documented_endpoint_answers_as_documented() {
    let doc = openapi();
    let run = start();
    run.ready.set_xdp(true);
    run.ready.set_store(true);
    run.ready.set_shards(true);
    let ops = operations(&doc);
    assert_eq!(ops.len(), 23, "SPEC §7 has 23 operations so far: {ops:?}");
    for (path, method) in &ops {
        let body = sample_body(path, method);
        let before = run.fake.calls().len();
        let (status, v) = run
            .client
            .call(&method.to_uppercase(), &concrete(path), body.as_ref())
            .expect("call");
        assert_documented(&doc, path, method, status, &v);
        let expected = if method == "post" && path == "/v1/keys" {
            201
        } else {
            200
        };
        assert_eq!(status, expected, "{method} {path}: {v}");
        let made = run.fake.calls().len() - before;
        let expect_call = !is_public(&doc, path, method) || path == "/metrics";
        assert_eq!(
            made,
            usize::from(expect_call && path != "/metrics"),
            "{method} {path}"
        );
    }
    let calls = run.fake.calls();
    for want in [
        "create_key acme alice",
        "list_keys None",
        "revoke_key key_0123456789ab",
        "rotate_key key_0123456789ab Some(\"24h\")",
        "key_credits key_0123456789ab",
        "user_action alice Delete",
        "allowlist_remove fd00:ef::/64",
        "denylist",
        "denylist_add 198.18.0.2 Some(\"10m\")",
        "denylist_remove fd00:ef::/64",
        "explain Some(198.18.0.1)",
        "audit None None",
        "stats",
        "reload",
    ] {
        assert!(calls.iter().any(|c| c == want), "{want} not in {calls:?}");
    }
    // Every change was handed its actor: the token's holder at the caller's address.
    let actors = run.fake.actors();
    assert_eq!(actors.len(), 13, "{actors:?}");
    assert!(actors.iter().all(|a| a == "admin@127.0.0.1"), "{actors:?}");
    let (_, metrics) = run.client.call("GET", "/metrics", None).expect("metrics");
    assert!(metrics.as_str().is_some_and(|m| m.contains("later issue")));
}

#[test]
fn without_or_with_a_wrong_token_nothing_happens() {
    let doc = openapi();
    let run = start();
    let addr = run.handle.local_addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong_path = dir.path().join("wrong.token");
    std::fs::write(&wrong_path, "0".repeat(64)).expect("write");
    let wrong = AdminClient::new(addr, AdminToken::load(&wrong_path).expect("load"));
    let real = run.client.clone();
    for (path, method) in operations(&doc) {
        if is_public(&doc, &path, &method) {
            continue;
        }
        let body = sample_body(&path, &method)
            .map(|b| b.to_string())
            .unwrap_or_default();
        let m = method.to_uppercase();
        let p = concrete(&path);
        let head = format!(
            "{m} {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (status, headers, v) = raw(addr, &head, body.as_bytes());
        assert_eq!(status, 401, "{m} {p} without a token");
        assert!(headers.contains("www-authenticate: bearer"), "{headers}");
        assert_documented(&doc, &path, &method, status, &v);
        assert_eq!(v["error"]["code"], "UNAUTHORIZED");
        let (status, v) = wrong
            .call(&m, &p, sample_body(&path, &method).as_ref())
            .expect("call");
        assert_eq!(status, 401, "{m} {p} with a wrong token");
        assert_documented(&doc, &path, &method, status, &v);
        // A prefix of the right token, other schemes, and an empty bearer are wrong too.
        let tok = run.token.clone();
        for auth in [&tok[..10], &format!("{tok}0"), ""] {
            let head = format!(
                "{m} {p} HTTP/1.1\r\nAuthorization: Bearer {auth}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            );
            assert_eq!(
                raw(addr, &head, b"").0,
                401,
                "{m} {p} Bearer {}…",
                auth.len()
            );
        }
        let head = format!(
            "{m} {p} HTTP/1.1\r\nAuthorization: Basic {tok}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(raw(addr, &head, b"").0, 401);
    }
    assert!(
        run.fake.calls().is_empty(),
        "no operation may run: {:?}",
        run.fake.calls()
    );
    // Unknown paths answer 401 too without the token (nothing is revealed), 404 with it.
    let head = "GET /v1/secrets HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(addr, head, b"").0, 401);
    let (status, v) = real.call("GET", "/v1/secrets", None).expect("call");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    // The right token, any case of the scheme: the operation runs.
    let tok = run.token.clone();
    let head = format!(
        "POST /v1/keys/key_0123456789ab/revoke HTTP/1.1\r\nAuthorization: bearer {tok}\r\nConnection: close\r\n\r\n"
    );
    let (status, _, v) = raw(addr, &head, b"");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        run.fake.calls(),
        vec!["revoke_key key_0123456789ab".to_string()]
    );
}

#[test]
fn bad_requests_are_json_errors_without_echoing_values() {
    let doc = openapi();
    let run = start();
    let c = &run.client;
    let cases: [(&str, &str, Value, u16); 5] = [
        ("POST", "/v1/keys", json!({"tenant": "acme"}), 400),
        (
            "POST",
            "/v1/keys",
            json!({"tenant": "a", "user": "b", "colour": "red"}),
            400,
        ),
        (
            "POST",
            "/v1/allowlist",
            json!({"cidr": "ef_live_SECRETSECRET"}),
            400,
        ),
        (
            "POST",
            "/v1/explain",
            json!({"key": "ef_live_SECRETSECRET", "ip": "ef_live_SECRETSECRET"}),
            400,
        ),
        (
            "POST",
            "/v1/keys",
            json!({"tenant": "a", "user": "b", "rate": "ef_live_SECRETSECRET"}),
            400,
        ),
    ];
    for (m, p, body, want) in cases {
        let (status, v) = c.call(m, p, Some(&body)).expect("call");
        assert_eq!(status, want, "{m} {p} {body}: {v}");
        assert_documented(&doc, p, &m.to_lowercase(), status, &v);
        assert!(!v.to_string().contains("SECRET"), "a value was echoed: {v}");
    }
    let big = json!({"key": "k".repeat(70_000)});
    let (status, v) = c.call("POST", "/v1/explain", Some(&big)).expect("call");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE"))
    );
    let (status, v) = c.call("GET", "/v1/explain", None).expect("call");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (405, Some("METHOD_NOT_ALLOWED"))
    );
    let (status, v) = c.call("GET", "/v1/keys?owner=x", None).expect("call");
    assert_eq!(status, 400, "{v}");
    let (status, v) = c
        .call("GET", "/v1/keys/key_missing00000", None)
        .expect("call");
    assert_eq!(status, 404);
    assert_documented(&doc, "/v1/keys/{id}", "get", status, &v);
    let (status, _) = c
        .call("GET", "/v1/keys?tenant=acme%20corp", None)
        .expect("call");
    assert_eq!(status, 200);
    assert!(
        run.fake
            .calls()
            .contains(&"list_keys Some(\"acme corp\")".to_string())
    );
    // Rotate without a body uses the default grace.
    let (status, _) = c
        .call("POST", "/v1/keys/key_0123456789ab/rotate", None)
        .expect("call");
    assert_eq!(status, 200);
    assert!(
        run.fake
            .calls()
            .contains(&"rotate_key key_0123456789ab None".to_string())
    );
}

/// `GET /v1/audit?since=…&limit=…`: the query reaches the operation parsed, a bad one is a
/// documented 400; a change names the actor the caller says it acts for, if plain.
#[test]
fn audit_queries_are_parsed_and_actors_carry_the_claim() {
    let doc = openapi();
    let run = start();
    let c = &run.client;
    let now = edgefilter::store::unix_now();
    let (status, v) = c
        .call("GET", "/v1/audit?since=2027-01-31T00:00:00Z&limit=5", None)
        .expect("call");
    assert_eq!(status, 200, "{v}");
    assert_documented(&doc, "/v1/audit", "get", status, &v);
    let (status, _) = c.call("GET", "/v1/audit?since=1h", None).expect("call");
    assert_eq!(status, 200);
    let calls = run.fake.calls();
    assert_eq!(calls[0], "audit Some(1801353600) Some(5)");
    let since: i64 = calls[1]
        .strip_prefix("audit Some(")
        .and_then(|r| r.strip_suffix(") None"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{calls:?}"));
    assert!(
        (now - 3600..=now - 3600 + 60).contains(&since),
        "{since} vs {now}"
    );
    for bad in [
        "/v1/audit?since=yesterday",
        "/v1/audit?limit=0",
        "/v1/audit?limit=many",
        "/v1/audit?limit=100001",
        "/v1/audit?who=me",
    ] {
        let (status, v) = c.call("GET", bad, None).expect("call");
        assert_eq!(status, 400, "{bad}: {v}");
        assert_documented(&doc, "/v1/audit", "get", status, &v);
    }
    assert_eq!(
        run.fake.calls().len(),
        2,
        "a bad query reaches no operation"
    );

    let addr = run.handle.local_addr();
    let tok = &run.token;
    for (claim, want) in [
        (
            "cli:root (sudo alice)",
            "admin@127.0.0.1 for cli:root (sudo alice)",
        ),
        ("root; admin=yes", "admin@127.0.0.1"),
    ] {
        let head = format!(
            "POST /v1/keys/key_0123456789ab/revoke HTTP/1.1\r\nAuthorization: Bearer {tok}\r\nX-Edgefilter-Actor: {claim}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(raw(addr, &head, b"").0, 200);
        assert_eq!(run.fake.actors().last().map(String::as_str), Some(want));
    }
    let c = run.client.clone().on_behalf_of("cli:bob");
    let (status, _) = c.call("POST", "/v1/users/bob/suspend", None).expect("call");
    assert_eq!(status, 200);
    assert_eq!(
        run.fake.actors().last().map(String::as_str),
        Some("admin@127.0.0.1 for cli:bob")
    );
}

#[test]
fn readyz_needs_xdp_store_and_shards() {
    let doc = openapi();
    let run = start();
    let c = &run.client;
    let steps: [(&dyn Fn(), u16); 4] = [
        (&|| {}, 503),
        (&|| run.ready.set_xdp(true), 503),
        (&|| run.ready.set_store(true), 503),
        (&|| run.ready.set_shards(true), 200),
    ];
    for (step, want) in steps {
        step();
        let (status, v) = c.call("GET", "/readyz", None).expect("readyz");
        assert_eq!(status, want, "{v}");
        assert_documented(&doc, "/readyz", "get", status, &v);
        assert_eq!(v["ready"], Value::Bool(want == 200));
    }
    // A store that cannot take changes makes the daemon unready, with the reason.
    run.ready
        .set_store_problem(Some("key store /x/keys.db was deleted: gone".into()));
    let (status, v) = c.call("GET", "/readyz", None).expect("readyz");
    assert_eq!(status, 503, "{v}");
    assert_documented(&doc, "/readyz", "get", status, &v);
    assert_eq!(v["store"], false, "{v}");
    assert_eq!(
        v["reasons"],
        json!(["store: key store /x/keys.db was deleted: gone"]),
        "{v}"
    );
    run.ready.set_store_problem(None);
    let (status, v) = c.call("GET", "/readyz", None).expect("readyz");
    assert_eq!((status, &v["reasons"]), (200, &json!([])), "{v}");
    let (status, v) = c.call("GET", "/healthz", None).expect("healthz");
    assert_eq!((status, v), (200, json!({"status": "ok"})));
    // The caller's request id is kept; a missing one is generated.
    let head = "GET /healthz HTTP/1.1\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n";
    let (_, headers, _) = raw(run.handle.local_addr(), head, b"");
    assert!(headers.contains("x-request-id: abc-123"), "{headers}");
}

#[test]
fn token_file_created_0600_and_client_discovers_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = ports::free_port();
    let mut cfg = Config {
        base_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    cfg.admin.listen = SocketAddr::from(([127, 0, 0, 1], port));
    cfg.admin.token_file = "var/run/admin.token".into();
    assert!(
        AdminClient::discover(&cfg).is_none(),
        "no token file, no daemon"
    );
    let fake = Arc::new(Fake::default());
    let server =
        AdminServer::from_config(&cfg, fake.clone(), Arc::new(Readiness::new())).expect("server");
    let token_path = dir.path().join("var/run/admin.token");
    let meta = std::fs::metadata(&token_path).expect("token file created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_path).expect("read");
    let token = token.trim();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let handle = server.spawn().expect("spawn");
    let client = AdminClient::discover(&cfg).expect("daemon discovered");
    let (status, _) = client
        .call("POST", "/v1/users/bob/suspend", None)
        .expect("call");
    assert_eq!(status, 200);
    assert_eq!(fake.calls(), vec!["user_action bob Suspend".to_string()]);
    // A second start keeps the same token.
    drop(handle);
    let again = AdminToken::load_or_create(&token_path).expect("reload");
    assert!(again.matches(token.as_bytes()));
    assert!(AdminClient::discover(&cfg).is_none(), "daemon stopped");
}

#[test]
fn the_validator_catches_bodies_that_break_the_document() {
    let doc = openapi();
    let schema = json!({"$ref": "#/components/schemas/KeyChange"});
    let good = json!({"revision": 1, "key": key_json("key_0123456789ab", "revoked")});
    let mut errs = Vec::new();
    check(&doc, &schema, &good, "$", &mut errs);
    assert!(errs.is_empty(), "{errs:?}");
    let mut bad = good.clone();
    bad["key"]["status"] = json!("disabled");
    bad["key"].as_object_mut().expect("obj").remove("env");
    bad["key"]["created_at"] = Value::Null;
    bad["revision"] = json!("1");
    check(&doc, &schema, &bad, "$", &mut errs);
    assert_eq!(errs.len(), 4, "{errs:?}");
}

/// One `GET /healthz` on `s` (keep-alive): the status and whether the answer closes.
fn healthz_on(s: &mut TcpStream) -> (u16, bool) {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head.contains("connection: close"))
}

#[test]
fn a_paused_server_answers_a_connections_next_request_as_its_last_and_accepts_none() {
    let r = start();
    let addr = r.handle.local_addr();
    let mut open = TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(healthz_on(&mut open), (200, false));
    r.handle.pause();
    // A request on an open connection (one on its way when the pause came) is still answered,
    // and closes the connection.
    assert_eq!(healthz_on(&mut open), (200, true));
    assert!(r.handle.wait_idle(std::time::Duration::from_secs(5)));
    // A new connection waits in the queue, unanswered, until the server accepts again.
    let mut queued = TcpStream::connect(addr).unwrap();
    queued
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    queued
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut one = [0u8; 1];
    assert!(queued.read(&mut one).is_err(), "answered while paused");
    r.handle.resume();
    queued
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 12];
    queued.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[9..12], b"200");
    // An idle connection is closed once the pause's grace is over.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(healthz_on(&mut idle), (200, false));
    r.handle.pause();
    assert!(r.handle.wait_idle(edgefilter::admin::PAUSE_GRACE * 3));
}
