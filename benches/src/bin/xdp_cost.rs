//! Per-frame cost of the XDP filter through `BPF_PROG_TEST_RUN`, against the empty `XDP_PASS`
//! program measured in the same run: 10,000 allowlist prefixes (IPv4 and IPv6 mixed), an
//! allowlisted and a dropped (`not_allowlisted`) frame for each family, and a frame from a
//! banned source (`denylisted`; the IPv6 one banned by its /64). Needs root.
//!
//! Then `xdp trace`'s cost on the dropped frames: tracing off, on for another source, and on for
//! the frame's source (once with the event ring full, so events are lost as in a flood, once
//! with the ring read every 256 frames, so every event is written). `--baseline PATH` also
//! measures another build's object (e.g. the one before a change) interleaved in the same run.
//!
//! `cargo run --release -p benches --bin xdp_cost [-- --repeat N --prefixes N --rounds N
//! --baseline PATH]`

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use edgefilter::xdp::{Standalone, monotonic_ns, trace_config};
use filter_common::trace::TraceConfig;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const PORT: u16 = 8080;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Frames per run when every trace event must reach the ring: fewer than it holds.
const DRAINED_REPEAT: u32 = 256;
/// Runs of [`DRAINED_REPEAT`] frames per round.
const DRAINED_RUNS: usize = 100;

struct Opts {
    repeat: u32,
    prefixes: usize,
    rounds: usize,
    baseline: Option<String>,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        repeat: 5_000_000,
        prefixes: 10_000,
        rounds: 5,
        baseline: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        let bad = |_| format!("{a}: `{v}` is not a number");
        match a.as_str() {
            "--repeat" => o.repeat = v.parse().map_err(bad)?,
            "--prefixes" => o.prefixes = v.parse().map_err(bad)?,
            "--rounds" => o.rounds = v.parse().map_err(bad)?,
            "--baseline" => o.baseline = Some(v),
            _ => {
                return Err(format!(
                    "unknown option {a} (--repeat, --prefixes, --rounds, --baseline)"
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

/// The bench's maps: port 8080 protected, the prefixes allowlisted, two banned sources
/// (auto-block's kind of entry, the IPv6 one by its /64).
fn configure(f: &mut Standalone, nets: &[IpNet]) -> Result<(), Box<dyn std::error::Error>> {
    f.maps_mut().set_protected_ports(&[PORT])?;
    f.maps_mut().sync_allowlist(nets)?;
    let live = f.maps().allowlist()?.len();
    assert_eq!(live, nets.len(), "allowlist load");
    f.maps_mut().set_ipv6_deny_prefix(64)?;
    f.maps_mut().deny("198.19.7.8".parse()?, None)?;
    f.maps_mut().deny("fd00:ef:2::1".parse()?, None)?;
    Ok(())
}

/// The kernel's ns/frame over one run of `repeat` frames, checking the verdict.
fn measure(
    f: &mut Standalone,
    frame: &[u8],
    want: u32,
    repeat: u32,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let r = f.run(frame, repeat)?;
    assert_eq!(r.action, want, "wrong verdict");
    Ok(r.per_run)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = opts()?;
    let mut f = Standalone::load()?;
    let nets = prefixes(o.prefixes);
    let v4 = nets.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
    configure(&mut f, &nets)?;
    let mut baseline = match &o.baseline {
        Some(path) => {
            let mut b = Standalone::load_object(&std::fs::read(path)?)?;
            configure(&mut b, &nets)?;
            Some(b)
        }
        None => None,
    };

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
        let (mut filt, mut base, mut before) = (Vec::new(), Vec::new(), Vec::new());
        // Interleave so drift (frequency, other load) hits all alike; the median of the rounds.
        for _ in 0..o.rounds {
            filt.push(measure(&mut f, frame, *want, o.repeat)?);
            if let Some(b) = baseline.as_mut() {
                before.push(measure(b, frame, *want, o.repeat)?);
            }
            base.push(f.run_pass_all(frame, o.repeat)?.per_run);
        }
        let before = (!before.is_empty()).then(|| median(before));
        rows.push((*name, median(filt), median(base), before));
    }

    // Tracing, on the two dropped frames (a flood's frames): off; on for another source; on
    // for this source with the ring full (events lost); with the ring read (events written).
    let far = || monotonic_ns() + 3_600_000_000_000;
    let mut trace_rows = Vec::new();
    for (name, src, frame) in [
        (cases[1].0, "198.19.7.7/32", &cases[1].1),
        (cases[3].0, "fd00:ef:1::7/128", &cases[3].1),
    ] {
        let (mut off, mut other, mut full, mut drained) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..o.rounds {
            f.set_trace(TraceConfig::OFF)?;
            off.push(measure(&mut f, frame, XDP_DROP, o.repeat)?);
            f.set_trace(trace_config(Some("203.0.113.0/24".parse()?), far()))?;
            other.push(measure(&mut f, frame, XDP_DROP, o.repeat)?);
            f.set_trace(trace_config(Some(src.parse()?), far()))?;
            let _ = f.trace_events()?;
            full.push(measure(&mut f, frame, XDP_DROP, o.repeat)?);
            let mut runs = Vec::with_capacity(DRAINED_RUNS);
            for _ in 0..DRAINED_RUNS {
                let _ = f.trace_events()?;
                runs.push(measure(&mut f, frame, XDP_DROP, DRAINED_REPEAT)?);
            }
            let events = f.trace_events()?.len();
            assert_eq!(events, DRAINED_REPEAT as usize, "{name}: events lost");
            drained.push(median(runs));
        }
        f.set_trace(TraceConfig::OFF)?;
        trace_rows.push((
            name,
            median(off),
            median(other),
            median(full),
            median(drained),
        ));
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
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    for (name, filt, base, _) in &rows {
        println!(
            "| {name} | {} | {} | {:.2}× |",
            filt.as_nanos(),
            base.as_nanos(),
            ratio(*filt, *base)
        );
    }
    if let Some(path) = &o.baseline {
        println!("\nThis build (trace off) beside {path}, interleaved:\n");
        println!("| frame | baseline ns/frame | this build ns/frame | ratio |");
        println!("|---|---:|---:|---:|");
        for (name, filt, _, before) in &rows {
            if let Some(before) = before {
                println!(
                    "| {name} | {} | {} | {:.2}× |",
                    before.as_nanos(),
                    filt.as_nanos(),
                    ratio(*filt, *before)
                );
            }
        }
    }
    println!(
        "\n`xdp trace` (ns/frame; ring read every {DRAINED_REPEAT} frames, median of {DRAINED_RUNS} runs a round):\n"
    );
    println!(
        "| frame | trace off | on, another source | on, this source, ring full | on, this source, every event written |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, off, other, full, drained) in trace_rows {
        println!(
            "| {name} | {} | {} ({:.2}×) | {} ({:.2}×) | {} ({:.2}×) |",
            off.as_nanos(),
            other.as_nanos(),
            ratio(other, off),
            full.as_nanos(),
            ratio(full, off),
            drained.as_nanos(),
            ratio(drained, off)
        );
    }
    Ok(())
}
