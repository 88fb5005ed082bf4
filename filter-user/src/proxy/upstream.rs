//! Upstream connections: a per-shard keep-alive pool per upstream origin, and connecting with
//! the `limits.upstream_timeout` deadline (refused or unreachable: class `connect`, 502; timed
//! out: class `timeout`, 504).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::upstream_error::UpstreamError;

/// Idle connections kept per upstream per shard.
const MAX_IDLE: usize = 512;

/// A shard's idle upstream connections, indexed by upstream.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Vec<Vec<TcpStream>>,
}

impl Pool {
    /// A pool for `n` upstreams.
    pub fn new(n: usize) -> Self {
        Self {
            idle: (0..n).map(|_| Vec::new()).collect(),
        }
    }

    /// An idle connection to upstream `up` that has not been closed by the other side.
    pub fn take(&mut self, up: usize) -> Option<TcpStream> {
        let list = &mut self.idle[up];
        while let Some(s) = list.pop() {
            let mut probe = [0u8; 1];
            // Alive and quiet: WouldBlock. Closed (Ok(0)), stray bytes or errors: discard.
            if matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                return Some(s);
            }
        }
        None
    }

    /// Returns a clean connection to the pool.
    pub fn put(&mut self, up: usize, s: TcpStream) {
        let list = &mut self.idle[up];
        if list.len() < MAX_IDLE {
            list.push(s);
        }
    }
}

/// Connects to an upstream within `timeout`.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(UpstreamError::connect(e)),
        Err(_) => Err(UpstreamError::timeout()),
    }
}
