//! Daemon wiring: logging → XDP → shards (proxy) → wait for a signal.

use std::process::ExitCode;

use crate::config::Config;

/// Runs the daemon until SIGTERM/SIGINT.
///
/// # Errors
/// Start-up failures (XDP attach failure, listener bind failure, ...).
pub fn run(cfg: Config, no_xdp: bool) -> anyhow::Result<ExitCode> {
    crate::obs::init_logging(&cfg.log);
    let _xdp = if no_xdp || !cfg.xdp.enabled {
        tracing::warn!(
            "XDP is OFF (--no-xdp or xdp.enabled = false): no kernel-side filtering, every source reaches the proxy"
        );
        None
    } else {
        Some(crate::xdp::start(&cfg)?)
    };
    let gates: crate::gate::GateFactory = Box::new(|_| Box::new(crate::gate::AllowAll));
    crate::proxy::serve(&cfg, gates)?;
    Ok(ExitCode::SUCCESS)
}
