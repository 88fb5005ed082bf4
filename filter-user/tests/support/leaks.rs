//! The suite-wide key-leak scan (SPEC §9: "the full key never appears in any log, metric,
//! error, panic message or admin response after creation"). Every daemon's output and the
//! files in its directory (logs, access logs, the store), every admin response and every CLI
//! output the fixtures see pass through [`scan`]; a full key, or a key-shaped run long enough
//! to be most of one, fails the test that produced it. The answers that legitimately show a new
//! key once (`keys create`, `keys rotate`, `POST /v1/keys`, `POST /v1/keys/{id}/rotate`) go
//! through [`scan_created`], which allows each new key exactly once.
//!
//! With `EDGEFILTER_LEAK_LEDGER` set (`cargo xtask test` sets it), each scan appends one line
//! (`kind<TAB>bytes`) to that file, and xtask prints the totals after the suite, so a run shows
//! how much was scanned, not only that nothing was found.

use std::io::Write;
use std::path::Path;
use std::process::Output;

use filter_common::apikey::{ENV_MAX, PREFIX, is_base62};

/// A key-shaped run of at least this many base62 characters after `ef_<env>_` is a leak: the
/// masked forms show far fewer, a key has 38.
const LEAK_RUN: usize = 16;

/// What kind of output was scanned (the ledger's first column).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A daemon's stdout/stderr.
    DaemonLog,
    /// A file the daemon wrote (access log, store, …).
    DaemonFile,
    /// An admin API response (including `/metrics`).
    Admin,
    /// A CLI command's stdout and stderr.
    Cli,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::DaemonLog => "daemon_log",
            Self::DaemonFile => "daemon_file",
            Self::Admin => "admin_response",
            Self::Cli => "cli_output",
        }
    }
}

/// Every key-shaped run in `bytes`: (offset, length of the whole token).
pub fn key_runs(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let prefix = PREFIX.as_bytes();
    let mut i = 0;
    while let Some(p) = bytes[i..]
        .windows(prefix.len())
        .position(|w| w == prefix)
        .map(|p| p + i)
    {
        let env_start = p + prefix.len();
        let env_len = bytes[env_start..]
            .iter()
            .take(ENV_MAX + 1)
            .take_while(|b| b.is_ascii_lowercase())
            .count();
        let sep = env_start + env_len;
        if (1..=ENV_MAX).contains(&env_len) && bytes.get(sep) == Some(&b'_') {
            let body = bytes[sep + 1..]
                .iter()
                .take_while(|b| is_base62(**b))
                .count();
            if body >= LEAK_RUN {
                found.push((p, sep + 1 + body - p));
            }
        }
        i = p + 1;
    }
    found
}

/// What a leak report may show of a token: its start only.
pub fn masked(token: &[u8]) -> String {
    let shown = token.len().min(PREFIX.len() + ENV_MAX + 4);
    format!("{}…", String::from_utf8_lossy(&token[..shown]))
}

fn ledger(kind: Kind, bytes: usize) {
    let Some(path) = std::env::var_os("EDGEFILTER_LEAK_LEDGER") else {
        return;
    };
    // One short line per append (O_APPEND), so parallel tests never interleave within one.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{}\t{bytes}", kind.label());
    }
}

fn fail(what: &str, bytes: &[u8], runs: &[(usize, usize)]) {
    let shown: Vec<String> = runs
        .iter()
        .map(|&(at, len)| format!("{} at byte {at}", masked(&bytes[at..at + len])))
        .collect();
    let msg = format!(
        "key leak: {what} holds a key-shaped token ({})",
        shown.join(", ")
    );
    // A test already failing keeps its own message (a panic in a drop would abort).
    if std::thread::panicking() {
        eprintln!("{msg}");
    } else {
        panic!("{msg}");
    }
}

/// Fails when `bytes` (from `what`) hold a key.
pub fn scan(kind: Kind, what: &str, bytes: &[u8]) {
    ledger(kind, bytes.len());
    let runs = key_runs(bytes);
    if !runs.is_empty() {
        fail(what, bytes, &runs);
    }
}

/// Like [`scan`] for an answer that shows new keys: each distinct key may appear once.
pub fn scan_created(kind: Kind, what: &str, bytes: &[u8]) {
    ledger(kind, bytes.len());
    let runs = key_runs(bytes);
    let repeated: Vec<(usize, usize)> = runs
        .iter()
        .enumerate()
        .filter(|(i, (at, len))| {
            let token = &bytes[*at..at + len];
            runs[..*i].iter().any(|&(a, l)| &bytes[a..a + l] == token)
        })
        .map(|(_, r)| *r)
        .collect();
    if !repeated.is_empty() {
        fail(what, bytes, &repeated);
    }
}

/// Scans a CLI command's stdout and stderr; `args` says whether it is one that shows a new key
/// (`keys create`, `keys rotate`: its stdout may hold each new key once).
pub fn scan_cli(args: &[&str], out: &Output) {
    let what = format!("`edgefilter {}`", args.join(" "));
    let shows_new_key = matches!(
        args.iter()
            .copied()
            .filter(|a| !a.starts_with('-'))
            .take(2)
            .collect::<Vec<_>>()
            .as_slice(),
        ["keys", "create" | "rotate"]
    );
    if shows_new_key {
        scan_created(Kind::Cli, &format!("{what} stdout"), &out.stdout);
    } else {
        scan(Kind::Cli, &format!("{what} stdout"), &out.stdout);
    }
    scan(Kind::Cli, &format!("{what} stderr"), &out.stderr);
}

/// Scans every regular file under `dir` (recursively), e.g. a daemon's directory after it
/// stopped: its logs, access logs and store.
pub fn scan_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => scan_dir(&path),
            Ok(t) if t.is_file() => {
                if let Ok(bytes) = std::fs::read(&path) {
                    scan(Kind::DaemonFile, &path.display().to_string(), &bytes);
                }
            }
            _ => {}
        }
    }
}
