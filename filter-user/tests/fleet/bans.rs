//! Bans shared by a fleet (SPEC §11): two real daemons (`run --no-xdp`) on one PostgreSQL started
//! by the test. A source auto-blocked on host one is on host two's denylist, and refused by it,
//! within a second; a manual ban made through host two reaches host one; a lift on host one
//! reaches host two. Sources are loopback addresses bound by the client.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use crate::support::daemon::{Process, raw_http};
use crate::support::pg::PgFixture;
use crate::support::ports::free_addr;
use crate::support::upstream;

const BAD_KEY: &str = "ef_live_0123456789abcdefghijABCDEFGHIJ01000000";

struct Host {
    dir: PathBuf,
    name: &'static str,
    conf: PathBuf,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Host {
    fn new(dir: &Path, name: &'static str, url: &str, upstream: SocketAddr) -> Self {
        let (http, admin) = (free_addr(), free_addr());
        let conf = dir.join(format!("{name}.toml"));
        std::fs::write(
            &conf,
            format!(
                "[listen]\nhttp = [\"{http}\"]\n[runtime]\nshards = 2\n[xdp]\nenabled = false\n\
                 [store]\nkind = \"postgres\"\nurl = \"{url}\"\n\
                 [admin]\nlisten = \"{admin}\"\ntoken_file = \"{name}.token\"\n\
                 [autoblock]\nfailures = 3\nwindow = \"10s\"\nban = \"10m\"\n\
                 [log]\nformat = \"text\"\naccess_log = \"off\"\n\
                 [[route]]\nprefix = \"/\"\nupstream = \"http://{upstream}\"\n"
            ),
        )
        .unwrap();
        Self {
            dir: dir.to_owned(),
            name,
            conf,
            http,
            admin,
        }
    }

    fn start(&self) -> Process {
        let d = Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_edgefilter"))
                .args(["run", "--no-xdp", "--config"])
                .arg(&self.conf)
                .env_remove("EDGEFILTER_CONFIG")
                .env("EDGEFILTER_BPF_PIN_DIR", self.dir.join("no-pins"))
                .env("RUST_LOG", "warn"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(
            raw_http(self.admin, "GET", "/readyz", None, None),
            Ok((200, _))
        ) {
            assert!(Instant::now() < deadline, "{} never got ready", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .arg("--config")
            .arg(&self.conf)
            .args(args)
            .env_remove("EDGEFILTER_CONFIG")
            .env("EDGEFILTER_BPF_PIN_DIR", self.dir.join("no-pins"))
            .output()
            .unwrap();
        crate::support::leaks::scan_cli(args, &out);
        out
    }

    /// The sources on this host's denylist (`GET /v1/denylist`), with their reason and host.
    fn denylist(&self) -> Vec<(String, String, String)> {
        let token = std::fs::read_to_string(self.dir.join(format!("{}.token", self.name)))
            .unwrap()
            .trim()
            .to_owned();
        let (s, v) = raw_http(self.admin, "GET", "/v1/denylist", Some(&token), None).unwrap();
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let f = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
                (f("source"), f("reason"), f("host"))
            })
            .collect()
    }

    /// `GET /` with a bad key from `src`: the status, or `None` when refused at accept.
    fn call_from(&self, src: &str) -> Option<u16> {
        let src: IpAddr = src.parse().unwrap();
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        s.connect_timeout(&self.http.into(), Duration::from_secs(2))
            .ok()?;
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {BAD_KEY}\r\nConnection: close\r\n\r\n"
        );
        let _ = s.write_all(req.as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out)
            .get(9..12)
            .and_then(|c| c.parse().ok())
    }
}

/// Polls until `f` holds (every 5 ms, up to `limit`); how long it took.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed()
}

#[test]
fn a_ban_on_one_host_reaches_the_other_within_a_second() {
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let up = upstream::Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let one = Host::new(dir.path(), "one", &fx.postgres_url(), up.addr);
    let two = Host::new(dir.path(), "two", &fx.postgres_url(), up.addr);
    let _d1 = one.start();
    let _d2 = two.start();

    // Auto-block on host one: three denials from 127.0.0.2.
    for _ in 0..3 {
        assert_eq!(one.call_from("127.0.0.2"), Some(401));
    }
    let t = Instant::now();
    within(Duration::from_secs(1), "ban on host one", || {
        one.denylist().iter().any(|b| b.0 == "127.0.0.2")
    });
    let banned = t.elapsed();
    let reached = within(Duration::from_secs(1), "ban on host two", || {
        two.denylist().iter().any(|b| b.0 == "127.0.0.2")
    }) + banned;
    eprintln!("auto-block on host one after {banned:?}; on host two's denylist after {reached:?}");
    let on_two = two.denylist();
    assert_eq!(on_two.len(), 1, "{on_two:?}");
    assert_eq!(on_two[0].1, "autoblock");
    assert_eq!(
        on_two[0].2,
        one.denylist()[0].2,
        "the banning host is named"
    );
    within(Duration::from_secs(1), "host two refuses at accept", || {
        two.call_from("127.0.0.2").is_none()
    });
    assert_eq!(two.call_from("127.0.0.1"), Some(401), "others are served");

    // A manual ban through host two's daemon reaches host one.
    let t = Instant::now();
    let o = two.cli(&["deny", "add", "127.0.0.4", "--for", "1h"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let took = within(Duration::from_secs(1), "manual ban on host one", || {
        one.call_from("127.0.0.4").is_none()
    });
    eprintln!(
        "manual ban via host two: refused by host one {took:?} after the command returned ({:?} in all)",
        t.elapsed()
    );

    // A lift on host one reaches host two.
    let o = one.cli(&["deny", "remove", "127.0.0.2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let took = within(Duration::from_secs(1), "lift on host two", || {
        two.call_from("127.0.0.2") == Some(401)
    });
    eprintln!("lift via host one: served by host two again after {took:?}");
    let left: Vec<String> = two.denylist().into_iter().map(|b| b.0).collect();
    assert_eq!(left, ["127.0.0.4"]);
    let o = one.cli(&["deny", "list", "--json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}
