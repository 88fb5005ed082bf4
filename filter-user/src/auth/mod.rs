//! Key checks: where the key is, the per-shard cache, the decision chain, rate limits.
//!
//! [`decide::decide`] is pure (no I/O): the proxy's [`ShardGate`], the [`explain`] engine (for
//! `edgefilter explain` and the admin API), the tests and the benches all run the same chain. [`service::KeyService`] loads the store once,
//! builds one [`ShardGate`] per shard and feeds them store changes.

pub mod cache;
pub mod credits;
pub mod decide;
pub mod deny;
pub mod explain;
pub mod extract;
pub mod loader;
pub mod ratelimit;
pub mod rules;
pub mod service;
pub mod shard;

pub use cache::{CacheUpdate, KeyEntry, ShardCache};
pub use decide::{Decision, Now, Refusal, decide};
pub use rules::{AuthRules, RouteRules};
pub use service::KeyService;
pub use shard::ShardGate;
