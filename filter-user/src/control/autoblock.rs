//! Auto-block's host-wide decision, on a thread of its own: every [`TICK`] it drains the shards'
//! reports, sums them per source within the window ([`HostTally`]) and has the control plane ban
//! each source that reached `autoblock.failures`; it also lets the plane forget expired bans.
//! It reads the threshold and window from the hub at each round, so a config reload applies.
//! Nothing here is on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ControlPlane;
use crate::autoblock::{Autoblock, HostTally};

/// How often the reports are drained (a ban lands at most this long after its last failure).
pub const TICK: Duration = Duration::from_millis(20);

/// How often expired bans are looked for.
const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// The running ticker; dropping it stops the thread.
#[derive(Debug)]
pub struct AutoblockTicker {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl AutoblockTicker {
    /// Starts draining `hub` into `plane`.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn spawn(plane: Arc<ControlPlane>, hub: Arc<Autoblock>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let join = std::thread::Builder::new()
            .name("autoblock".into())
            .spawn(move || run(&plane, &hub, &flag))?;
        Ok(Self {
            stop,
            join: Some(join),
        })
    }
}

impl Drop for AutoblockTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn run(plane: &ControlPlane, hub: &Autoblock, stop: &AtomicBool) {
    let s = hub.settings();
    let mut tally = HostTally::new(s.failures, s.window);
    let mut last_expire = Instant::now();
    let mut last_sweep = Instant::now();
    let mut crossed = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // A config reload may have changed the threshold or the window.
        let s = hub.settings();
        if tally.tuning() != (s.failures.max(1), s.window) {
            tally.retune(s.failures, s.window);
        }
        hub.drain(|r| {
            if tally.add(r) {
                crossed.push(r.source);
            }
        });
        for source in crossed.drain(..) {
            plane.autoban(source);
        }
        if last_expire.elapsed() >= EXPIRE_EVERY {
            plane.expire_bans();
            last_expire = Instant::now();
        }
        if last_sweep.elapsed() >= s.window {
            tally.sweep(Instant::now());
            last_sweep = Instant::now();
        }
        std::thread::sleep(TICK);
    }
}
