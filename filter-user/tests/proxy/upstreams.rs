//! Real upstreams through the real daemon: HTTPS with the chain and name verified (a wrong CA,
//! an expired certificate and a name mismatch each a 502 of class `tls` saying what failed),
//! mTLS, a Unix socket, several targets with one killed mid-run (nothing lost or sent twice),
//! unanswered requests moved to another target only when idempotent, a pool of provider
//! credentials routing around 429s and 401s, and a host name whose address changes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::daemon::Daemon;
use crate::support::origin::{self, Listen, Origin, Reply, Req};
use crate::support::tls::Pki;

/// One request on a fresh connection: (status, the whole answer).
fn call(addr: SocketAddr, method: &str, path: &str, key: &str, id: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = if method == "POST" { "{}" } else { "" };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: edge\r\nX-API-Key: {key}\r\nX-Request-Id: {id}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

fn metrics(d: &Daemon) -> String {
    let (s, body) = d.admin_call("GET", "/metrics", None, None);
    assert_eq!(s, 200);
    body.as_str().unwrap_or_default().to_owned()
}

/// A daemon with `routes` (each needing no scope beyond the key's), and a key.
fn daemon(routes: &str, env: &[(&str, &str)]) -> (Daemon, String) {
    let tables = format!(
        "[keys]\nenvironment = \"live\"\n[log]\nformat = \"text\"\naccess_log = \"off\"\n{routes}"
    );
    let mut d = Daemon::configure(&tables);
    for (k, v) in env {
        d = d.with_env(k, v);
    }
    d.restart();
    let (_, key) = d.create_key("alice");
    (d, key)
}

fn tls_origin(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Origin {
    Origin::start(
        Listen::Tls {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(std::path::Path::to_path_buf),
        },
        origin::echo(),
    )
}

#[test]
fn https_upstreams_verify_the_chain_and_the_name_and_say_what_failed() {
    let pki = Pki::new("origin");
    let other = Pki::new("other");
    let good = tls_origin(&pki.cert, &pki.key, None);
    let (ec, ek) = pki.issue_file("expired", &["localhost"], true);
    let expired = tls_origin(&ec, &ek, None);
    let (mc, mk) = pki.issue_file("elsewhere", &["elsewhere.example"], false);
    let mismatch = tls_origin(&mc, &mk, None);
    let mtls = tls_origin(&pki.cert, &pki.key, Some(&pki.ca_pem));
    let (cc, ck) = pki.issue_file("client", &["client.example"], false);
    let ca = pki.ca_pem.display();
    let route = |prefix: &str, port: u16, extra: &str| {
        format!(
            "[[route]]\nprefix = \"{prefix}\"\nupstream = \"https://localhost:{port}\"\n\
             upstream_ca = \"{ca}\"\n{extra}"
        )
    };
    let routes = [
        route("/ok/", good.addr.port(), ""),
        format!(
            "[[route]]\nprefix = \"/wrongca/\"\nupstream = \"https://localhost:{}\"\n\
             upstream_ca = \"{}\"\n",
            good.addr.port(),
            other.ca_pem.display()
        ),
        route("/expired/", expired.addr.port(), ""),
        route("/mismatch/", mismatch.addr.port(), ""),
        format!(
            "[[route]]\nprefix = \"/sni/\"\nupstream = \"https://127.0.0.1:{}\"\n\
             upstream_ca = \"{ca}\"\nupstream_sni = \"elsewhere.example\"\n",
            mismatch.addr.port()
        ),
        route(
            "/mtls/",
            mtls.addr.port(),
            &format!(
                "upstream_client_cert = \"{}\"\nupstream_client_key = \"{}\"\n",
                cc.display(),
                ck.display()
            ),
        ),
        route("/nocert/", mtls.addr.port(), ""),
    ]
    .concat();
    let (d, key) = daemon(&routes, &[]);

    for i in 0..3 {
        let (s, text) = call(d.http, "GET", "/ok/x", &key, &format!("ok-{i}"));
        assert_eq!(s, 200, "{text}");
        assert!(
            text.contains(&format!("host=localhost:{}", good.addr.port())),
            "{text}"
        );
    }
    assert_eq!(good.count(), 3);
    let (s, text) = call(d.http, "GET", "/sni/x", &key, "sni");
    assert_eq!(s, 200, "upstream_sni names what is verified: {text}");
    let (s, text) = call(d.http, "GET", "/mtls/x", &key, "mtls");
    assert_eq!(s, 200, "a client certificate the upstream trusts: {text}");

    for (path, words) in [
        ("/wrongca/x", "unknown issuer"),
        ("/expired/x", "certificate expired"),
        ("/mismatch/x", "name mismatch"),
    ] {
        let (s, text) = call(d.http, "GET", path, &key, "bad");
        assert_eq!(s, 502, "{path}: {text}");
        assert!(text.contains("\"UPSTREAM_UNAVAILABLE\""), "{path}: {text}");
        assert!(text.contains("TLS handshake"), "{path}: the stage: {text}");
        assert!(text.contains(words), "{path}: {words} in the hint: {text}");
        assert!(
            text.contains("\"key_id\":\"key_"),
            "{path}: the key id: {text}"
        );
    }
    let (s, text) = call(d.http, "GET", "/nocert/x", &key, "nocert");
    assert_eq!(s, 502, "the upstream requires a client certificate: {text}");
    assert_eq!(
        mtls.count(),
        1,
        "only the request with a client certificate reached the mTLS origin"
    );
    assert_eq!(
        expired.count() + mismatch.count(),
        1,
        "only /sni/ got through"
    );
    let m = metrics(&d);
    for route in ["/wrongca/", "/expired/", "/mismatch/", "/nocert/"] {
        let line = format!("edgefilter_upstream_errors_total{{route=\"{route}\",class=\"tls\"}} 1");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
    let log = d.log();
    for words in ["certificate expired", "unknown issuer", "name mismatch"] {
        assert!(log.contains(words), "the log says {words}:\n{log}");
    }
}

#[test]
fn a_unix_socket_upstream_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("gw.sock");
    let o = Origin::start(Listen::Unix(sock.clone()), origin::echo());
    let routes = format!(
        "[[route]]\nprefix = \"/v1/\"\nupstream = \"unix:{}\"\n",
        sock.display()
    );
    let (d, key) = daemon(&routes, &[]);
    for i in 0..5 {
        let (s, text) = call(d.http, "GET", "/v1/x", &key, &format!("u{i}"));
        assert_eq!(s, 200, "{text}");
        assert!(text.contains("host=localhost"), "{text}");
    }
    assert_eq!(o.ids(), ["u0", "u1", "u2", "u3", "u4"]);
}

#[test]
fn with_two_targets_one_killed_mid_run_no_request_is_lost_or_sent_twice() {
    let a = Origin::start(Listen::Tcp("127.0.0.1:0".parse().unwrap()), origin::echo());
    let b = Origin::start(Listen::Tcp("127.0.0.1:0".parse().unwrap()), origin::echo());
    let routes = format!(
        "[[route]]\nprefix = \"/v1/\"\nupstream = [\"http://{}\", \"http://{}\"]\n",
        a.addr, b.addr
    );
    let (d, key) = daemon(&routes, &[]);
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (key, done, failures, http) = (key.clone(), done.clone(), failures.clone(), d.http);
            std::thread::spawn(move || {
                for i in 0..50 {
                    // GET: a request caught on the dying target (a pooled connection it closed,
                    // a connection still in its listen queue) goes to the other one. A POST
                    // caught so is answered 502, never sent twice: see the test below.
                    let id = format!("r{t}-{i}");
                    let (s, text) = call(http, "GET", "/v1/x", &key, &id);
                    if s != 200 {
                        failures.lock().unwrap().push(format!("{id}: {text}"));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    while done.load(Ordering::SeqCst) < 60 {
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill();
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "lost: {failures:?}");
    let (dups, distinct) = origin::duplicates(&[&a, &b]);
    assert!(dups.is_empty(), "sent twice: {dups:?}");
    assert_eq!(distinct, 200, "every request reached exactly one target");
    assert!(
        b.count() > 0 && b.count() < 200,
        "B served until killed: {}",
        b.count()
    );
    assert!(a.count() > 100, "A took over: {}", a.count());
    let m = metrics(&d);
    let ejected = format!(
        "edgefilter_upstream_ejected{{route=\"/v1/\",target=\"http://{}\"}} 1",
        b.addr
    );
    assert!(m.contains(&ejected), "{ejected} in\n{m}");
}

#[test]
fn an_unanswered_request_moves_to_another_target_only_when_it_is_idempotent() {
    let silent = Origin::start(
        Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        Arc::new(|_: &Req| Reply::Close),
    );
    let a = Origin::start(Listen::Tcp("127.0.0.1:0".parse().unwrap()), origin::echo());
    let routes = format!(
        "[[route]]\nprefix = \"/v1/\"\nupstream = [\"http://{}\", \"http://{}\"]\n",
        silent.addr, a.addr
    );
    let (d, key) = daemon(&routes, &[]);
    let mut refused = Vec::new();
    for i in 0..4 {
        let id = format!("post-{i}");
        let (s, text) = call(d.http, "POST", "/v1/x", &key, &id);
        match s {
            200 => {}
            502 => {
                assert!(text.contains("response head"), "the stage: {text}");
                refused.push(id);
            }
            _ => panic!("{text}"),
        }
    }
    assert!(!refused.is_empty(), "some POSTs met the silent target");
    for id in &refused {
        assert!(silent.ids().contains(id), "{id} reached the silent target");
        assert!(
            !a.ids().contains(id),
            "{id} must not be sent again: the target may have acted"
        );
    }
    let silent_before = silent.count();
    for i in 0..4 {
        let id = format!("get-{i}");
        let (s, text) = call(d.http, "GET", "/v1/x", &key, &id);
        assert_eq!(s, 200, "a GET goes to the other target: {text}");
        assert!(a.ids().contains(&id));
    }
    assert!(
        silent.count() > silent_before,
        "some GETs met the silent target first"
    );
}

#[test]
fn a_credential_pool_routes_around_429s_and_401s() {
    let limit_a = Arc::new(AtomicBool::new(true));
    let limit_all = Arc::new(AtomicBool::new(false));
    let (la, lall) = (limit_a.clone(), limit_all.clone());
    let provider = Origin::start(
        Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        Arc::new(move |r: &Req| {
            let auth = r.header("authorization").unwrap_or("");
            if lall.load(Ordering::SeqCst) {
                return Reply::Answer(
                    429,
                    vec![("Retry-After".into(), "30".into())],
                    "busy".into(),
                );
            }
            match auth {
                "Bearer sk-test-a" if la.load(Ordering::SeqCst) => {
                    Reply::Answer(429, vec![("Retry-After".into(), "2".into())], "slow".into())
                }
                "Bearer sk-test-x" => Reply::Answer(401, Vec::new(), "bad key".into()),
                _ => Reply::Answer(200, Vec::new(), format!("auth={auth}")),
            }
        }),
    );
    let routes = format!(
        "[[route]]\nprefix = \"/v1/\"\nupstream = \"http://{p}\"\n\
         [route.credentials]\nname = \"Authorization\"\n\
         values = [\"Bearer ${{EF_TEST_PROVIDER_A}}\", \"Bearer ${{EF_TEST_PROVIDER_B}}\"]\n\
         [[route]]\nprefix = \"/v2/\"\nupstream = \"http://{p}\"\n\
         [route.credentials]\nname = \"Authorization\"\n\
         values = [\"Bearer sk-test-x\", \"Bearer sk-test-y\"]\n",
        p = provider.addr
    );
    let env = [
        ("EF_TEST_PROVIDER_A", "sk-test-a"),
        ("EF_TEST_PROVIDER_B", "sk-test-b"),
    ];
    let (d, key) = daemon(&routes, &env);
    let used = |value: &str| {
        provider
            .requests()
            .iter()
            .filter(|r| r.header("authorization") == Some(value))
            .count()
    };

    for i in 0..10 {
        let (s, text) = call(d.http, "GET", "/v1/x", &key, &format!("p{i}"));
        assert_eq!(s, 200, "every caller request succeeds through B: {text}");
        assert!(text.contains("auth=Bearer sk-test-b"), "{text}");
    }
    assert_eq!(used("Bearer sk-test-a"), 1, "A rests after its 429");
    let m = metrics(&d);
    let resting =
        "edgefilter_upstream_credential_state{route=\"/v1/\",index=\"0\",state=\"rate_limited\"} 1";
    assert!(m.contains(resting), "{resting} in\n{m}");

    // A comes back after its Retry-After.
    limit_a.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2300));
    for i in 0..4 {
        let (s, text) = call(d.http, "GET", "/v1/x", &key, &format!("q{i}"));
        assert_eq!(s, 200, "{text}");
    }
    assert!(used("Bearer sk-test-a") >= 2, "A is used again");

    // Every value rests: 503 with the earliest recovery.
    limit_all.store(true, Ordering::SeqCst);
    let (s, text) = call(d.http, "GET", "/v1/x", &key, "all");
    assert_eq!(s, 503, "{text}");
    assert!(
        text.contains("\"UPSTREAM_CREDENTIALS_EXHAUSTED\""),
        "{text}"
    );
    let retry: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Retry-After");
    assert!((25..=30).contains(&retry), "the earliest recovery: {retry}");
    let asked = provider.count();
    let (s, _) = call(d.http, "GET", "/v1/x", &key, "again");
    assert_eq!(s, 503);
    assert_eq!(
        provider.count(),
        asked,
        "the provider is not asked while every value rests"
    );

    // A value the provider refuses rests until it changes, and is named by index only.
    limit_all.store(false, Ordering::SeqCst);
    for i in 0..4 {
        let (s, text) = call(d.http, "GET", "/v2/x", &key, &format!("v{i}"));
        assert_eq!(s, 200, "{text}");
        assert!(text.contains("auth=Bearer sk-test-y"), "{text}");
    }
    assert_eq!(used("Bearer sk-test-x"), 1, "X rests after its 401");
    let m = metrics(&d);
    let refused =
        "edgefilter_upstream_credential_state{route=\"/v2/\",index=\"0\",state=\"refused\"} 1";
    assert!(m.contains(refused), "{refused} in\n{m}");
    let log = d.log();
    assert!(log.contains("refused upstream credential 0"), "{log}");
    assert!(
        !log.contains("sk-test"),
        "a credential value in the log:\n{log}"
    );
    assert!(!m.contains("sk-test"), "a credential value in /metrics");
}

/// Binds origins on 127.0.0.2 and 127.0.0.3 at one port (so only the name's address differs).
fn twin_origins() -> (Origin, Origin) {
    for _ in 0..20 {
        let a = Origin::start(Listen::Tcp("127.0.0.2:0".parse().unwrap()), origin::echo());
        let port = a.addr.port();
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_ok() {
            let b = Origin::start(
                Listen::Tcp(format!("127.0.0.3:{port}").parse().unwrap()),
                origin::echo(),
            );
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

#[test]
fn a_host_name_whose_address_changes_is_followed_without_a_restart() {
    let (a, b) = twin_origins();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.2 origin.edgefilter.test\n",
    )
    .unwrap();
    let routes = format!(
        "[[route]]\nprefix = \"/v1/\"\nupstream = \"http://origin.edgefilter.test:{}\"\n\
         resolve_interval = \"1s\"\n",
        a.addr.port()
    );
    let tables = format!(
        "[keys]\nenvironment = \"live\"\n[log]\nformat = \"text\"\naccess_log = \"off\"\n{routes}"
    );
    // The daemon sees `hosts` as /etc/hosts, in a mount namespace of its own.
    let script = format!("mount --bind {} /etc/hosts && exec \"$@\"", hosts.display());
    let mut d =
        Daemon::configure(&tables).wrapped(&["unshare", "--mount", "sh", "-c", &script, "sh"]);
    d.restart();
    let (_, key) = d.create_key("alice");
    let (s, text) = call(d.http, "GET", "/v1/x", &key, "first");
    assert_eq!(s, 200, "{text}");
    assert_eq!(a.ids(), ["first"]);

    // Rewritten in place (a bind mount follows the file, not its name).
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.3 origin.edgefilter.test\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while b.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the new address was never used:\n{}",
            d.log()
        );
        let (s, text) = call(d.http, "GET", "/v1/x", &key, &format!("move-{n}"));
        assert_eq!(s, 200, "{text}");
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let a_after = a.count();

    // The name stops resolving: the last good address is kept, and that is said.
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    for i in 0..3 {
        let (s, text) = call(d.http, "GET", "/v1/x", &key, &format!("kept-{i}"));
        assert_eq!(s, 200, "{text}");
    }
    assert_eq!(a.count(), a_after, "nothing goes back to the old address");
    assert!(b.ids().contains(&"kept-2".to_string()));
    let m = metrics(&d);
    assert!(
        !m.contains(&format!(
            "edgefilter_upstream_resolve_failures_total{{route=\"/v1/\",target=\"http://origin.edgefilter.test:{}\"}} 0",
            a.addr.port()
        )),
        "resolve failures are counted:\n{m}"
    );
    assert!(d.log().contains("no longer resolves"), "{}", d.log());
}

#[test]
fn upstream_errors_carry_the_key_id_and_the_stage_and_no_address_when_opaque() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (errors, shows_target) in [("detailed", true), ("opaque", false)] {
        let tables = format!(
            "[keys]\nenvironment = \"live\"\nerrors = \"{errors}\"\n[log]\nformat = \"text\"\n\
             access_log = \"off\"\n[[route]]\nprefix = \"/v1/\"\nupstream = \"http://{closed}\"\n"
        );
        let mut d = Daemon::configure(&tables);
        d.restart();
        let (id, key) = d.create_key("alice");
        let (s, text) = call(d.http, "GET", "/v1/x", &key, "down");
        assert_eq!(s, 502, "{text}");
        assert!(text.contains("\"UPSTREAM_UNAVAILABLE\""), "{text}");
        assert!(
            text.contains(&format!("\"key_id\":\"{id}\"")),
            "{errors}: {text}"
        );
        assert!(
            text.contains("connecting to the upstream"),
            "{errors}: {text}"
        );
        assert_eq!(
            text.contains(&closed.to_string()),
            shows_target,
            "{errors}: the target in the hint: {text}"
        );
    }
}
