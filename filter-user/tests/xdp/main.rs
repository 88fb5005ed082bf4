//! The XDP filter, one test binary (needs root): crafted frames through `BPF_PROG_TEST_RUN`,
//! malformed input, real traffic between network namespaces, auto-block and `xdp trace` with
//! the real daemon, and a takeover that leaves the pinned program attached throughout. Every
//! test holds [`support::serial::serial`]: they share the kernel's bpffs and XDP state.

#[allow(
    dead_code,
    reason = "the XDP tests use the frame, test-run, namespace and daemon fixtures only"
)]
#[path = "../support/mod.rs"]
mod support;

mod autoblock;
mod caps;
mod netns;
mod takeover;
mod testrun;
mod testrun_malformed;
mod testrun_trace;
mod trace;
