//! Control plane: the one writer of the key store. Commits each change, publishes it through
//! the [`crate::fanout`] to every shard, and answers the admin API once every shard applied it.
//! It also owns the denylist ([`denylist`]) and turns auto-block's reports into bans
//! ([`autoblock`]).

pub mod autoblock;
pub mod credits;
pub mod denylist;
pub mod metrics;
pub mod plane;
pub mod stats;

pub use autoblock::AutoblockTicker;
pub use credits::CreditLeases;
pub use plane::{ControlPlane, PlaneWatcher};
