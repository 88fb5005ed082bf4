//! `edgefilter xdp trace` in userspace: switching the program's tracing on for a source network
//! and off again ([`TraceSwitch`]), reading its aya-log events ([`TraceReader`]), and both
//! together against the pinned filter of a running daemon ([`TraceSession`]).
//!
//! The switch is the pinned one-entry map `EF_TRACE` (`filter_common::trace::TraceConfig`); its
//! expiry is on the kernel's clock, so tracing ends on time even if the tracer is killed. The
//! events come through aya-log's ring buffer (`AYA_LOGS`), found from the pinned program's id,
//! so any process can read what the daemon's program logs.

use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aya::maps::{Array, Map, MapData};
use aya::programs::Xdp;
use aya_log::EbpfLogger;
use aya_obj::programs::XdpAttachType;
use filter_common::trace::{
    FAMILY_NONE, FAMILY_V4, FAMILY_V6, NO_PORT, TRACE_ALL, TRACE_TARGET, TraceConfig,
};
use filter_common::xdp::{Action, MAP_TRACE, Reason};
use ipnet::IpNet;

use super::{PinDir, XdpError, monotonic_ns};

/// The longest trace [`TraceSession::start`] accepts.
pub const MAX_TRACE: Duration = Duration::from_secs(300);

/// One decision of the program on a traced packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    /// The packet's source; `None` when it is not IPv4/IPv6.
    pub source: Option<IpAddr>,
    /// The TCP/UDP destination port; `None` for other protocols or when it could not be read.
    pub dport: Option<u16>,
    /// What the program did.
    pub action: Action,
    /// Why.
    pub reason: Reason,
}

impl TraceEvent {
    /// Reads an event from the message of an aya-log record with target
    /// [`TRACE_TARGET`] (`family=F src=ADDR dport=P action=A reason=R`, see
    /// `filter_common::trace`); `None` when the message has another shape.
    #[must_use]
    pub fn parse(message: &str) -> Option<Self> {
        let mut fields = message.split(' ');
        let mut field = |name: &str| {
            fields
                .next()?
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        };
        let family: u32 = field("family")?.parse().ok()?;
        let src: Ipv6Addr = field("src")?.parse().ok()?;
        let dport: u32 = field("dport")?.parse().ok()?;
        let action = Action::from_u32(field("action")?.parse().ok()?)?;
        let reason = Reason::from_u32(field("reason")?.parse().ok()?)?;
        if fields.next().is_some() {
            return None;
        }
        let source = match family {
            FAMILY_NONE => None,
            FAMILY_V4 => Some(IpAddr::V4(src.to_ipv4_mapped()?)),
            FAMILY_V6 => Some(IpAddr::V6(src)),
            _ => return None,
        };
        let dport = if dport == NO_PORT {
            None
        } else {
            Some(u16::try_from(dport).ok()?)
        };
        Some(Self {
            source,
            dport,
            action,
            reason,
        })
    }
}

/// The switch for `source` (`None` = every packet) until `expires_at_ns` ([`monotonic_ns`]
/// time; 0 = off).
#[must_use]
pub fn trace_config(source: Option<IpNet>, expires_at_ns: u64) -> TraceConfig {
    let mut cfg = TraceConfig {
        expires_at_ns,
        ..TraceConfig::OFF
    };
    match source.map(|n| n.trunc()) {
        None => cfg.family = TRACE_ALL,
        Some(IpNet::V4(n)) => {
            cfg.family = FAMILY_V4;
            cfg.prefix_len = u32::from(n.prefix_len());
            cfg.addr[..4].copy_from_slice(&n.network().octets());
        }
        Some(IpNet::V6(n)) => {
            cfg.family = FAMILY_V6;
            cfg.prefix_len = u32::from(n.prefix_len());
            cfg.addr = n.network().octets();
        }
    }
    cfg
}

/// The `EF_TRACE` map: tracing on, off, or as it is.
pub struct TraceSwitch {
    map: Array<MapData, TraceConfig>,
}

impl std::fmt::Debug for TraceSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSwitch").finish_non_exhaustive()
    }
}

impl TraceSwitch {
    /// The switch of the filter pinned in `pins`.
    ///
    /// # Errors
    /// [`XdpError::NotPinned`] without a pinned filter, [`XdpError::NoTrace`] when the pinned
    /// filter predates tracing.
    pub fn from_pins(pins: &PinDir) -> Result<Self, XdpError> {
        if !pins.has_maps() {
            return Err(XdpError::NotPinned(pins.root().to_path_buf()));
        }
        let path = pins.map(MAP_TRACE);
        if !path.exists() {
            return Err(XdpError::NoTrace(pins.root().to_path_buf()));
        }
        let data = MapData::from_pin(&path)
            .map_err(|e| XdpError::map(format!("opening {}", path.display()), e))?;
        let map = Map::from_map_data(data)
            .map_err(|e| XdpError::map(format!("opening {}", path.display()), e))?;
        Self::from_map(map)
    }

    /// Takes the switch out of a loaded object.
    pub(super) fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, XdpError> {
        let map = ebpf
            .take_map(MAP_TRACE)
            .ok_or_else(|| XdpError::MissingMap(MAP_TRACE.to_string()))?;
        Self::from_map(map)
    }

    fn from_map(map: Map) -> Result<Self, XdpError> {
        let map = Array::try_from(map)
            .map_err(|e| XdpError::map(format!("map {MAP_TRACE} has the wrong type"), e))?;
        Ok(Self { map })
    }

    /// What the map holds now.
    ///
    /// # Errors
    /// The map read fails.
    pub fn get(&self) -> Result<TraceConfig, XdpError> {
        self.map
            .get(&0, 0)
            .map_err(|e| XdpError::map("reading the trace switch", e))
    }

    /// Writes `cfg` (see [`trace_config`]).
    ///
    /// # Errors
    /// The map update fails.
    pub fn set(&mut self, cfg: TraceConfig) -> Result<(), XdpError> {
        self.map
            .set(0, cfg, 0)
            .map_err(|e| XdpError::map("writing the trace switch", e))
    }

    /// Switches tracing off.
    ///
    /// # Errors
    /// The map update fails.
    pub fn off(&mut self) -> Result<(), XdpError> {
        self.set(TraceConfig::OFF)
    }

    /// How long tracing stays on (`None` when off or expired).
    ///
    /// # Errors
    /// The map read fails.
    pub fn remaining(&self) -> Result<Option<Duration>, XdpError> {
        let cfg = self.get()?;
        let now = monotonic_ns();
        Ok((cfg.is_on() && cfg.expires_at_ns > now)
            .then(|| Duration::from_nanos(cfg.expires_at_ns - now)))
    }
}

/// Receives aya-log's records and keeps the trace events among them.
struct Collector {
    events: Arc<Mutex<Vec<TraceEvent>>>,
    unreadable: Arc<AtomicU64>,
}

impl log::Log for Collector {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target() == TRACE_TARGET
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.target() != TRACE_TARGET {
            return;
        }
        match TraceEvent::parse(&record.args().to_string()) {
            Some(e) => self
                .events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(e),
            None => {
                self.unreadable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {}
}

/// The program's aya-log ring buffer, read as [`TraceEvent`]s. Its descriptor turns readable
/// when events wait ([`AsFd`], for epoll).
pub struct TraceReader {
    logger: EbpfLogger<Collector>,
    events: Arc<Mutex<Vec<TraceEvent>>>,
    unreadable: Arc<AtomicU64>,
}

impl std::fmt::Debug for TraceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceReader").finish_non_exhaustive()
    }
}

impl TraceReader {
    fn new(
        open: impl FnOnce(Collector) -> Result<EbpfLogger<Collector>, aya_log::Error>,
    ) -> Result<Self, XdpError> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let unreadable = Arc::new(AtomicU64::new(0));
        let logger = open(Collector {
            events: Arc::clone(&events),
            unreadable: Arc::clone(&unreadable),
        })
        .map_err(|source| XdpError::Logs {
            context: "opening the program's log buffer".into(),
            source,
        })?;
        Ok(Self {
            logger,
            events,
            unreadable,
        })
    }

    /// The log buffer of the program pinned in `pins`.
    ///
    /// # Errors
    /// Nothing pinned, or the pinned program has no log buffer ([`XdpError::NoTrace`]).
    pub fn from_pins(pins: &PinDir) -> Result<Self, XdpError> {
        if !pins.has_program() {
            return Err(XdpError::NotPinned(pins.root().to_path_buf()));
        }
        let prog = Xdp::from_pin(pins.prog(), XdpAttachType::Interface)
            .map_err(|e| XdpError::program(format!("opening {}", pins.prog().display()), e))?;
        let id = prog
            .info()
            .map_err(|e| XdpError::program("reading program info", e))?
            .id();
        Self::new(|c| EbpfLogger::init_from_id_with_logger(id, c)).map_err(|e| match e {
            XdpError::Logs {
                source: aya_log::Error::MapNotFound,
                ..
            } => XdpError::NoTrace(pins.root().to_path_buf()),
            other => other,
        })
    }

    /// Takes the log buffer out of a loaded object.
    pub(super) fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, XdpError> {
        Self::new(|c| EbpfLogger::init_with_logger(ebpf, c))
    }

    /// Every event logged since the last call, oldest first.
    pub fn read(&mut self) -> Vec<TraceEvent> {
        self.logger.flush();
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records from the buffer that were not trace events of this build (never expected).
    #[must_use]
    pub fn unreadable(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }
}

impl AsFd for TraceReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }
}

/// A trace of the pinned filter: on from [`TraceSession::start`] until [`TraceSession::stop`],
/// drop, or the kernel-side expiry, whichever comes first.
#[derive(Debug)]
pub struct TraceSession {
    switch: TraceSwitch,
    reader: TraceReader,
}

impl TraceSession {
    /// Switches tracing on in the filter pinned in `pins` for packets from `source` (`None` =
    /// every packet) for `duration` (at most [`MAX_TRACE`]).
    ///
    /// # Errors
    /// Nothing pinned, a filter without tracing, a trace already running
    /// ([`XdpError::TraceBusy`]), a map failure.
    pub fn start(
        pins: &PinDir,
        source: Option<IpNet>,
        duration: Duration,
    ) -> Result<Self, XdpError> {
        let duration = duration.min(MAX_TRACE);
        let mut switch = TraceSwitch::from_pins(pins)?;
        if let Some(left) = switch.remaining()? {
            return Err(XdpError::TraceBusy(left));
        }
        let mut reader = TraceReader::from_pins(pins)?;
        // Whatever an earlier trace left unread is not this one's.
        let _ = reader.read();
        let until =
            monotonic_ns().saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        switch.set(trace_config(source, until))?;
        Ok(Self { switch, reader })
    }

    /// Every event since the last call, oldest first.
    pub fn read(&mut self) -> Vec<TraceEvent> {
        self.reader.read()
    }

    /// Records that were not trace events (never expected).
    #[must_use]
    pub fn unreadable(&self) -> u64 {
        self.reader.unreadable()
    }

    /// Switches tracing off and returns the events still unread.
    ///
    /// # Errors
    /// The map update fails (the kernel still ends the trace at its expiry).
    pub fn stop(&mut self) -> Result<Vec<TraceEvent>, XdpError> {
        self.switch.off()?;
        Ok(self.reader.read())
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        // Idempotent; a failure leaves the kernel-side expiry to end it.
        let _ = self.switch.off();
    }
}

impl AsFd for TraceSession {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.reader.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_from_the_programs_messages() {
        assert_eq!(
            TraceEvent::parse("family=4 src=::ffff:198.18.0.2 dport=8080 action=1 reason=1"),
            Some(TraceEvent {
                source: Some("198.18.0.2".parse().unwrap()),
                dport: Some(8080),
                action: Action::Drop,
                reason: Reason::NotAllowlisted,
            })
        );
        assert_eq!(
            TraceEvent::parse("family=6 src=fd00:ef::2 dport=4294967295 action=0 reason=3"),
            Some(TraceEvent {
                source: Some("fd00:ef::2".parse().unwrap()),
                dport: None,
                action: Action::Pass,
                reason: Reason::Unprotected,
            })
        );
        assert_eq!(
            TraceEvent::parse("family=0 src=:: dport=4294967295 action=0 reason=4"),
            Some(TraceEvent {
                source: None,
                dport: None,
                action: Action::Pass,
                reason: Reason::NotIp,
            })
        );
        for bad in [
            "",
            "family=4 src=198.18.0.2 dport=80 action=0 reason=0",
            "family=4 src=::ffff:198.18.0.2 dport=80 action=9 reason=0",
            "family=4 src=::ffff:198.18.0.2 dport=80 action=0 reason=0 extra=1",
            "family=5 src=:: dport=80 action=0 reason=0",
            "family=6 src=::1 dport=70000 action=0 reason=0",
            "src=::1 family=6 dport=80 action=0 reason=0",
        ] {
            assert_eq!(TraceEvent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn configs_hold_the_network_and_expiry() {
        let off = trace_config(None, 0);
        assert_eq!(off, TraceConfig::OFF);
        let all = trace_config(None, 42);
        assert!(all.matches_non_ip() && all.is_on());
        let v4 = trace_config(Some("198.18.0.9/24".parse().unwrap()), 7);
        assert_eq!((v4.family, v4.prefix_len), (FAMILY_V4, 24));
        assert_eq!(v4.addr[..4], [198, 18, 0, 0]);
        assert!(v4.matches_v4([198, 18, 0, 200]) && !v4.matches_v4([198, 18, 1, 1]));
        let v6 = trace_config(Some("fd00:ef::2/128".parse().unwrap()), 7);
        assert_eq!((v6.family, v6.prefix_len), (FAMILY_V6, 128));
        let a: Ipv6Addr = "fd00:ef::2".parse().unwrap();
        let b: Ipv6Addr = "fd00:ef::3".parse().unwrap();
        assert!(v6.matches_v6(a.octets()) && !v6.matches_v6(b.octets()));
    }
}
