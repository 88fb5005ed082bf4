//! `edgefilter stats: live view`.

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
    anyhow::bail!("not built yet")
}
