//! `edgefilter xdp trace` in the real program through `BPF_PROG_TEST_RUN`: with tracing off
//! every verdict and counter is what SPEC §10 says and nothing is logged; with tracing on, one
//! event per decision on a matching source (its address, destination port, verdict and reason),
//! none for other sources, the same verdicts; an expired switch logs nothing. Private maps, so a
//! running daemon is never touched. Needs root.

use std::net::IpAddr;

use edgefilter::config::XdpMode;
use edgefilter::xdp::{Standalone, TraceEvent, monotonic_ns, trace_config};
use filter_common::trace::TraceConfig;
use filter_common::xdp::{Action, Reason};

use crate::support::frames::{Frame, arp};
use crate::support::serial::serial;
use crate::support::testrun::*;

/// Every reason for both families, and what the program must decide (SPEC §10), in enforce
/// mode with [`ALLOWED_V4`] denylisted (so all five reasons appear).
fn cases() -> Vec<(Frame, Action, Reason)> {
    vec![
        (
            Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP),
            Action::Pass,
            Reason::Allowlisted,
        ),
        (
            Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP),
            Action::Drop,
            Reason::NotAllowlisted,
        ),
        (
            Frame::udp(OTHER_V4, DST_V4, PROTECTED_UDP),
            Action::Drop,
            Reason::NotAllowlisted,
        ),
        (
            Frame::tcp(OTHER_V4, DST_V4, OPEN),
            Action::Pass,
            Reason::Unprotected,
        ),
        (
            Frame::icmp(OTHER_V4, DST_V4),
            Action::Pass,
            Reason::Unprotected,
        ),
        (
            Frame::tcp(BANNED_V4, DST_V4, PROTECTED_TCP),
            Action::Drop,
            Reason::Denylisted,
        ),
        (
            Frame::tcp(ALLOWED_V6, DST_V6, PROTECTED_TCP),
            Action::Pass,
            Reason::Allowlisted,
        ),
        (
            Frame::tcp(OTHER_V6, DST_V6, PROTECTED_TCP),
            Action::Drop,
            Reason::NotAllowlisted,
        ),
        (
            Frame::udp(OTHER_V6, DST_V6, OPEN),
            Action::Pass,
            Reason::Unprotected,
        ),
    ]
}

/// A source inside the allowlist that is also banned.
const BANNED_V4: &str = "198.18.1.9";

fn filter_with_ban() -> Standalone {
    let mut f = filter();
    f.maps_mut().deny(BANNED_V4.parse().unwrap(), None).unwrap();
    f
}

/// Runs every case (checking verdict and counters) and the ARP frame; the events logged.
fn run_all(f: &mut Standalone) -> Vec<TraceEvent> {
    let _ = f.trace_events().unwrap();
    for (frame, action, reason) in cases() {
        expect(f, &frame, action, reason);
    }
    let before = counters(f);
    assert_eq!(run(f, &arp()), XDP_PASS);
    assert_eq!(
        counters(f).packets(Action::Pass, Reason::NotIp),
        before.packets(Action::Pass, Reason::NotIp) + 1
    );
    f.trace_events().unwrap()
}

/// The event the program should log for a case.
fn event(src: &str, dport: Option<u16>, action: Action, reason: Reason) -> TraceEvent {
    TraceEvent {
        source: Some(src.parse::<IpAddr>().unwrap()),
        dport,
        action,
        reason,
    }
}

fn far_future() -> u64 {
    monotonic_ns() + 600_000_000_000
}

#[test]
fn trace_off_leaves_every_verdict_unchanged_and_logs_nothing() {
    let _g = serial();
    let mut f = filter_with_ban();
    let events = run_all(&mut f);
    assert!(events.is_empty(), "logged with tracing off: {events:?}");
    // Switched on and off again: the same.
    f.set_trace(trace_config(None, far_future())).unwrap();
    f.set_trace(TraceConfig::OFF).unwrap();
    let events = run_all(&mut f);
    assert!(
        events.is_empty(),
        "logged after tracing went off: {events:?}"
    );
}

#[test]
fn trace_on_logs_each_decision_of_matching_sources_only() {
    let _g = serial();
    let mut f = filter_with_ban();

    // One IPv4 host: its three decisions, in order, and nothing of anyone else.
    let other: ipnet::IpNet = format!("{OTHER_V4}/32").parse().unwrap();
    f.set_trace(trace_config(Some(other), far_future()))
        .unwrap();
    let tcp = Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP);
    let got = run_all(&mut f);
    assert_eq!(
        got,
        vec![
            event(
                OTHER_V4,
                Some(PROTECTED_TCP),
                Action::Drop,
                Reason::NotAllowlisted
            ),
            event(
                OTHER_V4,
                Some(PROTECTED_UDP),
                Action::Drop,
                Reason::NotAllowlisted
            ),
            event(OTHER_V4, Some(OPEN), Action::Pass, Reason::Unprotected),
            event(OTHER_V4, None, Action::Pass, Reason::Unprotected),
        ]
    );

    // An IPv4 network: the allowlisted and the banned source inside it.
    f.set_trace(trace_config(
        Some("198.18.1.0/24".parse().unwrap()),
        far_future(),
    ))
    .unwrap();
    let got = run_all(&mut f);
    assert_eq!(
        got,
        vec![
            event(
                ALLOWED_V4,
                Some(PROTECTED_TCP),
                Action::Pass,
                Reason::Allowlisted
            ),
            event(
                BANNED_V4,
                Some(PROTECTED_TCP),
                Action::Drop,
                Reason::Denylisted
            ),
        ]
    );

    // An IPv6 /64: the two IPv6 sources inside it, not the one outside.
    f.set_trace(trace_config(
        Some("fd00:ef::/64".parse().unwrap()),
        far_future(),
    ))
    .unwrap();
    let got = run_all(&mut f);
    assert_eq!(
        got,
        vec![event(
            ALLOWED_V6,
            Some(PROTECTED_TCP),
            Action::Pass,
            Reason::Allowlisted
        )]
    );
    f.set_trace(trace_config(
        Some(format!("{OTHER_V6}/128").parse().unwrap()),
        far_future(),
    ))
    .unwrap();
    let got = run_all(&mut f);
    assert_eq!(
        got,
        vec![
            event(
                OTHER_V6,
                Some(PROTECTED_TCP),
                Action::Drop,
                Reason::NotAllowlisted
            ),
            event(OTHER_V6, Some(OPEN), Action::Pass, Reason::Unprotected),
        ]
    );

    // Every packet: one event per frame, the ARP frame without a source.
    f.set_trace(trace_config(None, far_future())).unwrap();
    let got = run_all(&mut f);
    assert_eq!(got.len(), cases().len() + 1, "{got:?}");
    let last = got.last().unwrap();
    assert_eq!(
        (last.source, last.dport, last.action, last.reason),
        (None, None, Action::Pass, Reason::NotIp)
    );
    for ((_, action, reason), e) in cases().iter().zip(&got) {
        assert_eq!((e.action, e.reason), (*action, *reason), "{e:?}");
    }

    // Monitor mode: the verdict is would_drop.
    f.maps_mut().set_mode(XdpMode::Monitor).unwrap();
    f.set_trace(trace_config(Some(other), far_future()))
        .unwrap();
    let _ = f.trace_events().unwrap();
    assert_eq!(run(&mut f, &tcp.build()), XDP_PASS);
    assert_eq!(
        f.trace_events().unwrap(),
        vec![event(
            OTHER_V4,
            Some(PROTECTED_TCP),
            Action::WouldDrop,
            Reason::NotAllowlisted
        )]
    );
    f.maps_mut().set_mode(XdpMode::Enforce).unwrap();

    // Expired on the kernel's clock: nothing, though the switch still says on.
    f.set_trace(trace_config(Some(other), monotonic_ns() - 1))
        .unwrap();
    let got = run_all(&mut f);
    assert!(got.is_empty(), "logged after the expiry: {got:?}");
}
