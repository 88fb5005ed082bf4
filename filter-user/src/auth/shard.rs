//! A shard's [`Gate`]: its own cache, the shared rules, and an inbox of store changes that it
//! drains (lock-free) before each decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::SegQueue;

use super::cache::{CacheUpdate, ShardCache};
use super::decide::{Decision, Now, decide};
use super::deny::{RenderCtx, denial};
use super::extract::extract;
use super::rules::AuthRules;
use crate::codes::ErrorCode;
use crate::gate::{Denial, Gate, GateRequest, Identity, Verdict};

/// Updates that bring a shard to `revision`, built once and shared by every shard.
#[derive(Debug)]
pub struct Batch {
    /// Store revision after these updates.
    pub revision: u64,
    /// The updates, in order.
    pub updates: Vec<CacheUpdate>,
}

/// One shard's inbox: a lock-free queue in, the applied revision out.
#[derive(Debug, Default)]
pub struct Inbox {
    queue: SegQueue<Arc<Batch>>,
    applied: AtomicU64,
}

impl Inbox {
    /// An inbox whose shard starts at `revision`.
    #[must_use]
    pub fn new(revision: u64) -> Self {
        Self {
            queue: SegQueue::new(),
            applied: AtomicU64::new(revision),
        }
    }

    /// Queues a batch for the shard.
    pub fn push(&self, batch: Arc<Batch>) {
        self.queue.push(batch);
    }

    /// The newest revision the shard has applied.
    #[must_use]
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
}

/// The key checker of one shard.
#[derive(Debug)]
pub struct ShardGate {
    cache: ShardCache,
    rules: Arc<AuthRules>,
    inbox: Option<Arc<Inbox>>,
}

impl ShardGate {
    /// A gate over `cache`; `inbox`, when given, is drained before each check.
    #[must_use]
    pub fn new(cache: ShardCache, rules: Arc<AuthRules>, inbox: Option<Arc<Inbox>>) -> Self {
        Self {
            cache,
            rules,
            inbox,
        }
    }

    /// Applies one change to this shard's cache.
    pub fn apply(&mut self, update: &CacheUpdate) {
        self.cache.apply(update);
    }

    /// The shard's cache.
    #[must_use]
    pub fn cache(&self) -> &ShardCache {
        &self.cache
    }

    /// Applies whatever the inbox holds.
    pub fn drain_inbox(&mut self) {
        let Some(inbox) = &self.inbox else { return };
        while let Some(batch) = inbox.queue.pop() {
            for u in &batch.updates {
                self.cache.apply(u);
            }
            inbox.applied.store(batch.revision, Ordering::Release);
        }
    }

    /// Checks a request at `now` (the [`Gate`] impl uses the system clock).
    pub fn check_at(&mut self, req: &GateRequest<'_>, now: Now) -> Verdict {
        self.drain_inbox();
        let Some(route) = self.rules.routes.get(req.route) else {
            return Verdict::Deny(Denial::new(ErrorCode::NoRoute));
        };
        let found = extract(route, req.headers, req.query);
        match decide(
            &self.cache,
            route,
            &self.rules.environment,
            found,
            req.peer,
            now,
        ) {
            Decision::Allow(e) => Verdict::Allow(Some(Identity {
                key_id: Arc::clone(e.key_id()),
                tenant: Arc::clone(e.owner().tenant()),
                user: Arc::clone(e.owner().user()),
            })),
            Decision::Deny(r) => Verdict::Deny(denial(
                &r,
                &RenderCtx {
                    route,
                    edge_env: &self.rules.environment,
                    peer: req.peer,
                },
            )),
        }
    }
}

impl Gate for ShardGate {
    fn check(&mut self, req: &GateRequest<'_>) -> Verdict {
        self.check_at(req, Now::system())
    }
}
