//! `edgefilter explain --key KEY`: prints the explain engine's report ([`crate::auth::explain`]):
//! every check in order with pass/fail, the reason and the fix. Never prints the key.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::load_config;
use super::out::out;
use crate::auth::explain::{ExplainError, Explanation, Mark, explain};
use crate::store;

/// Arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The key to explain (read from the command line; never printed).
    #[arg(long)]
    key: String,
    /// Client address to check against the key's networks.
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path (selects the route and its scopes).
    #[arg(long)]
    path: Option<String>,
}

/// Runs the command: exit 0 when the request would be allowed, 1 when denied, 2 on usage.
///
/// # Errors
/// Store failures.
pub fn run(config: &Path, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = store::open(&cfg)?;
    let explained = match explain(
        &cfg,
        &*store,
        &args.key,
        args.ip,
        &args.method,
        args.path.as_deref(),
    ) {
        Ok(e) => e,
        Err(ExplainError::Rules(e)) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
        Err(ExplainError::Store(e)) => return Err(e.into()),
    };
    out!("{}", to_text(&explained));
    Ok(if explained.verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The text `edgefilter explain` prints.
#[must_use]
pub fn to_text(e: &Explanation) -> String {
    let mut out = format!("{}\n", e.header);
    for c in &e.checks {
        let name = c.name;
        match &c.mark {
            Mark::Pass => out.push_str(&format!("  PASS  {name:<12} {}\n", c.detail)),
            Mark::Skip => out.push_str(&format!("  ----  {name:<12} {}\n", c.detail)),
            Mark::Fail { code, first } => {
                let answer = if *first { "  <- the answer" } else { "" };
                out.push_str(&format!(
                    "  FAIL  {name:<12} {code} {}{answer}\n",
                    code.status()
                ));
                out.push_str(&format!("        {:<12} {}\n", "", c.detail));
                if let Some(f) = &c.fix {
                    out.push_str(&format!("        {:<12} fix: {f}\n", ""));
                }
            }
        }
    }
    if !e.verdict_line.is_empty() {
        out.push_str(&e.verdict_line);
        out.push('\n');
    }
    out
}
