//! A programmable HTTP/1.1 origin for upstream tests: plain TCP, TLS (any certificate, client
//! certificates optionally required) or a Unix socket, std threads, one per connection. Each
//! request is counted under its `X-Request-Id` and answered by the test's `reply` function;
//! [`Origin::kill`] stops it as a crashed process would (listener closed, open connections
//! shut).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One request as the origin read it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the origin does with a request.
pub enum Reply {
    /// Answer `status` with extra header lines and `body`.
    Answer(u16, Vec<(String, String)>, String),
    /// Close the connection without answering (after reading the request).
    Close,
}

pub type ReplyFn = dyn Fn(&Req) -> Reply + Send + Sync;

/// 200 with the request's `Host` and injected `Authorization` echoed in the body.
pub fn echo() -> Arc<ReplyFn> {
    Arc::new(|r: &Req| {
        let body = format!(
            "host={} auth={}",
            r.header("host").unwrap_or("-"),
            r.header("authorization").unwrap_or("-")
        );
        Reply::Answer(200, Vec::new(), body)
    })
}

/// How clients reach it.
pub enum Listen {
    Tcp(SocketAddr),
    /// TLS with this PEM chain and key; client certificates from this CA required when set.
    Tls {
        addr: SocketAddr,
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
    },
    Unix(PathBuf),
}

/// A running origin.
pub struct Origin {
    /// Its TCP address (port 0 for a Unix socket).
    pub addr: SocketAddr,
    /// Requests per `X-Request-Id` (or `-`), in arrival order.
    seen: Arc<Mutex<Vec<(String, Req)>>>,
    dead: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    pub reply: Arc<Mutex<Arc<ReplyFn>>>,
    busy: Arc<Mutex<()>>,
}

impl Origin {
    /// Starts serving `listen` with `reply`.
    pub fn start(listen: Listen, reply: Arc<ReplyFn>) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let dead = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(Mutex::new(reply));
        let busy = Arc::new(Mutex::new(()));
        let shared = Shared {
            seen: Arc::clone(&seen),
            dead: Arc::clone(&dead),
            reply: Arc::clone(&reply),
            busy: Arc::clone(&busy),
        };
        let addr = match listen {
            Listen::Tcp(addr) => {
                let l = TcpListener::bind(addr).expect("bind origin");
                let addr = l.local_addr().unwrap();
                accept_tcp(l, shared, Arc::clone(&open), None);
                addr
            }
            Listen::Tls {
                addr,
                cert,
                key,
                client_ca,
            } => {
                let l = TcpListener::bind(addr).expect("bind TLS origin");
                let addr = l.local_addr().unwrap();
                let config = server_config(&cert, &key, client_ca.as_deref());
                accept_tcp(l, shared, Arc::clone(&open), Some(config));
                addr
            }
            Listen::Unix(path) => {
                let l = UnixListener::bind(&path).expect("bind unix origin");
                std::thread::spawn(move || {
                    for s in l.incoming() {
                        let Ok(s) = s else { return };
                        if shared.dead.load(Ordering::SeqCst) {
                            return;
                        }
                        let shared = shared.clone();
                        std::thread::spawn(move || {
                            let w = s.try_clone().unwrap();
                            let _ = serve(BufReader::new(s), w, &shared);
                        });
                    }
                });
                "0.0.0.0:0".parse().unwrap()
            }
        };
        Self {
            addr,
            seen,
            dead,
            open,
            reply,
            busy,
        }
    }

    /// Every request id received, in order.
    pub fn ids(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<Req> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Requests received.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Answers with `reply` from now on.
    pub fn set_reply(&self, reply: Arc<ReplyFn>) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Stops as a process that exits between two requests: no more connections, open ones
    /// shut, requests it read after this never answered nor counted.
    pub fn kill(&self) {
        let _between = self.busy.lock().unwrap();
        self.dead.store(true, Ordering::SeqCst);
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<(String, Req)>>>,
    dead: Arc<AtomicBool>,
    reply: Arc<Mutex<Arc<ReplyFn>>>,
    /// Held while a request is taken and answered: a kill lands between requests.
    busy: Arc<Mutex<()>>,
}

fn accept_tcp(
    l: TcpListener,
    shared: Shared,
    open: Arc<Mutex<Vec<TcpStream>>>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            if shared.dead.load(Ordering::SeqCst) {
                return;
            }
            let _ = s.set_nodelay(true);
            open.lock().unwrap().push(s.try_clone().unwrap());
            let (shared, tls) = (shared.clone(), tls.clone());
            let sock = s.try_clone().unwrap();
            std::thread::spawn(move || match tls {
                None => {
                    let w = s.try_clone().unwrap();
                    let _ = serve(BufReader::new(s), w, &shared);
                    // The kill list holds a copy: close for real.
                    let _ = sock.shutdown(std::net::Shutdown::Both);
                }
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let stream = Arc::new(Mutex::new(rustls::StreamOwned::new(conn, s)));
                    let r = BufReader::new(Locked(Arc::clone(&stream)));
                    let _ = serve(r, Locked(stream), &shared);
                    let _ = sock.shutdown(std::net::Shutdown::Both);
                }
            });
        }
    });
}

/// One TLS stream shared by the reading and the writing half (used one after the other).
struct Locked(Arc<Mutex<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>>);

impl Read for Locked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().read(buf)
    }
}

impl Write for Locked {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

fn serve<R: Read, W: Write>(mut r: BufReader<R>, mut w: W, shared: &Shared) -> std::io::Result<()> {
    loop {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            lines.push(line.trim_end().to_string());
        }
        let Some(first) = lines.first() else {
            return Ok(());
        };
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let req = Req {
            method,
            path,
            headers,
        };
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let id = req.header("x-request-id").unwrap_or("-").to_string();
        let _busy = shared.busy.lock().unwrap();
        if shared.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        shared.seen.lock().unwrap().push((id, req.clone()));
        let reply = Arc::clone(&shared.reply.lock().unwrap());
        match reply(&req) {
            Reply::Close => return Ok(()),
            Reply::Answer(status, extra, body) => {
                let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (n, v) in extra {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                head.push_str("\r\n");
                w.write_all(head.as_bytes())?;
                w.write_all(body.as_bytes())?;
                w.flush()?;
            }
        }
    }
}

/// Counts of each id over several origins: (ids seen more than once, distinct ids).
pub fn duplicates(origins: &[&Origin]) -> (Vec<String>, usize) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for o in origins {
        for id in o.ids() {
            *counts.entry(id).or_default() += 1;
        }
    }
    let dup = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    (dup, counts.len())
}
