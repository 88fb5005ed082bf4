//! `edgefilter xdp attach|detach|status`: the pinned XDP program.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::xdp::{AttachState, PinDir, ProgramState, detach, open_pinned};

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum XdpCmd {
    /// Load (or adopt the pinned) filter, attach it per `[xdp]`, apply mode, ports and the
    /// allowlist, and exit: filtering stays in place (what `run` does at start).
    Attach,
    /// Remove the pinned XDP program from every interface, with its links and maps.
    Detach,
    /// Show the pinned filter: links, mode, protected ports, allowlist size, counters.
    Status,
}

/// Runs the command. Only `attach` reads the config: the pins say everything else.
///
/// # Errors
/// Any failure, printed by the dispatcher.
pub fn run(config: &Path, cmd: XdpCmd) -> anyhow::Result<ExitCode> {
    let pins = PinDir::from_env();
    match cmd {
        XdpCmd::Attach => {
            let cfg = match super::load_config(config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rt = crate::xdp::start(&cfg)?;
            let program = match rt.program_state() {
                ProgramState::Fresh => "loaded",
                ProgramState::Adopted => "adopted (already pinned, untouched)",
                ProgramState::Replaced => "replaced atomically on every link",
            };
            println!("program     {program}");
            for i in rt.interfaces() {
                let how = match i.state {
                    AttachState::Driver => "attached (driver mode)",
                    AttachState::Skb => "attached (skb mode)",
                    AttachState::Adopted => "adopted (already attached)",
                };
                println!("interface   {} (ifindex {}): {how}", i.name, i.ifindex);
            }
            println!("pinned at   {}", rt.pins().root().display());
        }
        XdpCmd::Detach => {
            let removed = detach(&pins)?;
            if removed.is_empty() {
                println!("nothing pinned at {}", pins.root().display());
            } else {
                for p in &removed {
                    println!("removed {}", p.display());
                }
                println!("XDP filter detached");
            }
        }
        XdpCmd::Status => {
            let links = pins.links()?;
            let maps = open_pinned(&pins)?;
            println!("pinned at   {}", pins.root().display());
            let names: Vec<&str> = links.iter().map(|(n, _)| n.as_str()).collect();
            println!(
                "links       {}",
                if names.is_empty() {
                    "none (not attached)".to_string()
                } else {
                    names.join(", ")
                }
            );
            let mode = match maps.mode()? {
                crate::config::XdpMode::Enforce => "enforce",
                crate::config::XdpMode::Monitor => "monitor (nothing dropped)",
            };
            println!("mode        {mode}");
            println!("protected   {:?}", maps.protected_ports()?);
            println!("allowlist   {} prefixes", maps.allowlist()?.len());
            println!("denylist    {} entries", maps.denied()?.len());
            for (action, reason, v) in maps.counters()?.iter() {
                if v.packets > 0 {
                    println!(
                        "  {:<10} {:<16} {:>12} pkts {:>14} bytes",
                        action.label(),
                        reason.label(),
                        v.packets,
                        v.bytes
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
