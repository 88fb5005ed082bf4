//! The LLM token usage an `ai` route's response reports, read from the body bytes as they are
//! relayed to the client (never held back, never copied): a state machine over the bytes of
//! each read, with a fixed-size state per request and no allocation.
//!
//! Layers, each a byte-at-a-time state machine that carries its state across reads, so any
//! split of the body into reads gives the same answer:
//! - chunked transfer-coding is undone ([`Dechunk`]): only the chunks' data is looked at;
//! - a `text/event-stream` body is read as server-sent events ([`Sse`]): the value of each
//!   `data:` field goes to the JSON reader, which starts afresh at each event's end;
//! - the JSON reader ([`Json`]) tracks nesting and keys (a key longer than the longest name it
//!   looks for is no match; nothing is ever buffered beyond that bound) and takes the
//!   non-negative integers of `usage.<prompt>` / `usage.<completion>` (top level) or
//!   `message.usage.<…>` (Anthropic's `message_start`). A later value replaces an earlier one:
//!   Anthropic's `message_delta` carries the final, cumulative output count.
//!
//! A body under a content coding (gzip, …) or of another type than JSON or an event stream is
//! not read: its usage counts as unreported, never guessed.

use crate::config::AiProvider;

/// What a response body is, from its `Content-Type` and `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// A JSON type (`application/json`, `…+json`), no content coding.
    Json,
    /// `text/event-stream` (server-sent events), no content coding.
    EventStream,
    /// A content coding other than `identity` (gzip, br, …).
    Encoded,
    /// Any other type, or none.
    Other,
}

/// What one response of an `ai` route reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokens {
    /// The prompt (input) and completion (output) counts the provider reported (a count it did
    /// not report is 0 when the other was).
    Reported {
        /// Prompt (input) tokens.
        prompt: u64,
        /// Completion (output) tokens.
        completion: u64,
    },
    /// No usage in the response (an error, a body cut short before the counts, a content
    /// coding, a stream without `include_usage`).
    Unreported,
}

/// Reads one response body for its usage report.
#[derive(Debug, Clone)]
pub struct UsageScanner {
    /// `None`: the body is not read (a content coding, another type).
    reader: Option<Reader>,
    json: Json,
}

#[derive(Debug, Clone)]
struct Reader {
    dechunk: Option<Dechunk>,
    sse: Option<Sse>,
}

impl UsageScanner {
    /// A scanner for a body of `payload`, `chunked` or not, from `provider`.
    #[must_use]
    pub fn new(provider: AiProvider, payload: Payload, chunked: bool) -> Self {
        let dechunk = chunked.then_some(Dechunk::Size(0));
        let reader = match payload {
            Payload::Json => Some(Reader { dechunk, sse: None }),
            Payload::EventStream => Some(Reader {
                dechunk,
                sse: Some(Sse::default()),
            }),
            Payload::Encoded | Payload::Other => None,
        };
        Self {
            reader,
            json: Json::new(provider),
        }
    }

    /// Looks at the next body bytes (exactly as relayed: chunk framing included when chunked).
    pub fn feed(&mut self, mut bytes: &[u8]) {
        let Some(reader) = &mut self.reader else {
            return;
        };
        let json = &mut self.json;
        match &mut reader.dechunk {
            None => content(&mut reader.sse, json, bytes),
            Some(d) => {
                while !bytes.is_empty() {
                    let (data, used) = d.step(bytes);
                    content(&mut reader.sse, json, data);
                    bytes = &bytes[used..];
                }
            }
        }
    }

    /// The usage reported so far.
    #[must_use]
    pub fn tokens(&self) -> Tokens {
        match (self.json.prompt, self.json.completion) {
            (None, None) => Tokens::Unreported,
            (p, c) => Tokens::Reported {
                prompt: p.unwrap_or(0),
                completion: c.unwrap_or(0),
            },
        }
    }
}

/// Payload bytes to the event-stream reader, or straight to the JSON reader.
fn content(sse: &mut Option<Sse>, json: &mut Json, data: &[u8]) {
    match sse {
        Some(sse) => sse.feed(json, data),
        None => json.feed(data),
    }
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy)]
enum Dechunk {
    /// Reading a chunk-size line (the size so far).
    Size(u64),
    /// In a chunk extension (until the line's end).
    Ext(u64),
    /// In chunk data, this many bytes left.
    Data(u64),
    /// After chunk data, until the line's end.
    DataEnd,
    /// The last chunk was read: the trailer section is not looked at.
    Trailers,
}

impl Dechunk {
    /// Takes the framing at the front of `bytes`: the chunk data found (possibly empty) and how
    /// many bytes were used. The relay has validated the framing already.
    fn step<'a>(&mut self, bytes: &'a [u8]) -> (&'a [u8], usize) {
        if let Self::Data(left) = *self {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
            let left = left - n as u64;
            *self = if left == 0 {
                Self::DataEnd
            } else {
                Self::Data(left)
            };
            return (&bytes[..n], n);
        }
        if let Self::Trailers = self {
            return (&[], bytes.len());
        }
        let b = bytes[0];
        *self = match (*self, b) {
            (Self::Size(0) | Self::Ext(0), b'\n') => Self::Trailers,
            (Self::Size(n) | Self::Ext(n), b'\n') => Self::Data(n),
            (Self::Size(n), _) if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                Self::Size(n.saturating_mul(16).saturating_add(digit))
            }
            (Self::Size(n), b'\r') => Self::Size(n),
            (Self::Size(n) | Self::Ext(n), _) => Self::Ext(n),
            (Self::DataEnd, b'\n') => Self::Size(0),
            (state, _) => state,
        };
        (&[], 1)
    }
}

/// Longest SSE field name kept (`data`); longer names are no match.
const FIELD_MAX: usize = 8;

/// Where the server-sent-event reader is in its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Line {
    /// In the field name (its bytes so far in `Sse::field`).
    #[default]
    Field,
    /// Just after `data:` (one space is skipped).
    DataStart,
    /// In a `data` field's value: to the JSON reader.
    Data,
    /// In a line of no interest, until its end.
    Skip,
}

/// A server-sent-event stream reader: `data:` values to the JSON reader, which starts afresh
/// at each event's end (an empty line).
#[derive(Debug, Clone, Default)]
struct Sse {
    line: Line,
    field: [u8; FIELD_MAX],
    field_len: u8,
    /// The last byte was a CR (a LF after it ends nothing more).
    after_cr: bool,
}

impl Sse {
    fn feed(&mut self, json: &mut Json, mut data: &[u8]) {
        while let Some((&b, rest)) = data.split_first() {
            if matches!(self.line, Line::Data | Line::Skip) && b != b'\r' && b != b'\n' {
                // The rest of the line in one piece.
                let end = data
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(data.len());
                if self.line == Line::Data {
                    json.feed(&data[..end]);
                }
                self.after_cr = false;
                data = &data[end..];
                continue;
            }
            data = rest;
            if b == b'\n' && self.after_cr {
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b == b'\r' || b == b'\n' {
                if self.line == Line::Field && self.field_len == 0 {
                    // An empty line: the event is dispatched.
                    json.reset();
                } else if matches!(self.line, Line::Data | Line::DataStart) {
                    // Lines of one event's data are joined by a line feed.
                    json.feed(b"\n");
                }
                self.line = Line::Field;
                self.field_len = 0;
                continue;
            }
            match self.line {
                Line::Field if b == b':' => {
                    let name = &self.field[..usize::from(self.field_len)];
                    self.line = if name == b"data" {
                        Line::DataStart
                    } else {
                        Line::Skip
                    };
                }
                Line::Field => {
                    if usize::from(self.field_len) < FIELD_MAX {
                        self.field[usize::from(self.field_len)] = b;
                        self.field_len += 1;
                    } else {
                        self.line = Line::Skip;
                    }
                }
                Line::DataStart => {
                    self.line = Line::Data;
                    if b != b' ' {
                        json.feed(&[b]);
                    }
                }
                Line::Data | Line::Skip => {}
            }
        }
    }
}

/// Longest key kept (`completion_tokens`); a longer key is no match.
const KEY_MAX: usize = 24;
/// Nesting tracked as object-or-array; deeper containers are only counted.
const TRACKED_DEPTH: u32 = 128;

/// A key the reader acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Other,
    Usage,
    Message,
    Prompt,
    Completion,
}

/// What the JSON reader is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens.
    Between,
    /// In a string (a key when `key`); `escape`: after a backslash.
    Str { key: bool, escape: bool },
    /// In a number: its value so far, `None` when it is no non-negative integer.
    Number(Option<u64>),
}

/// A streaming JSON reader that keeps only what it needs to find the usage counts.
#[derive(Debug, Clone)]
struct Json {
    prompt_name: &'static [u8],
    completion_name: &'static [u8],
    lex: Lex,
    depth: u32,
    /// Bit `d`: the container at depth `d + 1` is an object.
    objects: u128,
    /// In an object, before a key.
    expect_key: bool,
    key: [u8; KEY_MAX],
    /// `KEY_MAX + 1`: longer than any name looked for.
    key_len: u8,
    /// The key whose value comes next.
    pending: Key,
    /// The last key at depth 1.
    top_key: Key,
    /// The depth inside the usage object being read (0: none).
    usage_depth: u32,
    prompt: Option<u64>,
    completion: Option<u64>,
}

impl Json {
    fn new(provider: AiProvider) -> Self {
        let (prompt_name, completion_name): (&[u8], &[u8]) = match provider {
            AiProvider::Openai => (b"prompt_tokens", b"completion_tokens"),
            AiProvider::Anthropic => (b"input_tokens", b"output_tokens"),
        };
        Self {
            prompt_name,
            completion_name,
            lex: Lex::Between,
            depth: 0,
            objects: 0,
            expect_key: false,
            key: [0; KEY_MAX],
            key_len: 0,
            pending: Key::Other,
            top_key: Key::Other,
            usage_depth: 0,
            prompt: None,
            completion: None,
        }
    }

    /// Starts a new document (the counts found so far stay).
    fn reset(&mut self) {
        self.lex = Lex::Between;
        self.depth = 0;
        self.objects = 0;
        self.expect_key = false;
        self.pending = Key::Other;
        self.top_key = Key::Other;
        self.usage_depth = 0;
    }

    fn in_object(&self) -> bool {
        self.depth > 0
            && self.depth <= TRACKED_DEPTH
            && self.objects & (1u128 << (self.depth - 1)) != 0
    }

    fn feed(&mut self, mut data: &[u8]) {
        while let Some((&b, rest)) = data.split_first() {
            match self.lex {
                Lex::Str { key, escape } => {
                    if escape {
                        self.lex = Lex::Str { key, escape: false };
                        // An escaped key is no name looked for.
                        self.key_len = KEY_MAX as u8 + 1;
                        data = rest;
                        continue;
                    }
                    let end = data
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\')
                        .unwrap_or(data.len());
                    if key {
                        self.push_key(&data[..end]);
                    }
                    data = &data[end..];
                    match data.split_first() {
                        Some((b'"', rest)) => {
                            self.lex = Lex::Between;
                            if key {
                                self.key_done();
                            }
                            data = rest;
                        }
                        Some((_, rest)) => {
                            self.lex = Lex::Str { key, escape: true };
                            data = rest;
                        }
                        None => {}
                    }
                    continue;
                }
                Lex::Number(n) => {
                    if b.is_ascii_digit() {
                        let digit = u64::from(b - b'0');
                        self.lex =
                            Lex::Number(n.and_then(|n| n.checked_mul(10)?.checked_add(digit)));
                        data = rest;
                        continue;
                    }
                    if matches!(b, b'.' | b'e' | b'E' | b'+' | b'-') {
                        self.lex = Lex::Number(None);
                        data = rest;
                        continue;
                    }
                    self.lex = Lex::Between;
                    if let Some(n) = n {
                        self.number(n);
                    }
                    // `b` ends the number and is read again as what follows it.
                    continue;
                }
                Lex::Between => {}
            }
            data = rest;
            match b {
                b'"' => {
                    let key = self.expect_key;
                    if key {
                        self.key_len = 0;
                    }
                    self.lex = Lex::Str { key, escape: false };
                }
                b'{' => {
                    let parent_is_usage = self.pending == Key::Usage
                        && (self.depth == 1 || (self.depth == 2 && self.top_key == Key::Message));
                    self.open(true);
                    if parent_is_usage {
                        self.usage_depth = self.depth;
                    }
                }
                b'[' => self.open(false),
                b'}' | b']' => {
                    if self.depth == self.usage_depth {
                        self.usage_depth = 0;
                    }
                    self.depth = self.depth.saturating_sub(1);
                    self.expect_key = false;
                    self.pending = Key::Other;
                }
                b',' => {
                    self.expect_key = self.in_object();
                    self.pending = Key::Other;
                }
                b':' => self.expect_key = false,
                b'0'..=b'9' => self.lex = Lex::Number(Some(u64::from(b - b'0'))),
                b'-' => self.lex = Lex::Number(None),
                // Whitespace, and the letters of true, false and null.
                _ => {}
            }
        }
    }

    fn open(&mut self, object: bool) {
        self.depth = self.depth.saturating_add(1);
        if self.depth <= TRACKED_DEPTH {
            let bit = 1u128 << (self.depth - 1);
            if object {
                self.objects |= bit;
            } else {
                self.objects &= !bit;
            }
        }
        self.expect_key = object;
        self.pending = Key::Other;
    }

    fn push_key(&mut self, part: &[u8]) {
        let len = usize::from(self.key_len);
        if len + part.len() <= KEY_MAX {
            self.key[len..len + part.len()].copy_from_slice(part);
            self.key_len += part.len() as u8;
        } else {
            self.key_len = KEY_MAX as u8 + 1;
        }
    }

    fn key_done(&mut self) {
        let name = self.key.get(..usize::from(self.key_len)).unwrap_or(&[]);
        self.pending = if name == b"usage" {
            Key::Usage
        } else if name == b"message" {
            Key::Message
        } else if name == self.prompt_name {
            Key::Prompt
        } else if name == self.completion_name {
            Key::Completion
        } else {
            Key::Other
        };
        if self.depth == 1 {
            self.top_key = self.pending;
        }
    }

    /// A whole non-negative integer, the value of the pending key.
    fn number(&mut self, n: u64) {
        if self.usage_depth == 0 || self.depth != self.usage_depth {
            return;
        }
        match self.pending {
            Key::Prompt => self.prompt = Some(n),
            Key::Completion => self.completion = Some(n),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(provider: AiProvider, payload: Payload, chunked: bool, pieces: &[&[u8]]) -> Tokens {
        let mut s = UsageScanner::new(provider, payload, chunked);
        for p in pieces {
            s.feed(p);
        }
        s.tokens()
    }

    /// Every split of `body` into two reads, and byte by byte, gives `want`.
    fn every_split(
        provider: AiProvider,
        payload: Payload,
        chunked: bool,
        body: &[u8],
        want: Tokens,
    ) {
        assert_eq!(scan(provider, payload, chunked, &[body]), want, "whole");
        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            assert_eq!(
                scan(provider, payload, chunked, &[a, b]),
                want,
                "split at {at}: {:?} | {:?}",
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b)
            );
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            scan(provider, payload, chunked, &bytes),
            want,
            "byte by byte"
        );
    }

    fn reported(prompt: u64, completion: u64) -> Tokens {
        Tokens::Reported { prompt, completion }
    }

    /// `body` in chunked framing, `size` bytes a chunk, with extensions and a trailer.
    fn chunked(body: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in body.chunks(size).enumerate() {
            out.extend_from_slice(format!("{:X}", c.len()).as_bytes());
            if i % 2 == 1 {
                out.extend_from_slice(b";ext=1");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nX-Trailer: {\"usage\":{\"prompt_tokens\":9}}\r\n\r\n");
        out
    }

    const OPENAI_JSON: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"the \"usage\": {\"prompt_tokens\": 99} is text"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":7,"prompt_tokens":1000}}}"#;

    const ANTHROPIC_JSON: &[u8] = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"tool_use","input":{"usage":{"input_tokens":500}}}],"usage":{"input_tokens":25,"cache_read_input_tokens":0,"output_tokens":7}}"#;

    const OPENAI_SSE: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
        data: {\"id\":\"c\",\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n\
        data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2,\"total_tokens\":10}}\n\n\
        data: [DONE]\n\n";

    const ANTHROPIC_SSE: &[u8] = b"event: message_start\r\n\
        data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\n\
        event: content_block_delta\r\n\
        data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage\"}}\r\n\r\n\
        : a comment\r\n\
        event: message_delta\r\n\
        data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n\
        event: message_stop\r\n\
        data: {\"type\":\"message_stop\"}\r\n\r\n";

    #[test]
    fn usage_json_split_anywhere() {
        every_split(
            AiProvider::Openai,
            Payload::Json,
            false,
            OPENAI_JSON,
            reported(12, 34),
        );
        every_split(
            AiProvider::Anthropic,
            Payload::Json,
            false,
            ANTHROPIC_JSON,
            reported(25, 7),
        );
    }

    #[test]
    fn usage_the_other_providers_names_are_not_counted() {
        assert_eq!(
            scan(AiProvider::Anthropic, Payload::Json, false, &[OPENAI_JSON]),
            Tokens::Unreported
        );
        assert_eq!(
            scan(AiProvider::Openai, Payload::Json, false, &[ANTHROPIC_JSON]),
            Tokens::Unreported
        );
    }

    #[test]
    fn usage_sse_of_both_providers_split_anywhere() {
        every_split(
            AiProvider::Openai,
            Payload::EventStream,
            false,
            OPENAI_SSE,
            reported(8, 2),
        );
        every_split(
            AiProvider::Anthropic,
            Payload::EventStream,
            false,
            ANTHROPIC_SSE,
            reported(25, 15),
        );
    }

    #[test]
    fn usage_sse_data_over_several_lines_is_one_document() {
        let body =
            b"data: {\"usage\":\ndata: {\"prompt_tokens\":3,\ndata:\"completion_tokens\":4}}\n\n";
        every_split(
            AiProvider::Openai,
            Payload::EventStream,
            false,
            body,
            reported(3, 4),
        );
    }

    #[test]
    fn usage_under_chunked_framing_split_anywhere() {
        for size in [1, 3, 16, 1000] {
            every_split(
                AiProvider::Openai,
                Payload::Json,
                true,
                &chunked(OPENAI_JSON, size),
                reported(12, 34),
            );
            every_split(
                AiProvider::Anthropic,
                Payload::EventStream,
                true,
                &chunked(ANTHROPIC_SSE, size),
                reported(25, 15),
            );
        }
    }

    #[test]
    fn usage_over_long_lines_and_keys_are_streamed_in_fixed_space() {
        let filler = "x".repeat(1 << 20);
        let long_key = "k".repeat(1000);
        let body = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{filler}\"}}}}],\"{long_key}\":1,\"usage\":null}}\n\n\
             {long_key}: {filler}\n\
             data: {{\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":6}}}}\n\n"
        );
        let mut s = UsageScanner::new(AiProvider::Openai, Payload::EventStream, false);
        for piece in body.as_bytes().chunks(4096) {
            s.feed(piece);
        }
        assert_eq!(s.tokens(), reported(5, 6));
        // The whole state is this struct: nothing grows with the input.
        let size = std::mem::size_of::<UsageScanner>();
        assert!(size <= 256, "{size} bytes");
    }

    #[test]
    fn usage_absent_or_not_readable_is_unreported() {
        let no_usage = br#"{"id":"x","choices":[{"message":{"content":"hi"}}]}"#;
        every_split(
            AiProvider::Openai,
            Payload::Json,
            false,
            no_usage,
            Tokens::Unreported,
        );
        // A stream without include_usage.
        let sse = b"data: {\"choices\":[],\"usage\":null}\n\ndata: [DONE]\n\n";
        every_split(
            AiProvider::Openai,
            Payload::EventStream,
            false,
            sse,
            Tokens::Unreported,
        );
        // Negative, fractional, out of range: no count.
        let odd = br#"{"usage":{"prompt_tokens":-1,"completion_tokens":2.5}}"#;
        assert_eq!(
            scan(AiProvider::Openai, Payload::Json, false, &[odd]),
            Tokens::Unreported
        );
        let huge = br#"{"usage":{"prompt_tokens":99999999999999999999999}}"#;
        assert_eq!(
            scan(AiProvider::Openai, Payload::Json, false, &[huge]),
            Tokens::Unreported
        );
        // Gzip or another type: not read.
        for payload in [Payload::Encoded, Payload::Other] {
            assert_eq!(
                scan(AiProvider::Openai, payload, false, &[OPENAI_JSON]),
                Tokens::Unreported
            );
        }
        // Usage below the top level (not `message.usage`) is not the response's.
        let nested = br#"{"data":{"usage":{"prompt_tokens":1,"completion_tokens":2}}}"#;
        assert_eq!(
            scan(AiProvider::Openai, Payload::Json, false, &[nested]),
            Tokens::Unreported
        );
    }

    #[test]
    fn usage_a_count_alone_is_reported_with_zero_for_the_other() {
        let start_only = b"event: message_start\n\
            data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25}}}\n\n";
        assert_eq!(
            scan(
                AiProvider::Anthropic,
                Payload::EventStream,
                false,
                &[start_only]
            ),
            reported(25, 0)
        );
    }
}
