//! The byte relay of a switched connection (a WebSocket after its `101`): bytes go both ways,
//! each direction as soon as it can, until either side closes or errs, or nothing moved either
//! way for the idle limit. The bytes each side sent before the switch that are already read
//! go first.
//!
//! It is generic over both streams (plain TCP, TLS, anything `AsyncRead + AsyncWrite`), knows
//! nothing of HTTP, and owns no buffer: it pumps through the two it is lent (the connection's
//! read buffers, which already hold the early bytes).

use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, sleep_until};

/// Each direction's buffer holds at least this much.
const CHUNK: usize = 16 * 1024;

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client closed its side (everything it sent was passed on).
    ClientClosed,
    /// The upstream closed its side (everything it sent was passed on).
    UpstreamClosed,
    /// Nothing moved either way for the idle limit.
    Idle,
    /// Reading from or writing to the client failed (its error is of no use upstream of here).
    ClientFailed,
    /// Reading from or writing to the upstream failed.
    UpstreamFailed(io::Error),
}

/// What a tunnel carried, and how it ended.
#[derive(Debug)]
pub(crate) struct Relayed {
    /// Bytes written to the upstream (the early ones included).
    pub to_upstream: u64,
    /// Bytes written to the client (the early ones included).
    pub to_client: u64,
    /// Why it stopped.
    pub end: End,
}

/// One direction: bytes read from one side into `buf[start..end]`, written on to the other.
struct Pump<'b> {
    buf: &'b mut BytesMut,
    start: usize,
    end: usize,
    /// Written but not flushed yet (TLS holds records until flushed).
    unflushed: bool,
    /// The reading side has closed.
    eof: bool,
    moved: u64,
}

/// Where a direction failed.
enum Fault {
    Read(io::Error),
    Write(io::Error),
}

impl<'b> Pump<'b> {
    /// A direction whose first bytes to write are those already in `buf`.
    fn new(buf: &'b mut BytesMut) -> Self {
        let early = buf.len();
        // Zero-filled once so reads can go into it without unsafe; then reused as it is.
        buf.resize(early.max(CHUNK), 0);
        Self {
            buf,
            start: 0,
            end: early,
            unflushed: false,
            eof: false,
            moved: 0,
        }
    }

    /// Moves what it can from `from` to `to` without waiting; `progress` is set when a byte
    /// moved. Ready once `from` has closed and all it sent is written and flushed.
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        progress: &mut bool,
    ) -> Poll<Result<(), Fault>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while self.start < self.end {
                let wrote =
                    ready!(Pin::new(&mut *to).poll_write(cx, &self.buf[self.start..self.end]))
                        .map_err(Fault::Write)?;
                if wrote == 0 {
                    return Poll::Ready(Err(Fault::Write(io::ErrorKind::WriteZero.into())));
                }
                self.start += wrote;
                self.moved += wrote as u64;
                self.unflushed = true;
                *progress = true;
            }
            if self.unflushed {
                ready!(Pin::new(&mut *to).poll_flush(cx)).map_err(Fault::Write)?;
                self.unflushed = false;
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            let mut room = ReadBuf::new(&mut self.buf[..]);
            ready!(Pin::new(&mut *from).poll_read(cx, &mut room)).map_err(Fault::Read)?;
            let n = room.filled().len();
            (self.start, self.end) = (0, n);
            if n == 0 {
                self.eof = true;
            } else {
                *progress = true;
            }
        }
    }
}

/// Relays between `client` and `upstream` until one closes or fails, or nothing moved for
/// `idle`. `from_client` and `from_upstream` hold each side's bytes already read (sent on
/// first); both are used as the directions' buffers, and hold nothing of use afterwards.
pub(crate) async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    from_client: &mut BytesMut,
    from_upstream: &mut BytesMut,
    idle: Duration,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pump::new(from_client);
    let mut down = Pump::new(from_upstream);
    let mut last = Instant::now();
    let mut timer = pin!(sleep_until(last + idle));
    let end = poll_fn(|cx| {
        let mut progress = false;
        let upward = up.poll_pump(cx, client, upstream, &mut progress);
        let downward = down.poll_pump(cx, upstream, client, &mut progress);
        if progress {
            last = Instant::now();
        }
        match (upward, downward) {
            (Poll::Ready(Err(Fault::Read(_))), _) | (_, Poll::Ready(Err(Fault::Write(_)))) => {
                return Poll::Ready(End::ClientFailed);
            }
            (Poll::Ready(Err(Fault::Write(e))), _) | (_, Poll::Ready(Err(Fault::Read(e)))) => {
                return Poll::Ready(End::UpstreamFailed(e));
            }
            (Poll::Ready(Ok(())), _) => return Poll::Ready(End::ClientClosed),
            (_, Poll::Ready(Ok(()))) => return Poll::Ready(End::UpstreamClosed),
            (Poll::Pending, Poll::Pending) => {}
        }
        // The timer is moved only when it fires early (bytes moved since it was set), not on
        // every byte.
        while timer.as_mut().poll(cx).is_ready() {
            if last.elapsed() >= idle {
                return Poll::Ready(End::Idle);
            }
            timer.as_mut().reset(last + idle);
        }
        Poll::Pending
    })
    .await;
    Relayed {
        to_upstream: up.moved,
        to_client: down.moved,
        end,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    /// A tunnel between two in-memory pipes, with `early` bytes from each side already read.
    async fn start(
        idle: Duration,
        early_client: &[u8],
        early_upstream: &[u8],
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Relayed>,
    ) {
        let (client, mut client_side) = duplex(64);
        let (upstream, mut upstream_side) = duplex(64);
        let (mut a, mut b) = (BytesMut::from(early_client), BytesMut::from(early_upstream));
        let task = tokio::spawn(async move {
            relay(&mut client_side, &mut upstream_side, &mut a, &mut b, idle).await
        });
        (client, upstream, task)
    }

    #[tokio::test]
    async fn early_bytes_go_first_then_both_ways_until_a_side_closes() {
        let (mut client, mut upstream, task) =
            start(Duration::from_secs(5), b"early-up", b"early-down").await;
        let mut got = [0u8; 10];
        upstream.read_exact(&mut got[..8]).await.unwrap();
        assert_eq!(&got[..8], b"early-up");
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early-down");
        // More than the pipes hold at once, both ways at the same time.
        let big = vec![7u8; 100_000];
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        let send = big.clone();
        let a = tokio::spawn(async move {
            cw.write_all(&send).await.unwrap();
            cw
        });
        let send = big.clone();
        let b = tokio::spawn(async move {
            uw.write_all(&send).await.unwrap();
            uw
        });
        let mut at_up = vec![0u8; big.len()];
        let mut at_client = vec![0u8; big.len()];
        ur.read_exact(&mut at_up).await.unwrap();
        cr.read_exact(&mut at_client).await.unwrap();
        assert!(at_up == big && at_client == big);
        let (_cw, mut uw) = (a.await.unwrap(), b.await.unwrap());
        uw.shutdown().await.unwrap();
        let r = task.await.unwrap();
        assert!(matches!(r.end, End::UpstreamClosed), "{r:?}");
        assert_eq!(r.to_upstream, 8 + 100_000);
        assert_eq!(r.to_client, 10 + 100_000);
    }

    #[tokio::test]
    async fn traffic_either_way_holds_it_open_and_silence_ends_it() {
        let idle = Duration::from_millis(600);
        let (mut client, mut upstream, task) = start(idle, b"", b"").await;
        let mut one = [0u8; 1];
        let began = Instant::now();
        for i in 0..6 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Alternately one way and the other: never 600 ms without a byte.
            if i % 2 == 0 {
                client.write_all(b"x").await.unwrap();
                upstream.read_exact(&mut one).await.unwrap();
            } else {
                upstream.write_all(b"y").await.unwrap();
                client.read_exact(&mut one).await.unwrap();
            }
            assert!(!task.is_finished(), "closed after {i} exchanges");
        }
        let quiet = Instant::now();
        let r = task.await.unwrap();
        assert!(matches!(r.end, End::Idle), "{r:?}");
        assert!(quiet.elapsed() >= idle && began.elapsed() >= Duration::from_millis(1800));
        assert_eq!((r.to_upstream, r.to_client), (3, 3));
    }
}
