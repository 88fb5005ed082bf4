//! `cargo xtask bench`: XDP per-packet cost, decision benches, proxy load against peers.

use anyhow::{Result, bail};

/// Bench options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs the benches.
pub fn run(_args: &BenchArgs) -> Result<()> {
    bail!("benches not built yet")
}
