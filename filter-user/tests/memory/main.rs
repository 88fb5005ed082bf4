//! 1 GiB request bodies (Content-Length and chunked) stream through the in-process proxy with
//! flat memory. A test binary of its own: the check reads this process's RSS, which the other
//! tests' allocations would move if they ran beside it.

#[allow(
    dead_code,
    reason = "the memory test uses the in-process proxy fixture only"
)]
#[path = "../support/mod.rs"]
mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::proxy_env::Env;

/// Anonymous resident memory of this process (heap and stacks of the proxy shards, origin and
/// client, which all live here). Not `VmRSS`: that also counts the pages of this (debug) binary
/// as code runs for the first time, tens of MiB that say nothing about buffering.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// How the process's anonymous memory moved during one upload: growth over the base at each
/// 64 MiB sent.
struct Growth(Vec<u64>);

impl Growth {
    /// The largest growth seen.
    fn peak(&self) -> u64 {
        self.0.iter().copied().max().unwrap_or(0)
    }

    /// The growth after the first 128 MiB: what the body bytes themselves cost. Buffering any
    /// fraction of the body shows here, beyond the one-time set-up of the first megabytes.
    fn late(&self) -> u64 {
        let settled = self.0.get(1).copied().unwrap_or(0);
        self.0
            .iter()
            .skip(2)
            .map(|g| g.saturating_sub(settled))
            .max()
            .unwrap_or(0)
    }
}

/// Sends `total` body bytes in 64 KiB writes, chunked or with a length; returns the answer and
/// how memory moved while sending.
fn upload(env: &Env, total: u64, chunked: bool) -> (String, Growth) {
    let mut c = env.connect();
    c.w.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {total}")
    };
    c.send(format!("POST /up/count HTTP/1.1\r\nHost: h\r\n{framing}\r\n\r\n").as_bytes());
    let block = vec![b'z'; 64 * 1024];
    let base = rss_kib();
    let mut growth = Vec::new();
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(240);
    while sent < total {
        assert!(
            Instant::now() < deadline,
            "upload too slow: {sent} bytes sent"
        );
        let n = (total - sent).min(block.len() as u64) as usize;
        if chunked {
            c.w.write_all(format!("{n:x}\r\n").as_bytes()).unwrap();
            c.w.write_all(&block[..n]).unwrap();
            c.w.write_all(b"\r\n").unwrap();
        } else {
            c.w.write_all(&block[..n]).unwrap();
        }
        sent += n as u64;
        if sent.is_multiple_of(64 << 20) {
            growth.push(rss_kib().saturating_sub(base));
        }
    }
    if chunked {
        c.w.write_all(b"0\r\n\r\n").unwrap();
    }
    let r = c.read(false);
    assert_eq!(r.status, 200);
    (r.text(), Growth(growth))
}

/// Checks that an upload of `total` bytes moved memory by a small amount that does not grow
/// with the bytes sent. Measured: under 300 KiB for 1 GiB. (This binary holds this one test
/// only: another test panicking beside it would symbolise a backtrace, tens of MiB.)
fn assert_flat(what: &str, g: &Growth) {
    eprintln!("{what}: growth every 64 MiB (KiB): {:?}", g.0);
    assert!(
        g.late() < 2 * 1024,
        "{what}: RSS kept growing with the body: {:?} KiB every 64 MiB",
        g.0
    );
    assert!(
        g.peak() < 8 * 1024,
        "{what}: RSS grew by {} KiB during the upload",
        g.peak()
    );
}

#[test]
fn one_gib_uploads_stream_with_flat_memory() {
    let env = Env::new("[limits]\nmax_body_bytes = 2147483648\n");
    // A first small upload of each kind, so what the first request sets up once (shard buffers,
    // the origin's threads) is in the base the big ones are measured from.
    upload(&env, 8 << 20, false);
    upload(&env, 8 << 20, true);
    let gib = 1u64 << 30;
    let (count, growth) = upload(&env, gib, false);
    assert_eq!(count, gib.to_string());
    assert_flat("1 GiB with Content-Length", &growth);
    let (count, growth) = upload(&env, gib / 2, true);
    assert_eq!(count, (gib / 2).to_string());
    assert_flat("512 MiB chunked", &growth);
}
