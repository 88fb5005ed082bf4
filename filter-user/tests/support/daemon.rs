//! The real `edgefilter run --no-xdp` in a temp dir: free 127.0.0.1 ports, 2 shards, a SQLite
//! store, the admin API, and keys, log and routes of the test's choosing (by default one route
//! `/v1/`); killed (SIGKILL) when dropped. Plus [`Process`], the one guard every test that starts
//! the binary holds it in, and a keep-alive raw-socket client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use edgefilter::xdp::PIN_DIR_ENV;
use serde_json::Value;

use super::leaks;
use super::ports::free_addr;

/// A child process (the daemon) that is killed (SIGKILL) and reaped when dropped, so a failing
/// test never leaves one behind. Its stdout and stderr go to a log file ([`Process::log`]),
/// scanned for keys ([`leaks`]) when it is dropped.
pub struct Process {
    child: Child,
    log: PathBuf,
    /// The log's own temp dir, when the caller did not choose a path.
    _dir: Option<tempfile::TempDir>,
}

impl Process {
    /// Spawns `cmd` with its output to a log file of its own.
    pub fn spawn(cmd: &mut Command) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("process.log");
        let mut p = Self::spawn_logging_to(cmd, &log);
        p._dir = Some(dir);
        p
    }

    /// Spawns `cmd` with its stdout and stderr appended to the file `log` (created if need be,
    /// so a restarted daemon's log follows the earlier one's).
    pub fn spawn_logging_to(cmd: &mut Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn edgefilter");
        Self {
            child,
            log: log.to_owned(),
            _dir: None,
        }
    }

    /// Its process id (to send it a signal).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits up to `limit` for it to exit; its status, or `None` if it still runs.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(bytes) = std::fs::read(&self.log) {
            leaks::scan(
                leaks::Kind::DaemonLog,
                &self.log.display().to_string(),
                &bytes,
            );
        }
    }
}

/// A daemon's directory, config and (while running) process.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Set in the daemon's environment (not the CLI's), e.g. for `${…}` in the config.
    env: Vec<(String, String)>,
    /// A command the daemon runs under (e.g. `unshare --mount …`), its arguments first.
    wrap: Vec<String>,
    child: Option<Process>,
    /// Starts so far (each has its own log file).
    starts: u32,
}

/// The tables after the fixed ones in [`Daemon::start`]'s config: live keys, a text log without
/// access log, and route `/v1/` → `upstream` needing scope `ai:invoke`.
pub fn default_tables(upstream: SocketAddr) -> String {
    format!(
        r#"
[keys]
environment = "live"
[log]
format = "text"
access_log = "off"
[[route]]
prefix = "/v1/"
upstream = "http://{upstream}"
scopes = ["ai:invoke"]
"#
    )
}

impl Daemon {
    /// Writes the config ([`default_tables`] for `upstream`) and starts the daemon.
    pub fn start(upstream: SocketAddr) -> Self {
        let mut d = Self::configure(&default_tables(upstream));
        d.restart();
        d
    }

    /// Writes the config without starting the daemon (the CLI works on its store meanwhile;
    /// [`Daemon::restart`] starts it): the fixed tables (listen, 2 shards, XDP off, SQLite store,
    /// admin API) followed by `tables` (`[keys]`, `[log]`, the routes).
    pub fn configure(tables: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http, admin) = (free_addr(), free_addr());
        let cfg = format!(
            r#"
[listen]
http = ["{http}"]
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
{tables}"#
        );
        std::fs::write(dir.path().join("ef.toml"), cfg).unwrap();
        Self {
            dir,
            http,
            admin,
            env: Vec::new(),
            wrap: Vec::new(),
            child: None,
            starts: 0,
        }
    }

    /// Sets `name` to `value` in the environment of the daemon (from its next start on).
    #[must_use]
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Runs the daemon under `wrap` (a command and its arguments, before the daemon's own
    /// command line) from its next start on.
    #[must_use]
    pub fn wrapped(mut self, wrap: &[&str]) -> Self {
        self.wrap = wrap.iter().map(|s| (*s).to_string()).collect();
        self
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("ef.toml")
    }

    /// Where the daemon and its CLI look for a pinned XDP filter: an empty directory of the
    /// test's own, so no test ever touches a real pinned filter.
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.path().join("pins")
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Process::id)
    }

    /// The admin token (created by the daemon on first start).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("var/admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Starts the daemon (first or again) and waits until `/readyz` answers 200.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        // Each start writes a log of its own, so none is overwritten before it is scanned.
        self.starts += 1;
        let log = self.dir.path().join(format!("daemon.{}.log", self.starts));
        let mut cmd = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_edgefilter"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_edgefilter")),
        };
        let child = Process::spawn_logging_to(
            cmd.arg("--config")
                .arg(self.config())
                .args(["run", "--no-xdp"])
                .env_remove("EDGEFILTER_CONFIG")
                .env(PIN_DIR_ENV, self.pin_dir())
                .envs(self.env.iter().map(|(k, v)| (k, v))),
            &log,
        );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = raw_http(self.admin, "GET", "/readyz", None, None) {
                return;
            }
            if let Some(Some(st)) = self.child.as_mut().map(Process::try_wait) {
                panic!("daemon exited: {st}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Spawns `edgefilter --config CONFIG run --no-xdp EXTRA…` with this daemon's environment
    /// (less the variables in `without`), logging to the daemon's next log file; does not wait.
    pub fn spawn_run(&mut self, config: &Path, extra: &[&str], without: &[&str]) -> Process {
        self.starts += 1;
        let log = self.dir.path().join(format!("daemon.{}.log", self.starts));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgefilter"));
        cmd.arg("--config")
            .arg(config)
            .args(["run", "--no-xdp"])
            .args(extra)
            .env_remove("EDGEFILTER_CONFIG")
            .env(PIN_DIR_ENV, self.pin_dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        for name in without {
            cmd.env_remove(name);
        }
        Process::spawn_logging_to(&mut cmd, &log)
    }

    /// Starts `run --takeover` with this daemon's config: from now on the new process is this
    /// daemon's. Returns the replaced one, still running (it exits once the new one serves).
    pub fn start_takeover(&mut self) -> Process {
        let old = self.child.take().expect("a running daemon to take over");
        let config = self.config();
        self.child = Some(self.spawn_run(&config, &["--takeover"], &[]));
        old
    }

    /// Waits up to `limit` for the daemon's process to exit (e.g. replaced through SIGUSR2).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.wait_for(limit))
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        drop(self.child.take());
    }

    /// The log of the daemon's latest start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("daemon.{}.log", self.starts)))
            .unwrap_or_default()
    }

    /// Runs the CLI against this daemon's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("EDGEFILTER_CONFIG")
            .env(PIN_DIR_ENV, self.pin_dir())
            .output()
            .unwrap();
        leaks::scan_cli(args, &out);
        out
    }

    /// Runs the CLI, asserts exit 0, returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `keys create --json` through the CLI: (id, key).
    pub fn create_key(&self, user: &str) -> (String, String) {
        let out = self.cli_ok(&[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--user",
            user,
            "--scope",
            "ai:invoke",
            "--json",
        ]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    /// One admin API call with `token` (`None`: no Authorization header).
    pub fn admin_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        raw_http(self.admin, method, path, token, body).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The process before its directory (fields drop in order, `dir` first); then every
        // file it left (logs, access logs, the store) is scanned for keys.
        self.kill9();
        leaks::scan_dir(self.dir.path());
    }
}

/// One HTTP/1.1 request on a fresh connection; (status, JSON body or string or null).
pub fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let payload = body.map(Value::to_string).unwrap_or_default();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(head.as_bytes())?;
    s.write_all(payload.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let what = format!("admin {method} {path}");
    let creates = method == "POST" && (path == "/v1/keys" || path.ends_with("/rotate"));
    if creates {
        leaks::scan_created(leaks::Kind::Admin, &what, &raw);
    } else {
        leaks::scan(leaks::Kind::Admin, &what, &raw);
    }
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
    };
    Ok((status, v))
}

/// A keep-alive client sending `GET path` with `X-API-Key`.
pub struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// One answer: status and the shard that answered (from `X-Request-Id`).
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub shard: Option<u8>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::with_capacity(8192),
        }
    }

    /// Sends one request (reconnecting when the server closed) and reads the answer.
    pub fn get(&mut self, path: &str, key: &str) -> std::io::Result<Answer> {
        for _ in 0..3 {
            if self.stream.is_none() {
                let s = TcpStream::connect(self.addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                self.stream = Some(s);
                self.buf.clear();
            }
            match self.exchange(path, key) {
                Ok(a) => return Ok(a),
                Err(_) => self.stream = None,
            }
        }
        Err(std::io::Error::other("three connection failures in a row"))
    }

    fn exchange(&mut self, path: &str, key: &str) -> std::io::Result<Answer> {
        let s = self.stream.as_mut().unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\r\n"
        )?;
        let end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        let status: u16 = head
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let len: usize = header("content-length:")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| std::io::Error::other("no content-length"))?;
        let shard = header("x-request-id:")
            .and_then(|id| id.get(8..10).and_then(|h| u8::from_str_radix(h, 16).ok()));
        let close = header("connection:").is_some_and(|v| v == "close");
        while self.buf.len() < end + len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.buf.drain(..end + len);
        if close {
            self.stream = None;
        }
        Ok(Answer { status, shard })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `cli:` and the name of the user running the tests: the actor the CLI records in the audit
/// trail for a change it makes itself.
pub fn cli_actor() -> String {
    let uid = nix::unistd::geteuid();
    let name = nix::unistd::User::from_uid(uid)
        .unwrap()
        .map_or_else(|| format!("uid-{uid}"), |u| u.name);
    format!("cli:{name}")
}
