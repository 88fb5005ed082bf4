//! Draining: in-flight requests finish, idle connections close, the deadline is kept; and the
//! real binary drains on SIGTERM (exit 0) and reloads its TLS certificate on SIGHUP.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::daemon::Process;
use crate::support::ports::free_addr;
use crate::support::proxy_env::{Client, Env, get};
use crate::support::{tls, upstream};

#[test]
fn shutdown_finishes_in_flight_requests_and_closes_idle_ones() {
    let mut env = Env::new("[limits]\nclient_timeout = \"20s\"\nupstream_timeout = \"10s\"\n");
    let mut idle = env.connect();
    assert_eq!(idle.call(&get("/echo")).status, 200);
    let mut busy = env.connect();
    busy.send(get("/slow").as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let proxy = env.proxy.take().unwrap();
    let t = Instant::now();
    let stopper = std::thread::spawn(move || proxy.shutdown(Duration::from_secs(10)));
    // The idle keep-alive connection is closed at once, long before its 20 s timeout.
    assert!(idle.closed());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The in-flight request still gets its answer, marked as the connection's last.
    let r = busy.read(false);
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    stopper.join().unwrap().unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(
        TcpStream::connect(env.addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn shutdown_deadline_cuts_requests_that_run_too_long() {
    let mut env = Env::new("[limits]\nupstream_timeout = \"10s\"\n");
    let mut busy = env.connect();
    busy.send(get("/slow").as_bytes());
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    env.proxy
        .take()
        .unwrap()
        .shutdown(Duration::from_millis(300))
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        busy.try_read(false).is_err(),
        "no answer after the deadline"
    );
}

fn signal(child: &Process, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "daemon never listened on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemon_drains_on_sigterm_and_reloads_tls_on_sighup() {
    let up = upstream::Upstream::start();
    let pki = tls::Pki::new("first");
    let dir = tempfile::tempdir().unwrap();
    let (http, https, admin) = (free_addr(), free_addr(), free_addr());
    let conf = dir.path().join("edgefilter.toml");
    std::fs::write(
        &conf,
        format!(
            "[listen]\nhttp = [\"{http}\"]\nhttps = [\"{https}\"]\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n[runtime]\nshards = 2\n[xdp]\nenabled = false\n\
             [store]\npath = \"{}\"\n[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\
             [log]\nformat = \"text\"\naccess_log = \"off\"\n\
             [[route]]\nprefix = \"/\"\nupstream = \"http://{}\"\n",
            pki.cert.display(),
            pki.key.display(),
            dir.path().join("keys.db").display(),
            dir.path().join("admin.token").display(),
            up.addr
        ),
    )
    .unwrap();
    // The daemon checks keys: create one in its store before it starts.
    let created = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .args([
            "keys", "create", "--tenant", "t", "--user", "u", "--json", "--config",
        ])
        .arg(&conf)
        .output()
        .unwrap();
    crate::support::leaks::scan_cli(&["keys", "create"], &created);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let keyed_get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nAuthorization: Bearer {key}\r\n\r\n")
    };
    let d = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .args(["run", "--no-xdp", "--config"])
            .arg(&conf),
    );
    wait_listening(http);
    wait_listening(https);
    assert_eq!(
        Client::connect(http).call(&get("/echo")).status,
        401,
        "no key, no entry"
    );
    assert_eq!(Client::connect(http).call(&keyed_get("/echo")).status, 200);

    let before = tls::TlsClient::connect(https, pki.client_config(&[b"http/1.1"])).peer_leaf();
    let second = pki.issue("second");
    assert_ne!(before, second);
    signal(&d, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaf = tls::TlsClient::connect(https, pki.client_config(&[b"http/1.1"])).peer_leaf();
        if leaf == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut busy = Client::connect(http);
    busy.send(keyed_get("/slow").as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let mut d = d;
    signal(&d, "-TERM");
    let r = busy.read(false);
    assert_eq!(r.status, 200, "in-flight request cut by SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = d.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "daemon exit status {status}");
}
