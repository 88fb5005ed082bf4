//! Auto-block end to end with the real XDP filter: the `edgefilter` daemon runs in the server
//! namespace (XDP on the server veth, its own pin dir), clients in the client namespace fail key
//! checks. A source that fails `failures` times is then dropped in the kernel (its TCP
//! handshakes stop, the `denylisted` counter rises), a neighbour is unaffected, an IPv6 ban
//! covers the source's /64, an exempt source is never banned, and the ban ends on time.
//! Needs root; holds [`serial`] like every kernel test.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgefilter::xdp::{PinDir, XdpCounters, open_pinned};
use filter_common::xdp::{Action, Reason};
use socket2::{Domain, Socket, Type};

use crate::support::daemon::Process;
use crate::support::netns::{CLIENT_V4, CLIENT_V6, SERVER_IF, SERVER_V4, SERVER_V6, Topology};
use crate::support::serial::serial;

const PORT: u16 = 8080;
const ADMIN: &str = "127.0.0.1:9901";
const BAD_KEY: &str = "ef_live_0123456789abcdefghijABCDEFGHIJ01000000";
const NO_HANDSHAKE: Duration = Duration::from_millis(400);
const HANDSHAKE: Duration = Duration::from_secs(2);

/// The daemon's config: XDP on the server veth, 5 key denials in 10 s ban for 3 s, the third
/// client address exempt.
pub(crate) fn write_config(dir: &Path) -> PathBuf {
    let text = format!(
        "[listen]\nhttp = [\"0.0.0.0:{PORT}\", \"[::]:{PORT}\"]\n[runtime]\nshards = 2\n\
         [xdp]\ninterfaces = [\"{SERVER_IF}\"]\nmode = \"enforce\"\nprotected_ports = [{PORT}]\n\
         allow = [\"198.18.0.0/24\", \"fd00:ef::/64\"]\n\
         [store]\npath = \"var/keys.db\"\n\
         [admin]\nlisten = \"{ADMIN}\"\ntoken_file = \"var/admin.token\"\n\
         [autoblock]\nfailures = 5\nwindow = \"10s\"\nban = \"3s\"\nipv6_prefix = 64\n\
         exempt = [\"{}/32\"]\n\
         [log]\nformat = \"text\"\naccess_log = \"off\"\n\
         [[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
        CLIENT_V4[2]
    );
    let path = dir.join("edgefilter.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `edgefilter run` in the server namespace and waits for `/readyz`.
pub(crate) fn start_daemon(topo: &Topology, config: &Path, dir: &Path) -> Process {
    topo.run_daemon(config, dir, ADMIN.parse().unwrap())
}

/// One `GET /` with `BAD_KEY` from `src`: the status, or `None` without a handshake.
pub(crate) fn bad_request_from(topo: &Topology, src: &'static str) -> Option<u16> {
    Topology::in_ns(&topo.client, move || {
        let src: IpAddr = src.parse().unwrap();
        let dst: IpAddr = if src.is_ipv4() { SERVER_V4 } else { SERVER_V6 }
            .parse()
            .unwrap();
        let s = Socket::new(
            Domain::for_address(SocketAddr::new(dst, 0)),
            Type::STREAM,
            None,
        )
        .unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        s.connect_timeout(&SocketAddr::new(dst, PORT).into(), HANDSHAKE)
            .ok()?;
        let mut s: std::net::TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {BAD_KEY}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out)
            .get(9..12)
            .and_then(|c| c.parse().ok())
    })
}

fn counters(topo: &Topology) -> XdpCounters {
    open_pinned(&PinDir::new(&topo.pins))
        .unwrap()
        .counters()
        .unwrap()
}

fn denylisted(topo: &Topology) -> u64 {
    counters(topo).packets(Action::Drop, Reason::Denylisted)
}

/// Polls until `f` holds, up to `limit`; how long it took.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

#[test]
fn a_failing_source_is_dropped_in_the_kernel_until_its_ban_ends() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let _daemon = start_daemon(&topo, &config, dir.path());
    let (attacker, neighbour, exempt) = (CLIENT_V4[0], CLIENT_V4[1], CLIENT_V4[2]);

    // Four denials: answered, not banned.
    for _ in 0..4 {
        assert_eq!(bad_request_from(&topo, attacker), Some(401));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(topo.connects(attacker, PORT, HANDSHAKE), "banned too early");
    let drops_before = denylisted(&topo);

    // The fifth: the kernel drops the source's handshakes within a moment.
    assert_eq!(bad_request_from(&topo, attacker), Some(401));
    let banned_at = Instant::now();
    let took = within(Duration::from_secs(1), "kernel ban", || {
        !topo.connects(attacker, PORT, Duration::from_millis(100))
    });
    eprintln!("fifth denial → handshakes dropped by XDP after {took:?}");
    assert!(!topo.connects(attacker, PORT, NO_HANDSHAKE));
    assert!(
        denylisted(&topo) > drops_before,
        "the denylisted counter rises: {:?}",
        counters(&topo)
    );
    // A neighbour is unaffected; the ban is listed with its reason and host.
    assert_eq!(bad_request_from(&topo, neighbour), Some(401));
    let list = topo.edgefilter(&config, &["deny", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["source"], attacker);
    assert_eq!(list[0]["reason"], "autoblock");

    // An exempt source is never banned.
    for _ in 0..12 {
        assert_eq!(bad_request_from(&topo, exempt), Some(401));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        topo.connects(exempt, PORT, HANDSHAKE),
        "exempt source banned"
    );

    // IPv6: five denials from one address ban its /64, another address inside it too.
    for _ in 0..5 {
        assert_eq!(bad_request_from(&topo, CLIENT_V6[0]), Some(401));
    }
    within(Duration::from_secs(1), "IPv6 ban", || {
        !topo.connects(CLIENT_V6[0], PORT, Duration::from_millis(100))
    });
    assert!(
        !topo.connects(CLIENT_V6[1], PORT, NO_HANDSHAKE),
        "another address in the banned /64 got through"
    );

    // The IPv4 ban ends on time: still in force shortly before 3 s, gone shortly after.
    std::thread::sleep(Duration::from_millis(2_400).saturating_sub(banned_at.elapsed()));
    assert!(
        !topo.connects(attacker, PORT, Duration::from_millis(300)),
        "ban ended early ({:?})",
        banned_at.elapsed()
    );
    within(Duration::from_secs(2), "ban expiry", || {
        topo.connects(attacker, PORT, Duration::from_millis(200))
    });
    let ended = banned_at.elapsed();
    eprintln!("3 s ban: handshakes completed again {ended:?} after the fifth denial");
    assert!(ended < Duration::from_millis(3_800), "{ended:?}");
    assert_eq!(bad_request_from(&topo, attacker), Some(401));
}
