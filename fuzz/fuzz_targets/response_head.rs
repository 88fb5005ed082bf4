//! cargo-fuzz target: `edgefilter::fuzz::response_head` (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgefilter::fuzz::response_head(data));
