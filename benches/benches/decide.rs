//! The decision chain: a cached key allowed (hash + lookup + every check), a malformed and a
//! checksum-failing key rejected before the cache, against the cost of SHA-256 and of the map
//! lookup alone measured in the same run (report ratios, not absolute pass/fail).
//!
//! `same_key/threads/{1,2}`: one or two threads, each with its own shard gate over the same
//! loaded entries (as the daemon's shards have), deciding the same key (one without a rate
//! limit: a limited key's bucket is host-wide by design) as fast as they can. Reported as ns per
//! decision per thread; equal figures mean the threads share nothing they write.
//! `same_key/baseline_sha256_threads/{1,2}` is the same harness around work that shares nothing
//! (hashing the key), the machine's own one-to-two-thread difference to compare with.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use edgefilter::auth::extract::Extracted;
use edgefilter::auth::rules::{AuthRules, Place};
use edgefilter::auth::{KeyService, Now, decide};
use edgefilter::config::Config;
use edgefilter::gate::{GateRequest, Verdict};
use edgefilter::proxy::affinity;
use edgefilter::store::{KeyHash, KeyStore, NewKey, SqliteStore};

const KEYS: usize = 100_000;

fn new_key(i: usize) -> NewKey {
    NewKey::new(format!("t{}", i % 100), format!("u{}", i % 10_000), "live")
        .with_scopes(["ai:invoke"])
        .with_not_before(1)
        .with_expiry(4_000_000_000)
        .with_cidrs(["127.0.0.0/8".parse().unwrap()])
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        "[[route]]\nprefix = \"/v1/\"\nupstream = \"http://127.0.0.1:9\"\nscopes = [\"ai:invoke\"]\n",
        dir.path(),
    )
    .unwrap();
    let mut store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    let batch: Vec<NewKey> = (0..KEYS).map(new_key).collect();
    let made = store.create_keys(&batch, 100).unwrap();
    let limited = store
        .create_keys(&[new_key(7).with_rate(1_000_000_000, u32::MAX)], 100)
        .unwrap();
    let key = made[KEYS / 2].secret.expose().to_owned();
    let limited_key = limited[0].secret.expose().to_owned();
    let svc = KeyService::load(&cfg, &store, 2).unwrap();
    let mut gate = svc.gate(0).unwrap();
    // One more gate per thread of `same_key`, each its own index over the same entries.
    let mut thread_gates = [svc.gate(0).unwrap(), svc.gate(1).unwrap()];
    let rules = AuthRules::from_config(&cfg).unwrap();
    let route = &rules.routes[0];
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let now = Now::at_secs(1_800_000_000);
    let found = |raw| Extracted::Key {
        raw,
        place: Place::Bearer,
    };
    let malformed = format!("{key} ");
    let mut typo = key.clone().into_bytes();
    typo[20] = if typo[20] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    let hash = KeyHash::of(&key).0;

    let mut g = c.benchmark_group("decide");
    g.bench_function("allow_cached_key", |b| {
        b.iter(|| {
            let d = decide(
                gate.cache(),
                route,
                "live",
                black_box(found(&key)),
                peer,
                now,
            );
            assert!(matches!(d, edgefilter::auth::Decision::Allow(..)));
        });
    });
    g.bench_function("allow_cached_key_rate_limited", |b| {
        b.iter(|| {
            let d = decide(
                gate.cache(),
                route,
                "live",
                black_box(found(&limited_key)),
                peer,
                now,
            );
            assert!(matches!(d, edgefilter::auth::Decision::Allow(..)));
        });
    });
    g.bench_function("reject_malformed", |b| {
        b.iter(|| {
            decide(
                gate.cache(),
                route,
                "live",
                black_box(found(&malformed)),
                peer,
                now,
            )
        });
    });
    g.bench_function("reject_checksum", |b| {
        b.iter(|| {
            decide(
                gate.cache(),
                route,
                "live",
                black_box(found(&typo)),
                peer,
                now,
            )
        });
    });
    g.bench_function("parse_only_valid_key", |b| {
        b.iter(|| filter_common::apikey::parse(black_box(&key)).is_ok());
    });
    g.bench_function("crc32_only_key_head", |b| {
        let head = &key.as_bytes()[..key.len() - 6];
        b.iter(|| filter_common::apikey::crc32(black_box(head)));
    });
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of(black_box(&key)));
    });
    g.bench_function("baseline_cache_lookup", |b| {
        b.iter(|| gate.cache().get(black_box(&hash)).is_some());
    });
    g.finish();

    let header = format!("Bearer {key}");
    let hs = [
        httparse::Header {
            name: "Host",
            value: b"edge",
        },
        httparse::Header {
            name: "Authorization",
            value: header.as_bytes(),
        },
    ];
    let req = GateRequest {
        peer,
        method: "POST",
        path: "/v1/chat",
        query: None,
        headers: &hs,
        route: 0,
        rules: None,
    };
    c.bench_function("gate/check_allow_with_identity", |b| {
        b.iter(|| matches!(gate.check_at(black_box(&req), now), Verdict::Allow(Some(_))));
    });

    let mut g = c.benchmark_group("same_key");
    for threads in [1, 2] {
        g.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| {
                per_thread(&mut thread_gates[..threads], iters, |gate| {
                    let v = gate.check_at(black_box(&req), now);
                    assert!(matches!(v, Verdict::Allow(Some(_))));
                })
            });
        });
    }
    // The control: work that shares nothing at all, to tell the machine's own two-thread cost
    // (shared caches, clocks, a busy neighbour) from sharing in the gate.
    for threads in [1, 2] {
        g.bench_function(BenchmarkId::new("baseline_sha256_threads", threads), |b| {
            b.iter_custom(|iters| {
                per_thread(&mut [(); 2][..threads], iters, |()| {
                    black_box(KeyHash::of(black_box(&key)));
                })
            });
        });
    }
    g.finish();
}

/// Runs `work` `iters` times on one thread per element of `states` (pinned like shards), all
/// starting together; returns the threads' mean time, so the figure is per call per thread.
fn per_thread<T: Send>(states: &mut [T], iters: u64, work: impl Fn(&mut T) + Sync) -> Duration {
    let cores = affinity::usable_cpus();
    let threads = states.len();
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let runs: Vec<_> = states
            .iter_mut()
            .enumerate()
            .map(|(n, state)| {
                let (start, cores, work) = (&start, &cores, &work);
                s.spawn(move || {
                    affinity::pin_current(n, &affinity::cores_for(n, threads, cores));
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        work(state);
                    }
                    t.elapsed()
                })
            })
            .collect();
        let total: Duration = runs
            .into_iter()
            .map(|r| r.join().expect("bench thread"))
            .sum();
        total / u32::try_from(threads).unwrap_or(1)
    })
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
