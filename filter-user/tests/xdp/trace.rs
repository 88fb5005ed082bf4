//! `edgefilter xdp trace` against the real daemon's pinned filter: the daemon runs with XDP on
//! the server veth (its own pin dir), the trace command is a separate process, clients in the
//! client namespace connect from a traced source (allowlisted, then banned) and from another.
//! The traced source's decisions are printed with verdict and reason, the other's never;
//! the switch is off after the trace ends, after Ctrl-C, and a killed trace expires in the
//! kernel. Needs root; holds [`serial`] like every kernel test.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use edgefilter::xdp::{PinDir, TraceSwitch};
use filter_common::trace::TraceConfig;
use serde_json::Value;

use crate::support::netns::{CLIENT_V4, SERVER_IF, Topology};
use crate::support::serial::serial;

const PORT: u16 = 8080;
const OPEN: u16 = 2222;
const ADMIN: &str = "127.0.0.1:9901";
const NO_HANDSHAKE: Duration = Duration::from_millis(400);
const HANDSHAKE: Duration = Duration::from_secs(2);

/// The daemon's config: XDP enforcing on the server veth, port 8080 protected, only the first
/// client address allowlisted.
fn write_config(dir: &Path) -> PathBuf {
    let text = format!(
        "[listen]\nhttp = [\"0.0.0.0:{PORT}\", \"[::]:{PORT}\"]\n[runtime]\nshards = 1\n\
         [xdp]\ninterfaces = [\"{SERVER_IF}\"]\nmode = \"enforce\"\nprotected_ports = [{PORT}]\n\
         allow = [\"{}/32\"]\n\
         [store]\npath = \"var/keys.db\"\n\
         [admin]\nlisten = \"{ADMIN}\"\ntoken_file = \"var/admin.token\"\n\
         [log]\nformat = \"text\"\naccess_log = \"off\"\n\
         [[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
        CLIENT_V4[0]
    );
    let path = dir.join("edgefilter.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `xdp trace`, killed (SIGKILL) and reaped when dropped.
struct Trace(Option<Child>);

impl Trace {
    fn spawn(topo: &Topology, config: &Path, args: &[&str]) -> Self {
        let mut all = vec!["xdp", "trace"];
        all.extend_from_slice(args);
        let child = topo
            .edgefilter_command(config, &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning xdp trace");
        Self(Some(child))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    /// Waits up to `limit` for the command to exit on its own; its output.
    fn finish(mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        while self.child().try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "xdp trace still running");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn switch(topo: &Topology) -> TraceSwitch {
    TraceSwitch::from_pins(&PinDir::new(&topo.pins)).unwrap()
}

/// Waits until the trace switch is on (the command has started tracing).
fn wait_until_on(topo: &Topology, trace: &mut Trace) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while switch(topo).remaining().unwrap().is_none() {
        if let Some(st) = trace.child().try_wait().unwrap() {
            let mut err = String::new();
            let _ = trace
                .child()
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err);
            panic!("xdp trace exited ({st}) before tracing: {err}");
        }
        assert!(Instant::now() < deadline, "tracing never switched on");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (source, dport, verdict, reason) of each printed JSON line.
fn events(stdout: &[u8]) -> Vec<(String, Option<u64>, String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert!(v["at"].is_string(), "{l}");
            (
                v["source"].as_str().unwrap_or("").to_string(),
                v["dport"].as_u64(),
                v["verdict"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn trace_shows_the_traced_sources_decisions_only_and_ends_off() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let _daemon = topo.run_daemon(&config, dir.path(), ADMIN.parse().unwrap());
    let _open = topo.listen(OPEN);
    let (traced, other) = (CLIENT_V4[0], CLIENT_V4[1]);
    assert_eq!(switch(&topo).get().unwrap(), TraceConfig::OFF);

    let source = format!("{traced}/32");
    let mut trace = Trace::spawn(
        &topo,
        &config,
        &["--source", &source, "--seconds", "5", "--json"],
    );
    wait_until_on(&topo, &mut trace);
    let shown = topo.edgefilter(&config, &["xdp", "status"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("trace       on for"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );

    // Allowlisted, to the protected and to an open port; then another source, refused.
    assert!(topo.connects(traced, PORT, HANDSHAKE), "allowlisted source");
    assert!(topo.connects(traced, OPEN, HANDSHAKE), "open port");
    assert!(
        !topo.connects(other, PORT, NO_HANDSHAKE),
        "other source got through"
    );
    // Banned through the daemon: the traced source is now dropped as denylisted.
    let ban = topo.edgefilter(&config, &["deny", "add", traced, "--for", "30s"]);
    assert!(
        ban.status.success(),
        "{}",
        String::from_utf8_lossy(&ban.stderr)
    );
    assert!(
        !topo.connects(traced, PORT, NO_HANDSHAKE),
        "banned source got through"
    );

    let out = trace.finish(Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xdp trace failed: {stderr}");
    assert!(stderr.contains("tracing is off"), "{stderr}");
    eprintln!(
        "xdp trace printed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = events(&out.stdout);
    assert!(
        got.iter().all(|(src, ..)| src == traced),
        "an event of another source: {got:?}"
    );
    let has = |dport: u16, verdict: &str, reason: &str| {
        got.iter()
            .any(|(_, p, v, r)| *p == Some(u64::from(dport)) && v == verdict && r == reason)
    };
    assert!(has(PORT, "pass", "allowlisted"), "{got:?}");
    assert!(has(OPEN, "pass", "unprotected"), "{got:?}");
    assert!(has(PORT, "drop", "denylisted"), "{got:?}");
    assert!(!has(PORT, "drop", "not_allowlisted"), "{got:?}");
    assert_eq!(switch(&topo).get().unwrap(), TraceConfig::OFF, "left on");
}

#[test]
fn an_interrupted_trace_switches_off_and_a_killed_one_expires_in_the_kernel() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let _daemon = topo.run_daemon(&config, dir.path(), ADMIN.parse().unwrap());
    let (traced, other) = (CLIENT_V4[0], CLIENT_V4[1]);

    // Text lines, every packet; Ctrl-C ends it at once with the switch off.
    let mut trace = Trace::spawn(&topo, &config, &["--seconds", "20"]);
    wait_until_on(&topo, &mut trace);
    assert!(!topo.connects(other, PORT, NO_HANDSHAKE));
    let mut lines = BufReader::new(trace.child().stdout.take().unwrap()).lines();
    let first = lines
        .find_map(|l| l.ok().filter(|l| l.contains(other)))
        .expect("a line for the refused source");
    let cols: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(
        cols[1..],
        [other, "8080", "drop", "not_allowlisted"],
        "{first}"
    );
    let interrupted = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(trace.child().id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    // The rest of its output, to its end (it exits at once).
    for _ in lines {}
    let out = trace.finish(Duration::from_secs(5));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(interrupted.elapsed() < Duration::from_secs(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(interrupted)"));
    assert_eq!(switch(&topo).get().unwrap(), TraceConfig::OFF, "left on");

    // Killed outright: the switch stays on, a second trace is refused, and the kernel stops
    // tracing at the expiry.
    let source = format!("{traced}/32");
    let mut trace = Trace::spawn(&topo, &config, &["--source", &source, "--seconds", "2"]);
    wait_until_on(&topo, &mut trace);
    trace.child().kill().unwrap();
    let killed = trace.finish(Duration::from_secs(5));
    assert!(!killed.status.success());
    assert!(switch(&topo).remaining().unwrap().is_some());
    let busy = topo.edgefilter(&config, &["xdp", "trace", "--seconds", "1"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("another `xdp trace` is running"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(4);
    while switch(&topo).remaining().unwrap().is_some() {
        assert!(Instant::now() < deadline, "the killed trace never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Expired: a new trace runs, and bad arguments are usage errors.
    let again = topo.edgefilter(&config, &["xdp", "trace", "--seconds", "1", "--json"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    for bad in [
        &["--seconds", "0"][..],
        &["--seconds", "301"],
        &["--source", "10.0.0.0/33"],
    ] {
        let mut args = vec!["xdp", "trace"];
        args.extend_from_slice(bad);
        assert_eq!(
            topo.edgefilter(&config, &args).status.code(),
            Some(2),
            "{bad:?}"
        );
    }
    assert_eq!(switch(&topo).get().unwrap(), TraceConfig::OFF);
}
