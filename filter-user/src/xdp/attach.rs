//! Attaching and adopting: the filter program goes onto every configured interface through a
//! pinned bpf_link; a restarted daemon adopts what is pinned, and a changed program replaces the
//! old one on its links atomically (`bpf_link_update`), never by detach-then-attach.

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{Xdp, XdpMode};
use aya_obj::programs::XdpAttachType;
use filter_common::xdp::PROG_FILTER;

use super::object::load_program;
use super::{PinDir, XdpError};
use crate::config::XdpAttach;

/// How the program sits on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachState {
    /// Attached now in native (driver) mode.
    Driver,
    /// Attached now in generic (skb) mode.
    Skb,
    /// Was already attached (pinned link adopted, untouched).
    Adopted,
}

/// One interface the filter is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedInterface {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// How it got there.
    pub state: AttachState,
}

/// What happened to the program itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramState {
    /// Nothing was pinned: loaded and pinned now.
    Fresh,
    /// The pinned program is this build's program: adopted as is.
    Adopted,
    /// The pinned program differed (code or maps): replaced atomically on every pinned link.
    Replaced,
}

/// Loads the filter of `ebpf`, adopts the pinned one when it is the same code on the same maps
/// (else replaces it on its links), and attaches to `interfaces`.
///
/// # Errors
/// Verifier rejection, an unknown interface, an attach or pin failure.
pub fn install(
    ebpf: &mut aya::Ebpf,
    pins: &PinDir,
    interfaces: &[String],
    attach: XdpAttach,
) -> Result<(ProgramState, Vec<AttachedInterface>), XdpError> {
    let wanted: Vec<(String, u32)> = interfaces
        .iter()
        .map(|name| ifindex(name).map(|i| (name.clone(), i)))
        .collect::<Result<_, _>>()?;
    drop_stale_links(pins, &wanted)?;

    let new_prog = load_program(ebpf, PROG_FILTER)?;
    let new_id = identity(new_prog)?;
    let mut pinned = if pins.has_program() {
        Some(
            Xdp::from_pin(pins.prog(), XdpAttachType::Interface)
                .map_err(|e| XdpError::program(format!("opening {}", pins.prog().display()), e))?,
        )
    } else {
        None
    };
    let state = match pinned.as_ref() {
        None => ProgramState::Fresh,
        // Same code on the same maps (map pins may have been recreated under it): adopt.
        Some(p) if identity(p)? == new_id => ProgramState::Adopted,
        Some(_) => ProgramState::Replaced,
    };
    let prog: &mut Xdp = match state {
        ProgramState::Adopted => pinned
            .as_mut()
            .ok_or_else(|| XdpError::NotPinned(pins.root().into()))?,
        ProgramState::Fresh | ProgramState::Replaced => new_prog,
    };
    if state == ProgramState::Replaced {
        for (_, path) in pins.links()? {
            replace_on_link(prog, &path)?;
        }
        std::fs::remove_file(pins.prog())
            .map_err(|e| XdpError::io(format!("removing {}", pins.prog().display()), e))?;
    }
    if state != ProgramState::Adopted {
        prog.pin(pins.prog()).map_err(|e| {
            XdpError::pin(
                format!("pinning the program at {}", pins.prog().display()),
                e,
            )
        })?;
    }

    let mut attached = Vec::new();
    for (name, idx) in wanted {
        let path = pins.link(&name, idx);
        let st = if path.exists() {
            if attach != XdpAttach::Auto {
                // The kernel keeps no mode in a link's info, and changing it means detaching
                // first (a gap in filtering): the pinned link stays as it was attached.
                tracing::info!(
                    interface = %name,
                    "xdp.attach = {attach:?} applies when a link is made: the pinned link on {name} is adopted in the mode it was attached with (`edgefilter xdp detach`, then start, to attach anew)"
                );
            }
            AttachState::Adopted
        } else {
            attach_and_pin(prog, &name, idx, attach, &path)?
        };
        attached.push(AttachedInterface {
            name,
            ifindex: idx,
            state: st,
        });
    }
    Ok((state, attached))
}

/// What makes two loaded programs interchangeable: the instruction tag and the maps used. Read
/// through the program's own fd (`BPF_OBJ_GET_INFO_BY_FD`), which `CAP_BPF` allows; aya's
/// `ProgramInfo::map_ids` would reopen the program by id, which needs `CAP_SYS_ADMIN`.
fn identity(p: &Xdp) -> Result<([u8; 8], Vec<u32>), XdpError> {
    use std::os::fd::AsFd;
    let fd = p
        .fd()
        .map_err(|e| XdpError::program("reading the program's fd", e))?;
    let id = bpf_prog_info::program_identity(fd.as_fd())
        .map_err(|e| XdpError::io("reading the program's tag and map ids", e))?;
    Ok((id.tag, id.map_ids))
}

fn ifindex(name: &str) -> Result<u32, XdpError> {
    nix::net::if_::if_nametoindex(name).map_err(|_| XdpError::UnknownInterface(name.to_string()))
}

/// Unpins (and so detaches) links of interfaces no longer configured or re-created since.
fn drop_stale_links(pins: &PinDir, wanted: &[(String, u32)]) -> Result<(), XdpError> {
    for (suffix, path) in pins.links()? {
        let keep = wanted
            .iter()
            .any(|(name, idx)| suffix == format!("{name}_{idx}"));
        if !keep {
            std::fs::remove_file(&path)
                .map_err(|e| XdpError::io(format!("removing stale link {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// Swaps the program behind a pinned link in one step.
fn replace_on_link(prog: &mut Xdp, path: &std::path::Path) -> Result<(), XdpError> {
    let pinned = PinnedLink::from_pin(path)
        .map_err(|e| XdpError::Link(format!("opening {}: {e}", path.display())))?;
    let link = XdpLink::try_from(FdLink::from(pinned))
        .map_err(|e| XdpError::Link(format!("{} is not an XDP link: {e}", path.display())))?;
    let id = prog.attach_to_link(link).map_err(|e| {
        XdpError::program(format!("replacing the program on {}", path.display()), e)
    })?;
    // The pin keeps the link; our handle may go.
    let _ = prog.take_link(id);
    Ok(())
}

fn attach_and_pin(
    prog: &mut Xdp,
    name: &str,
    idx: u32,
    attach: XdpAttach,
    path: &std::path::Path,
) -> Result<AttachState, XdpError> {
    let tries: &[(XdpMode, AttachState)] = match attach {
        XdpAttach::Driver => &[(XdpMode::Driver, AttachState::Driver)],
        XdpAttach::Skb => &[(XdpMode::Skb, AttachState::Skb)],
        XdpAttach::Auto => &[
            (XdpMode::Driver, AttachState::Driver),
            (XdpMode::Skb, AttachState::Skb),
        ],
    };
    let mut last = None;
    for &(mode, state) in tries {
        match prog.attach_to_if_index(idx, mode) {
            Ok(id) => {
                let link = prog
                    .take_link(id)
                    .map_err(|e| XdpError::program("taking the link", e))?;
                let fd = FdLink::try_from(link).map_err(|_| {
                    XdpError::Link(format!(
                        "{name}: the kernel attached through netlink, not bpf_link; links cannot be pinned (kernel ≥ 5.9 needed)"
                    ))
                })?;
                fd.pin(path)
                    .map_err(|e| XdpError::pin(format!("pinning the link of {name}"), e))?;
                return Ok(state);
            }
            Err(e) => last = Some((mode, e)),
        }
    }
    let (mode, e) = last.ok_or_else(|| XdpError::Link("no attach mode tried".into()))?;
    Err(XdpError::Attach {
        interface: name.to_string(),
        mode: format!("{mode:?}").to_lowercase(),
        detail: attach_hint(&e),
    })
}

fn attach_hint(e: &aya::programs::ProgramError) -> String {
    let text = format!("{e}");
    let busy = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.raw_os_error() == Some(libc::EBUSY));
    if busy || text.contains("busy") {
        format!(
            "{text} (another XDP program is attached there; remove it first, e.g. `ip link set dev <if> xdp off`)"
        )
    } else {
        text
    }
}
