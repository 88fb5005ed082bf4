//! Rate-limit accuracy under load: two threads hammer one key's bucket at once. On a virtual
//! clock (so a descheduled thread cannot starve the demand) the budget must hold within ±10%;
//! through two shards' gates on the real clock the two shards must share one budget.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgefilter::auth::ratelimit::{Bucket, Limit};
use edgefilter::auth::{KeyService, ShardGate};
use edgefilter::config::Config;
use edgefilter::gate::{Gate, GateRequest, Verdict};
use edgefilter::store::{KeyStore, NewKey, SqliteStore, unix_now};

const RUN: Duration = Duration::from_millis(1500);

/// The two tests here each want both cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const MAX_TRIES: u64 = 20_000_000;

/// Runs `f` on two threads for `RUN` (or `MAX_TRIES` calls each); returns allowed count and
/// elapsed seconds.
fn hammer<A, B>(mut a: A, mut b: B) -> (u64, f64)
where
    A: FnMut() -> bool + Send,
    B: FnMut() -> bool + Send,
{
    let start = Instant::now();
    let run = |f: &mut dyn FnMut() -> bool| {
        let mut ok = 0u64;
        for _ in 0..MAX_TRIES {
            if f() {
                ok += 1;
            }
            if start.elapsed() >= RUN {
                break;
            }
        }
        ok
    };
    let (x, y) = std::thread::scope(|s| {
        let h = s.spawn(|| run(&mut a));
        let y = run(&mut b);
        (h.join().unwrap(), y)
    });
    (x + y, start.elapsed().as_secs_f64())
}

fn assert_within_10pct(allowed: u64, rate: f64, burst: f64, secs: f64) {
    let expect = rate * secs + burst;
    #[allow(clippy::cast_precision_loss)]
    let got = allowed as f64;
    assert!(
        (got - expect).abs() <= expect * 0.10,
        "allowed {got}, expected {expect:.0} (±10%) over {secs:.3}s"
    );
}

#[test]
fn bucket_holds_its_rate_across_two_threads() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // 20,000/s; every attempt advances a shared virtual clock by 10 µs, so demand is 5× the rate
    // however the threads are scheduled, while the compare-and-swap races are real.
    let limit = Limit::new(20_000, 100);
    let bucket = Bucket::default();
    let start_ns = 1_000_000_000_000u64;
    let clock = AtomicU64::new(start_ns);
    let take = || {
        bucket
            .take(&limit, clock.fetch_add(10_000, Ordering::Relaxed))
            .is_ok()
    };
    let (allowed, _) = hammer(take, take);
    #[allow(clippy::cast_precision_loss)]
    let virtual_secs = (clock.load(Ordering::Relaxed) - start_ns) as f64 / 1e9;
    assert!(
        virtual_secs > 0.5,
        "too few attempts: {virtual_secs}s of virtual time"
    );
    assert_within_10pct(allowed, 20_000.0, 100.0, virtual_secs);
}

#[test]
fn one_key_one_budget_across_two_shard_gates() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        "[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
        dir.path(),
    )
    .unwrap();
    let mut store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    let key = store
        .create_keys(
            &[NewKey::new("acme", "alice", "live").with_rate(1000, 500)],
            unix_now(),
        )
        .unwrap()
        .remove(0)
        .secret;
    let svc = KeyService::load(&cfg, &store, 2).unwrap();
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let hs = [httparse::Header {
        name: "X-API-Key",
        value: key.expose().as_bytes(),
    }];
    let req = GateRequest {
        peer,
        method: "GET",
        path: "/",
        query: None,
        headers: &hs,
        route: 0,
        rules: None,
    };
    let mut limited = [0u64; 2];
    let (mut g0, mut g1) = (svc.gate(0).unwrap(), svc.gate(1).unwrap());
    let (l0, l1) = limited.split_at_mut(1);
    let (allowed, secs) = hammer(
        taker(&mut g0, &req, &mut l0[0]),
        taker(&mut g1, &req, &mut l1[0]),
    );
    // Never more than the one host-wide budget (+10%); two per-shard budgets would give twice
    // as much. Fewer is possible only when both threads were off the CPU (a loaded machine), so
    // the floor is loose.
    let budget = 1000.0 * secs + 500.0;
    #[allow(clippy::cast_precision_loss)]
    let got = allowed as f64;
    assert!(
        got <= budget * 1.10,
        "allowed {got} > budget {budget:.0} + 10%"
    );
    assert!(
        got >= budget * 0.5,
        "allowed {got} << budget {budget:.0} (refused {limited:?})"
    );
    // Both shards were actually contending, and both got refused.
    assert!(limited[0] > 0 && limited[1] > 0, "{limited:?}");
}

/// One shard's attempt: `true` when allowed; counts refusals (which must be `RATE_LIMITED`).
fn taker<'a>(
    g: &'a mut ShardGate,
    req: &'a GateRequest<'a>,
    limited: &'a mut u64,
) -> impl FnMut() -> bool + Send + 'a {
    move || match g.check(req) {
        Verdict::Allow(_) => true,
        Verdict::Deny(d) => {
            assert_eq!(d.code.as_str(), "RATE_LIMITED");
            *limited += 1;
            false
        }
    }
}
