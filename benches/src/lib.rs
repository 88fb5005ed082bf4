//! Shared helpers for edgefilter benches (see `benches/benches/`) and the load-test servers in
//! `src/bin/`.

use std::future::Future;

use tokio::net::TcpStream;

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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (s, _) = listener.accept().await?;
            let _ = s.set_nodelay(true);
            tokio::task::spawn_local(handle(s));
        }
    })
}
