//! The I/O floor of a userspace HTTP/1.1 proxy on this machine, for `cargo xtask bench`: not a
//! proxy, a lock-step byte relay. Built like edgefilter's data path (threads pinned exactly as
//! shards are, by `edgefilter::proxy::affinity`; a current-thread tokio runtime and a listener
//! from `edgefilter::proxy::listen::bind_one` each; one upstream connection per client
//! connection; `TCP_NODELAY`) but with no parsing, no checks and no header rewriting: read what
//! the client sent, write it upstream, read what came back, write it to the client. It performs
//! the same four socket operations per request as any proxy that keeps HTTP/1.1 semantics, so its
//! rate bounds what a proxy built this way can reach here. It is only correct for
//! request/response traffic whose messages each fit one read, which is what the bench sends.
//!
//! Usage: `relay_floor LISTEN UPSTREAM THREADS`.

use std::net::SocketAddr;

use edgefilter::proxy::{affinity, listen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, threads] = args.as_slice() else {
        return Err(std::io::Error::other(
            "usage: relay_floor LISTEN UPSTREAM THREADS (e.g. 127.0.0.1:8081 127.0.0.1:9000 2)",
        ));
    };
    let bad = |what: &str, v: &str| std::io::Error::other(format!("{what} {v:?}: not valid"));
    let listen: SocketAddr = listen.parse().map_err(|_| bad("LISTEN", listen))?;
    let upstream: SocketAddr = upstream.parse().map_err(|_| bad("UPSTREAM", upstream))?;
    let threads = threads
        .parse::<usize>()
        .map_err(|_| bad("THREADS", threads))?
        .max(1);
    let cpus = affinity::usable_cpus();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let sock = listen::bind_one(listen)?;
            let cores = affinity::cores_for(i, threads, &cpus);
            Ok(std::thread::spawn(move || {
                affinity::pin_current(i, &cores);
                benches::serve_local(sock, move |client| relay(client, upstream))
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for h in handles {
        h.join()
            .map_err(|_| std::io::Error::other("a relay thread panicked"))??;
    }
    Ok(())
}

/// Lock-step relay of one client connection over its own upstream connection.
async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if up.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let n = match up.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if client.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
