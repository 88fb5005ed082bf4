//! Control plane: applies changes, fans them out to shards, measures propagation.

#[allow(unsafe_code)]
pub mod boost;
pub mod fanout;
pub mod keyjson;
pub mod plane;
pub mod propagation;

pub use fanout::{AckWatcher, Fanout, FanoutError, PropagationObserver, ShardInbox};
pub use plane::{ControlPlane, PlaneWatcher};
pub use propagation::Propagation;
