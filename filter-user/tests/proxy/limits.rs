//! Limits and bad input through the proxy: 431, 413, 400, every request-smuggling shape refused
//! and never forwarded, slow and idle clients timed out, upstream failures as 502/504.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::proxy_env::{Env, get};

const LIMITS: &str = "[limits]\nmax_header_bytes = 2048\nmax_body_bytes = 1000\n\
                      client_timeout = \"1s\"\nupstream_timeout = \"1s\"\n";

#[test]
fn smuggling_shapes_are_refused_and_never_forwarded() {
    let env = Env::new(LIMITS);
    let shapes: &[(&str, &str, &str)] = &[
        (
            "cl-and-te",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "length_with_chunked",
        ),
        (
            "te-and-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            "length_with_chunked",
        ),
        (
            "two-cl",
            "Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            "content_length",
        ),
        (
            "cl-list",
            "Content-Length: 4, 4\r\n\r\nabcd",
            "content_length",
        ),
        (
            "cl-plus",
            "Content-Length: +4\r\n\r\nabcd",
            "content_length",
        ),
        (
            "cl-hex",
            "Content-Length: 0x4\r\n\r\nabcd",
            "content_length",
        ),
        (
            "te-gzip",
            "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "transfer_encoding",
        ),
        (
            "te-identity",
            "Transfer-Encoding: identity\r\n\r\n",
            "transfer_encoding",
        ),
        (
            "te-twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "transfer_encoding",
        ),
        (
            "te-xchunked",
            "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            "transfer_encoding",
        ),
        (
            "te-space-name",
            "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            "head_syntax",
        ),
        (
            "obs-fold",
            "X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            "head_syntax",
        ),
        (
            "bad-chunk-size",
            "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "chunked_framing",
        ),
        (
            "chunk-size-overflow",
            "Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n",
            "chunked_framing",
        ),
        (
            "chunk-bare-lf",
            "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            "chunked_framing",
        ),
        (
            "chunk-no-crlf",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n",
            "chunked_framing",
        ),
        ("two-hosts", "Host: other\r\n\r\n", "host_duplicate"),
    ];
    for (name, rest, rule) in shapes {
        let mut c = env.connect();
        c.send(format!("POST /smuggle/{name} HTTP/1.1\r\nHost: h\r\n{rest}").as_bytes());
        let r = c.read(false);
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "BAD_REQUEST", "{name}");
        // SPEC §5: a 400 names the rule broken, in `rule` and in its hint.
        assert_eq!(r.json()["error"]["rule"], *rule, "{name}: {}", r.text());
        assert!(
            r.json()["error"]["hint"].is_string(),
            "{name}: {}",
            r.text()
        );
        assert!(c.closed(), "{name}: connection left open");
    }
    let heads = env.up.heads();
    assert!(
        heads.iter().all(|h| !h.contains("/smuggle/")),
        "a smuggling shape reached the origin: {heads:?}"
    );
    // The same connection-level check for a plain valid request still passes.
    assert_eq!(env.connect().call(&get("/fine")).status, 200);
}

#[test]
fn malformed_heads_and_targets_are_400() {
    let env = Env::new(LIMITS);
    for raw in [
        "HELLO\r\n\r\n",
        "GET /no-host HTTP/1.1\r\n\r\n",
        "GET http://elsewhere/ HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /v1/../admin HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /v1/..%2Fadmin HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST /te-in-10 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n",
    ] {
        let mut c = env.connect();
        let r = c.call(raw);
        assert_eq!(r.status, 400, "{raw:?}");
        assert_eq!(r.json()["error"]["code"], "BAD_REQUEST");
        assert!(r.header("x-request-id").is_some());
    }
}

#[test]
fn oversized_heads_are_431_and_bodies_413() {
    let env = Env::new(LIMITS);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4000)
    );
    let r = env.connect().call(&big);
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"]["code"], "HEADERS_TOO_LARGE");
    // The hint states the limit (SPEC §5), with the key that sets it.
    let hint = r.json()["error"]["hint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        hint.contains("2048 bytes") && hint.contains("limits.max_header_bytes"),
        "{hint}"
    );
    // A head that never ends is cut at the limit, not buffered forever.
    let mut c = env.connect();
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n");
    for _ in 0..100 {
        if c.w
            .write_all(b"X-More: 0123456789012345678901234567890123456789\r\n")
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.read(false).status, 431);
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let r = env
        .connect()
        .call(&format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n"));
    assert_eq!(r.status, 431);

    let r = env
        .connect()
        .call("POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n");
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "PAYLOAD_TOO_LARGE");
    let body_hint = "the limit is 1000 bytes for the request body (limits.max_body_bytes)";
    assert_eq!(r.json()["error"]["hint"], body_hint);
    let chunk = "a".repeat(600);
    let r = env.connect().call(&format!(
        "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    ));
    assert_eq!(r.status, 413);
    // Found too large while streaming, the answer states the limit as well.
    assert_eq!(r.json()["error"]["hint"], body_hint);
}

#[test]
fn slow_and_idle_clients_time_out() {
    let env = Env::new(LIMITS);
    // Idle keep-alive connection: closed after client_timeout (1 s).
    let mut c = env.connect();
    assert_eq!(c.call(&get("/echo")).status, 200);
    let t = Instant::now();
    assert!(c.closed());
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(700) && idle < Duration::from_secs(5),
        "{idle:?}"
    );
    // Slowloris: a byte every 300 ms never completes a head within the timeout.
    let mut c = env.connect();
    let t = Instant::now();
    let mut closed = false;
    for b in b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if c.w.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if t.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(closed || c.closed(), "slow client not cut off");
    assert!(t.elapsed() < Duration::from_secs(6));
}

#[test]
fn upstream_failures_are_502_and_504() {
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = Env::new(&format!(
        "{LIMITS}[[route]]\nprefix = \"/dead/\"\nupstream = \"http://{dead}\"\n\
         [[route]]\nprefix = \"/\"\nupstream = \"http://UPSTREAM\"\n"
    ));
    let mut c = env.connect();
    let r = c.call(&get("/dead/x"));
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "UPSTREAM_UNAVAILABLE");
    // The connection survives a refusal of a bodiless request.
    let t = Instant::now();
    let r = c.call(&get("/slow"));
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "UPSTREAM_TIMEOUT");
    assert!(
        t.elapsed() < Duration::from_millis(2900),
        "{:?}",
        t.elapsed()
    );
}
