//! Shared helpers for edgefilter benches (see `benches/benches/`).
