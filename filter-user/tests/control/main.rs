//! The control plane, one test binary: the admin API in-process against `docs/openapi.yaml` and
//! through the real daemon (names that break their rule included), durability across `kill -9`,
//! revocation under load, `stats`, auto-block with the denylist without XDP, what a config
//! reload (SIGHUP) does with every key, one daemon per address and store with
//! `run --takeover` replacing it under load, and a store file deleted, replaced, corrupted,
//! read-only or on a full disk; and the connection limits (20,000 idle connections from one
//! source, the memory they cost, the open-file limit, the drain timeout).

#[allow(
    dead_code,
    reason = "the control tests use the daemon and OpenAPI fixtures only"
)]
#[path = "../support/mod.rs"]
mod support;

mod admin_api;
mod admin_real;
mod conn_limits;
mod denylist;
mod durability;
mod metrics;
mod names;
mod operator;
mod reload;
mod reload_api;
mod revoke_load;
mod stats;
mod store_safety;
mod takeover;
