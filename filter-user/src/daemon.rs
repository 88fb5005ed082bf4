//! Daemon wiring: logging → key store → XDP → shards (proxy) → wait for a signal.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Config;

/// How often the daemon looks for store changes made by other processes (the CLI without the
/// admin API, or another host).
const STORE_POLL: Duration = Duration::from_millis(200);

/// Runs the daemon until SIGTERM/SIGINT.
///
/// # Errors
/// Start-up failures (store, XDP attach, listener bind, TLS files, ...).
pub fn run(cfg: Config, no_xdp: bool) -> anyhow::Result<ExitCode> {
    crate::obs::init_logging(&cfg.log);
    let started = Instant::now();
    let (mut keys, store) = crate::auth::KeyService::open(&cfg)?;
    tracing::info!(
        keys = keys.loaded_keys(),
        revision = keys.revision(),
        "key store loaded"
    );
    let _xdp = if no_xdp || !cfg.xdp.enabled {
        tracing::warn!(
            "XDP is OFF (--no-xdp or xdp.enabled = false): no kernel-side filtering, every source reaches the proxy"
        );
        None
    } else {
        let xdp = crate::xdp::start(&cfg)?;
        tracing::info!(interfaces = ?cfg.xdp.interfaces, mode = ?cfg.xdp.mode, "XDP attached");
        Some(xdp)
    };
    let gates = keys.gate_factory();
    let _watcher = keys.spawn_watcher(store, STORE_POLL);
    tracing::info!(
        shards = cfg.shard_count(),
        startup_ms = started.elapsed().as_millis(),
        "serving"
    );
    crate::proxy::serve(&cfg, gates)?;
    Ok(ExitCode::SUCCESS)
}
