//! Daemon wiring: logging → the claims (one daemon per store and address; or the sockets and
//! locks of the daemon taken over) → key store → XDP → control plane (+ denylist, auto-block) →
//! shards (proxy) + admin API → the takeover desk → wait for a signal (`SIGHUP` reloads the
//! config: [`reload`]) or a takeover → drain.
//!
//! # Layering
//!
//! `claim` (locks, using `holder` to name a foreign listener), `handover` (the takeover
//! protocol, using `claim`'s names), `notify`, `preflight` (what `run` checks of a config),
//! `reload`, `lifecycle` (the main loop and the desk, using `handover` and `reload`), then this
//! module.

mod claim;
mod handover;
mod holder;
mod lifecycle;
mod notify;
pub mod preflight;
mod reload;

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use claim::{ClaimError, RUN_DIR_ENV, RunDir};
pub use lifecycle::Upgrade;

use self::claim::{Claims, Lock};
use self::handover::{Item, Takeover};
use self::lifecycle::{Desk, End, Serving};
use crate::admin::{AdminServer, Readiness};
use crate::autoblock::Autoblock;
use crate::config::Config;
use crate::control::{AutoblockTicker, ControlPlane};
use crate::gate::{Gate, GateFactory};
use crate::proxy::{DRAIN_DEADLINE, ListenSocket, StartOptions};

/// The checks the layers above `config` add to its validation, for every command that reads
/// the config.
pub const CONFIG_CHECKS: &[crate::config::LayerCheck] = &[crate::store::check_config];

/// [`CONFIG_CHECKS`] plus what `run` needs to start ([`preflight`]: the routes and the TLS
/// files): at start, by `check-config`, and at each reload.
pub const RUN_CHECKS: &[crate::config::LayerCheck] = &[
    crate::store::check_config,
    preflight::routes,
    preflight::tls,
];

/// How often the daemon looks for store changes made by other processes (the CLI without the
/// admin API, or another host).
const STORE_POLL: Duration = Duration::from_millis(200);

/// How `edgefilter run` was asked to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--no-xdp`.
    pub no_xdp: bool,
    /// `--takeover`: replace the daemon holding this config's store and addresses.
    pub takeover: bool,
    /// The config file (which SIGHUP reads again, and SIGUSR2's `run --takeover` reads).
    pub config: PathBuf,
}

/// What the daemon taken over handed over, sorted.
#[derive(Default)]
struct Inherited {
    listeners: Vec<ListenSocket>,
    admin: Option<(std::net::SocketAddr, TcpListener)>,
    locks: Vec<Lock>,
}

/// Runs the daemon until SIGTERM/SIGINT, or until a daemon started with `--takeover` serves.
///
/// # Errors
/// Start-up failures (another daemon holding the store or an address, store, XDP attach,
/// listener bind, admin API bind, TLS files, a failed takeover, ...).
pub fn run(cfg: Config, opts: &RunOptions) -> anyhow::Result<ExitCode> {
    crate::obs::init_logging(&cfg.log);
    let started = Instant::now();
    for note in cfg.unused() {
        tracing::warn!("config: {note}");
    }
    for warning in cfg.warnings() {
        tracing::warn!("config: {warning}");
    }
    let upgrade = Upgrade {
        // Resolved now: once an upgrade replaced the file, /proc/self/exe names the old one.
        exe: std::env::current_exe().ok(),
        config: opts.config.clone(),
        no_xdp: opts.no_xdp,
    };
    let run_dir = RunDir::from_env();
    run_dir.ensure()?;
    run_dir.sweep();
    let (taking, mut inherited) = if opts.takeover {
        connect_to_running(&cfg, &run_dir)?
    } else {
        (None, Inherited::default())
    };
    let mut claims = Claims::claim_config(&cfg, &run_dir, &mut inherited.locks)?;
    // Handed-over locks this config does not want: the old daemon holds them until it exits.
    drop(std::mem::take(&mut inherited.locks));
    let ready = Arc::new(Readiness::new());
    let (mut keys, store) = crate::auth::KeyService::open(&cfg)?;
    tracing::info!(
        keys = keys.loaded_keys(),
        revision = keys.revision(),
        "key store loaded"
    );
    ready.set_store(true);
    let xdp_on = !opts.no_xdp && cfg.xdp.enabled;
    let _xdp = if !xdp_on {
        tracing::warn!(
            "XDP is OFF (--no-xdp or xdp.enabled = false): no kernel-side filtering, every source reaches the proxy; banned sources (auto-block, `deny add`) are refused at accept in userspace instead"
        );
        None
    } else {
        let xdp = crate::xdp::start(&cfg)?;
        tracing::info!(interfaces = ?cfg.xdp.interfaces, mode = ?cfg.xdp.mode, "XDP attached");
        Some(xdp)
    };
    ready.set_xdp(true);
    let gates = count_shards(keys.gate_factory(), cfg.shard_count(), Arc::clone(&ready));
    let gate_rules: crate::gate::GateRules = keys.rules();
    // Fleet mode: LISTEN for commits so other hosts' changes arrive in milliseconds, not polls.
    let wake = match (cfg.store.kind, cfg.store.url.as_deref()) {
        (crate::config::StoreKind::Postgres, Some(url)) => Some(
            crate::store::postgres::ChangeNotifier::spawn(url, keys.revision())?,
        ),
        _ => None,
    };
    let cfg = Arc::new(cfg);
    let plane = ControlPlane::new(Arc::clone(&cfg), keys, store);
    plane.show_readiness(Arc::clone(&ready));
    let requests = crate::obs::metrics::RequestMetrics::for_config(&cfg);
    plane.show_requests(Arc::clone(&requests));
    let upstreams = Arc::new(crate::obs::upstreams::UpstreamBoard::default());
    plane.show_upstreams(Arc::clone(&upstreams));
    let denials = crate::obs::recent::RecentDenials::for_config(&cfg);
    plane.show_denials(Arc::clone(&denials));
    let autoblock = Autoblock::new(&cfg, cfg.shard_count());
    autoblock.refuse_at_accept(!xdp_on);
    if let Err(e) = plane.use_autoblock(Arc::clone(&autoblock)) {
        tracing::warn!(error = %e, "could not read the denylist from the store; retrying with the store watcher");
    }
    let _ticker = AutoblockTicker::spawn(Arc::clone(&plane), Arc::clone(&autoblock))?;
    if xdp_on {
        plane.show_xdp(crate::xdp::PinDir::from_env());
    }
    // The access log's writer thread runs until the proxy has drained (dropped last). A daemon
    // taking over appends to the same file; both write whole lines.
    let (access_log, log_writer) =
        match crate::obs::access_log::Sink::from_config(&cfg.log.access_log, |p| {
            cfg.resolve(std::path::Path::new(p))
        }) {
            Some(sink) => {
                let (log, writer) =
                    crate::obs::access_log::AccessLog::start(cfg.shard_count(), sink)
                        .map_err(|e| anyhow::anyhow!("log.access_log: {e}"))?;
                plane.show_access_log(Arc::clone(&log));
                (Some(log), Some(writer))
            }
            None => (None, None),
        };
    let watcher = plane.spawn_watcher(STORE_POLL, wake);
    let credit_leases = plane.spawn_credit_leases();
    let reloader = reload::Reloader {
        path: opts.config.clone(),
        checks: RUN_CHECKS,
        running: Arc::clone(&cfg),
        plane: Arc::clone(&plane),
        access_log: access_log.clone(),
    };
    let (reload_asks, reloads) = tokio::sync::mpsc::unbounded_channel();
    let admin_server = match inherited.admin.take() {
        Some((addr, socket)) if addr == cfg.admin.listen => {
            AdminServer::from_config_on(&cfg, socket, Arc::clone(&plane) as _, Arc::clone(&ready))?
        }
        other => {
            if let Some((addr, _)) = other {
                tracing::info!(%addr, "the handed-over admin socket is not admin.listen: closed");
            }
            AdminServer::from_config(&cfg, Arc::clone(&plane) as _, Arc::clone(&ready))?
        }
    };
    let admin_server = admin_server.on_reload(reload::hook(reload_asks));
    let paused = taking.is_some();
    let admin = if paused {
        admin_server.paused()
    } else {
        admin_server
    }
    .spawn()?;
    let telemetry = crate::obs::Telemetry {
        requests,
        denials,
        access_log: access_log.clone(),
        upstreams: Arc::clone(&upstreams),
    };
    let proxy = crate::proxy::start_opts(
        &cfg,
        gates,
        telemetry,
        autoblock,
        StartOptions {
            inherited: std::mem::take(&mut inherited.listeners),
            paused,
            gate_rules: Some(gate_rules),
        },
    )?;
    for (addr, tls) in proxy.unused_inherited() {
        tracing::info!(%addr, tls, "a handed-over socket this config does not listen on: closed");
    }
    let bound = proxy.local_addrs().iter().chain(proxy.tls_addrs());
    for &addr in bound.chain(std::iter::once(&admin.local_addr())) {
        claims.claim_bound(&run_dir, addr)?;
    }
    let desk_socket = handover::Listener::bind(&run_dir.takeover_socket(std::process::id()))
        .with_context(|| format!("takeover socket in {}", run_dir.path().display()))?;
    let (desk, events) = Desk::open(desk_socket, offer(&proxy, &admin, &claims)?)?;
    match taking {
        Some(t) => finish_takeover(t, &plane, &proxy, &admin, &mut claims)?,
        None => notify::notify("READY=1"),
    }
    tracing::info!(
        http = ?proxy.local_addrs(),
        https = ?proxy.tls_addrs(),
        shards = cfg.shard_count(),
        admin = %admin.local_addr(),
        startup_ms = started.elapsed().as_millis(),
        "serving"
    );
    let serving = Serving {
        proxy: &proxy,
        admin: &admin,
        plane: &plane,
        reloader,
        reloads,
        upgrade: &upgrade,
    };
    let end = serving.wait_for_end(events)?;
    drop(desk);
    let successor = match end {
        End::Stop => {
            notify::notify("STOPPING=1");
            let within = proxy.drain_timeout();
            tracing::info!(drain_timeout = ?within, "draining in-flight requests");
            proxy.shutdown(within)?;
            None
        }
        End::HandedOver(session) => {
            let pid = session.pid();
            claims.hand_over();
            notify::notify(&format!("MAINPID={pid}"));
            tracing::info!(
                pid,
                "handed over: draining; each open connection gets one last answer"
            );
            let within = proxy.drain_timeout();
            proxy.hand_over(within)?;
            Some(session)
        }
    };
    ready.set_shards(false);
    drop(admin);
    drop(watcher);
    // Nothing serves any more: the unspent credits go back to the store.
    credit_leases.finish();
    // The last access log lines are written before the successor learns this one is gone.
    drop(log_writer);
    tracing::info!("drained; exiting");
    drop(successor);
    Ok(ExitCode::SUCCESS)
}

/// The new daemon's side of steps 2 to 4 of a takeover (see [`handover`]): ready, catch up with
/// the store once the old daemon stopped accepting, accept, take the locks as its own; then a
/// thread logs when the old daemon has exited.
fn finish_takeover(
    t: Takeover,
    plane: &ControlPlane,
    proxy: &crate::proxy::ProxyHandle,
    admin: &crate::admin::AdminHandle,
    claims: &mut Claims,
) -> anyhow::Result<()> {
    let old_pid = t.old_pid();
    let revision = t
        .ready()
        .with_context(|| format!("taking over from pid {old_pid}"))?;
    let published = plane.sync()?;
    if published < revision {
        tracing::warn!(
            published,
            revision,
            "the store is behind the revision the replaced daemon published"
        );
    }
    proxy.resume();
    admin.resume();
    let old = t
        .serving()
        .with_context(|| format!("taking over from pid {old_pid}"))?;
    claims.took_over();
    // The replaced daemon drains with its own limits.drain_timeout; this one's is the guess.
    let drain = proxy.drain_timeout().max(DRAIN_DEADLINE);
    tracing::info!(
        old_pid,
        "took over: serving; the replaced daemon drains and exits"
    );
    std::thread::Builder::new()
        .name("replaced-daemon".into())
        .spawn(move || {
            if old.wait_exit(drain + Duration::from_secs(30)) {
                tracing::info!(pid = old.pid(), "the replaced daemon exited");
            } else {
                tracing::warn!(pid = old.pid(), "the replaced daemon is still running");
            }
        })?;
    Ok(())
}

/// `--takeover`: connects to the daemon holding this config's store and addresses and takes
/// what it hands over; nothing when none holds them (started as usual).
fn connect_to_running(
    cfg: &Config,
    run_dir: &RunDir,
) -> anyhow::Result<(Option<Takeover>, Inherited)> {
    let holders = claim::holders(cfg, run_dir);
    let pid = match holders.iter().collect::<Vec<_>>().as_slice() {
        [] => {
            tracing::warn!(
                "--takeover: no running edgefilter holds this config's store or addresses; starting as usual"
            );
            return Ok((None, Inherited::default()));
        }
        [Some(pid)] => *pid,
        [None] => anyhow::bail!(
            "--takeover: the running daemon has not written its pid yet (it is starting); try again"
        ),
        many => anyhow::bail!(
            "--takeover: this config's store and addresses are held by several daemons ({many:?}); a takeover replaces one"
        ),
    };
    let path = run_dir.takeover_socket(pid);
    let (t, offered) = Takeover::connect(&path).with_context(|| {
        format!(
            "--takeover: cannot reach the running daemon (pid {pid}) at {}",
            path.display()
        )
    })?;
    tracing::info!(
        pid,
        descriptors = offered.len(),
        "taking over: received the running daemon's sockets and locks"
    );
    Ok((Some(t), sort(offered)))
}

/// Sorts what was handed over, checking each listening socket is bound where it says.
fn sort(offered: Vec<(Item, OwnedFd)>) -> Inherited {
    let mut out = Inherited::default();
    for (item, fd) in offered {
        match item {
            Item::Listener { addr, tls } => {
                let socket = TcpListener::from(fd);
                if socket.local_addr().ok() == Some(addr) && socket.set_nonblocking(true).is_ok() {
                    out.listeners.push(ListenSocket { addr, tls, socket });
                } else {
                    tracing::warn!(%addr, "a handed-over socket is not bound there: closed");
                }
            }
            Item::Admin { addr } => {
                let socket = TcpListener::from(fd);
                if socket.local_addr().ok() == Some(addr) {
                    out.admin = Some((addr, socket));
                } else {
                    tracing::warn!(%addr, "the handed-over admin socket is not bound there: closed");
                }
            }
            Item::Lock { guards, path } => {
                out.locks.push(Lock::adopt(guards, path, File::from(fd)));
            }
        }
    }
    out
}

/// A second descriptor of every listening socket and lock, for a daemon taking over.
fn offer(
    proxy: &crate::proxy::ProxyHandle,
    admin: &crate::admin::AdminHandle,
    claims: &Claims,
) -> std::io::Result<Vec<(Item, OwnedFd)>> {
    let mut items = Vec::new();
    for (addr, tls, fd) in proxy.sockets() {
        items.push((Item::Listener { addr, tls }, fd.try_clone_to_owned()?));
    }
    items.push((
        Item::Admin {
            addr: admin.local_addr(),
        },
        admin.socket().try_clone_to_owned()?,
    ));
    for l in claims.locks() {
        items.push((
            Item::Lock {
                guards: l.guarded().clone(),
                path: l.path().to_owned(),
            },
            l.fd().try_clone_to_owned()?,
        ));
    }
    Ok(items)
}

/// Wraps the gate factory so readiness turns on once every shard has built its gate.
fn count_shards(inner: GateFactory, shards: usize, ready: Arc<Readiness>) -> GateFactory {
    let built = AtomicUsize::new(0);
    Box::new(move |n| -> Box<dyn Gate> {
        let gate = inner(n);
        if built.fetch_add(1, Ordering::AcqRel) + 1 == shards {
            ready.set_shards(true);
        }
        gate
    })
}
