//! The change follower every fleet host runs: `LISTEN`s for new revisions and, on every
//! notification, every heartbeat and every (re)connect, reads the changes after its last applied
//! revision in order and hands them to a callback. It reconnects with backoff when the database
//! goes away, and reports its lag (time since the last successful contact with the database).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use super::log::{ChangeRow, changes_since};
use super::tls::PgTarget;
use super::{CHANNEL, PgError};

/// How a follower connects and paces itself.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// `store.url`.
    pub url: String,
    /// The revision already applied (the state loaded at start-up): changes after it are applied.
    pub from: u64,
    /// Re-read the log this often even without notifications (also the liveness probe).
    pub heartbeat: Duration,
    /// Connect and per-query timeout.
    pub timeout: Duration,
    /// First reconnect delay, doubled after each failed attempt ...
    pub backoff_min: Duration,
    /// ... up to this.
    pub backoff_max: Duration,
    /// Changes read per query while catching up.
    pub batch: i64,
}

impl FollowerConfig {
    /// Defaults: heartbeat 500 ms, timeout 2 s, backoff 50 ms → 2 s, batches of 1,000.
    #[must_use]
    pub fn new(url: impl Into<String>, from: u64) -> Self {
        Self {
            url: url.into(),
            from,
            heartbeat: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            batch: 1000,
        }
    }
}

struct State {
    base: Instant,
    last_applied: AtomicU64,
    /// Nanoseconds after `base` of the last successful query.
    last_contact: AtomicU64,
    connected: AtomicBool,
    reconnects: AtomicU64,
}

impl State {
    fn touch(&self) {
        let n = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_contact.store(n, Ordering::Release);
    }
}

/// A cheap, cloneable view of a follower's progress (for metrics and `/readyz`).
#[derive(Clone)]
pub struct FollowerStatus(Arc<State>);

impl FollowerStatus {
    /// The last revision handed to the callback.
    #[must_use]
    pub fn last_applied(&self) -> u64 {
        self.0.last_applied.load(Ordering::Acquire)
    }

    /// Time since the last successful contact with the database (`edgefilter_store_lag_seconds`).
    /// While connected it stays below about one heartbeat; during an outage it grows.
    #[must_use]
    pub fn lag(&self) -> Duration {
        let at = Duration::from_nanos(self.0.last_contact.load(Ordering::Acquire));
        self.0.base.elapsed().saturating_sub(at)
    }

    /// Whether the follower is connected and listening right now.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Acquire)
    }

    /// How many times a session was (re)established.
    #[must_use]
    pub fn sessions(&self) -> u64 {
        self.0.reconnects.load(Ordering::Acquire)
    }
}

/// A running follower task. Dropping it stops the task.
pub struct ChangeFollower {
    status: FollowerStatus,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ChangeFollower {
    /// Starts following on the current tokio runtime. `apply` receives every change after
    /// `cfg.from`, once, in revision order; it runs on the follower task, so keep it quick
    /// (e.g. update the state and publish to the shards' fan-out).
    ///
    /// # Errors
    /// [`PgError::Url`] when `cfg.url` does not parse (connection failures are retried).
    pub fn spawn<F>(cfg: FollowerConfig, apply: F) -> Result<Self, PgError>
    where
        F: FnMut(&ChangeRow) + Send + 'static,
    {
        let mut pg = super::tls::parse(&cfg.url)?;
        pg.config.connect_timeout(cfg.timeout);
        let state = Arc::new(State {
            base: Instant::now(),
            last_applied: AtomicU64::new(cfg.from),
            last_contact: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        });
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(run(cfg, pg, Arc::clone(&state), apply, rx));
        Ok(Self {
            status: FollowerStatus(state),
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Its progress.
    #[must_use]
    pub fn status(&self) -> FollowerStatus {
        self.status.clone()
    }

    /// Stops the task and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ChangeFollower {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Aborts the connection driver when a session ends.
struct AbortOnDrop(JoinHandle<Option<tokio_postgres::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run<F: FnMut(&ChangeRow)>(
    cfg: FollowerConfig,
    pg: PgTarget,
    state: Arc<State>,
    mut apply: F,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = cfg.backoff_min;
    let mut was_up = false;
    loop {
        let (established, err) = tokio::select! {
            _ = &mut stop => return,
            r = session(&cfg, &pg, &state, &mut apply) => r,
        };
        state.connected.store(false, Ordering::Release);
        if established {
            backoff = cfg.backoff_min;
            tracing::warn!(error = %err, last_applied = state.last_applied.load(Ordering::Acquire),
                "lost the key store database: serving from the last state, reconnecting");
        } else if was_up {
            tracing::debug!(error = %err, "key store database still unreachable");
        }
        was_up |= established;
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// One connection's life. Returns whether it got as far as listening, and why it ended.
async fn session<F: FnMut(&ChangeRow)>(
    cfg: &FollowerConfig,
    pg: &PgTarget,
    state: &State,
    apply: &mut F,
) -> (bool, PgError) {
    let (client, mut conn) =
        match tokio::time::timeout(cfg.timeout, pg.config.connect(pg.tls.clone())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return (false, PgError::Db(e)),
            Err(_) => return (false, PgError::Timeout(cfg.timeout)),
        };
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let mut driver = AbortOnDrop(tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    // A payload that does not parse still means "look".
                    let _ = tx.send(n.payload().parse().unwrap_or(u64::MAX));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    }));
    let listen = format!("LISTEN {CHANNEL}");
    if let Err(e) = timed(cfg.timeout, client.batch_execute(&listen)).await {
        return (false, e);
    }
    // After LISTEN: nothing committed from here on can be missed.
    let before = state.last_applied.load(Ordering::Acquire);
    if let Err(e) = catch_up(cfg, &client, state, apply).await {
        return (false, e);
    }
    state.connected.store(true, Ordering::Release);
    let n = state.reconnects.fetch_add(1, Ordering::AcqRel);
    let now = state.last_applied.load(Ordering::Acquire);
    tracing::info!(
        revision = now,
        caught_up = now - before,
        reconnect = n > 0,
        "following the key store database"
    );
    loop {
        tokio::select! {
            note = rx.recv() => match note {
                Some(rev) => {
                    // Coalesce a burst of notifications into one read.
                    let mut newest = rev;
                    while let Ok(r) = rx.try_recv() {
                        newest = newest.max(r);
                    }
                    if newest <= state.last_applied.load(Ordering::Acquire) {
                        continue;
                    }
                }
                None => {
                    let err = match (&mut driver.0).await {
                        Ok(Some(e)) => PgError::Db(e),
                        _ => closed(&client).await,
                    };
                    return (true, err);
                }
            },
            () = tokio::time::sleep(cfg.heartbeat) => {}
        }
        if let Err(e) = catch_up(cfg, &client, state, apply).await {
            return (true, e);
        }
    }
}

/// The error to report for a connection that ended.
async fn closed(client: &tokio_postgres::Client) -> PgError {
    match client.simple_query("SELECT 1").await {
        Err(e) => PgError::Db(e),
        Ok(_) => PgError::Timeout(Duration::ZERO),
    }
}

async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(PgError::Db),
        Err(_) => Err(PgError::Timeout(limit)),
    }
}

/// Applies every change after the last applied revision, in order.
async fn catch_up<F: FnMut(&ChangeRow)>(
    cfg: &FollowerConfig,
    client: &tokio_postgres::Client,
    state: &State,
    apply: &mut F,
) -> Result<(), PgError> {
    loop {
        let after = state.last_applied.load(Ordering::Acquire);
        let rows = match tokio::time::timeout(cfg.timeout, changes_since(client, after, cfg.batch))
            .await
        {
            Ok(r) => r?,
            Err(_) => return Err(PgError::Timeout(cfg.timeout)),
        };
        state.touch();
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= cfg.batch;
        for row in &rows {
            apply(row);
            state.last_applied.store(row.revision, Ordering::Release);
        }
        if !full {
            return Ok(());
        }
    }
}
