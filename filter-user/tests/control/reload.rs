//! Nothing inert: every config key of `edgefilter::config::keys::KEYS` has an effect. One table
//! names, for each key, the test that shows it at work from the start and what a `SIGHUP` that
//! changes it does; the test below changes every key of a running daemon (`run --no-xdp`) in one
//! reload and checks each row: a key the reload applies behaves anew at once, a key that needs
//! a restart is named in the log and keeps its running value. A config that does not load
//! changes nothing; text logs hold no colour codes when written to a file.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use edgefilter::config::keys::{KEYS, OnReload};
use serde_json::Value;

use crate::support::daemon::{Daemon, raw_http};
use crate::support::ports::free_addr;
use crate::support::tls::{Pki, TlsClient};
use crate::support::upstream;

/// What the reload of the test does with a key's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// The daemon behaves anew at once; checked below (`check_applied`).
    Behaves,
    /// Applied to the XDP maps, so without XDP only the log shows it; the kernel side is
    /// checked by the test named in the row.
    InTheXdpMaps,
    /// Applied to auto-block; checked by the test named in the row.
    InAutoblock,
    /// Applied with the rest of the route table (rebuilt whole on reload, so no field of a
    /// route can lag behind another); checked by the test named in the row.
    WithTheRoutes,
    /// Logged as needing a restart; the running value stays (checked below).
    NeedsRestart,
}

/// Every key: the test that shows it at work from the start, and what a reload does with it.
#[rustfmt::skip]
const ROWS: &[(&str, &str, After)] = &[
    ("listen.http",              "every daemon test (support::daemon listens there)",                 After::NeedsRestart),
    ("listen.https",             "proxy::tls::certificate_reload_keeps_open_connections; here",        After::NeedsRestart),
    ("tls.cert",                 "proxy::tls::*; here: moved files are read",                          After::Behaves),
    ("tls.key",                  "proxy::tls::bad_certificate_or_key_files_are_named; here",           After::Behaves),
    ("runtime.shards",           "proxy::drain, control::stats (shard in every request id)",          After::NeedsRestart),
    ("limits.max_header_bytes",  "proxy::limits::oversized_heads_are_431_and_bodies_413; here",        After::Behaves),
    ("limits.max_body_bytes",    "proxy::limits::oversized_heads_are_431_and_bodies_413; here",        After::Behaves),
    ("limits.client_timeout",    "proxy::limits::slow_and_idle_clients_time_out; here",                After::Behaves),
    ("limits.upstream_timeout",  "proxy::limits::upstream_failures_are_502_and_504; here",             After::Behaves),
    ("limits.max_connections",   "control::conn_limits::at_max_connections_new_connections_wait_in_the_queue_and_are_served_once_others_close; here", After::Behaves),
    ("limits.max_connections_per_source", "control::conn_limits::twenty_thousand_idle_connections_from_one_source_do_not_hold_up_another; here", After::Behaves),
    ("limits.drain_timeout",     "control::conn_limits::drain_timeout_cuts_a_slow_request_on_sigterm_and_counts_it; here (SIGTERM at the end)", After::Behaves),
    ("xdp.enabled",              "xdp::netns::*, the start-up warning in control::denylist",           After::NeedsRestart),
    ("xdp.interfaces",           "xdp::netns::restart_leaves_filtering_in_place",                      After::NeedsRestart),
    ("xdp.mode",                 "xdp::netns::monitor_mode_passes_and_counts; xdp::caps (reload)",     After::InTheXdpMaps),
    ("xdp.attach",               "xdp::caps (skb on a veth); xdp::netns (auto)",                       After::NeedsRestart),
    ("xdp.protected_ports",      "xdp::netns::allowlisted_source_reaches_protected_port_others_do_not; xdp::caps (reload)", After::InTheXdpMaps),
    ("xdp.allow",                "xdp::netns::allowlist_edits_under_traffic_leave_unchanged_prefixes_alone; xdp::caps (reload)", After::InTheXdpMaps),
    ("xdp.syn_rate",             "xdp::testrun::syn_rate_drops_a_sources_syns_over_its_burst",        After::InTheXdpMaps),
    ("xdp.syn_burst",            "xdp::testrun::syn_rate_drops_a_sources_syns_over_its_burst",        After::InTheXdpMaps),
    ("store.kind",               "fleet::* (postgres), every other daemon test (sqlite)",              After::NeedsRestart),
    ("store.path",               "keys::cli, control::durability",                                     After::NeedsRestart),
    ("store.url",                "fleet::*, keys::config_cli::a_bad_store_url_is_reported_on_its_line", After::NeedsRestart),
    ("store.reserve_bytes",      "control::store_safety::on_a_full_disk_a_revocation_commits_reaches_every_shard_and_survives_a_restart", After::NeedsRestart),
    ("store.check_interval",     "control::store_safety::a_corrupted_store_is_noticed",               After::NeedsRestart),
    ("admin.listen",             "control::admin_real",                                                After::NeedsRestart),
    ("admin.token_file",         "control::admin_api::token_file_created_0600_and_client_discovers_the_daemon", After::NeedsRestart),
    ("keys.environment",         "proxy::e2e_codes::every_code_through_the_real_proxy (WRONG_ENVIRONMENT)", After::NeedsRestart),
    ("keys.errors",              "proxy::e2e_codes::opaque_mode_hides_the_precise_401_code; here",     After::Behaves),
    ("keys.trusted_proxies",     "src/fuzz.rs (X-Forwarded-For); here",                                After::Behaves),
    ("autoblock.enabled",        "control::denylist::a_reload_puts_a_new_autoblock_in_force",          After::InAutoblock),
    ("autoblock.failures",       "control::denylist::failures_ban_a_source_at_accept_until_the_ban_expires; a_reload_…", After::InAutoblock),
    ("autoblock.window",         "control::denylist::a_reload_puts_a_new_autoblock_in_force",          After::InAutoblock),
    ("autoblock.ban",            "control::denylist::failures_ban_…; a_reload_puts_a_new_autoblock_in_force", After::InAutoblock),
    ("autoblock.ipv6_prefix",    "xdp::autoblock (IPv6 by /64); control::denylist::a_reload_…",        After::InAutoblock),
    ("autoblock.exempt",         "control::denylist::failures_ban_…; a_reload_puts_a_new_autoblock_in_force", After::InAutoblock),
    ("log.format",               "every daemon test (text); here: no colour codes in a file",          After::NeedsRestart),
    ("log.access_log",           "proxy::access_log::one_line_per_request_with_the_precise_code_and_no_key", After::NeedsRestart),
    ("route.prefix",             "proxy::http, proxy::e2e_codes (NO_ROUTE); here; routes_reload_under_traffic_…", After::Behaves),
    ("route.upstream",           "proxy::http::forwards_with_forwarding_headers_and_request_ids; here; routes_reload_under_traffic_…", After::Behaves),
    ("route.scopes",             "control::denylist (403 SCOPE_MISSING), keys::decide; here",          After::Behaves),
    ("route.key_in_query",       "keys::decide::a_query_key_is_percent_decoded_before_it_is_checked; here", After::Behaves),
    ("route.key_in",             "keys::decide::missing_wrong_place_malformed_checksum_environment_unknown; here", After::Behaves),
    ("route.strip_key",          "proxy::http::keys_are_stripped_and_the_upstream_credential_injected; here", After::Behaves),
    ("route.websocket",          "proxy::websocket::*",                                                After::WithTheRoutes),
    ("route.cost",               "keys::credits::a_route_cost_of_5_charges_5",                         After::WithTheRoutes),
    ("route.inject_header",      "proxy::http::keys_are_stripped_and_the_upstream_credential_injected; here", After::Behaves),
    ("route.upstream_ca",        "proxy::upstreams::https_upstreams_verify_the_chain_and_the_name_and_say_what_failed", After::WithTheRoutes),
    ("route.upstream_sni",       "proxy::upstreams::https_upstreams_verify_the_chain_and_the_name_and_say_what_failed", After::WithTheRoutes),
    ("route.upstream_client_cert", "proxy::upstreams::https_upstreams_verify_the_chain_and_the_name_and_say_what_failed (mTLS)", After::WithTheRoutes),
    ("route.upstream_client_key", "proxy::upstreams::https_upstreams_verify_the_chain_and_the_name_and_say_what_failed (mTLS)", After::WithTheRoutes),
    ("route.resolve_interval",   "proxy::upstreams::a_host_name_whose_address_changes_is_followed_without_a_restart", After::WithTheRoutes),
    ("route.credentials",        "proxy::upstreams::a_credential_pool_routes_around_429s_and_401s",    After::WithTheRoutes),
    ("route.ai",                 "proxy::llm_usage::openai_usage_is_logged_and_counted_from_json_and_sse", After::WithTheRoutes),
];

/// Keeps the test that loads the proxy with traffic apart from the one that times a drain.
static APART: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn apart() -> std::sync::MutexGuard<'static, ()> {
    APART
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const BAD_KEY: &str = "ef_live_0123456789abcdefghijABCDEFGHIJ01000000";

/// The table names every key once, and its reload column agrees with the daemon's own list.
#[test]
fn the_table_covers_every_config_key() {
    let rows: BTreeSet<&str> = ROWS.iter().map(|r| r.0).collect();
    assert_eq!(rows.len(), ROWS.len(), "a key is in the table twice");
    let keys: BTreeSet<&str> = KEYS.iter().map(|k| k.path).collect();
    assert_eq!(rows, keys, "every key of config::keys::KEYS needs a row");
    for (key, _, after) in ROWS {
        let k = KEYS.iter().find(|k| k.path == *key).unwrap();
        assert_eq!(
            k.on_reload == OnReload::Restart,
            *after == After::NeedsRestart,
            "{key}: the table and config::keys disagree"
        );
    }
}

/// The config before the reload: defaults for limits, keys and `[autoblock]`.
fn before(d: &Daemon, https: SocketAddr, pki: &Pki, up: SocketAddr) -> String {
    format!(
        r#"[listen]
http = ["{http}"]
https = ["{https}"]
[tls]
cert = "old-cert.pem"
key = "old-key.pem"
[runtime]
shards = 2
[xdp]
enabled = false
[store]
kind = "sqlite"
path = "var/keys.db"
[admin]
listen = "{admin}"
token_file = "var/admin.token"
[keys]
environment = "live"
[log]
format = "text"
access_log = "off"
[[route]]
prefix = "/v1/"
upstream = "http://{up}"
scopes = ["ai:invoke"]
"#,
        http = d.http,
        admin = d.admin,
        // The certificate in force before: copies, so the reload must read the moved files.
        https = {
            std::fs::copy(&pki.cert, d.dir.path().join("old-cert.pem")).unwrap();
            std::fs::copy(&pki.key, d.dir.path().join("old-key.pem")).unwrap();
            https
        },
    )
}

/// The config after: every key changed.
fn after(up: SocketAddr, pki: &Pki, other_up: SocketAddr) -> String {
    format!(
        r#"[listen]
http = ["{http}"]
https = ["{https}"]
[tls]
cert = "{cert}"
key = "{key}"
[runtime]
shards = 3
[limits]
max_header_bytes = 1024
max_body_bytes = 10
client_timeout = "1s"
upstream_timeout = "1s"
max_connections = 3
max_connections_per_source = 2
drain_timeout = "300ms"
[xdp]
enabled = true
interfaces = ["lo"]
mode = "monitor"
attach = "skb"
protected_ports = [1]
allow = ["10.0.0.0/8"]
syn_rate = "5/s"
syn_burst = 7
[store]
kind = "postgres"
path = "var/other.db"
url = "postgres://edge@127.0.0.1:1/keys"
reserve_bytes = 65536
check_interval = "1h"
[admin]
listen = "{admin}"
token_file = "var/other.token"
[keys]
environment = "test"
errors = "opaque"
trusted_proxies = ["127.0.0.1"]
[autoblock]
enabled = false
failures = 3
window = "2s"
ban = "2s"
ipv6_prefix = 48
exempt = ["10.0.0.0/8"]
[log]
format = "json"
access_log = "access.log"
[[route]]
prefix = "/v2/"
upstream = "http://{other_up}"
scopes = ["other"]
key_in_query = true
key_in = ["x-api-key"]
strip_key = false
inject_header = {{ name = "X-Upstream", value = "secret" }}
[[route]]
prefix = "/v1/"
upstream = "http://{up}"
"#,
        http = free_addr(),
        https = free_addr(),
        admin = free_addr(),
        cert = pki.cert.display(),
        key = pki.key.display(),
    )
}

/// A connection from `source` (an address of 127.0.0.0/8) to `to`.
fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// Waits (up to 5 s) until the daemon has counted the connections just closed here: until
/// then a new one from the same source may still be over `max_connections_per_source`.
fn until_closes_counted(p: &Probe) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.bad_key_code().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The probe's own connection is counted closed a moment after its answer.
    std::thread::sleep(Duration::from_millis(200));
}

/// One request on a fresh connection: (status, body).
fn call(to: SocketAddr, head: &str, body: &str) -> (u16, String) {
    call_on(TcpStream::connect(to).unwrap(), head, body)
}

/// One request on the connection `s`: (status, body).
fn call_on(mut s: TcpStream, head: &str, body: &str) -> (u16, String) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn get(path: &str, key: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n{extra}")
}

fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body).map_or_else(
        |_| String::new(),
        |v| v["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

fn sighup(d: &Daemon) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(d.pid().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

fn wait_for_log(d: &Daemon, needle: &str, times: usize) -> String {
    let t = Instant::now();
    loop {
        let log = d.log();
        if log.matches(needle).count() >= times {
            return log;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no `{needle}` in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the running daemon does with the settings of [`before`].
struct Probe<'a> {
    http: SocketAddr,
    https: SocketAddr,
    key: String,
    /// A key that may only be used from 198.18.0.0/24.
    fenced: String,
    /// A key with the scope `other` (of the route `/v2/` that [`after`] adds) only.
    other: String,
    /// The origin of `/v2/` after the reload.
    other_up: &'a upstream::Upstream,
}

impl Probe<'_> {
    fn big_header(&self) -> u16 {
        let pad = "a".repeat(1500);
        call(
            self.http,
            &get("/v1/echo", &self.key, &format!("X-Pad: {pad}\r\n")),
            "",
        )
        .0
    }

    fn body_of_100(&self) -> u16 {
        let head = format!(
            "POST /v1/echo HTTP/1.1\r\nHost: t\r\nX-API-Key: {}\r\n",
            self.key
        );
        call(self.http, &head, &"b".repeat(100)).0
    }

    fn bad_key_code(&self) -> String {
        code(&call(self.http, &get("/v1/echo", BAD_KEY, ""), "").1)
    }

    fn behind_a_proxy(&self) -> (u16, String) {
        let (s, b) = call(
            self.http,
            &get("/v1/echo", &self.fenced, "X-Forwarded-For: 198.18.0.9\r\n"),
            "",
        );
        (s, code(&b))
    }
}

#[test]
fn every_config_key_takes_effect_on_sighup_or_is_logged_as_needing_a_restart() {
    let _apart = apart();
    let up = upstream::Upstream::start();
    let other_up = upstream::Upstream::start();
    let pki = Pki::new("before");
    let https = free_addr();
    let mut d = Daemon::configure("");
    std::fs::write(d.config(), before(&d, https, &pki, up.addr)).unwrap();
    d.restart();
    let (_, key) = d.create_key("alice");
    let fenced = d.cli_ok(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--user",
        "bob",
        "--scope",
        "ai:invoke",
        "--allow-cidr",
        "198.18.0.0/24",
        "--json",
    ]);
    let fenced: Value = serde_json::from_str(fenced.trim()).unwrap();
    let other = d.cli_ok(&[
        "keys", "create", "--tenant", "acme", "--user", "carol", "--scope", "other", "--json",
    ]);
    let other: Value = serde_json::from_str(other.trim()).unwrap();
    let p = Probe {
        http: d.http,
        https,
        key,
        fenced: fenced["key"].as_str().unwrap().to_owned(),
        other: other["key"].as_str().unwrap().to_owned(),
        other_up: &other_up,
    };

    // Before: the defaults at work.
    assert_eq!(p.big_header(), 200);
    assert_eq!(p.body_of_100(), 200);
    assert_eq!(p.bad_key_code(), "KEY_CHECKSUM_MISMATCH");
    assert_eq!(p.behind_a_proxy(), (403, "IP_NOT_ALLOWED".to_owned()));
    let old_leaf = TlsClient::connect(https, pki.client_config(&[])).peer_leaf();

    // A config that does not load changes nothing.
    let good = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(
        d.config(),
        format!("{good}[limits]\nclient_timeout = \"soon\"\n"),
    )
    .unwrap();
    sighup(&d);
    let log = wait_for_log(&d, "config reload failed", 1);
    assert!(log.contains("soon"), "the problem is named: {log}");
    assert_eq!(p.big_header(), 200);

    // Every key changed in one reload; the certificate files moved and renewed.
    let new_leaf = pki.issue("after");
    assert_ne!(new_leaf, old_leaf);
    std::fs::write(d.config(), after(up.addr, &pki, other_up.addr)).unwrap();
    sighup(&d);
    let log = wait_for_log(&d, "config reloaded", 1);
    let reloaded = log
        .lines()
        .find(|l| l.contains("config reloaded"))
        .unwrap()
        .to_owned();

    let mut checked = BTreeSet::new();
    for &(key, _, after) in ROWS {
        let restart_line = format!("config reload: {key} changed and needs a restart");
        match after {
            After::NeedsRestart => {
                assert!(log.contains(&restart_line), "{key}: {log}");
                continue;
            }
            After::Behaves | After::InTheXdpMaps | After::InAutoblock | After::WithTheRoutes => {
                assert!(!log.contains(&restart_line), "{key}: {log}");
                assert!(
                    reloaded.contains(&format!("\"{key}\"")),
                    "{key} among the applied keys: {reloaded}"
                );
            }
        }
        if after == After::Behaves && checked.insert(key) {
            check_applied(key, &p, &pki, &new_leaf);
        }
    }
    let behaves: BTreeSet<&str> = ROWS
        .iter()
        .filter(|r| r.2 == After::Behaves)
        .map(|r| r.0)
        .collect();
    assert_eq!(checked, behaves);

    // What needs a restart keeps its running value: the old listeners, environment, store,
    // admin API and token; the log stays text.
    let (s, _) = call(p.http, &get("/v1/echo", &p.key, ""), "");
    assert_eq!(s, 200, "the old listener, store and environment");
    assert_eq!(
        raw_http(d.admin, "GET", "/v1/keys", Some(&d.token()), None)
            .unwrap()
            .0,
        200,
        "the old admin address and token"
    );
    assert!(!d.dir.path().join("var/other.token").exists());
    assert!(!d.dir.path().join("access.log").exists());
    let log = d.log();
    assert!(
        !log.contains('\u{1b}'),
        "log.format = \"text\" in a file has no colour codes"
    );
    assert!(
        log.lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| !l.starts_with('{')),
        "still text until a restart"
    );

    // A second reload of the same file names the waiting keys again, and applies nothing.
    sighup(&d);
    let log = wait_for_log(&d, "config reloaded", 2);
    assert_eq!(
        log.matches("config reload: listen.http changed and needs a restart")
            .count(),
        2
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("config reloaded"))
            .nth(1)
            .unwrap()
            .contains("applied=[]")
    );

    // limits.drain_timeout: SIGTERM cuts a request (its upstream answers after 3 s, the
    // upstream timeout is 1 s) at the reloaded 300 ms.
    let mut slow = TcpStream::connect(p.http).unwrap();
    slow.write_all(get("/v1/slow", &p.key, "\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(d.pid().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        d.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(
        d.log()
            .contains("drain deadline passed: 1 request(s) still running were cut"),
        "{}",
        d.log()
    );
}

/// `GET /v2/echo` (a route of [`after`] only) with `auth`, `?query`: (status, the echoed head
/// the origin of `/v2/` received, when it did).
fn on_v2(p: &Probe<'_>, query: &str, auth: &str) -> (u16, Option<String>) {
    let before = p.other_up.heads().len();
    let (s, body) = call(
        p.http,
        &format!("GET /v2/echo{query} HTTP/1.1\r\nHost: t\r\n{auth}"),
        "",
    );
    let reached = p.other_up.heads().len() > before;
    (s, reached.then_some(body))
}

/// The behaviour of one applied key after the reload.
fn check_applied(key: &str, p: &Probe<'_>, pki: &Pki, new_leaf: &[u8]) {
    let other_in_header = format!("X-API-Key: {}\r\n", p.other);
    match key {
        "route.prefix" | "route.upstream" => {
            let (s, echoed) = on_v2(p, "", &other_in_header);
            assert_eq!(s, 200, "{key}");
            assert!(echoed.is_some(), "{key}: the new route's origin answers");
        }
        "route.scopes" => {
            let (s, echoed) = on_v2(p, "", &format!("X-API-Key: {}\r\n", p.key));
            assert_eq!((s, echoed), (403, None), "the key lacks the scope `other`");
        }
        "route.key_in_query" => {
            let (s, echoed) = on_v2(p, &format!("?api_key={}", p.other), "");
            assert_eq!(s, 200);
            assert!(echoed.is_some());
        }
        "route.key_in" => {
            let (s, echoed) = on_v2(p, "", &format!("Authorization: Bearer {}\r\n", p.other));
            assert_eq!(
                (s, echoed),
                (401, None),
                "only X-API-Key and the query are read"
            );
        }
        "route.strip_key" => {
            let (_, echoed) = on_v2(p, "", &other_in_header);
            let echoed = echoed.expect("forwarded").to_ascii_lowercase();
            assert!(echoed.contains("\r\nx-api-key: "), "the key is kept");
        }
        "route.inject_header" => {
            let (_, echoed) = on_v2(p, "", &other_in_header);
            assert!(
                echoed
                    .expect("forwarded")
                    .contains("X-Upstream: secret\r\n"),
                "the credential is injected"
            );
        }
        "limits.max_header_bytes" => assert_eq!(p.big_header(), 431),
        "limits.max_body_bytes" => assert_eq!(p.body_of_100(), 413),
        "limits.client_timeout" => {
            let mut s = TcpStream::connect(p.http).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let t = Instant::now();
            let mut sink = [0u8; 16];
            assert_eq!(s.read(&mut sink).unwrap_or(0), 0, "closed, no answer");
            let idle = t.elapsed();
            assert!(
                idle < Duration::from_secs(5),
                "idle connection closed after {idle:?}"
            );
        }
        "limits.upstream_timeout" => {
            let t = Instant::now();
            let (s, body) = call(p.http, &get("/v1/slow", &p.key, ""), "");
            assert_eq!((s, code(&body).as_str()), (504, "UPSTREAM_TIMEOUT"));
            assert!(
                t.elapsed() < Duration::from_millis(2_900),
                "{:?}",
                t.elapsed()
            );
        }
        "limits.max_connections_per_source" => {
            // Earlier requests' connections are gone first.
            std::thread::sleep(Duration::from_millis(200));
            let held: Vec<TcpStream> = (0..2)
                .map(|_| TcpStream::connect(p.http).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            let mut third = TcpStream::connect(p.http).unwrap();
            third
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let t = Instant::now();
            let closed = third.read(&mut [0u8; 16]);
            // The held ones close at the 1 s client timeout; the third is reset at accept.
            assert!(
                matches!(closed, Ok(0) | Err(_)) && t.elapsed() < Duration::from_millis(700),
                "{closed:?} after {:?}",
                t.elapsed()
            );
            drop(held);
            until_closes_counted(p);
        }
        "limits.max_connections" => {
            std::thread::sleep(Duration::from_millis(200));
            let held = [
                TcpStream::connect(p.http).unwrap(),
                TcpStream::connect(p.http).unwrap(),
                connect_from([127, 0, 0, 2], p.http),
            ];
            std::thread::sleep(Duration::from_millis(100));
            // The fourth waits in the queue until a held one closes (1 s client timeout).
            let t = Instant::now();
            let (s, _) = call_on(
                connect_from([127, 0, 0, 2], p.http),
                &get("/v1/echo", &p.key, ""),
                "",
            );
            let waited = t.elapsed();
            assert_eq!(s, 200);
            assert!(waited >= Duration::from_millis(600), "{waited:?}");
            drop(held);
            until_closes_counted(p);
        }
        // Seen at the end of the test, on SIGTERM.
        "limits.drain_timeout" => {}
        "keys.errors" => assert_eq!(p.bad_key_code(), "INVALID_CREDENTIALS"),
        "keys.trusted_proxies" => assert_eq!(p.behind_a_proxy().0, 200),
        "tls.cert" | "tls.key" => {
            let leaf = TlsClient::connect(p.https, pki.client_config(&[])).peer_leaf();
            assert_eq!(leaf, new_leaf, "the moved, renewed certificate is served");
        }
        other => panic!("no check for {other}"),
    }
}

/// `GET /metrics`' count of forwarded requests on `route`.
fn forwarded_on(d: &Daemon, route: &str) -> u64 {
    let (s, body) = d.admin_call("GET", "/metrics", None, None);
    assert_eq!(s, 200, "{body}");
    let text = body.as_str().unwrap_or_default().to_owned();
    let needle = format!("edgefilter_requests_total{{route=\"{route}\",code=\"OK\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// How many `GET {path}` heads `origin` received.
fn received(origin: &upstream::Upstream, path: &str) -> usize {
    let line = format!("GET {path} HTTP/1.1\r\n");
    origin
        .heads()
        .iter()
        .filter(|h| h.starts_with(&line))
        .count()
}

/// Clients sending `GET /v1/echo` with a valid key until told to stop (at most 60 s and
/// 50,000 requests each): one on a kept-alive connection, one on a fresh connection each time.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<Vec<u16>>>,
}

impl Traffic {
    fn start(d: &Daemon, key: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = [true, false]
            .into_iter()
            .map(|kept| {
                let (http, key, stop) = (d.http, key.to_owned(), stop.clone());
                std::thread::spawn(move || {
                    let t = Instant::now();
                    let mut ka = crate::support::daemon::KeepAlive::new(http);
                    let mut statuses = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && statuses.len() < 50_000
                        && t.elapsed() < Duration::from_secs(60)
                    {
                        let status = if kept {
                            ka.get("/v1/echo", &key).map_or(0, |a| a.status)
                        } else {
                            TcpStream::connect(http)
                                .map_or(0, |s| call_on(s, &get("/v1/echo", &key, ""), "").0)
                        };
                        statuses.push(status);
                    }
                    statuses
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops the clients; every status they got.
    fn stop(self) -> Vec<u16> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    }
}

/// Routes reload under traffic: a reload that adds `/v2/` (to a second origin, ahead of `/v1/`
/// in the file, so every route index moves) and points `/v1/` at a third origin is in force for
/// the next request on every connection, kept-alive ones too, while the request in flight
/// finishes on the first origin; no answer fails meanwhile (a request judged by the key rules of
/// one config and routed by another would be `NO_ROUTE`, or reach the wrong origin), and the new
/// route is counted under its own label. A config whose routes do not build (a bad upstream, an
/// unset variable for `inject_header`) is refused, with the problems in the answer and the log,
/// and the traffic does not notice.
#[test]
fn routes_reload_under_traffic_and_a_broken_route_is_refused() {
    let _apart = apart();
    let (first, second, third) = (
        upstream::Upstream::start(),
        upstream::Upstream::start(),
        upstream::Upstream::start(),
    );
    let d = Daemon::start(first.addr);
    let token = d.token();
    let (_, key) = d.create_key("alice");
    let base = std::fs::read_to_string(d.config()).unwrap();
    let old_route = format!(
        "[[route]]\nprefix = \"/v1/\"\nupstream = \"http://{}\"\n",
        first.addr
    );
    assert!(base.contains(&old_route), "{base}");
    let moved = base.replace(
        &old_route,
        &format!(
            "[[route]]\nprefix = \"/v2/\"\nupstream = \"http://{}\"\nscopes = [\"ai:invoke\"]\n\
             [[route]]\nprefix = \"/v1/\"\nupstream = \"http://{}\"\n",
            second.addr, third.addr
        ),
    );

    // A request in flight across the reload: the first origin answers it after 3 s.
    let slow = {
        let (http, key) = (d.http, key.clone());
        std::thread::spawn(move || call(http, &get("/v1/slow", &key, ""), "").0)
    };
    let traffic = Traffic::start(&d, &key);
    let t = Instant::now();
    while received(&first, "/v1/slow") == 0 || received(&first, "/v1/echo") < 200 {
        assert!(t.elapsed() < Duration::from_secs(20), "no traffic");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(received(&third, "/v1/echo"), 0);

    std::fs::write(d.config(), &moved).unwrap();
    let (s, v) = d.admin_call("POST", "/v1/reload", Some(&token), None);
    assert_eq!(s, 200, "{v}");
    let applied: Vec<&str> = v["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let routes: Vec<&str> = KEYS
        .iter()
        .map(|k| k.path)
        .filter(|p| p.starts_with("route."))
        .collect();
    assert_eq!(applied, routes, "a route more: each of its fields changed");
    assert_eq!(v["needs_restart"], serde_json::json!([]), "{v}");

    // Once each shard has taken the new routes (at its next request), the first origin gets no
    // more `/v1/` requests: every connection, kept-alive or new, reaches the third.
    std::thread::sleep(Duration::from_millis(300));
    let (on_first, on_third) = (received(&first, "/v1/echo"), received(&third, "/v1/echo"));
    assert!(on_third > 0, "no /v1/ request reached the new origin");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        received(&first, "/v1/echo"),
        on_first,
        "a /v1/ request reached the old origin after the reload"
    );
    assert!(received(&third, "/v1/echo") > on_third);
    let (s, body) = call(d.http, &get("/v2/echo", &key, ""), "");
    assert_eq!(s, 200, "{body}");
    assert_eq!(received(&second, "/v2/echo"), 1);
    assert_eq!(slow.join().unwrap(), 200, "the request in flight finishes");
    assert_eq!(
        received(&third, "/v1/slow"),
        0,
        "on the origin it began with"
    );
    // Each route under its own label: /v1/ keeps its count, /v2/ starts its own.
    assert!(forwarded_on(&d, "/v1/") > u64::try_from(on_first).unwrap());
    assert_eq!(forwarded_on(&d, "/v2/"), 1);

    // Broken routes are refused, every problem named; the running routes stay.
    let broken = moved
        .replace(
            &format!("upstream = \"http://{}\"\nscopes", second.addr),
            "upstream = \"ftp://127.0.0.1:1\"\nscopes",
        )
        .replace(
            &format!("upstream = \"http://{}\"\n", third.addr),
            &format!(
                "upstream = \"http://{}\"\ninject_header = {{ name = \"Authorization\", value = \"Bearer ${{EF_TEST_ROUTE_RELOAD_UNSET}}\" }}\n",
                first.addr
            ),
        );
    assert_ne!(broken, moved);
    std::fs::write(d.config(), &broken).unwrap();
    let (s, v) = d.admin_call("POST", "/v1/reload", Some(&token), None);
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "CONFIG_INVALID", "{v}");
    let hint = v["error"]["hint"].as_str().unwrap().to_owned();
    assert!(
        hint.contains("ftp://127.0.0.1:1") && hint.contains("EF_TEST_ROUTE_RELOAD_UNSET"),
        "{hint}"
    );
    sighup(&d);
    let log = wait_for_log(&d, "config reload failed", 2);
    assert!(
        log.contains("ftp://127.0.0.1:1") && log.contains("EF_TEST_ROUTE_RELOAD_UNSET"),
        "{log}"
    );
    let before = received(&first, "/v1/echo");
    let on_third = received(&third, "/v1/echo");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(received(&first, "/v1/echo"), before, "the refused route");
    assert!(received(&third, "/v1/echo") > on_third, "the running route");
    let (s, _) = call(d.http, &get("/v2/echo", &key, ""), "");
    assert_eq!(s, 200);
    assert_eq!(received(&second, "/v2/echo"), 2);

    let statuses = traffic.stop();
    assert!(statuses.len() > 200, "{} requests", statuses.len());
    let failed: Vec<&u16> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        statuses.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
