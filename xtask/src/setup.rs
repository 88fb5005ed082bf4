//! `cargo xtask setup`: idempotently installs nightly `rust-src` and a `bpf-linker` built
//! against the nightly toolchain's own libLLVM into `target/tools/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{output, root, run as run_cmd};

/// The cargo-deny release `cargo xtask test` checks the dependency policy with.
const CARGO_DENY_VERSION: &str = "0.20.2";

/// The bpf-linker release we build.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where the pieces are, once set up.
pub struct Tools {
    /// Directory holding `bpf-linker` (prepended to `PATH` for the eBPF build).
    pub bin_dir: PathBuf,
}

/// Makes sure every piece is there; cheap when it already is.
pub fn run() -> Result<Tools> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed (https://rustup.rs); it manages the nightly toolchain the XDP program builds with")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "the nightly toolchain is missing: the XDP program needs it.\n  fix: rustup toolchain install nightly --component rust-src"
        );
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src for nightly");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context("rust-src for nightly is needed to build core for bpfel-unknown-none")?;
    }
    let tools_dir = root().join("target/tools");
    let bin_dir = tools_dir.join("bin");
    let linker = bin_dir.join("bpf-linker");
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let nightly_lib = PathBuf::from(sysroot.trim()).join("lib");
    if !linker_is_current(&linker, &nightly_lib) {
        build_bpf_linker(&tools_dir, &nightly_lib)?;
    }
    Ok(Tools { bin_dir })
}

/// The cargo-deny binary of the pinned release: cargo's own bin directory (`$CARGO_HOME/bin`,
/// kept across checkouts, so a fresh clone on the same machine does not build it again), else
/// installed there once (a few minutes).
pub fn cargo_deny() -> Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set: cannot place cargo-deny")?;
    let bin = cargo_home.join("bin/cargo-deny");
    let current = |bin: &Path| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DENY_VERSION))
    };
    if current(&bin) {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing cargo-deny {CARGO_DENY_VERSION} into {} (a few minutes, once)",
        cargo_home.display()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                &format!("cargo-deny@{CARGO_DENY_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(&cargo_home),
    )
    .context("installing cargo-deny (needs crates.io)")?;
    Ok(bin)
}

/// bpf-linker loads the nightly's libLLVM at run time (rustc provides it when it calls the linker).
fn linker_is_current(linker: &Path, nightly_lib: &Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .env("LD_LIBRARY_PATH", nightly_lib)
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

/// Builds bpf-linker against the nightly's own libLLVM (no system LLVM needed).
fn build_bpf_linker(tools_dir: &Path, lib_dir: &Path) -> Result<()> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV does not name its LLVM version")?
        .to_string();
    let libllvm = std::fs::read_dir(lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")) || n.starts_with(&format!("libLLVM-{major}")))
        })
        .with_context(|| {
            format!("no libLLVM.so for LLVM {major} in {}: the nightly toolchain ships without LLVM's shared library", lib_dir.display())
        })?;
    let prefix = tools_dir.join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("symlinking {} -> {}", link.display(), libllvm.display()))?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        libllvm.display()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}"), "--root"])
            .arg(tools_dir)
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker (needs crates.io and a C++ toolchain)")?;
    Ok(())
}
