//! Control plane: applies changes, fans them out to shards, auto-block.
