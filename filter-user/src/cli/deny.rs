//! `edgefilter deny list|add|remove`: the denylist (auto-block's bans and manual ones).
//!
//! When the daemon is up every subcommand goes through its admin API (`/v1/denylist`), so the
//! daemon stays the one writer and enforces the change at once. When it is not, the store is
//! written here (the daemon enforces it when it starts, every fleet host within a second) and,
//! when a filter is pinned, the XDP map too. Either way the change is in the audit trail.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::out::{outln, printable};
use super::{EXIT_USAGE, JsonFlag, audit, daemon_api};
use crate::admin::{ApiError, BanJson};
use crate::config::{Config, parse_duration};
use crate::control::denylist::{BanBook, list_from_store};
use crate::store::bans::source_text;
use crate::store::{self, Action, BanReason};
use crate::xdp::PinDir;

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum DenyCmd {
    /// List the bans in force: source, reason, expiry, and the host that banned it.
    List {
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Ban a source: its packets are dropped by the XDP program (refused at accept without XDP).
    Add {
        /// An address (198.51.100.7, 2001:db8::7) or an IPv6 prefix (2001:db8:0:1::/64); an
        /// IPv6 source is banned by its `autoblock.ipv6_prefix` network.
        source: String,
        /// How long (e.g. 10m, 24h, 7d); default `autoblock.ban`.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Lift the ban of a source.
    Remove {
        /// A banned address or IPv6 prefix (as `deny list` shows it, or an address inside it).
        source: String,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// The admin API's denylist resource.
const DENYLIST: &str = "/v1/denylist";

/// Runs the command.
///
/// # Errors
/// Any failure, printed by the dispatcher.
pub fn run(config: &Path, cmd: DenyCmd) -> anyhow::Result<ExitCode> {
    let cfg = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let daemon = daemon_api::discover(&cfg);
    let book = BanBook::new(&cfg);
    match cmd {
        DenyCmd::List { json } => {
            let bans: Vec<BanJson> = match &daemon {
                Some(c) => serde_json::from_value(daemon_api::call(c, "GET", DENYLIST, None)?)?,
                None => list_from_store(&*store::open(&cfg)?)?,
            };
            print_list(&bans, json.json)?;
        }
        DenyCmd::Add {
            source,
            duration,
            json,
        } => {
            let net = match book.source(&source) {
                Ok(n) => n,
                Err(e) => return Ok(usage(&e)),
            };
            let ttl = duration.unwrap_or_else(|| book.default_ban());
            if ttl.is_zero() {
                return Ok(usage(&ApiError::bad_request("--for must be more than 0")));
            }
            let ban: BanJson = match &daemon {
                Some(c) => {
                    let body = json!({
                        "source": source_text(&net),
                        "for": format!("{}ms", ttl.as_millis()),
                    });
                    serde_json::from_value(daemon_api::call(c, "POST", DENYLIST, Some(&body))?)?
                }
                None => {
                    let made = without_daemon(&cfg, Action::DenyAdd, &source_text(&net), |st| {
                        let mut book = book;
                        book.ban(st, net, BanReason::Manual, ttl)
                    });
                    BanJson::from_ban(&made?, store::bans::unix_now_ms())
                }
            };
            if json.json {
                outln!("{}", serde_json::to_string_pretty(&ban)?);
            } else {
                outln!(
                    "banned {} until {} ({})",
                    ban.source,
                    ban.expires_at,
                    human_secs(ban.expires_in_s)
                );
                say_where(daemon.is_some());
            }
        }
        DenyCmd::Remove { source, json } => {
            let net = match book.source(&source) {
                Ok(n) => n,
                Err(e) => return Ok(usage(&e)),
            };
            let text = source_text(&net);
            let lifted = match &daemon {
                Some(c) => {
                    let body = json!({ "source": text });
                    daemon_api::call_found(c, "DELETE", DENYLIST, Some(&body))?.is_some()
                }
                None => {
                    let done = without_daemon(&cfg, Action::DenyRemove, &text, |st| {
                        let mut book = book;
                        book.lift(st, net)
                    });
                    match done {
                        Ok(()) => true,
                        Err(e) if e.status == 404 => false,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if !lifted {
                eprintln!("{text} is not banned (see `edgefilter deny list`)");
                return Ok(ExitCode::FAILURE);
            }
            if json.json {
                outln!("{}", json!({ "source": text, "lifted": true }));
            } else {
                outln!("lifted the ban of {text}");
                say_where(daemon.is_some());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a denylist change on the store (and the pinned map) here, and records it in the audit
/// trail as the local user.
fn without_daemon<T>(
    cfg: &Config,
    action: Action,
    object: &str,
    change: impl FnOnce(&mut dyn store::KeyStore) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let out = store::open(cfg)
        .map_err(|e| ApiError::store_unavailable(e.to_string()))
        .and_then(|mut st| change(&mut *st));
    let outcome = match &out {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{}: {}", e.code, e.message)),
    };
    audit::record_local(cfg, action, object, outcome);
    out
}

fn usage(e: &ApiError) -> ExitCode {
    eprintln!("error: {}", e.message);
    ExitCode::from(EXIT_USAGE)
}

/// Says where the change took effect.
fn say_where(through_daemon: bool) {
    if through_daemon {
        return;
    }
    let pins = PinDir::from_env();
    if pins.has_maps() {
        outln!("live filter updated; a running daemon picks it up from the store");
    } else {
        outln!(
            "saved in the store: the daemon enforces it when it starts (every fleet host within a second)"
        );
    }
}

fn print_list(bans: &[BanJson], json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(bans)?);
        return Ok(());
    }
    if bans.is_empty() {
        outln!("no source is banned");
        return Ok(());
    }
    outln!(
        "{:<42} {:<10} {:<10} {:<21} HOST",
        "SOURCE",
        "REASON",
        "LEFT",
        "EXPIRES"
    );
    for b in bans {
        outln!(
            "{:<42} {:<10} {:<10} {:<21} {}",
            printable(&b.source),
            printable(&b.reason),
            human_secs(b.expires_in_s),
            printable(&b.expires_at),
            printable(&b.host)
        );
    }
    Ok(())
}

/// `3725` → `1h2m5s`.
fn human_secs(s: i64) -> String {
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_durations() {
        assert_eq!(super::human_secs(0), "0s");
        assert_eq!(super::human_secs(59), "59s");
        assert_eq!(super::human_secs(600), "10m0s");
        assert_eq!(super::human_secs(3725), "1h2m5s");
    }
}
