//! `edgefilter audit [--since T] [--limit N] [--json]`: the audit trail, read from the store
//! directly (reading is safe beside a running daemon, and the output is the same whoever made
//! the changes). Also who the CLI is in that trail ([`local_actor`]) and how a change made
//! without the daemon is recorded ([`change`], [`record_local`]); through the daemon, the
//! daemon records it.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::out::{outln, printable};
use super::{EXIT_USAGE, JsonFlag, load_config};
use crate::admin::AuditJson;
use crate::config::Config;
use crate::store::audit::{self, MAX_LIMIT};
use crate::store::timefmt::{parse_since, rfc3339};
use crate::store::{self, Action, Actor, AuditEntry, KeyStore};

/// Arguments.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only changes since T: an RFC 3339 time, or a duration back from now (`1h`: the last hour).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// At most N entries, the newest (default 1000).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// JSON output: an array of `{at, actor, action, object, result, host}`.
    #[command(flatten)]
    json: JsonFlag,
}

/// Runs the command.
///
/// # Errors
/// Store failures, printed by the dispatcher.
pub fn run(config: &Path, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let since = match args
        .since
        .as_deref()
        .map(|s| parse_since(s, store::unix_now()))
    {
        Some(Err(m)) => return Ok(usage(&format!("--since: {m}"))),
        Some(Ok(t)) => Some(t),
        None => None,
    };
    if args.limit.is_some_and(|n| !(1..=MAX_LIMIT).contains(&n)) {
        return Ok(usage(&format!("--limit must be from 1 to {MAX_LIMIT}")));
    }
    let entries = store::open(&cfg)?.audit_since(since, audit::limit(args.limit))?;
    if args.json.json {
        let arr: Vec<AuditJson> = entries.iter().map(AuditJson::from_entry).collect();
        outln!("{}", serde_json::to_string(&arr)?);
    } else {
        print_table(&entries);
    }
    Ok(ExitCode::SUCCESS)
}

/// A usage error: printed, exit 2.
fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(EXIT_USAGE)
}

/// Aligned columns: time, actor, action, object, result; every value printable.
fn print_table(entries: &[AuditEntry]) {
    let header = ["TIME", "ACTOR", "ACTION", "OBJECT", "RESULT"];
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                rfc3339(e.at),
                printable(&e.actor).into_owned(),
                printable(&e.action).into_owned(),
                printable(&e.object).into_owned(),
                printable(&e.result).into_owned(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate().take(4) {
            s.push_str(cell);
            let pad = width[i] - cell.chars().count() + 2;
            s.extend(std::iter::repeat_n(' ', pad));
        }
        s.push_str(cells[4]);
        outln!("{s}");
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
}

/// Who runs this command, for the audit trail: `cli:` and the effective user's name, with the
/// user `sudo` was run by (`cli:root (sudo alice)`).
#[must_use]
pub fn local_actor() -> Actor {
    let uid = nix::unistd::geteuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid-{uid}"), |u| u.name);
    let sudo = std::env::var("SUDO_USER").ok();
    Actor::cli(&name, sudo.as_deref())
}

/// Runs a change on the store directly (no daemon) as the local user: a change made is
/// recorded by the store in its transaction, a refused one right after (see
/// [`audit::audited`]).
///
/// # Errors
/// Whatever `op` returns.
pub fn change<T>(
    st: &mut dyn KeyStore,
    action: Action,
    object: &dyn Fn(&dyn KeyStore) -> String,
    now: i64,
    op: impl FnOnce(&mut dyn KeyStore) -> store::Result<T>,
) -> store::Result<T> {
    audit::audited(st, &local_actor(), action, object, now, op)
}

/// Records a change made without the daemon outside the store (the allowlist file and map) as
/// the local user: `Ok` as made, `Err` with what refused it. A store that cannot be opened or
/// written is reported on stderr; the change itself stands.
pub fn record_local(cfg: &Config, action: Action, object: &str, outcome: Result<(), String>) {
    let now = store::unix_now();
    let by = local_actor();
    let entry = match &outcome {
        Ok(()) => AuditEntry::ok(now, &by, action, object),
        Err(e) => AuditEntry::failed(now, &by, action, object, e),
    };
    let recorded = store::open(cfg).and_then(|mut st| st.record_audit(&entry));
    if let Err(e) = recorded {
        eprintln!("warning: the change could not be recorded in the audit trail: {e}");
    }
}
