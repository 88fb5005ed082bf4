//! A key cannot be made expired from the start: an expiry in the past, or not after the key's
//! not-before time, is refused by `keys create` (exit 2, with or without a daemon) and by
//! `POST /v1/keys` (400), and no key is made.

use std::net::TcpListener;

use serde_json::json;

use crate::support::daemon::Daemon;

/// `keys create` with `extra`: (exit code, stderr).
fn create(d: &Daemon, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["keys", "create", "--tenant", "acme", "--user", "alice"];
    args.extend_from_slice(extra);
    let out = d.cli(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_keys(d: &Daemon) {
    let out = d.cli_ok(&["keys", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(list, json!([]), "a key was made");
}

#[test]
fn an_expiry_in_the_past_is_refused_by_the_cli_and_the_api() {
    // The route's upstream is never called.
    let upstream = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut d = Daemon::configure(&crate::support::daemon::default_tables(upstream));
    // Without a daemon (the store written directly) ...
    let (code, stderr) = create(&d, &["--expires", "2020-01-01T00:00:00Z"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--expires is 2020-01-01T00:00:00Z, which is not in the future"),
        "{stderr}"
    );
    let (code, stderr) = create(&d, &["--not-before", "30d", "--expires", "7d"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("which is not after --not-before"),
        "{stderr}"
    );
    assert_no_keys(&d);
    // ... and with one.
    d.restart();
    let (code, stderr) = create(&d, &["--expires", "2020-01-01T00:00:00Z"]);
    assert_eq!(code, 2, "{stderr}");
    let body = json!({"tenant": "acme", "user": "alice", "expires": "2020-01-01T00:00:00Z"});
    let (s, v) = d.admin_call("POST", "/v1/keys", Some(&d.token()), Some(&body));
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "BAD_REQUEST", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`expires` is 2020-01-01T00:00:00Z, which is not in the future"),
        "{v}"
    );
    let body = json!({"tenant": "acme", "user": "alice", "expires": "1d", "not_before": "2d"});
    let (s, v) = d.admin_call("POST", "/v1/keys", Some(&d.token()), Some(&body));
    assert_eq!(s, 400, "{v}");
    assert_no_keys(&d);
    // A future expiry is fine.
    let (code, stderr) = create(&d, &["--expires", "90d"]);
    assert_eq!(code, 0, "{stderr}");
}
