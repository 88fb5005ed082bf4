//! `edgefilter stats`: live view (not available yet: it says so and exits 1).

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct StatsArgs {}

/// Runs the command.
///
/// # Errors
/// Any failure, printed by the dispatcher.
pub fn run(_config: &Path, _args: StatsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "`stats` is not available in this version (it comes with the metrics work); `edgefilter xdp status` shows the XDP counters"
    )
}
