//! edgefilter's XDP program: allowlist / denylist filtering per SPEC §10.
//!
//! Per packet, in this order: not IPv4/IPv6 → pass (`not_ip`); TCP/UDP destination port not
//! protected → pass (`unprotected`); source on the denylist and not expired → drop
//! (`denylisted`; an IPv6 source is looked up masked to the configured prefix, so one entry bans
//! a whole /64); a TCP SYN over its source's `xdp.syn_rate` (IPv6 per /64) → drop (`syn_rate`);
//! source in the allowlist → pass (`allowlisted`); else drop (`not_allowlisted`). In monitor mode nothing is dropped and drops count as `would_drop`.
//! Every outcome bumps one per-CPU counter. Nothing is logged unless `edgefilter xdp trace`
//! switched tracing on for the packet's source ([`trace`]); off, that check is one array read.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod trace;

use aya_ebpf::maps::LruHashMap;
use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, maps::lpm_trie::Key,
    programs::XdpContext,
};
use filter_common::xdp::{
    Action, MODE_MONITOR, Reason, SynBucket, counter_index, mask_v6, syn_take,
};

use crate::maps::{ALLOW_V4, ALLOW_V6, CONFIG, COUNTERS, DENY_V4, DENY_V6, PORTS, SYN_V4, SYN_V6};
use crate::parse::{L4, Packet};

/// The filter.
#[xdp]
pub fn edgefilter(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, reason) = decide(&ctx);
    if let Some(c) = COUNTERS.get_ptr_mut(counter_index(action, reason)) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
    trace::record(&ctx, action, reason);
    match action {
        Action::Drop => xdp_action::XDP_DROP,
        Action::Pass | Action::WouldDrop => xdp_action::XDP_PASS,
    }
}

/// An empty `XDP_PASS` program: the baseline of the per-frame cost bench.
#[xdp]
pub fn pass_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> (Action, Reason) {
    match parse::classify(ctx) {
        Packet::NotIp => (Action::Pass, Reason::NotIp),
        Packet::V4(src, l4) => {
            if !protected(l4) {
                return (Action::Pass, Reason::Unprotected);
            }
            let denied = DENY_V4
                .get_ptr(&src)
                // SAFETY: the value is plain data; a concurrent update may tear it, which at
                // worst decides on a neighbouring expiry.
                .is_some_and(|e| unsafe { (*e).expires_at_ns } > now());
            if !denied && syn_of(l4) && over_syn_rate(&SYN_V4, &src) {
                return drop_or_count(Reason::SynRate);
            }
            let allowed = !denied && ALLOW_V4.get(&Key::new(32, src)).is_some();
            verdict(denied, allowed)
        }
        Packet::V6(src, l4) => {
            if !protected(l4) {
                return (Action::Pass, Reason::Unprotected);
            }
            // Banned by prefix: the key is the source with its host bits cleared (no loop).
            let prefix = CONFIG.get(0).map_or(128, |c| c.ipv6_deny_prefix);
            let denied = DENY_V6
                .get_ptr(&mask_v6(src, prefix))
                // SAFETY: as above.
                .is_some_and(|e| unsafe { (*e).expires_at_ns } > now());
            let net = [
                src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7],
            ];
            if !denied && syn_of(l4) && over_syn_rate(&SYN_V6, &net) {
                return drop_or_count(Reason::SynRate);
            }
            let allowed = !denied && ALLOW_V6.get(&Key::new(128, src)).is_some();
            verdict(denied, allowed)
        }
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Whether the packet is a TCP SYN opening a connection.
#[inline(always)]
fn syn_of(l4: L4) -> bool {
    matches!(l4, L4::Port { syn: true, .. })
}

/// Takes one SYN from `source`'s allowance in `map`; whether it was over `xdp.syn_rate` (never
/// when no limit is set). Read-modify-write without a lock: CPUs racing on one source may each
/// let one SYN more through, never fewer.
#[inline(always)]
fn over_syn_rate<K>(map: &LruHashMap<K, SynBucket>, source: &K) -> bool {
    let Some(c) = CONFIG.get(0) else {
        return false;
    };
    if c.syn_interval_ns == 0 {
        return false;
    }
    let now = now();
    match map.get_ptr_mut(source) {
        Some(b) => {
            // SAFETY: the value is plain data; a racing CPU may overwrite it (see above).
            let tat = unsafe { (*b).tat_ns };
            match syn_take(tat, now, c.syn_interval_ns, c.syn_window_ns) {
                Some(next) => {
                    // SAFETY: as above.
                    unsafe { (*b).tat_ns = next };
                    false
                }
                None => true,
            }
        }
        None => {
            let next = now + c.syn_interval_ns;
            // A full map evicts its least recently seen source: never an error to act on.
            let _ = map.insert(source, &SynBucket { tat_ns: next }, 0);
            false
        }
    }
}

/// Drop for `reason`, or in monitor mode count it as would-drop and pass.
#[inline(always)]
fn drop_or_count(reason: Reason) -> (Action, Reason) {
    let monitor = CONFIG.get(0).is_some_and(|c| c.mode == MODE_MONITOR);
    if monitor {
        (Action::WouldDrop, reason)
    } else {
        (Action::Drop, reason)
    }
}

/// Whether the L4 header puts the packet under the allowlist.
#[inline(always)]
fn protected(l4: L4) -> bool {
    match l4 {
        L4::Port { port, .. } => PORTS.get(0).is_some_and(|b| {
            let word = b.words[usize::from(port >> 6) & 1023];
            word & (1u64 << (port & 63)) != 0
        }),
        L4::Other => false,
        L4::Unknown => true,
    }
}

#[inline(always)]
fn verdict(denied: bool, allowed: bool) -> (Action, Reason) {
    if allowed {
        return (Action::Pass, Reason::Allowlisted);
    }
    drop_or_count(if denied {
        Reason::Denylisted
    } else {
        Reason::NotAllowlisted
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
