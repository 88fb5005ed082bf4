//! The API key format `ef_<env>_<32 base62><6 base62 CRC32>`: generate, parse, verify.
//!
//! `env` is `[a-z]{1,8}`; the last 6 characters are the CRC32 (IEEE) of everything before them,
//! written in base62 and zero-padded, so the edge rejects a typo without a store lookup. Nothing
//! here allocates; [`generate`] takes its randomness from the caller so the crate stays pure.
//!
//! A [`ParsedKey`] can only come from [`parse`]: holding one proves the string is well formed
//! and its checksum matches. Errors never carry the key, only positions, lengths and at most the
//! one offending character.

use core::fmt;

/// Every key starts with this.
pub const PREFIX: &str = "ef_";
/// Random base62 characters in the body.
pub const RANDOM_LEN: usize = 32;
/// Base62 characters of the checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Body length: random part plus checksum.
pub const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;
/// Longest environment name.
pub const ENV_MAX: usize = 8;
/// Longest possible key (`ef_` + 8-letter env + `_` + body).
pub const MAX_LEN: usize = PREFIX.len() + ENV_MAX + 1 + BODY_LEN;
/// Random bytes [`generate`] needs: two per body character, so the modulo bias is below 2^-15.
pub const RANDOM_BYTES: usize = 2 * RANDOM_LEN;

/// The base62 alphabet, in value order.
pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Slice-by-8 tables: `CRC_TABLES[k][b]` is the CRC of byte `b` followed by `k` zero bytes.
const CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// CRC32 (IEEE 802.3, reflected, as in zlib) of `data`, eight bytes a step.
#[must_use]
pub fn crc32(data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut c = !0u32;
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        let lo = c ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        c = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][w[4] as usize]
            ^ t[2][w[5] as usize]
            ^ t[1][w[6] as usize]
            ^ t[0][w[7] as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
const HIGH: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;

/// For each ASCII byte of `x`, the high bit set when the byte is `>= c` (`c` in 1..=0x80).
const fn ge(x: u64, c: u8) -> u64 {
    (x + ONES * (0x80 - c as u64)) & HIGH
}

/// Whether all eight bytes of `x` are base62, eight bytes at once (SWAR).
const fn word_is_base62(x: u64) -> bool {
    if x & HIGH != 0 {
        return false;
    }
    let x = x & LOW7;
    let digit = ge(x, b'0') & !ge(x, b'9' + 1);
    let upper = ge(x, b'A') & !ge(x, b'Z' + 1);
    let lower = ge(x, b'a') & !ge(x, b'z' + 1);
    (digit | upper | lower) == HIGH
}

/// Whether every byte of `b` is base62.
fn all_base62(b: &[u8]) -> bool {
    if b.len() < 8 {
        return b.iter().all(|&c| is_base62(c));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let mut ok = true;
    let mut i = 0;
    while i + 8 <= b.len() {
        ok &= word_is_base62(word(i));
        i += 8;
    }
    // The last, possibly overlapping, word covers the tail.
    ok & word_is_base62(word(b.len() - 8))
}

/// `crc` in base62, most significant digit first, zero-padded to 6 characters.
#[must_use]
pub fn checksum_chars(crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    let mut n = crc;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// `1` for each base62 byte, `0` otherwise: lets the body be checked without a branch a byte.
const BASE62: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).is_ascii_alphanumeric() as u8;
        i += 1;
    }
    t
};

/// The value of a base62 character (0 for anything else; callers check the alphabet first).
#[must_use]
pub const fn base62_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'A'..=b'Z' => b - b'A' + 10,
        b'a'..=b'z' => b - b'a' + 36,
        _ => 0,
    }
}

/// Whether `b` is a base62 character.
#[must_use]
pub const fn is_base62(b: u8) -> bool {
    BASE62[b as usize] == 1
}

/// Why a string is not a key. Carries no part of the key but, for a bad character, that one
/// character (the caller needs to see it to fix it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// Nothing at all.
    Empty,
    /// Starts with a space, tab or newline.
    LeadingWhitespace,
    /// Ends with a space, tab or newline (often a copied newline).
    TrailingWhitespace,
    /// Wrapped in `"…"` or `'…'`.
    Quoted,
    /// Does not start with `ef_`.
    MissingPrefix,
    /// The environment between `ef_` and the next `_` is not 1 to 8 lowercase letters.
    BadEnvironment,
    /// A character that is not base62 where the body is.
    BadCharacter {
        /// 1-based position of the character in the whole string.
        position: usize,
        /// The character.
        ch: char,
    },
    /// The string has the wrong number of characters.
    WrongLength {
        /// Characters present.
        got: usize,
        /// Characters a key for this environment has.
        want: usize,
    },
    /// Two different values were sent where one key belongs (two `Authorization: Bearer`
    /// headers): which one is the key is not guessed.
    TwoKeys,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => f.write_str("the key is empty"),
            Self::LeadingWhitespace => f.write_str("leading whitespace"),
            Self::TrailingWhitespace => f.write_str("trailing whitespace"),
            Self::Quoted => f.write_str("the key is wrapped in quotes"),
            Self::MissingPrefix => f.write_str("the key does not start with `ef_`"),
            Self::BadEnvironment => f.write_str(
                "the environment after `ef_` must be 1 to 8 lowercase letters followed by `_`",
            ),
            Self::BadCharacter { position, ch } => write!(
                f,
                "character {position} is '{}' which is not base62",
                ch.escape_debug()
            ),
            Self::WrongLength { got, want } => {
                write!(f, "the key is {got} characters long, expected {want}")
            }
            Self::TwoKeys => f.write_str(
                "two `Authorization: Bearer` headers hold different values; send the key in one",
            ),
        }
    }
}

/// Why [`parse`] refused a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Not the key format.
    Format(FormatError),
    /// Well formed, but the checksum does not match: a character was mistyped or lost.
    ChecksumMismatch,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Format(e) => e.fmt(f),
            Self::ChecksumMismatch => f.write_str("the checksum does not match"),
        }
    }
}

/// A string that is a well-formed key with a matching checksum. Only [`parse`] makes one.
/// `Debug` shows the environment only, never the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    raw: &'a str,
    env_len: usize,
}

impl<'a> ParsedKey<'a> {
    /// The whole key (the secret). Hash it; never log it.
    #[must_use]
    pub fn secret(&self) -> &'a str {
        self.raw
    }

    /// The environment (`live`, `test`, …).
    #[must_use]
    pub fn env(&self) -> &'a str {
        &self.raw[PREFIX.len()..PREFIX.len() + self.env_len]
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("env", &self.env())
            .finish_non_exhaustive()
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_quote(b: u8) -> bool {
    matches!(b, b'"' | b'\'' | b'`')
}

/// Checks the shape of `s` and returns the environment's length.
#[inline]
fn check_format(s: &str) -> Result<usize, FormatError> {
    let b = s.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return Err(FormatError::Empty);
    };
    if is_space(first) {
        return Err(FormatError::LeadingWhitespace);
    }
    if is_space(last) {
        return Err(FormatError::TrailingWhitespace);
    }
    if is_quote(first) || (is_quote(last) && b.len() > 1) {
        return Err(FormatError::Quoted);
    }
    if !b.starts_with(PREFIX.as_bytes()) {
        return Err(FormatError::MissingPrefix);
    }
    let rest = &b[PREFIX.len()..];
    let env_len = rest
        .iter()
        .take(ENV_MAX + 1)
        .position(|&c| c == b'_')
        .ok_or(FormatError::BadEnvironment)?;
    if env_len == 0 || !rest[..env_len].iter().all(u8::is_ascii_lowercase) {
        return Err(FormatError::BadEnvironment);
    }
    let body_start = PREFIX.len() + env_len + 1;
    let body = &b[body_start..];
    // Eight bytes at a time; look for the culprit only when there is one.
    if !all_base62(body)
        && let Some(off) = body.iter().position(|&c| !is_base62(c))
    {
        let at = body_start + off;
        // Position in characters, 1-based; everything before `at` is ASCII.
        let ch = s[at..].chars().next().unwrap_or('?');
        return Err(FormatError::BadCharacter {
            position: at + 1,
            ch,
        });
    }
    let want = body_start + BODY_LEN;
    if b.len() != want {
        return Err(FormatError::WrongLength { got: b.len(), want });
    }
    Ok(env_len)
}

/// Parses and verifies a key.
///
/// # Errors
/// [`KeyError::Format`] with the precise reason, or [`KeyError::ChecksumMismatch`].
#[inline]
pub fn parse(s: &str) -> Result<ParsedKey<'_>, KeyError> {
    let env_len = check_format(s).map_err(KeyError::Format)?;
    let (head, sum) = s.as_bytes().split_at(s.len() - CHECKSUM_LEN);
    // Decoding the given checksum is independent of the CRC, so the two overlap in the CPU.
    let given = sum
        .iter()
        .fold(0u64, |n, &c| n * 62 + u64::from(base62_value(c)));
    if given != u64::from(crc32(head)) {
        return Err(KeyError::ChecksumMismatch);
    }
    Ok(ParsedKey { raw: s, env_len })
}

/// Why [`generate`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateError {
    /// The environment is not 1 to 8 lowercase letters.
    BadEnvironment,
}

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the environment must be 1 to 8 lowercase letters")
    }
}

/// Whether `env` is a valid environment name (`[a-z]{1,8}`).
#[must_use]
pub fn is_valid_env(env: &str) -> bool {
    (1..=ENV_MAX).contains(&env.len()) && env.bytes().all(|c| c.is_ascii_lowercase())
}

/// A generated key, held inline. `Debug` does not show it.
#[derive(Clone)]
pub struct KeyBuf {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl KeyBuf {
    /// The key.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into `buf`.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Debug for KeyBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBuf(<secret>)")
    }
}

/// Builds a key for `env` from 64 caller-supplied random bytes (two per body character).
///
/// # Errors
/// [`GenerateError::BadEnvironment`] when `env` is not `[a-z]{1,8}`.
pub fn generate(env: &str, random: &[u8; RANDOM_BYTES]) -> Result<KeyBuf, GenerateError> {
    if !is_valid_env(env) {
        return Err(GenerateError::BadEnvironment);
    }
    let mut buf = [0u8; MAX_LEN];
    let mut len = 0;
    for &b in PREFIX.as_bytes().iter().chain(env.as_bytes()).chain(b"_") {
        buf[len] = b;
        len += 1;
    }
    for pair in random.chunks_exact(2) {
        let v = u16::from_le_bytes([pair[0], pair[1]]);
        buf[len] = ALPHABET[usize::from(v % 62)];
        len += 1;
    }
    let sum = checksum_chars(crc32(&buf[..len]));
    buf[len..len + CHECKSUM_LEN].copy_from_slice(&sum);
    len += CHECKSUM_LEN;
    Ok(KeyBuf { buf, len })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::String, string::ToString};

    use super::*;

    const RND: [u8; RANDOM_BYTES] = {
        let mut r = [0u8; RANDOM_BYTES];
        let mut i = 0;
        while i < RANDOM_BYTES {
            r[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
            i += 1;
        }
        r
    };

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        // Slice-by-8 agrees with the bytewise definition at every length and offset.
        let data: [u8; 45] = core::array::from_fn(|i| (i as u8).wrapping_mul(151) ^ 0x5A);
        for start in 0..8 {
            for end in start..data.len() {
                let mut c = !0u32;
                for &b in &data[start..end] {
                    c ^= u32::from(b);
                    for _ in 0..8 {
                        c = if c & 1 != 0 {
                            0xEDB8_8320 ^ (c >> 1)
                        } else {
                            c >> 1
                        };
                    }
                }
                assert_eq!(crc32(&data[start..end]), !c);
            }
        }
    }

    #[test]
    fn swar_check_agrees_with_the_bytewise_one() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut w = *b"aZ09bY18";
                w[pos] = b;
                assert_eq!(word_is_base62(u64::from_le_bytes(w)), is_base62(b), "{b}");
            }
        }
        let mut v = [b'x'; 13];
        assert!(all_base62(&v));
        for i in 0..v.len() {
            v[i] = b'-';
            assert!(!all_base62(&v));
            v[i] = b'x';
        }
    }

    #[test]
    fn base62_values_invert_the_alphabet() {
        for (v, &c) in ALPHABET.iter().enumerate() {
            assert_eq!(usize::from(base62_value(c)), v);
        }
    }

    #[test]
    fn checksum_is_zero_padded_base62() {
        assert_eq!(&checksum_chars(0), b"000000");
        assert_eq!(&checksum_chars(61), b"00000z");
        assert_eq!(&checksum_chars(62), b"000010");
        assert_eq!(&checksum_chars(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn generated_keys_parse() {
        let k = generate("live", &RND).unwrap();
        let s = k.as_str();
        assert_eq!(s.len(), PREFIX.len() + 4 + 1 + BODY_LEN);
        let p = parse(s).unwrap();
        assert_eq!(p.env(), "live");
        assert_eq!(p.secret(), s);
        assert!(!format!("{p:?}").contains(&s[8..]));
        assert!(!format!("{k:?}").contains(&s[8..]));
        let long = generate("abcdefgh", &RND).unwrap();
        assert_eq!(long.as_str().len(), MAX_LEN);
        assert!(parse(long.as_str()).is_ok());
        assert_eq!(
            generate("Live", &RND).unwrap_err(),
            GenerateError::BadEnvironment
        );
        assert_eq!(
            generate("abcdefghi", &RND).unwrap_err(),
            GenerateError::BadEnvironment
        );
    }

    #[test]
    fn each_malformation_is_named() {
        let k = generate("live", &RND).unwrap();
        let s = k.as_str();
        let f = |x: &str| match parse(x) {
            Err(KeyError::Format(e)) => e,
            other => panic!("expected a format error, got {other:?}"),
        };
        assert_eq!(f(""), FormatError::Empty);
        assert_eq!(f(&format!(" {s}")), FormatError::LeadingWhitespace);
        assert_eq!(f(&format!("{s}\n")), FormatError::TrailingWhitespace);
        assert_eq!(f(&format!("\"{s}\"")), FormatError::Quoted);
        assert_eq!(f(&format!("'{s}'")), FormatError::Quoted);
        assert_eq!(f(&s[1..]), FormatError::MissingPrefix);
        assert_eq!(
            f(&s.replacen("live", "LIVE", 1)),
            FormatError::BadEnvironment
        );
        assert_eq!(f(&s.replacen("live", "", 1)), FormatError::BadEnvironment);
        assert_eq!(f("ef_abcdefghi_x"), FormatError::BadEnvironment);
        let mut bad = String::from(s);
        bad.replace_range(16..17, "!");
        assert_eq!(
            f(&bad),
            FormatError::BadCharacter {
                position: 17,
                ch: '!'
            }
        );
        assert_eq!(
            f(&bad).to_string(),
            "character 17 is '!' which is not base62"
        );
        let mut uni = String::from(&s[..20]);
        uni.push('é');
        assert_eq!(
            f(&uni),
            FormatError::BadCharacter {
                position: 21,
                ch: 'é'
            }
        );
        assert_eq!(
            f(&s[..s.len() - 1]),
            FormatError::WrongLength {
                got: s.len() - 1,
                want: s.len()
            }
        );
        assert_eq!(
            f(&format!("{s}A")),
            FormatError::WrongLength {
                got: s.len() + 1,
                want: s.len()
            }
        );
        assert_eq!(f("Bearer x"), FormatError::MissingPrefix);
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        let k = generate("test", &RND).unwrap();
        let mut b = [0u8; MAX_LEN];
        let s = k.as_str();
        b[..s.len()].copy_from_slice(s.as_bytes());
        b[20] = if b[20] == b'a' { b'b' } else { b'a' };
        let typo = core::str::from_utf8(&b[..s.len()]).unwrap();
        assert_eq!(parse(typo), Err(KeyError::ChecksumMismatch));
    }
}
