//! A deliberately tiny, fast HTTP/1.1 origin for proxy load tests: one current-thread tokio
//! runtime, keep-alive, pipelining, a fixed small `200 OK` per request head received (bodies
//! are not expected). Usage: `bench_upstream 127.0.0.1:PORT`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!";

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18000".into())
        .parse()
        .map_err(std::io::Error::other)?;
    benches::serve_local(std::net::TcpListener::bind(addr)?, serve)
}

async fn serve(mut s: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(RESPONSE.len() * 16);
    loop {
        let n = match s.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        let mut start = 0;
        out.clear();
        while let Some(end) = find_end(&buf[start..filled]) {
            out.extend_from_slice(RESPONSE);
            start += end;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return; // a head larger than the buffer: not a bench request
        }
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// End of the first request head in `b` (no bodies expected).
fn find_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}
