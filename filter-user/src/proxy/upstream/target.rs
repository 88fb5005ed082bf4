//! One upstream target of a route: where it is (its addresses, re-resolved in the background
//! by [`super::resolve`]), how it is reached (TCP, TLS, a Unix socket), its shared health, and
//! connecting to it within `limits.upstream_timeout`: every address in turn from a rotating
//! start, a failed one skipped, then the TLS handshake.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;

use super::super::upstream_error::UpstreamError;
use super::stream::UpStream;
use super::tls;
use crate::config::upstream::{Endpoint, Scheme};
use crate::obs::upstreams::{TargetHealth, now_ms};

/// One target of one route.
pub struct Target {
    /// Its index in the route table's list of targets (its pool slot).
    pub slot: usize,
    /// Where and how.
    pub endpoint: Endpoint,
    /// How often its name is re-resolved.
    pub resolve_interval: Duration,
    /// Its addresses now (empty for `unix:`).
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// Where the next connect starts in `addrs`.
    next_addr: AtomicUsize,
    /// Bumped each time `addrs` changes: pooled connections made before are not reused.
    generation: AtomicU64,
    /// A connect failed: re-resolve before the interval is up.
    resolve_soon: AtomicBool,
    /// When it was last resolved ([`now_ms`]).
    pub resolved_at: AtomicU64,
    /// The TLS connector and the name to verify, for `https`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Shared health (outstanding requests, failures, ejection) and what `/metrics` shows.
    pub health: Arc<TargetHealth>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("target", &self.health.target)
            .field("addrs", &self.addrs.load())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Target `text` of the route at `prefix`, resolved now (a name that does not resolve at
    /// start is an error: there are no last good addresses to keep).
    ///
    /// # Errors
    /// What is wrong, to follow "upstream `…` ".
    pub fn new(
        slot: usize,
        prefix: &str,
        text: &str,
        tls_config: Option<&Arc<ClientConfig>>,
        sni: Option<&str>,
        resolve_interval: Duration,
    ) -> Result<Self, String> {
        let endpoint = Endpoint::parse(text)?;
        let addrs = match endpoint.scheme {
            Scheme::Unix => Vec::new(),
            Scheme::Http | Scheme::Https => lookup_now(&endpoint)?,
        };
        let tls = match (endpoint.scheme, tls_config) {
            (Scheme::Https, Some(config)) => Some((
                TlsConnector::from(Arc::clone(config)),
                tls::server_name(sni, &endpoint.host)?,
            )),
            (Scheme::Https, None) => return Err("is https:// but has no TLS settings".into()),
            _ => None,
        };
        let health = Arc::new(TargetHealth::new(prefix, text));
        health
            .addresses
            .store(addrs.len() as u64, Ordering::Relaxed);
        Ok(Self {
            slot,
            endpoint,
            resolve_interval,
            addrs: ArcSwap::from_pointee(addrs),
            next_addr: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            resolve_soon: AtomicBool::new(false),
            resolved_at: AtomicU64::new(now_ms()),
            tls,
            health,
        })
    }

    /// The target as written.
    #[must_use]
    pub fn label(&self) -> &str {
        &self.health.target
    }

    /// Its addresses now.
    #[must_use]
    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// Whether its host is a name to re-resolve (not an address, not a socket path).
    #[must_use]
    pub fn has_name(&self) -> bool {
        self.endpoint.scheme != Scheme::Unix && !self.endpoint.host_is_ip()
    }

    /// Whether the resolver should look it up at `now`, and takes the early request if any.
    pub fn resolve_due(&self, now: u64) -> bool {
        let interval = u64::try_from(self.resolve_interval.as_millis()).unwrap_or(u64::MAX);
        let due = now.saturating_sub(self.resolved_at.load(Ordering::Relaxed)) >= interval;
        self.resolve_soon.swap(false, Ordering::Relaxed) || due
    }

    /// The resolver found `addrs` (not empty): new connections use them, and pooled ones
    /// made to the old addresses are not reused.
    pub fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        self.health
            .addresses
            .store(addrs.len() as u64, Ordering::Relaxed);
        self.addrs.store(Arc::new(addrs));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Which set of addresses is in force (changes when they do).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `host:port` to look up.
    #[must_use]
    pub fn lookup_name(&self) -> String {
        lookup_text(&self.endpoint)
    }

    /// Connects (and for `https` shakes hands) by `deadline`.
    ///
    /// # Errors
    /// `connect` (refused, unreachable, no address), `timeout` (the deadline passed), `tls` (the
    /// handshake failed, with what failed in words).
    pub async fn connect(&self, deadline: Instant) -> Result<UpStream, UpstreamError> {
        if let Some(path) = &self.endpoint.socket {
            return match timeout_at(deadline, UnixStream::connect(path)).await {
                Ok(Ok(s)) => Ok(UpStream::Unix(s)),
                Ok(Err(e)) => Err(UpstreamError::connect(e)),
                Err(_) => Err(UpstreamError::timeout()),
            };
        }
        let tcp = self.connect_tcp(deadline).await.inspect_err(|_| {
            if self.has_name() {
                self.resolve_soon.store(true, Ordering::Relaxed);
            }
        })?;
        let Some((connector, name)) = &self.tls else {
            return Ok(UpStream::Tcp(tcp));
        };
        match timeout_at(deadline, connector.connect(name.clone(), tcp)).await {
            Ok(Ok(s)) => Ok(UpStream::Tls(Box::new(s))),
            Ok(Err(e)) => Err(UpstreamError::tls(tls::describe(&e))),
            Err(_) => Err(UpstreamError::timeout()),
        }
    }

    /// Every address in turn, from a start that rotates per connect; each but the last gets an
    /// equal share of the time left, so one black-holed address cannot use it all.
    async fn connect_tcp(&self, deadline: Instant) -> Result<TcpStream, UpstreamError> {
        let addrs = self.addrs();
        if addrs.is_empty() {
            return Err(UpstreamError::connect(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "the name resolves to no address",
            )));
        }
        let start = self.next_addr.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..addrs.len() {
            let addr = addrs[(start + i) % addrs.len()];
            let left = addrs.len() - i;
            let now = Instant::now();
            if now >= deadline {
                return Err(UpstreamError::timeout());
            }
            let share = deadline
                .saturating_duration_since(now)
                .div_f64(left as f64)
                .max(Duration::from_millis(200));
            let until = (now + share).min(deadline);
            match timeout_at(until, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = Some(UpstreamError::connect(e)),
                Err(_) if until >= deadline => return Err(UpstreamError::timeout()),
                Err(_) => last = Some(UpstreamError::timeout()),
            }
        }
        Err(last.unwrap_or_else(UpstreamError::timeout))
    }
}

fn lookup_text(e: &Endpoint) -> String {
    if e.host.contains(':') {
        format!("[{}]:{}", e.host, e.port)
    } else {
        format!("{}:{}", e.host, e.port)
    }
}

/// Resolves `e` now, on this thread (start-up and reload only).
fn lookup_now(e: &Endpoint) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = lookup_text(e)
        .to_socket_addrs()
        .map_err(|err| format!("does not resolve: {err}"))?
        .collect();
    if addrs.is_empty() {
        return Err("resolves to no address".into());
    }
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    //! Connecting through TLS to a real rustls server on loopback.

    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::HandshakeKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A TLS echo server for 127.0.0.1 (one byte back per connection); the CA's PEM.
    async fn tls_echo() -> (SocketAddr, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                        let _ = s.flush().await;
                    }
                });
            }
        });
        (addr, ca.pem())
    }

    fn kind(s: &UpStream) -> Option<HandshakeKind> {
        match s {
            UpStream::Tls(s) => s.get_ref().1.handshake_kind(),
            _ => None,
        }
    }

    /// The second connection resumes the session the first one made (one client config per
    /// route, its session cache shared by the shards).
    #[tokio::test(flavor = "current_thread")]
    async fn tls_sessions_are_resumed() {
        let (addr, ca_pem) = tls_echo().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        let cfg = crate::config::Config::parse(
            &format!(
                "[xdp]\nenabled = false\n[[route]]\nprefix = \"/\"\nupstream = \"https://{addr}\"\n\
                 upstream_ca = \"{}\"\n",
                ca.display()
            ),
            std::path::Path::new("/"),
        )
        .unwrap();
        let client = tls::client_config(&cfg, &cfg.routes[0]).unwrap();
        let target = Target::new(
            0,
            "/",
            &format!("https://{addr}"),
            Some(&client),
            None,
            Duration::from_secs(30),
        )
        .unwrap();
        let deadline = || Instant::now() + Duration::from_secs(5);
        let mut first = target.connect(deadline()).await.unwrap();
        assert_eq!(kind(&first), Some(HandshakeKind::Full));
        // An exchange takes in the session tickets the server sent after the handshake.
        first.write_all(b"x").await.unwrap();
        first.flush().await.unwrap();
        let mut b = [0u8; 1];
        first.read_exact(&mut b).await.unwrap();
        let second = target.connect(deadline()).await.unwrap();
        assert_eq!(kind(&second), Some(HandshakeKind::Resumed));
    }
}
