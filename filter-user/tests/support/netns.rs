//! Network-namespace fixtures for the XDP tests: a server and a client namespace joined by a
//! veth pair (198.18.0.0/24, fd00:ef::/64), TCP listeners inside the server namespace, client
//! connections from a chosen source address, and a per-test bpffs pin directory. Everything is
//! removed in `Drop`, which never panics (so it cannot double-panic during a failing test).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::daemon::{Process, raw_http};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Server-side veth (the XDP program goes here).
pub const SERVER_IF: &str = "efsrv0";
/// Client-side veth.
pub const CLIENT_IF: &str = "efcli0";
/// Server addresses.
pub const SERVER_V4: &str = "198.18.0.1";
/// Server IPv6 address.
pub const SERVER_V6: &str = "fd00:ef::1";
/// Client addresses: index 0.. are all on the client veth.
pub const CLIENT_V4: [&str; 3] = ["198.18.0.2", "198.18.0.3", "198.18.0.4"];
/// Client IPv6 addresses.
pub const CLIENT_V6: [&str; 3] = ["fd00:ef::2", "fd00:ef::3", "fd00:ef::4"];

/// Runs a command, returning its output; panics with the command and stderr on failure.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces joined by a veth pair, plus a private pin dir. Deleted on drop.
pub struct Topology {
    /// Server namespace name.
    pub server: String,
    /// Client namespace name.
    pub client: String,
    /// bpffs directory for this test's pins.
    pub pins: PathBuf,
}

impl Topology {
    /// Creates the namespaces, the veth pair, the addresses (no DAD) and static neighbours.
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("ef-xdp-{}-{n}", std::process::id());
        let t = Self {
            server: format!("{tag}-s"),
            client: format!("{tag}-c"),
            pins: PathBuf::from(format!("/sys/fs/bpf/{tag}")),
        };
        sh(&["ip", "netns", "add", &t.server]);
        sh(&["ip", "netns", "add", &t.client]);
        sh(&[
            "ip",
            "link",
            "add",
            SERVER_IF,
            "netns",
            &t.server,
            "address",
            "02:ef:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            &t.client,
            "address",
            "02:ef:00:00:00:02",
        ]);
        for (ns, ifname) in [(&t.server, SERVER_IF), (&t.client, CLIENT_IF)] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"]);
        }
        sh(&[
            "ip",
            "-n",
            &t.server,
            "addr",
            "add",
            &format!("{SERVER_V4}/24"),
            "dev",
            SERVER_IF,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.server,
            "addr",
            "add",
            &format!("{SERVER_V6}/64"),
            "dev",
            SERVER_IF,
            "nodad",
        ]);
        for (v4, v6) in CLIENT_V4.iter().zip(CLIENT_V6) {
            sh(&[
                "ip",
                "-n",
                &t.client,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                CLIENT_IF,
            ]);
            sh(&[
                "ip",
                "-n",
                &t.client,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                CLIENT_IF,
                "nodad",
            ]);
            sh(&[
                "ip",
                "-n",
                &t.server,
                "neigh",
                "add",
                v4,
                "lladdr",
                "02:ef:00:00:00:02",
                "dev",
                SERVER_IF,
            ]);
            sh(&[
                "ip",
                "-n",
                &t.server,
                "neigh",
                "add",
                v6,
                "lladdr",
                "02:ef:00:00:00:02",
                "dev",
                SERVER_IF,
            ]);
        }
        sh(&[
            "ip",
            "-n",
            &t.client,
            "neigh",
            "add",
            SERVER_V4,
            "lladdr",
            "02:ef:00:00:00:01",
            "dev",
            CLIENT_IF,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.client,
            "neigh",
            "add",
            SERVER_V6,
            "lladdr",
            "02:ef:00:00:00:01",
            "dev",
            CLIENT_IF,
        ]);
        t
    }

    /// Runs `f` on a thread that has entered namespace `ns` (sockets made there stay there).
    pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// A TCP listener in the server namespace on `port` (v4 and v6), accepting forever.
    pub fn listen(&self, port: u16) -> Listener {
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        for addr in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
            let addr: SocketAddr = addr.parse().unwrap();
            let l = Self::in_ns(&self.server, move || {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
                if addr.is_ipv6() {
                    s.set_only_v6(true).unwrap();
                }
                s.set_reuse_address(true).unwrap();
                s.bind(&addr.into()).unwrap();
                s.listen(128).unwrap();
                s.set_nonblocking(true).unwrap();
                TcpListener::from(s)
            });
            let count = Arc::clone(&accepted);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok(_) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        Listener { accepted, stop }
    }

    /// Whether a TCP handshake from `src` to the server's `port` completes within `timeout`.
    pub fn connects(&self, src: &str, port: u16, timeout: Duration) -> bool {
        connect_from(&self.client, src, port, timeout)
    }

    /// Starts `edgefilter run` (with XDP, as the config says) in the server namespace with this
    /// test's pin dir, logging to `dir/daemon.log`, and waits until `admin` (an address in the
    /// server namespace) answers `/readyz`.
    pub fn run_daemon(&self, config: &Path, dir: &Path, admin: SocketAddr) -> Process {
        let mut p = Process::spawn_logging_to(
            Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{}", self.server))
                .args(["--", env!("CARGO_BIN_EXE_edgefilter"), "--config"])
                .arg(config)
                .arg("run")
                .env("EDGEFILTER_BPF_PIN_DIR", &self.pins)
                .env_remove("EDGEFILTER_CONFIG"),
            &dir.join("daemon.log"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = Self::in_ns(&self.server, move || {
                matches!(raw_http(admin, "GET", "/readyz", None, None), Ok((200, _)))
            });
            if ready {
                return p;
            }
            let log = p.log();
            assert!(p.try_wait().is_none(), "daemon exited:\n{log}");
            assert!(Instant::now() < deadline, "daemon not ready:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The real `edgefilter` binary in the server namespace with this test's pin dir, to spawn.
    pub fn edgefilter_command(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.server))
            .args(["--", env!("CARGO_BIN_EXE_edgefilter"), "--config"])
            .arg(config)
            .args(args)
            .env("EDGEFILTER_BPF_PIN_DIR", &self.pins)
            .env_remove("EDGEFILTER_CONFIG");
        c
    }

    /// Runs the real `edgefilter` binary in the server namespace with this test's pin dir.
    /// `nsenter --net` changes the network namespace only (`ip netns exec` would also give the
    /// child a fresh /sys without bpffs, hiding the pins).
    pub fn edgefilter(&self, config: &Path, args: &[&str]) -> Output {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.server))
            .args(["--", env!("CARGO_BIN_EXE_edgefilter"), "--config"])
            .arg(config)
            .args(args)
            .env("EDGEFILTER_BPF_PIN_DIR", &self.pins)
            .output()
            .expect("spawning edgefilter");
        super::leaks::scan_cli(args, &out);
        out
    }
}

/// Whether a TCP handshake from `src` (in namespace `client`) to the server's `port`
/// completes within `timeout`.
pub fn connect_from(client: &str, src: &str, port: u16, timeout: Duration) -> bool {
    let src: IpAddr = src.parse().unwrap();
    let dst: IpAddr = if src.is_ipv4() { SERVER_V4 } else { SERVER_V6 }
        .parse()
        .unwrap();
    Topology::in_ns(client, move || {
        let s = Socket::new(
            Domain::for_address(SocketAddr::new(dst, 0)),
            Type::STREAM,
            None,
        )
        .unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        s.connect_timeout(&SocketAddr::new(dst, port).into(), timeout)
            .is_ok()
    })
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Best effort, never panics: pins first (detaches), then the namespaces (and the veth).
        if let Ok(entries) = std::fs::read_dir(&self.pins) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pins);
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Counts accepted connections; stops accepting (and closes its sockets) on drop.
pub struct Listener {
    /// Accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
