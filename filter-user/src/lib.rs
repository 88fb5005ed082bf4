//! edgefilter's userspace half: config, XDP loader, sharded proxy, key checks, store, admin API.
//!
//! `main.rs` only dispatches the CLI; everything it calls lives here so integration tests and
//! benches can reach it.
// `unsafe` is denied everywhere except `control::boost` (two scheduler syscalls; see there).
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod codes;
pub mod config;
pub mod control;
pub mod daemon;
#[doc(hidden)]
pub mod fuzz;
pub mod gate;
pub mod obs;
pub mod percent;
pub mod proxy;
pub mod store;
pub mod xdp;
