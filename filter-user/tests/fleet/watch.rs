//! The store watcher's two pacings against one PostgreSQL, measured in the same run: sleeping
//! between polls (what the daemon does today, 200 ms) and waking on `NOTIFY` through
//! [`ChangeNotifier::wait_for_change`] (the hook for the daemon's watcher). Each watcher runs the
//! real catch-up (`KeyLoader::reload_if_revision_changed`) on its own `PgKeyStore`; the figure
//! is commit returned → the watcher holds the cache updates for that revision.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edgefilter::auth::loader::KeyLoader;
use edgefilter::store::postgres::{ChangeNotifier, PgKeyStore};
use edgefilter::store::{KeyRef, KeyStore, NewKey, unix_now};

use crate::support::pg::PgFixture;

const EVERY: Duration = Duration::from_millis(200);

/// A watcher thread: reports (revision, when) each time its catch-up moved the revision.
fn watcher(
    url: String,
    notifier: Option<ChangeNotifier>,
    stop: Arc<AtomicBool>,
    out: mpsc::Sender<(u64, Instant)>,
) -> JoinHandle<()> {
    let store = PgKeyStore::open(&url).unwrap();
    let (mut loader, _) = KeyLoader::load(&store).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            // The hook: wait for a NOTIFY (or the old period as a fallback) instead of sleeping.
            match &notifier {
                Some(n) => {
                    n.wait_for_change(EVERY);
                }
                None => std::thread::sleep(EVERY),
            }
            let before = loader.revision();
            match loader.reload_if_revision_changed(&store) {
                Ok(u) if !u.is_empty() || loader.revision() != before => {
                    let _ = out.send((loader.revision(), Instant::now()));
                }
                Ok(_) => {}
                Err(e) => eprintln!("watcher poll failed: {e}"),
            }
        }
    })
}

fn wait_rev(rx: &mpsc::Receiver<(u64, Instant)>, rev: u64) -> Instant {
    loop {
        let (r, at) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("watcher reported the revision within 5 s");
        if r >= rev {
            return at;
        }
    }
}

fn pct(v: &[Duration], p: usize) -> Duration {
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[test]
fn notify_driven_watcher_beats_polling_in_the_same_run() {
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let url = fx.postgres_url();
    let mut writer = PgKeyStore::open(&url).unwrap();
    let keys: Vec<_> = (0..30)
        .map(|i| NewKey::new("acme", format!("u{i}"), "live"))
        .collect();
    let made = writer.create_keys(&keys, unix_now()).unwrap();
    let from = writer.revision().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ptx, prx) = mpsc::channel();
    let (ntx, nrx) = mpsc::channel();
    let notifier = ChangeNotifier::spawn(&url, from).unwrap();
    let t = Instant::now();
    while !notifier.connected() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "notifier never connected"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let threads = [
        watcher(url.clone(), None, Arc::clone(&stop), ptx),
        watcher(url.clone(), Some(notifier), Arc::clone(&stop), ntx),
    ];

    let (mut polled, mut notified) = (Vec::new(), Vec::new());
    for c in &made {
        std::thread::sleep(Duration::from_millis(rand::random_range(0..250)));
        writer
            .revoke(KeyRef::Id(&c.view.key.id), unix_now())
            .unwrap();
        let committed = Instant::now();
        let rev = writer.revision().unwrap();
        notified.push(wait_rev(&nrx, rev).saturating_duration_since(committed));
        polled.push(wait_rev(&prx, rev).saturating_duration_since(committed));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    polled.sort();
    notified.sort();
    eprintln!(
        "commit → watcher caught up (n={}): NOTIFY-driven p50 {:?} p99 {:?}; \
         200 ms polling (peer, same run) p50 {:?} p99 {:?}",
        notified.len(),
        pct(&notified, 50),
        pct(&notified, 99),
        pct(&polled, 50),
        pct(&polled, 99),
    );
    assert!(
        pct(&notified, 50) * 4 < pct(&polled, 50),
        "waking on NOTIFY should beat polling by far"
    );
    assert!(pct(&notified, 99) < Duration::from_millis(500));
}
