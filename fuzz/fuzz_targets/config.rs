//! cargo-fuzz target: `edgefilter::fuzz::config` (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgefilter::fuzz::config(data));
