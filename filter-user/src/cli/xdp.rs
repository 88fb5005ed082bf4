//! `edgefilter xdp attach|detach|status|trace`: the pinned XDP program (`trace`: [`super::trace`]).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::out::outln;
use crate::xdp::{AttachState, PinDir, ProgramState, TraceSwitch, XdpError, detach, open_pinned};

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum XdpCmd {
    /// Load (or adopt the pinned) filter, attach it per `[xdp]`, apply mode, ports and the
    /// allowlist, and exit: filtering stays in place (what `run` does at start).
    Attach,
    /// Remove the pinned XDP program from every interface, with its links and maps.
    Detach,
    /// Show the pinned filter: links, mode, protected ports, allowlist size, trace, counters.
    Status,
    /// For a bounded time, print the filter's decision (verdict and reason) for each packet
    /// from matching sources; tracing is switched off again at the end or on Ctrl-C.
    Trace(super::trace::TraceArgs),
}

/// Runs the command. Only `attach` reads the config: the pins say everything else.
///
/// # Errors
/// Any failure, printed by the dispatcher.
pub fn run(config: &Path, cmd: XdpCmd) -> anyhow::Result<ExitCode> {
    let pins = PinDir::from_env();
    match cmd {
        XdpCmd::Trace(args) => return super::trace::run(&args),
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
            outln!("program     {program}");
            for i in rt.interfaces() {
                let how = match i.state {
                    AttachState::Driver => "attached (driver mode)",
                    AttachState::Skb => "attached (skb mode)",
                    AttachState::Adopted => "adopted (already attached)",
                };
                outln!("interface   {} (ifindex {}): {how}", i.name, i.ifindex);
            }
            outln!("pinned at   {}", rt.pins().root().display());
        }
        XdpCmd::Detach => {
            let removed = detach(&pins)?;
            if removed.is_empty() {
                outln!("nothing pinned at {}", pins.root().display());
            } else {
                for p in &removed {
                    outln!("removed {}", p.display());
                }
                outln!("XDP filter detached");
            }
        }
        XdpCmd::Status => {
            let links = pins.links()?;
            let maps = open_pinned(&pins)?;
            outln!("pinned at   {}", pins.root().display());
            let names: Vec<&str> = links.iter().map(|(n, _)| n.as_str()).collect();
            outln!(
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
            outln!("mode        {mode}");
            outln!("protected   {:?}", maps.protected_ports()?);
            outln!("allowlist   {} prefixes", maps.allowlist()?.len());
            outln!("denylist    {} entries", maps.denied()?.len());
            let trace = match TraceSwitch::from_pins(&pins) {
                Ok(switch) => match switch.remaining()? {
                    Some(left) => format!("on for {} s more", left.as_secs() + 1),
                    None => "off".to_string(),
                },
                Err(XdpError::NoTrace(_)) => "not in the pinned program".to_string(),
                Err(e) => return Err(e.into()),
            };
            outln!("trace       {trace}");
            for (action, reason, v) in maps.counters()?.iter() {
                if v.packets > 0 {
                    outln!(
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
