//! `edgefilter explain --key KEY: every check in order with pass/fail and the fix`.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

/// Arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {}

/// Runs the command.
///
/// # Errors
/// Any failure, printed by the dispatcher.
pub fn run(_config: &Path, _args: ExplainArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
