//! WebSockets through the real daemon (SPEC §5): an upgrade on a route with `websocket = true`
//! is key-checked like any request, its `101` passed on, and the connection relayed both ways
//! (text and binary, large messages too) until a side closes or both are silent for
//! `limits.client_timeout`; without a key it is refused before the upstream hears of it, and on
//! any other route it is refused with 400 `websocket_not_allowed`. The request's access-log line
//! is written when the tunnel ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response as ClientResponse;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::daemon::Daemon;

/// A WebSocket origin on 127.0.0.1, on its own thread and runtime. By path:
/// - `…/echo`: every text and binary message is sent back, until the client closes;
/// - `…/hangup`: sends `bye`, then closes its TCP connection (no closing handshake);
/// - `…/deny`: refuses the handshake with `403` and a body.
///
/// Each handshake's request head is recorded; each connection's end is counted.
struct WsUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    ended: Arc<AtomicUsize>,
}

impl WsUpstream {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicUsize::new(0));
        let (h, e) = (Arc::clone(&heads), Arc::clone(&ended));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((s, _)) = listener.accept().await {
                    let (h, e) = (Arc::clone(&h), Arc::clone(&e));
                    tokio::spawn(async move {
                        serve(s, &h).await;
                        e.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
        });
        Self { addr, heads, ended }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Waits (at most 5 s) until a connection to it has ended.
    fn wait_ended(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ended() < 1 {
            assert!(
                Instant::now() < deadline,
                "the upstream connection stayed open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

async fn serve(s: tokio::net::TcpStream, heads: &Mutex<Vec<String>>) {
    let mut path = String::new();
    #[expect(
        clippy::result_large_err,
        reason = "the signature of tungstenite's handshake callback"
    )]
    let record = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let mut head = format!("{} {}\r\n", req.method(), req.uri());
        for (name, value) in req.headers() {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("?")));
        }
        heads.lock().unwrap().push(head);
        path = req.uri().path().to_owned();
        if path.ends_with("/deny") {
            let mut no = ErrorResponse::new(Some("not here".into()));
            *no.status_mut() = StatusCode::FORBIDDEN;
            return Err(no);
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, record).await else {
        return;
    };
    if path.ends_with("/hangup") {
        let _ = ws.send(Message::text("bye")).await;
        // Dropped: the TCP connection closes without a closing handshake.
        return;
    }
    // Echo until the client closes (the library answers its Close, then the stream ends).
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

/// A daemon with `/ws/` (WebSockets allowed) and `/v1/` (not) both on `up`, the access log in
/// `var/access.log`, and `limits.client_timeout` as given; and a key for them.
fn daemon(up: &WsUpstream, client_timeout: &str) -> (Daemon, String, String) {
    let tables = format!(
        r#"
[keys]
environment = "live"
[limits]
client_timeout = "{client_timeout}"
[log]
format = "text"
access_log = "var/access.log"
[[route]]
prefix = "/ws/"
upstream = "http://{up}"
scopes = ["ai:invoke"]
websocket = true
[[route]]
prefix = "/v1/"
upstream = "http://{up}"
scopes = ["ai:invoke"]
"#,
        up = up.addr
    );
    let mut d = Daemon::configure(&tables);
    d.restart();
    let (id, key) = d.create_key("alice");
    (d, id, key)
}

type Client = WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket through the daemon at `path`, with `key` in `Authorization` when given.
async fn connect(
    d: &Daemon,
    path: &str,
    key: Option<&str>,
) -> Result<(Client, ClientResponse), WsError> {
    let mut req = format!("ws://{}{path}", d.http)
        .into_client_request()
        .unwrap();
    if let Some(key) = key {
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
    }
    let tcp = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
    Ok((ws, resp))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The next data message, within 5 s.
async fn next_message(ws: &mut Client) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("the stream goes on")
            .expect("a message, not an error");
        if m.is_text() || m.is_binary() {
            return m;
        }
    }
}

/// How long until the connection ends (the stream ends or errs), at most `limit`; data
/// messages on the way are a failure.
async fn time_to_end(ws: &mut Client, limit: Duration) -> Duration {
    let began = Instant::now();
    loop {
        match tokio::time::timeout(limit, ws.next()).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(None | Some(Err(_))) => return began.elapsed(),
            Ok(Some(Ok(Message::Close(_)))) => {}
            Ok(Some(Ok(m))) => panic!("unexpected {m:?}"),
        }
    }
}

/// The access log's lines once it holds `n` (the writer batches; waits up to 5 s).
fn access_lines(d: &Daemon, n: usize) -> Vec<Value> {
    let path = d.dir.path().join("var/access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            assert_eq!(got.len(), n, "{text}");
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A WebSocket opening handshake on a plain socket, `key` in `Authorization` when given: the
/// answer's status, head (lower-cased) and JSON body (or null).
fn raw_upgrade(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String, Value) {
    let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let (end, len) = loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before an answer: {raw:?}");
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            break (end + 4, len);
        }
    };
    while raw.len() < end + len {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed inside the body");
        raw.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let body = serde_json::from_slice(&raw[end..end + len]).unwrap_or(Value::Null);
    (status, head, body)
}

#[test]
fn messages_both_ways_through_the_tunnel_and_one_line_when_it_ends() {
    let up = WsUpstream::start();
    let (d, id, key) = daemon(&up, "30s");
    let payload = block_on(async {
        let (mut ws, resp) = connect(&d, "/ws/echo?model=x", Some(&key)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert!(resp.headers().contains_key("x-request-id"), "{resp:?}");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut moved = 0;
        for i in 0..4u8 {
            let sent = [
                Message::text(format!("hello {i} ✓")),
                Message::binary(vec![0, i, 0xff, 0x80]),
                Message::binary(big.clone()),
            ];
            for m in &sent {
                ws.send(m.clone()).await.unwrap();
                moved += m.len();
            }
            for m in sent {
                assert_eq!(next_message(&mut ws).await, m);
            }
        }
        // Several in flight at once.
        for i in 0..20 {
            ws.send(Message::text(format!("burst {i}"))).await.unwrap();
        }
        for i in 0..20 {
            let m = next_message(&mut ws).await;
            moved += m.len();
            assert_eq!(m, Message::text(format!("burst {i}")));
        }
        ws.close(None).await.unwrap();
        time_to_end(&mut ws, Duration::from_secs(5)).await;
        moved
    });
    // The upstream had the handshake, with the caller's identity and without the key.
    let heads = up.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get /ws/echo?model=x\r\n"), "{head}");
    for want in [
        "connection: upgrade\r\n",
        "upgrade: websocket\r\n",
        "sec-websocket-version: 13\r\n",
        "sec-websocket-key: ",
        &format!("x-edgefilter-key-id: {id}\r\n").to_ascii_lowercase(),
    ] {
        assert!(head.contains(want), "{want:?} missing: {head}");
    }
    assert!(
        !head.contains("authorization") && !head.contains("ef_live"),
        "{head}"
    );
    // One line, when the tunnel ended: 101, every byte counted.
    let lines = access_lines(&d, 1);
    let l = &lines[0];
    assert_eq!(l["status"], 101, "{l}");
    assert_eq!(l["code"], "OK", "{l}");
    assert_eq!(l["route"], "/ws/", "{l}");
    assert_eq!(l["key_id"], id.as_str(), "{l}");
    let (bytes_in, bytes_out) = (
        l["bytes_in"].as_u64().unwrap(),
        l["bytes_out"].as_u64().unwrap(),
    );
    assert!(
        bytes_in >= payload as u64 && bytes_out >= payload as u64,
        "{payload} payload bytes each way: {l}"
    );
    assert!(l["duration_us"].as_u64().unwrap() > 0, "{l}");
    // The upstream connection was closed, not pooled.
    up.wait_ended();
}

#[test]
fn without_a_key_an_upgrade_is_refused_and_the_upstream_never_hears_of_it() {
    let up = WsUpstream::start();
    let (d, _, key) = daemon(&up, "30s");
    let (status, head, body) = raw_upgrade(d.http, "/ws/echo", None);
    assert_eq!(status, 401, "{head}");
    assert_eq!(body["error"]["code"], "MISSING_KEY", "{body}");
    assert!(!head.contains("upgrade"), "{head}");
    let (status, _, body) = raw_upgrade(d.http, "/ws/echo", Some("ef_live_nonsense"));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "MALFORMED_KEY", "{body}");
    // The tungstenite client sees the refusal as an HTTP answer, not a WebSocket.
    let refused = block_on(connect(&d, "/ws/echo", None)).unwrap_err();
    assert!(
        matches!(&refused, WsError::Http(r) if r.status() == StatusCode::UNAUTHORIZED),
        "{refused:?}"
    );
    assert!(up.heads().is_empty(), "{:?}", up.heads());
    // With the key, an upstream that refuses the handshake is answered as any request.
    let (status, head, _) = raw_upgrade(d.http, "/ws/deny", Some(&key));
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("x-request-id: "), "{head}");
    assert_eq!(up.heads().len(), 1);
}

#[test]
fn an_upgrade_on_a_route_without_websocket_is_refused_with_the_rule() {
    let up = WsUpstream::start();
    let (d, _, key) = daemon(&up, "30s");
    let (status, head, body) = raw_upgrade(d.http, "/v1/echo", Some(&key));
    assert_eq!(status, 400, "{head}");
    let e = &body["error"];
    assert_eq!(e["code"], "BAD_REQUEST", "{body}");
    assert_eq!(e["rule"], "websocket_not_allowed", "{body}");
    assert!(
        e["hint"]
            .as_str()
            .unwrap()
            .contains("does not accept WebSocket upgrades"),
        "{body}"
    );
    assert!(!head.contains("upgrade"), "{head}");
    let refused = block_on(connect(&d, "/v1/echo", Some(&key))).unwrap_err();
    assert!(
        matches!(&refused, WsError::Http(r) if r.status() == StatusCode::BAD_REQUEST),
        "{refused:?}"
    );
    assert!(up.heads().is_empty(), "{:?}", up.heads());
}

#[test]
fn a_tunnel_lives_while_bytes_move_and_closes_after_client_timeout_of_silence() {
    let up = WsUpstream::start();
    let (d, _, key) = daemon(&up, "1s");
    let (opened, quiet) = block_on(async {
        let opened = Instant::now();
        let (mut ws, _) = connect(&d, "/ws/echo", Some(&key)).await.unwrap();
        // 3 s of messages 400 ms apart: longer than the timeout, never silent for it.
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            ws.send(Message::text(format!("tick {i}"))).await.unwrap();
            assert_eq!(
                next_message(&mut ws).await,
                Message::text(format!("tick {i}"))
            );
        }
        let quiet = time_to_end(&mut ws, Duration::from_secs(10)).await;
        (opened.elapsed(), quiet)
    });
    assert!(opened > Duration::from_secs(3), "{opened:?}");
    assert!(
        quiet >= Duration::from_millis(900) && quiet < Duration::from_secs(5),
        "closed {quiet:?} after the last message"
    );
    // The upstream's side was closed too, and the line written.
    up.wait_ended();
    assert_eq!(access_lines(&d, 1)[0]["status"], 101);
}

#[test]
fn the_upstream_closing_ends_the_client_side() {
    let up = WsUpstream::start();
    let (d, _, key) = daemon(&up, "30s");
    let ended = block_on(async {
        let (mut ws, _) = connect(&d, "/ws/hangup", Some(&key)).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text("bye"));
        time_to_end(&mut ws, Duration::from_secs(10)).await
    });
    // Long before `client_timeout` (30 s): the upstream's close is passed on.
    assert!(ended < Duration::from_secs(3), "{ended:?}");
    let l = &access_lines(&d, 1)[0];
    assert_eq!(l["status"], 101, "{l}");
    assert!(
        l.get("upstream_error").is_none(),
        "a close is no failure: {l}"
    );
}
