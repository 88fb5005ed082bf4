//! `cargo xtask fuzz`: coverage-guided fuzzing of the parsers that read untrusted bytes (and of
//! the config parser and the admin API's JSON bodies)
//! (`fuzz/`, entry points in `filter-user/src/fuzz.rs`) with cargo-fuzz on nightly. cargo-fuzz
//! is installed into `target/tools/` when missing. Each target runs for a bounded time from the
//! checked-in seeds (`fuzz/corpus/<target>/`, read only) plus a working corpus of its own
//! (`target/fuzz-corpus/<target>/`, kept between runs); a crash stops the run and names the
//! input libFuzzer saved under `fuzz/artifacts/`.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{root, run as run_cmd};

/// The targets, as named in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 6] = [
    "request_head",
    "response_head",
    "chunked_body",
    "api_key",
    "config",
    "admin_json",
];

/// The cargo-fuzz release that builds with the nightly toolchain here.
const CARGO_FUZZ: &str = "cargo-fuzz@0.13.1";

/// Fuzzes each of `targets` (all when empty) for `seconds`.
pub fn run(targets: &[String], seconds: u64) -> Result<()> {
    let root = root();
    let tools = root.join("target/tools");
    let bin = tools.join("bin");
    if !bin.join("cargo-fuzz").exists() {
        eprintln!("xtask: installing {CARGO_FUZZ} into {}", tools.display());
        run_cmd(
            Command::new("cargo")
                .args(["install", CARGO_FUZZ, "--locked", "--root"])
                .arg(&tools),
        )
        .context("installing cargo-fuzz")?;
    }
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}; the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let mut path = OsString::from(&bin);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    for target in chosen {
        let work = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        run_cmd(
            Command::new("cargo")
                .current_dir(&root)
                .env("PATH", &path)
                .args(["+nightly", "fuzz", "run", "-O", target])
                .arg(&work)
                .arg(root.join("fuzz/corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={seconds}")),
        )
        .with_context(|| {
            format!(
                "fuzz target {target} failed: the input that broke it is in fuzz/artifacts/{target}/ \
                 (replay: cargo +nightly fuzz run {target} <file>)"
            )
        })?;
    }
    Ok(())
}
