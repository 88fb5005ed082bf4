//! `cargo xtask`: sets up the toolchain pieces, builds the XDP program and the binary, runs the
//! daemon, the tests and the benches. Every spawned command carries context in its error.

mod bench;
mod build;
mod demo;
mod flood;
mod fuzz;
mod propagation;
mod setup;
mod soak;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// edgefilter's build driver.
#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src and bpf-linker (built into target/tools).
    Setup,
    /// Build the XDP program (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Build everything (XDP program, then the edgefilter binary, release).
    Build,
    /// Build and run the daemon with examples/edgefilter.toml and a demo upstream.
    Run {
        /// Config to run with.
        #[arg(long, default_value = "examples/edgefilter.toml")]
        config: String,
        /// Pass --no-xdp to the daemon.
        #[arg(long)]
        no_xdp: bool,
    },
    /// The whole test suite: fmt, cargo-deny, clippy, unit, integration (netns, XDP, TLS,
    /// PostgreSQL).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks: XDP per-packet cost, decision benches, proxy load vs peers, revocation
    /// propagation, a banned source flooding the proxy (`--flood-only`).
    Bench(bench::BenchArgs),
    /// Soak: 10 minutes at half the peak load with a revocation every second; checks every
    /// answer, the daemon's RSS, and that no revoked key is let through.
    Soak(soak::SoakArgs),
    /// Coverage-guided fuzzing of the untrusted-input parsers (nightly + cargo-fuzz).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all of them).
        targets: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run().map(|_| ()),
        Cmd::BuildEbpf => {
            let tools = setup::run()?;
            build::ebpf(&tools)
        }
        Cmd::Build => {
            let tools = setup::run()?;
            build::all(&tools)
        }
        Cmd::Run { config, no_xdp } => {
            let tools = setup::run()?;
            build::all(&tools)?;
            demo::run(&config, no_xdp)
        }
        Cmd::Test { args } => {
            let tools = setup::run()?;
            let deny = setup::cargo_deny()?;
            build::ebpf(&tools)?;
            build::test(&deny, &args)
        }
        Cmd::Bench(args) => {
            let tools = setup::run()?;
            build::all(&tools)?;
            bench::run(&args)
        }
        Cmd::Soak(args) => {
            let tools = setup::run()?;
            build::all(&tools)?;
            soak::run(&args)
        }
        Cmd::Fuzz { seconds, targets } => fuzz::run(&targets, seconds),
    }
}
