//! Usage-limited keys through the real daemon (2 shards): credits count down to exactly zero
//! under concurrent connections, the `CREDITS_EXHAUSTED` answer, `keys credits` applied before
//! it returns, refills on the (test) clock, a route's `cost`, and what a `kill -9` or a clean
//! stop does to the credits held by the daemon.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::{Daemon, KeepAlive};
use crate::support::upstream::Upstream;

/// The daemon's config: auto-block off (the 429s would not count, but keep it simple), a
/// `/v1/` route costing 1 and a `/big/` route costing 5.
fn tables(up: SocketAddr) -> String {
    format!(
        r#"
[keys]
environment = "live"
[log]
format = "text"
access_log = "off"
[autoblock]
enabled = false
[[route]]
prefix = "/v1/"
upstream = "http://{up}"
[[route]]
prefix = "/big/"
upstream = "http://{up}"
cost = 5
"#
    )
}

/// `keys create --credits N [--refill R] --json`: (id, key).
fn create(d: &Daemon, credits: u64, refill: Option<&str>) -> (String, String) {
    let n = credits.to_string();
    let mut args = vec![
        "keys",
        "create",
        "--tenant",
        "acme",
        "--user",
        "alice",
        "--credits",
        &n,
        "--json",
    ];
    if let Some(r) = refill {
        args.extend(["--refill", r]);
    }
    let v: Value = serde_json::from_str(d.cli_ok(&args).trim()).unwrap();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

/// `keys show ID --json`'s `credits_remaining`.
fn remaining(d: &Daemon, id: &str) -> u64 {
    let v: Value = serde_json::from_str(d.cli_ok(&["keys", "show", id, "--json"]).trim()).unwrap();
    v["credits_remaining"]
        .as_u64()
        .expect("a usage-limited key")
}

/// One GET on a fresh connection: status, the lowercased head, the JSON body.
fn get(addr: SocketAddr, path: &str, key: &str) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, head.to_ascii_lowercase(), body)
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.strip_prefix(&format!("{name}:"))
            .map(|v| v.trim().to_owned())
    })
}

/// `conns` keep-alive connections, one thread each, spend the key on `path` until each has
/// seen a 429; returns the 2xx count. Every answer must be 200 or 429 `CREDITS_EXHAUSTED`.
fn spend_all(addr: SocketAddr, key: &str, path: &str, conns: usize) -> u64 {
    let ok = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (ok, key, path) = (Arc::clone(&ok), key.to_owned(), path.to_owned());
            std::thread::spawn(move || {
                let mut c = KeepAlive::new(addr);
                let t0 = Instant::now();
                loop {
                    let a = c.get(&path, &key).unwrap();
                    match a.status {
                        200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => return,
                        s => panic!("unexpected status {s}"),
                    }
                    assert!(t0.elapsed() < Duration::from_secs(60), "never ran out");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    ok.load(Ordering::Relaxed)
}

/// `n` allowed requests in a row on one connection; a refusal while this host fetches its next
/// lease (a loaded machine can be slower than half a lease of requests) is waited out.
fn spend(addr: SocketAddr, key: &str, n: u64) {
    let mut c = KeepAlive::new(addr);
    let mut done = 0;
    let t0 = Instant::now();
    while done < n {
        assert!(t0.elapsed() < Duration::from_secs(60), "stuck at {done}");
        if c.get("/v1/echo", key).unwrap().status == 200 {
            done += 1;
            continue;
        }
        let (status, _, body) = get(addr, "/v1/echo", key);
        if status == 200 {
            done += 1;
            continue;
        }
        let hint = body["error"]["hint"].as_str().unwrap_or_default();
        assert!(hint.contains("still fetching"), "{body}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn credits_count_down_to_exactly_zero_under_eight_connections_and_keys_credits_adds_more() {
    let up = Upstream::start();
    let mut d = Daemon::configure(&tables(up.addr));
    d.restart();
    let (id, key) = create(&d, 100, None);
    assert_eq!(remaining(&d, &id), 100);
    assert_eq!(
        spend_all(d.http, &key, "/v1/echo", 8),
        100,
        "exactly the credits"
    );
    assert_eq!(remaining(&d, &id), 0);
    let (status, _, body) = get(d.http, "/v1/echo", &key);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "CREDITS_EXHAUSTED");

    // `keys credits --add` returns once every shard can spend them: the very next requests pass,
    // on fresh connections (spread over both shards), exactly 10 of them.
    let out = d.cli_ok(&["keys", "credits", &id, "--add", "10", "--json"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["action"], "key.credits");
    assert_eq!(v["key"]["credits_remaining"], 10);
    let mut passed = 0;
    for _ in 0..12 {
        let (status, _, _) = get(d.http, "/v1/echo", &key);
        if status == 200 {
            passed += 1;
        } else {
            assert_eq!(status, 429);
        }
    }
    assert_eq!(passed, 10);
    // `--set` replaces whatever is left.
    d.cli_ok(&["keys", "credits", &id, "--set", "3"]);
    assert_eq!(remaining(&d, &id), 3);
    assert_eq!(spend_all(d.http, &key, "/v1/echo", 8), 3);
    // Audited, with the id and no secret.
    let audit = d.cli_ok(&["audit", "--json"]);
    assert!(audit.contains("key.credits") && audit.contains(&id));
    assert!(!audit.contains(&key));
}

/// More credits than one lease under 8 connections: the daemon leases again and again while
/// they are spent, and the count still ends at exactly zero. A request that finds this host's
/// lease dry while the next one is fetched is refused with the "fetching" hint and retried.
#[test]
fn credits_over_many_leases_count_down_to_exactly_zero() {
    let up = Upstream::start();
    let mut d = Daemon::configure(&tables(up.addr));
    d.restart();
    let (id, key) = create(&d, 1000, None);
    let ok = Arc::new(AtomicU64::new(0));
    let fetching = Arc::new(AtomicU64::new(0));
    let addr = d.http;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (ok, fetching, key) = (Arc::clone(&ok), Arc::clone(&fetching), key.clone());
            std::thread::spawn(move || {
                let mut c = KeepAlive::new(addr);
                let t0 = Instant::now();
                loop {
                    assert!(t0.elapsed() < Duration::from_secs(90), "never ran out");
                    if c.get("/v1/echo", &key).unwrap().status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let (status, _, body) = get(addr, "/v1/echo", &key);
                    if status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    assert_eq!(body["error"]["code"], "CREDITS_EXHAUSTED");
                    let hint = body["error"]["hint"].as_str().unwrap();
                    if hint.contains("do not refill") {
                        return;
                    }
                    assert!(hint.contains("still fetching"), "{hint}");
                    fetching.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 1000, "exactly the credits");
    assert_eq!(remaining(&d, &id), 0);
    eprintln!(
        "1000 credits over 8 connections: {} refusals while a lease was fetched",
        fetching.load(Ordering::Relaxed)
    );
}

#[test]
fn a_spent_key_answers_429_credits_exhausted_saying_when_they_refill_or_that_they_do_not() {
    let up = Upstream::start();
    let mut d = Daemon::configure(&tables(up.addr));
    d.restart();
    let (id, key) = create(&d, 1, Some("50/hour"));
    assert_eq!(get(d.http, "/v1/echo", &key).0, 200);
    let (status, head, body) = get(d.http, "/v1/echo", &key);
    assert_eq!(status, 429, "{head}");
    let e = &body["error"];
    assert_eq!(e["code"], "CREDITS_EXHAUSTED");
    assert_eq!(e["key_id"], id.as_str());
    let hint = e["hint"].as_str().unwrap();
    assert!(hint.contains("they refill at"), "{hint}");
    let retry: u64 = header(&head, "retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert!(!head.contains(&key.to_ascii_lowercase()) && !hint.contains(&key));

    let (_, key2) = create(&d, 0, None);
    let (status, head, body) = get(d.http, "/v1/echo", &key2);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "CREDITS_EXHAUSTED");
    let hint = body["error"]["hint"].as_str().unwrap();
    assert!(
        hint.contains("do not refill") && hint.contains("keys credits"),
        "{hint}"
    );
    assert_eq!(header(&head, "retry-after"), None, "waiting does not help");
}

#[test]
fn credits_refill_to_the_refill_amount_at_the_period_boundary() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "0").unwrap();
    let mut d = Daemon::configure(&tables(up.addr))
        .with_env("EDGEFILTER_TEST_CLOCK_FILE", clock.to_str().unwrap());
    d.restart();
    let (id, key) = create(&d, 2, Some("3/hour"));
    assert_eq!(spend_all(d.http, &key, "/v1/echo", 2), 2);
    // Move the refill clock past the next full hour.
    let now = edgefilter::store::unix_now();
    let ahead = (now / 3600 + 1) * 3600 - now + 5;
    std::fs::write(&clock, ahead.to_string()).unwrap();
    let t0 = Instant::now();
    while get(d.http, "/v1/echo", &key).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never refilled");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reset to 3 (not 0 + 3 added on top of anything): one spent above, two left.
    assert_eq!(spend_all(d.http, &key, "/v1/echo", 2), 2);
    assert_eq!(remaining(&d, &id), 0);
}

#[test]
fn a_route_cost_of_5_charges_5() {
    let up = Upstream::start();
    let mut d = Daemon::configure(&tables(up.addr));
    d.restart();
    let (id, key) = create(&d, 12, Some("12/day"));
    assert_eq!(get(d.http, "/big/echo", &key).0, 200);
    assert_eq!(remaining(&d, &id), 7);
    assert_eq!(get(d.http, "/big/echo", &key).0, 200);
    let (status, _, body) = get(d.http, "/big/echo", &key);
    assert_eq!(status, 429, "2 left cannot pay 5");
    assert!(
        body["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("costs 5 credits")
    );
    assert_eq!(remaining(&d, &id), 2, "a refused request spends nothing");
    let show = d.cli_ok(&["keys", "show", &id]);
    assert!(
        show.contains("credits:     2 left (reset to 12 each day"),
        "{show}"
    );
    assert_eq!(get(d.http, "/v1/echo", &key).0, 200);
    assert_eq!(get(d.http, "/v1/echo", &key).0, 200);
    assert_eq!(get(d.http, "/v1/echo", &key).0, 429);
    assert_eq!(remaining(&d, &id), 0);
    // explain (through the admin API, as the daemon sees the key) shows the credits row.
    let explain = |path: &str| {
        let (status, v) = d.admin_call(
            "POST",
            "/v1/explain",
            Some(&d.token()),
            Some(&serde_json::json!({"key": key, "path": path})),
        );
        assert_eq!(status, 200, "{v}");
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "credits")
            .cloned()
            .unwrap()
    };
    let row = explain("/v1/echo");
    assert_eq!(row["code"], "CREDITS_EXHAUSTED");
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains("has spent its credits")
    );
    d.cli_ok(&["keys", "credits", &id, "--set", "7"]);
    let row = explain("/big/echo");
    assert_eq!(row["passed"], true);
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .starts_with("7 left, this route costs 5"),
        "{row}"
    );
    // The CLI's explain reads the store, and asks the daemon for the credits it holds.
    let out = d.cli(&["explain", "--key", &key, "--path", "/big/echo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PASS  credits      7 left, this route costs 5"),
        "{text}"
    );
}

#[test]
fn a_kill_9_never_grants_credits_again_and_a_clean_stop_gives_the_lease_back() {
    let up = Upstream::start();
    let mut d = Daemon::configure(&tables(up.addr));
    d.restart();
    let (id, key) = create(&d, 1000, None);
    let spent = 150;
    spend(d.http, &key, spent);
    let before = remaining(&d, &id);
    assert_eq!(before, 1000 - spent, "through the daemon: store and lease");
    d.kill9();
    d.restart();
    let after = remaining(&d, &id);
    assert!(
        after <= before,
        "{after} > {before}: a crash granted credits"
    );
    assert!(spent + after <= 1000);
    // Spend what is there now, then stop cleanly: nothing leased is lost.
    spend(d.http, &key, 10);
    let live = remaining(&d, &id);
    assert_eq!(live, after - 10);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(d.pid().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(
        d.wait_exit(Duration::from_secs(20)).is_some(),
        "did not stop"
    );
    d.kill9();
    assert_eq!(
        remaining(&d, &id),
        live,
        "the unspent lease went back to the store"
    );
}

/// With no daemon running the commands write the store directly, with the same output.
#[test]
fn without_a_daemon_the_commands_change_the_store() {
    let up = Upstream::start();
    let d = Daemon::configure(&tables(up.addr));
    let (id, key) = create(&d, 5, Some("5/day"));
    let out = d.cli_ok(&["keys", "credits", &id, "--add", "3"]);
    assert_eq!(out.trim(), format!("{id} credits: 8 left"));
    let show = d.cli_ok(&["keys", "show", &key]);
    assert!(
        show.contains("credits:     8 left (reset to 5 each day; next at "),
        "{show}"
    );
    assert_eq!(remaining(&d, &id), 8);
    let bad = d.cli(&["keys", "credits", &id]);
    assert_eq!(bad.status.code(), Some(2), "--set or --add is needed");
    let audit = d.cli_ok(&["audit", "--json"]);
    assert!(audit.contains("key.credits") && !audit.contains(&key));
}
