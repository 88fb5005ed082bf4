//! Builds: the XDP object (nightly, `bpfel-unknown-none`), the release binary, and the tests.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::setup::Tools;
use crate::util::{root, run};

/// Where the XDP object lands; `filter-user/build.rs` embeds it from here.
pub const EBPF_TARGET_DIR: &str = "target/ebpf";

/// Builds the XDP program.
pub fn ebpf(tools: &Tools) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools.bin_dir.clone()];
    paths.extend(std::env::split_paths(&path));
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    run(Command::new("cargo")
        .current_dir(root())
        .args(["+nightly", "build", "--package", "filter-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .env("CARGO_TARGET_DIR", root().join(EBPF_TARGET_DIR))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("PATH", std::env::join_paths(paths)?))
    .context("building the XDP program")
}

/// Builds the XDP program and then the release binary that embeds it.
pub fn all(tools: &Tools) -> Result<()> {
    ebpf(tools)?;
    run(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--release"]))
    .context("building edgefilter")
}

/// The features every check and test builds with (the fuzz entry points, for the corpus replay).
const TEST_FEATURES: &str = "filter-user/fuzzing";

/// Checks formatting, the dependency policy and lints, then runs every test. Privileged test
/// binaries serialise their own tests.
pub fn test(deny: &Path, extra: &[String]) -> Result<()> {
    run(Command::new("cargo")
        .current_dir(root())
        .args(["fmt", "--all", "--check"]))
    .context("formatting (run `cargo fmt --all` to fix)")?;
    // `advisories` needs the RustSec database from the network; licenses, bans and sources are
    // checked offline against deny.toml. Errors only: the duplicate-version warnings are long
    // trees (`cargo deny check bans` shows them).
    run(Command::new(deny)
        .current_dir(root())
        .args(["--all-features", "--log-level", "error", "check"])
        .args(["bans", "licenses", "sources"]))
    .context("cargo deny (policy in deny.toml)")?;
    run(Command::new("cargo").current_dir(root()).args([
        "clippy",
        "--all-targets",
        "--features",
        TEST_FEATURES,
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy")?;
    // Every daemon log, admin response and CLI output the tests see is scanned for keys; the
    // scans are counted in this ledger, summed after the suite.
    let ledger = root().join("target").join("leak-scan.tsv");
    let _ = std::fs::remove_file(&ledger);
    run(Command::new("cargo")
        .current_dir(root())
        .env("EDGEFILTER_LEAK_LEDGER", &ledger)
        .args(["test", "--features", TEST_FEATURES])
        .args(extra))
    .context("tests")?;
    leak_summary(&ledger, extra.is_empty())
}

/// Prints what the key-leak scan covered (each scan that found a key already failed its test);
/// a whole-suite run that scanned nothing means the scan is not wired in, and fails.
fn leak_summary(ledger: &Path, whole_suite: bool) -> Result<()> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut kinds: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for line in text.lines() {
        if let Some((kind, bytes)) = line.split_once('\t') {
            let e = kinds.entry(kind).or_default();
            e.0 += 1;
            e.1 += bytes.parse::<u64>().unwrap_or(0);
        }
    }
    let parts: Vec<String> = kinds
        .iter()
        .map(|(k, (n, b))| format!("{n} {k} ({b} bytes)"))
        .collect();
    println!("key-leak scan: no key found in {}", parts.join(", "));
    if whole_suite
        && !["daemon_log", "admin_response", "cli_output"]
            .iter()
            .all(|k| kinds.contains_key(k))
    {
        anyhow::bail!("the key-leak scan saw no daemon log, admin response or CLI output");
    }
    Ok(())
}
