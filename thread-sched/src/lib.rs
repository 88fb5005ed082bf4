//! Safe wrappers for Linux per-thread scheduling policy, addressed by kernel thread id.
//!
//! edgefilter raises a shard thread to `SCHED_FIFO` for the moment it has a key change to
//! apply. No kept crate offers that safely by thread id: nix and rustix lack
//! `sched_setscheduler`, and `thread-priority` addresses threads by `pthread_t`, which is
//! undefined behaviour to use once the thread has exited (a kernel tid just gives `ESRCH`).
//! So the three syscalls live here, each behind a safe function, and the `edgefilter` crate
//! itself forbids `unsafe`.
#![cfg(target_os = "linux")]

use std::io;

/// A scheduling policy (the flag `SCHED_RESET_ON_FORK` is always set when changing one, so a
/// policy never leaks into a child process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `SCHED_OTHER`, the default time-sharing policy.
    Other,
    /// `SCHED_FIFO`, real-time first-in first-out.
    Fifo,
    /// `SCHED_RR`, real-time round-robin.
    RoundRobin,
    /// `SCHED_BATCH`.
    Batch,
    /// `SCHED_IDLE`.
    Idle,
    /// `SCHED_DEADLINE` or a policy this crate does not name (the raw value).
    Unknown(i32),
}

impl Policy {
    fn raw(self) -> i32 {
        match self {
            Self::Other => libc::SCHED_OTHER,
            Self::Fifo => libc::SCHED_FIFO,
            Self::RoundRobin => libc::SCHED_RR,
            Self::Batch => libc::SCHED_BATCH,
            Self::Idle => libc::SCHED_IDLE,
            Self::Unknown(v) => v,
        }
    }

    fn from_raw(v: i32) -> Self {
        match v {
            libc::SCHED_OTHER => Self::Other,
            libc::SCHED_FIFO => Self::Fifo,
            libc::SCHED_RR => Self::RoundRobin,
            libc::SCHED_BATCH => Self::Batch,
            libc::SCHED_IDLE => Self::Idle,
            v => Self::Unknown(v),
        }
    }
}

/// A kernel thread id; `Tid::CURRENT` (0) names the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tid(pub i32);

impl Tid {
    /// The calling thread, as the syscalls spell it.
    pub const CURRENT: Self = Self(0);

    /// The calling thread's own id (never 0).
    #[must_use]
    pub fn current() -> Self {
        // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
        Self(unsafe { libc::gettid() })
    }
}

/// Sets thread `tid` to `policy` at `priority` (1–99 for the real-time policies, 0 otherwise),
/// with `SCHED_RESET_ON_FORK`.
///
/// # Errors
/// The OS error: `EPERM` without `CAP_SYS_NICE` (or an `RLIMIT_RTPRIO`), `ESRCH` for a thread
/// that does not exist, `EINVAL` for a priority the policy does not take.
pub fn set_policy(tid: Tid, policy: Policy, priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid, initialised sched_param that outlives the call; the kernel
    // only reads it. A stale tid yields ESRCH, never undefined behaviour.
    let rc = unsafe {
        libc::sched_setscheduler(
            tid.0,
            policy.raw() | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The scheduling policy of thread `tid` (without the reset-on-fork flag).
///
/// # Errors
/// The OS error, e.g. `ESRCH` for an unknown thread.
pub fn policy_of(tid: Tid) -> io::Result<Policy> {
    // SAFETY: sched_getscheduler only reads the thread's policy; no memory is passed.
    let rc = unsafe { libc::sched_getscheduler(tid.0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(Policy::from_raw(rc & !libc::SCHED_RESET_ON_FORK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_thread_has_a_real_id_and_a_policy() {
        assert!(Tid::current().0 > 0);
        assert_eq!(policy_of(Tid::CURRENT).expect("policy"), Policy::Other);
        assert_eq!(
            policy_of(Tid::current()).expect("policy"),
            policy_of(Tid::CURRENT).expect("policy")
        );
    }

    #[test]
    fn a_missing_thread_is_an_error_not_undefined_behaviour() {
        let e = policy_of(Tid(i32::MAX)).expect_err("no such thread");
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
        assert!(set_policy(Tid(i32::MAX), Policy::Fifo, 1).is_err());
    }

    #[test]
    fn a_bad_priority_is_refused() {
        let e = set_policy(Tid::CURRENT, Policy::Other, 5).expect_err("SCHED_OTHER takes 0");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
}
