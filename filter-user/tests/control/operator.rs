//! The operator's commands with the real daemon running: `explain` answers what the proxy
//! answers for the same request (path shapes the proxy refuses or routes by their decoded
//! form, methods), `keys create --like` through the CLI and the admin API's `like`, `--json`
//! on every changing command through the daemon, and `explain`'s fixes run as printed give a
//! key the proxy lets through.

use std::net::SocketAddr;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, KeepAlive, raw_http};
use crate::support::openapi::{assert_documented, openapi};
use crate::support::upstream::Upstream;

/// Two routes that tell each other apart by the scope they need: `/v1/` (`ai:invoke`) and
/// `/admin/` (`admin`).
fn start(up: SocketAddr) -> Daemon {
    let mut d = Daemon::configure(&format!(
        r#"{}[[route]]
prefix = "/admin/"
upstream = "http://{up}"
scopes = ["admin"]
"#,
        crate::support::daemon::default_tables(up)
    ));
    d.restart();
    d
}

fn parsed(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `explain --key KEY --json EXTRA` against the daemon's config: (exit code, JSON).
fn explain(d: &Daemon, key: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["explain", "--key", key, "--json"];
    args.extend_from_slice(extra);
    let o = d.cli(&args);
    (
        o.status.code().unwrap(),
        parsed(&String::from_utf8_lossy(&o.stdout)),
    )
}

/// One request through the proxy with the key as a bearer token: (status, code, rule).
fn through_proxy(d: &Daemon, method: &str, path: &str, key: &str) -> (u16, Value, Value) {
    let (status, body) = raw_http(d.http, method, path, Some(key), None).unwrap();
    let e = &body["error"];
    (status, e["code"].clone(), e["rule"].clone())
}

#[test]
fn explain_answers_what_the_proxy_answers_for_each_path_shape_and_method() {
    let up = Upstream::start();
    let d = start(up.addr);
    let (_, key) = d.create_key("alice");
    let shapes: [(&str, &str, u16); 22] = [
        ("GET", "/v1/echo", 200),
        ("POST", "/v1/echo?x=1&y=../..", 200),
        ("DELETE", "/v1/echo", 200),
        ("PURGE", "/v1/echo", 200),
        ("GET", "/v1/caf%C3%A9/echo", 200),
        ("GET", "/v%31/echo", 200),
        ("GET", "/v1/x;jsessionid=1/echo", 200),
        ("GET", "/admin/echo", 403),
        ("GET", "/%61dmin/echo", 403),
        ("GET", "/admin;x/echo", 403),
        ("GET", "/v1/..;/admin/echo", 400),
        ("GET", "/v1/%2e%2e/admin/echo", 400),
        ("GET", "/v1/./echo", 400),
        ("GET", "/v1/x%00/echo", 400),
        ("GET", "/v1//echo", 400),
        ("GET", "/v1/a%2fb/echo", 400),
        ("GET", "/v1/%252e/echo", 400),
        ("GET", "/v1/%c0%ae/echo", 400),
        ("GET", "/v1/%5c/echo", 400),
        ("GET", "/nope", 404),
        ("GET", "/v1", 404),
        ("GET", "/V1/echo", 404),
    ];
    for (method, path, want) in shapes {
        let (status, code, rule) = through_proxy(&d, method, path, &key);
        assert_eq!(status, want, "{method} {path}: the proxy");
        let (rc, v) = explain(&d, &key, &["--method", method, "--path", path]);
        assert_eq!(
            (v["status"].as_u64(), &v["code"], &v["rule"]),
            (Some(u64::from(status)), &code, &rule),
            "{method} {path}: explain differs from the proxy: {v}"
        );
        assert_eq!(rc, i32::from(status != 200), "{method} {path}: {v}");
        if status == 403 {
            assert_eq!(v["request"]["route"], "/admin/", "{path}: {v}");
        }
        if status == 200 {
            assert_eq!(v["request"]["route"], "/v1/", "{path}: {v}");
        }
    }
}

#[test]
fn like_json_and_fixes_go_through_the_daemon() {
    let doc = openapi();
    let up = Upstream::start();
    let d = start(up.addr);
    let token = d.token();
    let out = d.cli_ok(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--user",
        "alice",
        "--scope",
        "ai:invoke",
        "--allow-cidr",
        "198.18.0.0/24",
        "--rate",
        "50/s",
        "--burst",
        "60",
        "--json",
    ]);
    let src = parsed(&out);
    let (id, key) = (
        src["id"].as_str().unwrap().to_owned(),
        src["key"].as_str().unwrap().to_owned(),
    );
    let policy = |v: &Value| {
        json!([
            v["tenant"],
            v["user"],
            v["env"],
            v["scopes"],
            v["allowed_cidrs"],
            v["rate"],
            v["burst"]
        ])
    };

    // The CLI's --like goes through the daemon (the audit trail says who asked).
    let copy = parsed(&d.cli_ok(&["keys", "create", "--like", &id, "--json"]));
    assert_eq!(policy(&copy), policy(&src));
    let (_, trail) = d.admin_call("GET", "/v1/audit", Some(&token), None);
    let last = trail.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["action"], &last["object"], &last["result"]),
        (&json!("key.create"), &copy["id"], &json!("ok")),
        "{last}"
    );
    assert!(last["actor"].as_str().unwrap().contains("cli:"), "{last}");

    // The admin API's `like`, by the full key: copied, replaced where given, never echoed.
    let ask = json!({"like": key, "scopes": ["ai:invoke", "ai:read"]});
    let (s, v) = d.admin_call("POST", "/v1/keys", Some(&token), Some(&ask));
    assert_eq!(s, 201, "{v}");
    assert_documented(&doc, "/v1/keys", "post", s, &v);
    assert!(!v.to_string().contains(&key[8..]), "`like` echoed: {v}");
    let mut want = policy(&src);
    want[3] = json!(["ai:invoke", "ai:read"]);
    assert_eq!(policy(&v), want);
    for (body, status) in [
        (json!({"like": "key_000000000000"}), 404),
        (
            json!({"like": "ef_live_0123456789abcdefghijABCDEFGHIJ012345"}),
            404,
        ),
        (json!({"scopes": ["x"]}), 400),
        (json!({"tenant": "acme"}), 400),
        (json!({"like": id, "burst": 5, "colour": "red"}), 400),
    ] {
        let (s, v) = d.admin_call("POST", "/v1/keys", Some(&token), Some(&body));
        assert_eq!(s, status, "{body}: {v}");
        assert_documented(&doc, "/v1/keys", "post", s, &v);
        assert!(!v.to_string().contains("0123456789abcdefghij"), "{v}");
    }

    // --json through the daemon: the same objects as without it.
    let v = parsed(&d.cli_ok(&["keys", "revoke", copy["id"].as_str().unwrap(), "--json"]));
    assert_eq!(
        (&v["action"], &v["id"], &v["status"]),
        (&json!("key.revoke"), &copy["id"], &json!("revoked")),
        "{v}"
    );
    let pending = parsed(&d.cli_ok(&["keys", "create", "--like", &id, "--pending", "--json"]));
    let v = parsed(&d.cli_ok(&["keys", "approve", pending["id"].as_str().unwrap(), "--json"]));
    assert_eq!(
        (&v["action"], &v["status"], &v["state"]),
        (&json!("key.approve"), &json!("active"), &json!("active")),
        "{v}"
    );
    for (verb, status) in [("suspend", "suspended"), ("activate", "active")] {
        let v = parsed(&d.cli_ok(&["users", verb, "alice", "--json"]));
        assert_eq!(
            v,
            json!({"action": format!("user.{verb}"), "user": "alice", "tenant": "acme",
                   "status": status, "keys": 4})
        );
    }
    let v = parsed(&d.cli_ok(&["allow", "add", "198.51.100.0/24", "--json"]));
    assert_eq!(
        (&v["action"], &v["cidr"], &v["changed"]),
        (&json!("allow.add"), &json!("198.51.100.0/24"), &json!(true)),
        "{v}"
    );
    let v = parsed(&d.cli_ok(&["allow", "remove", "198.51.100.0/24", "--json"]));
    assert_eq!(
        (&v["action"], &v["changed"]),
        (&json!("allow.remove"), &json!(true))
    );

    // explain's fix for the address the proxy sees, run as printed: the new key passes the
    // proxy, with the old networks kept.
    let mut c = KeepAlive::new(d.http);
    assert_eq!(c.get("/v1/echo", &key).unwrap().status, 403);
    let (rc, v) = explain(&d, &key, &["--ip", "127.0.0.1", "--path", "/v1/echo"]);
    assert_eq!((rc, &v["code"]), (1, &json!("IP_NOT_ALLOWED")), "{v}");
    let fixed = run_fix(&d, &v);
    assert_eq!(
        fixed["allowed_cidrs"],
        json!(["198.18.0.0/24", "127.0.0.1/32"])
    );
    let fixed_key = fixed["key"].as_str().unwrap();
    assert_eq!(c.get("/v1/echo", fixed_key).unwrap().status, 200);

    // A revoked key: a new one like it, which the proxy lets through.
    d.cli_ok(&["keys", "revoke", fixed["id"].as_str().unwrap()]);
    assert_eq!(c.get("/v1/echo", fixed_key).unwrap().status, 401);
    let (_, v) = explain(&d, fixed_key, &["--path", "/v1/echo"]);
    assert_eq!(v["code"], "KEY_REVOKED", "{v}");
    let again = run_fix(&d, &v);
    assert_eq!(policy(&again), policy(&fixed));
    assert_eq!(
        c.get("/v1/echo", again["key"].as_str().unwrap())
            .unwrap()
            .status,
        200
    );
    // The admin API's explain carries the same command.
    let ask = json!({"key": fixed_key, "path": "/v1/echo"});
    let (s, api) = d.admin_call("POST", "/v1/explain", Some(&token), Some(&ask));
    assert_eq!(s, 200);
    assert_documented(&doc, "/v1/explain", "post", s, &api);
    assert_eq!(api["checks"], v["checks"], "{api}");
}

/// Runs the command of the explanation's answer as printed (through `sh`, the binary first
/// on `PATH`, the daemon's config) plus `--json`: the new key's JSON.
fn run_fix(d: &Daemon, explained: &Value) -> Value {
    let answer = explained["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["answer"] == true)
        .unwrap();
    let command = answer["command"]
        .as_str()
        .unwrap_or_else(|| panic!("no command: {explained}"));
    assert!(
        command.starts_with("edgefilter keys create --like key_"),
        "{command}"
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_edgefilter"));
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} --json"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("EDGEFILTER_CONFIG", d.config())
        .env(edgefilter::xdp::PIN_DIR_ENV, d.pin_dir())
        .output()
        .unwrap();
    crate::support::leaks::scan_cli(&["keys", "create"], &o);
    assert!(
        o.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    parsed(&String::from_utf8_lossy(&o.stdout))
}
