//! Streaming through the proxy: server-sent events reach the client before the upstream
//! finishes, and 1 GiB request bodies (Content-Length and chunked) pass with flat memory.

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

use crate::support::proxy_env::Env;

#[test]
fn sse_events_arrive_before_the_upstream_finishes() {
    let env = Env::new("");
    let mut c = env.connect();
    c.send(b"GET /v1/sse HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n");
    let mut head = String::new();
    loop {
        let mut line = String::new();
        c.r.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("X-Request-Id: "));
    // The origin holds its second event until released; the first must already be here.
    let t = Instant::now();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("data: first") {
        c.r.read_exact(&mut byte)
            .expect("first event before upstream completion");
        seen.push(byte[0]);
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    env.up.release();
    let mut rest = Vec::new();
    while !String::from_utf8_lossy(&rest).contains("0\r\n\r\n") {
        c.r.read_exact(&mut byte).unwrap();
        rest.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&rest).contains("data: second"));
}

/// Resident set size of this process (proxy shards, origin and client all live here).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Sends `total` body bytes in 64 KiB writes, chunked or with a length; returns the answer and
/// the largest RSS growth seen while sending.
fn upload(env: &Env, total: u64, chunked: bool) -> (String, u64) {
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
    let mut peak = 0;
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
            peak = peak.max(rss_kib().saturating_sub(base));
        }
    }
    if chunked {
        c.w.write_all(b"0\r\n\r\n").unwrap();
    }
    let r = c.read(false);
    assert_eq!(r.status, 200);
    (r.text(), peak)
}

#[test]
fn one_gib_uploads_stream_with_flat_memory() {
    let env = Env::new("[limits]\nmax_body_bytes = 2147483648\n");
    let gib = 1u64 << 30;
    let (count, peak) = upload(&env, gib, false);
    assert_eq!(count, gib.to_string());
    assert!(
        peak < 64 * 1024,
        "RSS grew by {peak} KiB during a 1 GiB upload"
    );
    let (count, peak) = upload(&env, gib / 4, true);
    assert_eq!(count, (gib / 4).to_string());
    assert!(
        peak < 64 * 1024,
        "RSS grew by {peak} KiB during a chunked upload"
    );
}
