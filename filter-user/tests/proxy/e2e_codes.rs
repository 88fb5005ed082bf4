//! End to end, SPEC §5: the real daemon (`edgefilter run --no-xdp`), real keys made with the CLI,
//! real requests with curl, one per answer code — status, code, headers, and never the key.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::upstream;

/// A daemon's temp config and store, its origin, and every key made in it (none may ever be
/// echoed).
struct Edge {
    daemon: Daemon,
    keys: Vec<String>,
    upstream: upstream::Upstream,
}

impl Edge {
    /// A daemon configured with `errors` mode, not yet started.
    fn new(errors: &str) -> Self {
        let upstream = upstream::Upstream::start();
        let up = upstream.addr;
        let tables = format!(
            r#"
[keys]
environment = "live"
errors = "{errors}"
[log]
format = "json"
access_log = "stdout"
[[route]]
prefix = "/v1/"
upstream = "http://{up}"
scopes = ["ai:invoke"]
inject_header = {{ name = "Authorization", value = "Bearer ${{E2E_UPSTREAM_SECRET}}" }}
[[route]]
prefix = "/query/"
upstream = "http://{up}"
key_in_query = true
[[route]]
prefix = "/headers-only/"
upstream = "http://{up}"
"#
        );
        Self {
            daemon: Daemon::configure(&tables)
                .with_env("E2E_UPSTREAM_SECRET", "upstream-secret-value"),
            keys: Vec::new(),
            upstream,
        }
    }

    /// Runs the CLI; returns stdout, asserting success.
    fn cli(&self, args: &[&str]) -> String {
        self.daemon.cli_ok(args)
    }

    /// `keys create --json` with `extra`; returns (id, key).
    fn create(&mut self, user: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec![
            "keys", "create", "--tenant", "acme", "--user", user, "--json",
        ];
        args.extend_from_slice(extra);
        let v: Value = serde_json::from_str(&self.cli(&args)).unwrap();
        let key = v["key"].as_str().unwrap().to_owned();
        self.keys.push(key.clone());
        (v["id"].as_str().unwrap().to_owned(), key)
    }

    /// Starts the daemon on the keys made so far and waits until it is ready.
    fn start(&mut self) {
        self.daemon.restart();
    }

    /// Asserts that `text` holds no key (nor any 8-character piece of one's secret part).
    fn assert_no_key(&self, what: &str, text: &str) {
        for k in &self.keys {
            let body = &k[k.rfind('_').unwrap() + 1..];
            for i in 0..body.len().saturating_sub(8) {
                assert!(
                    !text.contains(&body[i..i + 8]),
                    "{what} holds a piece of a key:\n{text}"
                );
            }
        }
    }
}

/// One curl answer.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
    raw: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// `curl -sS -i` against the daemon; `args` are extra curl arguments (headers).
fn curl(d: &Daemon, path: &str, args: &[&str]) -> Answer {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .arg(format!("http://{}{path}", d.http))
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        raw,
    }
}

fn bearer(key: &str) -> String {
    format!("Authorization: Bearer {key}")
}

/// The RFC 3339 expiry `keys show` gives key `id`.
fn expiry_of(edge: &Edge, id: &str) -> String {
    let v: Value = serde_json::from_str(&edge.cli(&["keys", "show", id, "--json"])).unwrap();
    v["expires_at"].as_str().expect("an expiry").to_owned()
}

/// Waits until a key made at `made` with `--expires 1s` has expired (expiry is kept in whole
/// seconds: two of them are past it).
fn wait_until_expired(made: Instant) {
    if let Some(left) = Duration::from_millis(2100).checked_sub(made.elapsed()) {
        std::thread::sleep(left);
    }
}

/// Asserts the SPEC §5 shape of a refusal.
fn assert_refusal(edge: &Edge, a: &Answer, status: u16, code: &str, key_id: Option<&str>) {
    assert_eq!((a.status, a.code()), (status, code), "{}", a.raw);
    assert_eq!(
        a.header("content-type"),
        Some("application/json"),
        "{}",
        a.raw
    );
    let rid = a.header("x-request-id").expect("X-Request-Id");
    assert_eq!(
        a.body["error"]["request_id"].as_str(),
        Some(rid),
        "{}",
        a.raw
    );
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        a.raw
    );
    if status == 401 {
        let www = a
            .header("www-authenticate")
            .expect("401 carries WWW-Authenticate");
        assert!(www.starts_with("Bearer realm=\"edgefilter\""), "{www}");
        assert_eq!(
            www.contains("error=\"invalid_token\""),
            code != "MISSING_KEY",
            "{www}"
        );
    }
    if let Some(id) = key_id {
        assert_eq!(a.body["error"]["key_id"].as_str(), Some(id), "{}", a.raw);
    }
    edge.assert_no_key("the answer", &a.raw);
}

#[test]
fn every_code_through_the_real_proxy() {
    let mut edge = Edge::new("detailed");
    let (ok_id, ok) = edge.create("alice", &["--scope", "ai:invoke"]);
    // An expiry in the past is refused: this key expires a second from now (and has by the
    // time the daemon is asked, see the wait before `start`).
    let (exp_id, expired) = edge.create("alice", &["--scope", "ai:invoke", "--expires", "1s"]);
    let made_expiring = Instant::now();
    let expired_at = expiry_of(&edge, &exp_id);
    let (nyv_id, not_yet) = edge.create("alice", &["--scope", "ai:invoke", "--not-before", "30d"]);
    let (rev_id, revoked) = edge.create("alice", &["--scope", "ai:invoke"]);
    edge.cli(&["keys", "revoke", &rev_id]);
    let (rot_id, rotated) = edge.create("alice", &["--scope", "ai:invoke"]);
    let v: Value =
        serde_json::from_str(&edge.cli(&["keys", "rotate", &rot_id, "--grace", "0s", "--json"]))
            .unwrap();
    let replacement = v["key"].as_str().unwrap().to_owned();
    edge.keys.push(replacement.clone());
    let (_, graced) = edge.create("alice", &["--scope", "ai:invoke"]);
    let v: Value =
        serde_json::from_str(&edge.cli(&["keys", "rotate", &graced, "--grace", "1h", "--json"]))
            .unwrap();
    let graced_new = v["key"].as_str().unwrap().to_owned();
    edge.keys.push(graced_new.clone());
    let (sus_id, suspended) = edge.create("sam", &["--scope", "ai:invoke"]);
    edge.cli(&["users", "suspend", "sam"]);
    let (del_id, deleted) = edge.create("dora", &["--scope", "ai:invoke"]);
    edge.cli(&["users", "delete", "dora"]);
    let (pend_id, pending) = edge.create("alice", &["--scope", "ai:invoke", "--pending"]);
    let (_, test_env) = edge.create("alice", &["--scope", "ai:invoke", "--env", "test"]);
    let (ip_id, fenced) = edge.create(
        "alice",
        &["--scope", "ai:invoke", "--allow-cidr", "198.18.0.0/24"],
    );
    let (scope_id, unscoped) = edge.create("alice", &["--scope", "ai:read"]);
    let (rl_id, limited) = edge.create(
        "alice",
        &["--scope", "ai:invoke", "--rate", "1/s", "--burst", "1"],
    );
    // A well-formed key this store has never seen.
    let mut other = Edge::new("detailed");
    let (_, stranger) = other.create("zed", &[]);
    edge.keys.push(stranger.clone());

    wait_until_expired(made_expiring);
    edge.start();
    let d = &edge.daemon;

    // Allowed: forwarded with identity headers, the client's key replaced by the upstream's.
    let a = curl(
        d,
        "/v1/chat/echo",
        &["-H", &bearer(&ok), "-H", "X-Request-Id: e2e-allowed-1"],
    );
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.header("x-request-id"), Some("e2e-allowed-1"));
    let seen = edge
        .upstream
        .heads()
        .last()
        .cloned()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        seen.contains(&format!(
            "x-edgefilter-key-id: {}",
            ok_id.to_ascii_lowercase()
        )),
        "{seen}"
    );
    assert!(
        seen.contains("x-edgefilter-tenant: acme") && seen.contains("x-edgefilter-user: alice"),
        "{seen}"
    );
    assert!(seen.contains("x-request-id: e2e-allowed-1"), "{seen}");
    assert!(
        seen.contains("authorization: bearer upstream-secret-value"),
        "{seen}"
    );
    edge.assert_no_key("the upstream's request", &seen);
    // In the query, on the route that accepts it: allowed, and the upstream never sees it.
    let a = curl(d, &format!("/query/echo?api_key={ok}&x=1"), &[]);
    assert_eq!(a.status, 200, "{}", a.raw);
    edge.assert_no_key(
        "the upstream's request",
        &edge.upstream.heads().last().cloned().unwrap(),
    );
    // A rotated key within its grace, and its replacement, both work.
    assert_eq!(
        curl(d, "/v1/chat/echo", &["-H", &bearer(&graced)]).status,
        200
    );
    assert_eq!(
        curl(
            d,
            "/v1/chat/echo",
            &["-H", &format!("X-API-Key: {graced_new}")]
        )
        .status,
        200
    );
    assert_eq!(
        curl(d, "/v1/chat/echo", &["-H", &bearer(&replacement)]).status,
        200
    );

    let typo = {
        let mut b = ok.clone().into_bytes();
        let i = 20;
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        String::from_utf8(b).unwrap()
    };
    let p = "/v1/chat/echo";
    let cases: Vec<(Answer, u16, &str, Option<&str>)> = vec![
        (curl(d, p, &[]), 401, "MISSING_KEY", None),
        (
            curl(d, &format!("/headers-only/x?api_key={ok}"), &[]),
            401,
            "KEY_IN_WRONG_PLACE",
            None,
        ),
        (
            curl(d, p, &["-H", &bearer(&format!("\"{ok}\""))]),
            400,
            "MALFORMED_KEY",
            None,
        ),
        (
            curl(d, &format!("/query/x?api_key={ok}%20"), &[]),
            400,
            "MALFORMED_KEY",
            None,
        ),
        (
            curl(d, p, &["-H", &bearer(&format!("{ok} x"))]),
            400,
            "MALFORMED_KEY",
            None,
        ),
        (
            curl(d, p, &["-H", &bearer(&typo)]),
            401,
            "KEY_CHECKSUM_MISMATCH",
            None,
        ),
        (
            curl(d, p, &["-H", &bearer(&test_env)]),
            401,
            "WRONG_ENVIRONMENT",
            None,
        ),
        (
            curl(d, p, &["-H", &bearer(&stranger)]),
            401,
            "UNKNOWN_KEY",
            None,
        ),
        (
            curl(d, p, &["-H", &bearer(&revoked)]),
            401,
            "KEY_REVOKED",
            Some(&rev_id),
        ),
        (
            curl(d, p, &["-H", &bearer(&rotated)]),
            401,
            "KEY_REVOKED",
            Some(&rot_id),
        ),
        (
            curl(d, p, &["-H", &bearer(&not_yet)]),
            401,
            "KEY_NOT_YET_VALID",
            Some(&nyv_id),
        ),
        (
            curl(d, p, &["-H", &bearer(&expired)]),
            401,
            "KEY_EXPIRED",
            Some(&exp_id),
        ),
        (
            curl(d, p, &["-H", &bearer(&suspended)]),
            401,
            "USER_SUSPENDED",
            Some(&sus_id),
        ),
        (
            curl(d, p, &["-H", &bearer(&deleted)]),
            401,
            "USER_DELETED",
            Some(&del_id),
        ),
        (
            curl(d, p, &["-H", &bearer(&pending)]),
            403,
            "SUBSCRIPTION_PENDING",
            Some(&pend_id),
        ),
        (
            curl(d, p, &["-H", &bearer(&fenced)]),
            403,
            "IP_NOT_ALLOWED",
            Some(&ip_id),
        ),
        (
            curl(d, p, &["-H", &bearer(&unscoped)]),
            403,
            "SCOPE_MISSING",
            Some(&scope_id),
        ),
        (
            curl(d, "/nowhere", &["-H", &bearer(&ok)]),
            404,
            "NO_ROUTE",
            None,
        ),
    ];
    for (a, status, code, key_id) in &cases {
        assert_refusal(&edge, a, *status, code, *key_id);
    }
    let hint = |i: usize| {
        cases[i].0.body["error"]["hint"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        hint(1).contains("Authorization") || hint(1).contains("X-API-Key"),
        "{}",
        hint(1)
    );
    // The query value is percent-decoded first: `%20` is a trailing space, named as such.
    assert!(
        hint(3).contains("trailing whitespace; send the key exactly as it was issued"),
        "{}",
        hint(3)
    );
    assert!(hint(4).contains("character 47 is ' '"), "{}", hint(4));
    // Trailing spaces/tabs after a header value are not part of it (RFC 9110 OWS): the key works.
    let t = curl(d, p, &["-H", &bearer(&format!("{ok}\t "))]);
    assert_eq!(t.status, 200, "{}", t.raw);
    assert!(
        hint(11).contains(&expired_at) && hint(11).contains("keys rotate"),
        "{}",
        hint(11)
    );
    assert!(hint(15).contains("127.0.0.1"), "{}", hint(15));
    assert!(hint(16).contains("ai:invoke"), "{}", hint(16));

    // Rate limit: burst 1 at 1/s — the second request in a row is refused with its headers.
    // Both answers carry the structured RateLimit fields (draft-ietf-httpapi-ratelimit-headers),
    // not the dropped RateLimit-Limit/-Remaining/-Reset trio.
    let allowed = curl(d, p, &["-H", &bearer(&limited)]);
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("ratelimit-policy"),
        Some("\"key-rate\";q=1;w=1"),
        "{}",
        allowed.raw
    );
    assert_eq!(
        allowed.header("ratelimit"),
        Some("\"key-rate\";r=0;t=1"),
        "{}",
        allowed.raw
    );
    let a = curl(d, p, &["-H", &bearer(&limited)]);
    assert_refusal(&edge, &a, 429, "RATE_LIMITED", Some(&rl_id));
    assert_eq!(a.header("retry-after"), Some("1"), "{}", a.raw);
    assert_eq!(
        a.header("ratelimit-policy"),
        Some("\"key-rate\";q=1;w=1"),
        "{}",
        a.raw
    );
    assert_eq!(
        a.header("ratelimit"),
        Some("\"key-rate\";r=0;t=1"),
        "{}",
        a.raw
    );
    for gone in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(a.header(gone).is_none(), "429 has {gone}: {}", a.raw);
    }
    // An unlimited key's answers carry none.
    let free = curl(d, p, &["-H", &bearer(&ok)]);
    assert!(free.header("ratelimit").is_none(), "{}", free.raw);

    // A live revocation reaches the running daemon.
    edge.cli(&["keys", "revoke", &ok_id]);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let a = curl(d, p, &["-H", &bearer(&ok)]);
        if a.status == 401 {
            assert_refusal(&edge, &a, 401, "KEY_REVOKED", Some(&ok_id));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revocation not applied within 2 s: {}",
            a.raw
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    edge.daemon.kill9();
    let log = edge.daemon.log();
    assert!(!log.is_empty());
    edge.assert_no_key("the daemon's log", &log);
}

#[test]
fn opaque_mode_hides_the_precise_401_code() {
    let mut edge = Edge::new("opaque");
    let (_, expired) = edge.create("alice", &["--expires", "1s"]);
    let made_expiring = Instant::now();
    let (_, unscoped) = edge.create("alice", &["--scope", "ai:read"]);
    wait_until_expired(made_expiring);
    edge.start();
    let d = &edge.daemon;
    let a = curl(d, "/v1/x", &["-H", &bearer(&expired)]);
    assert_refusal(&edge, &a, 401, "INVALID_CREDENTIALS", None);
    assert!(
        a.body["error"].get("hint").is_none(),
        "opaque answers carry no hint: {}",
        a.raw
    );
    assert!(a.body["error"].get("key_id").is_none(), "{}", a.raw);
    // 403s are not key-validity answers and keep their code.
    assert_refusal(
        &edge,
        &curl(d, "/v1/x", &["-H", &bearer(&unscoped)]),
        403,
        "SCOPE_MISSING",
        None,
    );
}
