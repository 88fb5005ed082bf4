//! Streaming through the proxy: server-sent events reach the client before the upstream
//! finishes. (1 GiB uploads with flat memory: `tests/memory`, a process of their own.)

use std::io::{BufRead, Read};
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
