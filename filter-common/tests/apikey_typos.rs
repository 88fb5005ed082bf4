//! Exhaustive typo tests of the key format: for many random keys, every single-character
//! substitution, deletion, insertion and adjacent transposition is refused.

use filter_common::apikey::{self, KeyError, RANDOM_BYTES};

/// xorshift64*: deterministic, so a failure names a reproducible seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self) -> [u8; RANDOM_BYTES] {
        let mut b = [0u8; RANDOM_BYTES];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        b
    }
}

const ENVS: [&str; 4] = ["live", "test", "x", "abcdefgh"];
/// Base62 plus the characters a person or a copy/paste is likely to introduce.
const SUBST: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-+/= .!";

fn keys(n: usize) -> Vec<String> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|i| {
            apikey::generate(ENVS[i % ENVS.len()], &rng.bytes())
                .unwrap()
                .as_str()
                .to_owned()
        })
        .collect()
}

fn refused(s: &[u8]) -> bool {
    std::str::from_utf8(s).map_or(true, |s| apikey::parse(s).is_err())
}

#[test]
fn every_single_substitution_is_caught() {
    let mut checksum_hits = 0usize;
    for key in keys(300) {
        assert!(apikey::parse(&key).is_ok());
        let b = key.as_bytes();
        for i in 0..b.len() {
            for &c in SUBST {
                if c == b[i] {
                    continue;
                }
                let mut t = b.to_vec();
                t[i] = c;
                assert!(refused(&t), "substitution at {i} accepted");
                if apikey::parse(std::str::from_utf8(&t).unwrap())
                    == Err(KeyError::ChecksumMismatch)
                {
                    checksum_hits += 1;
                }
            }
        }
    }
    // Most typos inside the body are base62-for-base62 and must be the checksum's catch.
    assert!(checksum_hits > 300 * 38 * 50, "{checksum_hits}");
}

#[test]
fn every_deletion_insertion_and_transposition_is_caught() {
    for key in keys(300) {
        let b = key.as_bytes();
        for i in 0..b.len() {
            let mut del = b.to_vec();
            del.remove(i);
            assert!(refused(&del), "deletion at {i} accepted");
            for &c in b"0aZ_" {
                let mut ins = b.to_vec();
                ins.insert(i, c);
                assert!(refused(&ins), "insertion at {i} accepted");
            }
            if i + 1 < b.len() && b[i] != b[i + 1] {
                let mut tr = b.to_vec();
                tr.swap(i, i + 1);
                assert!(refused(&tr), "transposition at {i} accepted");
            }
        }
    }
}
