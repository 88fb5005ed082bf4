//! Key checks: where the key is, the per-shard cache, the decision chain, rate limits.
