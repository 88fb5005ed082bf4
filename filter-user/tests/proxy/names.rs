//! Stored names that break their rule never reach the upstream (issue 14, finding 1), through
//! the real daemon and an origin that records every request head it receives, byte for byte.
//!
//! The rows are written into the SQLite store by SQL, as a hand edit or an older version could
//! leave them: a user named with the header-smuggling text, a tenant that forges
//! `X-Edgefilter-User`, a scope holding a NUL. Each such key is refused when the daemon loads
//! the store, and when a change reaches a running daemon: it answers `UNKNOWN_KEY`, the origin
//! receives nothing for it, and the daemon's log names the key's id and the rule, never the key
//! or the offending text. Valid keys keep working beside them.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::{Daemon, default_tables, raw_http};
use crate::support::upstream::Upstream;

/// The user name of the issue: it ends `X-Edgefilter-User`, forges a tenant and smuggles a
/// second request to the upstream.
const SMUGGLER: &str = "u\r\nX-Edgefilter-Tenant: root\r\nContent-Length: 0\r\n\r\nGET /admin/pwned HTTP/1.1\r\nHost: upstream\r\n\r\n";

/// `GET /v1/echo` with `key`: (status, answer code).
fn call(d: &Daemon, key: &str) -> (u16, String) {
    let (status, body) = raw_http(d.http, "GET", "/v1/echo", Some(key), None).unwrap();
    let code = body["error"]["code"].as_str().unwrap_or("OK").to_owned();
    (status, code)
}

fn sql(d: &Daemon) -> rusqlite::Connection {
    rusqlite::Connection::open(d.dir.path().join("var/keys.db")).unwrap()
}

/// Asserts the origin received exactly `n` request heads, none of them forged.
fn assert_heads(up: &Upstream, n: usize) {
    let heads = up.heads();
    assert_eq!(heads.len(), n, "{heads:#?}");
    for h in &heads {
        assert!(!h.contains("pwned") && !h.contains("root"), "{h}");
        assert_eq!(h.matches("X-Edgefilter-Tenant:").count(), 1, "{h}");
        assert_eq!(h.matches("X-Edgefilter-User:").count(), 1, "{h}");
    }
}

/// Asserts the log names `id` as refused for a control character, without the offending text.
fn assert_logged(d: &Daemon, id: &str) {
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("stored key refused") && l.contains(id))
        .unwrap_or_else(|| panic!("no refusal of {id} in the log:\n{log}"));
    assert!(line.contains("control_character"), "{line}");
    assert!(!log.contains('\r') && !log.contains("pwned"), "{log:?}");
}

#[test]
fn stored_names_that_break_the_rule_are_refused_and_never_forwarded() {
    let up = Upstream::start();
    let mut d = Daemon::configure(&default_tables(up.addr));
    let (_, alice) = d.create_key("alice");
    let (mallory_id, mallory) = d.create_key("mallory");
    let (carol_id, carol) = d.create_key("carol");
    let bob: Value = serde_json::from_str(&d.cli_ok(&[
        "keys",
        "create",
        "--tenant",
        "other",
        "--user",
        "bob",
        "--scope",
        "ai:invoke",
        "--json",
    ]))
    .unwrap();
    let (bob_id, bob) = (bob["id"].as_str().unwrap(), bob["key"].as_str().unwrap());
    let db = sql(&d);
    db.execute(
        "UPDATE users SET name = ?1 WHERE name = 'mallory'",
        [SMUGGLER],
    )
    .unwrap();
    db.execute(
        "UPDATE tenants SET name = ?1 WHERE name = 'other'",
        ["other\r\nX-Edgefilter-User: root"],
    )
    .unwrap();
    db.execute(
        "UPDATE keys SET scopes = ?1 WHERE id = ?2",
        ["ai:invoke ai:\0x", &carol_id],
    )
    .unwrap();
    drop(db);

    d.restart();
    assert_eq!(call(&d, &alice), (200, "OK".to_owned()));
    for (id, key) in [
        (&*mallory_id, &*mallory),
        (bob_id, bob),
        (&carol_id, &carol),
    ] {
        assert_eq!(call(&d, key), (401, "UNKNOWN_KEY".to_owned()), "{id}");
        assert_logged(&d, id);
    }
    assert_heads(&up, 1);
    assert!(up.heads()[0].contains("\r\nX-Edgefilter-User: alice\r\n"));
    assert!(
        d.log().contains("3 stored key(s) break a name or id rule"),
        "{}",
        d.log()
    );

    // A key whose row changes under the running daemon: the catch-up drops it.
    let (dave_id, dave) = d.create_key("dave");
    assert_eq!(call(&d, &dave), (200, "OK".to_owned()));
    let db = sql(&d);
    db.execute(
        "UPDATE users SET name = ?1 WHERE name = 'dave'",
        ["dave\nX-Edgefilter-Tenant: root"],
    )
    .unwrap();
    let rev: i64 = db
        .query_row(
            "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "INSERT INTO changes (revision, at, kind, subject) VALUES (?1, 0, 'key', ?2)",
        rusqlite::params![rev, dave_id],
    )
    .unwrap();
    drop(db);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&d, &dave).0 == 200 {
        assert!(Instant::now() < deadline, "the changed row is still served");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(call(&d, &dave), (401, "UNKNOWN_KEY".to_owned()));
    assert_logged(&d, &dave_id);
    // Alice's request and Dave's while his row was valid; nothing after.
    let served = up.heads().len();
    assert!(served >= 2, "{served}");
    assert_heads(&up, served);
    assert_eq!(call(&d, &alice), (200, "OK".to_owned()));
    assert_heads(&up, served + 1);
}
