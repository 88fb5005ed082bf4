//! `edgefilter allow add|remove|list`: the XDP edge allowlist.
//!
//! The effective allowlist is `xdp.allow` from the config plus runtime additions minus runtime
//! removals; the runtime part lives in `allowlist.json` beside the store. When the daemon is up,
//! every subcommand goes through its admin API (`/v1/allowlist`), so the daemon stays the one
//! writer; when it is not, the file is edited here. Either way, when a filter is pinned a change
//! reaches the live map at once (one insert or delete, never a refill). The output is the same
//! on both paths, and so is the audit trail (in the store's audit table): the daemon records
//! what goes through it, the CLI what it does itself.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use ipnet::IpNet;
use serde_json::{Value, json};

use super::out::outln;
use super::{JsonFlag, audit, daemon_api};
use crate::admin::AdminClient;
use crate::config::{Config, parse_cidr};
use crate::store::Action;
use crate::xdp::{AllowFile, Origin, PinDir, allowfile_path, open_pinned};

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum AllowCmd {
    /// Add a CIDR (or a single address) to the allowlist.
    Add {
        /// e.g. 203.0.113.0/24, 2001:db8::/32, 198.51.100.7
        #[arg(value_parser = parse_cidr)]
        cidr: IpNet,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove a CIDR from the allowlist (config entries are masked, not deleted from the file).
    Remove {
        /// A CIDR currently in the allowlist.
        #[arg(value_parser = parse_cidr)]
        cidr: IpNet,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List the allowlist: each CIDR, where it comes from, and whether the live filter has it.
    List {
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// The admin API's allowlist resource.
const ALLOWLIST: &str = "/v1/allowlist";

/// Runs the command.
///
/// # Errors
/// Any failure, printed by the dispatcher.
pub fn run(config: &Path, cmd: AllowCmd) -> anyhow::Result<ExitCode> {
    let cfg = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let path = allowfile_path(&cfg);
    let pins = PinDir::from_env();
    let daemon = daemon_api::discover(&cfg);
    match cmd {
        AllowCmd::Add { cidr, json } => {
            let net = cidr.trunc();
            let added = match &daemon {
                Some(c) => {
                    // The daemon answers with the list after the change: ask what it was before.
                    let before = daemon_list(c, &cfg)?;
                    daemon_api::call(c, "POST", ALLOWLIST, Some(&cidr_body(net)))?;
                    !before.iter().any(|(n, _)| *n == net)
                }
                None => {
                    let added = (|| {
                        let mut file = AllowFile::load(&path)?;
                        let added = file.add(&cfg.xdp.allow, net);
                        if added {
                            file.save(&path)?;
                        }
                        apply_live(&pins, |m| m.allow_insert(net))?;
                        Ok(added)
                    })();
                    record(&cfg, Action::AllowAdd, net, &added);
                    added?
                }
            };
            if json.json {
                outln!(
                    "{}",
                    change_json(Action::AllowAdd, net, added, &path, &pins)
                );
            } else {
                if added {
                    outln!("added {net} (saved in {})", path.display());
                } else {
                    outln!("{net} is already allowed");
                }
                say_live(&pins);
            }
        }
        AllowCmd::Remove { cidr, json } => {
            let net = cidr.trunc();
            let removed = match &daemon {
                Some(c) => {
                    daemon_api::call_found(c, "DELETE", ALLOWLIST, Some(&cidr_body(net)))?.is_some()
                }
                None => {
                    let removed = (|| {
                        let mut file = AllowFile::load(&path)?;
                        let removed = file.remove(&cfg.xdp.allow, net);
                        if removed {
                            file.save(&path)?;
                            apply_live(&pins, |m| m.allow_remove(net).map(|_| ()))?;
                        }
                        Ok(removed)
                    })();
                    record(&cfg, Action::AllowRemove, net, &removed);
                    removed?
                }
            };
            if !removed {
                eprintln!("{net} is not in the allowlist (see `edgefilter allow list`)");
                return Ok(ExitCode::FAILURE);
            }
            if json.json {
                outln!(
                    "{}",
                    change_json(Action::AllowRemove, net, true, &path, &pins)
                );
            } else {
                outln!("removed {net} (saved in {})", path.display());
                say_live(&pins);
            }
        }
        AllowCmd::List { json } => {
            let effective = match &daemon {
                Some(c) => daemon_list(c, &cfg)?,
                None => AllowFile::load(&path)?.effective(&cfg.xdp.allow),
            };
            list(&effective, &pins, json.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Records an allowlist change made here (no daemon) in the audit trail: `Ok(true)` made,
/// `Ok(false)` made for an add (already allowed) and refused for a remove (not listed).
fn record(cfg: &Config, action: Action, net: IpNet, outcome: &anyhow::Result<bool>) {
    let outcome = match outcome {
        Ok(true) => Ok(()),
        Ok(false) if action == Action::AllowAdd => Ok(()),
        Ok(false) => Err(format!("NOT_FOUND: {net} is not in the allowlist.")),
        Err(e) => Err(format!("ERROR: {e:#}")),
    };
    audit::record_local(cfg, action, &net.to_string(), outcome);
}

/// The `--json` of `allow add|remove`: the action (as the audit trail names it), the CIDR,
/// whether the list changed (an add of a CIDR already allowed does not), the file it is saved
/// in, and whether a pinned filter took it at once.
fn change_json(
    action: Action,
    net: IpNet,
    changed: bool,
    file: &std::path::Path,
    pins: &PinDir,
) -> Value {
    json!({
        "action": action.as_str(), "cidr": net.to_string(), "changed": changed,
        "saved_in": file.display().to_string(), "live": pins.has_maps(),
    })
}

/// The body of `POST|DELETE /v1/allowlist`.
fn cidr_body(net: IpNet) -> Value {
    json!({ "cidr": net.to_string() })
}

/// The daemon's effective allowlist, each prefix with its origin (from this config's
/// `xdp.allow`, which is the daemon's).
fn daemon_list(client: &AdminClient, cfg: &Config) -> anyhow::Result<Vec<(IpNet, Origin)>> {
    let v = daemon_api::call(client, "GET", ALLOWLIST, None)?;
    let config: Vec<IpNet> = cfg.xdp.allow.iter().map(IpNet::trunc).collect();
    v["cidrs"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("the daemon's allowlist has no `cidrs`: {v}"))?
        .iter()
        .map(|c| {
            let net = c
                .as_str()
                .and_then(|s| s.parse::<IpNet>().ok())
                .ok_or_else(|| anyhow::anyhow!("the daemon's allowlist holds {c}, not a CIDR"))?
                .trunc();
            let origin = if config.contains(&net) {
                Origin::Config
            } else {
                Origin::Runtime
            };
            Ok((net, origin))
        })
        .collect()
}

/// Applies one change to the pinned map, if a filter is pinned.
fn apply_live(
    pins: &PinDir,
    change: impl FnOnce(&mut crate::xdp::XdpMaps) -> Result<(), crate::xdp::XdpError>,
) -> anyhow::Result<()> {
    if pins.has_maps() {
        change(&mut open_pinned(pins)?)?;
    }
    Ok(())
}

/// Says whether the change reached a live filter (the daemon applies it to the pinned map
/// itself, as [`apply_live`] does here).
fn say_live(pins: &PinDir) {
    if pins.has_maps() {
        outln!("live filter updated");
    } else {
        outln!(
            "no XDP filter is pinned at {}: the change applies when the daemon starts",
            pins.root().display()
        );
    }
}

fn list(effective: &[(IpNet, Origin)], pins: &PinDir, json: bool) -> anyhow::Result<()> {
    let live: Option<Vec<IpNet>> = if pins.has_maps() {
        Some(open_pinned(pins)?.allowlist()?)
    } else {
        None
    };
    let mut rows: Vec<(IpNet, Option<Origin>, Option<bool>)> = effective
        .iter()
        .map(|(n, o)| (*n, Some(*o), live.as_ref().map(|l| l.contains(n))))
        .collect();
    // Live entries nobody asked for (e.g. edited while the daemon was down): shown so they are seen.
    if let Some(l) = &live {
        for n in l {
            if !effective.iter().any(|(e, _)| e == n) {
                rows.push((*n, None, Some(true)));
            }
        }
    }
    if json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, o, l)| serde_json::json!({"cidr": n.to_string(), "origin": o, "live": l}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    outln!("{:<45} {:<8} LIVE", "CIDR", "ORIGIN");
    for (n, o, l) in &rows {
        let origin = match o {
            Some(Origin::Config) => "config",
            Some(Origin::Runtime) => "runtime",
            None => "stale",
        };
        let live = match l {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        outln!("{:<45} {origin:<8} {live}", n.to_string());
    }
    if live.is_none() {
        outln!(
            "(no XDP filter pinned at {}: LIVE unknown)",
            pins.root().display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        assert_eq!(
            parse_cidr("203.0.113.0/24").unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            parse_cidr(" 198.51.100.7 ").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "example.com",
            "2001:db8::/129",
            "1.2.3.4/x",
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(e.contains("is not a CIDR"), "{bad}: {e}");
        }
    }
}
