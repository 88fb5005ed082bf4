//! Fleet mode against a real PostgreSQL (Debian's package, started by the test): followers see
//! every change once and in order, keep their state and report growing lag during an outage,
//! and catch up after reconnecting — including changes written by hand with SQL.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use edgefilter::store::postgres::{
    self, ChangeFollower, ChangeRow, FollowerConfig, FollowerStatus, append_change, changes_since,
};
use serde_json::{Value, json};

use crate::support::pg::PgFixture;

/// What a follower applied: revision, payload, and how long after its commit it arrived.
type Seen = Arc<Mutex<Vec<(u64, Value, Duration)>>>;

fn follow(url: String, from: u64) -> (ChangeFollower, FollowerStatus, Seen) {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let mut cfg = FollowerConfig::new(url, from);
    cfg.heartbeat = Duration::from_millis(200);
    cfg.backoff_max = Duration::from_millis(300);
    let f = ChangeFollower::spawn(cfg, move |row: &ChangeRow| {
        let took = SystemTime::now()
            .duration_since(row.committed_at)
            .unwrap_or_default();
        sink.lock()
            .expect("seen")
            .push((row.revision, row.payload.clone(), took));
    })
    .expect("spawn follower");
    let status = f.status();
    (f, status, seen)
}

fn snapshot(seen: &Seen) -> Vec<(u64, Value)> {
    seen.lock()
        .expect("seen")
        .iter()
        .map(|(r, p, _)| (*r, p.clone()))
        .collect()
}

async fn wait_for(what: &str, limit: Duration, ok: impl Fn() -> bool) {
    let end = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn writer(fx: &PgFixture) -> tokio_postgres::Client {
    let mut c = postgres::connect(&fx.postgres_url(), Duration::from_secs(5))
        .await
        .expect("writer connects");
    postgres::migrate(&mut c).await.expect("migrate");
    c
}

async fn all_rows(c: &tokio_postgres::Client) -> Vec<(u64, Value)> {
    changes_since(c, 0, 1_000_000)
        .await
        .expect("read log")
        .into_iter()
        .map(|r| (r.revision, r.payload))
        .collect()
}

/// Runs a blocking fixture operation off the runtime thread, so followers keep running.
async fn blocking(fx: PgFixture, op: fn(&mut PgFixture)) -> PgFixture {
    tokio::task::spawn_blocking(move || {
        let mut fx = fx;
        op(&mut fx);
        fx
    })
    .await
    .expect("fixture op")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test]
async fn two_followers_see_every_change_in_order() {
    let Some(fx) = PgFixture::start() else { return };
    let w = writer(&fx).await;
    let (_fa, a, seen_a) = follow(fx.url(), 0);
    let (_fb, b, seen_b) = follow(fx.postgres_url(), 0);
    wait_for("followers connect", Duration::from_secs(10), || {
        a.connected() && b.connected()
    })
    .await;
    // Two concurrent writers: the append lock keeps revisions in commit order.
    let mut tasks = Vec::new();
    for wi in 0..2 {
        let c = postgres::connect(&fx.url(), Duration::from_secs(5))
            .await
            .expect("connect");
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..150 {
                let p = json!({"w": wi, "i": i});
                revs.push(append_change(&c, "test", &p).await.expect("append"));
            }
            revs
        }));
    }
    let mut top = 0;
    for t in tasks {
        let revs = t.await.expect("writer");
        assert!(
            revs.windows(2).all(|x| x[0] < x[1]),
            "a writer's revisions increase"
        );
        top = top.max(*revs.last().expect("some"));
    }
    wait_for("both followers at the top", Duration::from_secs(10), || {
        a.last_applied() == top && b.last_applied() == top
    })
    .await;
    let log = all_rows(&w).await;
    assert_eq!(log.len(), 300);
    for seen in [&seen_a, &seen_b] {
        let got = snapshot(seen);
        assert_eq!(got, log, "every change once, in revision order");
        for wi in 0..2 {
            let order: Vec<i64> = got
                .iter()
                .filter(|(_, p)| p["w"] == wi)
                .map(|(_, p)| p["i"].as_i64().expect("i"))
                .collect();
            assert!(order.iter().copied().eq(0..150), "writer {wi}'s order kept");
        }
    }
    // Propagation of single changes (commit → follower callback), spaced like real edits.
    let mut lat = Vec::new();
    for i in 0..100 {
        let rev = append_change(&w, "probe", &json!({"probe": i}))
            .await
            .expect("append");
        wait_for("probe applied", Duration::from_secs(5), || {
            a.last_applied() >= rev && b.last_applied() >= rev
        })
        .await;
        for seen in [&seen_a, &seen_b] {
            let s = seen.lock().expect("seen");
            let (r, _, took) = s.last().expect("applied");
            assert_eq!(*r, rev);
            lat.push(*took);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    lat.sort();
    eprintln!(
        "PostgreSQL propagation, commit → follower applied (2 followers, 100 changes): p50 {:?} p99 {:?} max {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().expect("some")
    );
}

#[tokio::test]
async fn outage_keeps_state_reports_lag_and_catches_up_on_reconnect() {
    let Some(fx) = PgFixture::start() else { return };
    let w = writer(&fx).await;
    // Followers log in as `edge`, so the test can keep them out after the restart.
    w.batch_execute("CREATE ROLE edge LOGIN; GRANT SELECT ON changes TO edge;")
        .await
        .expect("role");
    let edge_url = format!("{} user=edge", fx.url().replace(" user=postgres", ""));
    let (_fa, a, seen_a) = follow(edge_url.clone(), 0);
    let (_fb, b, seen_b) = follow(edge_url, 0);
    let mut last = 0;
    for i in 0..3 {
        last = append_change(&w, "key.create", &json!({"n": i}))
            .await
            .expect("append");
    }
    wait_for("followers applied 3", Duration::from_secs(10), || {
        a.last_applied() == last && b.last_applied() == last && a.connected() && b.connected()
    })
    .await;
    let before_a = snapshot(&seen_a);
    // Existing sessions survive NOLOGIN; new ones (the reconnects) are refused.
    w.batch_execute("ALTER ROLE edge NOLOGIN")
        .await
        .expect("nologin");
    let fx = blocking(fx, PgFixture::stop).await;
    wait_for(
        "followers notice the outage",
        Duration::from_secs(5),
        || !a.connected() && !b.connected(),
    )
    .await;
    // A change during the outage fails cleanly, on the old connection and on a new one.
    let err = append_change(&w, "key.revoke", &json!({"n": "outage"})).await;
    assert!(err.is_err(), "append during the outage must fail");
    let fresh = postgres::connect(&fx.url(), Duration::from_secs(2)).await;
    assert!(fresh.is_err(), "connecting during the outage must fail");
    let lag1 = a.lag().min(b.lag());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let lag2 = a.lag().min(b.lag());
    assert!(
        lag2 >= lag1 + Duration::from_secs(1),
        "lag grows: {lag1:?} → {lag2:?}"
    );
    assert_eq!(
        (a.last_applied(), b.last_applied()),
        (last, last),
        "state kept"
    );
    assert_eq!(snapshot(&seen_a), before_a);

    let fx = blocking(fx, PgFixture::start_again).await;
    let w = writer(&fx).await;
    // Written directly with SQL while the followers cannot get in.
    let direct: i64 = w
        .query_one(
            "INSERT INTO changes (kind, payload) VALUES ('key.revoke', '{\"id\":\"key_direct\"}') RETURNING revision",
            &[],
        )
        .await
        .expect("direct insert")
        .get(0);
    let direct = u64::try_from(direct).expect("positive");
    assert!(direct > last);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!a.connected() && !b.connected(), "still kept out");
    assert_eq!(
        a.last_applied(),
        last,
        "nothing can arrive while disconnected"
    );
    w.batch_execute("ALTER ROLE edge LOGIN")
        .await
        .expect("login");
    wait_for("followers catch up", Duration::from_secs(10), || {
        a.last_applied() == direct && b.last_applied() == direct
    })
    .await;
    for (st, seen) in [(&a, &seen_a), (&b, &seen_b)] {
        let got = snapshot(seen);
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], (direct, json!({"id": "key_direct"})));
        assert!(st.sessions() >= 2, "reconnected");
        assert!(
            st.lag() < Duration::from_secs(1),
            "lag back to normal: {:?}",
            st.lag()
        );
    }
    assert_eq!(snapshot(&seen_a), all_rows(&w).await);
}

#[tokio::test]
async fn a_thousand_appends_with_a_restart_in_the_middle() {
    let Some(fx) = PgFixture::start() else { return };
    let mut w = writer(&fx).await;
    let (_fa, a, seen_a) = follow(fx.url(), 0);
    let (_fb, b, seen_b) = follow(fx.url(), 0);
    let mut fx = Some(fx);
    let mut top = 0;
    for i in 0..1000 {
        if i == 500 {
            let f = blocking(fx.take().expect("fixture"), PgFixture::stop).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let f = blocking(f, PgFixture::start_again).await;
            w = writer(&f).await;
            fx = Some(f);
        }
        top = append_change(&w, "n", &json!({"n": i}))
            .await
            .expect("append");
    }
    wait_for("both followers at the top", Duration::from_secs(20), || {
        a.last_applied() == top && b.last_applied() == top
    })
    .await;
    let log = all_rows(&w).await;
    let ns: Vec<i64> = log
        .iter()
        .map(|(_, p)| p["n"].as_i64().expect("n"))
        .collect();
    assert!(
        ns.iter().copied().eq(0..1000),
        "the log holds every append once, in order"
    );
    for (st, seen) in [(&a, &seen_a), (&b, &seen_b)] {
        assert_eq!(snapshot(seen), log, "no change lost or reordered");
        assert!(st.sessions() >= 2, "the follower reconnected");
    }
}
