//! Revocation propagation in-process: control-plane publish → every shard applied (2 shards).
//!
//! Shards run on their own threads. "busy": each loops over fake requests (~1 µs of work) and
//! checks `ShardInbox::pending()` before each, as the proxy does; "idle": each sleeps on
//! `ShardInbox::notified()` in its own current-thread runtime. The peer measured in the same run
//! is the same fan-out built with locks (a `Mutex<VecDeque>` per shard, locked before every
//! request, acks under a `Mutex` + `Condvar`), with the same busy shards.
//! A percentile report (p50/p99 and the ratio to the peer) is printed before the criterion runs.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use edgefilter::fanout::{Fanout, PropagationObserver, ShardInbox};

const SHARDS: usize = 2;

/// One fake request's worth of work (~1 µs).
fn fake_request(acc: &mut u64) {
    for i in 0..300u64 {
        *acc = black_box(acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
    }
}

struct Shards {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn busy_shards(inboxes: Vec<ShardInbox<u64>>) -> Shards {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = inboxes
        .into_iter()
        .map(|mut inbox| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut acc = 1u64;
                let mut cache = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if inbox.pending() {
                        inbox.drain(|rev, c| cache = cache.wrapping_add(rev ^ *c));
                    }
                    fake_request(&mut acc);
                }
                black_box((acc, cache));
            })
        })
        .collect();
    Shards { stop, threads }
}

fn idle_shards(inboxes: Vec<ShardInbox<u64>>) -> Shards {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = inboxes
        .into_iter()
        .map(|mut inbox| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let mut cache = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        tokio::select! {
                            () = inbox.notified() => {}
                            () = tokio::time::sleep(Duration::from_millis(20)) => {}
                        }
                        inbox.drain(|rev, c| cache = cache.wrapping_add(rev ^ *c));
                    }
                    black_box(cache);
                });
            })
        })
        .collect();
    Shards { stop, threads }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Publishes `n` changes one at a time, each awaited on every shard; returns each round trip
/// (publish → the publisher knows every shard applied).
fn fanout_samples(busy: bool, n: usize) -> Vec<Duration> {
    fanout_samples_observed(busy, n, None)
}

/// The same, also handing the shard-side propagation (publish → last shard applied, what
/// `edgefilter_revocation_propagation_seconds` records) to `observer`.
fn fanout_samples_observed(
    busy: bool,
    n: usize,
    observer: Option<PropagationObserver>,
) -> Vec<Duration> {
    let (mut fan, inboxes) = Fanout::<u64>::new(SHARDS, 0, observer);
    let _shards = if busy {
        busy_shards(inboxes)
    } else {
        idle_shards(inboxes)
    };
    let rt = runtime();
    rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let rev = fan.last_published() + 1;
            let t = Instant::now();
            fan.publish(rev, Arc::new(rev)).expect("publish");
            fan.wait_applied(rev, Duration::from_secs(5))
                .await
                .expect("applied");
            out.push(t.elapsed());
        }
        out
    })
}

/// The peer: the same fan-out built with locks. Each busy shard locks its `Mutex<VecDeque>` to
/// check for changes before every request and reports its applied revision under a shared
/// `Mutex` + `Condvar`, on which the publisher waits.
fn locking_peer_samples(n: usize) -> Vec<Duration> {
    type Queues = Vec<Mutex<VecDeque<u64>>>;
    let queues: Arc<Queues> = Arc::new((0..SHARDS).map(|_| Mutex::default()).collect());
    let acks = Arc::new((Mutex::new([0u64; SHARDS]), Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..SHARDS)
        .map(|i| {
            let (queues, acks, stop) = (Arc::clone(&queues), Arc::clone(&acks), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut acc = 1u64;
                let mut cache = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut applied = None;
                    {
                        let mut q = queues[i].lock().expect("queue");
                        while let Some(rev) = q.pop_front() {
                            cache = cache.wrapping_add(rev);
                            applied = Some(rev);
                        }
                    }
                    if let Some(rev) = applied {
                        acks.0.lock().expect("acks")[i] = rev;
                        acks.1.notify_all();
                    }
                    fake_request(&mut acc);
                }
                black_box((acc, cache));
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for rev in 1..=n as u64 {
        let t = Instant::now();
        for q in queues.iter() {
            q.lock().expect("queue").push_back(rev);
        }
        let mut a = acks.0.lock().expect("acks");
        while a.iter().any(|&x| x < rev) {
            a = acks.1.wait(a).expect("wait");
        }
        drop(a);
        out.push(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    out
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn report() {
    let mut floor = locking_peer_samples(10_000);
    let observed = Arc::new(Mutex::new(Vec::with_capacity(10_000)));
    let sink = Arc::clone(&observed);
    let observer: PropagationObserver = Arc::new(move |_rev, took| {
        sink.lock().expect("observed").push(took);
    });
    let mut busy = fanout_samples_observed(true, 10_000, Some(observer));
    let mut metric = std::mem::take(&mut *observed.lock().expect("observed"));
    let mut idle = fanout_samples(false, 2_000);
    let (f50, f99) = (pct(&mut floor, 0.5), pct(&mut floor, 0.99));
    println!("propagation publish → {SHARDS} shards applied (in-process):");
    for (name, v) in [("busy shards", &mut busy), ("idle shards", &mut idle)] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!(
            "  fan-out, {name:<11}  p50 {p50:>10.1?}  p99 {p99:>10.1?}  ({:.1}x / {:.1}x the peer)",
            p50.as_secs_f64() / f50.as_secs_f64(),
            p99.as_secs_f64() / f99.as_secs_f64()
        );
    }
    let (m50, m99) = (pct(&mut metric, 0.5), pct(&mut metric, 0.99));
    println!(
        "  fan-out, busy shards, commit → last shard applied (the metric): p50 {m50:.1?} p99 {m99:.1?}"
    );
    println!("  peer: locking, busy   p50 {f50:>10.1?}  p99 {f99:>10.1?}");
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        println!("  (machine: {cores} cores, load average {})", l.trim());
    }
}

fn bench(c: &mut Criterion) {
    report();
    let mut g = c.benchmark_group("propagation");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    for busy in [true, false] {
        let name = if busy {
            "fanout_busy_2_shards"
        } else {
            "fanout_idle_2_shards"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                fanout_samples(busy, usize::try_from(iters).unwrap_or(usize::MAX))
                    .iter()
                    .sum()
            });
        });
    }
    g.bench_function("peer_locking_busy_2_shards", |b| {
        b.iter_custom(|iters| {
            locking_peer_samples(usize::try_from(iters).unwrap_or(usize::MAX))
                .iter()
                .sum()
        });
    });
    g.finish();
    // The per-request cost a shard pays when nothing is pending.
    let (_fan, mut inboxes) = Fanout::<u64>::new(1, 0, None);
    let inbox = inboxes.pop().expect("inbox");
    let mut g = c.benchmark_group("pending_check");
    g.bench_function("fanout_atomic_load", |b| {
        b.iter(|| black_box(&inbox).pending())
    });
    let peer = std::sync::Mutex::new(std::collections::VecDeque::<u64>::new());
    g.bench_function("peer_mutex_queue_check", |b| {
        b.iter(|| !black_box(&peer).lock().expect("lock").is_empty());
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
