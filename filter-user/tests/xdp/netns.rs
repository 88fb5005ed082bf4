//! The XDP filter on real traffic: network namespaces joined by a veth pair (198.18.0.0/24,
//! fd00:ef::/64), the real `edgefilter` binary attaching the filter (native mode on the server
//! veth), TCP handshakes from allowlisted and other sources. Each test has its own namespaces
//! and bpffs pin dir (`EDGEFILTER_BPF_PIN_DIR`), all removed even on failure. Needs root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgefilter::xdp::{PinDir, XdpCounters, open_pinned};
use filter_common::xdp::{Action, Reason};

use crate::support::netns::{CLIENT_V4, CLIENT_V6, SERVER_IF, Topology, connect_from};
// These tests share the kernel (bpffs, XDP) with each other and with the test-run tests.
use crate::support::serial::serial;

const PROTECTED: u16 = 8080;
const SSH_LIKE: u16 = 2222;
/// Long enough for a handshake on a veth, short enough to keep dropped attempts cheap.
const NO_HANDSHAKE: Duration = Duration::from_millis(500);
const HANDSHAKE: Duration = Duration::from_secs(2);

/// Writes `dir/edgefilter.toml` (each call replaces it; a running filter changes only when
/// `xdp attach` runs again).
fn write_config(dir: &Path, mode: &str, allow: &[&str]) -> PathBuf {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    let text = format!(
        "[listen]\nhttp = [\"0.0.0.0:{PROTECTED}\"]\n\n[xdp]\ninterfaces = [\"{SERVER_IF}\"]\nmode = \"{mode}\"\nattach = \"auto\"\nprotected_ports = [{PROTECTED}]\nallow = [{}]\n\n[store]\npath = \"var/keys.db\"\n",
        allow.join(", ")
    );
    let path = dir.join("edgefilter.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn attach(topo: &Topology, config: &Path) -> String {
    let out = topo.edgefilter(config, &["xdp", "attach"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "xdp attach failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn cli(topo: &Topology, config: &Path, args: &[&str]) -> String {
    let out = topo.edgefilter(config, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn counters(topo: &Topology) -> XdpCounters {
    open_pinned(&PinDir::new(&topo.pins))
        .unwrap()
        .counters()
        .unwrap()
}

#[test]
fn allowlisted_source_reaches_protected_port_others_do_not() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "enforce",
        &[
            &format!("{}/32", CLIENT_V4[0]),
            &format!("{}/128", CLIENT_V6[0]),
        ],
    );
    let protected = topo.listen(PROTECTED);
    let _ssh = topo.listen(SSH_LIKE);
    // Without the filter every source gets through: the failures below are the filter's doing.
    assert!(topo.connects(CLIENT_V4[1], PROTECTED, HANDSHAKE));
    assert!(topo.connects(CLIENT_V6[1], PROTECTED, HANDSHAKE));

    let out = attach(&topo, &config);
    assert!(out.contains("program     loaded"), "{out}");
    assert!(
        out.contains("attached (driver mode)"),
        "native XDP on veth expected: {out}"
    );
    let before = counters(&topo);
    let accepted_before = protected.count();

    assert!(
        topo.connects(CLIENT_V4[0], PROTECTED, HANDSHAKE),
        "allowlisted v4 source"
    );
    assert!(
        topo.connects(CLIENT_V6[0], PROTECTED, HANDSHAKE),
        "allowlisted v6 source"
    );
    assert!(
        !topo.connects(CLIENT_V4[1], PROTECTED, NO_HANDSHAKE),
        "other v4 source got a handshake"
    );
    assert!(
        !topo.connects(CLIENT_V6[1], PROTECTED, NO_HANDSHAKE),
        "other v6 source got a handshake"
    );
    assert!(
        topo.connects(CLIENT_V4[1], SSH_LIKE, HANDSHAKE),
        "unprotected port must stay reachable"
    );
    assert!(
        topo.connects(CLIENT_V6[1], SSH_LIKE, HANDSHAKE),
        "unprotected port must stay reachable"
    );

    let after = counters(&topo);
    let dropped = after.packets(Action::Drop, Reason::NotAllowlisted)
        - before.packets(Action::Drop, Reason::NotAllowlisted);
    assert!(
        dropped >= 2,
        "one SYN per refused source at least, got {dropped}"
    );
    assert!(
        after.packets(Action::Pass, Reason::Allowlisted)
            > before.packets(Action::Pass, Reason::Allowlisted)
    );
    assert!(
        after.packets(Action::Pass, Reason::Unprotected)
            > before.packets(Action::Pass, Reason::Unprotected)
    );
    // Only the two allowlisted handshakes reached the listener.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(protected.count() - accepted_before, 2);
}

#[test]
fn monitor_mode_passes_and_counts() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "monitor", &[&format!("{}/32", CLIENT_V4[0])]);
    let _l = topo.listen(PROTECTED);
    attach(&topo, &config);
    assert!(
        topo.connects(CLIENT_V4[1], PROTECTED, HANDSHAKE),
        "monitor mode must not drop"
    );
    assert!(
        topo.connects(CLIENT_V6[1], PROTECTED, HANDSHAKE),
        "monitor mode must not drop"
    );
    let c = counters(&topo);
    assert!(
        c.packets(Action::WouldDrop, Reason::NotAllowlisted) >= 2,
        "{c:?}"
    );
    assert_eq!(
        c.total_for(Reason::NotAllowlisted),
        c.packets(Action::WouldDrop, Reason::NotAllowlisted)
    );
    // Switching the config to enforce and attaching again (adopting) starts dropping.
    let config = write_config(dir.path(), "enforce", &[&format!("{}/32", CLIENT_V4[0])]);
    assert!(attach(&topo, &config).contains("adopted"));
    assert!(!topo.connects(CLIENT_V4[1], PROTECTED, NO_HANDSHAKE));
}

#[test]
fn denylist_entry_drops_then_expires() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "enforce", &["198.18.0.0/24", "fd00:ef::/64"]);
    let _l = topo.listen(PROTECTED);
    attach(&topo, &config);
    assert!(topo.connects(CLIENT_V4[0], PROTECTED, HANDSHAKE));
    let mut maps = open_pinned(&PinDir::new(&topo.pins)).unwrap();
    let ban = Duration::from_secs(2);
    let banned_at = Instant::now();
    maps.deny(CLIENT_V4[0].parse().unwrap(), Some(ban)).unwrap();
    maps.deny(CLIENT_V6[0].parse().unwrap(), Some(ban)).unwrap();
    assert!(
        !topo.connects(CLIENT_V4[0], PROTECTED, NO_HANDSHAKE),
        "denylisted v4 got through"
    );
    assert!(
        !topo.connects(CLIENT_V6[0], PROTECTED, NO_HANDSHAKE),
        "denylisted v6 got through"
    );
    assert!(
        topo.connects(CLIENT_V4[1], PROTECTED, HANDSHAKE),
        "a neighbour is not banned"
    );
    assert!(counters(&topo).packets(Action::Drop, Reason::Denylisted) >= 2);
    std::thread::sleep((ban + Duration::from_millis(200)).saturating_sub(banned_at.elapsed()));
    assert!(
        topo.connects(CLIENT_V4[0], PROTECTED, HANDSHAKE),
        "ban should have expired"
    );
    assert!(
        topo.connects(CLIENT_V6[0], PROTECTED, HANDSHAKE),
        "ban should have expired"
    );
}

/// Sets the flag when dropped, so traffic threads stop even when the test fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Connects from `src` in a loop until `stop`; counts successes and failures.
fn traffic(
    topo: &Topology,
    src: &'static str,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    let client = topo.client.clone();
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if connect_from(&client, src, PROTECTED, Duration::from_millis(300)) {
                ok += 1;
            } else {
                failed += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    })
}

#[test]
fn allowlist_edits_under_traffic_leave_unchanged_prefixes_alone() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let keep = format!("{}/32", CLIENT_V4[0]);
    let config = write_config(dir.path(), "enforce", &[&keep, "fd00:ef::2/128"]);
    let _l = topo.listen(PROTECTED);
    attach(&topo, &config);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let steady_v4 = traffic(&topo, CLIENT_V4[0], &stop);
    let steady_v6 = traffic(&topo, CLIENT_V6[0], &stop);

    for _ in 0..3 {
        // Runtime edits through the CLI: one insert / one delete each.
        cli(&topo, &config, &["allow", "add", CLIENT_V4[1]]);
        assert!(
            topo.connects(CLIENT_V4[1], PROTECTED, HANDSHAKE),
            "added source"
        );
        cli(&topo, &config, &["allow", "add", "fd00:ef::3/128"]);
        assert!(
            topo.connects(CLIENT_V6[1], PROTECTED, HANDSHAKE),
            "added v6 source"
        );
        let list = cli(&topo, &config, &["allow", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert!(
            list.as_array().unwrap().iter().all(|e| e["live"] == true),
            "{list}"
        );
        cli(&topo, &config, &["allow", "remove", CLIENT_V4[1]]);
        cli(&topo, &config, &["allow", "remove", "fd00:ef::3/128"]);
        assert!(
            !topo.connects(CLIENT_V4[1], PROTECTED, NO_HANDSHAKE),
            "removed source"
        );
        // A config edit applied by a restart: widened set, then back; the diff leaves `keep`.
        let wider = write_config(
            dir.path(),
            "enforce",
            &[&keep, "fd00:ef::2/128", "198.18.0.4/32", "203.0.113.0/24"],
        );
        attach(&topo, &wider);
        assert!(
            topo.connects(CLIENT_V4[2], PROTECTED, HANDSHAKE),
            "config-added source"
        );
        let config = write_config(dir.path(), "enforce", &[&keep, "fd00:ef::2/128"]);
        attach(&topo, &config);
        assert!(
            !topo.connects(CLIENT_V4[2], PROTECTED, NO_HANDSHAKE),
            "config-removed source"
        );
    }
    // A bad CIDR is a usage error.
    let bad = topo.edgefilter(&config, &["allow", "add", "198.18.0.0/99"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a CIDR"));

    stop.store(true, Ordering::Relaxed);
    for (name, h) in [("v4", steady_v4), ("v6", steady_v6)] {
        let (ok, failed) = h.join().unwrap();
        assert_eq!(
            failed, 0,
            "{name}: an unchanged prefix was interrupted ({ok} ok)"
        );
        assert!(
            ok >= 10,
            "{name}: too little traffic to prove anything ({ok})"
        );
    }
}

#[test]
fn restart_leaves_filtering_in_place() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "enforce", &[&format!("{}/32", CLIENT_V4[0])]);
    let _l = topo.listen(PROTECTED);
    assert!(attach(&topo, &config).contains("program     loaded"));
    let links_before = PinDir::new(&topo.pins).links().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let allowed = traffic(&topo, CLIENT_V4[0], &stop);
    let refused = traffic(&topo, CLIENT_V4[1], &stop);
    let restarts = AtomicUsize::new(0);
    for _ in 0..3 {
        // The attaching process exits each time; a new one adopts what is pinned.
        let out = attach(&topo, &config);
        assert!(out.contains("program     adopted"), "{out}");
        assert!(out.contains("adopted (already attached)"), "{out}");
        restarts.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = allowed.join().unwrap();
    assert_eq!(
        failed, 0,
        "allowlisted traffic interrupted across restarts ({ok} ok)"
    );
    assert!(ok >= 5, "too little traffic ({ok})");
    let (ok, failed) = refused.join().unwrap();
    assert_eq!(ok, 0, "a refused source got through during a restart");
    assert!(failed >= 2);
    assert_eq!(
        PinDir::new(&topo.pins).links().unwrap(),
        links_before,
        "the link was replaced"
    );
    assert!(
        counters(&topo).packets(Action::Drop, Reason::NotAllowlisted) >= 2,
        "counters survive restarts"
    );
}

#[test]
fn detach_removes_filter_and_pins() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "enforce", &[&format!("{}/32", CLIENT_V4[0])]);
    let _l = topo.listen(PROTECTED);
    attach(&topo, &config);
    assert!(!topo.connects(CLIENT_V4[1], PROTECTED, NO_HANDSHAKE));
    let shown = crate::support::netns::sh(&["ip", "-n", &topo.server, "link", "show", SERVER_IF]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("prog/xdp"),
        "attached program not visible"
    );
    let out = cli(&topo, &config, &["xdp", "detach"]);
    assert!(out.contains("XDP filter detached"), "{out}");
    assert!(!topo.pins.exists(), "pin dir left behind");
    // The kernel releases a link whose last reference went asynchronously.
    let deadline = Instant::now() + Duration::from_secs(2);
    let link = loop {
        let out = crate::support::netns::sh(&["ip", "-n", &topo.server, "link", "show", SERVER_IF]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !text.contains("prog/xdp") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!link.contains("prog/xdp"), "program still attached: {link}");
    assert!(
        topo.connects(CLIENT_V4[1], PROTECTED, HANDSHAKE),
        "traffic flows again after detach"
    );
    let again = cli(&topo, &config, &["xdp", "detach"]);
    assert!(again.contains("nothing pinned"), "{again}");
}

/// A pinned program that differs from this build's (an upgrade) is swapped on its link in one
/// step: traffic never sees a gap, refused sources never see an opening.
#[test]
fn changed_program_is_replaced_atomically_on_its_link() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "enforce", &[&format!("{}/32", CLIENT_V4[0])]);
    let _l = topo.listen(PROTECTED);
    attach(&topo, &config);
    let links_before = PinDir::new(&topo.pins).links().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let allowed = traffic(&topo, CLIENT_V4[0], &stop);
    let refused = traffic(&topo, CLIENT_V4[1], &stop);

    // Make the pinned program look like another build's: pin the baseline program in its place
    // (the link itself still runs the filter).
    let other = edgefilter::xdp::Standalone::load().unwrap();
    let shown = crate::support::netns::sh(&["bpftool", "-j", "prog", "show", "name", "pass_all"]);
    // One object per match, or an array, depending on the bpftool version.
    let id = serde_json::Deserializer::from_slice(&shown.stdout)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .flat_map(|v| match v {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        })
        .filter_map(|p| p["id"].as_u64())
        .max()
        .expect("bpftool lists the baseline program");
    let prog_pin = PinDir::new(&topo.pins).prog();
    std::fs::remove_file(&prog_pin).unwrap();
    crate::support::netns::sh(&[
        "bpftool",
        "prog",
        "pin",
        "id",
        &id.to_string(),
        prog_pin.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(300));

    let out = attach(&topo, &config);
    assert!(out.contains("replaced atomically"), "{out}");
    assert!(out.contains("adopted (already attached)"), "{out}");
    drop(other);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = allowed.join().unwrap();
    assert_eq!(
        failed, 0,
        "allowlisted traffic interrupted by the replacement ({ok} ok)"
    );
    let (ok, failed) = refused.join().unwrap();
    assert_eq!(ok, 0, "a refused source got through during the replacement");
    assert!(failed >= 1);
    assert_eq!(
        PinDir::new(&topo.pins).links().unwrap(),
        links_before,
        "the link itself must stay"
    );
    let shown = crate::support::netns::sh(&["ip", "-n", &topo.server, "link", "show", SERVER_IF]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("name edgefilter"));
    // The pin now names the filter again: the next start adopts.
    assert!(attach(&topo, &config).contains("program     adopted"));
    // Map pins lost (e.g. removed by hand): new maps are made, so the running program (still on
    // the old maps) must be replaced, not adopted, or edits would go to maps nobody reads.
    for m in filter_common::xdp::ALL_MAPS {
        std::fs::remove_file(PinDir::new(&topo.pins).map(m)).unwrap();
    }
    assert!(attach(&topo, &config).contains("replaced atomically"));
    assert!(topo.connects(CLIENT_V4[0], PROTECTED, HANDSHAKE));
    assert!(!topo.connects(CLIENT_V4[1], PROTECTED, NO_HANDSHAKE));
    cli(&topo, &config, &["allow", "add", CLIENT_V4[1]]);
    assert!(
        topo.connects(CLIENT_V4[1], PROTECTED, HANDSHAKE),
        "edits reach the live maps"
    );
}
