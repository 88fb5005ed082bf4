//! Unit and stress tests of the fan-out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Fanout, FanoutError, PropagationObserver, ShardInbox};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn drains_in_order_and_acks() {
    let (mut fan, mut inboxes) = Fanout::<String>::new(2, 10, None);
    assert!(!inboxes[0].pending());
    for rev in 11..=13 {
        fan.publish(rev, Arc::new(format!("c{rev}")))
            .expect("publish");
    }
    assert!(inboxes[0].pending() && inboxes[1].pending());
    let mut seen = Vec::new();
    assert_eq!(inboxes[0].drain(|rev, c| seen.push((rev, c.clone()))), 3);
    assert_eq!(
        seen,
        vec![
            (11, "c11".to_string()),
            (12, "c12".to_string()),
            (13, "c13".to_string())
        ]
    );
    assert!(!inboxes[0].pending());
    assert_eq!(inboxes[0].applied(), 13);
    let w = fan.watcher();
    assert_eq!(w.min_applied(), 10, "shard 1 has not applied yet");
    inboxes[1].drain(|_, _| {});
    assert_eq!(w.applied(), vec![13, 13]);
    rt().block_on(async {
        fan.wait_applied(13, Duration::from_millis(100))
            .await
            .expect("applied");
    });
}

#[test]
fn rejects_revisions_that_do_not_increase() {
    let (mut fan, _inboxes) = Fanout::<u8>::new(1, 5, None);
    assert_eq!(
        fan.publish(5, Arc::new(0)),
        Err(FanoutError::OutOfOrder { rev: 5, last: 5 })
    );
    fan.publish(7, Arc::new(0)).expect("7");
    assert_eq!(
        fan.publish(6, Arc::new(0)),
        Err(FanoutError::OutOfOrder { rev: 6, last: 7 })
    );
}

#[test]
fn wait_times_out_while_a_shard_lags() {
    let (mut fan, mut inboxes) = Fanout::<u8>::new(2, 0, None);
    fan.publish(1, Arc::new(1)).expect("publish");
    inboxes[0].drain(|_, _| {});
    let err = rt()
        .block_on(fan.wait_applied(1, Duration::from_millis(30)))
        .expect_err("shard 1 never drains");
    assert_eq!(
        err,
        FanoutError::Timeout {
            rev: 1,
            slowest: 0,
            timeout: Duration::from_millis(30)
        }
    );
}

#[test]
fn idle_shard_on_another_runtime_is_woken() {
    let (mut fan, mut inboxes) = Fanout::<u64>::new(1, 0, None);
    let mut inbox = inboxes.pop().expect("one");
    let shard = std::thread::spawn(move || {
        rt().block_on(async move {
            let mut got = Vec::new();
            while got.len() < 3 {
                inbox.notified().await;
                inbox.drain(|rev, c| got.push((rev, *c)));
            }
            got
        })
    });
    let r = rt();
    for rev in 1..=3 {
        std::thread::sleep(Duration::from_millis(5));
        fan.publish(rev, Arc::new(rev * 100)).expect("publish");
        r.block_on(fan.wait_applied(rev, Duration::from_secs(2)))
            .expect("woken and applied");
    }
    assert_eq!(
        shard.join().expect("shard"),
        vec![(1, 100), (2, 200), (3, 300)]
    );
}

/// A shard thread: its own current-thread runtime, idle until woken or busy-polling.
fn shard_thread(
    mut inbox: ShardInbox<u64>,
    total: u64,
    busy: bool,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        rt().block_on(async move {
            let mut revs = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
            let mut last = 0;
            while last < total {
                if busy {
                    // Busy: one atomic load per "request", yield now and then.
                    for _ in 0..64 {
                        if inbox.pending() {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                } else {
                    tokio::select! {
                        () = inbox.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(5)) => panic!("shard stalled"),
                    }
                }
                inbox.drain(|rev, c| {
                    assert_eq!(rev, last + 1, "strict revision order, no loss");
                    assert_eq!(*c, rev * 7, "payload belongs to its revision");
                    last = rev;
                    revs.push(rev);
                });
            }
            revs
        })
    })
}

#[test]
fn stress_ten_thousand_changes_two_shard_threads() {
    const N: u64 = 10_000;
    let observed = Arc::new(Mutex::new(Vec::new()));
    let obs_sink = Arc::clone(&observed);
    let observer: PropagationObserver = Arc::new(move |rev, took| {
        obs_sink.lock().expect("observer").push((rev, took));
    });
    let (mut fan, inboxes) = Fanout::<u64>::new(3, 0, Some(observer));
    let busy_flags = [false, true, false];
    let threads: Vec<_> = inboxes
        .into_iter()
        .zip(busy_flags)
        .map(|(inbox, busy)| shard_thread(inbox, N, busy))
        .collect();
    let r = rt();
    let acked = AtomicU64::new(0);
    r.block_on(async {
        for rev in 1..=N {
            fan.publish(rev, Arc::new(rev * 7)).expect("publish");
            // Wait on some revisions (like key-changing commands); let others pile up.
            if rev % 97 == 0 {
                fan.wait_applied(rev, Duration::from_secs(5))
                    .await
                    .expect("all shards applied");
                assert!(fan.watcher().min_applied() >= rev);
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        fan.wait_applied(N, Duration::from_secs(10))
            .await
            .expect("all applied");
    });
    for t in threads {
        let revs = t.join().expect("shard thread");
        assert_eq!(revs.len() as u64, N);
        assert!(revs.iter().copied().eq(1..=N));
    }
    assert_eq!(acked.load(Ordering::Relaxed), N / 97);
    let mut seen: Vec<u64> = observed
        .lock()
        .expect("observed")
        .iter()
        .map(|(r, _)| *r)
        .collect();
    seen.sort_unstable();
    assert!(
        seen.iter().copied().eq(1..=N),
        "each revision's propagation observed exactly once"
    );
}

#[test]
fn a_bound_shard_is_real_time_only_while_a_change_waits() {
    use crate::fanout::boost::{current_tid, policy_of};
    let (mut fan, mut inboxes) = Fanout::<u64>::new(1, 0, None);
    let mut inbox = inboxes.pop().expect("one inbox");
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let shard = std::thread::spawn(move || {
        inbox.bind_thread();
        tid_tx.send(current_tid()).expect("send tid");
        go_rx.recv().expect("go");
        let before = policy_of(0).expect("policy");
        let applied = inbox.drain(|_, _| {});
        (before, applied, policy_of(0).expect("policy"))
    });
    let tid = tid_rx.recv().expect("tid");
    assert_eq!(policy_of(tid).expect("policy"), thread_sched::Policy::Other);
    fan.publish(1, Arc::new(1)).expect("publish");
    go_tx.send(()).expect("go");
    let (before, applied, after) = shard.join().expect("join");
    assert_eq!(
        before,
        thread_sched::Policy::Fifo,
        "raised while the change waited"
    );
    assert_eq!(applied, 1);
    assert_eq!(
        after,
        thread_sched::Policy::Other,
        "lowered by the drain that applied it"
    );
}

#[test]
fn a_dropped_inbox_unbinds_its_thread() {
    let (fan, mut inboxes) = Fanout::<u64>::new(1, 0, None);
    let inbox = inboxes.pop().expect("one inbox");
    std::thread::spawn(move || {
        inbox.bind_thread();
        drop(inbox);
    })
    .join()
    .expect("join");
    assert_eq!(
        fan.shared.slots[0].tid.load(Ordering::Acquire),
        0,
        "a finished shard's tid must not stay bound"
    );
}
