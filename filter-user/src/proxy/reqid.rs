//! Request ids: a caller's `X-Request-Id` is kept when sane, otherwise a per-shard counter-based
//! id is made. Both live in a fixed stack buffer, so no allocation per request.

/// Longest id accepted from a caller.
pub const MAX_LEN: usize = 128;

/// A request id held inline.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; MAX_LEN],
    len: u8,
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RequestId {
    /// Keeps a caller's id if it is 1..=128 characters of `[A-Za-z0-9._-]`.
    #[must_use]
    pub fn from_caller(v: &[u8]) -> Option<Self> {
        if v.is_empty()
            || v.len() > MAX_LEN
            || !v
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return None;
        }
        let mut buf = [0u8; MAX_LEN];
        buf[..v.len()].copy_from_slice(v);
        #[allow(clippy::cast_possible_truncation)] // len <= 128 checked above
        Some(Self {
            buf,
            len: v.len() as u8,
        })
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    /// The id as bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// A shard's id maker: `<8 hex random boot tag><2 hex shard><12 hex counter>`.
#[derive(Debug, Clone)]
pub struct IdGen {
    prefix: [u8; 10],
    counter: u64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl IdGen {
    /// A generator for shard `shard`, tagged with a random boot value.
    #[must_use]
    pub fn new(shard: usize) -> Self {
        let boot: u32 = rand::random();
        let mut prefix = [0u8; 10];
        for (i, slot) in prefix[..8].iter_mut().enumerate() {
            *slot = HEX[((boot >> (28 - 4 * i)) & 0xf) as usize];
        }
        prefix[8] = HEX[(shard >> 4) & 0xf];
        prefix[9] = HEX[shard & 0xf];
        Self { prefix, counter: 0 }
    }

    /// The next id.
    pub fn next_id(&mut self) -> RequestId {
        self.counter = self.counter.wrapping_add(1);
        let mut buf = [0u8; MAX_LEN];
        buf[..10].copy_from_slice(&self.prefix);
        for i in 0..12 {
            buf[10 + i] = HEX[((self.counter >> (44 - 4 * i)) & 0xf) as usize];
        }
        RequestId { buf, len: 22 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_kept_only_when_sane() {
        assert_eq!(
            RequestId::from_caller(b"abc-1.2_X").unwrap().as_str(),
            "abc-1.2_X"
        );
        assert!(RequestId::from_caller(b"").is_none());
        assert!(RequestId::from_caller(b"a b").is_none());
        assert!(RequestId::from_caller(b"a\"b").is_none());
        assert!(RequestId::from_caller(&[b'a'; 129]).is_none());
        assert!(RequestId::from_caller(&[b'a'; 128]).is_some());
    }

    #[test]
    fn made_ids_are_unique_and_sane() {
        let mut g = IdGen::new(3);
        let a = g.next_id();
        let b = g.next_id();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 22);
        assert!(RequestId::from_caller(a.as_bytes()).is_some());
    }
}
