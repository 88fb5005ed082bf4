//! Body framing while streaming: counts `Content-Length` bodies down and validates chunked ones
//! byte by byte (passing them through verbatim) so the proxy always knows where a message ends,
//! refuses bad chunk sizes and enforces the body limit.
//!
//! A request's chunked body stops before its trailer section ([`Chunked::request`]): the caller
//! parses that as header lines and forwards only the fields a trailer may carry
//! ([`super::forward::write_trailers`]), then calls [`BodyState::trailers_done`]. A response's
//! trailers pass through verbatim ([`Chunked::new`]).

use super::headers::Framing;

/// Longest chunk-extension or trailer section accepted.
const MAX_LINE: usize = 8192;

/// The body is malformed or too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Bad chunk size line, missing CRLF, or an oversized extension/trailer.
    #[error("malformed chunked body")]
    Malformed,
    /// More than the allowed body bytes.
    #[error("body too large")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    /// At the trailer section, which the caller reads ([`Chunked::request`] only).
    Trailers,
    Done,
}

/// Incremental chunked-encoding validator.
#[derive(Debug, Clone)]
pub struct Chunked {
    st: St,
    size: u64,
    digits: u8,
    line: usize,
    total: u64,
    limit: u64,
    /// Stop at the trailer section instead of passing it.
    hold_trailers: bool,
}

impl Chunked {
    /// A validator allowing at most `limit` decoded body bytes, passing the trailer section
    /// through (validated as lines of visible bytes).
    #[must_use]
    pub fn new(limit: u64) -> Self {
        Self {
            st: St::Size,
            size: 0,
            digits: 0,
            line: 0,
            total: 0,
            limit,
            hold_trailers: false,
        }
    }

    /// A validator for a request body: as [`Chunked::new`], but it stops after the last-chunk
    /// line, at the trailer section, which the caller reads ([`Chunked::at_trailers`]).
    #[must_use]
    pub fn request(limit: u64) -> Self {
        Self {
            hold_trailers: true,
            ..Self::new(limit)
        }
    }

    /// Whether the terminating chunk and trailers have been seen.
    #[must_use]
    pub fn done(&self) -> bool {
        self.st == St::Done
    }

    /// Whether the body stopped at its trailer section ([`Chunked::request`]).
    #[must_use]
    pub fn at_trailers(&self) -> bool {
        self.st == St::Trailers
    }

    /// Consumes bytes of `data` that belong to the body; returns how many (less than
    /// `data.len()` only once the body ended).
    ///
    /// # Errors
    /// [`BodyError`] on a framing error or when the limit is passed.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, BodyError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.st {
                St::Data => {
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.st = St::DataCr;
                    }
                    continue;
                }
                St::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(BodyError::Malformed);
                        }
                        self.digits += 1;
                        self.size = self.size * 16 + u64::from(hex(b));
                    }
                    b';' if self.digits > 0 => {
                        self.st = St::Ext;
                        self.line = 0;
                    }
                    b'\r' if self.digits > 0 => self.st = St::SizeLf,
                    _ => return Err(BodyError::Malformed),
                },
                St::Ext => match b {
                    b'\r' => self.st = St::SizeLf,
                    b'\n' | 0..=8 | 10..=31 | 127 => return Err(BodyError::Malformed),
                    _ => {
                        self.line += 1;
                        if self.line > MAX_LINE {
                            return Err(BodyError::Malformed);
                        }
                    }
                },
                St::SizeLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    if self.size == 0 && self.hold_trailers {
                        self.st = St::Trailers;
                        return Ok(i + 1);
                    } else if self.size == 0 {
                        self.st = St::TrailerStart;
                        self.line = 0;
                    } else {
                        self.total = self.total.saturating_add(self.size);
                        if self.total > self.limit {
                            return Err(BodyError::TooLarge);
                        }
                        self.st = St::Data;
                    }
                }
                St::DataCr => {
                    if b != b'\r' {
                        return Err(BodyError::Malformed);
                    }
                    self.st = St::DataLf;
                }
                St::DataLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    self.st = St::Size;
                    self.digits = 0;
                }
                St::TrailerStart => match b {
                    b'\r' => self.st = St::EndLf,
                    b'\n' | b' ' | b'\t' => return Err(BodyError::Malformed),
                    _ => {
                        self.st = St::Trailer;
                        self.bump_line()?;
                    }
                },
                St::Trailer => match b {
                    b'\r' => self.st = St::TrailerLf,
                    b'\n' => return Err(BodyError::Malformed),
                    _ => self.bump_line()?,
                },
                St::TrailerLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    self.st = St::TrailerStart;
                }
                St::EndLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    self.st = St::Done;
                    return Ok(i + 1);
                }
                St::Trailers | St::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }

    fn bump_line(&mut self) -> Result<(), BodyError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(BodyError::Malformed);
        }
        Ok(())
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Where a body being streamed stands.
#[derive(Debug, Clone)]
pub enum BodyState {
    /// Nothing (left) to send.
    Done,
    /// This many bytes left.
    Length(u64),
    /// Chunked, validated as it passes.
    Chunked(Chunked),
    /// Until the peer closes (responses only).
    UntilClose,
}

impl BodyState {
    /// The state for a request body's framing, with a body limit for chunked bodies (which
    /// stop at their trailer section: [`BodyState::at_trailers`]).
    #[must_use]
    pub fn new(framing: Framing, limit: u64) -> Self {
        match framing {
            Framing::Empty => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunked::request(limit)),
        }
    }

    /// Whether a chunked request body stopped at its trailer section.
    #[must_use]
    pub fn at_trailers(&self) -> bool {
        matches!(self, Self::Chunked(c) if c.at_trailers())
    }

    /// The trailer section was read by the caller: the body is done.
    pub fn trailers_done(&mut self) {
        if let Self::Chunked(c) = self
            && c.at_trailers()
        {
            c.st = St::Done;
        }
    }

    /// Whether the body has been fully passed.
    #[must_use]
    pub fn done(&self) -> bool {
        match self {
            Self::Done => true,
            Self::Length(n) => *n == 0,
            Self::Chunked(c) => c.done(),
            Self::UntilClose => false,
        }
    }

    /// How many bytes at the start of `data` belong to the body.
    ///
    /// # Errors
    /// Framing errors of chunked bodies.
    pub fn take(&mut self, data: &[u8]) -> Result<usize, BodyError> {
        match self {
            Self::Done => Ok(0),
            Self::Length(n) => {
                let k = usize::try_from(*n).unwrap_or(usize::MAX).min(data.len());
                *n -= k as u64;
                Ok(k)
            }
            Self::Chunked(c) => c.feed(data),
            Self::UntilClose => Ok(data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<(usize, bool), BodyError> {
        let mut c = Chunked::new(1 << 20);
        let n = c.feed(input)?;
        Ok((n, c.done()))
    }

    #[test]
    fn valid_bodies_end_where_they_should() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        let (n, done) = all(body).unwrap();
        assert!(done);
        assert_eq!(&body[n..], b"GET / HTTP/1.1");
        // Byte at a time gives the same.
        let mut c = Chunked::new(1 << 20);
        let mut used = 0;
        for b in body {
            used += c.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(used, n);
    }

    #[test]
    fn bad_sizes_and_framing_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"-1\r\n",
            b"5\r\nhelloXX",
            b"ffffffffffffffff1\r\n",
            b" 5\r\n",
            b"5 \r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(all(bad), Err(BodyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn a_request_body_stops_at_its_trailer_section() {
        let body = b"5\r\nhello\r\n0;last\r\nX-T: 1\r\n\r\n";
        let mut c = Chunked::request(1 << 20);
        let n = c.feed(body).unwrap();
        assert_eq!(&body[n..], b"X-T: 1\r\n\r\n");
        assert!(c.at_trailers() && !c.done());
        // Nothing more is body until the caller read the trailers.
        assert_eq!(c.feed(&body[n..]), Ok(0));
        let mut s = BodyState::Chunked(c);
        s.trailers_done();
        assert!(s.done());
        // Byte at a time stops at the same place.
        let mut c = Chunked::request(1 << 20);
        let mut used = 0;
        for b in body {
            used += c.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(used, n);
        assert!(c.at_trailers());
    }

    #[test]
    fn limit_is_enforced() {
        let mut c = Chunked::new(4);
        assert_eq!(c.feed(b"5\r\n"), Err(BodyError::TooLarge));
    }
}
