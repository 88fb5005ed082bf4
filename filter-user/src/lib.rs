//! edgefilter's userspace half: config, XDP loader, sharded proxy, key checks, store, admin API.
//!
//! `main.rs` only dispatches the CLI; everything it calls lives here so integration tests and
//! benches can reach it.
//!
//! # Layers
//!
//! Every module dependency points down this list: a module may `use` only modules on lower
//! lines (modules on one line do not use each other). `tests/layering.rs` reads every
//! `use crate::` path in `src/` and fails on an edge against this order.
//!
//! 0. [`names`] — tenant and user names and scopes: one type each, valid by construction
//! 1. [`percent`], [`codes`], [`config`], [`pem`] — percent-decoding, the answer codes, the typed
//!    config, PEM certificates and trust roots
//! 2. [`path`], [`obs`] — the request-path rules the proxy and `explain` share; logging, per-shard request metrics and recent denials, the access log
//! 3. [`store`] — the key store (SQLite, PostgreSQL) and the rules both backends share
//! 4. [`fanout`], [`autoblock`] — the lock-free change fan-out from one writer to every shard;
//!    auto-block's per-shard failure counts and the ban snapshot the shards read
//! 5. [`gate`] — the seam between the proxy and the key checks
//! 6. [`auth`] — where the key is, the per-shard cache, `decide`, the explain engine
//! 7. [`xdp`] — the kernel program's loader, pins, maps and counters
//! 8. [`admin`] — the admin API (its types, the `AdminOps` trait, server, client)
//! 9. [`control`] — the control plane, which implements `AdminOps`
//! 10. [`proxy`] — the sharded HTTP/1.1 (+TLS) reverse proxy
//! 11. [`daemon`] — the wiring of `edgefilter run`: one daemon per store and address, `--takeover`
//! 12. [`cli`] — argument parsing and printing
//! 13. [`fuzz`] — entry points for the fuzz targets (only with the `fuzzing` feature)
//!
//! `admin` sits below `control` because it only defines the API (and serves and calls it
//! over HTTP); the control plane is one implementation, so the server and client are tested
//! without a daemon. The proxy knows the key checks only through [`gate`].
#![forbid(unsafe_code)]

// Declared bottom layer first (see the list above).
pub mod names;

pub mod codes;
pub mod config;
pub mod pem;
pub mod percent;

pub mod obs;
pub mod path;

pub mod store;

pub mod autoblock;
pub mod fanout;

pub mod gate;

pub mod auth;

pub mod xdp;

pub mod admin;

pub mod control;

pub mod proxy;

pub mod daemon;

pub mod cli;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
