//! Auto-block and the denylist through the real daemon without XDP (`run --no-xdp`): a source
//! that earns `autoblock.failures` key denials is refused at accept until its ban expires,
//! another source and an exempt one are never refused, 403s do not count; `deny add|list|remove`
//! through the daemon and without it; `/v1/denylist`; `edgefilter_autoblocked_sources`; every
//! ban in the audit trail. Sources are loopback addresses (127.0.0.0/8), bound by the client.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};

use crate::support::daemon::{Daemon, default_tables};
use crate::support::openapi::{assert_documented, openapi};
use crate::support::upstream;

const BAD_KEY: &str = "ef_live_0123456789abcdefghijABCDEFGHIJ01000000";

/// `[autoblock]` after the default tables: 5 failures in 10 s ban for `ban`.
fn configure(up: SocketAddr, ban: &str, exempt: &str) -> Daemon {
    Daemon::configure(&format!(
        "{}\n[autoblock]\nenabled = true\nfailures = 5\nwindow = \"10s\"\nban = \"{ban}\"\n\
         exempt = [\"{exempt}\"]\n",
        default_tables(up)
    ))
}

/// What a client from `src` gets for `GET /v1/echo` with `key`: the status, or `None` when the
/// connection was closed without an answer (refused at accept).
fn call_from(src: &str, to: SocketAddr, key: &str) -> Option<u16> {
    let src: IpAddr = src.parse().unwrap();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(src, 0).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(2)).ok()?;
    let mut s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    // A refused connection may already be reset when we write.
    let _ = s.write_all(req.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.get(9..12).and_then(|c| c.parse().ok())
}

/// Polls until `f` holds (every 20 ms, up to `limit`); how long it took.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

fn denylist(d: &Daemon) -> Vec<Value> {
    let (s, v) = d.admin_call("GET", "/v1/denylist", Some(&d.token()), None);
    assert_eq!(s, 200, "{v}");
    assert_documented(&openapi(), "/v1/denylist", "get", s, &v);
    v.as_array().unwrap().clone()
}

fn metric(d: &Daemon, name: &str) -> Option<f64> {
    let (_, v) = d.admin_call("GET", "/metrics", None, None);
    let text = v.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|n| n.parse().ok())
}

#[test]
fn failures_ban_a_source_at_accept_until_the_ban_expires() {
    let up = upstream::Upstream::start();
    let mut d = configure(up.addr, "3s", "127.0.0.3");
    d.restart();
    let (_, good) = d.create_key("alice");
    let to = d.http;
    assert!(
        d.log().contains("refused at accept in userspace"),
        "the start-up warning says where bans are enforced: {}",
        d.log()
    );

    // 403/429 from a valid key never count; four key denials are below the threshold.
    let (_, scoped) = d.create_key("bob");
    let s = d.cli_ok(&[
        "keys", "create", "--tenant", "acme", "--user", "carol", "--json",
    ]);
    let unscoped: Value = serde_json::from_str(s.trim()).unwrap();
    let unscoped = unscoped["key"].as_str().unwrap().to_owned();
    for _ in 0..10 {
        assert_eq!(call_from("127.0.0.2", to, &unscoped), Some(403));
    }
    assert_eq!(call_from("127.0.0.2", to, &scoped), Some(200));
    for _ in 0..4 {
        assert_eq!(call_from("127.0.0.2", to, BAD_KEY), Some(401));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        call_from("127.0.0.2", to, &good),
        Some(200),
        "not banned yet"
    );
    assert!(denylist(&d).is_empty());

    // The fifth: banned, refused at accept within a moment; its neighbour is not.
    assert_eq!(call_from("127.0.0.2", to, BAD_KEY), Some(401));
    let banned_at = Instant::now();
    let took = within(Duration::from_secs(1), "ban in force", || {
        call_from("127.0.0.2", to, &good).is_none()
    });
    eprintln!("fifth denial → refused at accept after {took:?}");
    assert_eq!(call_from("127.0.0.1", to, &good), Some(200));
    let bans = denylist(&d);
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["source"], "127.0.0.2");
    assert_eq!(bans[0]["reason"], "autoblock");
    assert!(bans[0]["expires_in_s"].as_i64().unwrap() <= 3);
    assert!(!bans[0]["host"].as_str().unwrap().is_empty());
    assert_eq!(metric(&d, "edgefilter_autoblocked_sources"), Some(1.0));

    // An exempt source is never banned, however often it fails.
    for _ in 0..20 {
        assert_eq!(call_from("127.0.0.3", to, BAD_KEY), Some(401));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(call_from("127.0.0.3", to, &good), Some(200));
    assert_eq!(denylist(&d).len(), 1);

    // The ban ends on time.
    assert!(call_from("127.0.0.2", to, &good).is_none());
    std::thread::sleep(Duration::from_millis(2_500).saturating_sub(banned_at.elapsed()));
    assert!(
        call_from("127.0.0.2", to, &good).is_none(),
        "still banned before its 3 s"
    );
    within(Duration::from_secs(2), "ban expired", || {
        call_from("127.0.0.2", to, &good) == Some(200)
    });
    eprintln!(
        "ban of 3s: served again {:?} after the fifth denial",
        banned_at.elapsed()
    );
    within(
        Duration::from_secs(2),
        "expired ban leaves the list",
        || denylist(&d).is_empty(),
    );
    assert_eq!(metric(&d, "edgefilter_autoblocked_sources"), Some(0.0));

    // Auto-block's ban is in the audit trail.
    let trail = d.cli_ok(&["audit", "--json"]);
    let trail: Vec<Value> = serde_json::from_str(&trail).unwrap();
    assert!(
        trail.iter().any(|e| e["actor"] == "autoblock"
            && e["action"] == "deny.add"
            && e["object"] == "127.0.0.2"
            && e["result"] == "ok"),
        "{trail:?}"
    );
}

#[test]
fn deny_commands_with_and_without_the_daemon() {
    let doc = openapi();
    let up = upstream::Upstream::start();
    let mut d = configure(up.addr, "10m", "10.0.0.0/8");

    // No daemon: the store is written; the daemon enforces it when it starts.
    let out = d.cli_ok(&["deny", "add", "127.0.0.5", "--for", "1h"]);
    assert!(out.contains("banned 127.0.0.5"), "{out}");
    let list: Vec<Value> = serde_json::from_str(&d.cli_ok(&["deny", "list", "--json"])).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["reason"], "manual");
    assert!(list[0]["expires_in_s"].as_i64().unwrap() > 3500);
    let bad = d.cli(&["deny", "add", "198.18.0.0/24"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("IPv4 bans are per address"));
    let exempt = d.cli(&["deny", "add", "10.1.2.3"]);
    assert_eq!(exempt.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&exempt.stderr).contains("exempt"));

    d.restart();
    let (_, good) = d.create_key("alice");
    within(
        Duration::from_secs(1),
        "a stored ban enforced at start",
        || call_from("127.0.0.5", d.http, &good).is_none(),
    );
    assert_eq!(call_from("127.0.0.6", d.http, &good), Some(200));

    // Through the daemon: add (IPv6 widened to its /64), list, remove.
    let out = d.cli_ok(&["deny", "add", "fd00:ef::5", "--json"]);
    let made: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["source"], "fd00:ef::/64");
    assert_eq!(made["reason"], "manual");
    assert!(
        made["expires_in_s"].as_i64().unwrap() > 590,
        "autoblock.ban by default"
    );
    let text = d.cli_ok(&["deny", "list"]);
    assert!(
        text.contains("127.0.0.5") && text.contains("fd00:ef::/64"),
        "{text}"
    );
    assert!(text.contains("manual"), "{text}");
    let out = d.cli_ok(&["deny", "remove", "127.0.0.5"]);
    assert!(out.contains("lifted the ban of 127.0.0.5"), "{out}");
    within(Duration::from_secs(1), "a lifted ban", || {
        call_from("127.0.0.5", d.http, &good) == Some(200)
    });
    let again = d.cli(&["deny", "remove", "127.0.0.5"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not banned"));
    let out = d.cli_ok(&["deny", "remove", "fd00:ef::1:2"]);
    assert!(
        out.contains("fd00:ef::/64"),
        "an address inside the prefix names it: {out}"
    );

    // The API itself, against the document.
    let token = d.token();
    let body = json!({"source": "127.0.0.7", "for": "90s"});
    let (s, v) = d.admin_call("POST", "/v1/denylist", Some(&token), Some(&body));
    assert_eq!(s, 200, "{v}");
    assert_documented(&doc, "/v1/denylist", "post", s, &v);
    assert!(v["expires_in_s"].as_i64().unwrap() <= 90);
    for (body, want) in [
        (json!({"source": "not-an-address"}), 400),
        (json!({"source": "127.0.0.8", "for": "soon"}), 400),
        (json!({"source": "10.9.9.9"}), 409),
    ] {
        let (s, v) = d.admin_call("POST", "/v1/denylist", Some(&token), Some(&body));
        assert_eq!(s, want, "{body}: {v}");
        assert_documented(&doc, "/v1/denylist", "post", s, &v);
    }
    let gone = json!({"source": "127.0.0.9"});
    let (s, v) = d.admin_call("DELETE", "/v1/denylist", Some(&token), Some(&gone));
    assert_eq!(s, 404, "{v}");
    assert_documented(&doc, "/v1/denylist", "delete", s, &v);
    let (s, v) = d.admin_call(
        "DELETE",
        "/v1/denylist",
        Some(&token),
        Some(&body_of("127.0.0.7")),
    );
    assert_eq!(s, 200, "{v}");
    assert_documented(&doc, "/v1/denylist", "delete", s, &v);
    assert_eq!(v, json!([]));
    let (s, _) = d.admin_call("GET", "/v1/denylist", None, None);
    assert_eq!(s, 401);

    // Every change, made or refused, is in the audit trail.
    let trail: Vec<Value> = serde_json::from_str(&d.cli_ok(&["audit", "--json"])).unwrap();
    let seen = |action: &str, object: &str, ok: bool| {
        trail
            .iter()
            .any(|e| e["action"] == action && e["object"] == object && (e["result"] == "ok") == ok)
    };
    assert!(seen("deny.add", "127.0.0.5", true), "{trail:?}");
    assert!(seen("deny.add", "10.1.2.3", false), "{trail:?}");
    assert!(seen("deny.add", "fd00:ef::/64", true), "{trail:?}");
    assert!(seen("deny.remove", "127.0.0.5", true), "{trail:?}");
    assert!(seen("deny.remove", "127.0.0.5", false), "{trail:?}");
    assert!(seen("deny.add", "10.9.9.9", false), "{trail:?}");
}

fn body_of(source: &str) -> Value {
    json!({ "source": source })
}
