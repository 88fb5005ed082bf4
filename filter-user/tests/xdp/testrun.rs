//! The real XDP program on crafted frames through `BPF_PROG_TEST_RUN`: every reason of SPEC §10
//! for IPv4 and IPv6, VLAN tags, IPv6 extension headers, fragments, monitor mode, denylist
//! expiry. Maps are private (unpinned), so a running daemon is never touched. Needs root
//! (CAP_BPF + CAP_NET_ADMIN). Malformed frames: `testrun_malformed.rs`.

use std::net::IpAddr;
use std::time::Duration;

use edgefilter::config::XdpMode;
use filter_common::xdp::{Action, Reason};
use ipnet::IpNet;

use crate::support::frames::{Ext, Frame, TPID_8021AD, TPID_8021Q, arp};
use crate::support::serial::serial;
use crate::support::testrun::*;

#[test]
fn every_reason_ipv4() {
    let _g = serial();
    let mut f = filter();
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::udp(OTHER_V4, DST_V4, PROTECTED_UDP),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(OTHER_V4, DST_V4, OPEN),
        Action::Pass,
        Reason::Unprotected,
    );
    expect(
        &mut f,
        &Frame::udp(OTHER_V4, DST_V4, 53),
        Action::Pass,
        Reason::Unprotected,
    );
    expect(
        &mut f,
        &Frame::icmp(OTHER_V4, DST_V4),
        Action::Pass,
        Reason::Unprotected,
    );
    f.maps_mut()
        .deny(ALLOWED_V4.parse().unwrap(), None)
        .unwrap();
    // The denylist comes before the allowlist.
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP),
        Action::Drop,
        Reason::Denylisted,
    );
    // ... but after the port check.
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, OPEN),
        Action::Pass,
        Reason::Unprotected,
    );
    let before = counters(&f);
    assert_eq!(run(&mut f, &arp()), XDP_PASS);
    assert_eq!(
        counters(&f).packets(Action::Pass, Reason::NotIp),
        before.packets(Action::Pass, Reason::NotIp) + 1
    );
}

#[test]
fn every_reason_ipv6() {
    let _g = serial();
    let mut f = filter();
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V6, DST_V6, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(OTHER_V6, DST_V6, PROTECTED_TCP),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::udp(OTHER_V6, DST_V6, PROTECTED_UDP),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(OTHER_V6, DST_V6, OPEN),
        Action::Pass,
        Reason::Unprotected,
    );
    // ICMPv6 (neighbour discovery lives here) is never port-protected.
    expect(
        &mut f,
        &Frame::icmp(OTHER_V6, DST_V6),
        Action::Pass,
        Reason::Unprotected,
    );
    f.maps_mut()
        .deny(ALLOWED_V6.parse().unwrap(), None)
        .unwrap();
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V6, DST_V6, PROTECTED_TCP),
        Action::Drop,
        Reason::Denylisted,
    );
    assert!(f.maps_mut().undeny(ALLOWED_V6.parse().unwrap()).unwrap());
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V6, DST_V6, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
}

#[test]
fn longest_prefix_match_and_allowlist_diff() {
    let _g = serial();
    let mut f = filter();
    let host_only: Vec<IpNet> = ["198.19.7.7/32", "fd00:ef:1::7/128"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let diff = f.maps_mut().sync_allowlist(&host_only).unwrap();
    assert_eq!(diff.added, host_only);
    assert_eq!(diff.removed.len(), 2);
    assert_eq!(f.maps().allowlist().unwrap(), host_only);
    expect(
        &mut f,
        &Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp("198.19.7.8", DST_V4, PROTECTED_TCP),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(OTHER_V6, DST_V6, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp("fd00:ef:1::8", DST_V6, PROTECTED_TCP),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    assert!(f.maps_mut().sync_allowlist(&host_only).unwrap().is_empty());
}

#[test]
fn vlan_tags() {
    let _g = serial();
    let mut f = filter();
    for tags in [
        &[TPID_8021Q][..],
        &[TPID_8021AD, TPID_8021Q],
        &[TPID_8021Q, TPID_8021Q],
    ] {
        expect(
            &mut f,
            &Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP).vlans(tags),
            Action::Pass,
            Reason::Allowlisted,
        );
        expect(
            &mut f,
            &Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP).vlans(tags),
            Action::Drop,
            Reason::NotAllowlisted,
        );
        expect(
            &mut f,
            &Frame::tcp(OTHER_V4, DST_V4, OPEN).vlans(tags),
            Action::Pass,
            Reason::Unprotected,
        );
        expect(
            &mut f,
            &Frame::tcp(OTHER_V6, DST_V6, PROTECTED_TCP).vlans(tags),
            Action::Drop,
            Reason::NotAllowlisted,
        );
        expect(
            &mut f,
            &Frame::tcp(ALLOWED_V6, DST_V6, PROTECTED_TCP).vlans(tags),
            Action::Pass,
            Reason::Allowlisted,
        );
    }
    // Three tags are beyond what is parsed: not IP as far as the filter goes.
    let three =
        Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP).vlans(&[TPID_8021AD, TPID_8021Q, TPID_8021Q]);
    expect(&mut f, &three, Action::Pass, Reason::NotIp);
}

#[test]
fn ipv6_extension_headers() {
    let _g = serial();
    let mut f = filter();
    let chain = [
        Ext::HopByHop,
        Ext::DestOpts,
        Ext::Routing,
        Ext::Fragment {
            offset: 0,
            more: true,
        },
        Ext::DestOpts,
    ];
    expect(
        &mut f,
        &Frame::tcp(OTHER_V6, DST_V6, PROTECTED_TCP).ext(&chain),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V6, DST_V6, PROTECTED_TCP).ext(&chain),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(OTHER_V6, DST_V6, OPEN).ext(&chain),
        Action::Pass,
        Reason::Unprotected,
    );
    expect(
        &mut f,
        &Frame::icmp(OTHER_V6, DST_V6).ext(&[Ext::HopByHop]),
        Action::Pass,
        Reason::Unprotected,
    );
    // A non-first fragment has no L4 header: judged by source, whatever its bytes say.
    let later = [Ext::Fragment {
        offset: 185,
        more: false,
    }];
    expect(
        &mut f,
        &Frame::tcp(OTHER_V6, DST_V6, OPEN).ext(&later),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V6, DST_V6, OPEN).ext(&later),
        Action::Pass,
        Reason::Allowlisted,
    );
    // A chain longer than the bound: judged by source.
    let long = [Ext::DestOpts; 9];
    expect(
        &mut f,
        &Frame::tcp(OTHER_V6, DST_V6, OPEN).ext(&long),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V6, DST_V6, OPEN).ext(&long),
        Action::Pass,
        Reason::Allowlisted,
    );
    // Up to the bound, the port is still found.
    let bound = [Ext::DestOpts; 8];
    expect(
        &mut f,
        &Frame::tcp(OTHER_V6, DST_V6, OPEN).ext(&bound),
        Action::Pass,
        Reason::Unprotected,
    );
}

#[test]
fn ipv4_fragments() {
    let _g = serial();
    let mut f = filter();
    // First fragment carries the ports.
    expect(
        &mut f,
        &Frame::udp(OTHER_V4, DST_V4, OPEN).v4_fragment(0, true),
        Action::Pass,
        Reason::Unprotected,
    );
    expect(
        &mut f,
        &Frame::udp(OTHER_V4, DST_V4, PROTECTED_UDP).v4_fragment(0, true),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    // Later fragments: judged by source alone, their payload bytes are not a port.
    expect(
        &mut f,
        &Frame::udp(OTHER_V4, DST_V4, OPEN).v4_fragment(185, true),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::udp(OTHER_V4, DST_V4, OPEN).v4_fragment(370, false),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::udp(ALLOWED_V4, DST_V4, OPEN).v4_fragment(185, false),
        Action::Pass,
        Reason::Allowlisted,
    );
}

#[test]
fn monitor_mode_passes_and_counts_would_drop() {
    let _g = serial();
    let mut f = filter();
    f.maps_mut().set_mode(XdpMode::Monitor).unwrap();
    assert_eq!(f.maps().mode().unwrap(), XdpMode::Monitor);
    expect(
        &mut f,
        &Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP),
        Action::WouldDrop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(OTHER_V6, DST_V6, PROTECTED_TCP),
        Action::WouldDrop,
        Reason::NotAllowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    f.maps_mut().deny(OTHER_V4.parse().unwrap(), None).unwrap();
    expect(
        &mut f,
        &Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP),
        Action::WouldDrop,
        Reason::Denylisted,
    );
    f.maps_mut().set_mode(XdpMode::Enforce).unwrap();
    expect(
        &mut f,
        &Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP),
        Action::Drop,
        Reason::Denylisted,
    );
}

#[test]
fn denylist_entries_expire() {
    let _g = serial();
    let mut f = filter();
    let v4: IpAddr = ALLOWED_V4.parse().unwrap();
    let v6: IpAddr = ALLOWED_V6.parse().unwrap();
    f.maps_mut()
        .deny(v4, Some(Duration::from_millis(300)))
        .unwrap();
    f.maps_mut()
        .deny(v6, Some(Duration::from_secs(3600)))
        .unwrap();
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP),
        Action::Drop,
        Reason::Denylisted,
    );
    std::thread::sleep(Duration::from_millis(400));
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V6, DST_V6, PROTECTED_TCP),
        Action::Drop,
        Reason::Denylisted,
    );
    let denied = f.maps().denied().unwrap();
    assert!(denied.contains(&(v4, Some(Duration::ZERO))), "{denied:?}");
    assert_eq!(f.maps_mut().purge_expired().unwrap(), 1);
    let left = f.maps().denied().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, v6);
    assert!(left[0].1.unwrap() > Duration::from_secs(3500));
}
