//! `cargo xtask run`: a demo upstream plus the daemon with the example config.

use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{root, run as run_cmd};

/// Starts the daemon in the foreground.
pub fn run(config: &str, no_xdp: bool) -> Result<()> {
    let root = root();
    std::fs::create_dir_all(root.join("var")).context("creating ./var")?;
    let mut cmd = Command::new(root.join("target/release/edgefilter"));
    cmd.current_dir(&root).args(["run", "--config", config]);
    if no_xdp {
        cmd.arg("--no-xdp");
    }
    run_cmd(&mut cmd)
}
