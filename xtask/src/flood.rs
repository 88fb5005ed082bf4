//! `cargo xtask bench --flood-only` (and the last step of `cargo xtask bench`): does a source
//! banned in the kernel cost the proxy anything while it floods?
//!
//! The release daemon runs with XDP enforcing in a server namespace (`efb-srv`, the bench
//! upstream beside it), `wrk` drives it with a real key from a client namespace (`efb-cli`), and
//! `trafgen` sends TCP SYNs with random source ports at fixed rates from an attacker namespace
//! (`efb-atk`). On a veth the receive work of every attack packet (XDP included) runs in the
//! sender's context on the same two shared cores, so each flood case has a control. Cases, one
//! wrk run each, interleaved over the rounds:
//!
//! - quiet: no flood;
//! - control: the same flood into a sink namespace (`efb-sink`) whose kernel drops it as not
//!   for this host (the frames are addressed to another MAC): what sending and receiving it
//!   costs the cores, with nothing reaching the proxy's namespace;
//! - banned: the flood from 198.18.2.2 to the proxy's port after `edgefilter deny add`, dropped
//!   by the XDP program as `denylisted`;
//! - unbanned: the same flood with the ban lifted, through to the TCP stack (SYN cookies,
//!   SYN-ACKs answered by RSTs).
//!
//! Prints requests/s, p99, host CPU, the flood rate reached and the `denylisted` drops per case
//! and the ratios; fails when the drops do not account for the banned flood. Namespaces and
//! pins are deleted on the way out, after a failure and after Ctrl-C; leftovers of an earlier
//! run are deleted first.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{BenchArgs, Proc, create_key, parse_wrk};
use crate::util::output;

/// The namespaces: server, legitimate client, attacker, and the control flood's sink.
const SRV: &str = "efb-srv";
const CLI: &str = "efb-cli";
const ATK: &str = "efb-atk";
const SINK: &str = "efb-sink";
const NAMESPACES: [&str; 4] = [SRV, CLI, ATK, SINK];

/// veth ends: (namespace, name, MAC).
const SRV_CLI: (&str, &str, &str) = (SRV, "efbs-cli", "02:ef:b1:00:01:01");
const CLI_SRV: (&str, &str, &str) = (CLI, "efbc", "02:ef:b1:00:01:02");
const SRV_ATK: (&str, &str, &str) = (SRV, "efbs-atk", "02:ef:b1:00:02:01");
const ATK_SRV: (&str, &str, &str) = (ATK, "efba", "02:ef:b1:00:02:02");
const SINK_ATK: (&str, &str, &str) = (SINK, "efbk", "02:ef:b1:00:03:01");
const ATK_SINK: (&str, &str, &str) = (ATK, "efba-sink", "02:ef:b1:00:03:02");
/// The control flood's destination MAC: nobody's, so the sink drops its frames before IP.
const NOBODY_MAC: &str = "02:ef:b1:00:03:99";

const SRV_CLI_V4: &str = "198.18.1.1";
const CLI_V4: &str = "198.18.1.2";
const SRV_ATK_V4: &str = "198.18.2.1";
/// The flooding (and, in the banned case, banned) source.
const ATK_V4: &str = "198.18.2.2";

/// The proxy's (protected) port, the upstream and the admin API, all inside `efb-srv`.
const PORT: u16 = 8080;
const UPSTREAM: &str = "127.0.0.1:9000";
const ADMIN: &str = "127.0.0.1:9901";
/// This step's bpffs pins (not the default `/sys/fs/bpf/edgefilter`).
const PINS: &str = "/sys/fs/bpf/efb-flood";
/// wrk: one thread (leaving the other core to the proxy and the flood), 32 connections.
const CONNECTIONS: u32 = 32;
/// The banned case must see at least this share of the flood dropped as `denylisted`.
const MIN_DENYLISTED: f64 = 0.95;

/// What one wrk run measures against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Quiet,
    Control,
    Banned,
    Unbanned,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Self::Quiet => "quiet (no flood)",
            Self::Control => "control (flood into the sink)",
            Self::Banned => "banned source flooding",
            Self::Unbanned => "unbanned source flooding",
        }
    }
}

/// One case's figures from one round.
struct Sample {
    rps: f64,
    p99_us: f64,
    errors: u64,
    /// Flood packets the attacker's veth carried during the measured run, and their rate.
    sent: u64,
    sent_pps: f64,
    /// XDP `drop`/`denylisted` and `pass`/`allowlisted` deltas over the same run.
    denylisted: u64,
    allowlisted: u64,
    /// Host CPU over the run, percent of all cores: busy (not idle or iowait), and softirq.
    cpu_busy: f64,
    cpu_softirq: f64,
}

/// Runs the step (root; the release `edgefilter` and `bench_upstream` must be built).
pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    // A first Ctrl-C sets the flag (the step stops at the next check and cleans up); a second
    // one terminates at once.
    signal_hook::flag::register_conditional_default(
        signal_hook::consts::SIGINT,
        interrupted.clone(),
    )?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())?;
    let stop = || -> Result<()> {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    };
    for tool in ["trafgen", "wrk", "curl", "nsenter"] {
        if Command::new("which")
            .arg(tool)
            .output()
            .map_or(true, |o| !o.status.success())
        {
            bail!("the flood step needs `{tool}` (trafgen: netsniff-ng; nsenter: util-linux)");
        }
    }
    let rates: Vec<u64> = args
        .flood_rates
        .iter()
        .copied()
        .filter(|&r| r > 0)
        .collect();
    if rates.is_empty() {
        bail!("--flood-rates: no rate above 0");
    }
    let dir = root.join("target/bench/flood");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).context("creating target/bench/flood")?;
    let edgefilter = root.join("target/release/edgefilter");

    eprintln!("flood: namespaces {}", NAMESPACES.join(", "));
    let _net = Net::create()?;
    let conf = write_config(&dir, args.shards)?;
    let key = create_key(&mut edgefilter_in_srv(&edgefilter, &conf))?;
    let mut upstream = Proc::spawn(
        "bench_upstream",
        nsenter(SRV, root.join("target/release/bench_upstream")).arg(UPSTREAM),
    )?;
    wait_answers(&format!("http://{UPSTREAM}/"), &mut upstream, None)?;
    let log = dir.join("daemon.log");
    let mut daemon = Proc::spawn_logging(
        "edgefilter",
        edgefilter_in_srv(&edgefilter, &conf).arg("run"),
        &log,
    )?;
    wait_answers(&format!("http://{ADMIN}/readyz"), &mut daemon, Some(&log))?;
    let attack = write_trafgen(&dir, "attack.cfg", SRV_ATK.2, ATK_SRV.2)?;
    let control = write_trafgen(&dir, "control.cfg", NOBODY_MAC, ATK_SINK.2)?;

    let mut plan = vec![(Case::Quiet, 0)];
    for &rate in &rates {
        plan.extend([Case::Control, Case::Banned, Case::Unbanned].map(|c| (c, rate)));
    }
    let mut samples: Vec<Vec<Sample>> = plan.iter().map(|_| Vec::new()).collect();
    let rounds = args.rounds.max(1);
    for round in 0..rounds {
        for (i, &(case, rate)) in plan.iter().enumerate() {
            stop()?;
            eprintln!(
                "flood round {}/{rounds}: {}{}",
                round + 1,
                case.label(),
                if rate > 0 {
                    format!(" at {rate} pps")
                } else {
                    String::new()
                }
            );
            let cfg = if case == Case::Control {
                &control
            } else {
                &attack
            };
            if case == Case::Banned {
                let out = output(
                    edgefilter_in_srv(&edgefilter, &conf)
                        .args(["deny", "add", ATK_V4, "--for", "10m"]),
                )
                .context("banning the attacker with `edgefilter deny add`")?;
                eprint!("{out}");
            }
            let sample = run_case(case, rate, cfg, &dir, &key, args.duration, &mut daemon);
            let lifted = if case == Case::Banned {
                output(edgefilter_in_srv(&edgefilter, &conf).args(["deny", "remove", ATK_V4]))
                    .map(drop)
                    .context("lifting the ban with `edgefilter deny remove`")
            } else {
                Ok(())
            };
            // Ctrl-C reaches wrk and the daemon too: say so rather than what failed after.
            stop()?;
            let sample = sample?;
            lifted?;
            eprintln!(
                "  {:.0} req/s, p99 {:.0} us, errors {}; flood {:.0} pps sent, {} denylisted, \
                 {} allowlisted; host CPU {:.0}% (softirq {:.0}%)",
                sample.rps,
                sample.p99_us,
                sample.errors,
                sample.sent_pps,
                sample.denylisted,
                sample.allowlisted,
                sample.cpu_busy,
                sample.cpu_softirq
            );
            samples[i].push(sample);
        }
    }
    let rows: Vec<(Case, u64, &[Sample])> = plan
        .iter()
        .zip(&samples)
        .map(|(&(c, r), s)| (c, r, s.as_slice()))
        .collect();
    print_table(&rows, args.duration, rounds);
    check(&rows)
}

/// One wrk run (after a 1 s warm-up) under `case`'s flood, counters read around it.
fn run_case(
    case: Case,
    rate: u64,
    cfg: &Path,
    dir: &Path,
    key: &str,
    duration: u64,
    daemon: &mut Proc,
) -> Result<Sample> {
    let flood = match case {
        Case::Quiet => None,
        Case::Control => Some(Flood::start(ATK_SINK.1, cfg, rate, duration, dir)?),
        Case::Banned | Case::Unbanned => Some(Flood::start(ATK_SRV.1, cfg, rate, duration, dir)?),
    };
    if let Some(f) = &flood {
        f.wait_started()?;
    }
    wrk(key, 1)?;
    let before = Counters::read()?;
    let out = wrk(key, duration)?;
    let after = Counters::read()?;
    drop(flood);
    if let Some(status) = daemon.exited()? {
        bail!(
            "edgefilter exited with {status}: see {}",
            dir.join("daemon.log").display()
        );
    }
    let row = parse_wrk("flood", &out).with_context(|| format!("parsing wrk output:\n{out}"))?;
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let sent = match case {
        Case::Quiet => 0,
        Case::Control => after.to_sink - before.to_sink,
        // The attacker's kernel answers the unbanned case's SYN-ACKs with RSTs on the same veth.
        Case::Banned | Case::Unbanned => {
            (after.to_srv - before.to_srv).saturating_sub(after.rsts - before.rsts)
        }
    };
    let total = (after.cpu_total - before.cpu_total).max(1) as f64;
    Ok(Sample {
        rps: row.rps,
        p99_us: row.p99_us,
        errors: row.errors,
        sent,
        sent_pps: sent as f64 / secs,
        denylisted: after.denylisted - before.denylisted,
        allowlisted: after.allowlisted - before.allowlisted,
        cpu_busy: 100.0 * (after.cpu_busy - before.cpu_busy) as f64 / total,
        cpu_softirq: 100.0 * (after.cpu_softirq - before.cpu_softirq) as f64 / total,
    })
}

/// `wrk` from the client namespace against the proxy, with the key.
fn wrk(key: &str, secs: u64) -> Result<String> {
    let header = format!("Authorization: Bearer {key}");
    output(Command::new("ip").args([
        "netns",
        "exec",
        CLI,
        "timeout",
        &(secs + 30).to_string(),
        "wrk",
        "-t1",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{secs}s"),
        "--latency",
        "-H",
        &header,
        &format!("http://{SRV_CLI_V4}:{PORT}/"),
    ]))
    .context("wrk against edgefilter (from efb-cli)")
}

/// `program` in namespace `ns` (network only: `ip netns exec` would also remount /sys and hide
/// the bpffs pins).
fn nsenter(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// The release `edgefilter` in `efb-srv` with this step's config and pins.
fn edgefilter_in_srv(edgefilter: &Path, conf: &Path) -> Command {
    let mut c = nsenter(SRV, edgefilter);
    c.arg("--config")
        .arg(conf)
        .env("EDGEFILTER_BPF_PIN_DIR", PINS)
        .env_remove("EDGEFILTER_CONFIG");
    c
}

/// Waits (20 s at most) until `url`, in `efb-srv`, answers 2xx; fails early if `proc` exits.
fn wait_answers(url: &str, proc: &mut Proc, log: Option<&Path>) -> Result<()> {
    let tail = |log: Option<&Path>| {
        log.and_then(|l| std::fs::read_to_string(l).ok())
            .map(|t| {
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = proc.exited()? {
            bail!("{} exited early with {status}\n{}", proc.name(), tail(log));
        }
        let ok = nsenter(SRV, "curl")
            .args(["-s", "-f", "-o", "/dev/null", "--max-time", "1", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{} did not answer {url} within 20 s\n{}",
        proc.name(),
        tail(log)
    )
}

/// The daemon's config: both server veths under XDP (enforce, the proxy's port protected, all
/// of 198.18.0.0/15 allowlisted so only the denylist drops), the proxy on every address.
fn write_config(dir: &Path, shards: usize) -> Result<PathBuf> {
    let d = dir.display();
    let text = format!(
        "[listen]\nhttp = [\"0.0.0.0:{PORT}\"]\n\n[runtime]\nshards = {shards}\n\n\
         [xdp]\nenabled = true\ninterfaces = [\"{}\", \"{}\"]\nmode = \"enforce\"\n\
         protected_ports = [{PORT}]\nallow = [\"198.18.0.0/15\"]\n\n\
         [store]\nkind = \"sqlite\"\npath = \"{d}/keys.db\"\n\n\
         [admin]\nlisten = \"{ADMIN}\"\ntoken_file = \"{d}/admin.token\"\n\n\
         [log]\nformat = \"text\"\naccess_log = \"off\"\n\n\
         [[route]]\nprefix = \"/\"\nupstream = \"http://{UPSTREAM}\"\n",
        SRV_CLI.1, SRV_ATK.1
    );
    let path = dir.join("edgefilter.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A trafgen config: IPv4 TCP SYNs from the attacker to the proxy's port, random source port
/// and sequence number, addressed to `dst_mac`.
fn write_trafgen(dir: &Path, name: &str, dst_mac: &str, src_mac: &str) -> Result<PathBuf> {
    let text = format!(
        "{{\n  eth(da={dst_mac}, sa={src_mac}),\n  ipv4(sa={ATK_V4}, da={SRV_ATK_V4}, ttl=64, df),\n  \
         tcp(sp=drnd(1024, 65535), dp={PORT}, seq=drnd(), syn, win=64240)\n}}\n"
    );
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The namespaces, veths, addresses and static neighbours; everything is deleted on drop.
struct Net;

impl Net {
    fn create() -> Result<Self> {
        cleanup();
        let net = Self;
        let ip = |args: &[&str]| -> Result<()> { output(Command::new("ip").args(args)).map(drop) };
        for ns in NAMESPACES {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (a, b) in [(SRV_CLI, CLI_SRV), (SRV_ATK, ATK_SRV), (SINK_ATK, ATK_SINK)] {
            ip(&[
                "link", "add", a.1, "netns", a.0, "address", a.2, "type", "veth", "peer", "name",
                b.1, "netns", b.0, "address", b.2,
            ])?;
            ip(&["-n", a.0, "link", "set", a.1, "up"])?;
            ip(&["-n", b.0, "link", "set", b.1, "up"])?;
        }
        for (end, v4) in [
            (SRV_CLI, SRV_CLI_V4),
            (CLI_SRV, CLI_V4),
            (SRV_ATK, SRV_ATK_V4),
            (ATK_SRV, ATK_V4),
        ] {
            ip(&[
                "-n",
                end.0,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                end.1,
            ])?;
        }
        for (end, v4, mac) in [
            (SRV_CLI, CLI_V4, CLI_SRV.2),
            (CLI_SRV, SRV_CLI_V4, SRV_CLI.2),
            (SRV_ATK, ATK_V4, ATK_SRV.2),
            (ATK_SRV, SRV_ATK_V4, SRV_ATK.2),
        ] {
            ip(&["-n", end.0, "neigh", "add", v4, "lladdr", mac, "dev", end.1])?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Best effort, never fails: ends what still runs in the namespaces (a previous run's
/// leftovers; this run's processes are gone by now), removes the pins (detaching the program),
/// deletes the namespaces and with them the veths.
fn cleanup() {
    for ns in NAMESPACES {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
    let _ = std::fs::remove_dir_all(PINS);
    for ns in NAMESPACES {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

/// A running trafgen in its own process group; interrupted (then killed) and reaped on drop.
struct Flood {
    child: Child,
    dev: &'static str,
    log: PathBuf,
}

impl Flood {
    /// `rate` packets/s out of the attacker's `dev`, bounded to the case's length and then some.
    fn start(dev: &'static str, cfg: &Path, rate: u64, duration: u64, dir: &Path) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let log = dir.join("trafgen.log");
        let file = std::fs::File::create(&log)?;
        let num = rate * (duration + 15);
        let child = Command::new("ip")
            .args(["netns", "exec", ATK, "trafgen", "--dev", dev, "--conf"])
            .arg(cfg)
            .args([
                "--rate",
                &format!("{rate}pps"),
                "--num",
                &num.to_string(),
                "--cpus",
                "1",
                // Leave the host's socket memory sysctls and IRQ affinities alone.
                "--no-sock-mem",
                "--notouch-irq",
            ])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting trafgen")?;
        Ok(Self { child, dev, log })
    }

    /// Waits (10 s at most) until packets leave the attacker's veth.
    fn wait_started(&self) -> Result<()> {
        let first = tx_packets(self.dev)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            if tx_packets(self.dev)? >= first + 1000 {
                return Ok(());
            }
        }
        bail!(
            "trafgen sent nothing on {} within 10 s:\n{}",
            self.dev,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-INT", "--", &group]).output();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).output();
        let _ = self.child.wait();
    }
}

/// Packets sent so far on an attacker veth.
fn tx_packets(dev: &str) -> Result<u64> {
    let out = output(Command::new("ip").args([
        "netns",
        "exec",
        ATK,
        "cat",
        &format!("/sys/class/net/{dev}/statistics/tx_packets"),
    ]))?;
    Ok(out.trim().parse()?)
}

/// Counters read around a measured run.
struct Counters {
    at: Instant,
    /// Packets sent on the attacker's veth to the server and to the sink.
    to_srv: u64,
    to_sink: u64,
    /// TCP RSTs the attacker's kernel sent (answers to SYN-ACKs).
    rsts: u64,
    denylisted: u64,
    allowlisted: u64,
    /// /proc/stat jiffies, all CPUs.
    cpu_total: u64,
    cpu_busy: u64,
    cpu_softirq: u64,
}

impl Counters {
    fn read() -> Result<Self> {
        // The attacker's counters are read before and after the scrape (a process start or
        // two apart) and averaged, so they line up with the XDP counters under a fast flood.
        let first = Self::attacker()?;
        let at = Instant::now();
        let metrics = output(nsenter(SRV, "curl").args([
            "-s",
            "-f",
            "--max-time",
            "5",
            &format!("http://{ADMIN}/metrics"),
        ]))
        .context("reading the daemon's /metrics")?;
        let second = Self::attacker()?;
        let mid = |a: u64, b: u64| a + (b - a) / 2;
        let (to_srv, to_sink, rsts) = (
            mid(first.0, second.0),
            mid(first.1, second.1),
            mid(first.2, second.2),
        );
        let denylisted = xdp_packets(&metrics, "drop", "denylisted")?;
        let allowlisted = xdp_packets(&metrics, "pass", "allowlisted")?;
        let stat = std::fs::read_to_string("/proc/stat")?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .context("no cpu line in /proc/stat")?
            .split_whitespace()
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        // user nice system idle iowait irq softirq steal
        let cpu_total: u64 = cpu.iter().sum();
        Ok(Self {
            at,
            to_srv,
            to_sink,
            rsts,
            denylisted,
            allowlisted,
            cpu_total,
            cpu_busy: cpu_total - cpu[3] - cpu[4],
            cpu_softirq: cpu[6],
        })
    }

    /// Packets sent on the attacker's veths (to the server, to the sink) and the RSTs its
    /// kernel sent.
    fn attacker() -> Result<(u64, u64, u64)> {
        let text = output(Command::new("ip").args([
            "netns",
            "exec",
            ATK,
            "cat",
            &format!("/sys/class/net/{}/statistics/tx_packets", ATK_SRV.1),
            &format!("/sys/class/net/{}/statistics/tx_packets", ATK_SINK.1),
            "/proc/net/snmp",
        ]))?;
        let mut lines = text.lines();
        let mut next_u64 = || -> Result<u64> {
            Ok(lines
                .next()
                .context("short attacker counters")?
                .trim()
                .parse()?)
        };
        let (to_srv, to_sink) = (next_u64()?, next_u64()?);
        Ok((to_srv, to_sink, snmp(&text, "Tcp", "OutRsts")?))
    }
}

/// A /proc/net/snmp value: the `proto:` header line names the fields of the next one.
fn snmp(text: &str, proto: &str, field: &str) -> Result<u64> {
    let prefix = format!("{proto}:");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (rows.next(), rows.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no {proto} in /proc/net/snmp");
    };
    let at = names
        .split_whitespace()
        .position(|n| n == field)
        .with_context(|| format!("no {proto} {field} in /proc/net/snmp"))?;
    Ok(values
        .split_whitespace()
        .nth(at)
        .context("short /proc/net/snmp line")?
        .parse()?)
}

/// `edgefilter_xdp_packets_total{action=..,reason=..}` from a /metrics answer.
fn xdp_packets(metrics: &str, action: &str, reason: &str) -> Result<u64> {
    let (a, r) = (
        format!("action=\"{action}\""),
        format!("reason=\"{reason}\""),
    );
    metrics
        .lines()
        .filter(|l| l.starts_with("edgefilter_xdp_packets_total{"))
        .find(|l| l.contains(&a) && l.contains(&r))
        .and_then(|l| l.rsplit('}').next()?.split_whitespace().next())
        .with_context(|| {
            format!("no edgefilter_xdp_packets_total{{{a},{r}}} at /metrics: is XDP attached?")
        })?
        .parse()
        .context("parsing an XDP counter")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The markdown table, then the ratios (of medians, and banned/control round by round).
fn print_table(rows: &[(Case, u64, &[Sample])], duration: u64, rounds: usize) {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let med = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    println!();
    println!(
        "edgefilter with XDP enforcing, wrk -t1 -c{CONNECTIONS} -d{duration}s --latency from \
         another namespace (a real key on every request), trafgen TCP SYN floods from a third; \
         median of {rounds} interleaved rounds, {cores} cores shared by all of them:"
    );
    println!();
    println!(
        "| case | flood asked | flood sent | requests/s | p99 | errors | host CPU busy | softirq | \
         dropped as `denylisted` |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (case, rate, s) in rows {
        let sent: u64 = s.iter().map(|x| x.sent).sum();
        let denied: u64 = s.iter().map(|x| x.denylisted).sum();
        println!(
            "| {} | {} | {} | {:.0} | {:.0} µs | {} | {:.0}% | {:.0}% | {} |",
            case.label(),
            if *rate > 0 {
                format!("{rate} pps")
            } else {
                "—".into()
            },
            if *rate > 0 {
                format!("{:.0} pps", med(s, |x| x.sent_pps))
            } else {
                "—".into()
            },
            med(s, |x| x.rps),
            med(s, |x| x.p99_us),
            s.iter().map(|x| x.errors).sum::<u64>(),
            med(s, |x| x.cpu_busy),
            med(s, |x| x.cpu_softirq),
            if sent > 0 {
                format!("{:.1}% of {sent}", 100.0 * denied as f64 / sent as f64)
            } else {
                format!("{denied}")
            }
        );
    }
    let Some((_, _, quiet)) = rows.iter().find(|(c, ..)| *c == Case::Quiet) else {
        return;
    };
    let q = med(quiet, |x| x.rps);
    println!();
    // Requests/s each case lost against the quiet run per 10,000 flood packets/s it carried:
    // comparable across cases even when a flood's own cost kept trafgen below the rate asked.
    for (case, rate, s) in rows.iter().filter(|(c, ..)| *c != Case::Quiet) {
        let pps = med(s, |x| x.sent_pps);
        if pps > 0.0 {
            println!(
                "{} at {rate} pps: {:.0} requests/s lost per 10k flood packets/s",
                case.label(),
                (q - med(s, |x| x.rps)) / (pps / 10_000.0)
            );
        }
    }
    println!();
    let rates: Vec<u64> = rows.iter().map(|r| r.1).filter(|&r| r > 0).collect();
    let mut seen = Vec::new();
    for rate in rates {
        if seen.contains(&rate) {
            continue;
        }
        seen.push(rate);
        let of = |case: Case| {
            rows.iter()
                .find(|(c, r, _)| *c == case && *r == rate)
                .map(|(.., s)| *s)
        };
        let (Some(control), Some(banned), Some(unbanned)) =
            (of(Case::Control), of(Case::Banned), of(Case::Unbanned))
        else {
            continue;
        };
        let (c, b, u) = (
            med(control, |x| x.rps),
            med(banned, |x| x.rps),
            med(unbanned, |x| x.rps),
        );
        let per_round: Vec<String> = banned
            .iter()
            .zip(control)
            .map(|(b, c)| format!("{:.2}", b.rps / c.rps))
            .collect();
        println!(
            "at {rate} pps: banned/quiet {:.2}, banned/control {:.2} (per round {}), \
             unbanned/quiet {:.2}, unbanned/control {:.2}, control/quiet {:.2}",
            b / q,
            b / c,
            per_round.join(", "),
            u / q,
            u / c,
            c / q
        );
    }
}

/// The banned flood must have been dropped as `denylisted` (nearly all of it), and nothing
/// while the ban was lifted.
fn check(rows: &[(Case, u64, &[Sample])]) -> Result<()> {
    for (case, rate, s) in rows {
        let sent: u64 = s.iter().map(|x| x.sent).sum();
        let denied: u64 = s.iter().map(|x| x.denylisted).sum();
        match case {
            Case::Banned if (denied as f64) < MIN_DENYLISTED * sent as f64 || sent == 0 => bail!(
                "at {rate} pps the XDP program dropped {denied} packets as denylisted of {sent} \
                 sent by the banned source"
            ),
            Case::Unbanned if denied * 100 > sent => bail!(
                "at {rate} pps {denied} packets were dropped as denylisted with the ban lifted"
            ),
            _ => {}
        }
    }
    Ok(())
}
