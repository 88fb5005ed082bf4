//! A small real HTTP/1.1 origin for proxy tests (std threads, one per connection, 127.0.0.1).
//!
//! Paths:
//! - `/…/echo…`: 200, body = the raw request head it received, then the request body.
//! - `/…/count`: reads the whole body, answers its decoded length (for 1 GiB uploads).
//! - `/…/sse`: chunked `text/event-stream`: one event, then waits for [`Upstream::release`]
//!   (at most 10 s), then a second event and the end.
//! - `/…/slow`: waits 3 s before answering.
//! - `/…/status/NNN`: answers status NNN with `Content-Length: 5` (not sent for 1xx/204/304/HEAD).
//! - `/…/chunked`: a chunked answer with a trailer.
//! - `/…/close`: an answer without length, ended by closing the connection.
//!
//! Every request head is also recorded in [`Upstream::heads`], and every byte received, on
//! every connection, in [`Upstream::received`] (trailers, and requests cut short, included; the
//! first [`RECORDED_BYTES`] only, so 1 GiB uploads keep memory flat).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many received bytes [`Upstream::received`] keeps.
pub const RECORDED_BYTES: usize = 4 << 20;

/// A running test origin.
pub struct Upstream {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    received: Arc<Mutex<Vec<u8>>>,
    release: Arc<Mutex<Vec<mpsc::Sender<()>>>>,
    conns: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, raw, r, n) = (
            heads.clone(),
            received.clone(),
            release.clone(),
            conns.clone(),
        );
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (h, raw, r) = (h.clone(), raw.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve(s, &h, &raw, &r);
                });
            }
        });
        Self {
            addr,
            heads,
            received,
            release,
            conns,
        }
    }

    /// Every request head received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Every byte received so far (up to [`RECORDED_BYTES`]), on every connection, as it
    /// arrived.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets waiting `/sse` answers finish.
    pub fn release(&self) {
        for tx in self.release.lock().unwrap().drain(..) {
            let _ = tx.send(());
        }
    }
}

/// A reader that keeps a copy of every byte it reads.
struct Recording<'a> {
    inner: TcpStream,
    into: &'a Mutex<Vec<u8>>,
}

impl Read for Recording<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut kept = self.into.lock().unwrap();
        let room = RECORDED_BYTES.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

fn serve(
    s: TcpStream,
    heads: &Mutex<Vec<String>>,
    received: &Mutex<Vec<u8>>,
    release: &Mutex<Vec<mpsc::Sender<()>>>,
) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut r = BufReader::new(Recording {
        inner: s.try_clone()?,
        into: received,
    });
    let mut w = s;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        heads.lock().unwrap().push(head.clone());
        let lower = head.to_ascii_lowercase();
        let first = head.lines().next().unwrap_or("").to_string();
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let path = target.split('?').next().unwrap_or("").to_string();
        let chunked = lower.contains("\r\ntransfer-encoding: chunked");
        let length: u64 = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        let keep_body = !path.ends_with("/count");
        let mut body = Vec::new();
        let total = read_body(&mut r, chunked, length, keep_body.then_some(&mut body))?;
        if path.ends_with("/count") {
            let b = total.to_string();
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )?;
        } else if path.ends_with("/sse") {
            let (tx, rx) = mpsc::channel();
            release.lock().unwrap().push(tx);
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            chunk(&mut w, b"data: first\n\n")?;
            let _ = rx.recv_timeout(Duration::from_secs(10));
            chunk(&mut w, b"data: second\n\n")?;
            w.write_all(b"0\r\n\r\n")?;
        } else if path.ends_with("/slow") {
            std::thread::sleep(Duration::from_secs(3));
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")?;
        } else if let Some(code) = path.rsplit_once("/status/").map(|(_, c)| c) {
            let code: u16 = code.parse().unwrap_or(500);
            let bodyless = code < 200 || code == 204 || code == 304 || method == "HEAD";
            write!(w, "HTTP/1.1 {code} Whatever\r\nContent-Length: 5\r\n\r\n")?;
            if !bodyless {
                w.write_all(b"12345")?;
            }
        } else if path.ends_with("/chunked") {
            w.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
            )?;
            chunk(&mut w, b"hello ")?;
            chunk(&mut w, b"world")?;
            w.write_all(b"0\r\nX-Sum: 11\r\n\r\n")?;
        } else if path.ends_with("/close") {
            w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close")?;
            return Ok(());
        } else {
            let mut out = head.into_bytes();
            out.extend_from_slice(&body);
            let len = if method == "HEAD" { 0 } else { out.len() };
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Upstream: yes\r\nContent-Length: {}\r\n\r\n",
                out.len()
            )?;
            w.write_all(&out[..len])?;
        }
        w.flush()?;
    }
}

fn chunk(w: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

fn read_body(
    r: &mut BufReader<Recording<'_>>,
    chunked: bool,
    length: u64,
    mut keep: Option<&mut Vec<u8>>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut copy =
        |r: &mut BufReader<Recording<'_>>, mut n: u64, keep: &mut Option<&mut Vec<u8>>| {
            while n > 0 {
                let k = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                r.read_exact(&mut buf[..k])?;
                if let Some(v) = keep.as_deref_mut() {
                    v.extend_from_slice(&buf[..k]);
                }
                n -= k as u64;
            }
            Ok::<(), std::io::Error>(())
        };
    if !chunked {
        copy(r, length, &mut keep)?;
        return Ok(length);
    }
    let mut total = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers up to the empty line.
            loop {
                let mut t = String::new();
                r.read_line(&mut t)?;
                if t == "\r\n" || t.is_empty() {
                    return Ok(total);
                }
            }
        }
        copy(r, size, &mut keep)?;
        total += size;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}
