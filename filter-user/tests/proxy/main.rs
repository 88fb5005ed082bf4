//! The proxy, one test binary: HTTP/1.1 semantics, limits, streaming, TLS and draining through
//! the in-process proxy; every answer code, stored names that break their rule, and WebSockets,
//! through the real daemon; the allocation-free hot path; and (with the `fuzzing` feature) the
//! fuzz corpus replay.

#[allow(
    dead_code,
    reason = "the proxy tests use the proxy, daemon and TLS fixtures only"
)]
#[path = "../support/mod.rs"]
mod support;

mod access_log;
mod alloc;
mod authorization;
mod drain;
mod e2e_codes;
#[cfg(feature = "fuzzing")]
mod fuzz_replay;
mod http;
mod hygiene;
mod limits;
mod llm_usage;
mod names;
mod stream;
mod tls;
mod upstreams;
mod websocket;
