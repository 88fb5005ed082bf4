//! Fleet mode against a real PostgreSQL started by each test, one test binary: the store,
//! the change follower, the watcher's pacing, TLS to the database, two real daemons, and bans
//! shared by them.

#[allow(
    dead_code,
    reason = "the fleet tests use the PostgreSQL, daemon and TLS fixtures only"
)]
#[path = "../support/mod.rs"]
mod support;

mod bans;
mod daemons;
mod follow;
mod store;
mod tls;
mod watch;
