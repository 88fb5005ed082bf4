//! Auto-block and the denylist through the real daemon without XDP (`run --no-xdp`): a source
//! that earns `autoblock.failures` key denials is refused at accept until its ban expires,
//! another source and an exempt one are never refused, 403s do not count; `deny add|list|remove`
//! through the daemon and without it; `/v1/denylist`; `edgefilter_autoblocked_sources`; every
//! ban in the audit trail; a kept-alive connection of a newly banned source closed at its next
//! request; `[autoblock]` reloaded by SIGHUP. Sources are loopback addresses (127.0.0.0/8),
//! bound by the client.

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

/// A kept-alive connection from `src` (bound by the client): one request at a time.
struct KeptAlive(std::net::TcpStream);

impl KeptAlive {
    fn open(src: &str, to: SocketAddr) -> Self {
        let src: IpAddr = src.parse().unwrap();
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        s.connect_timeout(&to.into(), Duration::from_secs(2))
            .unwrap();
        let s: std::net::TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self(s)
    }

    /// `GET /v1/echo` on this connection: the status, or `None` when the server closed it
    /// without an answer.
    fn get(&mut self, key: &str) -> Option<u16> {
        let req =
            format!("GET /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n");
        self.0.write_all(req.as_bytes()).ok()?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return text.get(9..12).and_then(|c| c.parse().ok());
                }
            }
            match self.0.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Without XDP, a ban reaches a source's connections that were open before it: the next
/// request on each is not answered, the connection is closed; other sources' are served.
#[test]
fn a_banned_sources_kept_alive_connection_is_closed_at_its_next_request() {
    let up = upstream::Upstream::start();
    let mut d = configure(up.addr, "10m", "10.0.0.0/8");
    d.restart();
    let (_, good) = d.create_key("alice");
    let mut banned = KeptAlive::open("127.0.0.2", d.http);
    let mut other = KeptAlive::open("127.0.0.3", d.http);
    for _ in 0..3 {
        assert_eq!(banned.get(&good), Some(200));
        assert_eq!(other.get(&good), Some(200));
    }

    d.cli_ok(&["deny", "add", "127.0.0.2"]);
    assert!(
        call_from("127.0.0.2", d.http, &good).is_none(),
        "a new connection is refused at accept"
    );
    assert_eq!(
        banned.get(&good),
        None,
        "the open one is closed at its next request"
    );
    assert_eq!(other.get(&good), Some(200), "another source's stays served");

    // Five key denials on one kept-alive connection: auto-block bans the source, and the
    // same connection is closed at its next request.
    let mut failing = KeptAlive::open("127.0.0.4", d.http);
    for _ in 0..5 {
        assert_eq!(failing.get(BAD_KEY), Some(401));
    }
    within(Duration::from_secs(2), "auto-block's ban", || {
        denylist(&d).iter().any(|b| b["source"] == "127.0.0.4")
    });
    assert_eq!(failing.get(&good), None);
    assert_eq!(other.get(&good), Some(200));
}

/// `[autoblock]` is reloaded by SIGHUP: enabled, failures, window, ban, ipv6_prefix and exempt
/// each apply to what happens next, and the reload's log names them.
#[test]
fn a_reload_puts_a_new_autoblock_in_force() {
    let up = upstream::Upstream::start();
    let mut d = Daemon::configure(&format!(
        "{}\n[autoblock]\nenabled = false\nfailures = 5\nwindow = \"10s\"\nban = \"10m\"\n",
        default_tables(up.addr)
    ));
    d.restart();
    let (_, good) = d.create_key("alice");
    let to = d.http;
    for _ in 0..10 {
        assert_eq!(call_from("127.0.0.2", to, BAD_KEY), Some(401));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(denylist(&d).is_empty(), "enabled = false counts nothing");
    let before = d.cli_ok(&["deny", "add", "fd00:ef::9", "--json"]);
    let before: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(before["source"], "fd00:ef::/64");
    assert!(before["expires_in_s"].as_i64().unwrap() > 590);

    let text = std::fs::read_to_string(d.config()).unwrap().replace(
        "[autoblock]\nenabled = false\nfailures = 5\nwindow = \"10s\"\nban = \"10m\"\n",
        "[autoblock]\nenabled = true\nfailures = 3\nwindow = \"2s\"\nban = \"2s\"\n\
         ipv6_prefix = 48\nexempt = [\"127.0.0.3\"]\n",
    );
    std::fs::write(d.config(), text).unwrap();
    sighup(&d);
    within(Duration::from_secs(5), "the reload's log line", || {
        d.log().contains("config reloaded")
    });
    let log = d.log();
    for key in [
        "autoblock.enabled",
        "autoblock.failures",
        "autoblock.window",
        "autoblock.ban",
        "autoblock.ipv6_prefix",
        "autoblock.exempt",
    ] {
        assert!(log.contains(&format!("\"{key}\"")), "{key} applied: {log}");
    }
    assert!(!log.contains("needs a restart"), "{log}");

    // failures = 3 within window = 2s: three denials ban; two, then two after the window,
    // do not.
    for _ in 0..2 {
        assert_eq!(call_from("127.0.0.5", to, BAD_KEY), Some(401));
    }
    std::thread::sleep(Duration::from_millis(2_300));
    for _ in 0..2 {
        assert_eq!(call_from("127.0.0.5", to, BAD_KEY), Some(401));
    }
    for _ in 0..3 {
        assert_eq!(call_from("127.0.0.2", to, BAD_KEY), Some(401));
    }
    within(Duration::from_secs(1), "banned after three", || {
        call_from("127.0.0.2", to, &good).is_none()
    });
    assert_eq!(
        call_from("127.0.0.5", to, &good),
        Some(200),
        "two and two in separate windows"
    );
    // exempt = 127.0.0.3: never banned.
    for _ in 0..6 {
        assert_eq!(call_from("127.0.0.3", to, BAD_KEY), Some(401));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(call_from("127.0.0.3", to, &good), Some(200));
    // ban = 2s: the ban ends; ipv6_prefix = 48: a new IPv6 ban covers the /48.
    within(Duration::from_secs(4), "a 2 s ban ends", || {
        call_from("127.0.0.2", to, &good) == Some(200)
    });
    let after = d.cli_ok(&["deny", "add", "fd00:ef::9", "--json"]);
    let after: Value = serde_json::from_str(&after).unwrap();
    assert_eq!(after["source"], "fd00:ef::/48");
    assert!(after["expires_in_s"].as_i64().unwrap() <= 2, "{after}");

    // enabled = false again: counting stops.
    let text = std::fs::read_to_string(d.config()).unwrap().replace(
        "enabled = true\nfailures = 3",
        "enabled = false\nfailures = 3",
    );
    std::fs::write(d.config(), text).unwrap();
    sighup(&d);
    within(Duration::from_secs(5), "the second reload", || {
        d.log().matches("config reloaded").count() == 2
    });
    for _ in 0..6 {
        assert_eq!(call_from("127.0.0.6", to, BAD_KEY), Some(401));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(call_from("127.0.0.6", to, &good), Some(200));
}

fn sighup(d: &Daemon) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(d.pid().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}
