//! Durability through the real daemon: a revocation (and a key creation) reported as done survive
//! `kill -9` right after the command returns and a restart.

use serde_json::json;

use crate::support::daemon::{Daemon, KeepAlive};
use crate::support::upstream;

#[test]
fn a_revoke_that_returned_survives_kill_9_and_restart() {
    let up = upstream::Upstream::start();
    let mut d = Daemon::start(up.addr);
    let (k_id, k) = d.create_key("alice");
    // A key created through the admin API itself (201, shown once).
    let (status, created) = d.admin_call(
        "POST",
        "/v1/keys",
        Some(&d.token()),
        Some(&json!({"tenant": "acme", "user": "bob", "scopes": ["ai:invoke"]})),
    );
    assert_eq!(status, 201, "{created}");
    let other = created["key"].as_str().unwrap().to_string();
    let mut c = KeepAlive::new(d.http);
    assert_eq!(c.get("/v1/echo", &k).unwrap().status, 200);
    assert_eq!(c.get("/v1/echo", &other).unwrap().status, 200);

    let out = d.cli_ok(&["keys", "revoke", &k_id]);
    d.kill9();
    assert!(out.contains("revoked at"), "{out}");
    d.restart();

    let mut c = KeepAlive::new(d.http);
    assert_eq!(
        c.get("/v1/echo", &k).unwrap().status,
        401,
        "revoked key works after restart"
    );
    let (s, v) = get_with_key(d.http, &k);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("KEY_REVOKED")),
        "{v}"
    );
    assert_eq!(
        c.get("/v1/echo", &other).unwrap().status,
        200,
        "created key lost"
    );
}

fn get_with_key(addr: std::net::SocketAddr, key: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /v1/echo HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// `keys create --json` and `keys revoke` print the same shapes through the daemon and directly.
#[test]
fn cli_output_is_the_same_through_the_daemon_and_direct() {
    let up = upstream::Upstream::start();
    let mut d = Daemon::start(up.addr);
    let create = |d: &Daemon, user: &str| -> serde_json::Value {
        let out = d.cli_ok(&[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--user",
            user,
            "--rate",
            "5/s",
            "--burst",
            "9",
            "--allow-cidr",
            "198.18.0.0/15",
            "--expires",
            "30d",
            "--json",
        ]);
        serde_json::from_str(out.trim()).unwrap()
    };
    let via = create(&d, "alice");
    let revoked_via = d.cli_ok(&["keys", "revoke", via["id"].as_str().unwrap()]);
    d.kill9();
    let direct = create(&d, "bob");
    let revoked_direct = d.cli_ok(&["keys", "revoke", direct["id"].as_str().unwrap()]);
    let names = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&via), names(&direct));
    for field in [
        "rate",
        "burst",
        "allowed_cidrs",
        "scopes",
        "env",
        "status",
        "state",
    ] {
        assert_eq!(via[field], direct[field], "{field}");
    }
    // One shape for the CLI and the admin API (docs/openapi.yaml `Key`).
    assert_eq!((&via["rate"], &via["burst"]), (&json!(5), &json!(9)));
    let shape = |s: &str| {
        s.split_whitespace()
            .skip(1)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(shape(&revoked_via), shape(&revoked_direct));
    assert_eq!(shape(&revoked_via), "revoked at");
}
