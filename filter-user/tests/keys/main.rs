//! Keys and the CLI, one test binary: the decision chain per failure mode, rate limits under
//! load, the SQLite store, and the `keys`/`users`/`check-config` commands of the real binary
//! (with the names they take and print).

#[allow(dead_code, reason = "the keys tests use the port fixture only")]
#[path = "../support/mod.rs"]
mod support;

mod check_config;
mod cli;
mod config_cli;
mod credits;
mod decide;
mod expiry;
mod leak_scan;
mod names;
mod operator;
mod ratelimit;
mod store;
