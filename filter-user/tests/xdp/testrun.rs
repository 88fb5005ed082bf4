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

/// An IPv6 ban covers the source's `autoblock.ipv6_prefix` network: one entry drops every
/// address inside it and nothing outside; the prefix is the program's config, 128 until set.
#[test]
fn ipv6_bans_cover_the_configured_prefix() {
    let _g = serial();
    let mut f = filter();
    let wide: Vec<IpNet> = ["198.18.1.0/24", "fd00:ef::/32"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    f.maps_mut().sync_allowlist(&wide).unwrap();
    let banned: IpAddr = "fd00:ef::5".parse().unwrap();

    // Never set (a map from before the field): the exact address only.
    assert_eq!(f.maps().ipv6_deny_prefix().unwrap(), 128);
    f.maps_mut().deny(banned, None).unwrap();
    expect(
        &mut f,
        &Frame::tcp("fd00:ef::5", DST_V6, PROTECTED_TCP),
        Action::Drop,
        Reason::Denylisted,
    );
    expect(
        &mut f,
        &Frame::tcp("fd00:ef::6", DST_V6, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    assert!(f.maps_mut().undeny(banned).unwrap());

    f.maps_mut().set_ipv6_deny_prefix(64).unwrap();
    assert_eq!(f.maps().mode().unwrap(), XdpMode::Enforce, "mode kept");
    assert_eq!(f.maps().ipv6_deny_prefix().unwrap(), 64);
    f.maps_mut().deny(banned, None).unwrap();
    assert_eq!(
        f.maps().denied().unwrap(),
        [("fd00:ef::".parse().unwrap(), None)],
        "one entry: the /64's network"
    );
    for inside in ["fd00:ef::5", "fd00:ef::ffff:1", "fd00:ef::1:2:3:4"] {
        expect(
            &mut f,
            &Frame::tcp(inside, DST_V6, PROTECTED_TCP),
            Action::Drop,
            Reason::Denylisted,
        );
    }
    for outside in ["fd00:ef:0:1::5", "fd00:ef:1::5"] {
        expect(
            &mut f,
            &Frame::tcp(outside, DST_V6, PROTECTED_TCP),
            Action::Pass,
            Reason::Allowlisted,
        );
    }
    // Through a VLAN tag and an extension-header chain alike.
    expect(
        &mut f,
        &Frame::tcp("fd00:ef::77", DST_V6, PROTECTED_TCP)
            .vlans(&[TPID_8021Q])
            .ext(&[Ext::HopByHop, Ext::DestOpts]),
        Action::Drop,
        Reason::Denylisted,
    );
    // Lifting by any address inside the prefix lifts the prefix.
    assert!(f.maps_mut().undeny("fd00:ef::9".parse().unwrap()).unwrap());
    expect(
        &mut f,
        &Frame::tcp("fd00:ef::5", DST_V6, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );

    // A /48 configuration: one entry covers 65,536 /64s.
    f.maps_mut().set_ipv6_deny_prefix(48).unwrap();
    f.maps_mut().deny(banned, None).unwrap();
    expect(
        &mut f,
        &Frame::tcp("fd00:ef:0:ffff::1", DST_V6, PROTECTED_TCP),
        Action::Drop,
        Reason::Denylisted,
    );
    expect(
        &mut f,
        &Frame::tcp("fd00:ef:1::1", DST_V6, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
}

/// A ban whose expiry has passed lets the source through without anyone deleting it, and
/// `sync_denylist` makes the maps hold exactly the wanted bans.
#[test]
fn expired_bans_pass_and_the_denylist_syncs_to_a_wanted_set() {
    let _g = serial();
    let mut f = filter();
    f.maps_mut().set_ipv6_deny_prefix(64).unwrap();
    let now = edgefilter::xdp::monotonic_ns();
    let v4: IpAddr = ALLOWED_V4.parse().unwrap();
    f.maps_mut().deny_until(v4, now - 1).unwrap();
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    f.maps_mut().deny_until(v4, now + 60_000_000_000).unwrap();
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, PROTECTED_TCP),
        Action::Drop,
        Reason::Denylisted,
    );
    // A stale entry goes, the wanted ones stay (an IPv6 one by its prefix).
    f.maps_mut()
        .deny("198.18.1.9".parse().unwrap(), None)
        .unwrap();
    let wanted = [
        (v4, now + 60_000_000_000),
        ("fd00:ef::5".parse().unwrap(), now + 60_000_000_000),
    ];
    assert_eq!(f.maps_mut().sync_denylist(&wanted).unwrap(), 1);
    assert_eq!(f.maps_mut().sync_denylist(&wanted).unwrap(), 0);
    expect(
        &mut f,
        &Frame::tcp("198.18.1.9", DST_V4, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp("fd00:ef::1234", DST_V6, PROTECTED_TCP),
        Action::Drop,
        Reason::Denylisted,
    );
    let mut denied: Vec<IpAddr> = f
        .maps()
        .denied()
        .unwrap()
        .into_iter()
        .map(|d| d.0)
        .collect();
    denied.sort();
    assert_eq!(denied, [v4, "fd00:ef::".parse::<IpAddr>().unwrap()]);
}

/// `xdp.syn_rate`: a source's SYNs to protected ports beyond its burst are dropped as
/// `syn_rate`, after the denylist and before the allowlist; other segments, other sources and
/// unprotected ports are untouched; IPv6 sources share one allowance per /64; monitor mode
/// only counts; lifting the limit lets them through again.
#[test]
fn syn_rate_drops_a_sources_syns_over_its_burst() {
    let _g = serial();
    let mut f = filter();
    // One SYN a second, 3 at once: the test's SYNs all fall within one second.
    let limit = Some((1_000_000_000, 3_000_000_000));
    f.maps_mut().set_syn_limit(limit).unwrap();
    assert_eq!(f.maps().syn_limit().unwrap(), limit);
    let syn = |src| Frame::tcp(src, DST_V4, PROTECTED_TCP);
    for _ in 0..3 {
        expect(&mut f, &syn(ALLOWED_V4), Action::Pass, Reason::Allowlisted);
    }
    expect(&mut f, &syn(ALLOWED_V4), Action::Drop, Reason::SynRate);
    // Segments of open connections, another source, another port: as before.
    expect(
        &mut f,
        &Frame::tcp_ack(ALLOWED_V4, DST_V4, PROTECTED_TCP),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &syn("198.18.1.6"),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &Frame::tcp(ALLOWED_V4, DST_V4, OPEN),
        Action::Pass,
        Reason::Unprotected,
    );
    expect(
        &mut f,
        &Frame::udp(ALLOWED_V4, DST_V4, PROTECTED_UDP),
        Action::Pass,
        Reason::Allowlisted,
    );
    // A source outside the allowlist is dropped either way; over its rate, as syn_rate.
    for _ in 0..3 {
        expect(&mut f, &syn(OTHER_V4), Action::Drop, Reason::NotAllowlisted);
    }
    expect(&mut f, &syn(OTHER_V4), Action::Drop, Reason::SynRate);
    // The denylist comes first.
    f.maps_mut()
        .deny("198.18.1.7".parse().unwrap(), None)
        .unwrap();
    for _ in 0..4 {
        expect(&mut f, &syn("198.18.1.7"), Action::Drop, Reason::Denylisted);
    }
    // IPv6: one allowance per /64.
    let syn6 = |src| Frame::tcp(src, DST_V6, PROTECTED_TCP);
    expect(
        &mut f,
        &syn6("fd00:ef::5"),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &syn6("fd00:ef::6"),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(
        &mut f,
        &syn6("fd00:ef::7"),
        Action::Pass,
        Reason::Allowlisted,
    );
    expect(&mut f, &syn6("fd00:ef::8"), Action::Drop, Reason::SynRate);
    expect(
        &mut f,
        &syn6(OTHER_V6),
        Action::Drop,
        Reason::NotAllowlisted,
    );
    // Monitor mode counts what it would drop.
    f.maps_mut().set_mode(XdpMode::Monitor).unwrap();
    expect(&mut f, &syn(ALLOWED_V4), Action::WouldDrop, Reason::SynRate);
    f.maps_mut().set_mode(XdpMode::Enforce).unwrap();
    // Lifted: through again.
    f.maps_mut().set_syn_limit(None).unwrap();
    expect(&mut f, &syn(ALLOWED_V4), Action::Pass, Reason::Allowlisted);
}
