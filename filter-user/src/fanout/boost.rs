//! A brief real-time boost for the writer and for a shard that has a change to apply.
//!
//! Under a full proxy load the two cores are oversubscribed (load generator, origin, shards), and
//! a shard that has been sent a revocation may wait a whole kernel time slice (~1.4 ms on 6.18's
//! EEVDF) before it runs again. So the control plane raises each shard thread to `SCHED_FIFO`
//! priority 1, the lowest real-time priority, just before publishing a change to it; the shard
//! runs at once, applies the change, and drops itself back to `SCHED_OTHER` in the same drain
//! ([`super::ShardInbox::drain`]). A shard is real-time only between a publish and its next
//! scheduler tick, never while serving ordinary traffic. The writer likewise holds itself
//! real-time from before the store commit until it has published ([`RaisedSelf`]), so a busy core
//! cannot park it between the two.
//!
//! Only a thread running under plain `SCHED_OTHER` is touched: one the operator already made
//! real-time (e.g. `chrt -f 10 edgefilter run`) or put in `SCHED_BATCH`/`SCHED_IDLE` keeps its
//! policy.
//!
//! Raising another thread needs `CAP_SYS_NICE` (or an `RLIMIT_RTPRIO`); without it the first
//! failure turns boosting off for the process with one warning, and propagation simply waits
//! for the scheduler as before. `SCHED_RESET_ON_FORK` keeps the policy from leaking into any
//! child process.
//!
//! The syscalls sit behind the safe API of the workspace crate `thread-sched` (kernel thread
//! ids, not `pthread_t`, so a thread that has exited yields `ESRCH`, never undefined behaviour).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use thread_sched::{Policy, Tid, policy_of as sched_policy_of, set_policy};

/// Set by the first `EPERM`: boosting is off for the rest of the process.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// The calling thread's kernel thread id.
#[must_use]
pub fn current_tid() -> i32 {
    Tid::current().0
}

/// Raises thread `tid` (0 = the calling thread) to `SCHED_FIFO` priority 1 (reset on fork).
///
/// # Errors
/// The OS error: `EPERM` without `CAP_SYS_NICE`, `ESRCH` if the thread is gone.
pub fn raise(tid: i32) -> io::Result<()> {
    set_policy(Tid(tid), Policy::Fifo, 1)
}

/// [`raise`] if `tid` runs under plain `SCHED_OTHER` and boosting is available; whether this
/// call raised it (and so whoever called it must lower it). The first `EPERM` turns boosting off
/// for the process with one warning.
pub fn try_raise(tid: i32) -> bool {
    if UNAVAILABLE.load(Ordering::Relaxed) || policy_of(tid).ok() != Some(Policy::Other) {
        return false;
    }
    match raise(tid) {
        Ok(()) => true,
        Err(e) => {
            if e.kind() == io::ErrorKind::PermissionDenied
                && !UNAVAILABLE.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(
                    "cannot raise shard or control-plane threads (needs CAP_SYS_NICE): a key change may wait for a busy core's next time slice"
                );
            }
            false
        }
    }
}

/// Keeps the calling thread raised until dropped (the control plane's commit → publish).
#[must_use = "the thread is lowered when the guard drops"]
pub struct RaisedSelf(bool);

impl RaisedSelf {
    /// Raises the calling thread if possible.
    pub fn now() -> Self {
        Self(try_raise(0))
    }
}

impl Drop for RaisedSelf {
    fn drop(&mut self) {
        if self.0 {
            lower_self();
        }
    }
}

/// Returns the calling thread to `SCHED_OTHER` (lowering needs no privilege).
pub fn lower_self() {
    if let Err(e) = set_policy(Tid::CURRENT, Policy::Other, 0) {
        tracing::warn!(error = %e, "could not drop a shard back to normal scheduling");
    }
}

/// The scheduling policy of thread `tid` (0 = the calling thread).
///
/// # Errors
/// The OS error, e.g. `ESRCH` for an unknown thread.
pub fn policy_of(tid: i32) -> io::Result<Policy> {
    sched_policy_of(Tid(tid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_raised_by_another_and_lowers_itself() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tid_tx.send(current_tid()).expect("send tid");
            go_rx.recv().expect("go");
            let raised = policy_of(0).expect("policy");
            lower_self();
            (raised, policy_of(0).expect("policy"))
        });
        let tid = tid_rx.recv().expect("tid");
        assert_eq!(policy_of(tid).expect("policy"), Policy::Other);
        raise(tid).expect("raising a thread needs CAP_SYS_NICE (the tests run as root)");
        go_tx.send(()).expect("go");
        let (raised, lowered) = t.join().expect("join");
        assert_eq!(raised, Policy::Fifo);
        assert_eq!(lowered, Policy::Other);
    }

    #[test]
    fn a_thread_the_operator_made_real_time_is_left_alone() {
        let t = std::thread::spawn(|| {
            raise(0).expect("raise (the tests run as root)");
            let untouched = !try_raise(0);
            let kept = policy_of(0).expect("policy");
            lower_self();
            (untouched, kept)
        });
        assert_eq!(t.join().expect("join"), (true, Policy::Fifo));
    }

    #[test]
    fn a_missing_thread_is_an_error() {
        assert!(raise(i32::MAX).is_err());
    }
}
