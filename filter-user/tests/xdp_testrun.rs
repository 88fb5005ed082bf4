//! The real XDP program on crafted frames through `BPF_PROG_TEST_RUN`: every reason of SPEC §10
//! for IPv4 and IPv6, VLAN tags, IPv6 extension headers, fragments, monitor mode, denylist
//! expiry, and truncated/garbage frames. Maps are private (unpinned), so a running daemon is
//! never touched. Needs root (CAP_BPF + CAP_NET_ADMIN).

mod support {
    pub mod frames;
}

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use edgefilter::config::XdpMode;
use edgefilter::xdp::{Standalone, XdpCounters};
use filter_common::xdp::{Action, Reason};
use ipnet::IpNet;
use support::frames::{Ext, Frame, TPID_8021AD, TPID_8021Q, arp};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const PROTECTED_TCP: u16 = 8080;
const PROTECTED_UDP: u16 = 8443;
const OPEN: u16 = 22;

const ALLOWED_V4: &str = "198.18.1.5";
const OTHER_V4: &str = "198.19.7.7";
const DST_V4: &str = "198.18.0.1";
const ALLOWED_V6: &str = "fd00:ef::5";
const OTHER_V6: &str = "fd00:ef:1::7";
const DST_V6: &str = "fd00:ef::1";

/// Kernel state is shared (the verifier and test runs are cheap, but keep the output readable).
static SERIAL: Mutex<()> = Mutex::new(());

fn filter() -> Standalone {
    let mut f = Standalone::load()
        .expect("loading the XDP program (root and `cargo xtask build-ebpf` needed)");
    let maps = f.maps_mut();
    maps.set_mode(XdpMode::Enforce).unwrap();
    maps.set_protected_ports(&[PROTECTED_TCP, PROTECTED_UDP])
        .unwrap();
    let allow: Vec<IpNet> = ["198.18.1.0/24", "fd00:ef::/64"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    maps.sync_allowlist(&allow).unwrap();
    f
}

fn run(f: &mut Standalone, frame: &[u8]) -> u32 {
    f.run(frame, 1).expect("test run").action
}

fn counters(f: &Standalone) -> XdpCounters {
    f.maps().counters().unwrap()
}

/// Runs `frame` once and checks the action and that exactly the (action, reason) counter rose.
fn expect(f: &mut Standalone, frame: &Frame, action: Action, reason: Reason) {
    let bytes = frame.build();
    let before = counters(f);
    let got = run(f, &bytes);
    let want = if action == Action::Drop {
        XDP_DROP
    } else {
        XDP_PASS
    };
    assert_eq!(got, want, "{frame:?}: want {action:?}/{reason:?}");
    let after = counters(f);
    for (a, r, v) in after.iter() {
        let delta = v.packets - before.packets(a, r);
        let expected = u64::from(a == action && r == reason);
        assert_eq!(
            delta, expected,
            "{frame:?}: counter {a:?}/{r:?} rose by {delta}"
        );
    }
    assert_eq!(
        after.get(action, reason).bytes - before.get(action, reason).bytes,
        bytes.len() as u64
    );
}

#[test]
fn every_reason_ipv4() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

/// Every prefix of real frames: never aborts; a frame cut before its source address is complete
/// passes as `not_ip` (the stack drops malformed IP), after it the verdict is by source.
#[test]
fn truncated_frames_never_abort() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = filter();
    let cases = [
        (
            Frame::tcp(OTHER_V4, DST_V4, OPEN).vlans(&[TPID_8021AD, TPID_8021Q]),
            8 + 14 + 20,
        ),
        (Frame::tcp(ALLOWED_V4, DST_V4, OPEN), 14 + 20),
        (
            Frame::tcp(OTHER_V6, DST_V6, OPEN).ext(&[
                Ext::HopByHop,
                Ext::Fragment {
                    offset: 0,
                    more: true,
                },
            ]),
            14 + 40,
        ),
        (
            Frame::udp(ALLOWED_V6, DST_V6, OPEN).vlans(&[TPID_8021Q]),
            4 + 14 + 40,
        ),
    ];
    for (frame, ip_header_end) in cases {
        let full = frame.build();
        let allowed = [ALLOWED_V4, ALLOWED_V6].contains(&frame.src.to_string().as_str());
        // The full frame goes to an open port.
        assert_eq!(run(&mut f, &full), XDP_PASS);
        for len in 0..full.len() {
            let cut = &full[..len];
            let Ok(r) = f.run(cut, 1) else {
                // The kernel refuses runs shorter than an Ethernet header; nothing ran.
                assert!(len < 14, "test run refused a {len}-byte frame");
                continue;
            };
            assert_ne!(r.action, XDP_ABORTED, "{len} bytes of {frame:?}");
            let port_readable = len >= full.len() - frame_l4_len(&frame) + 4;
            let want = if len < ip_header_end || allowed || port_readable {
                XDP_PASS
            } else {
                XDP_DROP
            };
            assert_eq!(r.action, want, "{len} of {} bytes of {frame:?}", full.len());
        }
    }
}

/// Length of the L4 header the builder writes (the port is in its bytes 2..4).
fn frame_l4_len(frame: &Frame) -> usize {
    match frame.l4 {
        support::frames::L4::Tcp(_) => 20,
        support::frames::L4::Udp(_) => 12,
        support::frames::L4::Icmp => 8,
    }
}

#[test]
fn garbage_frames_never_abort() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = filter();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let ethertypes: [[u8; 2]; 5] = [
        [0x08, 0x00],
        [0x86, 0xDD],
        [0x81, 0x00],
        [0x88, 0xA8],
        [0x08, 0x06],
    ];
    let mut seen = [0u32; 3];
    for i in 0..3000 {
        let len = 14 + usize::try_from(next() % 180).unwrap();
        let mut frame: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        frame[12..14].copy_from_slice(&ethertypes[i % ethertypes.len()]);
        if len > 17 && i % 3 == 0 {
            // Tagged: put an IP ethertype behind the tag.
            frame[16..18].copy_from_slice(&ethertypes[(i / 3) % 2]);
        }
        let r = f.run(&frame, 1).expect("test run");
        assert!(
            r.action == XDP_PASS || r.action == XDP_DROP,
            "action {} on {frame:02x?}",
            r.action
        );
        seen[r.action as usize] += 1;
    }
    assert!(
        seen[1] > 0 && seen[2] > 0,
        "garbage should both pass and drop: {seen:?}"
    );
    let total: u64 = counters(&f).iter().map(|(_, _, v)| v.packets).sum();
    assert_eq!(total, 3000);
}

#[test]
fn repeated_runs_count_every_packet() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = filter();
    let frame = Frame::tcp(OTHER_V4, DST_V4, PROTECTED_TCP).build();
    let r = f.run(&frame, 1000).unwrap();
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(
        counters(&f).packets(Action::Drop, Reason::NotAllowlisted),
        1000
    );
    assert_eq!(f.run_pass_all(&frame, 10).unwrap().action, XDP_PASS);
    assert_eq!(
        counters(&f).packets(Action::Drop, Reason::NotAllowlisted),
        1000,
        "pass_all counts nothing"
    );
}
