//! `edgefilter check-config`: validate and report every problem with its line.

use std::path::Path;
use std::process::ExitCode;

use super::out::outln;
use crate::config::Config;

/// Runs `check-config`.
#[must_use]
pub fn run(path: &Path) -> ExitCode {
    match Config::load_with(path, super::CONFIG_CHECKS) {
        Ok(cfg) => {
            outln!(
                "{}: ok ({} route(s), {} shard(s), xdp {})",
                path.display(),
                cfg.routes.len(),
                cfg.shard_count(),
                if cfg.xdp.enabled { "on" } else { "off" }
            );
            for note in cfg.unused() {
                outln!("{}: note: {note}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(super::EXIT_USAGE)
        }
    }
}
