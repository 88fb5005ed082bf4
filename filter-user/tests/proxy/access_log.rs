//! The access log through the real daemon (SPEC §9): one JSON line per request with exactly the
//! SPEC's fields, the precise code even in opaque mode, `upstream_error` when there was one,
//! `api_key` query values and key-shaped path segments masked, no full key anywhere, and the
//! file reopened on SIGHUP (logrotate renames it, the daemon starts a new one).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::{Daemon, KeepAlive};
use crate::support::ports::free_addr;
use crate::support::upstream;

/// The fields every line carries (SPEC §9), `upstream_error` only after an upstream failure.
const FIELDS: [&str; 16] = [
    "ts",
    "request_id",
    "client_ip",
    "method",
    "path",
    "route",
    "status",
    "code",
    "key_id",
    "tenant",
    "user",
    "shard",
    "upstream_ms",
    "duration_us",
    "bytes_in",
    "bytes_out",
];

/// The lines of `path` once it holds `n` of them (the writer batches; waits up to 5 s).
fn lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            assert_eq!(got.len(), n, "{text}");
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_line_per_request_with_the_precise_code_and_no_key() {
    let up = upstream::Upstream::start();
    let down = free_addr();
    let tables = format!(
        r#"
[keys]
environment = "live"
errors = "opaque"
[log]
format = "json"
access_log = "var/access.log"
[[route]]
prefix = "/v1/"
upstream = "http://{}"
scopes = ["ai:invoke"]
key_in_query = true
[[route]]
prefix = "/down/"
upstream = "http://{down}"
"#,
        up.addr
    );
    let mut d = Daemon::configure(&tables);
    d.restart();
    let (id, key) = d.create_key("alice");
    let file = d.dir.path().join("var/access.log");
    let mut c = KeepAlive::new(d.http);
    assert_eq!(c.get("/v1/echo", &key).unwrap().status, 200);
    // Opaque mode answers INVALID_CREDENTIALS; the log keeps the precise code.
    let typo = format!("{}x", &key[..key.len() - 1]);
    assert_eq!(c.get("/v1/echo", &typo).unwrap().status, 401);
    assert_eq!(c.get("/nowhere", &key).unwrap().status, 404);
    assert_eq!(c.get("/down/x", &key).unwrap().status, 502);
    assert_eq!(
        c.get(&format!("/v1/echo?api_key={key}&b=1"), &key)
            .unwrap()
            .status,
        200
    );
    let got = lines(&file, 5);

    for l in &got {
        let keys: BTreeSet<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
        for f in FIELDS {
            assert!(keys.contains(f), "{f} missing: {l}");
        }
        let extra: Vec<&&str> = keys
            .iter()
            .filter(|k| !FIELDS.contains(k) && **k != "upstream_error")
            .collect();
        assert!(extra.is_empty(), "fields beyond SPEC §9: {extra:?} in {l}");
        assert_eq!(l["client_ip"], "127.0.0.1");
        assert!(l["ts"].as_str().unwrap().ends_with('Z'), "{l}");
        assert!(
            !l.to_string().contains(&key[8..]),
            "a key in the access log: {l}"
        );
    }
    let (ok, typo_line, none, down_line, query) = (&got[0], &got[1], &got[2], &got[3], &got[4]);
    assert_eq!(
        (
            &ok["status"],
            &ok["code"],
            &ok["route"],
            &ok["method"],
            &ok["path"]
        ),
        (
            &200.into(),
            &"OK".into(),
            &"/v1/".into(),
            &"GET".into(),
            &"/v1/echo".into()
        )
    );
    assert_eq!(
        (&ok["key_id"], &ok["tenant"], &ok["user"]),
        (&Value::from(id.as_str()), &"acme".into(), &"alice".into()),
        "{ok}"
    );
    assert!(ok["upstream_ms"].as_f64().is_some() && ok["bytes_out"].as_u64() > Some(0));
    assert_eq!(
        (&typo_line["status"], &typo_line["code"]),
        (&401.into(), &"KEY_CHECKSUM_MISMATCH".into()),
        "{typo_line}"
    );
    assert_eq!(
        (&none["status"], &none["code"], &none["route"]),
        (&404.into(), &"NO_ROUTE".into(), &Value::Null)
    );
    assert_eq!(
        (
            &down_line["status"],
            &down_line["code"],
            &down_line["upstream_error"]
        ),
        (
            &502.into(),
            &"UPSTREAM_UNAVAILABLE".into(),
            &"connect".into()
        )
    );
    assert_eq!(query["path"], "/v1/echo?api_key=***&b=1", "{query}");

    // logrotate: rename, SIGHUP, and the next line goes to a new file.
    let rotated = d.dir.path().join("var/access.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(d.pid().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !file.exists() && Instant::now() < deadline {
        assert_eq!(c.get("/v1/echo", &key).unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(file.exists(), "SIGHUP did not reopen the access log");
    // The rotated file keeps its lines (and may get one more written before the reopen).
    let kept = std::fs::read_to_string(&rotated).unwrap();
    assert!(kept.lines().count() >= 5, "{kept}");
    assert!(!d.log().contains(&key[8..]), "a key in the daemon's log");
}
