//! The `edgefilter` command line: argument definitions and dispatch to one module per command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DEFAULT_PATH};

pub mod allow;
pub mod audit;
pub mod check;
pub mod daemon_api;
pub mod deny;
pub mod explain;
pub mod keys;
pub mod name_arg;
pub mod out;
pub mod stats;
pub mod trace;
pub mod users;
pub mod xdp;

/// Exit code for usage and config errors (SPEC §3).
pub const EXIT_USAGE: u8 = 2;

/// edgefilter — an eBPF-assisted edge filter and API-key checking proxy.
#[derive(Debug, Parser)]
#[command(name = "edgefilter", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "EDGEFILTER_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (XDP + proxy + admin API).
    Run {
        /// Run without the kernel half (no XDP), e.g. as non-root during development.
        #[arg(long)]
        no_xdp: bool,
        /// Replace the daemon running with this config's store and addresses (an upgrade): it
        /// hands over its listening sockets, then drains and exits once this one serves.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate the config; print every error with its line; exit 2 on error.
    CheckConfig,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Suspend, activate or delete users.
    #[command(subcommand)]
    Users(users::UsersCmd),
    /// Manage the XDP edge allowlist.
    #[command(subcommand)]
    Allow(allow::AllowCmd),
    /// Manage the XDP denylist (auto-block's bans and manual ones).
    #[command(subcommand)]
    Deny(deny::DenyCmd),
    /// Run every check for a key in order and print each with pass/fail and the fix.
    Explain(explain::ExplainArgs),
    /// The audit trail: who changed what, when, and how it ended.
    Audit(audit::AuditArgs),
    /// Live view of requests, XDP counters and top denials.
    Stats(stats::StatsArgs),
    /// Manage the pinned XDP program.
    #[command(subcommand)]
    Xdp(xdp::XdpCmd),
}

/// `--json` flag shared by listing commands.
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The checks the layers above `config` add to its validation.
pub const CONFIG_CHECKS: &[crate::config::LayerCheck] = crate::daemon::CONFIG_CHECKS;

/// What `run` checks before it starts, `check-config` checks too.
pub const RUN_CHECKS: &[crate::config::LayerCheck] = crate::daemon::RUN_CHECKS;

/// Loads the config or prints every problem and returns the usage exit code.
///
/// # Errors
/// The exit code to use when the config cannot be loaded.
pub fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    load_config_with(path, CONFIG_CHECKS)
}

/// [`load_config`] with `checks` ([`RUN_CHECKS`] for `run`).
///
/// # Errors
/// The exit code to use when the config cannot be loaded (2, SPEC §3).
pub fn load_config_with(
    path: &std::path::Path,
    checks: &[crate::config::LayerCheck],
) -> Result<Config, ExitCode> {
    Config::load_with(path, checks).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_USAGE)
    })
}

/// Runs the parsed command line.
#[must_use]
pub fn dispatch(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::CheckConfig => return check::run(&cli.config),
        Command::Run { no_xdp, takeover } => {
            let cfg = match load_config_with(&cli.config, RUN_CHECKS) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = crate::daemon::RunOptions {
                no_xdp,
                takeover,
                config: std::path::absolute(&cli.config).unwrap_or(cli.config),
            };
            crate::daemon::run(cfg, &opts)
        }
        Command::Keys(cmd) => keys::run(&cli.config, cmd),
        Command::Users(cmd) => users::run(&cli.config, cmd),
        Command::Allow(cmd) => allow::run(&cli.config, cmd),
        Command::Deny(cmd) => deny::run(&cli.config, cmd),
        Command::Explain(args) => explain::run(&cli.config, args),
        Command::Audit(args) => audit::run(&cli.config, args),
        Command::Stats(args) => stats::run(&cli.config, args),
        Command::Xdp(cmd) => xdp::run(&cli.config, cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
