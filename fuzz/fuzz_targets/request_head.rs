//! cargo-fuzz target: `edgefilter::fuzz::request_head` (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgefilter::fuzz::request_head(data));
