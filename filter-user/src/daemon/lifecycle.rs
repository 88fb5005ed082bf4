//! What a serving daemon waits for, and what it does meanwhile: SIGTERM/SIGINT (drain and
//! stop), SIGHUP and `POST /v1/reload` (reload the config, one at a time: [`Reloader`]), SIGUSR2 (start this binary's path again with `run --takeover`, the
//! upgrade under a service manager), and a daemon taking over, served by the takeover desk's
//! thread on the daemon's takeover socket.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::handover::{self, Item};
use super::reload::{ReloadAsk, Reloader};
use crate::admin::AdminHandle;
use crate::control::ControlPlane;
use crate::proxy::ProxyHandle;

/// How long a daemon handing over waits for the admin requests under way.
const ADMIN_IDLE_LIMIT: Duration = Duration::from_secs(5);

/// Why the daemon stops serving.
pub(super) enum End {
    /// SIGTERM or SIGINT.
    Stop,
    /// A daemon took over and serves; its end of the takeover socket stays open until this
    /// process exits, which is how the new daemon learns that it has.
    HandedOver(handover::Session),
}

/// What the takeover desk tells the daemon's main loop.
pub(super) enum Event {
    /// A daemon taking over is ready: stop accepting, then answer the published revision.
    Ready { reply: std::sync::mpsc::Sender<u64> },
    /// It went away before it served: accept again.
    Abandoned,
    /// It serves.
    Done(handover::Session),
}

/// How to start this daemon's binary again, for SIGUSR2.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The binary's path as started (the installed path, which an upgrade replaces).
    pub exe: Option<PathBuf>,
    /// The config file.
    pub config: PathBuf,
    /// `--no-xdp`.
    pub no_xdp: bool,
}

impl Upgrade {
    /// Starts `<exe> --config <config> run --takeover [--no-xdp]`, as this daemon's child (so
    /// a service manager counts it in the service), its output where this daemon's goes.
    fn spawn(&self) {
        let Some(exe) = &self.exe else {
            tracing::error!(
                "SIGUSR2: this daemon's binary path is unknown; start `edgefilter run --takeover` by hand"
            );
            return;
        };
        let mut cmd = Command::new(exe);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["run", "--takeover"])
            .stdin(Stdio::null());
        if self.no_xdp {
            cmd.arg("--no-xdp");
        }
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(pid = child.id(), exe = %exe.display(), "SIGUSR2: started `run --takeover`");
                // Reaped if it fails before this daemon exits; once this one has exited, the
                // new daemon is on its own.
                let _ = std::thread::Builder::new()
                    .name("upgrade-child".into())
                    .spawn(move || child.wait());
            }
            Err(e) => {
                tracing::error!(exe = %exe.display(), error = %e, "SIGUSR2: cannot start `run --takeover`")
            }
        }
    }
}

/// What the main loop acts on.
pub(super) struct Serving<'a> {
    pub proxy: &'a ProxyHandle,
    pub admin: &'a AdminHandle,
    pub plane: &'a ControlPlane,
    pub reloader: Reloader,
    /// `POST /v1/reload` requests from the admin API.
    pub reloads: UnboundedReceiver<ReloadAsk>,
    pub upgrade: &'a Upgrade,
}

impl Serving<'_> {
    /// Stops accepting (proxy and admin API); the revision published once no admin request is
    /// under way.
    fn stop_accepting(&self) -> u64 {
        self.proxy.pause();
        self.admin.pause();
        if !self.admin.wait_idle(ADMIN_IDLE_LIMIT) {
            tracing::warn!(
                "admin API connections still open after {ADMIN_IDLE_LIMIT:?}; handing over anyway"
            );
        }
        match self.plane.sync() {
            Ok(revision) => revision,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's revision before handing over");
                0
            }
        }
    }

    fn resume(&self) {
        self.proxy.resume();
        self.admin.resume();
    }

    /// Serves until SIGTERM/SIGINT or a completed takeover; `events` come from the desk.
    pub fn wait_for_end(mut self, mut events: UnboundedReceiver<Event>) -> std::io::Result<End> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let mut hup = signal(SignalKind::hangup())?;
            let mut usr2 = signal(SignalKind::user_defined2())?;
            loop {
                tokio::select! {
                    _ = term.recv() => return Ok(End::Stop),
                    _ = int.recv() => return Ok(End::Stop),
                    _ = hup.recv() => self.reloader.on_signal(self.proxy),
                    Some(ask) = self.reloads.recv() => self.reloader.on_request(self.proxy, ask),
                    _ = usr2.recv() => self.upgrade.spawn(),
                    Some(event) = events.recv() => match event {
                        Event::Ready { reply } => {
                            let _ = reply.send(self.stop_accepting());
                        }
                        Event::Abandoned => self.resume(),
                        Event::Done(session) => return Ok(End::HandedOver(session)),
                    },
                }
            }
        })
    }
}

/// The thread serving the takeover socket; stopped (and the socket removed) when dropped.
pub(super) struct Desk {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Drop for Desk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Desk {
    /// Serves `listener`: offers `offer` to each daemon that asks, one at a time, and reports
    /// to the main loop through the returned receiver.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn open(
        listener: handover::Listener,
        offer: Vec<(Item, OwnedFd)>,
    ) -> std::io::Result<(Self, UnboundedReceiver<Event>)> {
        let (events, rx) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let join = std::thread::Builder::new()
            .name("takeover-desk".into())
            .spawn(move || desk(&listener, &offer, &events, &flag))?;
        Ok((
            Self {
                stop,
                join: Some(join),
            },
            rx,
        ))
    }
}

fn desk(
    listener: &handover::Listener,
    offer: &[(Item, OwnedFd)],
    events: &UnboundedSender<Event>,
    stop: &AtomicBool,
) {
    let stopping = || stop.load(Ordering::Relaxed);
    while !stopping() {
        let session = match listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "takeover socket: refused a connection");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let pid = session.pid();
        tracing::info!(
            pid,
            "a daemon is taking over: handing it the listening sockets and the locks"
        );
        if let Err(e) = session.offer(&handover::borrowed(offer)) {
            tracing::warn!(pid, error = %e, "takeover: cannot send the offer; still serving");
            continue;
        }
        match session.wait_ready(&stopping) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(pid, error = %e, "takeover: the new daemon did not get ready; still serving");
                continue;
            }
        }
        let (reply, revision) = std::sync::mpsc::channel();
        if events.send(Event::Ready { reply }).is_err() {
            return;
        }
        let Ok(revision) = revision.recv() else {
            return;
        };
        match session.stopped(revision) {
            Ok(()) => {
                let _ = events.send(Event::Done(session));
                return;
            }
            Err(e) => {
                tracing::error!(pid, error = %e, "takeover: the new daemon went away before it served; accepting again");
                if events.send(Event::Abandoned).is_err() {
                    return;
                }
            }
        }
    }
}
