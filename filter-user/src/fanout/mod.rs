//! Lock-free fan-out of changes from one writer (the control plane) to every shard; used by
//! `auth` (a shard's gate drains its inbox) and `control` (the writer publishes and awaits acks).
//!
//! Each shard has its own lock-free queue ([`crossbeam_queue::SegQueue`]), a `published`
//! revision the writer bumps after pushing, and an `applied` revision the shard bumps after
//! draining. A shard's "anything new?" check is one atomic load ([`ShardInbox::pending`]); an
//! idle shard awaits [`ShardInbox::notified`] (a [`tokio::sync::Notify`], which works across
//! runtimes). The writer awaits [`AckWatcher::wait_applied`], woken by the shards themselves.
//!
//! A shard whose thread is bound ([`ShardInbox::bind_thread`]) is briefly raised to real-time
//! priority while a change waits for it (see [`boost`]), so a busy core does not hold a
//! revocation back for a whole time slice.
//!
//! Propagation (publish → last shard applied) is measured by the shard that completes a
//! revision and handed to the [`PropagationObserver`] (later the
//! `edgefilter_revocation_propagation_seconds` histogram).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use tokio::sync::Notify;

pub mod boost;
pub mod propagation;

pub use propagation::Propagation;

/// Called once per revision with its propagation time (commit → last shard applied).
/// Runs on a shard thread: keep it cheap and non-blocking (e.g. an atomic histogram).
pub type PropagationObserver = Arc<dyn Fn(u64, Duration) + Send + Sync>;

/// Publish times are kept for this many most recent revisions (older ones are not measured).
const TIMES: usize = 4096;

/// Fan-out failures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FanoutError {
    /// Revisions must strictly increase.
    #[error("revision {rev} published after {last}: revisions must strictly increase")]
    OutOfOrder {
        /// The rejected revision.
        rev: u64,
        /// The last published revision.
        last: u64,
    },
    /// Not every shard applied the revision in time.
    #[error(
        "shards did not apply revision {rev} within {timeout:?} (slowest shard is at {slowest})"
    )]
    Timeout {
        /// The awaited revision.
        rev: u64,
        /// The lowest applied revision among the shards.
        slowest: u64,
        /// The time waited.
        timeout: Duration,
    },
}

/// One queued change.
struct Item<C> {
    rev: u64,
    change: Arc<C>,
}

/// One shard's mailbox, shared by the writer and that shard.
struct Slot<C> {
    queue: SegQueue<Item<C>>,
    /// Highest revision pushed to `queue` (written by the control plane only).
    published: AtomicU64,
    /// Highest revision this shard has applied (written by the shard only).
    applied: AtomicU64,
    /// Wakes an idle shard (shared so a shard task can await it without borrowing the inbox).
    wake: Arc<Notify>,
    /// Kernel thread id of the shard's thread once bound; 0 = not bound (never boosted).
    tid: AtomicI32,
    /// Set by the writer after raising the shard, cleared by the shard when it lowers itself.
    boosted: AtomicBool,
}

/// A revision's publish time, readable by whichever shard completes it.
struct Stamp {
    rev: AtomicU64,
    nanos: AtomicU64,
}

/// State shared by the writer, the watchers and every shard.
struct Shared<C> {
    slots: Box<[Slot<C>]>,
    /// Highest revision applied by every shard, as claimed by the shard that completed it.
    completed: AtomicU64,
    /// Tasks currently inside `wait_applied` (shards skip the wake-up when zero).
    waiting: AtomicUsize,
    acked: Notify,
    base: Instant,
    stamps: Box<[Stamp]>,
    observer: Option<PropagationObserver>,
}

impl<C> Shared<C> {
    fn min_applied(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.applied.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }

    fn nanos_since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Publish time of `rev` if still remembered.
    fn stamp(&self, rev: u64) -> Option<Duration> {
        let s = &self.stamps[slot_of(rev)];
        let nanos = s.nanos.load(Ordering::Acquire);
        (s.rev.load(Ordering::Acquire) == rev).then(|| Duration::from_nanos(nanos))
    }

    /// Called by a shard after it published its applied revision: records the revisions it
    /// completed (exactly one shard claims each) and wakes waiters.
    fn after_apply(&self) {
        let min = self.min_applied();
        let prev = self.completed.fetch_max(min, Ordering::SeqCst);
        if min > prev
            && let Some(obs) = &self.observer
        {
            let now = self.base.elapsed();
            // Bounded: at most the remembered window.
            let first = prev.max(min.saturating_sub(TIMES as u64)) + 1;
            for rev in first..=min {
                if let Some(at) = self.stamp(rev) {
                    obs(rev, now.saturating_sub(at));
                }
            }
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.acked.notify_waiters();
        }
    }
}

fn slot_of(rev: u64) -> usize {
    // TIMES is a power of two far below u64::MAX; the cast keeps the low bits.
    usize::try_from(rev % TIMES as u64).unwrap_or(0)
}

/// The control plane's side: publishes changes to every shard. One writer.
pub struct Fanout<C> {
    shared: Arc<Shared<C>>,
    last: u64,
}

/// One shard's side: checks for, and applies, published changes. Owned by that shard's thread.
pub struct ShardInbox<C> {
    shared: Arc<Shared<C>>,
    index: usize,
    applied: u64,
}

/// A cloneable handle that waits for shards to apply a revision (e.g. from an admin request).
pub struct AckWatcher<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for AckWatcher<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: Send + Sync + 'static> Fanout<C> {
    /// A fan-out to `shards` shards that all start at revision `start` (the store's revision
    /// loaded before the shards were built). `observer` receives each revision's propagation.
    #[must_use]
    pub fn new(
        shards: usize,
        start: u64,
        observer: Option<PropagationObserver>,
    ) -> (Self, Vec<ShardInbox<C>>) {
        let slots: Box<[Slot<C>]> = (0..shards)
            .map(|_| Slot {
                queue: SegQueue::new(),
                published: AtomicU64::new(start),
                applied: AtomicU64::new(start),
                wake: Arc::new(Notify::new()),
                tid: AtomicI32::new(0),
                boosted: AtomicBool::new(false),
            })
            .collect();
        let stamps = (0..TIMES)
            .map(|_| Stamp {
                rev: AtomicU64::new(0),
                nanos: AtomicU64::new(0),
            })
            .collect();
        let shared = Arc::new(Shared {
            slots,
            completed: AtomicU64::new(start),
            waiting: AtomicUsize::new(0),
            acked: Notify::new(),
            base: Instant::now(),
            stamps,
            observer,
        });
        let inboxes = (0..shards)
            .map(|index| ShardInbox {
                shared: Arc::clone(&shared),
                index,
                applied: start,
            })
            .collect();
        (
            Self {
                shared,
                last: start,
            },
            inboxes,
        )
    }

    /// Publishes `change` at revision `rev` to every shard, timed from now.
    ///
    /// # Errors
    /// [`FanoutError::OutOfOrder`] unless `rev` is above the last published revision.
    pub fn publish(&mut self, rev: u64, change: Arc<C>) -> Result<(), FanoutError> {
        self.publish_at(rev, change, Instant::now())
    }

    /// Publishes with an explicit commit time (propagation is measured from it).
    ///
    /// # Errors
    /// [`FanoutError::OutOfOrder`] unless `rev` is above the last published revision.
    pub fn publish_at(
        &mut self,
        rev: u64,
        change: Arc<C>,
        committed_at: Instant,
    ) -> Result<(), FanoutError> {
        if rev <= self.last {
            return Err(FanoutError::OutOfOrder {
                rev,
                last: self.last,
            });
        }
        self.last = rev;
        let stamp = &self.shared.stamps[slot_of(rev)];
        // Invalidate, write the time, then claim the slot for `rev`.
        stamp.rev.store(0, Ordering::Release);
        stamp.nanos.store(
            self.shared.nanos_since_base(committed_at),
            Ordering::Release,
        );
        stamp.rev.store(rev, Ordering::Release);
        for slot in &self.shared.slots {
            // Raise before the flag, the flag before the push: a shard that pops this item
            // sees the flag and lowers itself, so it never stays real-time.
            if self.boost(slot) {
                slot.boosted.store(true, Ordering::Release);
            }
            slot.queue.push(Item {
                rev,
                change: Arc::clone(&change),
            });
            slot.published.store(rev, Ordering::Release);
            slot.wake.notify_one();
        }
        Ok(())
    }

    /// Raises `slot`'s bound thread to real-time priority; whether it now is.
    fn boost(&self, slot: &Slot<C>) -> bool {
        let tid = slot.tid.load(Ordering::Acquire);
        tid != 0 && boost::try_raise(tid)
    }

    /// The last published revision.
    #[must_use]
    pub fn last_published(&self) -> u64 {
        self.last
    }

    /// A handle to wait for acknowledgements from another task.
    #[must_use]
    pub fn watcher(&self) -> AckWatcher<C> {
        AckWatcher {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Waits until every shard applied `rev`; see [`AckWatcher::wait_applied`].
    ///
    /// # Errors
    /// [`FanoutError::Timeout`].
    pub async fn wait_applied(&self, rev: u64, timeout: Duration) -> Result<Duration, FanoutError> {
        wait_applied(&self.shared, rev, timeout).await
    }
}

impl<C> AckWatcher<C> {
    /// Returns once every shard's applied revision is ≥ `rev`, with the time since `rev` was
    /// published (0 if it is no longer remembered or was applied before this call).
    ///
    /// # Errors
    /// [`FanoutError::Timeout`] if some shard is still behind after `timeout`.
    pub async fn wait_applied(&self, rev: u64, timeout: Duration) -> Result<Duration, FanoutError> {
        wait_applied(&self.shared, rev, timeout).await
    }

    /// The lowest revision applied by every shard.
    #[must_use]
    pub fn min_applied(&self) -> u64 {
        self.shared.min_applied()
    }

    /// Each shard's applied revision, by shard index.
    #[must_use]
    pub fn applied(&self) -> Vec<u64> {
        self.shared
            .slots
            .iter()
            .map(|s| s.applied.load(Ordering::Acquire))
            .collect()
    }
}

/// Decrements the waiter count on every exit path.
struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn wait_applied<C>(
    shared: &Shared<C>,
    rev: u64,
    timeout: Duration,
) -> Result<Duration, FanoutError> {
    let deadline = tokio::time::Instant::now() + timeout;
    shared.waiting.fetch_add(1, Ordering::SeqCst);
    let _guard = WaitingGuard(&shared.waiting);
    loop {
        let notified = shared.acked.notified();
        tokio::pin!(notified);
        // Register before checking, so an ack between the check and the await is not missed.
        notified.as_mut().enable();
        let slowest = shared.min_applied();
        if slowest >= rev {
            let took = shared.stamp(rev).map_or(Duration::ZERO, |at| {
                shared.base.elapsed().saturating_sub(at)
            });
            return Ok(took);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(FanoutError::Timeout {
                rev,
                slowest: shared.min_applied(),
                timeout,
            });
        }
    }
}

impl<C> Drop for ShardInbox<C> {
    /// Unbinds the thread: once the shard is gone its tid may be reused by any thread on the
    /// host, which the control plane must never raise.
    fn drop(&mut self) {
        self.shared.slots[self.index]
            .tid
            .store(0, Ordering::Release);
    }
}

impl<C> std::fmt::Debug for ShardInbox<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardInbox")
            .field("index", &self.index)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl<C> ShardInbox<C> {
    /// Whether changes are waiting. One atomic load; call it before every decision.
    #[inline]
    #[must_use]
    pub fn pending(&self) -> bool {
        self.shared.slots[self.index]
            .published
            .load(Ordering::Acquire)
            != self.applied
    }

    /// Applies every queued change in revision order, then publishes this shard's applied
    /// revision and wakes whoever waits for it. Returns how many changes were applied.
    pub fn drain(&mut self, mut apply: impl FnMut(u64, &C)) -> usize {
        let slot = &self.shared.slots[self.index];
        let mut n = 0;
        while let Some(item) = slot.queue.pop() {
            debug_assert!(item.rev > self.applied, "fan-out queue out of order");
            apply(item.rev, &item.change);
            self.applied = item.rev;
            n += 1;
        }
        if n > 0 {
            slot.applied.store(self.applied, Ordering::SeqCst);
            self.shared.after_apply();
        }
        if slot.boosted.swap(false, Ordering::AcqRel) {
            boost::lower_self();
        }
        n
    }

    /// Binds this inbox to the calling thread, the shard's own: from now on the control plane
    /// raises that thread to real-time priority while a change waits for it, and [`Self::drain`]
    /// lowers it again. Call it on the shard thread before serving.
    pub fn bind_thread(&self) {
        self.shared.slots[self.index]
            .tid
            .store(boost::current_tid(), Ordering::Release);
    }

    /// Resolves when the control plane has published something since the last wake-up; an idle
    /// shard task `select!`s on it. Spurious wake-ups are possible: check [`Self::pending`].
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.slots[self.index].wake.notified()
    }

    /// The shard's wake-up signal, for a task that awaits changes while the inbox itself is
    /// owned elsewhere (e.g. inside the shard's gate). Same semantics as [`Self::notified`].
    #[must_use]
    pub fn signal(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.slots[self.index].wake)
    }

    /// The revision this shard has applied.
    #[must_use]
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// This shard's index.
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }
}

#[cfg(test)]
mod tests;
