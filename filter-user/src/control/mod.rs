//! Control plane: the one writer of the key store. Commits each change, publishes it through
//! the [`crate::fanout`] to every shard, and answers the admin API once every shard applied it.

pub mod metrics;
pub mod plane;
pub mod stats;

pub use plane::{ControlPlane, PlaneWatcher};
