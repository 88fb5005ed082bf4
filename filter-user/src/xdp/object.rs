//! The XDP object embedded at build time, and loading it: with maps pinned (the daemon) or
//! unpinned (tests and benches that must not touch a running daemon's state).

use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use filter_common::trace::TraceConfig;
use filter_common::xdp::{ALL_MAPS, PROG_FILTER, PROG_PASS_ALL, TRACE_MAPS};

use super::{PinDir, TraceEvent, TraceReader, TraceSwitch, XdpError, XdpMaps};

/// The object `cargo xtask build-ebpf` produced; empty when it had not run before the build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/filter-ebpf.o"));

/// The embedded object, or [`XdpError::NoObject`].
///
/// # Errors
/// The binary was built without the XDP object.
pub fn object() -> Result<&'static [u8], XdpError> {
    if OBJECT.is_empty() {
        Err(XdpError::NoObject)
    } else {
        Ok(OBJECT)
    }
}

/// Parses the object and creates its maps: reusing (or creating and pinning) the maps in
/// `pins`, or private unpinned maps when `pins` is `None`. Programs are not loaded yet.
///
/// # Errors
/// No object, or the kernel refuses a map.
pub fn open(pins: Option<&PinDir>) -> Result<Ebpf, XdpError> {
    open_object(object()?, pins)
}

/// [`open`] for the object `bytes`.
fn open_object(bytes: &[u8], pins: Option<&PinDir>) -> Result<Ebpf, XdpError> {
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, std::path::PathBuf)> = pins
        .map(|p| {
            ALL_MAPS
                .iter()
                .chain(&TRACE_MAPS)
                .map(|m| (*m, p.map(m)))
                .collect()
        })
        .unwrap_or_default();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(bytes).map_err(XdpError::Load)
}

/// The named XDP program of `ebpf`, loaded into the kernel (verified).
///
/// # Errors
/// The program is missing or the verifier rejects it.
pub fn load_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, XdpError> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| XdpError::MissingProgram(name.to_string()))?
        .try_into()
        .map_err(|e| XdpError::program(format!("{name} is not an XDP program"), e))?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|e| XdpError::program(format!("loading {name} (verifier)"), e))?;
    }
    Ok(prog)
}

/// The filter and the empty baseline program loaded with private maps, not attached anywhere:
/// for `BPF_PROG_TEST_RUN` tests and the per-frame cost bench.
#[derive(Debug)]
pub struct Standalone {
    ebpf: Ebpf,
    maps: XdpMaps,
    /// The trace switch and events; `None` for an object built before tracing.
    trace: Option<(TraceSwitch, TraceReader)>,
}

/// One `BPF_PROG_TEST_RUN` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunResult {
    /// The XDP action returned (`XDP_DROP` = 1, `XDP_PASS` = 2).
    pub action: u32,
    /// The kernel's average time per repetition.
    pub per_run: std::time::Duration,
}

impl Standalone {
    /// Loads both programs with fresh, unpinned maps (empty allowlist, enforce, no port protected).
    ///
    /// # Errors
    /// No object, or the kernel refuses a map or a program.
    pub fn load() -> Result<Self, XdpError> {
        Self::load_object(object()?)
    }

    /// [`Standalone::load`] for another build's object (the bench compares builds in one run);
    /// an object without tracing loads too ([`Standalone::set_trace`] then fails).
    ///
    /// # Errors
    /// The object is not an edgefilter XDP object, or the kernel refuses a map or a program.
    pub fn load_object(bytes: &[u8]) -> Result<Self, XdpError> {
        let mut ebpf = open_object(bytes, None)?;
        load_program(&mut ebpf, PROG_FILTER)?;
        load_program(&mut ebpf, PROG_PASS_ALL)?;
        let maps = XdpMaps::from_ebpf(&mut ebpf)?;
        let trace = match TraceSwitch::from_ebpf(&mut ebpf) {
            Ok(switch) => Some((switch, TraceReader::from_ebpf(&mut ebpf)?)),
            Err(XdpError::MissingMap(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(Self { ebpf, maps, trace })
    }

    /// Writes the trace switch (see [`super::trace_config`]).
    ///
    /// # Errors
    /// The object has no tracing, or the map update fails.
    pub fn set_trace(&mut self, cfg: TraceConfig) -> Result<(), XdpError> {
        let (switch, _) = self.trace_parts()?;
        switch.set(cfg)
    }

    /// The trace events logged since the last call, oldest first.
    ///
    /// # Errors
    /// The object has no tracing.
    pub fn trace_events(&mut self) -> Result<Vec<TraceEvent>, XdpError> {
        let (_, reader) = self.trace_parts()?;
        Ok(reader.read())
    }

    fn trace_parts(&mut self) -> Result<&mut (TraceSwitch, TraceReader), XdpError> {
        self.trace
            .as_mut()
            .ok_or_else(|| XdpError::MissingMap(filter_common::xdp::MAP_TRACE.to_string()))
    }

    /// The private maps.
    #[must_use]
    pub fn maps(&self) -> &XdpMaps {
        &self.maps
    }

    /// The private maps, to configure.
    pub fn maps_mut(&mut self) -> &mut XdpMaps {
        &mut self.maps
    }

    /// Runs the filter on `frame` `repeat` times.
    ///
    /// # Errors
    /// The kernel refuses the run (e.g. a frame shorter than 14 bytes).
    pub fn run(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult, XdpError> {
        self.run_program(PROG_FILTER, frame, repeat)
    }

    /// Runs the empty `XDP_PASS` baseline on `frame` `repeat` times.
    ///
    /// # Errors
    /// The kernel refuses the run.
    pub fn run_pass_all(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult, XdpError> {
        self.run_program(PROG_PASS_ALL, frame, repeat)
    }

    fn run_program(
        &mut self,
        name: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<RunResult, XdpError> {
        let prog = load_program(&mut self.ebpf, name)?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::new()
        };
        let r = prog.test_run(opts).map_err(|e: ProgramError| {
            XdpError::program(format!("BPF_PROG_TEST_RUN of {name}"), e)
        })?;
        Ok(RunResult {
            action: r.return_value,
            per_run: r.duration,
        })
    }
}
