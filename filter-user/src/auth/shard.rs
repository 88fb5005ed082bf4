//! A shard's [`Gate`]: its own cache, the shared rules, and its [`ShardInbox`] of store
//! changes (the lock-free [`crate::fanout`]), drained before each decision and on wake-up.

use std::sync::Arc;

use super::cache::{CacheUpdate, ShardCache};
use super::decide::{Decision, Now, decide};
use super::deny::{RenderCtx, denial};
use super::extract::extract;
use super::rules::AuthRules;
use crate::codes::ErrorCode;
use crate::fanout::ShardInbox;
use crate::gate::{Denial, Gate, GateRequest, Identity, Verdict};

/// Updates that bring a shard to `revision`, built once and shared by every shard.
#[derive(Debug)]
pub struct Batch {
    /// Store revision after these updates.
    pub revision: u64,
    /// The updates, in order.
    pub updates: Vec<CacheUpdate>,
}

/// The key checker of one shard.
#[derive(Debug)]
pub struct ShardGate {
    cache: ShardCache,
    rules: Arc<AuthRules>,
    inbox: Option<ShardInbox<Batch>>,
}

impl ShardGate {
    /// A gate over `cache`; `inbox`, when given, is drained before each check.
    #[must_use]
    pub fn new(cache: ShardCache, rules: Arc<AuthRules>, inbox: Option<ShardInbox<Batch>>) -> Self {
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

    /// Applies whatever the inbox holds; one atomic load when nothing is pending.
    #[inline]
    pub fn drain_inbox(&mut self) {
        let Some(inbox) = &mut self.inbox else { return };
        if !inbox.pending() {
            return;
        }
        let cache = &mut self.cache;
        inbox.drain(|_, batch| {
            for u in &batch.updates {
                cache.apply(u);
            }
        });
    }

    /// Checks a request at `now` (the [`Gate`] impl uses the system clock) by the rules it
    /// carries ([`GateRequest::rules`], those of the config whose route table matched it), or
    /// else the ones this gate was built with.
    pub fn check_at(&mut self, req: &GateRequest<'_>, now: Now) -> Verdict<'_> {
        self.drain_inbox();
        let rules = match req.rules {
            None => &*self.rules,
            Some(r) => match r.downcast_ref::<AuthRules>() {
                Some(r) => r,
                None => {
                    debug_assert!(false, "the gate was handed rules of another kind");
                    &*self.rules
                }
            },
        };
        let Some(route) = rules.routes.get(req.route) else {
            return Verdict::Deny(Denial::new(ErrorCode::NoRoute));
        };
        let found = extract(route, req.headers, req.query);
        match decide(&self.cache, route, &rules.environment, found, req.peer, now) {
            Decision::Allow(e, rate) => Verdict::Allow(Some(Identity {
                key_id: e.key_id(),
                tenant: e.owner().tenant(),
                user: e.owner().user(),
                rate,
            })),
            Decision::Deny(r) => Verdict::Deny(denial(
                &r,
                &RenderCtx {
                    route,
                    edge_env: &rules.environment,
                    peer: req.peer,
                },
            )),
        }
    }
}

impl Gate for ShardGate {
    fn check(&mut self, req: &GateRequest<'_>) -> Verdict<'_> {
        self.check_at(req, Now::system())
    }

    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.inbox.as_ref().map(ShardInbox::signal)
    }

    fn on_wake(&mut self) {
        self.drain_inbox();
    }

    fn on_thread_start(&mut self) {
        if let Some(inbox) = &self.inbox {
            inbox.bind_thread();
        }
    }
}
