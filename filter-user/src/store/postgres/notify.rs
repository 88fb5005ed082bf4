//! Wakes a store watcher the moment another writer commits: a [`ChangeFollower`] (`LISTEN`,
//! catch-up on reconnect, heartbeat, backoff) on a thread of its own, turned into a blocking
//! `wait_for_change(timeout)` the watcher calls instead of sleeping, plus the lag it reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{ChangeFollower, FollowerConfig, FollowerStatus, PgError};

#[derive(Default)]
struct Wake {
    /// Changes seen by the follower so far.
    seen: Mutex<u64>,
    /// The newest revision seen (set before waking).
    last: AtomicU64,
    cond: Condvar,
}

/// A background `LISTEN` on the change log. Dropping it stops the thread.
pub struct ChangeNotifier {
    wake: Arc<Wake>,
    /// The generation the last [`Self::wait_for_change`] returned at.
    taken: Mutex<u64>,
    status: FollowerStatus,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ChangeNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeNotifier")
            .field("last_revision", &self.last_revision())
            .field("connected", &self.status.connected())
            .finish_non_exhaustive()
    }
}

impl ChangeNotifier {
    /// Follows the log at `url` from revision `from` (the revision the watcher has loaded).
    ///
    /// # Errors
    /// [`PgError::Url`] when `url` does not parse; an unreachable database is retried.
    pub fn spawn(url: &str, from: u64) -> Result<Self, PgError> {
        let _: tokio_postgres::Config = url.parse().map_err(PgError::Url)?;
        let wake = Arc::new(Wake::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (status_tx, status_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&wake);
        let url = url.to_owned();
        let thread = std::thread::Builder::new()
            .name("ef-pg-listen".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let follower =
                        ChangeFollower::spawn(FollowerConfig::new(url, from), move |row| {
                            let mut n = sink.seen.lock().unwrap_or_else(PoisonError::into_inner);
                            *n += 1;
                            sink.last.store(row.revision, Ordering::Release);
                            sink.cond.notify_all();
                        });
                    let Ok(follower) = follower else { return };
                    let _ = status_tx.send(follower.status());
                    let _ = stop_rx.await;
                    follower.stop().await;
                });
            })
            .map_err(|e| PgError::Unreachable(format!("cannot start the listener thread: {e}")))?;
        let status = status_rx
            .recv()
            .map_err(|_| PgError::Unreachable("the listener thread did not start".into()))?;
        Ok(Self {
            wake,
            taken: Mutex::new(0),
            status,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Blocks until a change committed since the previous call returned (true), or `timeout`
    /// passed (false). Returns at once when changes arrived in between.
    pub fn wait_for_change(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = self
            .wake
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *seen == *taken {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            seen = self
                .wake
                .cond
                .wait_timeout(seen, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *taken = *seen;
        true
    }

    /// Time since the last successful contact with the database (`edgefilter_store_lag_seconds`).
    #[must_use]
    pub fn lag(&self) -> Duration {
        self.status.lag()
    }

    /// The listener's progress, to read its lag from another thread (`edgefilter stats`).
    #[must_use]
    pub fn status(&self) -> FollowerStatus {
        self.status.clone()
    }

    /// Whether the listener is connected right now.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.status.connected()
    }

    /// The newest revision announced so far.
    #[must_use]
    pub fn last_revision(&self) -> u64 {
        self.wake
            .last
            .load(Ordering::Acquire)
            .max(self.status.last_applied())
    }
}

impl Drop for ChangeNotifier {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
