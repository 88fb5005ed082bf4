//! One shard: a thread pinned to its share of the cores (see [`affinity::cores_for`]) running a
//! current-thread tokio runtime with its own listeners, gate (built here, on the shard's thread),
//! request-id maker and upstream pool. Its state is `Rc`/`Cell` — nothing crosses threads
//! except the start-up report, the stop signal and the connection counts ([`admit`]).
//!
//! The accept loops keep `limits.max_connections` (at the limit they stop accepting until a
//! connection closes), close a connection whose source is over its limit at once, and back off
//! when `accept` fails for want of descriptors or memory (50 ms, doubling to 1 s), each with at
//! most one warning per [`admit::WARN_EVERY`].

use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use super::Drain;
use super::admit::{self, Refusal, Ticket};
use super::affinity;
use super::conn;
use super::listen::ShardListeners;
use super::settings::Published;
use super::state::ShardState;
use crate::gate::Gate;

/// The gate factory as the shards share it: each calls it once, on its own thread.
pub(crate) type SharedGateFactory = dyn Fn(usize) -> Box<dyn Gate> + Send + Sync;

/// What a shard thread starts with.
pub(crate) struct Spec {
    pub n: usize,
    /// The CPUs this shard's thread may run on (empty: leave the affinity as inherited).
    pub cores: Vec<usize>,
    pub listeners: ShardListeners,
    /// Builds this shard's gate, on this shard's thread.
    pub gates: Arc<SharedGateFactory>,
    pub settings: Arc<Published>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub stop: watch::Receiver<Option<Drain>>,
    /// Whether the accept loops take connections now (paused while a hand-over is decided).
    pub accepting: watch::Receiver<bool>,
    /// Told `(n, Ok)` once the runtime and the gate are built, `(n, Err)` when the runtime
    /// cannot be; dropped without a word when building the gate panics.
    pub ready: mpsc::Sender<(usize, std::io::Result<()>)>,
}

/// How long an accept loop parked at the connection limit waits before it looks at the limit
/// again (a reload may have raised it); a connection closing wakes it before.
const LIMIT_RECHECK: Duration = Duration::from_secs(1);

/// The shard thread's body: pin, build the runtime and the gate, report, serve. Returns how
/// many requests the drain deadline cut.
pub(crate) fn run(spec: Spec) -> usize {
    let Spec {
        n,
        cores,
        listeners,
        gates,
        settings,
        tls,
        stop,
        accepting,
        ready,
    } = spec;
    affinity::pin_current(n, &cores);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(shard = n, "cannot build the shard runtime: {e}");
            let _ = ready.send((n, Err(e)));
            return 0;
        }
    };
    // Built after pinning, so the gate's index is first touched by the core that uses it.
    let gate = gates(n);
    drop(gates);
    let _ = ready.send((n, Ok(())));
    drop(ready);
    let local = tokio::task::LocalSet::new();
    let signals = Signals { stop, accepting };
    let cut = local.block_on(&rt, shard_main(n, listeners, gate, settings, tls, signals));
    // The connections still open (cut by the deadline) close here, with the tasks.
    drop(local);
    cut
}

/// What the proxy handle tells a shard: stop (and how to drain), and pause or resume accepting.
struct Signals {
    stop: watch::Receiver<Option<Drain>>,
    accepting: watch::Receiver<bool>,
}

async fn shard_main(
    n: usize,
    listeners: ShardListeners,
    gate: Box<dyn Gate>,
    settings: Arc<Published>,
    tls: Option<Arc<rustls::ServerConfig>>,
    signals: Signals,
) -> usize {
    let Signals {
        mut stop,
        accepting,
    } = signals;
    let shard = Rc::new(ShardState::new(n, settings, gate));
    shard.gate.borrow_mut().on_thread_start();
    let signal = shard.gate.borrow().change_signal();
    if let Some(signal) = signal {
        tokio::task::spawn_local(apply_when_idle(Rc::clone(&shard), signal));
    }
    if shard.log.is_some() {
        tokio::task::spawn_local(flush_access_log(Rc::clone(&shard)));
    }
    let acceptor = tls.map(TlsAcceptor::from);
    for (l, is_tls) in listeners.list {
        match TcpListener::from_std(l) {
            Ok(l) => {
                let acc = if is_tls { acceptor.clone() } else { None };
                tokio::task::spawn_local(accept_loop(Rc::clone(&shard), l, acc, accepting.clone()));
            }
            Err(e) => tracing::error!(shard = n, "cannot register listener: {e}"),
        }
    }
    let drain = loop {
        if let Some(d) = *stop.borrow_and_update() {
            break d;
        }
        if stop.changed().await.is_err() {
            break Drain {
                within: Duration::ZERO,
                idle_grace: None,
            };
        }
    };
    let now = tokio::time::Instant::now();
    shard.idle_until.set(drain.idle_grace.map(|g| now + g));
    shard.stopping.set(true);
    shard.notify.notify_waiters();
    let deadline = now + drain.within;
    while shard.active.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Connections still open and not idle between requests: a request (or a TLS handshake)
    // is under way, and is cut now.
    shard.active.get().saturating_sub(shard.idle.get())
}

/// Applies gate changes as soon as they are published, even when no request arrives (busy
/// shards apply them before their next decision anyway). Ends when the shard drains.
async fn apply_when_idle(shard: Rc<ShardState>, signal: Arc<Notify>) {
    loop {
        let stopping = shard.notify.notified();
        if shard.stopping.get() {
            return;
        }
        tokio::select! {
            biased;
            () = stopping => return,
            () = signal.notified() => {
                // The gate is only borrowed synchronously by requests; never across an await.
                if let Ok(mut gate) = shard.gate.try_borrow_mut() {
                    gate.on_wake();
                }
            }
        }
    }
}

/// A connection counted open (in the shard and in [`admit::Admission`]) until its task ends
/// or is dropped.
struct Active {
    shard: Rc<ShardState>,
    ticket: Ticket,
}

impl Drop for Active {
    fn drop(&mut self) {
        let shard = &self.shard;
        shard.active.set(shard.active.get().saturating_sub(1));
        shard.admission.release(&self.ticket);
    }
}

/// `" (N more since the last warning)"` for a throttled warning, or nothing.
fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since the last warning)")
    }
}

async fn accept_loop(
    shard: Rc<ShardState>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut accepting: watch::Receiver<bool>,
) {
    let mut backoff = admit::BACKOFF_MIN;
    loop {
        let notified = shard.notify.notified();
        if shard.stopping.get() {
            return;
        }
        if !*accepting.borrow_and_update() {
            // Paused: connections wait in the socket's queue (for this daemon or the next).
            tokio::select! {
                biased;
                () = notified => return,
                r = accepting.changed() => if r.is_err() { return },
            }
            continue;
        }
        let max = shard.settings().max_connections;
        // Registered before the count is read: another shard taking the last connection wakes
        // this loop out of `accept`, so it does not take one more.
        let mut full = pin!(shard.admission.full.notified());
        full.as_mut().enable();
        if !shard.admission.below(max) {
            // At the limit: leave the connections in the kernel's queue until one closes.
            shard.metrics.paused_at_limit();
            if let Some(n) = shard.admission.at_limit.due() {
                tracing::warn!(
                    max_connections = max,
                    "connection limit reached: new connections wait in the listen queue until one closes{}",
                    held_back(n)
                );
            }
            tokio::select! {
                biased;
                () = notified => return,
                () = shard.admission.wait_below(max, LIMIT_RECHECK) => {}
            }
            continue;
        }
        let (sock, peer) = tokio::select! {
            biased;
            () = notified => return,
            r = accepting.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
            () = &mut full => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if admit::starved(&e) => {
                    // EMFILE and friends: the connection stays queued; retrying at once would
                    // spin. Pause, longer each time in a row.
                    shard.metrics.paused_starved();
                    if let Some(n) = shard.admission.accept_errors.due() {
                        tracing::warn!(
                            "accept failed: {e}; pausing accepts for {backoff:?} (doubling up to {:?} while it lasts){}",
                            admit::BACKOFF_MAX,
                            held_back(n)
                        );
                    }
                    let notified = shard.notify.notified();
                    if shard.stopping.get() {
                        return;
                    }
                    tokio::select! {
                        biased;
                        () = notified => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(admit::BACKOFF_MAX);
                    continue;
                }
                Err(e) => {
                    // A connection that failed before it was taken (reset, aborted).
                    tracing::debug!("accept failed: {e}");
                    continue;
                }
            },
        };
        backoff = admit::BACKOFF_MIN;
        // Without XDP, a banned source is refused here (closed before a byte is read).
        if shard.failures.refuses(peer.ip()) {
            drop(sock);
            continue;
        }
        let ticket = {
            let st = shard.settings();
            match shard.admission.admit(
                peer.ip(),
                st.max_connections,
                st.max_per_source,
                st.v6_prefix,
            ) {
                Ok(t) => t,
                Err(Refusal::PerSource) => {
                    // Closed with a reset: nothing is read or kept (no TIME_WAIT here).
                    shard.metrics.refused_per_source();
                    let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                    drop(sock);
                    continue;
                }
            }
        };
        let _ = sock.set_nodelay(true);
        shard.active.set(shard.active.get() + 1);
        let guard = Active {
            shard: Rc::clone(&shard),
            ticket,
        };
        // Two task shapes: a plain connection's task does not carry a TLS session's room.
        match &tls {
            None => drop(tokio::task::spawn_local(plain(guard, sock, peer))),
            Some(acc) => drop(tokio::task::spawn_local(secure(
                guard,
                sock,
                peer,
                acc.clone(),
            ))),
        }
    }
}

async fn plain(guard: Active, sock: TcpStream, peer: SocketAddr) {
    conn::serve(&guard.shard, sock, peer, false).await;
}

async fn secure(guard: Active, sock: TcpStream, peer: SocketAddr, acc: TlsAcceptor) {
    let shard = &guard.shard;
    let timeout = shard.settings().client_timeout;
    match tokio::time::timeout(timeout, acc.accept(sock)).await {
        Ok(Ok(stream)) => conn::serve(shard, stream, peer, true).await,
        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Hands the shard's partial access-log batch to the writer every
/// [`crate::obs::access_log::FLUSH_EVERY`], so a quiet shard's lines do not wait for a full one.
async fn flush_access_log(shard: Rc<ShardState>) {
    loop {
        tokio::time::sleep(crate::obs::access_log::FLUSH_EVERY).await;
        if let Some(log) = &shard.log {
            log.borrow_mut().flush();
        }
    }
}
