//! `edgefilter users suspend|activate|delete`.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Placeholder until this command lands.
    #[command(hide = true)]
    Pending,
}

/// Runs the command.
///
/// # Errors
/// Any failure, printed by the dispatcher.
pub fn run(_config: &Path, _cmd: UsersCmd) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
