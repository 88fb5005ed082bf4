//! The PostgreSQL store's connection: a private current-thread tokio runtime (usable from plain
//! threads and from inside another runtime), one session re-established after any failure,
//! every call bounded by a timeout, and connection failures told apart from refusals.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::rows::pg;
use super::{PgError, schema, tls, with_causes};
use crate::store::{Result, StoreError};

/// A connection driven by its own task: TCP, under TLS when `store.url` asks for it.
type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on any one store call (and the server-side `statement_timeout`).
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows per page when loading every key.
pub const PAGE: i64 = 10_000;

struct Session {
    client: Arc<Client>,
    driver: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The store's connection: a private runtime, one session, reconnects, bounded calls.
pub struct Conn {
    rt: OwnedRuntime,
    cfg: tokio_postgres::Config,
    /// TLS per `store.url` (see [`tls`]).
    tls: MakeRustlsConnect,
    /// `host:port` for messages (never the password).
    target: String,
    session: Mutex<Option<Session>>,
    base: Instant,
    /// Nanoseconds after `base` of the last successful call; `u64::MAX` = never.
    last_contact: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The store's runtime. Dropped without blocking, so a store may also be dropped inside
/// another runtime (e.g. by an async admin handler), where dropping a `Runtime` would panic.
struct OwnedRuntime(Option<Runtime>);

impl std::ops::Deref for OwnedRuntime {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        // Only `drop` takes it out.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("runtime used after drop"))
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// `host:port[,host:port]` of a parsed config, for messages.
fn target_of(cfg: &tokio_postgres::Config) -> String {
    let ports = cfg.get_ports();
    cfg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` in a transaction: `COMMIT` when it succeeds, `ROLLBACK` otherwise.
pub async fn in_tx<T>(c: &Client, f: impl Future<Output = Result<T>>) -> Result<T> {
    c.batch_execute("BEGIN").await.map_err(pg)?;
    match f.await {
        Ok(v) => match c.batch_execute("COMMIT").await {
            Ok(()) => Ok(v),
            // The server refused the commit: nothing was made.
            Err(e) if !connection_lost(&e) => Err(pg(e)),
            Err(e) => Err(StoreError::Postgres(PgError::CommitUnknown(e.to_string()))),
        },
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Whether `e` means the connection is gone (refused, closed, I/O, or the server shutting
/// down: SQLSTATE classes 08 and 57P) rather than a refusal of this statement.
pub fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

impl Conn {
    /// Connects to `url` (`postgres://…`) and migrates the schema.
    ///
    /// # Errors
    /// A bad URL, an unreachable database (within about 2 s), a failed migration, a schema
    /// newer than this build.
    pub fn open(url: &str) -> Result<Self> {
        let tls::PgTarget {
            config: mut cfg,
            tls,
        } = tls::parse(url)?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        let user_opts = cfg
            .get_options()
            .map(|o| format!("{o} "))
            .unwrap_or_default();
        cfg.options(format!(
            "{user_opts}-c statement_timeout={}",
            OP_TIMEOUT.as_millis()
        ));
        if cfg.get_application_name().is_none() {
            cfg.application_name("edgefilter");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PgError::Unreachable(format!("cannot start its runtime: {e}")))?;
        let store = Self {
            rt: OwnedRuntime(Some(rt)),
            target: target_of(&cfg),
            cfg,
            tls,
            session: Mutex::new(None),
            base: Instant::now(),
            last_contact: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        let (mut client, conn) = store.connect_raw()?;
        let driver = store.rt.spawn(async move {
            let _ = conn.await;
        });
        store
            .block_on(async {
                tokio::time::timeout(OP_TIMEOUT, schema::migrate(&mut client)).await
            })
            .map_err(|_| store.unreachable(format!("migration: no answer within {OP_TIMEOUT:?}")))?
            .map_err(|e| store.classify(e.into()))?;
        *lock(&store.session) = Some(Session {
            client: Arc::new(client),
            driver,
        });
        store.touch();
        Ok(store)
    }

    /// Time since the last successful call to the database (`None` before the first).
    #[must_use]
    pub fn lag(&self) -> Option<Duration> {
        let at = self.last_contact.load(std::sync::atomic::Ordering::Acquire);
        (at != u64::MAX).then(|| self.base.elapsed().saturating_sub(Duration::from_nanos(at)))
    }

    pub fn touch(&self) {
        let n = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_contact
            .store(n, std::sync::atomic::Ordering::Release);
    }

    pub fn unreachable(&self, what: String) -> StoreError {
        StoreError::Postgres(PgError::Unreachable(format!("{}: {what}", self.target)))
    }

    /// Connection-level failures (refused, closed, I/O) become [`PgError::Unreachable`]; errors
    /// the server reported stay as they are.
    pub fn classify(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Postgres(PgError::Db(e)) if connection_lost(&e) => {
                self.unreachable(with_causes(&e))
            }
            StoreError::Postgres(PgError::Timeout(t)) => {
                self.unreachable(format!("no answer within {t:?}"))
            }
            e => e,
        }
    }

    /// Drives `f` on the store's runtime; from inside another tokio runtime, on a scoped thread
    /// (a runtime cannot block inside another).
    pub fn block_on<R: Send>(&self, f: impl Future<Output = R> + Send) -> R {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.rt.block_on(f);
        }
        std::thread::scope(|s| {
            s.spawn(|| self.rt.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    pub fn connect_raw(&self) -> Result<(Client, PgConnection)> {
        let cfg = &self.cfg;
        let tls = self.tls.clone();
        self.block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(tls)).await })
            .map_err(|_| self.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| self.unreachable(with_causes(&e)))
    }

    /// The live client, reconnecting when the last connection died.
    pub fn client(&self) -> Result<Arc<Client>> {
        let mut slot = lock(&self.session);
        if let Some(s) = slot.as_ref().filter(|s| !s.client.is_closed()) {
            return Ok(Arc::clone(&s.client));
        }
        *slot = None;
        let (client, conn) = self.connect_raw()?;
        let driver = self.rt.spawn(async move {
            let _ = conn.await;
        });
        let client = Arc::new(client);
        *slot = Some(Session {
            client: Arc::clone(&client),
            driver,
        });
        tracing::info!(target = %self.target, "connected to the key store database");
        Ok(client)
    }

    pub fn reset(&self) {
        *lock(&self.session) = None;
    }

    /// Runs one bounded operation with the live client. A timeout or a dead connection drops
    /// the connection (the next call reconnects) and answers [`PgError::Unreachable`].
    pub fn run<T, F>(&self, op: impl FnOnce(Arc<Client>) -> F) -> Result<T>
    where
        T: Send,
        F: Future<Output = Result<T>> + Send,
    {
        self.run_on(&self.client()?, op)
    }

    /// [`Self::run`] on a given connection (several calls inside one transaction).
    pub fn run_on<T, F>(&self, client: &Arc<Client>, op: impl FnOnce(Arc<Client>) -> F) -> Result<T>
    where
        T: Send,
        F: Future<Output = Result<T>> + Send,
    {
        let fut = op(Arc::clone(client));
        let out = self.block_on(async move { tokio::time::timeout(OP_TIMEOUT, fut).await });
        match out {
            Ok(Ok(v)) => {
                self.touch();
                Ok(v)
            }
            Ok(Err(e)) => {
                let e = self.classify(e);
                if client.is_closed() || matches!(e, StoreError::Postgres(PgError::Unreachable(_)))
                {
                    self.reset();
                }
                Err(e)
            }
            Err(_) => {
                self.reset();
                Err(self.unreachable(format!("no answer within {OP_TIMEOUT:?}")))
            }
        }
    }

    /// Retried once on a fresh connection when the old one had died (e.g. the database
    /// restarted since the last call). Safe for writes too: a transaction that failed before
    /// its commit made nothing, and a commit that may have happened is
    /// [`PgError::CommitUnknown`], never retried.
    pub fn retrying<T, F>(&self, op: impl Fn(Arc<Client>) -> F) -> Result<T>
    where
        T: Send,
        F: Future<Output = Result<T>> + Send,
    {
        let had = lock(&self.session).is_some();
        match self.run(&op) {
            Err(StoreError::Postgres(PgError::Unreachable(_))) if had => self.run(op),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_host_and_port_never_the_password() {
        let cfg: tokio_postgres::Config = "postgres://edge:s3cret@db.internal:6543/keys"
            .parse()
            .unwrap();
        assert_eq!(target_of(&cfg), "db.internal:6543");
        let cfg: tokio_postgres::Config = "postgres://edge@a,b:7/keys".parse().unwrap();
        assert_eq!(target_of(&cfg), "a:5432,b:7");
    }
}
