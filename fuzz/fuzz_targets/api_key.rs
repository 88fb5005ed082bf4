//! cargo-fuzz target: `edgefilter::fuzz::api_key` (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgefilter::fuzz::api_key(data));
