//! Daemon wiring: logging → key store → XDP → control plane (+ denylist, auto-block) → shards
//! (proxy) + admin API → wait for a signal (`SIGHUP` reloads the config: [`reload`]).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::admin::{AdminServer, Readiness};
use crate::autoblock::Autoblock;
use crate::config::Config;
use crate::control::{AutoblockTicker, ControlPlane};
use crate::gate::{Gate, GateFactory};

mod reload;

/// The checks the layers above `config` add to its validation (at start, by `check-config`,
/// and at each reload).
pub const CONFIG_CHECKS: &[crate::config::LayerCheck] = &[crate::store::check_config];

/// How often the daemon looks for store changes made by other processes (the CLI without the
/// admin API, or another host).
const STORE_POLL: Duration = Duration::from_millis(200);

/// Runs the daemon with `cfg`, read from `path` (which `SIGHUP` reads again), until
/// SIGTERM/SIGINT.
///
/// # Errors
/// Start-up failures (store, XDP attach, listener bind, admin API bind, TLS files, ...).
pub fn run(cfg: Config, path: &Path, no_xdp: bool) -> anyhow::Result<ExitCode> {
    crate::obs::init_logging(&cfg.log);
    let started = Instant::now();
    for note in cfg.unused() {
        tracing::warn!("config: {note}");
    }
    let ready = Arc::new(Readiness::new());
    let (mut keys, store) = crate::auth::KeyService::open(&cfg)?;
    tracing::info!(
        keys = keys.loaded_keys(),
        revision = keys.revision(),
        "key store loaded"
    );
    ready.set_store(true);
    let xdp_on = !no_xdp && cfg.xdp.enabled;
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
    // The access log's writer thread runs until the proxy has drained (dropped last).
    let (access_log, _log_writer) =
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
    let mut reloader = reload::Reloader {
        path: path.to_path_buf(),
        checks: CONFIG_CHECKS,
        running: Arc::clone(&cfg),
        plane: Arc::clone(&plane),
        access_log: access_log.clone(),
    };
    let admin = AdminServer::from_config(&cfg, plane, Arc::clone(&ready))?.spawn()?;
    tracing::info!(
        shards = cfg.shard_count(),
        admin = %admin.local_addr(),
        startup_ms = started.elapsed().as_millis(),
        "serving"
    );
    let telemetry = crate::obs::Telemetry {
        requests,
        denials,
        access_log,
    };
    let served = crate::proxy::serve(&cfg, gates, telemetry, autoblock, &mut |proxy| {
        reloader.reload(proxy);
    });
    ready.set_shards(false);
    drop(admin);
    drop(watcher);
    served?;
    Ok(ExitCode::SUCCESS)
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
