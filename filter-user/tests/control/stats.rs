//! `edgefilter stats` and `GET /v1/stats` through the real daemon: after a known mix of
//! answers (forwarded, malformed keys, a revoked key, no route) the JSON snapshot counts exactly
//! those, ranks the revoked key's id and the client address as top denied, matches
//! `docs/openapi.yaml`, and holds no full key; the text snapshot shows every section; with no
//! daemon the command says so and exits 1; and the live view draws in a real terminal (tmux),
//! quits on `q` and gives the terminal back as it found it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use edgefilter::xdp::PIN_DIR_ENV;
use serde_json::Value;

use crate::support::daemon::{Daemon, KeepAlive, default_tables};
use crate::support::openapi::{assert_documented, openapi};
use crate::support::ports::free_addr;
use crate::support::upstream;

/// The count of `(route, code)` in a snapshot's `requests` (0 when absent).
fn requests(v: &Value, route: &str, code: &str) -> u64 {
    v["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .find(|r| r["route"] == route && r["code"] == code)
        .map_or(0, |r| r["count"].as_u64().expect("count"))
}

/// Sends 3 forwarded requests, 2 malformed keys, 2 with a revoked key and 1 to no route, all
/// from 127.0.0.1; returns the two full keys and the revoked key's id.
fn traffic(d: &Daemon) -> ([String; 2], String) {
    let (_, good) = d.create_key("alice");
    let (revoked_id, revoked) = d.create_key("bob");
    d.cli_ok(&["keys", "revoke", &revoked_id]);
    let mut c = KeepAlive::new(d.http);
    for _ in 0..3 {
        assert_eq!(c.get("/v1/echo", &good).unwrap().status, 200);
    }
    for _ in 0..2 {
        assert_eq!(c.get("/v1/echo", "not-a-key").unwrap().status, 400);
    }
    for _ in 0..2 {
        assert_eq!(c.get("/v1/echo", &revoked).unwrap().status, 401);
    }
    assert_eq!(c.get("/nowhere", &good).unwrap().status, 404);
    ([good, revoked], revoked_id)
}

fn assert_no_key(text: &str, keys: &[String]) {
    for k in keys {
        assert!(!text.contains(k.as_str()), "a full key in: {text}");
        assert!(!text.contains(&k[8..]), "a key's secret part in: {text}");
    }
}

#[test]
fn stats_once_json_reflects_the_traffic_just_sent() {
    let up = upstream::Upstream::start();
    let d = Daemon::start(up.addr);
    let (keys, revoked_id) = traffic(&d);

    let out = d.cli_ok(&["stats", "--once", "--json"]);
    assert_no_key(&out, &keys);
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(requests(&v, "/v1/", "OK"), 3, "{v}");
    assert_eq!(requests(&v, "/v1/", "MALFORMED_KEY"), 2, "{v}");
    assert_eq!(requests(&v, "/v1/", "KEY_REVOKED"), 2, "{v}");
    assert_eq!(requests(&v, "(none)", "NO_ROUTE"), 1, "{v}");
    assert_eq!(v["xdp"], Value::Null, "XDP is off");
    assert_eq!(v["bans"], serde_json::json!([]));
    assert_eq!(v["store"]["kind"], "sqlite");
    assert!(v["store"]["revision"].as_u64().unwrap() >= 3, "{v}");
    assert_eq!(v["store"]["lag_seconds"], Value::Null);
    assert!(v["propagation"]["samples"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["rates"]["interval_seconds"].as_f64().unwrap() >= 1.0);
    assert_eq!(v["rates"]["requests_per_second"]["OK"], 0.0, "idle sample");

    let denials = &v["denials"];
    assert_eq!(denials["window_seconds"], 60);
    assert_eq!(denials["counted"], 5, "{denials}");
    assert_eq!(denials["complete"], true);
    let top_keys = denials["top_keys"].as_array().unwrap();
    assert_eq!(
        top_keys.len(),
        1,
        "only the revoked key has an id: {denials}"
    );
    assert_eq!(top_keys[0]["key_id"], revoked_id.as_str());
    assert_eq!(top_keys[0]["count"], 2);
    assert_eq!(top_keys[0]["codes"]["KEY_REVOKED"], 2);
    let top_sources = denials["top_sources"].as_array().unwrap();
    assert_eq!(top_sources.len(), 1, "{denials}");
    assert_eq!(top_sources[0]["source"], "127.0.0.1");
    assert_eq!(top_sources[0]["count"], 5);
    assert_eq!(top_sources[0]["codes"]["MALFORMED_KEY"], 2);
    assert_eq!(top_sources[0]["codes"]["NO_ROUTE"], 1);

    // The endpoint itself: token required, answer as documented, no key.
    let doc = openapi();
    let (status, body) = d.admin_call("GET", "/v1/stats", Some(&d.token()), None);
    assert_eq!(status, 200, "{body}");
    assert_documented(&doc, "/v1/stats", "get", status, &body);
    assert_no_key(&body.to_string(), &keys);
    let (status, body) = d.admin_call("GET", "/v1/stats", None, None);
    assert_eq!(status, 401);
    assert_documented(&doc, "/v1/stats", "get", status, &body);

    // The text snapshot.
    let text = d.cli_ok(&["stats", "--once"]);
    assert_no_key(&text, &keys);
    for want in [
        "Requests by code",
        "XDP packets by reason",
        "Top denied keys (last 60 s)",
        "Top denied sources (last 60 s)",
        "Bans",
        "Revocation propagation p99: ≤",
        "Store: sqlite, revision",
        revoked_id.as_str(),
        "127.0.0.1",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let ok_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("OK "))
        .unwrap_or_else(|| panic!("no OK row in:\n{text}"));
    assert!(ok_line.split_whitespace().any(|t| t == "3"), "{ok_line}");
}

#[test]
fn without_a_daemon_stats_says_so_and_exits_1() {
    let d = Daemon::configure(&default_tables(free_addr()));
    for args in [
        &["stats", "--once"][..],
        &["stats", "--once", "--json"],
        &["stats"],
    ] {
        let o = d.cli(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no daemon is running"), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A server, or `None` (said loudly) when tmux is not installed; under `CI=true` a missing
    /// tmux fails the test instead, so CI never passes a terminal test it did not run.
    fn start() -> Option<Self> {
        if Command::new("tmux").arg("-V").output().is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "tmux is not installed, and under CI=true the terminal test must run, not skip (apt-get install tmux; .ci/run does)"
            );
            eprintln!(
                "\n!!!!!!!!!! SKIPPED: tmux not installed (apt-get install tmux) !!!!!!!!!!\n"
            );
            return None;
        }
        Some(Self {
            socket: format!("ef-stats-{}", std::process::id()),
        })
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p", "-t", "stats"])
    }

    /// Waits up to 20 s for the screen to satisfy `done`; the last screen either way.
    fn wait_for(&self, done: impl Fn(&str) -> bool) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if done(&s) || Instant::now() > deadline {
                return (done(&s), s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn stats_draws_in_a_terminal_and_gives_it_back_on_q() {
    let Some(tmux) = Tmux::start() else {
        return;
    };
    let up = upstream::Upstream::start();
    let d = Daemon::start(up.addr);
    let (_, good) = d.create_key("alice");
    let mut c = KeepAlive::new(d.http);
    for _ in 0..3 {
        assert_eq!(c.get("/v1/echo", &good).unwrap().status, 200);
    }
    assert_eq!(c.get("/v1/echo", "not-a-key").unwrap().status, 400);

    // After the view: its exit code, then the terminal's line discipline as the shell sees it.
    let script = format!(
        "env -u EDGEFILTER_CONFIG {PIN_DIR_ENV}={} {} --config {} stats; echo \"EXITED:$?\"; stty -a; echo STTY-DONE; sleep 600",
        quoted(&d.pin_dir()),
        quoted(Path::new(env!("CARGO_BIN_EXE_edgefilter"))),
        quoted(&d.config()),
    );
    tmux.ok(&[
        "new-session",
        "-d",
        "-s",
        "stats",
        "-x",
        "120",
        "-y",
        "40",
        &script,
    ]);
    let (drawn, screen) = tmux.wait_for(|s| {
        s.contains("Requests/s by code")
            && s.lines()
                .any(|l| l.contains("OK") && l.split([' ', '│']).any(|t| t == "3"))
    });
    assert!(drawn, "the live view did not draw the requests:\n{screen}");
    for want in [
        "XDP packets/s by reason",
        "Top denied keys",
        "Top denied sources",
        "127.0.0.1",
        "MALFORMED_KEY",
        "Bans",
        "Propagation p99",
        "Store: sqlite",
    ] {
        assert!(screen.contains(want), "{want:?} not on screen:\n{screen}");
    }
    assert!(!screen.contains(&good[8..]), "a key on screen");
    assert_eq!(
        tmux.ok(&["display-message", "-p", "-t", "stats", "#{alternate_on}"])
            .trim(),
        "1",
        "the view draws on the alternate screen"
    );

    tmux.ok(&["send-keys", "-t", "stats", "q"]);
    let (exited, screen) = tmux.wait_for(|s| s.contains("EXITED:") && s.contains("STTY-DONE"));
    assert!(exited, "the view did not exit on q:\n{screen}");
    assert!(screen.contains("EXITED:0"), "{screen}");
    assert!(
        !screen.contains("Requests/s by code"),
        "the view's screen was left behind:\n{screen}"
    );
    assert_eq!(
        tmux.ok(&["display-message", "-p", "-t", "stats", "#{alternate_on}"])
            .trim(),
        "0",
        "the alternate screen was not left"
    );
    let flags: Vec<&str> = screen.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig"] {
        assert!(
            flags.contains(&mode) && !flags.contains(&format!("-{mode}").as_str()),
            "the terminal was not restored ({mode}):\n{screen}"
        );
    }
}
