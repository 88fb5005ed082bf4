//! Shared helpers for edgefilter benches (see `benches/benches/`) and the load-test servers in
//! `src/bin/`.

use std::future::Future;

use tokio::net::{TcpStream, UnixStream};

/// Runs an accept loop on a current-thread tokio runtime of the calling thread, handing every
/// connection (with `TCP_NODELAY` set) to its own local task. Returns only on an accept error.
///
/// # Errors
/// The runtime cannot be built, the listener cannot be registered, or `accept` fails.
pub fn serve_local<F, Fut>(listener: std::net::TcpListener, handle: F) -> std::io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    listener.set_nonblocking(true)?;
    block_on_local(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (s, _) = listener.accept().await?;
            let _ = s.set_nodelay(true);
            tokio::task::spawn_local(handle(s));
        }
    })
}

/// As [`serve_local`], on a Unix stream socket.
///
/// # Errors
/// As [`serve_local`].
pub fn serve_local_unix<F, Fut>(
    listener: std::os::unix::net::UnixListener,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(UnixStream) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    listener.set_nonblocking(true)?;
    block_on_local(async move {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        loop {
            let (s, _) = listener.accept().await?;
            tokio::task::spawn_local(handle(s));
        }
    })
}

/// Runs `work` (and the local tasks it spawns) on a current-thread runtime of this thread.
fn block_on_local<W: Future<Output = std::io::Result<()>>>(work: W) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, work)
}
