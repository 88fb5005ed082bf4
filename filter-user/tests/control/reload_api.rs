//! `POST /v1/reload` on the real daemon: it does what `SIGHUP` does, answers what was applied
//! and what needs a restart, refuses a broken config with every problem (the running config
//! kept), and each reload, `SIGHUP`'s too, is in the audit trail.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::{Daemon, KeepAlive, default_tables};
use crate::support::openapi::{assert_documented, openapi};
use crate::support::upstream::Upstream;

/// The code of the answer to `GET /v1/echo` with `key`, or `OK`.
fn answer(d: &Daemon, key: &str) -> String {
    let head = format!(
        "GET /v1/echo HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(d.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    if raw.starts_with("HTTP/1.1 200") {
        return "OK".to_owned();
    }
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str::<Value>(body).map_or_else(
        |_| raw.clone(),
        |v| v["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The `config.reload` entries of the audit trail.
fn reloads(d: &Daemon) -> Vec<Value> {
    let (s, v) = d.admin_call("GET", "/v1/audit", Some(&d.token()), None);
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "config.reload")
        .cloned()
        .collect()
}

#[test]
fn post_reload_applies_a_change_and_refuses_a_broken_config() {
    let doc = openapi();
    let up = Upstream::start();
    let d = Daemon::start(up.addr);
    let token = d.token();
    let (_, key) = d.create_key("alice");
    let (revoked_id, revoked) = d.create_key("bob");
    d.cli_ok(&["keys", "revoke", &revoked_id]);
    assert_eq!(answer(&d, &key), "OK");
    assert_eq!(answer(&d, &revoked), "KEY_REVOKED");

    // Without the token nothing is reloaded.
    let (s, v) = d.admin_call("POST", "/v1/reload", None, None);
    assert_eq!(s, 401, "{v}");
    assert_documented(&doc, "/v1/reload", "post", s, &v);

    // Applied keys (keys.errors, a route's scopes) and one that needs a restart (log.format).
    let base = std::fs::read_to_string(d.config()).unwrap();
    let tables = default_tables(up.addr);
    let changed = base.replace(
        &tables,
        &tables
            .replace(
                "environment = \"live\"",
                "environment = \"live\"\nerrors = \"opaque\"",
            )
            .replace(
                "scopes = [\"ai:invoke\"]",
                "scopes = [\"ai:invoke\", \"ai:other\"]",
            )
            .replace("format = \"text\"", "format = \"json\""),
    );
    assert_ne!(changed, base);
    std::fs::write(d.config(), &changed).unwrap();
    let (s, v) = d.admin_call("POST", "/v1/reload", Some(&token), None);
    assert_eq!(s, 200, "{v}");
    assert_documented(&doc, "/v1/reload", "post", s, &v);
    assert_eq!(
        v["applied"],
        serde_json::json!(["keys.errors", "route.scopes"]),
        "{v}"
    );
    assert_eq!(v["needs_restart"], serde_json::json!(["log.format"]), "{v}");
    assert_eq!(v["tls"], "not served", "{v}");
    // In force at once: a revoked key is answered opaquely, the route needs a scope the key
    // lacks (a 403, which opaque errors leave as it is).
    assert_eq!(answer(&d, &revoked), "INVALID_CREDENTIALS");
    assert_eq!(answer(&d, &key), "SCOPE_MISSING");

    // A broken config: refused with every problem on its line, the running config kept.
    let broken = changed
        .replace(
            "scopes = [\"ai:invoke\", \"ai:other\"]",
            "scopes = [\"ai:invoke\"]\ninject_header = { name = \"Authorization\", value = \"Bearer ${EF_TEST_RELOAD_UNSET}\" }",
        )
        .replace("shards = 2\n", "shards = 2000\n");
    std::fs::write(d.config(), &broken).unwrap();
    let (s, v) = d.admin_call("POST", "/v1/reload", Some(&token), None);
    assert_eq!(s, 422, "{v}");
    assert_documented(&doc, "/v1/reload", "post", s, &v);
    assert_eq!(v["error"]["code"], "CONFIG_INVALID", "{v}");
    let hint = v["error"]["hint"].as_str().unwrap();
    let line = |needle: &str| 1 + broken.lines().position(|l| l.contains(needle)).unwrap();
    assert!(
        hint.contains(&format!("ef.toml:{}: ", line("EF_TEST_RELOAD_UNSET")))
            && hint.contains("EF_TEST_RELOAD_UNSET, which is not set"),
        "{hint}"
    );
    assert!(
        hint.contains(&format!("ef.toml:{}: ", line("shards = 2000")))
            && hint.contains("more than 1024"),
        "{hint}"
    );
    assert_eq!(answer(&d, &revoked), "INVALID_CREDENTIALS");
    assert_eq!(answer(&d, &key), "SCOPE_MISSING", "the running scopes stay");

    // SIGHUP reloads the same way, and every reload is in the audit trail.
    std::fs::write(d.config(), &base).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(d.pid().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let t = Instant::now();
    while answer(&d, &revoked) != "KEY_REVOKED" {
        assert!(t.elapsed() < Duration::from_secs(10), "SIGHUP not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    let trail = reloads(&d);
    assert_eq!(trail.len(), 3, "{trail:?}");
    let config = d.config().display().to_string();
    for (e, ok) in trail.iter().zip([true, false, true]) {
        assert_eq!(e["object"], config.as_str(), "{e}");
        assert_eq!(e["result"] == "ok", ok, "{e}");
    }
    assert!(
        trail[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("admin@127.0.0.1")
    );
    assert!(
        trail[1]["result"]
            .as_str()
            .unwrap()
            .starts_with("CONFIG_INVALID"),
        "{}",
        trail[1]
    );
    assert_eq!(trail[2]["actor"], "signal:SIGHUP");
    let mut c = KeepAlive::new(d.http);
    assert_eq!(c.get("/v1/echo", &key).unwrap().status, 200);
}
