//! `run --takeover` with the real XDP filter: the daemon taking over adopts the pinned program
//! (the same program id), which stays attached to the interface at every moment of the
//! takeover, and the proxy answers before, during and after (from the source auto-block
//! exempts, as every answer is a key refusal). Needs root; holds [`serial`].

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::autoblock::{bad_request_from, start_daemon, write_config};
use crate::support::daemon::Process;
use crate::support::netns::{CLIENT_V4, SERVER_IF, Topology};
use crate::support::serial::serial;

/// The id of the XDP program attached to the server veth, if any.
fn attached_program(server: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-n", server, "-j", "-d", "link", "show", "dev", SERVER_IF])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["xdp"]["prog"]["id"].as_u64()
}

#[test]
fn a_takeover_adopts_the_pinned_program_which_never_leaves_the_interface() {
    let _g = serial();
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut old = start_daemon(&topo, &config, dir.path());
    let before = attached_program(&topo.server).expect("XDP attached");
    assert_eq!(bad_request_from(&topo, CLIENT_V4[2]), Some(401));

    // Watch the interface throughout: every look must find the same program.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (stop, seen, server) = (stop.clone(), seen.clone(), topo.server.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                seen.lock().unwrap().push(attached_program(&server));
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut new = Process::spawn_logging_to(
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", topo.server))
            .args(["--", env!("CARGO_BIN_EXE_edgefilter"), "--config"])
            .arg(&config)
            .args(["run", "--takeover"])
            .env("EDGEFILTER_BPF_PIN_DIR", &topo.pins)
            .env_remove("EDGEFILTER_CONFIG"),
        &dir.path().join("daemon.2.log"),
    );
    let until = Instant::now() + Duration::from_secs(30);
    let mut answered = 0;
    while old.try_wait().is_none() {
        assert!(
            Instant::now() < until,
            "the old daemon never exited:\n{}",
            old.log()
        );
        assert!(
            new.try_wait().is_none(),
            "the new daemon exited:\n{}",
            new.log()
        );
        assert_eq!(bad_request_from(&topo, CLIENT_V4[2]), Some(401));
        answered += 1;
    }
    assert_eq!(bad_request_from(&topo, CLIENT_V4[2]), Some(401));
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|id| *id == Some(before)),
        "the program left the interface or changed during the takeover: {seen:?}"
    );
    assert_eq!(attached_program(&topo.server), Some(before));
    let log = new.log();
    assert!(log.contains("program=Adopted"), "{log}");
    assert!(log.contains("took over: serving"), "{log}");
    eprintln!(
        "XDP takeover: program {before} attached at all {} looks; {answered} requests answered while the takeover ran",
        seen.len()
    );
}
