//! Userspace half of XDP: load, attach, pin, adopt, allowlist diff, denylist, counters.
//!
//! [`start`] leaves filtering in place when the daemon exits: the program, one bpf_link per
//! interface and every map are pinned under [`pin::DEFAULT_PIN_DIR`]. A restarted daemon adopts
//! them; only `edgefilter xdp detach` ([`detach`]) removes them.

mod allowfile;
mod allowlist;
mod attach;
mod counters;
mod maps;
mod object;
mod pin;
mod trace;

use std::path::PathBuf;

use aya::maps::MapInfo;
use filter_common::trace::TraceConfig;
use filter_common::xdp::{
    ALLOW_MAX_ENTRIES, COUNTER_SLOTS, CounterValue, DENY_MAX_ENTRIES, DenyEntry, MAP_ALLOW_V4,
    MAP_ALLOW_V6, MAP_CONFIG, MAP_COUNTERS, MAP_DENY_V4, MAP_DENY_V6, MAP_PORTS, MAP_SYN_V4,
    MAP_SYN_V6, MAP_TRACE, PortBitmap, SYN_MAX_ENTRIES, SynBucket, XdpConfig,
};

pub use allowfile::{
    AllowFile, Origin, effective as effective_allowlist, path_for as allowfile_path,
};
pub use allowlist::AllowDiff;
pub use attach::{AttachState, AttachedInterface, ProgramState};
pub use counters::XdpCounters;
pub use maps::{XdpMaps, monotonic_ns};
pub use object::{RunResult, Standalone};
pub use pin::{DEFAULT_PIN_DIR, PIN_DIR_ENV, PinDir, is_bpffs};
pub use trace::{MAX_TRACE, TraceEvent, TraceReader, TraceSession, TraceSwitch, trace_config};

use crate::config::Config;

/// XDP failures, each naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The binary was built before the XDP object existed.
    #[error(
        "this binary has no XDP program embedded: run `cargo xtask build-ebpf`, then rebuild (or run with --no-xdp)"
    )]
    NoObject,
    /// Enforce mode with nothing allowlisted would drop every client of the protected ports.
    #[error(
        "xdp.mode = \"enforce\" with an empty allowlist would drop every client of ports {0:?}: \
         add CIDRs to xdp.allow or with `edgefilter allow add` (\"0.0.0.0/0\" and \"::/0\" allow all), \
         or set xdp.mode = \"monitor\""
    )]
    EmptyAllowlist(Vec<u16>),
    /// The object could not be parsed or its maps created.
    #[error("loading the XDP object: {0}")]
    Load(#[source] aya::EbpfError),
    /// A program operation failed.
    #[error("{context}: {source}")]
    Program {
        /// What was being done.
        context: String,
        /// The aya error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("{context}: {source}")]
    Map {
        /// What was being done.
        context: String,
        /// The aya error.
        #[source]
        source: aya::maps::MapError,
    },
    /// Pinning failed.
    #[error("{context}: {source}")]
    Pin {
        /// What was being done.
        context: String,
        /// The aya error.
        #[source]
        source: aya::pin::PinError,
    },
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A link could not be opened or replaced.
    #[error("{0}")]
    Link(String),
    /// Attaching to an interface failed in every allowed mode.
    #[error("attaching XDP to {interface} in {mode} mode: {detail}")]
    Attach {
        /// Interface name.
        interface: String,
        /// The last mode tried.
        mode: String,
        /// What the kernel said.
        detail: String,
    },
    /// `xdp.interfaces` names an interface that does not exist.
    #[error("interface {0} does not exist (check xdp.interfaces)")]
    UnknownInterface(String),
    /// The pin directory is not on bpffs.
    #[error("{0} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    /// Nothing is pinned where the maps should be.
    #[error("no XDP program is pinned at {0} (is the daemon running with XDP?)")]
    NotPinned(PathBuf),
    /// Pinned maps from an incompatible build.
    #[error(
        "pinned map {map} has a different layout ({detail}): run `edgefilter xdp detach`, then start again"
    )]
    IncompatiblePin {
        /// The map.
        map: String,
        /// What differs.
        detail: String,
    },
    /// The object lacks a map.
    #[error("the XDP object has no map {0}")]
    MissingMap(String),
    /// The object lacks a program.
    #[error("the XDP object has no program {0}")]
    MissingProgram(String),
    /// The pinned filter was loaded by a build without `xdp trace`.
    #[error(
        "the XDP filter pinned at {0} predates `xdp trace`: restart the daemon (or run `edgefilter xdp attach`) with this build"
    )]
    NoTrace(PathBuf),
    /// Another trace is running (or was killed and has not expired yet).
    #[error("another `xdp trace` is running for {}s more; try again after it", .0.as_secs() + 1)]
    TraceBusy(std::time::Duration),
    /// The program's aya-log buffer could not be opened.
    #[error("{context}: {source}")]
    Logs {
        /// What was being done.
        context: String,
        /// The aya-log error.
        #[source]
        source: aya_log::Error,
    },
    /// A map holds something impossible.
    #[error("corrupt map content: {0}")]
    Corrupt(String),
    /// `allowlist.json` is not valid.
    #[error("{path}: {detail}")]
    AllowFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl XdpError {
    pub(crate) fn program(context: impl Into<String>, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn map(context: impl Into<String>, source: aya::maps::MapError) -> Self {
        Self::Map {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn pin(context: impl Into<String>, source: aya::pin::PinError) -> Self {
        Self::Pin {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Knobs of [`start_with`] that are not in the config.
#[derive(Debug, Clone)]
pub struct XdpOptions {
    /// Where to pin; [`PinDir::from_env`] by default (tests point it elsewhere).
    pub pins: PinDir,
}

impl Default for XdpOptions {
    fn default() -> Self {
        Self {
            pins: PinDir::from_env(),
        }
    }
}

/// The attached, pinned XDP filter. Dropping it leaves filtering in place.
#[derive(Debug)]
pub struct XdpRuntime {
    maps: XdpMaps,
    pins: PinDir,
    program: ProgramState,
    interfaces: Vec<AttachedInterface>,
}

impl XdpRuntime {
    /// The maps (counters, denylist, allowlist readout).
    #[must_use]
    pub fn maps(&self) -> &XdpMaps {
        &self.maps
    }

    /// The maps, to change (allowlist diff, denylist, mode, ports).
    pub fn maps_mut(&mut self) -> &mut XdpMaps {
        &mut self.maps
    }

    /// Where everything is pinned.
    #[must_use]
    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Whether the program was fresh, adopted or replaced at start.
    #[must_use]
    pub fn program_state(&self) -> ProgramState {
        self.program
    }

    /// The interfaces the filter is on.
    #[must_use]
    pub fn interfaces(&self) -> &[AttachedInterface] {
        &self.interfaces
    }

    /// Removes the program from every interface and deletes every pin.
    ///
    /// # Errors
    /// A pin cannot be removed.
    pub fn detach(self) -> Result<Vec<PathBuf>, XdpError> {
        self.pins.remove_all()
    }
}

/// Loads (or adopts the pinned) program, attaches it per `[xdp]`, applies mode, protected ports
/// and the effective allowlist (as a diff).
///
/// # Errors
/// [`XdpError`] when the program cannot be loaded or attached.
pub fn start(cfg: &Config) -> Result<XdpRuntime, XdpError> {
    start_with(cfg, &XdpOptions::default())
}

/// [`start`] with explicit options.
///
/// # Errors
/// [`XdpError`] when the program cannot be loaded or attached.
pub fn start_with(cfg: &Config, opts: &XdpOptions) -> Result<XdpRuntime, XdpError> {
    object::object()?;
    let wanted: Vec<ipnet::IpNet> = effective_allowlist(cfg)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if wanted.is_empty() && cfg.xdp.mode == crate::config::XdpMode::Enforce {
        return Err(XdpError::EmptyAllowlist(cfg.protected_ports()));
    }
    let pins = opts.pins.clone();
    pins.ensure()?;
    check_pinned_layouts(&pins)?;
    let mut ebpf = object::open(Some(&pins))?;
    // Maps first, program second: a freshly attached filter already has its allowlist.
    let mut maps = XdpMaps::from_ebpf(&mut ebpf)?;
    maps.set_mode(cfg.xdp.mode)?;
    maps.set_ipv6_deny_prefix(cfg.autoblock.ipv6_prefix)?;
    maps.set_syn_limit(cfg.xdp.syn_limit())?;
    maps.set_protected_ports(&cfg.protected_ports())?;
    let diff = maps.sync_allowlist(&wanted)?;
    let (program, interfaces) =
        attach::install(&mut ebpf, &pins, &cfg.xdp.interfaces, cfg.xdp.attach)?;
    tracing::info!(
        program = ?program,
        interfaces = ?interfaces,
        allow_added = diff.added.len(),
        allow_removed = diff.removed.len(),
        mode = ?cfg.xdp.mode,
        pins = %pins.root().display(),
        "XDP filter in place"
    );
    Ok(XdpRuntime {
        maps,
        pins,
        program,
        interfaces,
    })
}

/// Puts a reloaded config's `xdp.mode`, `xdp.protected_ports` and `xdp.allow` (with the
/// `allow add` entries, as a diff) into the filter pinned in `pins`, as [`start`] does; the
/// program and its links stay as they are.
///
/// # Errors
/// [`XdpError::EmptyAllowlist`] (nothing is changed then), a map or allowlist file failure.
pub fn reconfigure(pins: &PinDir, cfg: &Config) -> Result<AllowDiff, XdpError> {
    let wanted: Vec<ipnet::IpNet> = effective_allowlist(cfg)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if wanted.is_empty() && cfg.xdp.mode == crate::config::XdpMode::Enforce {
        return Err(XdpError::EmptyAllowlist(cfg.protected_ports()));
    }
    let mut maps = open_pinned(pins)?;
    // The allowlist before the mode, so a switch to enforce never meets the old allowlist.
    let diff = maps.sync_allowlist(&wanted)?;
    maps.set_protected_ports(&cfg.protected_ports())?;
    maps.set_syn_limit(cfg.xdp.syn_limit())?;
    maps.set_mode(cfg.xdp.mode)?;
    Ok(diff)
}

/// Opens the maps of the filter pinned in `pins` (CLI use while a daemon runs or after it).
///
/// # Errors
/// [`XdpError::NotPinned`] when nothing is pinned there.
pub fn open_pinned(pins: &PinDir) -> Result<XdpMaps, XdpError> {
    XdpMaps::from_pins(pins)
}

/// Detaches the filter pinned in `pins` from every interface and removes program and maps.
///
/// # Errors
/// A pin cannot be removed.
pub fn detach(pins: &PinDir) -> Result<Vec<PathBuf>, XdpError> {
    pins.remove_all()
}

/// Refuses to reuse pinned maps whose layout differs from this build's.
fn check_pinned_layouts(pins: &PinDir) -> Result<(), XdpError> {
    const fn sz<T>() -> u32 {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "map types are a few KiB at most"
        )]
        {
            core::mem::size_of::<T>() as u32
        }
    }
    let expected: [(&str, u32, u32, u32); 10] = [
        (MAP_CONFIG, 4, sz::<XdpConfig>(), 1),
        (MAP_PORTS, 4, sz::<PortBitmap>(), 1),
        (MAP_ALLOW_V4, 8, 4, ALLOW_MAX_ENTRIES),
        (MAP_ALLOW_V6, 20, 4, ALLOW_MAX_ENTRIES),
        (MAP_DENY_V4, 4, sz::<DenyEntry>(), DENY_MAX_ENTRIES),
        (MAP_DENY_V6, 16, sz::<DenyEntry>(), DENY_MAX_ENTRIES),
        (MAP_COUNTERS, 4, sz::<CounterValue>(), COUNTER_SLOTS),
        (MAP_TRACE, 4, sz::<TraceConfig>(), 1),
        (MAP_SYN_V4, 4, sz::<SynBucket>(), SYN_MAX_ENTRIES),
        (MAP_SYN_V6, 8, sz::<SynBucket>(), SYN_MAX_ENTRIES),
    ];
    for (name, key, value, max) in expected {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .map_err(|e| XdpError::map(format!("inspecting {}", path.display()), e))?;
        let got = (info.key_size(), info.value_size(), info.max_entries());
        if got != (key, value, max) {
            return Err(XdpError::IncompatiblePin {
                map: name.to_string(),
                detail: format!(
                    "key/value/max_entries {}/{}/{}, this build wants {key}/{value}/{max}",
                    got.0, got.1, got.2
                ),
            });
        }
    }
    Ok(())
}
