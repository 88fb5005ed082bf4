//! Daemon wiring: logging → store → XDP → shards → admin API, then wait for a signal.

use std::process::ExitCode;

use crate::config::Config;

/// Runs the daemon until SIGTERM/SIGINT.
///
/// # Errors
/// Start-up failures (bad store, XDP attach failure, listener bind failure).
pub fn run(cfg: Config, no_xdp: bool) -> anyhow::Result<ExitCode> {
    crate::obs::init_logging(&cfg.log);
    if no_xdp || !cfg.xdp.enabled {
        tracing::warn!("XDP is OFF (--no-xdp or xdp.enabled = false): no kernel-side filtering");
    }
    anyhow::bail!("daemon not built yet")
}
