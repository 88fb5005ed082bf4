//! Control plane: applies changes, fans them out to shards, auto-block.

pub mod fanout;

pub use fanout::{AckWatcher, Fanout, FanoutError, PropagationObserver, ShardInbox};
