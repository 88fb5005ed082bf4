//! cargo-fuzz target: `edgefilter::fuzz::admin_json` (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgefilter::fuzz::admin_json(data));
