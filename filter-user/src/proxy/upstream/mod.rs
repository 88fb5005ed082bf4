//! Upstream targets and connections: a target's addresses, TLS and health ([`target`]), the
//! connection types ([`stream`]), choosing among a route's targets ([`balance`]), the
//! per-shard keep-alive pool ([`pool`]), re-resolving names in the background ([`resolve`]),
//! and the TLS client side ([`tls`]).
//!
//! Connecting obeys `limits.upstream_timeout`: refused or unreachable is class `connect` (502),
//! out of time `timeout` (504), a failed handshake `tls` (502).

pub mod balance;
pub(crate) mod pool;
pub mod resolve;
pub mod stream;
pub mod target;
pub mod tls;

pub(crate) use pool::{Pool, UpKey};
pub use stream::UpStream;
pub use target::Target;
