//! Fresh key ids (`key_` + 12 base62) and key secrets from the OS random source.

use filter_common::apikey::{self, ALPHABET, RANDOM_BYTES};
use rand::RngCore;

use super::model::{KeyHash, Secret};

/// A new public key id.
#[must_use]
pub fn new_key_id() -> String {
    let mut rnd = [0u8; 24];
    rand::rng().fill_bytes(&mut rnd);
    let mut id = String::with_capacity(16);
    id.push_str("key_");
    for pair in rnd.chunks_exact(2) {
        let v = u16::from_le_bytes([pair[0], pair[1]]);
        id.push(char::from(ALPHABET[usize::from(v % 62)]));
    }
    id
}

/// A new key for `env` and its hash; `None` when `env` is not `[a-z]{1,8}`.
#[must_use]
pub fn new_secret(env: &str) -> Option<(Secret, KeyHash)> {
    let mut rnd = [0u8; RANDOM_BYTES];
    rand::rng().fill_bytes(&mut rnd);
    let key = apikey::generate(env, &rnd).ok()?;
    let hash = KeyHash::of(key.as_str());
    Some((Secret::new(key.as_str().to_owned()), hash))
}

/// Whether `s` looks like a key id.
#[must_use]
pub fn is_key_id(s: &str) -> bool {
    s.len() == 16 && s.starts_with("key_") && s.bytes().skip(4).all(apikey::is_base62)
}
