//! Per-frame cost of the XDP filter through `BPF_PROG_TEST_RUN`, against the empty `XDP_PASS`
//! program measured in the same run: 10,000 allowlist prefixes (IPv4 and IPv6 mixed), an
//! allowlisted and a dropped (`not_allowlisted`) frame for each family, and a frame from a
//! banned source (`denylisted`; the IPv6 one banned by its /64). Needs root.
//!
//! `cargo run --release -p benches --bin xdp_cost [-- --repeat N --prefixes N --rounds N]`

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use edgefilter::xdp::Standalone;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const PORT: u16 = 8080;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Opts {
    repeat: u32,
    prefixes: usize,
    rounds: usize,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        repeat: 5_000_000,
        prefixes: 10_000,
        rounds: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        let bad = |_| format!("{a}: `{v}` is not a number");
        match a.as_str() {
            "--repeat" => o.repeat = v.parse().map_err(bad)?,
            "--prefixes" => o.prefixes = v.parse().map_err(bad)?,
            "--rounds" => o.rounds = v.parse().map_err(bad)?,
            _ => {
                return Err(format!(
                    "unknown option {a} (--repeat, --prefixes, --rounds)"
                ));
            }
        }
    }
    if o.repeat < 1_000_000 {
        return Err("--repeat must be at least 1,000,000".into());
    }
    Ok(o)
}

/// A deterministic spread of prefixes: 70 % IPv4 (/8../32), 30 % IPv6 (/16../128, in 2000::/3),
/// none covering the dropped sources.
fn prefixes(n: usize) -> Vec<IpNet> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut out: BTreeSet<IpNet> = ["198.18.1.0/24", "fd00:ef::/64"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    while out.len() < n {
        let r = next();
        let net = if r % 10 < 7 {
            let len = 8 + u8::try_from(r % 25).unwrap();
            let a = u32::try_from(next() >> 32).unwrap();
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc())
        } else {
            let len = 16 + u8::try_from(r % 113).unwrap();
            let hi = u128::from(next()) << 64 | u128::from(next());
            // Global unicast 2000::/3 only: never covers fd00:ef::/32.
            let a = (hi & !(0b111u128 << 125)) | (0b001u128 << 125);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc())
        };
        // The dropped sources must stay outside every prefix.
        if net.contains(&"198.19.7.7".parse::<std::net::IpAddr>().unwrap()) {
            continue;
        }
        out.insert(net);
    }
    out.into_iter().collect()
}

fn tcp_syn(src: &str, dst: &str) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    let mut tcp = vec![0xC3, 0x50];
    tcp.extend_from_slice(&PORT.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xFF, 0xFF, 0, 0, 0, 0]);
    match (src.parse().unwrap(), dst.parse().unwrap()) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xDD, 0x60, 0, 0, 0, 0, 20, 6, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&tcp);
    // Pad to the 64-byte minimum frame (without FCS 60).
    f.resize(f.len().max(60), 0);
    f
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = opts()?;
    let mut f = Standalone::load()?;
    f.maps_mut().set_protected_ports(&[PORT])?;
    let nets = prefixes(o.prefixes);
    let v4 = nets.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
    f.maps_mut().sync_allowlist(&nets)?;
    let live = f.maps().allowlist()?.len();
    assert_eq!(live, nets.len(), "allowlist load");
    // Two banned sources (auto-block's kind of entry), IPv6 by its /64.
    f.maps_mut().set_ipv6_deny_prefix(64)?;
    f.maps_mut().deny("198.19.7.8".parse()?, None)?;
    f.maps_mut().deny("fd00:ef:2::1".parse()?, None)?;

    let cases = [
        (
            "IPv4 TCP SYN, allowlisted",
            tcp_syn("198.18.1.5", "198.18.0.1"),
            XDP_PASS,
        ),
        (
            "IPv4 TCP SYN, not allowlisted (drop)",
            tcp_syn("198.19.7.7", "198.18.0.1"),
            XDP_DROP,
        ),
        (
            "IPv6 TCP SYN, allowlisted",
            tcp_syn("fd00:ef::5", "fd00:ef::1"),
            XDP_PASS,
        ),
        (
            "IPv6 TCP SYN, not allowlisted (drop)",
            tcp_syn("fd00:ef:1::7", "fd00:ef::1"),
            XDP_DROP,
        ),
        (
            "IPv4 TCP SYN, banned source (drop, denylisted)",
            tcp_syn("198.19.7.8", "198.18.0.1"),
            XDP_DROP,
        ),
        (
            "IPv6 TCP SYN, source in a banned /64 (drop, denylisted)",
            tcp_syn("fd00:ef:2::7", "fd00:ef::1"),
            XDP_DROP,
        ),
    ];
    let mut rows = Vec::new();
    for (name, frame, want) in &cases {
        let (mut filt, mut base) = (Vec::new(), Vec::new());
        // Interleave so drift (frequency, other load) hits both alike; the median of the rounds.
        for _ in 0..o.rounds {
            let r = f.run(frame, o.repeat)?;
            assert_eq!(r.action, *want, "{name}: wrong verdict");
            filt.push(r.per_run);
            base.push(f.run_pass_all(frame, o.repeat)?.per_run);
        }
        rows.push((*name, median(filt), median(base)));
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "XDP per-frame cost, BPF_PROG_TEST_RUN, repeat {} × {} rounds (median), {} allowlist prefixes ({v4} IPv4, {} IPv6); {cpu}, Linux {}\n",
        o.repeat,
        o.rounds,
        nets.len(),
        nets.len() - v4,
        kernel.trim()
    );
    println!("| frame | edgefilter ns/frame | empty XDP_PASS ns/frame | ratio |");
    println!("|---|---:|---:|---:|");
    for (name, filt, base) in rows {
        let ratio = filt.as_secs_f64() / base.as_secs_f64().max(1e-12);
        println!(
            "| {name} | {} | {} | {ratio:.2}× |",
            filt.as_nanos(),
            base.as_nanos()
        );
    }
    Ok(())
}
