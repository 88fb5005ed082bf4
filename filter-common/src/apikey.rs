//! The API key format `ef_<env>_<32 base62><6 base62 CRC32>`: generate, parse, verify.
