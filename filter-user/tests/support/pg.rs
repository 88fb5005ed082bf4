//! A throwaway PostgreSQL for tests, from Debian's `postgresql` package: its own data directory
//! in a temp dir, its own port on 127.0.0.1 and socket directory, run as the `postgres` user when
//! the tests run as root (PostgreSQL refuses root). `stop`/`start` simulate an outage; `Drop`
//! always stops the server and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::ports::free_port;

/// A running (or deliberately stopped) PostgreSQL server.
pub struct PgFixture {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
    as_postgres: bool,
    /// Serves TLS with `server.crt`/`server.key` in `dir` (see [`PgFixture::start_tls`]).
    tls: bool,
}

/// The newest installed `/usr/lib/postgresql/<version>/bin`, if any.
fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

impl PgFixture {
    /// Starts a fresh server, or returns `None` (after saying so loudly) when the PostgreSQL
    /// binaries are not installed; under `CI=true` that panics too, so CI never passes a
    /// PostgreSQL test it did not run. Any other failure panics: it is a real test failure.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// [`Self::start`] with TLS on (`ssl=on`), serving the PEM certificate and key given; plain
    /// connections are still accepted, so a test can check which one a client made.
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Self> {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> Option<Self> {
        let Some(bin) = find_bin() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin, and under CI=true \
                 a PostgreSQL test must run, not skip (apt-get install postgresql; .ci/run does)"
            );
            eprintln!(
                "\n!!!!!!!!!! SKIPPED: PostgreSQL binaries not found under /usr/lib/postgresql/*/bin \
                 (apt-get install postgresql; .ci/run does) !!!!!!!!!!\n"
            );
            return None;
        };
        let as_postgres = nix::unistd::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("edgefilter-pg-")
            .tempdir()
            .expect("temp dir");
        let owner = as_postgres.then(|| {
            nix::unistd::User::from_name("postgres")
                .expect("passwd lookup")
                .expect("the postgres system user (from the postgresql package)")
        });
        if let Some(user) = &owner {
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown");
        }
        if let Some((cert, key)) = tls {
            // PostgreSQL wants its key owned by itself and not readable by others.
            use std::os::unix::fs::PermissionsExt;
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                let to = dir.path().join(name);
                std::fs::copy(from, &to).expect("copy TLS file");
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                if let Some(user) = &owner {
                    nix::unistd::chown(&to, Some(user.uid), Some(user.gid)).expect("chown");
                }
            }
        }
        let mut fx = Self {
            bin,
            dir,
            port: free_port(),
            running: false,
            as_postgres,
            tls: tls.is_some(),
        };
        let data = fx.data_dir();
        let out = fx.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", show(&out));
        fx.start_server();
        Some(fx)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a PostgreSQL binary, as `postgres` when we are root.
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()))
    }

    fn start_server(&mut self) {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            let d = self.dir.path().display();
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key"
            ));
        }
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            show(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    /// Starts the server again after [`Self::stop`] (same data, same port).
    pub fn start_again(&mut self) {
        if !self.running {
            self.start_server();
        }
    }

    /// Stops the server (`-m fast`: connected clients are disconnected at once).
    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    fn stop_mode(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let data = self.data_dir();
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-m",
                mode,
                "-w",
                "-t",
                "30",
                "stop",
            ],
        );
        self.running = !out.status.success();
        if self.running {
            eprintln!("pg_ctl stop failed: {}", show(&out));
        }
    }

    /// Connection string for tokio-postgres (superuser `postgres`, database `postgres`).
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// The same as a `postgres://` URL (as `store.url` would hold it).
    pub fn postgres_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The data directory's parent (server log: `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgFixture {
    fn drop(&mut self) {
        // Never panics: stop as fast as possible, then the TempDir removes everything.
        self.stop_mode("immediate");
    }
}

fn show(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TCP forwarder in front of the server that a test can cut (every open connection closed,
/// new ones refused) and restore: one host loses the database while the others keep it.
pub struct PgLink {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<LinkState>,
}

#[derive(Default)]
struct LinkState {
    cut: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    open: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl LinkState {
    fn close_all(&self) {
        for s in self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl PgLink {
    /// Forwards a fresh 127.0.0.1 port to `fx`'s port.
    pub fn new(fx: &PgFixture) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind link");
        let addr = listener.local_addr().expect("link addr");
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], fx.port()));
        let state = std::sync::Arc::new(LinkState::default());
        let st = std::sync::Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(down) = conn else { continue };
                if st.cut.load(Ordering::Acquire) {
                    continue; // dropped: the client sees the connection closed
                }
                let Ok(up) = std::net::TcpStream::connect(to) else {
                    continue;
                };
                for s in [&down, &up] {
                    if let Ok(c) = s.try_clone() {
                        st.open.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    }
                }
                for (mut from, mut into) in [
                    (down.try_clone(), up.try_clone()),
                    (up.try_clone(), down.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, state }
    }

    /// A `postgres://` URL through the link.
    pub fn postgres_url(&self) -> String {
        format!("postgres://postgres@{}/postgres", self.addr)
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.state
            .cut
            .store(true, std::sync::atomic::Ordering::Release);
        self.state.close_all();
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for PgLink {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        self.state.close_all();
        let _ = std::net::TcpStream::connect(self.addr); // wakes the accept loop
    }
}
