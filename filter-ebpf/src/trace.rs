//! `edgefilter xdp trace`: one aya-log event per decision on a packet whose source matches
//! [`TRACE`], until the entry's expiry (see `filter_common::trace`).
//!
//! Off, [`record`] costs one array read (the verifier inlines array lookups) and one compare;
//! everything else lives in [`emit`], a separate BPF function the off path never calls.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use aya_log_ebpf::info;
use filter_common::trace::{
    FAMILY_NONE, FAMILY_V4, FAMILY_V6, NO_PORT, TRACE_TARGET, TraceConfig, v4_mapped,
};
use filter_common::xdp::{Action, Reason};

use crate::maps::TRACE;
use crate::parse::{L4, Packet};

/// One decision as [`emit`] takes it: every field written (the verifier refuses to read stack
/// bytes nobody wrote, such as the port of a packet without one).
#[repr(C)]
struct Decision {
    /// The source, an IPv4 one IPv4-mapped; all zero for a packet that is not IP.
    src: [u8; 16],
    family: u32,
    dport: u32,
    action: u32,
    reason: u32,
}

/// Logs the decision on `packet` when tracing is on and its source matches.
#[inline(always)]
pub fn record(ctx: &XdpContext, packet: &Packet, action: Action, reason: Reason) {
    let Some(cfg) = TRACE.get(0) else {
        return;
    };
    if !cfg.is_on() {
        return;
    }
    let (family, src, l4) = match *packet {
        Packet::NotIp => (FAMILY_NONE, [0; 16], L4::Other),
        Packet::V4(src, l4) => (FAMILY_V4, v4_mapped(src), l4),
        Packet::V6(src, l4) => (FAMILY_V6, src, l4),
    };
    let dport = match l4 {
        L4::Port(p) => u32::from(p),
        L4::Other | L4::Unknown => NO_PORT,
    };
    let decision = Decision {
        src,
        family,
        dport,
        action: action as u32,
        reason: reason as u32,
    };
    emit(ctx, cfg, &decision);
}

/// The traced path: source match, expiry, the event.
#[inline(never)]
fn emit(ctx: &XdpContext, cfg: &TraceConfig, d: &Decision) {
    let s = d.src;
    let matches = match d.family {
        FAMILY_V4 => cfg.matches_v4([s[12], s[13], s[14], s[15]]),
        FAMILY_V6 => cfg.matches_v6(s),
        _ => cfg.matches_non_ip(),
    };
    // SAFETY: a helper without arguments.
    if !matches || unsafe { bpf_ktime_get_ns() } >= cfg.expires_at_ns {
        return;
    }
    info!(
        ctx,
        target: TRACE_TARGET,
        "family={} src={:i} dport={} action={} reason={}",
        d.family,
        s,
        d.dport,
        d.action,
        d.reason
    );
}
