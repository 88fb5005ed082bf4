//! The access log (SPEC §9): one JSON line per request, written off the request path.
//!
//! Each shard formats its lines into a buffer of its own ([`ShardLog`]) and hands a full
//! buffer (or, every [`FLUSH_EVERY`], a partial one) to a bounded lock-free queue; one writer
//! thread drains every shard's queue into stdout or a file and gives the emptied buffers back.
//! When the writer falls behind and a queue is full, the batch is dropped and its lines counted
//! (`edgefilter_access_log_dropped_total`): a request never waits for the log. `SIGHUP` reopens
//! the file (for logrotate). Lines never hold a key: key-shaped text in the path is masked.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

/// A shard hands its buffer over once it holds this much.
pub const BATCH_BYTES: usize = 32 * 1024;

/// A shard hands over a partial buffer at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Batches a shard may have waiting for the writer (then lines are dropped).
const QUEUE_BATCHES: usize = 64;

/// How long the writer sleeps when every queue is empty.
const IDLE: Duration = Duration::from_millis(20);

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// A file, appended to and reopened on `SIGHUP`.
    File(PathBuf),
}

impl Sink {
    /// `log.access_log` as a sink; `None` for `"off"`.
    #[must_use]
    pub fn from_config(value: &str, resolve: impl Fn(&str) -> PathBuf) -> Option<Self> {
        match value {
            "off" => None,
            "stdout" | "" => Some(Self::Stdout),
            path => Some(Self::File(resolve(path))),
        }
    }
}

/// A batch of whole lines and how many lines it holds.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

/// One shard's queue to the writer, and the emptied buffers coming back.
#[derive(Debug)]
struct Lane {
    full: ArrayQueue<Batch>,
    empty: ArrayQueue<Vec<u8>>,
}

/// The access log shared by the shards and its writer thread.
#[derive(Debug)]
pub struct AccessLog {
    lanes: Vec<Arc<Lane>>,
    dropped: AtomicU64,
    written: AtomicU64,
    reopen: AtomicBool,
    stop: AtomicBool,
}

/// Stops the writer (after a last drain) when dropped.
#[derive(Debug)]
pub struct Writer {
    log: Arc<AccessLog>,
    join: Option<JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.log.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl AccessLog {
    /// A log for `shards` shards writing to `sink`, and its writer thread.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn start(shards: usize, sink: Sink) -> std::io::Result<(Arc<Self>, Writer)> {
        let log = Arc::new(Self {
            lanes: (0..shards.max(1))
                .map(|_| {
                    Arc::new(Lane {
                        full: ArrayQueue::new(QUEUE_BATCHES),
                        empty: ArrayQueue::new(QUEUE_BATCHES),
                    })
                })
                .collect(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let mut out = Output::open(sink)?;
        let me = Arc::clone(&log);
        let join = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || me.run(&mut out))?;
        let writer = Writer {
            log: Arc::clone(&log),
            join: Some(join),
        };
        Ok((log, writer))
    }

    /// Shard `n`'s side.
    #[must_use]
    pub fn shard(self: &Arc<Self>, n: usize) -> ShardLog {
        ShardLog {
            lane: Arc::clone(&self.lanes[n % self.lanes.len()]),
            log: Arc::clone(self),
            buf: Vec::with_capacity(BATCH_BYTES + 1024),
            lines: 0,
            second: u64::MAX,
            second_text: [0; 19],
        }
    }

    /// Lines dropped because the writer fell behind.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines written.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Asks the writer to reopen its file (on `SIGHUP`).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    fn run(&self, out: &mut Output) {
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if self.reopen.swap(false, Ordering::AcqRel) {
                out.reopen();
            }
            let mut any = false;
            for lane in &self.lanes {
                while let Some(mut b) = lane.full.pop() {
                    any = true;
                    out.write(&b.bytes);
                    self.written.fetch_add(b.lines, Ordering::Relaxed);
                    b.bytes.clear();
                    let _ = lane.empty.push(b.bytes);
                }
            }
            if any {
                out.flush();
            } else if stopping {
                return;
            } else {
                std::thread::sleep(IDLE);
            }
        }
    }
}

/// The writer's output.
struct Output {
    sink: Sink,
    out: Box<dyn Write + Send>,
}

impl Output {
    fn open(sink: Sink) -> std::io::Result<Self> {
        let out = Self::open_sink(&sink)?;
        Ok(Self { sink, out })
    }

    fn open_sink(sink: &Sink) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(p) => Box::new(append(p)?),
        })
    }

    fn reopen(&mut self) {
        self.flush();
        match Self::open_sink(&self.sink) {
            Ok(o) => self.out = o,
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the access log; keeping the old file")
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Err(e) = self.out.write_all(bytes) {
            tracing::error!(error = %e, "access log write failed");
        }
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

fn append(p: &PathBuf) -> std::io::Result<File> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(p)
}

/// One shard's side of the access log: it formats into its own buffer and hands batches over.
#[derive(Debug)]
pub struct ShardLog {
    lane: Arc<Lane>,
    log: Arc<AccessLog>,
    buf: Vec<u8>,
    lines: u64,
    /// The second `second_text` spells (`YYYY-MM-DDTHH:MM:SS`), formatted once per second.
    second: u64,
    second_text: [u8; 19],
}

impl ShardLog {
    /// Appends the current UTC time as RFC 3339 with milliseconds (`…T06:40:00.123Z`).
    pub fn timestamp(&mut self, out: &mut Vec<u8>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        if secs != self.second {
            self.second = secs;
            let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let mut text = Vec::with_capacity(19);
            let _ = write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            if let Ok(a) = <[u8; 19]>::try_from(text.as_slice()) {
                self.second_text = a;
            }
        }
        out.extend_from_slice(&self.second_text);
        let ms = now.subsec_millis();
        out.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }

    /// The buffer to append one whole line (ending in `\n`) to; call [`ShardLog::commit`] after.
    pub fn line(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// One more line was appended; the batch goes to the writer once it is large enough.
    pub fn commit(&mut self) {
        self.lines += 1;
        if self.buf.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Hands whatever is buffered to the writer; drops it (counted) when the queue is full.
    pub fn flush(&mut self) {
        if self.lines == 0 {
            return;
        }
        let next = self
            .lane
            .empty
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES + 1024));
        let batch = Batch {
            bytes: std::mem::replace(&mut self.buf, next),
            lines: std::mem::take(&mut self.lines),
        };
        if let Err(mut b) = self.lane.full.push(batch) {
            self.log.dropped.fetch_add(b.lines, Ordering::Relaxed);
            b.bytes.clear();
            self.buf = b.bytes;
        }
    }
}

impl Drop for ShardLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Appends `s` as the inside of a JSON string (quotes not included): `"` `\` and control
/// bytes escaped, any `ef_<env>_…` key-shaped run replaced by `***`.
pub fn push_json_str(out: &mut Vec<u8>, s: &[u8]) {
    // Plain runs are copied whole; only a quote, a backslash, a control byte or an `e` (a key
    // starts `ef_`) stops the scan.
    let (mut run, mut i) = (0, 0);
    while i < s.len() {
        let b = s[i];
        if b == b'e' {
            if let Some(n) = key_len_at(s, i) {
                out.extend_from_slice(&s[run..i]);
                out.extend_from_slice(b"***");
                i += n;
                run = i;
            } else {
                i += 1;
            }
            continue;
        }
        if !matches!(b, b'"' | b'\\' | 0..0x20 | 0x7f..) {
            i += 1;
            continue;
        }
        out.extend_from_slice(&s[run..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        i += 1;
        run = i;
    }
    out.extend_from_slice(&s[run..]);
}

/// Appends the request target with the values of `api_key` query parameters replaced by `***`.
pub fn push_target(out: &mut Vec<u8>, target: &[u8]) {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    push_json_str(out, path);
    let Some(query) = query else { return };
    out.push(b'?');
    for (i, pair) in query.split(|&b| b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        match pair.iter().position(|&b| b == b'=') {
            Some(eq) if pair[..eq].eq_ignore_ascii_case(b"api_key") => {
                push_json_str(out, &pair[..eq]);
                out.extend_from_slice(b"=***");
            }
            _ => push_json_str(out, pair),
        }
    }
}

/// The length of a key-shaped run (`ef_` + 1–8 lowercase + `_` + at least 12 base62) at `i`.
fn key_len_at(s: &[u8], i: usize) -> Option<usize> {
    let rest = s.get(i..)?;
    if !rest.starts_with(b"ef_") || (i > 0 && s[i - 1].is_ascii_alphanumeric()) {
        return None;
    }
    let env = rest[3..]
        .iter()
        .take_while(|b| b.is_ascii_lowercase())
        .count();
    if env == 0 || env > 8 || rest.get(3 + env) != Some(&b'_') {
        return None;
    }
    let body = rest[4 + env..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    (body >= 12).then_some(4 + env + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> String {
        let mut out = Vec::new();
        push_target(&mut out, s.as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_never_reach_a_line() {
        let key = "ef_live_0123456789abcdefghijABCDEFGHIJ0123456789";
        assert_eq!(
            json(&format!("/v1/x?api_key={key}&b=2")),
            "/v1/x?api_key=***&b=2"
        );
        assert_eq!(json(&format!("/v1/{key}/y")), "/v1/***/y");
        assert_eq!(json(&format!("/v1/x?other={key}")), "/v1/x?other=***");
        assert_eq!(json("/v1/ef_live_short"), "/v1/ef_live_short");
        assert_eq!(json("/a\"b\\c\u{1}"), "/a\\\"b\\\\c\\u0001");
        // Runs between escapes, masks and a lone `e` are copied whole.
        assert_eq!(
            json(&format!("/e\"{key}\"te\u{7f}ef_{key}")),
            "/e\\\"***\\\"te\\u007fef_***"
        );
    }

    #[test]
    fn lines_reach_the_file_and_a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let (log, writer) = AccessLog::start(1, Sink::File(path.clone())).unwrap();
        let mut shard = log.shard(0);
        for i in 0..3 {
            let _ = writeln!(shard.line(), "{{\"n\":{i}}}");
            shard.commit();
        }
        shard.flush();
        drop(shard);
        drop(writer);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(log.written(), 3);

        // A queue nobody drains: the 65th batch is dropped and its lines counted.
        let stalled = Arc::new(AccessLog {
            lanes: vec![Arc::new(Lane {
                full: ArrayQueue::new(QUEUE_BATCHES),
                empty: ArrayQueue::new(QUEUE_BATCHES),
            })],
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let mut s = stalled.shard(0);
        for _ in 0..=QUEUE_BATCHES {
            s.line().extend_from_slice(b"{}\n{}\n");
            s.commit();
            s.commit();
            s.flush();
        }
        assert_eq!(stalled.dropped(), 2);
    }
}
