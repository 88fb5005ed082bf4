//! Control plane: applies changes, fans them out to shards, measures propagation.

pub mod fanout;
pub mod keyjson;
pub mod plane;
pub mod propagation;

pub use fanout::{AckWatcher, Fanout, FanoutError, PropagationObserver, ShardInbox};
pub use plane::{ControlPlane, PlaneWatcher};
pub use propagation::Propagation;
