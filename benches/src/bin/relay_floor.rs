//! The I/O floor of a userspace HTTP/1.1 proxy on this machine, for `cargo xtask bench`: not a
//! proxy, a lock-step byte relay. Built like edgefilter's data path (one pinned thread per core,
//! a current-thread tokio runtime each, an `SO_REUSEPORT` listener each, one upstream connection
//! per client connection, `TCP_NODELAY`) but with no parsing, no checks and no header rewriting:
//! read what the client sent, write it upstream, read what came back, write it to the client.
//! It performs the same four socket operations per request as any proxy that keeps HTTP/1.1
//! semantics, so its rate bounds what such a proxy can reach here. It is only correct for
//! request/response traffic whose messages each fit one read, which is what the bench sends.
//!
//! Usage: `relay_floor LISTEN UPSTREAM THREADS`.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut next = |what: &str| {
        args.next().ok_or_else(|| {
            std::io::Error::other(format!(
                "usage: relay_floor LISTEN UPSTREAM THREADS (missing {what})"
            ))
        })
    };
    let listen: SocketAddr = next("LISTEN")?.parse().map_err(std::io::Error::other)?;
    let upstream: SocketAddr = next("UPSTREAM")?.parse().map_err(std::io::Error::other)?;
    let threads: usize = next("THREADS")?.parse().map_err(std::io::Error::other)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let threads = threads.max(1);
    let single = std::env::var_os("RELAY_SINGLE_CORE").is_some();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let sock = bind(listen)?;
            let set: Vec<usize> = if single || threads >= cores.len() {
                cores
                    .get(i % cores.len().max(1))
                    .map(|c| c.id)
                    .into_iter()
                    .collect()
            } else {
                cores
                    .iter()
                    .map(|c| c.id)
                    .skip(i)
                    .step_by(threads)
                    .collect()
            };
            Ok(std::thread::spawn(move || {
                serve_thread(sock, upstream, set)
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for h in handles {
        h.join()
            .map_err(|_| std::io::Error::other("a relay thread panicked"))??;
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

fn serve_thread(
    sock: std::net::TcpListener,
    upstream: SocketAddr,
    cores: Vec<usize>,
) -> std::io::Result<()> {
    if !cores.is_empty() {
        let mut set = nix::sched::CpuSet::new();
        for c in cores {
            set.set(c).map_err(std::io::Error::other)?;
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .map_err(std::io::Error::other)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(sock)?;
        loop {
            let (client, _) = listener.accept().await?;
            tokio::task::spawn_local(relay(client, upstream));
        }
    })
}

/// Lock-step relay of one client connection over its own upstream connection.
async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
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
