//! Shared setup of the `BPF_PROG_TEST_RUN` tests: the real program with private maps, a fixed
//! allowlist and protected ports, and a check that exactly one (action, reason) counter rose.

use edgefilter::config::XdpMode;
use edgefilter::xdp::{Standalone, XdpCounters};
use filter_common::xdp::{Action, Reason};
use ipnet::IpNet;

use super::frames::Frame;

/// XDP return codes.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Ports: two protected, one open (SSH-like).
pub const PROTECTED_TCP: u16 = 8080;
pub const PROTECTED_UDP: u16 = 8443;
pub const OPEN: u16 = 22;

/// Sources inside (`ALLOWED_*`) and outside (`OTHER_*`) the allowlist, and the destinations.
pub const ALLOWED_V4: &str = "198.18.1.5";
pub const OTHER_V4: &str = "198.19.7.7";
pub const DST_V4: &str = "198.18.0.1";
pub const ALLOWED_V6: &str = "fd00:ef::5";
pub const OTHER_V6: &str = "fd00:ef:1::7";
pub const DST_V6: &str = "fd00:ef::1";

/// The program with private maps: enforce, ports protected, 198.18.1.0/24 and fd00:ef::/64 allowed.
pub fn filter() -> Standalone {
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

/// One run's action.
pub fn run(f: &mut Standalone, frame: &[u8]) -> u32 {
    f.run(frame, 1).expect("test run").action
}

/// Summed counters.
pub fn counters(f: &Standalone) -> XdpCounters {
    f.maps().counters().unwrap()
}

/// Runs `frame` once and checks the action and that exactly the (action, reason) counter rose.
pub fn expect(f: &mut Standalone, frame: &Frame, action: Action, reason: Reason) {
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
