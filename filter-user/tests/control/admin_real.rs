//! The admin API of the real daemon: without or with a wrong token every change is refused with
//! 401 and nothing changes; with the token it works, shards apply it, and the answers match
//! `docs/openapi.yaml`. `edgefilter allow` goes through the running daemon. Every change through
//! the daemon is in its audit trail once.

use std::process::Command;

use serde_json::json;

use crate::support::daemon::{self, Daemon, KeepAlive};
use crate::support::openapi::{assert_documented, openapi};
use crate::support::upstream;

#[test]
fn tokens_are_checked_and_real_answers_match_the_document() {
    let doc = openapi();
    let up = upstream::Upstream::start();
    let d = Daemon::start(up.addr);
    let (id, key) = d.create_key("alice");
    let mut c = KeepAlive::new(d.http);
    assert_eq!(c.get("/v1/echo", &key).unwrap().status, 200);
    let token = d.token();
    let wrong = format!("{}x", &token[..token.len() - 1]);

    let revoke = format!("/v1/keys/{id}/revoke");
    let new_key = json!({"tenant": "acme", "user": "mallory", "scopes": ["ai:invoke"]});
    for t in [None, Some(wrong.as_str()), Some("")] {
        let (s, v) = d.admin_call("POST", &revoke, t, None);
        assert_eq!(s, 401, "{v}");
        assert_documented(&doc, "/v1/keys/{id}/revoke", "post", s, &v);
        let (s, _) = d.admin_call("POST", "/v1/keys", t, Some(&new_key));
        assert_eq!(s, 401);
        let (s, _) = d.admin_call("POST", "/v1/users/alice/suspend", t, None);
        assert_eq!(s, 401);
        let (s, _) = d.admin_call("GET", "/v1/keys", t, None);
        assert_eq!(s, 401);
    }
    // Nothing changed: the key still works, no key was created, alice is active.
    assert_eq!(c.get("/v1/echo", &key).unwrap().status, 200);
    let (s, list) = d.admin_call("GET", "/v1/keys", Some(&token), None);
    assert_eq!(s, 200);
    assert_documented(&doc, "/v1/keys", "get", s, &list);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["status"], "active");

    let (s, ready) = d.admin_call("GET", "/readyz", None, None);
    assert_eq!(s, 200);
    assert_documented(&doc, "/readyz", "get", s, &ready);

    let (s, created) = d.admin_call("POST", "/v1/keys", Some(&token), Some(&new_key));
    assert_eq!(s, 201, "{created}");
    assert_documented(&doc, "/v1/keys", "post", s, &created);
    let new_id = created["id"].as_str().unwrap();
    let (s, shown) = d.admin_call("GET", &format!("/v1/keys/{new_id}"), Some(&token), None);
    assert_documented(&doc, "/v1/keys/{id}", "get", s, &shown);
    assert!(shown.get("key").is_none(), "a shown key holds no secret");

    let (s, v) = d.admin_call("POST", "/v1/users/mallory/suspend", Some(&token), None);
    assert_eq!(s, 200, "{v}");
    assert_documented(&doc, "/v1/users/{user}/suspend", "post", s, &v);
    assert_eq!(
        (v["status"].as_str(), v["keys"].as_u64()),
        (Some("suspended"), Some(1))
    );

    // Explain over the API: every check, the fix, the real verdict; the key never comes back.
    let ask = json!({"key": key, "ip": "127.0.0.1", "method": "POST", "path": "/v1/echo"});
    let (s, v) = d.admin_call("POST", "/v1/explain", Some(&token), Some(&ask));
    assert_eq!(s, 200, "{v}");
    assert_documented(&doc, "/v1/explain", "post", s, &v);
    assert_eq!(
        (v["decision"].as_str(), v["key_id"].as_str()),
        (Some("allow"), Some(id.as_str())),
        "{v}"
    );
    assert!(
        !v.to_string().contains(&key[8..]),
        "explain echoed the key: {v}"
    );
    let ask = json!({"key": key, "ip": "198.51.100.7", "path": "/nowhere"});
    let (s, v) = d.admin_call("POST", "/v1/explain", Some(&token), Some(&ask));
    assert_eq!(
        (s, v["decision"].as_str(), v["code"].as_str()),
        (200, Some("deny"), Some("NO_ROUTE")),
        "{v}"
    );

    let (s, v) = d.admin_call("POST", &revoke, Some(&token), None);
    assert_eq!(s, 200, "{v}");
    assert_documented(&doc, "/v1/keys/{id}/revoke", "post", s, &v);
    assert_eq!(v["key"]["status"], "revoked");
    // Answered only after every shard applied it: the very next request is refused.
    for _ in 0..20 {
        assert_eq!(c.get("/v1/echo", &key).unwrap().status, 401);
    }
    let (s, v) = d.admin_call(
        "POST",
        "/v1/keys/key_000000000000/revoke",
        Some(&token),
        None,
    );
    assert_eq!(s, 404, "{v}");
    assert_documented(&doc, "/v1/keys/{id}/revoke", "post", s, &v);

    let (s, m) = d.admin_call("GET", "/metrics", None, None);
    assert_eq!(s, 200);
    let text = m.as_str().unwrap_or_default();
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("edgefilter_revocation_propagation_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no propagation histogram in /metrics:\n{text}"));
    assert!(count >= 3, "propagation samples: {count}");
    let log = d.log();
    assert!(!log.contains(&key), "a key reached the daemon log");
}

/// `allow add|remove|list` go through the running daemon: a second config that shares only the
/// daemon's admin address and token (its own store, so its own `allowlist.json`) sees and makes
/// the daemon's changes, and its own file is never written. With the daemon gone, the CLI edits
/// the file itself again.
#[test]
fn allow_commands_go_through_the_running_daemon() {
    let up = upstream::Upstream::start();
    let mut d = Daemon::start(up.addr);
    let token = d.token();
    let other = d.dir.path().join("other.toml");
    let pins = d.pin_dir();
    std::fs::write(
        &other,
        format!(
            "[xdp]\nenabled = false\n[store]\npath = \"elsewhere/keys.db\"\n\
             [admin]\nlisten = \"{}\"\ntoken_file = \"var/admin.token\"\n\
             [[route]]\nprefix = \"/v1/\"\nupstream = \"http://{}\"\n",
            d.admin, up.addr
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .arg("--config")
            .arg(&other)
            .args(args)
            .env_remove("EDGEFILTER_CONFIG")
            .env(edgefilter::xdp::PIN_DIR_ENV, &pins)
            .output()
            .unwrap();
        crate::support::leaks::scan_cli(args, &out);
        out
    };
    let ok = |args: &[&str]| {
        let o = cli(args);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(o.status.success(), "{args:?}: {out}\n{err}");
        out
    };
    let admin = d.admin;
    let daemon_cidrs = || {
        let (s, v) = daemon::raw_http(admin, "GET", "/v1/allowlist", Some(&token), None).unwrap();
        assert_eq!(s, 200, "{v}");
        v["cidrs"].clone()
    };
    let mine = d.dir.path().join("elsewhere/allowlist.json");
    let nopin = format!(
        "no XDP filter is pinned at {}: the change applies when the daemon starts",
        pins.display()
    );

    let out = ok(&["allow", "add", "198.51.100.7"]);
    assert!(out.starts_with("added 198.51.100.7/32 (saved in "), "{out}");
    assert!(out.contains(&nopin), "{out}");
    assert_eq!(daemon_cidrs(), json!(["198.51.100.7/32"]));
    let daemons = std::fs::read_to_string(d.dir.path().join("var/allowlist.json")).unwrap();
    assert!(daemons.contains("198.51.100.7/32"), "{daemons}");
    assert!(!mine.exists(), "the CLI wrote its own allowlist.json");

    let out = ok(&["allow", "add", "198.51.100.0/24"]);
    assert!(out.starts_with("added 198.51.100.0/24"), "{out}");
    let out = ok(&["allow", "add", "198.51.100.9/24"]);
    assert!(
        out.starts_with("198.51.100.0/24 is already allowed"),
        "{out}"
    );
    assert_eq!(
        daemon_cidrs(),
        json!(["198.51.100.0/24", "198.51.100.7/32"])
    );

    // `allow list` shows the daemon's list, through this config and the daemon's own.
    for out in [ok(&["allow", "list"]), d.cli_ok(&["allow", "list"])] {
        let rows: Vec<&str> = out.lines().collect();
        assert!(rows[0].starts_with("CIDR"), "{out}");
        assert!(
            rows[1].starts_with("198.51.100.0/24") && rows[1].contains("runtime"),
            "{out}"
        );
        assert!(
            rows[2].starts_with("198.51.100.7/32") && rows[2].ends_with(" -"),
            "{out}"
        );
        assert!(out.contains("(no XDP filter pinned at"), "{out}");
    }
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["allow", "list", "--json"])).unwrap();
    assert_eq!(
        listed,
        json!([
            {"cidr": "198.51.100.0/24", "origin": "runtime", "live": null},
            {"cidr": "198.51.100.7/32", "origin": "runtime", "live": null},
        ])
    );

    let out = ok(&["allow", "remove", "198.51.100.7"]);
    assert!(
        out.starts_with("removed 198.51.100.7/32 (saved in "),
        "{out}"
    );
    assert!(out.contains(&nopin), "{out}");
    assert_eq!(daemon_cidrs(), json!(["198.51.100.0/24"]));
    let o = cli(&["allow", "remove", "198.51.100.7"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("198.51.100.7/32 is not in the allowlist (see `edgefilter allow list`)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!mine.exists(), "the CLI wrote its own allowlist.json");

    assert!(
        !d.dir.path().join("elsewhere/keys.db").exists(),
        "through the daemon, the CLI records nothing in its own store"
    );

    // No daemon: this config's own (empty) file, edited by the CLI itself.
    d.kill9();
    let out = ok(&["allow", "list", "--json"]);
    assert_eq!(out.trim(), "[]");
    let out = ok(&["allow", "add", "203.0.113.0/24"]);
    assert!(out.starts_with("added 203.0.113.0/24"), "{out}");
    let file = std::fs::read_to_string(&mine).unwrap();
    assert!(file.contains("203.0.113.0/24"), "{file}");

    // Each change once, in the trail of the store beside the file it changed.
    let trail = |out: String| -> Vec<(String, String, String)> {
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap().to_owned();
                (s("action"), s("object"), s("result"))
            })
            .collect()
    };
    let row = |a: &str, o: &str, r: &str| (a.to_owned(), o.to_owned(), r.to_owned());
    assert_eq!(
        trail(d.cli_ok(&["audit", "--json"])),
        [
            row("allow.add", "198.51.100.7/32", "ok"),
            row("allow.add", "198.51.100.0/24", "ok"),
            row("allow.add", "198.51.100.0/24", "ok"),
            row("allow.remove", "198.51.100.7/32", "ok"),
            row(
                "allow.remove",
                "198.51.100.7/32",
                "NOT_FOUND: 198.51.100.7/32 is not in the allowlist."
            ),
        ]
    );
    let mine = trail(ok(&["audit", "--json"]));
    assert_eq!(mine, [row("allow.add", "203.0.113.0/24", "ok")]);
}

/// Every change through the daemon, the CLI's and the admin API's own, made or refused, is in
/// the audit trail exactly once: made by the token's holder at the caller's address (for the
/// CLI's local user), naming a key by its id, never by the key. `GET /v1/audit` matches the
/// document, `edgefilter audit --json` shows the same, and neither holds a key.
#[test]
fn every_change_through_the_daemon_is_audited_once() {
    let doc = openapi();
    let up = upstream::Upstream::start();
    let d = Daemon::start(up.addr);
    let token = d.token();

    // Through the CLI (the daemon is up: the CLI goes through it and records nothing itself).
    let (id, key) = d.create_key("alice");
    d.cli_ok(&["keys", "revoke", &key]);
    d.cli_ok(&["users", "suspend", "alice"]);
    d.cli_ok(&["allow", "add", "198.51.100.7"]);
    let o = d.cli(&["keys", "approve", &id]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "approving a revoked key is refused"
    );
    // Straight to the admin API.
    let (s, v) = d.admin_call("POST", "/v1/users/alice/activate", Some(&token), None);
    assert_eq!(s, 200, "{v}");
    let (s, _) = d.admin_call(
        "POST",
        "/v1/keys/key_000000000000/revoke",
        Some(&token),
        None,
    );
    assert_eq!(s, 404);
    let rotate = format!("/v1/keys/{key}/rotate");
    let (s, _) = d.admin_call(
        "POST",
        &rotate,
        Some(&token),
        Some(&json!({"grace": "forever"})),
    );
    assert_eq!(s, 400);
    // Not an operation at all (no token, a body that does not parse): nothing to record.
    let (s, _) = d.admin_call("POST", "/v1/users/alice/delete", None, None);
    assert_eq!(s, 401);
    let (s, _) = d.admin_call(
        "POST",
        "/v1/keys",
        Some(&token),
        Some(&json!({"tenant": 1})),
    );
    assert_eq!(s, 400);

    let (s, trail) = d.admin_call("GET", "/v1/audit", Some(&token), None);
    assert_eq!(s, 200, "{trail}");
    assert_documented(&doc, "/v1/audit", "get", s, &trail);
    let cli_for = format!(
        "admin@127.0.0.1 for {}",
        crate::support::daemon::cli_actor()
    );
    let (c, a) = (cli_for.as_str(), "admin@127.0.0.1");
    let rows: Vec<(&str, &str, &str, &str)> = trail
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["object"].as_str().unwrap(),
                e["result"].as_str().unwrap().split(':').next().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (c, "key.create", id.as_str(), "ok"),
            (c, "key.revoke", id.as_str(), "ok"),
            (c, "user.suspend", "alice", "ok"),
            (c, "allow.add", "198.51.100.7/32", "ok"),
            (c, "key.approve", id.as_str(), "CONFLICT"),
            (a, "user.activate", "alice", "ok"),
            (a, "key.revoke", "key_000000000000", "NOT_FOUND"),
            (a, "key.rotate", id.as_str(), "BAD_REQUEST"),
        ],
        "{trail}"
    );

    // The CLI reads the same trail from the store, beside the running daemon.
    let out = d.cli_ok(&["audit", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        trail
    );
    let table = d.cli_ok(&["audit", "--since", "1h"]);
    assert_eq!(table.lines().count(), 1 + 8, "{table}");
    let (s, none) = d.admin_call(
        "GET",
        "/v1/audit?since=2999-01-01T00:00:00Z",
        Some(&token),
        None,
    );
    assert_eq!((s, none), (200, json!([])));
    let (s, last) = d.admin_call("GET", "/v1/audit?since=1h&limit=1", Some(&token), None);
    assert_eq!(s, 200);
    assert_eq!(last.as_array().map(Vec::len), Some(1));
    assert_eq!(last[0]["action"], "key.rotate");

    for text in [trail.to_string(), out, table, d.log()] {
        assert!(
            !text.contains(&key[8..]),
            "a key in the trail or log: {text}"
        );
    }
}
