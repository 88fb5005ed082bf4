//! The real XDP program on malformed input through `BPF_PROG_TEST_RUN`: every truncation of
//! real frames and pseudo-random garbage never aborts and gets a sane verdict; repeated runs
//! count every packet. Private maps; needs root.

use filter_common::xdp::{Action, Reason};

use crate::support::frames::{Ext, Frame, TPID_8021AD, TPID_8021Q};
use crate::support::serial::serial;
use crate::support::testrun::*;

/// Every prefix of real frames: never aborts; a frame cut before its source address is complete
/// passes as `not_ip` (the stack drops malformed IP), after it the verdict is by source.
#[test]
fn truncated_frames_never_abort() {
    let _g = serial();
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
        crate::support::frames::L4::Tcp(_) | crate::support::frames::L4::TcpAck(_) => 20,
        crate::support::frames::L4::Udp(_) => 12,
        crate::support::frames::L4::Icmp => 8,
    }
}

#[test]
fn garbage_frames_never_abort() {
    let _g = serial();
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
    let _g = serial();
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
