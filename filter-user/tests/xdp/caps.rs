//! The daemon with exactly the systemd unit's capabilities: `edgefilter run` started as an
//! unprivileged user (`nobody`) holding only `CAP_BPF CAP_NET_ADMIN CAP_PERFMON
//! CAP_NET_BIND_SERVICE` (ambient, and the bounding set, through `setpriv`), in the server
//! namespace with XDP enforcing on the server veth, as `deploy/systemd/edgefilter.service` runs
//! it (its pin directory handed to the service user beforehand, as the unit's `ExecStartPre`
//! does). It attaches; `SIGHUP` puts a new `xdp.allow`, `xdp.protected_ports` and `xdp.mode`
//! into the kernel; a restart adopts the pinned program and links. Needs root; holds [`serial`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::daemon::{Process, raw_http};
use crate::support::netns::{CLIENT_V4, SERVER_IF, Topology};
use crate::support::serial::serial;

const PORT: u16 = 8080;
const ADMIN: &str = "127.0.0.1:9901";
/// The unit's capabilities, as `setpriv` names them.
const CAPS: &str = "-all,+bpf,+net_admin,+perfmon,+net_bind_service";
/// The same as a `/proc/PID/status` mask: bits 10, 12, 38 and 39.
const CAP_MASK: &str = "000000c000001400";
/// `nobody`.
const UID: u32 = 65_534;
const HANDSHAKE: Duration = Duration::from_millis(400);

/// XDP enforcing on the server veth, port `protected` protected, `allow` allowlisted.
fn write_config(dir: &Path, allow: &[&str], protected: u16, mode: &str) -> PathBuf {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}/32\"")).collect();
    let text = format!(
        "[listen]\nhttp = [\"0.0.0.0:{PORT}\"]\n[runtime]\nshards = 2\n\
         [xdp]\ninterfaces = [\"{SERVER_IF}\"]\nmode = \"{mode}\"\nattach = \"auto\"\n\
         protected_ports = [{protected}]\nallow = [{}]\n\
         [store]\npath = \"var/keys.db\"\n\
         [admin]\nlisten = \"{ADMIN}\"\ntoken_file = \"var/admin.token\"\n\
         [log]\nformat = \"text\"\naccess_log = \"off\"\n\
         [[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
        allow.join(", ")
    );
    let path = dir.join("edgefilter.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `edgefilter run` in the server namespace as `nobody` with only the unit's capabilities;
/// waits for `/readyz` (the store opened, XDP attached, every shard serving).
fn start_daemon(topo: &Topology, config: &Path, dir: &Path) -> Process {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    let mut p = Process::spawn(
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", topo.server))
            .args(["--", "setpriv"])
            .arg(format!("--reuid={UID}"))
            .arg(format!("--regid={UID}"))
            .arg("--clear-groups")
            .arg(format!("--inh-caps={CAPS}"))
            .arg(format!("--ambient-caps={CAPS}"))
            .arg(format!("--bounding-set={CAPS}"))
            .args(["--", env!("CARGO_BIN_EXE_edgefilter"), "--config"])
            .arg(config)
            .arg("run")
            .env("EDGEFILTER_BPF_PIN_DIR", &topo.pins)
            .env_remove("EDGEFILTER_CONFIG")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log)),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let admin: SocketAddr = ADMIN.parse().unwrap();
        let ready = Topology::in_ns(&topo.server, move || {
            matches!(raw_http(admin, "GET", "/readyz", None, None), Ok((200, _)))
        });
        if ready {
            return p;
        }
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        assert!(p.try_wait().is_none(), "daemon exited:\n{log}");
        assert!(Instant::now() < deadline, "daemon not ready:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon's capabilities and user, from `/proc`.
fn status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

fn line<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_default()
        .trim()
}

fn sighup_and_wait(p: &Process, dir: &Path, reloads: usize) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(p.id()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        if log.matches("config reloaded").count() >= reloads {
            assert!(!log.contains("not reloaded"), "{log}");
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no reload:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn chown_tree(path: &Path) {
    let out = Command::new("chown")
        .args(["-R", &format!("{UID}:{UID}")])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_daemon_runs_xdp_with_only_the_units_four_capabilities() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = CLIENT_V4;
    let config = write_config(dir.path(), &[a], PORT, "enforce");
    // What the unit's ExecStartPre does: the pin directory belongs to the service user; so do
    // the state files.
    std::fs::create_dir_all(&topo.pins).unwrap();
    chown_tree(&topo.pins);
    chown_tree(dir.path());

    let mut daemon = start_daemon(&topo, &config, dir.path());
    let st = status(daemon.id());
    assert_eq!(line(&st, "Uid:").split_whitespace().next(), Some("65534"));
    for cap in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(line(&st, cap), CAP_MASK, "{cap} of the daemon:\n{st}");
    }
    let log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(log().contains("program=Fresh"), "{}", log());
    assert!(topo.connects(a, PORT, Duration::from_secs(2)), "{}", log());
    assert!(!topo.connects(b, PORT, HANDSHAKE), "enforce drops the rest");

    // SIGHUP: a new allowlist, then the protected port moved away, then monitor mode, each in
    // the kernel at once.
    write_config(dir.path(), &[a, b], PORT, "enforce");
    sighup_and_wait(&daemon, dir.path(), 1);
    assert!(
        topo.connects(b, PORT, Duration::from_secs(2)),
        "xdp.allow reloaded"
    );
    assert!(!topo.connects(c, PORT, HANDSHAKE));
    write_config(dir.path(), &[a, b], PORT + 1, "enforce");
    sighup_and_wait(&daemon, dir.path(), 2);
    assert!(
        topo.connects(c, PORT, Duration::from_secs(2)),
        "xdp.protected_ports reloaded"
    );
    write_config(dir.path(), &[a, b], PORT, "monitor");
    sighup_and_wait(&daemon, dir.path(), 3);
    assert!(
        topo.connects(c, PORT, Duration::from_secs(2)),
        "xdp.mode reloaded"
    );
    write_config(dir.path(), &[a, b], PORT, "enforce");
    sighup_and_wait(&daemon, dir.path(), 4);
    assert!(!topo.connects(c, PORT, HANDSHAKE));

    // A restart with the same four capabilities adopts the pinned program and links; the
    // filter kept working while the daemon was down.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(daemon.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = Instant::now();
    while daemon.try_wait().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "daemon did not drain"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !topo.connects(c, PORT, HANDSHAKE),
        "still filtering while down"
    );
    drop(daemon);
    let before = log().len();
    daemon = start_daemon(&topo, &config, dir.path());
    let restarted = log()[before..].to_owned();
    assert!(restarted.contains("program=Adopted"), "{restarted}");
    assert!(
        restarted.contains("state: Adopted"),
        "the link: {restarted}"
    );
    assert!(topo.connects(a, PORT, Duration::from_secs(2)));
    assert!(!topo.connects(c, PORT, HANDSHAKE));
    drop(daemon);
}
