//! Fixtures shared by the integration test binaries (`tests/<area>/main.rs`), each of which
//! declares this module once as `support` and uses the part it needs.

pub mod daemon;
pub mod frames;
pub mod leaks;
pub mod netns;
pub mod openapi;
pub mod origin;
pub mod pg;
pub mod ports;
pub mod proxy_env;
pub mod serial;
pub mod testrun;
pub mod tls;
pub mod upstream;
