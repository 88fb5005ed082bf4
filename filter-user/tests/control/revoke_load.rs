//! Revocation under load through the real daemon (2 shards): several keep-alive clients hammer
//! with key K while `edgefilter keys revoke` runs; once the command has returned, not one of the
//! ≥ 10,000 requests sent afterwards may be forwarded (SPEC §3: every shard applied it).
//! Auto-block is off: the 401s after the revoke all come from 127.0.0.1, which would otherwise
//! be banned (and its kept-alive connections closed) after `autoblock.failures` of them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, KeepAlive, default_tables};
use crate::support::upstream;

const THREADS: usize = 4;
const CONNS_PER_THREAD: usize = 2;
const AFTER: usize = 10_000;
const LIMIT: Duration = Duration::from_secs(90);

/// (sent at, status, answering shard)
type Sample = (Instant, u16, Option<u8>);

#[test]
fn no_2xx_for_a_revoked_key_once_keys_revoke_returned() {
    let up = upstream::Upstream::start();
    let mut d = Daemon::configure(&format!(
        "{}\n[autoblock]\nenabled = false\n",
        default_tables(up.addr)
    ));
    d.restart();
    let (id, key) = d.create_key("alice");
    // The key works before the load starts (it does at once when the create went through the
    // daemon; this wait only matters if the CLI wrote the store directly).
    let mut probe = KeepAlive::new(d.http);
    let t0 = Instant::now();
    while probe.get("/v1/echo", &key).unwrap().status != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the new key never worked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let began = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (stop, sent, samples, key) =
                (stop.clone(), sent.clone(), samples.clone(), key.clone());
            let addr = d.http;
            std::thread::spawn(move || {
                let mut conns: Vec<KeepAlive> = (0..CONNS_PER_THREAD)
                    .map(|_| KeepAlive::new(addr))
                    .collect();
                let mut mine = Vec::with_capacity(40_000);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && began.elapsed() < LIMIT {
                    let at = Instant::now();
                    let a = conns[i % CONNS_PER_THREAD]
                        .get("/v1/echo", &key)
                        .expect("request failed");
                    mine.push((at, a.status, a.shard));
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                samples.lock().unwrap().extend(mine);
            })
        })
        .collect();

    // Warm up: some traffic on both shards before the revocation.
    while sent.load(Ordering::Relaxed) < 2_000 && began.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = d.cli(&["keys", "revoke", &id]);
    let returned = Instant::now();
    let before = sent.load(Ordering::Relaxed);
    assert!(
        out.status.success(),
        "revoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Enough requests sent after the return (each thread's later samples are all after it).
    while sent.load(Ordering::Relaxed) < before + AFTER as u64 + (THREADS * 2) as u64
        && began.elapsed() < LIMIT
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker panicked");
    }
    let samples = samples.lock().unwrap();
    let (pre, post): (Vec<&Sample>, Vec<&Sample>) =
        samples.iter().partition(|(at, ..)| *at < returned);
    let ok_before = pre.iter().filter(|s| (200..300).contains(&s.1)).count();
    let shards_before: std::collections::BTreeSet<_> = pre
        .iter()
        .filter(|s| s.1 == 200)
        .filter_map(|s| s.2)
        .collect();
    let shards_after: std::collections::BTreeSet<_> = post.iter().filter_map(|s| s.2).collect();
    let leaked: Vec<_> = post
        .iter()
        .filter(|s| (200..300).contains(&s.1))
        .map(|(at, st, sh)| (at.duration_since(returned), *st, *sh))
        .collect();
    eprintln!(
        "{} requests before the revoke returned ({ok_before} 2xx), {} after; shards {shards_before:?} / {shards_after:?}",
        pre.len(),
        post.len()
    );
    assert!(
        ok_before > 1_000,
        "the key never worked under load: {ok_before}"
    );
    assert_eq!(shards_before.len(), 2, "load did not reach both shards");
    assert_eq!(
        shards_after.len(),
        2,
        "load after the revoke did not reach both shards"
    );
    assert!(
        post.len() >= AFTER,
        "only {} requests after the revoke",
        post.len()
    );
    assert!(
        leaked.is_empty(),
        "2xx after revoke returned: {:?}",
        &leaked[..leaked.len().min(10)]
    );
    assert!(
        post.iter().all(|s| s.1 == 401),
        "every later answer is 401 KEY_REVOKED"
    );
}
