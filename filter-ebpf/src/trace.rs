//! `edgefilter xdp trace`: one aya-log event per decision on a packet whose source matches
//! [`TRACE`], until the entry's expiry (see `filter_common::trace`).
//!
//! Off, [`record`] costs one array read (the verifier inlines array lookups) and one compare.
//! Everything else lives in [`emit`], a separate BPF function the off path never calls, which
//! parses the packet's source again: keeping the first parse's source alive until the end of
//! the program, or the traced path's code inside it, would cost every packet stack spills,
//! traced or not.

use aya_ebpf::{bindings::xdp_md, helpers::bpf_ktime_get_ns, programs::XdpContext};
use aya_log_ebpf::info;
use filter_common::trace::{
    FAMILY_NONE, FAMILY_V4, FAMILY_V6, NO_PORT, TRACE_TARGET, TraceConfig, v4_mapped,
};
use filter_common::xdp::{Action, Reason};

use crate::maps::TRACE;
use crate::parse::{self, L4, Packet};

/// Logs the decision on the packet in `ctx` when tracing is on and its source matches.
#[inline(always)]
pub fn record(ctx: &XdpContext, action: Action, reason: Reason) {
    let Some(cfg) = TRACE.get(0) else {
        return;
    };
    if cfg.is_on() {
        emit(ctx.ctx, cfg, action as u32, reason as u32);
    }
}

/// The traced path: the source again, its match, the expiry, the event.
#[inline(never)]
fn emit(ctx: *mut xdp_md, cfg: &TraceConfig, action: u32, reason: u32) {
    // Through `black_box`, the context arrives as the pointer it is: LLVM would otherwise pass
    // its loaded `data`/`data_end` fields instead, as numbers the verifier no longer takes for
    // packet pointers.
    let ctx = &XdpContext::new(core::hint::black_box(ctx));
    let (family, src, l4) = match parse::classify(ctx) {
        Packet::NotIp if cfg.matches_non_ip() => (FAMILY_NONE, [0; 16], L4::Other),
        Packet::V4(src, l4) if cfg.matches_v4(src) => (FAMILY_V4, v4_mapped(src), l4),
        Packet::V6(src, l4) if cfg.matches_v6(src) => (FAMILY_V6, src, l4),
        _ => return,
    };
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() } >= cfg.expires_at_ns {
        return;
    }
    // Written whatever the protocol: the verifier refuses a port nobody wrote.
    let dport = match l4 {
        L4::Port { port, .. } => u32::from(port),
        L4::Other | L4::Unknown => NO_PORT,
    };
    info!(
        ctx,
        target: TRACE_TARGET,
        "family={} src={:i} dport={} action={} reason={}",
        family,
        src,
        dport,
        action,
        reason
    );
}
