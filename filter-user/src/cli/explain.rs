//! `edgefilter explain --key KEY|-`: prints the explain engine's report ([`crate::auth::explain`]):
//! every check in order with pass/fail, the reason and the fix, as text or `--json`. `--key -`
//! reads the key from stdin, so it stays out of `ps` and the shell history. Never prints the key.
//!
//! Exit codes: 0 when the request would be allowed, 1 when it would be denied (or the store
//! failed), 2 on a usage or config error (no key on stdin included).

use std::io::{BufRead, Read};
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::daemon_api::{self, segment};
use super::load_config;
use super::out::{out, outln, printable};
use crate::auth::explain::{ExplainError, Explanation, Mark, explain_held};
use crate::store::{self, KeyRef};

/// Arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The key to explain, or `-` to read it from stdin (one line; only its line ending is
    /// removed). Never printed.
    #[arg(long)]
    key: String,
    /// Client address to check against the key's networks.
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Request method (checked as the proxy's HTTP parser reads it; routes have no method rules).
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request target, path and optional query (checked by the proxy's path rules; selects the
    /// route and its scopes).
    #[arg(long)]
    path: Option<String>,
    /// Print the checks and the verdict as JSON.
    #[arg(long)]
    json: bool,
}

/// The longest line `--key -` reads: far beyond any key, so a wrong pipe is not read forever.
const MAX_STDIN_KEY: u64 = 4096;

/// Reads the key from one line of `input`: only the line's `\n` is removed, so a key with any
/// other whitespace (a `\r` included) is diagnosed as the proxy would see it.
fn key_from(input: impl Read) -> Result<String, String> {
    let mut line = Vec::new();
    std::io::BufReader::new(input.take(MAX_STDIN_KEY))
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading the key from stdin: {e}"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.is_empty() {
        return Err("--key -: stdin holds no key".into());
    }
    // A key is ASCII: anything else is kept (lossily) for the format check to name.
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Runs the command: exit 0 when the request would be allowed, 1 when denied, 2 on usage.
///
/// # Errors
/// Store failures.
pub fn run(config: &Path, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let key = if args.key == "-" {
        match key_from(std::io::stdin().lock()) {
            Ok(k) => k,
            Err(m) => {
                eprintln!("error: {m}");
                return Ok(ExitCode::from(super::EXIT_USAGE));
            }
        }
    } else {
        args.key
    };
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = store::open(&cfg)?;
    // A running daemon holds part of a usage-limited key's credits: ask it what is left.
    let api = daemon_api::discover(&cfg);
    let held = |id: &str| -> u64 {
        let Some(api) = &api else { return 0 };
        let path = format!("/v1/keys/{}", segment(id));
        let live = daemon_api::call(api, "GET", &path, None).ok();
        let live = live.and_then(|v| v["credits_remaining"].as_u64());
        let stored = store.find_key(KeyRef::Id(id)).ok().flatten();
        let stored = stored.and_then(|v| v.key.credits).map(|c| c.remaining);
        match (live, stored) {
            (Some(live), Some(stored)) => live.saturating_sub(stored),
            _ => 0,
        }
    };
    let explained = match explain_held(
        &cfg,
        &*store,
        &key,
        args.ip,
        &args.method,
        args.path.as_deref(),
        &held,
    ) {
        Ok(e) => e,
        Err(ExplainError::Rules(e)) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
        Err(ExplainError::Store(e)) => return Err(e.into()),
    };
    if args.json {
        outln!("{}", explained.to_json());
    } else {
        out!("{}", to_text(&explained));
    }
    Ok(if explained.verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The text `edgefilter explain` prints.
#[must_use]
pub fn to_text(e: &Explanation) -> String {
    let mut out = format!("{}\n", printable(&e.header));
    for c in &e.checks {
        let name = c.name;
        let detail = printable(&c.detail);
        match &c.mark {
            Mark::Pass => out.push_str(&format!("  PASS  {name:<12} {detail}\n")),
            Mark::Skip => out.push_str(&format!("  ----  {name:<12} {detail}\n")),
            Mark::Fail { code, first } => {
                let answer = if *first { "  <- the answer" } else { "" };
                let rule = c
                    .rule
                    .map_or_else(String::new, |r| format!(" ({})", r.as_str()));
                out.push_str(&format!(
                    "  FAIL  {name:<12} {code} {}{rule}{answer}\n",
                    code.status()
                ));
                out.push_str(&format!("        {:<12} {detail}\n", ""));
                if let Some(f) = &c.fix {
                    out.push_str(&format!("        {:<12} fix: {}\n", "", printable(f)));
                }
            }
        }
    }
    if !e.verdict_line.is_empty() {
        out.push_str(&printable(&e.verdict_line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::key_from;

    #[test]
    fn stdin_loses_only_its_line_ending() {
        assert_eq!(key_from(&b"ef_live_abc\n"[..]).unwrap(), "ef_live_abc");
        assert_eq!(key_from(&b"ef_live_abc"[..]).unwrap(), "ef_live_abc");
        assert_eq!(key_from(&b"ef_live_abc \n"[..]).unwrap(), "ef_live_abc ");
        assert_eq!(
            key_from(&b" ef_live_abc\r\n"[..]).unwrap(),
            " ef_live_abc\r"
        );
        assert_eq!(
            key_from(&b"ef_live_abc\nsecond\n"[..]).unwrap(),
            "ef_live_abc"
        );
        assert!(key_from(&b"\n"[..]).is_err());
        assert!(key_from(&b""[..]).is_err());
    }
}
