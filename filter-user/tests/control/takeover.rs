//! One daemon per listen address and per store, through the real binary: a second `run` on the
//! same proxy address, admin address or SQLite store is refused (exit 1) naming what is held
//! and by which pid, and so is an address another program listens on, even with
//! `SO_REUSEPORT`. `run --takeover` replaces the running daemon while clients keep sending:
//! not one request fails, the access log holds every request once, and key changes made
//! through the CLI during and after the takeover hold on the new daemon. A takeover that fails
//! to start leaves the running daemon serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::{Daemon, Process, default_tables};
use crate::support::ports::free_addr;
use crate::support::upstream::Upstream;

/// Tables with the access log in `var/access.log`.
fn logged_tables(up: SocketAddr) -> String {
    default_tables(up).replace("access_log = \"off\"", "access_log = \"var/access.log\"")
}

/// A config in `dir` like `d`'s, with its proxy address, admin address and store replaced.
fn config_like(
    d: &Daemon,
    dir: &Path,
    http: SocketAddr,
    admin: SocketAddr,
    store: &Path,
) -> PathBuf {
    let text = std::fs::read_to_string(d.config()).unwrap();
    let text = text
        .replace(
            &format!("http = [\"{}\"]", d.http),
            &format!("http = [\"{http}\"]"),
        )
        .replace(
            &format!("listen = \"{}\"", d.admin),
            &format!("listen = \"{admin}\""),
        )
        .replace(
            "path = \"var/keys.db\"",
            &format!("path = {:?}", store.display().to_string()),
        );
    let path = dir.join("second.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits for `p` to exit (bounded); its exit code and log.
fn refused(mut p: Process) -> (Option<i32>, String) {
    let st = p
        .wait_for(Duration::from_secs(20))
        .expect("the second daemon exits");
    (st.code(), p.log())
}

/// One request on a fresh connection (`Connection: close`): the status.
fn once(addr: SocketAddr, key: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /v1/echo HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {} bytes", raw.len())))
}

/// A keep-alive client that never retries: it reconnects only before its first request and
/// after an answer marked `Connection: close`; anything else that goes wrong is a failure.
struct Strict {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Answers marked `Connection: close`.
    closes: u64,
}

impl Strict {
    fn get(&mut self, key: &str) -> Result<u16, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().unwrap();
        let out = (|| -> Result<(u16, bool), String> {
            write!(
                s,
                "GET /v1/echo HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\r\n"
            )
            .map_err(|e| format!("write: {e}"))?;
            let mut buf = Vec::new();
            let end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk) {
                    Ok(0) => return Err(format!("closed after {} bytes of the answer", buf.len())),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(format!("read: {e}")),
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .get(9..12)
                .and_then(|c| c.parse().ok())
                .ok_or("bad status line")?;
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let len: usize = header("content-length:")
                .and_then(|v| v.parse().ok())
                .ok_or("no content-length")?;
            while buf.len() < end + len {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk) {
                    Ok(0) => return Err("closed in the body".into()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(format!("read body: {e}")),
                }
            }
            Ok((status, header("connection:").is_some_and(|v| v == "close")))
        })();
        match out {
            Ok((status, close)) => {
                if close {
                    self.stream = None;
                    self.closes += 1;
                }
                Ok(status)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

#[test]
fn a_second_daemon_on_the_same_address_or_store_is_refused_naming_the_holder() {
    let up = Upstream::start();
    let first = Daemon::start(up.addr);
    let (_, key) = first.create_key("alice");
    let pid = first.pid().unwrap();
    let store = first.dir.path().join("var/keys.db");
    let cases = [
        (
            "the same proxy address",
            first.http,
            free_addr(),
            None,
            first.http.to_string(),
        ),
        (
            "the same admin address",
            free_addr(),
            first.admin,
            None,
            first.admin.to_string(),
        ),
        (
            "the same SQLite store",
            free_addr(),
            free_addr(),
            Some(store.clone()),
            format!("the SQLite store {}", store.display()),
        ),
    ];
    let mut second = Daemon::configure(&default_tables(up.addr));
    for (case, http, admin, same_store, named) in cases {
        let own_store = second.dir.path().join("var/keys.db");
        let cfg = config_like(
            &first,
            second.dir.path(),
            http,
            admin,
            same_store.as_deref().unwrap_or(&own_store),
        );
        let (code, log) = refused(second.spawn_run(&cfg, &[], &[]));
        assert_eq!(code, Some(1), "{case}: exit code; log:\n{log}");
        let want = format!("{named} is in use by another edgefilter daemon (pid {pid};");
        assert!(log.contains(&want), "{case}: wants `{want}` in:\n{log}");
        assert!(log.contains("edgefilter run --takeover"), "{case}: {log}");
        assert!(
            !log.contains("serving"),
            "{case}: it started anyway:\n{log}"
        );
    }
    // The first daemon alone answers, every time (a silent second one would answer
    // UNKNOWN_KEY for about half the requests).
    for _ in 0..20 {
        assert_eq!(once(first.http, &key).unwrap(), 200);
    }
}

#[test]
fn an_address_another_program_listens_on_is_refused_even_with_so_reuseport() {
    let up = Upstream::start();
    let addr = free_addr();
    // A listener that SO_REUSEPORT sockets of the same user could join unnoticed.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    other.bind(&addr.into()).unwrap();
    other.listen(16).unwrap();
    let mut d = Daemon::configure(&default_tables(up.addr));
    let cfg = config_like(
        &d,
        d.dir.path(),
        addr,
        d.admin,
        &d.dir.path().join("var/keys.db"),
    );
    let (code, log) = refused(d.spawn_run(&cfg, &[], &[]));
    assert_eq!(code, Some(1), "{log}");
    let want = format!(
        "{addr} is in use by another program (pid {}, ",
        std::process::id()
    );
    assert!(log.contains(&want), "wants `{want}` in:\n{log}");
    assert!(log.contains("not by an edgefilter daemon"), "{log}");
}

/// Load: keep-alive and new-connection clients, each sending one request after another. The
/// keep-alive clients pause between requests, so their connections are mostly idle when the
/// old daemon drains (the moment a close could race with a request).
const KEEP_ALIVE_CLIENTS: usize = 6;
const NEW_CONNECTION_CLIENTS: usize = 3;
const KEEP_ALIVE_PAUSE: Duration = Duration::from_millis(40);
const NEW_CONNECTION_PAUSE: Duration = Duration::from_millis(2);
/// Bounds on the load, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(90);
const PER_CLIENT_LIMIT: u64 = 200_000;
/// Keys created through the CLI during the takeover, at most.
const MAX_PROBES: usize = 50;

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Requests answered 200 after the replaced daemon had exited.
    after_exit: AtomicU64,
    /// Keep-alive answers marked `Connection: close`.
    closes: AtomicU64,
}

#[test]
fn a_takeover_under_load_fails_no_request_and_hands_everything_over() {
    let up = Upstream::start();
    let mut d = Daemon::configure(&logged_tables(up.addr));
    d.restart();
    let (_, key) = d.create_key("alice");
    let http = d.http;
    let stop = Arc::new(AtomicBool::new(false));
    let old_gone = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let began = Instant::now();
    let clients: Vec<_> = (0..KEEP_ALIVE_CLIENTS + NEW_CONNECTION_CLIENTS)
        .map(|n| {
            let (stop, old_gone, tally, key) =
                (stop.clone(), old_gone.clone(), tally.clone(), key.clone());
            std::thread::spawn(move || {
                let mut strict = Strict {
                    addr: http,
                    stream: None,
                    closes: 0,
                };
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed)
                    && began.elapsed() < LOAD_LIMIT
                    && sent < PER_CLIENT_LIMIT
                {
                    let gone = old_gone.load(Ordering::Relaxed);
                    let answer = if n < KEEP_ALIVE_CLIENTS {
                        strict.get(&key)
                    } else {
                        once(http, &key).map_err(|e| e.to_string())
                    };
                    sent += 1;
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    match answer {
                        Ok(200) => {
                            if gone {
                                tally.after_exit.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(status) => tally
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("client {n}: status {status}")),
                        Err(e) => tally
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("client {n}: {e} at {:?}", began.elapsed())),
                    }
                    std::thread::sleep(if n < KEEP_ALIVE_CLIENTS {
                        KEEP_ALIVE_PAUSE
                    } else {
                        NEW_CONNECTION_PAUSE
                    });
                }
                tally.closes.fetch_add(strict.closes, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = tally.sent.load(Ordering::Relaxed);
    let old_pid = d.pid().unwrap();
    let mut old = d.start_takeover();
    // During the takeover (from its start until the old daemon has exited): keys created
    // through the CLI, one after another, each work at once, on whichever daemon answers.
    let probing = AtomicBool::new(true);
    let (exited, during) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let mut made = Vec::new();
            while probing.load(Ordering::Relaxed) && made.len() < MAX_PROBES {
                let (id, fresh) = d.create_key(&format!("carol{}", made.len()));
                made.push((
                    id,
                    fresh.clone(),
                    once(http, &fresh).map_err(|e| e.to_string()),
                ));
            }
            made
        });
        let exited = old.wait_for(LOAD_LIMIT);
        probing.store(false, Ordering::Relaxed);
        (exited, prober.join().unwrap())
    });
    let exited =
        exited.unwrap_or_else(|| panic!("the old daemon never exited; log:\n{}", old.log()));
    old_gone.store(true, Ordering::Relaxed);
    assert!(
        exited.success(),
        "the old daemon: {exited}; log:\n{}",
        old.log()
    );
    let refused: Vec<_> = during.iter().filter(|(_, _, st)| *st != Ok(200)).collect();
    assert!(
        refused.is_empty(),
        "keys created during the takeover refused: {refused:?}"
    );
    let mut probes = during.len() as u64;
    let old_log = old.log();
    assert!(old_log.contains("handed over: draining"), "{old_log}");
    // The new daemon learns of the old one's exit only once it has drained.
    let at = |log: &str, what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
    };
    let drained = at(&old_log, "drained; exiting").expect("the old daemon's last line");
    let until = Instant::now() + Duration::from_secs(10);
    let noticed = loop {
        if let Some(t) = at(&d.log(), "the replaced daemon exited") {
            break t;
        }
        assert!(Instant::now() < until, "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        noticed >= drained,
        "exit noticed at {noticed}, drained at {drained}"
    );
    // After: the new daemon serves; a revocation through the CLI holds at once, a new key works.
    let new_pid = d.pid().unwrap();
    assert_ne!(new_pid, old_pid);
    let (id, revoked, _) = during
        .first()
        .cloned()
        .expect("a key created during the takeover");
    d.cli_ok(&["keys", "revoke", &id]);
    assert_eq!(
        once(http, &revoked).unwrap(),
        401,
        "a revoked key still passes"
    );
    let (_, later) = d.create_key("dave");
    assert_eq!(once(http, &later).unwrap(), 200);
    probes += 2;
    let lock = std::fs::read_to_string(d.dir.path().join("var/keys.db.lock")).unwrap();
    assert_eq!(
        lock.trim(),
        new_pid.to_string(),
        "the store lock names the new daemon"
    );
    let (status, _) = d.admin_call("GET", "/readyz", None, None);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let sent = tally.sent.load(Ordering::Relaxed);
    let failures = tally.failures.lock().unwrap().clone();
    let after = tally.after_exit.load(Ordering::Relaxed);
    let closes = tally.closes.load(Ordering::Relaxed);
    eprintln!(
        "takeover under load: {sent} requests ({before} before the takeover began, {after} after the old daemon exited), {} failed; {closes} keep-alive answers marked last; {probes} CLI-key probes",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:#?}",
        failures.len()
    );
    assert!(
        before > 0 && after > 0,
        "load before {before}, after {after}"
    );
    assert!(
        d.log().contains(&format!(
            "took over: serving; the replaced daemon drains and exits old_pid={old_pid}"
        )),
        "{}",
        d.log()
    );
    // Both daemons wrote the access log: every request once, each line whole.
    let path = d.dir.path().join("var/access.log");
    let want = sent + probes;
    let until = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() as u64 >= want || Instant::now() > until {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        lines.len() as u64,
        want,
        "access log lines vs requests sent"
    );
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["status"].is_u64(), "{l}");
    }
}

#[test]
fn a_takeover_that_cannot_start_leaves_the_running_daemon_serving() {
    let up = Upstream::start();
    // The access log is a file in a directory of its own, replaced by a plain file once the
    // daemon has the log open: the daemon taking over passes the config checks and connects,
    // then cannot open the log, so it fails with the sockets in hand.
    let tables =
        default_tables(up.addr).replace("access_log = \"off\"", "access_log = \"logs/access.log\"");
    let mut d = Daemon::configure(&tables);
    std::fs::create_dir(d.dir.path().join("logs")).unwrap();
    d.restart();
    let (_, key) = d.create_key("alice");
    let pid = d.pid().unwrap();
    let config = d.config();
    std::fs::remove_dir_all(d.dir.path().join("logs")).unwrap();
    std::fs::write(d.dir.path().join("logs"), "not a directory").unwrap();
    let mut failed = d.spawn_run(&config, &["--takeover"], &[]);
    let st = failed
        .wait_for(Duration::from_secs(30))
        .expect("the failed takeover exits");
    assert_eq!(st.code(), Some(1), "{}", failed.log());
    assert!(
        failed.log().contains("log.access_log") && failed.log().contains("taking over"),
        "{}",
        failed.log()
    );
    std::fs::remove_file(d.dir.path().join("logs")).unwrap();
    // The running daemon goes on: proxy and admin API accept again.
    for _ in 0..10 {
        assert_eq!(once(d.http, &key).unwrap(), 200);
    }
    let (_, other) = d.create_key("bob");
    assert_eq!(once(d.http, &other).unwrap(), 200);
    assert_eq!(d.pid(), Some(pid));
    // And a takeover that can start still succeeds.
    let mut old = d.start_takeover();
    let st = old
        .wait_for(Duration::from_secs(30))
        .expect("the old daemon exits");
    assert!(st.success(), "{}", old.log());
    assert_eq!(once(d.http, &key).unwrap(), 200);
    assert!(
        old.log().contains("did not get ready; still serving"),
        "{}",
        old.log()
    );
}

/// Kills (SIGKILL) a process this test did not spawn itself when dropped.
struct Stray(i32);

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn sigusr2_starts_this_binary_again_with_takeover() {
    let up = Upstream::start();
    let mut d = Daemon::start(up.addr);
    let (_, key) = d.create_key("alice");
    let old_pid = d.pid().unwrap();
    let lock = d.dir.path().join("var/keys.db.lock");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old_pid).unwrap()),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    // The old daemon exits once its child serves; the store lock names the child.
    let until = Instant::now() + Duration::from_secs(30);
    let new_pid = loop {
        let named: Option<u32> = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        if let Some(pid) = named.filter(|&p| p != old_pid) {
            break pid;
        }
        assert!(Instant::now() < until, "no takeover; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    let _new = Stray(i32::try_from(new_pid).unwrap());
    assert!(
        d.wait_exit(Duration::from_secs(30))
            .is_some_and(|st| st.success()),
        "the old daemon did not exit cleanly; log:\n{}",
        d.log()
    );
    assert_eq!(once(d.http, &key).unwrap(), 200);
    let (status, _) = d.admin_call("GET", "/readyz", None, None);
    assert_eq!(status, 200);
    let log = d.log();
    assert!(log.contains("SIGUSR2: started `run --takeover`"), "{log}");
    assert!(
        log.contains(&format!(
            "took over: serving; the replaced daemon drains and exits old_pid={old_pid}"
        )),
        "{log}"
    );
}
