//! cargo-fuzz target: `edgefilter::fuzz::chunked_body` (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgefilter::fuzz::chunked_body(data));
