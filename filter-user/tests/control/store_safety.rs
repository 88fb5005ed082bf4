//! The SQLite store's file going wrong under the real daemon (issue 14, finding 6): deleted,
//! replaced by another database, corrupted, made read-only, and its disk full. In each case
//! `/readyz` answers 503 naming the file, every change through the CLI fails (exit 1, the file
//! named), the shards keep serving their last state (known keys pass, revoked keys stay revoked,
//! checked on every shard), and nothing reports success that did not reach the disk. On a full
//! disk a revocation still commits (from the space reserve), takes effect on every shard and is
//! still in force after a restart on the still-full disk.
//!
//! Needs root: `chattr +i` and a tmpfs mount.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use edgefilter::store::{KeyStore, NewKey, SqliteStore};
use edgefilter::xdp::PIN_DIR_ENV;
use serde_json::Value;

use crate::support::daemon::{Daemon, KeepAlive, Process, default_tables, raw_http};
use crate::support::upstream::Upstream;

/// The daemon's store file.
fn store_path(d: &Daemon) -> PathBuf {
    d.dir.path().join("var/keys.db")
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Adds `lines` to the config's `[store]` table.
fn store_settings(d: &Daemon, lines: &str) {
    let cfg = std::fs::read_to_string(d.config()).unwrap();
    let cfg = cfg.replacen(
        "path = \"var/keys.db\"\n",
        &format!("path = \"var/keys.db\"\n{lines}\n"),
        1,
    );
    std::fs::write(d.config(), cfg).unwrap();
}

/// The status each shard answers `GET /v1/echo` with `key`: fresh connections until both shards
/// have answered (each connection lands on one shard), every answer of a shard the same.
fn per_shard(addr: SocketAddr, key: &str) -> BTreeMap<u8, u16> {
    let mut seen: BTreeMap<u8, u16> = BTreeMap::new();
    for _ in 0..400 {
        let a = KeepAlive::new(addr).get("/v1/echo", key).unwrap();
        let shard = a.shard.expect("X-Request-Id names the shard");
        let before = *seen.entry(shard).or_insert(a.status);
        assert_eq!(
            before, a.status,
            "shard {shard} answered two ways: {seen:?}"
        );
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "not both shards reached: {seen:?}");
    seen
}

/// Asserts every shard answers `status` to `key`.
fn on_every_shard(addr: SocketAddr, key: &str, status: u16, what: &str) {
    let seen = per_shard(addr, key);
    assert!(
        seen.values().all(|&s| s == status),
        "{what}: expected {status} on every shard, got {seen:?}"
    );
}

fn readyz(admin: SocketAddr) -> (u16, Value) {
    raw_http(admin, "GET", "/readyz", None, None).unwrap()
}

/// Waits (at most 15 s) until `/readyz` answers `status`; returns its body.
fn wait_ready(admin: SocketAddr, status: u16, log: &dyn Fn() -> String) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = readyz(admin);
        if s == status {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {s} {v}, not {status}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one reason `/readyz` gives for the store.
fn store_reason(v: &Value) -> String {
    let reasons: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap_or_else(|| panic!("no reasons: {v}"))
        .iter()
        .filter_map(Value::as_str)
        .filter(|r| r.starts_with("store: "))
        .collect();
    assert_eq!(reasons.len(), 1, "{v}");
    assert_eq!(v["store"], false, "{v}");
    reasons[0].to_owned()
}

/// Runs the CLI, asserts it fails with exit 1, returns its stderr.
fn cli_fails(d: &Daemon, args: &[&str]) -> String {
    let o = d.cli(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{args:?} should fail with exit 1: stdout {} stderr {err}",
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

fn create_args(user: &str) -> [&str; 8] {
    [
        "keys",
        "create",
        "--tenant",
        "acme",
        "--user",
        user,
        "--scope",
        "ai:invoke",
    ]
}

/// `<store>.rescued-*` beside the store.
fn rescued_copies(db: &Path) -> Vec<PathBuf> {
    let name = format!("{}.rescued-", db.file_name().unwrap().to_string_lossy());
    let mut v: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Starts `edgefilter run --no-xdp` on `d`'s config without the fixture (which waits for
/// `/readyz` 200) and waits until its proxy answers.
fn start_unready(d: &Daemon) -> Process {
    let mut p = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .arg("--config")
            .arg(d.config())
            .args(["run", "--no-xdp"])
            .env_remove("EDGEFILTER_CONFIG")
            .env(PIN_DIR_ENV, d.pin_dir()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while raw_http(d.admin, "GET", "/healthz", None, None).is_err() {
        if let Some(st) = p.try_wait() {
            panic!("daemon exited: {st}; log:\n{}", p.log());
        }
        assert!(
            Instant::now() < deadline,
            "daemon not up; log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// Starts the daemon on `d`'s config expecting it to refuse (exit non-zero within 20 s);
/// returns its log.
fn start_refused(d: &Daemon) -> String {
    let mut p = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .arg("--config")
            .arg(d.config())
            .args(["run", "--no-xdp"])
            .env_remove("EDGEFILTER_CONFIG")
            .env(PIN_DIR_ENV, d.pin_dir()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = p.try_wait() {
            assert!(!st.success(), "the daemon started; log:\n{}", p.log());
            return p.log();
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not refuse to start; log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_deleted_store_is_noticed_and_not_recreated_empty() {
    let up = Upstream::start();
    let mut d = Daemon::start(up.addr);
    let (alice_id, alice) = d.create_key("alice");
    let (carol_id, carol) = d.create_key("carol");
    d.cli_ok(&["keys", "revoke", &carol_id]);
    let db = store_path(&d);
    let shown = db.display().to_string();
    for p in [
        db.clone(),
        with_suffix(&db, "-wal"),
        with_suffix(&db, "-shm"),
    ] {
        std::fs::remove_file(p).unwrap();
    }

    let v = wait_ready(d.admin, 503, &|| d.log());
    let reason = store_reason(&v);
    assert!(
        reason.contains(&shown) && reason.contains("deleted"),
        "{reason}"
    );
    let err = cli_fails(&d, &["keys", "revoke", &alice_id]);
    assert!(
        err.contains("STORE_UNAVAILABLE") && err.contains(&shown),
        "{err}"
    );
    let err = cli_fails(&d, &create_args("dave"));
    assert!(err.contains(&shown), "{err}");
    on_every_shard(d.http, &alice, 200, "a known key");
    on_every_shard(d.http, &carol, 401, "a revoked key");
    let log = d.log();
    assert!(
        log.contains("cannot take changes") && log.contains(&shown),
        "no error line naming the file:\n{log}"
    );
    let copies = rescued_copies(&db);
    assert_eq!(
        copies.len(),
        1,
        "the daemon saved its last state: {copies:?}"
    );

    // Stopped, nothing recreates the store empty: neither a command nor the daemon.
    d.kill9();
    let err = cli_fails(&d, &["keys", "list"]);
    assert!(err.contains(&shown), "{err}");
    assert!(
        err.contains(&copies[0].display().to_string()),
        "the saved copy is named: {err}"
    );
    let err = cli_fails(&d, &["keys", "revoke", &alice_id]);
    assert!(err.contains(&shown), "{err}");
    let log = start_refused(&d);
    assert!(log.contains(&shown), "{log}");
    assert!(!db.exists(), "an empty store was created");

    // The saved copy, moved back (nothing else to do), has every key as it was.
    std::fs::rename(&copies[0], &db).unwrap();
    d.restart();
    on_every_shard(d.http, &alice, 200, "a known key, after the restore");
    on_every_shard(d.http, &carol, 401, "a revoked key, after the restore");
    d.cli_ok(&["keys", "revoke", &alice_id]);
    on_every_shard(d.http, &alice, 401, "revoked after the restore");
}

#[test]
fn a_store_replaced_by_another_database_is_noticed() {
    let up = Upstream::start();
    let d = Daemon::start(up.addr);
    let (alice_id, alice) = d.create_key("alice");
    let db = store_path(&d);
    let shown = db.display().to_string();
    // Another database, with a key of its own, moved over the store.
    let other = d.dir.path().join("other.db");
    let mallory = {
        let mut st = SqliteStore::open(&other).unwrap();
        let made = st
            .create_keys(
                &[NewKey {
                    scopes: vec!["ai:invoke".into()],
                    ..NewKey::new("acme", "mallory", "live")
                }],
                1,
            )
            .unwrap();
        made[0].secret.expose().to_owned()
    };
    std::fs::rename(&other, &db).unwrap();

    let v = wait_ready(d.admin, 503, &|| d.log());
    let reason = store_reason(&v);
    assert!(
        reason.contains(&shown) && reason.contains("replaced"),
        "{reason}"
    );
    let err = cli_fails(&d, &["keys", "revoke", &alice_id]);
    assert!(err.contains(&shown), "{err}");
    let err = cli_fails(&d, &create_args("dave"));
    assert!(err.contains(&shown), "{err}");
    on_every_shard(d.http, &alice, 200, "a known key");
    on_every_shard(d.http, &mallory, 401, "the other database's key");
}

#[test]
fn a_corrupted_store_is_noticed() {
    let up = Upstream::start();
    let mut d = Daemon::configure(&default_tables(up.addr));
    store_settings(&d, "check_interval = \"1s\"");
    d.restart();
    let (alice_id, alice) = d.create_key("alice");
    let (carol_id, carol) = d.create_key("carol");
    d.cli_ok(&["keys", "revoke", &carol_id]);
    for i in 0..40 {
        d.create_key(&format!("filler{i}"));
    }
    let db = store_path(&d);
    let shown = db.display().to_string();
    // Everything into the main file, then garbage over its pages (the first one, the header
    // and schema, left whole).
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0, "checkpoint blocked");
    }
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len >= 4 * 4096, "{len}");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(&vec![0x5a; usize::try_from(len).unwrap() - 4096])
            .unwrap();
        f.sync_all().unwrap();
    }

    let v = wait_ready(d.admin, 503, &|| d.log());
    let reason = store_reason(&v);
    assert!(
        reason.contains(&shown) && reason.contains("corrupt"),
        "{reason}"
    );
    let err = cli_fails(&d, &["keys", "revoke", &alice_id]);
    assert!(
        err.contains("STORE_UNAVAILABLE") && err.contains(&shown),
        "{err}"
    );
    let err = cli_fails(&d, &create_args("dave"));
    assert!(err.contains(&shown), "{err}");
    on_every_shard(d.http, &alice, 200, "a known key");
    on_every_shard(d.http, &carol, 401, "a revoked key");
    let log = d.log();
    assert!(
        log.contains("cannot take changes") && log.contains("corrupt"),
        "{log}"
    );
    // Stopped, a command refuses the damaged file too.
    d.kill9();
    let err = cli_fails(&d, &["keys", "revoke", &alice_id]);
    assert!(err.contains(&shown) && err.contains("corrupt"), "{err}");
}

/// `chattr +i` on the store file; removed again when dropped, so the directory can go.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Self {
        let st = Command::new("chattr").arg("+i").arg(path).status().unwrap();
        assert!(st.success(), "chattr +i {} (needs root)", path.display());
        Self(path.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_store_refuses_changes_and_keeps_serving() {
    let up = Upstream::start();
    let mut d = Daemon::start(up.addr);
    let (alice_id, alice) = d.create_key("alice");
    let (bob_id, bob) = d.create_key("bob");
    let db = store_path(&d);
    let shown = db.display().to_string();

    let guard = Immutable::set(&db);
    let v = wait_ready(d.admin, 503, &|| d.log());
    let reason = store_reason(&v);
    assert!(
        reason.contains(&shown) && reason.contains("read-only"),
        "{reason}"
    );
    let err = cli_fails(&d, &["keys", "revoke", &alice_id]);
    assert!(
        err.contains(&shown) && err.contains("read-only") && err.contains("not permitted"),
        "the file and the cause: {err}"
    );
    on_every_shard(d.http, &alice, 200, "a known key");
    let listed = d.cli_ok(&["keys", "list", "--json"]);
    assert!(listed.contains(&alice_id), "reads keep working: {listed}");

    // Writable again: ready, and changes go through.
    drop(guard);
    wait_ready(d.admin, 200, &|| d.log());
    d.cli_ok(&["keys", "revoke", &alice_id]);
    on_every_shard(d.http, &alice, 401, "revoked once writable");

    // With no daemon, a command writing the read-only store directly fails the same way.
    d.kill9();
    let guard = Immutable::set(&db);
    let err = cli_fails(&d, &["keys", "revoke", &bob_id]);
    assert!(err.contains(&shown) && err.contains("read-only"), "{err}");
    let listed = d.cli_ok(&["keys", "list", "--json"]);
    let keys: Vec<Value> = serde_json::from_str(listed.trim()).unwrap();
    let bob_row = keys.iter().find(|k| k["id"] == bob_id.as_str()).unwrap();
    assert_eq!(bob_row["status"], "active", "{bob_row}");

    // A daemon started on the read-only file serves it, unready; made writable, it takes changes.
    let daemon = start_unready(&d);
    on_every_shard(
        d.http,
        &alice,
        401,
        "revoked, served from a read-only store",
    );
    on_every_shard(
        d.http,
        &bob,
        200,
        "a known key, served from a read-only store",
    );
    let v = wait_ready(d.admin, 503, &|| daemon.log());
    assert!(store_reason(&v).contains("read-only"), "{v}");
    let err = cli_fails(&d, &["keys", "revoke", &bob_id]);
    assert!(err.contains(&shown) && err.contains("read-only"), "{err}");
    drop(guard);
    wait_ready(d.admin, 200, &|| daemon.log());
    d.cli_ok(&["keys", "revoke", &bob_id]);
    on_every_shard(d.http, &bob, 401, "revoked once the store is writable");
}

/// A small tmpfs mounted on a directory; lazily unmounted when dropped (even while a daemon
/// still holds files in it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {} (needs root): {e}", dir.display()));
        Self(dir.to_path_buf())
    }

    /// Fills it: a file grown until the file system refuses another byte.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [64 * 1024, 4096, 512, 1] {
            let block = vec![0xa5u8; chunk];
            while f.write_all(&block).is_ok() {}
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn on_a_full_disk_a_revocation_commits_reaches_every_shard_and_survives_a_restart() {
    let up = Upstream::start();
    let mut d = Daemon::configure(&default_tables(up.addr));
    store_settings(&d, "reserve_bytes = 262144");
    let var = d.dir.path().join("var");
    let disk = Tmpfs::mount(&var, "2m");
    d.restart();
    let (alice_id, alice) = d.create_key("alice");
    let (_bob_id, bob) = d.create_key("bob");
    let db = store_path(&d);
    let shown = db.display().to_string();
    let reserve = with_suffix(&db, ".reserve");
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 262_144);

    let filler = disk.fill();
    // A change that adds access waits for space ...
    let err = cli_fails(&d, &create_args("dave"));
    assert!(
        err.contains(&shown) && err.contains("no space left"),
        "the file and the cause: {err}"
    );
    // ... a revocation commits from the reserve, and every shard applies it.
    let out = d.cli_ok(&["keys", "revoke", &alice_id]);
    assert!(out.contains("revoked"), "{out}");
    assert!(
        std::fs::metadata(&reserve).unwrap().len() < 262_144,
        "the reserve was spent"
    );
    on_every_shard(d.http, &alice, 401, "revoked on a full disk");
    on_every_shard(d.http, &bob, 200, "a known key on a full disk");
    let v = wait_ready(d.admin, 503, &|| d.log());
    let reason = store_reason(&v);
    assert!(reason.contains("space reserve"), "{reason}");
    assert!(
        d.log().contains("gave part of the space reserve back"),
        "{}",
        d.log()
    );

    // Durable: after kill -9 and a restart on the still-full disk, still revoked everywhere.
    d.kill9();
    let mut restarted = start_unready(&d);
    on_every_shard(
        d.http,
        &alice,
        401,
        "revoked, after a restart on a full disk",
    );
    on_every_shard(
        d.http,
        &bob,
        200,
        "a known key, after a restart on a full disk",
    );
    let (status, v) = readyz(d.admin);
    assert_eq!(status, 503, "{v}");
    assert!(store_reason(&v).contains("space reserve"), "{v}");

    // A clean stop (SIGTERM: SQLite removes its -wal and -shm files) and a start on the
    // still-full disk, which has to make them again.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(restarted.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while restarted.try_wait().is_none() {
        assert!(
            Instant::now() < deadline,
            "no exit on SIGTERM:\n{}",
            restarted.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(restarted);
    let restarted = start_unready(&d);
    on_every_shard(
        d.http,
        &alice,
        401,
        "revoked, after a clean restart on a full disk",
    );
    on_every_shard(
        d.http,
        &bob,
        200,
        "a known key, after a clean restart on a full disk",
    );

    // Space back: the reserve is made whole again and the daemon is ready.
    std::fs::remove_file(&filler).unwrap();
    wait_ready(d.admin, 200, &|| restarted.log());
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 262_144);
    let log = restarted.log();
    assert!(log.contains("can take changes again"), "{log}");
    drop(restarted);
    drop(disk);
}
