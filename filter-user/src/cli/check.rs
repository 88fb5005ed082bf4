//! `edgefilter check-config`: every check `run` makes of the config before it starts (the
//! config's own and [`super::RUN_CHECKS`]: `${ENV}` set, files readable, the TLS key matching its
//! certificate, at least one route, ...), every problem reported with its line; exit 2 on any.
//! Risky values that are valid are printed as warnings, keys nothing reads as notes.

use std::path::Path;
use std::process::ExitCode;

use super::out::outln;
use crate::config::Config;

/// Runs `check-config`.
#[must_use]
pub fn run(path: &Path) -> ExitCode {
    match Config::load_with(path, super::RUN_CHECKS) {
        Ok(cfg) => {
            for warning in cfg.warnings() {
                eprintln!("{}: warning: {warning}", path.display());
            }
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
