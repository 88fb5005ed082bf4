//! LLM token usage through the real daemon: a fake OpenAI-compatible and Anthropic-compatible
//! provider answers JSON and server-sent-event streams (chunked) with their usage reports; the
//! access log line carries the exact counts (`prompt_tokens`, `completion_tokens`) on `ai`
//! routes only, `/metrics` counts them per route and kind, an answer without usage (or under
//! gzip) counts as `unreported`, and a stream reaches the client at the provider's pace.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::Daemon;

/// How long the fake provider waits between a stream's first event and the rest.
const PAUSE: Duration = Duration::from_millis(1000);

const OPENAI_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello \"usage\": {\"prompt_tokens\": 999}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":0}}}"#;
const OPENAI_NONE: &str =
    r#"{"id":"chatcmpl-2","choices":[{"index":0,"message":{"content":"hi"}}]}"#;
const ANTHROPIC_JSON: &str = r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],"usage":{"input_tokens":25,"cache_read_input_tokens":0,"output_tokens":7}}"#;

/// The events of a stream: the first, sent alone, then the rest after [`PAUSE`].
fn events(path: &str) -> (String, String) {
    if path.starts_with("/openai/") {
        let first = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"event-one\"}}],\"usage\":null}\n\n";
        let rest = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\" more\"}}],\"usage\":null}\n\n\
                    data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2,\"total_tokens\":10}}\n\n\
                    data: [DONE]\n\n";
        (first.into(), rest.into())
    } else {
        let first = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"content\":[],\"usage\":{\"input_tokens\":41,\"output_tokens\":1}}}\r\n\r\n\
                     event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"event-one\"}}\r\n\r\n";
        let rest = "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":17}}\r\n\r\n\
                    event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";
        (first.into(), rest.into())
    }
}

/// One chunk of a chunked body.
fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// Answers one request for `path` on `s`.
fn answer(s: &mut TcpStream, path: &str) -> std::io::Result<()> {
    let json = |s: &mut TcpStream, extra: &str, body: &str| {
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    match path.rsplit('/').next().unwrap_or("") {
        "json" if path.starts_with("/anthropic/") => {
            // Chunked, cut in the middle of the usage object.
            let (a, b) = ANTHROPIC_JSON.split_at(ANTHROPIC_JSON.len() - 20);
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                chunk(a)
            )?;
            s.flush()?;
            std::thread::sleep(Duration::from_millis(20));
            write!(s, "{}0\r\n\r\n", chunk(b))
        }
        "json" | "openai" => json(s, "", OPENAI_JSON),
        "none" => json(s, "", OPENAI_NONE),
        // Labelled gzip: its usage is not read, even though the bytes would show it.
        "gzip" => json(s, "Content-Encoding: gzip\r\n", OPENAI_JSON),
        "stream" => {
            let (first, rest) = events(path);
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
                 Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                chunk(&first)
            )?;
            s.flush()?;
            std::thread::sleep(PAUSE);
            for piece in rest.as_bytes().chunks(7) {
                s.write_all(chunk(std::str::from_utf8(piece).unwrap()).as_bytes())?;
            }
            s.write_all(b"0\r\n\r\n")
        }
        _ => write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    }
}

/// A fake provider: every connection served on its own thread, requests (bodies by
/// `Content-Length`) answered in turn until the peer closes.
fn provider() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || {
                let mut write = s.try_clone().unwrap();
                let mut read = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    if read.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        if read.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = h.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if read.read_exact(&mut body).is_err() {
                        return;
                    }
                    if answer(&mut write, &path).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// What the client saw of one answer: status, the de-chunked body, when the first bytes holding
/// `event-one` arrived, and when the answer ended.
struct Seen {
    status: u16,
    body: String,
    first_event: Option<Duration>,
    ended: Duration,
}

fn request(d: &Daemon, path: &str, key: &str) -> Seen {
    let began = Instant::now();
    let mut s = TcpStream::connect(d.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut first_event = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if first_event.is_none() && String::from_utf8_lossy(&raw).contains("event-one") {
            first_event = Some(began.elapsed());
        }
    }
    let ended = began.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Seen {
        status,
        body,
        first_event,
        ended,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// The access-log lines by path once there are `n` (waits up to 5 s).
fn log_lines(path: &Path, n: usize) -> HashMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n || Instant::now() > deadline {
            let lines: HashMap<String, Value> = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .map(|v| (v["path"].as_str().unwrap().to_owned(), v))
                .collect();
            assert_eq!(lines.len(), n, "{text}");
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metrics(d: &Daemon) -> String {
    let (s, body) = d.admin_call("GET", "/metrics", None, None);
    assert_eq!(s, 200);
    body.as_str().unwrap_or_default().to_owned()
}

fn tokens(line: &Value) -> (Option<u64>, Option<u64>) {
    (
        line.get("prompt_tokens").and_then(Value::as_u64),
        line.get("completion_tokens").and_then(Value::as_u64),
    )
}

/// Provider `up` behind `/openai/` and `/anthropic/` (ai routes) and `/plain/` (not one).
fn daemon(up: SocketAddr) -> (Daemon, String) {
    let tables = format!(
        r#"
[keys]
environment = "live"
[log]
format = "json"
access_log = "var/access.log"
[[route]]
prefix = "/openai/"
upstream = "http://{up}"
ai = "openai"
[[route]]
prefix = "/anthropic/"
upstream = "http://{up}"
ai = "anthropic"
[[route]]
prefix = "/plain/"
upstream = "http://{up}"
"#
    );
    let mut d = Daemon::configure(&tables);
    d.restart();
    let (_, key) = d.create_key("alice");
    (d, key)
}

#[test]
fn openai_usage_is_logged_and_counted_from_json_and_sse() {
    let (d, key) = daemon(provider());
    let json = request(&d, "/openai/v1/json", &key);
    assert_eq!((json.status, json.body.as_str()), (200, OPENAI_JSON));
    let stream = request(&d, "/openai/v1/stream", &key);
    assert_eq!(stream.status, 200);
    let (first, rest) = events("/openai/");
    assert_eq!(stream.body, first + &rest, "the stream passes unchanged");
    let none = request(&d, "/openai/v1/none", &key);
    assert_eq!((none.status, none.body.as_str()), (200, OPENAI_NONE));
    let gzip = request(&d, "/openai/v1/gzip", &key);
    assert_eq!(gzip.status, 200);
    let plain = request(&d, "/plain/v1/json", &key);
    assert_eq!(plain.status, 200);

    let lines = log_lines(&d.dir.path().join("var/access.log"), 5);
    assert_eq!(tokens(&lines["/openai/v1/json"]), (Some(12), Some(34)));
    assert_eq!(tokens(&lines["/openai/v1/stream"]), (Some(8), Some(2)));
    assert_eq!(tokens(&lines["/openai/v1/none"]), (None, None));
    assert_eq!(
        tokens(&lines["/openai/v1/gzip"]),
        (None, None),
        "a gzip body is not read"
    );
    assert_eq!(
        tokens(&lines["/plain/v1/json"]),
        (None, None),
        "only ai routes count"
    );

    let m = metrics(&d);
    for (kind, n) in [("prompt", 20), ("completion", 36), ("unreported", 2)] {
        let line = format!("edgefilter_llm_tokens_total{{route=\"/openai/\",kind=\"{kind}\"}} {n}");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
    assert!(
        !m.contains("edgefilter_llm_tokens_total{route=\"/plain/\""),
        "a route without ai has no token series:\n{m}"
    );
}

#[test]
fn anthropic_usage_is_logged_and_counted_from_json_and_sse() {
    let (d, key) = daemon(provider());
    let json = request(&d, "/anthropic/v1/json", &key);
    assert_eq!((json.status, json.body.as_str()), (200, ANTHROPIC_JSON));
    let stream = request(&d, "/anthropic/v1/stream", &key);
    assert_eq!(stream.status, 200);
    let (first, rest) = events("/anthropic/");
    assert_eq!(stream.body, first + &rest, "the stream passes unchanged");
    // OpenAI's names on an Anthropic route: nothing reported.
    let openai_shaped = request(&d, "/anthropic/v1/openai", &key);
    assert_eq!(openai_shaped.status, 200);

    let lines = log_lines(&d.dir.path().join("var/access.log"), 3);
    assert_eq!(tokens(&lines["/anthropic/v1/json"]), (Some(25), Some(7)));
    assert_eq!(
        tokens(&lines["/anthropic/v1/stream"]),
        (Some(41), Some(17)),
        "input from message_start, output from the last message_delta"
    );
    assert_eq!(tokens(&lines["/anthropic/v1/openai"]), (None, None));

    let m = metrics(&d);
    for (kind, n) in [("prompt", 66), ("completion", 24), ("unreported", 1)] {
        let line =
            format!("edgefilter_llm_tokens_total{{route=\"/anthropic/\",kind=\"{kind}\"}} {n}");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

#[test]
fn stream_events_reach_the_client_at_the_providers_pace() {
    let (d, key) = daemon(provider());
    for path in ["/openai/v1/stream", "/anthropic/v1/stream"] {
        let seen = request(&d, path, &key);
        assert_eq!(seen.status, 200, "{path}");
        let first = seen.first_event.expect("the first event arrived");
        assert!(
            first < PAUSE / 2,
            "{path}: the first event took {first:?}: held back by the proxy"
        );
        assert!(
            seen.ended >= PAUSE,
            "{path}: the stream ended after {:?}, before the provider's pause was over",
            seen.ended
        );
    }
}
