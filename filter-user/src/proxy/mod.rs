//! The sharded HTTP/1.1 (+TLS) reverse proxy: start it, find its addresses, reload TLS, drain it.
//!
//! [`start`] binds every listener (one `SO_REUSEPORT` socket per shard and address) and spawns
//! one pinned thread per shard, each with its own current-thread tokio runtime. Nothing mutable is
//! shared between shards on the request path. The [`ProxyHandle`] pauses and resumes accepting,
//! lends its listening sockets to a daemon taking over ([`StartOptions::inherited`] on the other
//! side), reloads TLS, and drains: at once for idle connections ([`ProxyHandle::shutdown`]) or,
//! when handing over, after each one's next answer ([`ProxyHandle::hand_over`]).
//!
//! # Layering
//!
//! Every `use super::…` edge between the submodules points down this list, never up or
//! sideways within a row:
//!
//! 1. leaves: `admit` (connection counts and limits, shared by the shards), `affinity`, `reqid`,
//!    `credentials` (a route's upstream credential: one value, or a pool whose values rest when
//!    the provider refuses them), `tls`, `listen`, `headers` (framing, the header scan, name and
//!    value tests), `upstream_error` (why an upstream failed, classified), `trim` (freed memory
//!    back to the kernel after a mass close), `tunnel` (a switched connection relayed both ways),
//!    `usage` (the LLM token usage a response body reports, read as it streams past);
//! 2. `upstream` (targets: addresses re-resolved, TLS, health, balancing; connections and the
//!    per-shard pool);
//! 3. `route` (matched on the path as the upstream reads it; each route's targets and credential);
//! 4. `settings` (read-only, shared by all shards), `respond` (error answers), `body` (body
//!    framing while streaming), `response` (upstream heads), `forward` (what of the client's head
//!    and trailers goes upstream);
//! 5. `head` (parse, check, route, gate, pick the first target and credential, then `forward`);
//! 6. `io` (client buffers and their pool, waiting for bytes without one, `Flow`, client
//!    writes and refusals);
//! 7. `state` (one shard's own state: gate, ids, pools, connection counts, drain flag);
//! 8. `exchange` (one forwarded request, its retries and its `Outcome`);
//! 9. `conn` (one client connection's loop);
//! 10. `shard` (the thread, its runtime and accept loops);
//! 11. this module (start, addresses, reload, drain, the resolver thread).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::autoblock::Autoblock;
use crate::config::Config;
use crate::gate::{GateFactory, GateRules};
use crate::obs::Telemetry;
use crate::obs::metrics::RequestMetrics;

mod access;
pub mod admit;
pub mod affinity;
pub(crate) mod body;
mod conn;
mod credentials;
mod exchange;
mod forward;
pub mod head;
mod headers;
mod io;
pub mod listen;
mod ratelimit_fields;
pub mod reqid;
pub mod respond;
pub(crate) mod response;
pub mod route;
mod settings;
mod shard;
mod state;
pub mod tls;
mod trim;
mod tunnel;
pub mod upstream;
pub mod upstream_error;
pub mod usage;

/// How long SIGTERM waits for in-flight requests before the shards are torn down, unless
/// `limits.drain_timeout` says otherwise (its default).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// While handing over, how long an idle keep-alive connection stays open for its next request
/// (answered with `Connection: close`) before it is closed (at most the drain deadline and
/// `limits.client_timeout`). Closing an idle connection races with a request the client may be
/// sending on it; a client that keeps sending meets no close at all.
pub const HANDOVER_IDLE_GRACE: Duration = Duration::from_secs(5);

pub use listen::ListenSocket;

/// How the shards drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drain {
    /// How long in-flight requests may run.
    pub within: Duration,
    /// `None`: idle connections close at once; `Some(g)`: they wait up to `g` for one last
    /// request (a hand-over to another daemon).
    pub idle_grace: Option<Duration>,
}

/// What [`start_opts`] starts with besides the config.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// Listening sockets handed over by a running daemon, used before any is bound.
    pub inherited: Vec<ListenSocket>,
    /// Start with accepting paused (until [`ProxyHandle::resume`]).
    pub paused: bool,
    /// The gates' rules for `cfg`'s routes, handed to the gate with each request; `None`: each
    /// gate uses the rules it was built with (then [`ProxyHandle::reconfigure`] must not
    /// change the routes).
    pub gate_rules: Option<GateRules>,
}

/// Why the proxy could not start (or reload).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A route is invalid (upstream URL, injected header, ...).
    #[error(transparent)]
    Route(#[from] route::RouteError),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A shard thread could not be spawned or its runtime built.
    #[error("shard {shard}: {source}")]
    Shard {
        /// Shard number.
        shard: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// A shard thread panicked.
    #[error("shard thread panicked")]
    Panicked,
    /// A listening socket could not be given a second descriptor (to hand over).
    #[error("cannot duplicate a listening socket: {0}")]
    Lend(std::io::Error),
}

impl From<listen::BindError> for ProxyError {
    fn from(e: listen::BindError) -> Self {
        Self::Bind {
            addr: e.addr,
            source: e.source,
        }
    }
}

/// A running proxy: its bound addresses and the means to reload TLS and to stop it.
#[derive(Debug)]
pub struct ProxyHandle {
    http: Vec<SocketAddr>,
    https: Vec<SocketAddr>,
    stop: watch::Sender<Option<Drain>>,
    accepting: watch::Sender<bool>,
    /// A second descriptor of every listening socket, to lend to a daemon taking over; closed
    /// when draining starts.
    sockets: Vec<ListenSocket>,
    /// Inherited sockets that no configured address wanted (closed with the handle).
    unused: Vec<ListenSocket>,
    /// Each shard's thread; it returns how many requests the drain deadline cut.
    threads: Vec<JoinHandle<usize>>,
    certs: Option<Arc<tls::CertStore>>,
    metrics: Arc<RequestMetrics>,
    settings: Arc<settings::Published>,
}

impl ProxyHandle {
    /// The request metrics the shards count into.
    #[must_use]
    pub fn metrics(&self) -> &Arc<RequestMetrics> {
        &self.metrics
    }

    /// The bound plain-HTTP addresses (ephemeral ports resolved), in `listen.http` order.
    #[must_use]
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.http
    }

    /// The bound TLS addresses, in `listen.https` order.
    #[must_use]
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.https
    }

    /// Re-reads the certificate and key files; open connections keep their sessions.
    ///
    /// # Errors
    /// When the files are unusable; the previous certificate stays in service.
    pub fn reload_tls(&self) -> Result<(), ProxyError> {
        match &self.certs {
            Some(store) => store.reload().map_err(ProxyError::Tls),
            None => Ok(()),
        }
    }

    /// Every listening socket (one per shard and address), to hand over to a daemon taking
    /// over; empty once draining started.
    pub fn sockets(&self) -> impl Iterator<Item = (SocketAddr, bool, BorrowedFd<'_>)> {
        self.sockets
            .iter()
            .map(|s| (s.addr, s.tls, s.socket.as_fd()))
    }

    /// Inherited sockets that no configured address wanted: `(address, tls)`.
    #[must_use]
    pub fn unused_inherited(&self) -> Vec<(SocketAddr, bool)> {
        self.unused.iter().map(|s| (s.addr, s.tls)).collect()
    }

    /// Stops accepting new connections; they wait in the kernel's queue (the sockets stay
    /// open). Connections already accepted are served as usual.
    pub fn pause(&self) {
        self.accepting.send_replace(false);
    }

    /// Accepts again after [`Self::pause`] (or a paused start).
    pub fn resume(&self) {
        self.accepting.send_replace(true);
    }

    /// Reads the certificate and key from `cert` and `key` (a reload may have moved them); open
    /// connections keep their sessions. Nothing to do without `listen.https`.
    ///
    /// # Errors
    /// When the files are unusable; the previous certificate stays in service.
    pub fn reload_tls_from(
        &self,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    ) -> Result<(), ProxyError> {
        match &self.certs {
            Some(store) => store.reload_from(cert, key).map_err(ProxyError::Tls),
            None => Ok(()),
        }
    }

    /// Whether the proxy serves TLS (`listen.https` was set at start).
    #[must_use]
    pub fn serves_tls(&self) -> bool {
        self.certs.is_some()
    }

    /// `limits.drain_timeout` in force (a reload may have changed it).
    #[must_use]
    pub fn drain_timeout(&self) -> Duration {
        self.settings.current().drain_timeout
    }

    /// Client connections open now, every shard together.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.settings.current().admission.open_now()
    }

    /// Puts `cfg`'s routes (checked by the gate with `gate_rules`, built from `cfg` too),
    /// `[limits]`, `keys.errors` and `keys.trusted_proxies` in force together: each shard
    /// serves its next request with them, requests in flight finish with the ones they began
    /// with (listeners and shards stay as started).
    ///
    /// # Errors
    /// A route that does not compile (an upstream that does not resolve, an injected header
    /// whose variable is unset or whose file cannot be read): nothing changed.
    pub fn reconfigure(
        &self,
        cfg: &Config,
        gate_rules: Option<GateRules>,
    ) -> Result<(), ProxyError> {
        Ok(self.settings.reconfigure(cfg, gate_rules)?)
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain`, then joins the shards.
    /// Idle keep-alive connections are closed at once; requests still running at the deadline
    /// are cut (their connections closed) and counted in one warning.
    ///
    /// # Errors
    /// When a shard thread panicked.
    pub fn shutdown(mut self, drain: Duration) -> Result<(), ProxyError> {
        self.stop_and_join(Drain {
            within: drain,
            idle_grace: None,
        })
    }

    /// [`Self::shutdown`] after handing the listening sockets over to another daemon: every
    /// open connection gets one more answer (marked `Connection: close`) if its request comes
    /// within [`HANDOVER_IDLE_GRACE`], so a client that keeps sending never meets a close it
    /// could race with; the next connection goes to the other daemon.
    ///
    /// # Errors
    /// When a shard thread panicked.
    pub fn hand_over(mut self, drain: Duration) -> Result<(), ProxyError> {
        self.stop_and_join(Drain {
            within: drain,
            idle_grace: Some(HANDOVER_IDLE_GRACE.min(drain)),
        })
    }

    fn stop_and_join(&mut self, drain: Drain) -> Result<(), ProxyError> {
        // This process's second descriptors go first: once the shards close theirs, a socket
        // nobody else holds is closed and new connections are refused, not left queued.
        self.sockets.clear();
        self.unused.clear();
        self.stop.send_replace(Some(drain));
        let mut result = Ok(());
        let mut cut = 0;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(n) => cut += n,
                Err(_) => result = Err(ProxyError::Panicked),
            }
        }
        if cut > 0 {
            tracing::warn!(
                cut,
                drain_timeout = ?drain.within,
                "drain deadline passed: {cut} request(s) still running were cut"
            );
        }
        result
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        // A handle dropped without `shutdown` stops at once; a panicking shard is not re-raised.
        let _ = self.stop_and_join(Drain {
            within: Duration::ZERO,
            idle_grace: None,
        });
    }
}

/// Binds every listener and starts one shard thread per `Config::shard_count()`. Each shard
/// builds its gate with `gates` on its own thread (in parallel); this returns once every shard
/// has its runtime and its gate.
///
/// # Errors
/// Route, TLS and bind errors, each naming what failed; a shard whose thread or runtime could
/// not be started, or that panicked while building its gate.
pub fn start(cfg: &Config, gates: GateFactory) -> Result<ProxyHandle, ProxyError> {
    let autoblock = Autoblock::new(cfg, cfg.shard_count());
    start_with(cfg, gates, Telemetry::for_config(cfg), autoblock)
}

/// [`start`] feeding the daemon's `telemetry`: request metrics (which `/metrics` reads), recent
/// refusals (which `GET /v1/stats` ranks) and the access log; and reporting key denials to
/// `autoblock` (the daemon's, which the control plane drains and fills with bans).
///
/// # Errors
/// As [`start`].
pub fn start_with(
    cfg: &Config,
    gates: GateFactory,
    telemetry: Telemetry,
    autoblock: Arc<Autoblock>,
) -> Result<ProxyHandle, ProxyError> {
    start_opts(cfg, gates, telemetry, autoblock, StartOptions::default())
}

/// [`start_with`] using the listening sockets in `opts.inherited` before binding any, and
/// paused when `opts.paused`.
///
/// # Errors
/// As [`start`].
pub fn start_opts(
    cfg: &Config,
    gates: GateFactory,
    telemetry: Telemetry,
    autoblock: Arc<Autoblock>,
    opts: StartOptions,
) -> Result<ProxyHandle, ProxyError> {
    let metrics = Arc::clone(&telemetry.requests);
    let routes = Arc::new(route::RouteTable::build(cfg)?);
    let certs = match (&cfg.tls, cfg.listen.https.is_empty()) {
        (_, true) => None,
        (Some(t), false) => Some(Arc::new(tls::CertStore::load(
            cfg.resolve(&t.cert),
            cfg.resolve(&t.key),
        )?)),
        (None, false) => return Err(ProxyError::Tls(tls::TlsError::MissingSection)),
    };
    let shards = cfg.shard_count().max(1);
    let nofile = admit::raise_nofile();
    let derived = nofile.map_or(usize::MAX, admit::derived_max_connections);
    let bound = listen::bind_all(&cfg.listen.http, &cfg.listen.https, shards, opts.inherited)?;
    let sockets = listen::duplicates(&bound.per_shard).map_err(ProxyError::Lend)?;
    let (stop, stop_rx) = watch::channel(None);
    let (accepting, accepting_rx) = watch::channel(!opts.paused);
    let cores = affinity::usable_cpus();
    routes.publish(&telemetry.upstreams);
    let settings = Arc::new(settings::Published::new(settings::Settings {
        gate_rules: opts.gate_rules,
        ..settings::Settings::new(cfg, routes, telemetry, autoblock, derived)
    }));
    upstream::resolve::spawn(Arc::downgrade(&settings), |p: &settings::Published| {
        p.current().routes.targets.clone()
    })
    .map_err(|source| ProxyError::Shard { shard: 0, source })?;
    log_connection_limits(cfg, nofile, &settings.current());
    trim::spawn(&metrics).map_err(|source| ProxyError::Shard { shard: 0, source })?;
    let gates: Arc<shard::SharedGateFactory> = Arc::from(gates);
    let (ready, started) = mpsc::channel();
    // Dropped on any early return: stops and joins the shards started so far.
    let mut handle = ProxyHandle {
        http: bound.http,
        https: bound.https,
        stop,
        accepting,
        sockets,
        unused: bound.unused,
        threads: Vec::with_capacity(shards),
        certs,
        metrics,
        settings: Arc::clone(&settings),
    };
    for (n, listeners) in bound.per_shard.into_iter().enumerate() {
        let spec = shard::Spec {
            n,
            cores: affinity::cores_for(n, shards, &cores),
            listeners,
            gates: Arc::clone(&gates),
            settings: Arc::clone(&settings),
            tls: handle
                .certs
                .as_ref()
                .map(|c| tls::server_config(Arc::clone(c))),
            stop: stop_rx.clone(),
            accepting: accepting_rx.clone(),
            ready: ready.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("shard-{n}"))
            .spawn(move || shard::run(spec))
            .map_err(|source| ProxyError::Shard { shard: n, source })?;
        handle.threads.push(t);
    }
    drop(ready);
    for _ in 0..handle.threads.len() {
        match started.recv() {
            Ok((_, Ok(()))) => {}
            Ok((shard, Err(source))) => return Err(ProxyError::Shard { shard, source }),
            // Every sender is gone before every shard reported: one panicked on the way.
            Err(mpsc::RecvError) => return Err(ProxyError::Panicked),
        }
    }
    Ok(handle)
}

/// One line at start: the connection limits in force and where they come from.
fn log_connection_limits(cfg: &Config, nofile: Option<u64>, st: &settings::Settings) {
    let from = if cfg.limits.max_connections.is_some() {
        "limits.max_connections"
    } else {
        "derived from RLIMIT_NOFILE: (open-file limit - reserve) / 2"
    };
    tracing::info!(
        max_connections = st.max_connections,
        max_connections_per_source = st.max_per_source,
        open_file_limit = nofile,
        fd_reserve = admit::FD_RESERVE,
        "connection limits ({from})"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::gate::{AllowAll, Gate};

    fn config(shards: usize) -> Config {
        Config::parse(
            &format!(
                "[runtime]\nshards = {shards}\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
                 [[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n"
            ),
            std::path::Path::new("/"),
        )
        .unwrap()
    }

    #[test]
    fn each_shard_builds_its_gate_on_its_own_thread_before_start_returns() {
        let built = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&built);
        let handle = start(
            &config(3),
            Box::new(move |n| -> Box<dyn Gate> {
                let name = std::thread::current().name().map(str::to_owned);
                seen.lock().unwrap().push((n, name));
                Box::new(AllowAll)
            }),
        )
        .unwrap();
        let mut built = built.lock().unwrap().clone();
        built.sort();
        let want: Vec<_> = (0..3).map(|n| (n, Some(format!("shard-{n}")))).collect();
        assert_eq!(built, want);
        handle.shutdown(Duration::ZERO).unwrap();
    }

    #[test]
    fn a_gate_that_cannot_be_built_fails_the_start() {
        let e = start(
            &config(2),
            Box::new(|n| -> Box<dyn Gate> {
                assert!(n != 1, "shard 1 has no gate");
                Box::new(AllowAll)
            }),
        )
        .unwrap_err();
        assert!(matches!(e, ProxyError::Panicked), "{e}");
    }
}
