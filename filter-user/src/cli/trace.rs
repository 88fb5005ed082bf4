//! `edgefilter xdp trace [--source CIDR] [--seconds N] [--json]`: why was this packet dropped?
//!
//! Switches tracing on in the pinned filter (the running daemon's program) for packets from
//! `--source` (every packet without it), prints one line per decision the program logs — time,
//! source, destination port, verdict, reason — and switches tracing off again at the end, on
//! Ctrl-C, SIGTERM or SIGHUP, and when the reader of its output goes away. If this process is
//! killed outright, the kernel stops tracing at the expiry written with the switch.
//!
//! `--json` prints one object per line:
//! `{"at":"…","source":"198.18.0.2","dport":8080,"verdict":"drop","reason":"not_allowlisted"}`
//! (`source`/`dport` are `null` when the packet has none).

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ipnet::IpNet;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::JsonFlag;
use super::out;
use crate::config::parse_cidr;
use crate::xdp::{MAX_TRACE, PinDir, TraceEvent, TraceSession};

/// Arguments.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Only packets from this network (IPv4 or IPv6 CIDR; an address alone is /32 or /128);
    /// every packet, IP or not, without it.
    #[arg(long, value_parser = parse_cidr)]
    source: Option<IpNet>,
    /// How long to trace, 1 to 300 seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_TRACE.as_secs()))]
    seconds: u64,
    /// One JSON object per event, a line each.
    #[command(flatten)]
    json: JsonFlag,
}

/// One printed event (`--json`).
#[derive(Debug, Serialize)]
struct EventJson {
    at: String,
    source: Option<String>,
    dport: Option<u16>,
    verdict: &'static str,
    reason: &'static str,
}

/// Why the trace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `--seconds` passed.
    Expired,
    /// A signal asked to stop.
    Signal,
    /// Stdout's reader went away.
    ReaderGone,
}

/// Runs the command.
///
/// # Errors
/// No pinned filter, a filter without tracing, another trace running, a map or I/O failure;
/// printed by the dispatcher (exit 1).
pub fn run(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let pins = PinDir::from_env();
    let duration = Duration::from_secs(args.seconds);
    let mut session = TraceSession::start(&pins, args.source, duration)?;
    let what = args.source.map_or_else(
        || "every packet".to_string(),
        |s| format!("packets from {s}"),
    );
    eprintln!(
        "tracing {what} at {} for {} s (Ctrl-C stops)",
        pins.root().display(),
        args.seconds
    );
    let (shown, end) = follow(&mut session, duration, args.json.json)?;
    // Off first, then what arrived meanwhile; an error here still leaves the kernel's expiry.
    let rest = session.stop()?;
    let mut shown = shown;
    if end != End::ReaderGone {
        for e in &rest {
            if print(e, args.json.json).is_err() {
                break;
            }
            shown += 1;
        }
    }
    let why = match end {
        End::Expired => "time is up",
        End::Signal => "interrupted",
        End::ReaderGone => "output closed",
    };
    eprintln!("trace ended ({why}): {shown} events; tracing is off");
    if session.unreadable() > 0 {
        eprintln!(
            "warning: {} records in the log buffer were not trace events of this build",
            session.unreadable()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints events as they come until `duration` passes, a signal arrives or stdout closes.
/// SIGINT, SIGTERM and SIGHUP are blocked and read from a signalfd, so they end the loop
/// instead of the process; the ring buffer's descriptor turns readable when events wait.
fn follow(
    session: &mut TraceSession,
    duration: Duration,
    json: bool,
) -> anyhow::Result<(u64, End)> {
    let mut stop = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop.add(s);
    }
    stop.thread_block()?;
    let signals = SignalFd::with_flags(&stop, SfdFlags::SFD_CLOEXEC)?;
    let deadline = Instant::now() + duration;
    let mut shown = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((shown, End::Expired));
        }
        // Rounded up, so the loop does not spin through its last millisecond.
        let timeout =
            PollTimeout::try_from(left + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX);
        let (events_wait, signalled) = {
            let mut fds = [
                PollFd::new(session.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
            (ready(&fds[0]), ready(&fds[1]))
        };
        if signalled {
            return Ok((shown, End::Signal));
        }
        if events_wait {
            for e in &session.read() {
                if print(e, json).is_err() {
                    return Ok((shown, End::ReaderGone));
                }
                shown += 1;
            }
        }
    }
}

/// Prints one event; an error when stdout cannot take it (a closed pipe included).
fn print(e: &TraceEvent, json: bool) -> std::io::Result<()> {
    let now = OffsetDateTime::now_utc();
    // Milliseconds are enough to order a person's packets.
    let at = now
        .replace_millisecond(now.millisecond())
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_default();
    let source = e.source.map(|s| s.to_string());
    let line = if json {
        let v = EventJson {
            at,
            source,
            dport: e.dport,
            verdict: e.action.label(),
            reason: e.reason.label(),
        };
        serde_json::to_string(&v).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?
    } else {
        format!(
            "{at}  {:<39}  {:>5}  {:<10}  {}",
            source.as_deref().unwrap_or("(not IP)"),
            e.dport.map_or_else(|| "-".to_string(), |p| p.to_string()),
            e.action.label(),
            e.reason.label()
        )
    };
    out::write(format_args!("{line}\n"))
}
