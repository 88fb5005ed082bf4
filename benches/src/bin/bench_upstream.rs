//! A deliberately tiny, fast HTTP/1.1 origin for proxy load tests: one current-thread tokio
//! runtime, keep-alive, pipelining, a fixed small `200 OK` per request head received (bodies
//! are not expected).
//!
//! Usage: `bench_upstream 127.0.0.1:PORT` (plain TCP), `bench_upstream 127.0.0.1:PORT --tls
//! CA.pem` (TLS with a certificate for 127.0.0.1 and localhost, signed by a CA made at start and
//! written to `CA.pem`), or `bench_upstream unix:/path.sock`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let first = args.first().map_or("127.0.0.1:18000", String::as_str);
    if let Some(path) = first.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        return Ok(benches::serve_local_unix(listener, serve)?);
    }
    let addr: SocketAddr = first.parse()?;
    let listener = std::net::TcpListener::bind(addr)?;
    match args.get(1).map(String::as_str) {
        Some("--tls") => {
            let ca_out = args
                .get(2)
                .ok_or_else(|| anyhow::anyhow!("--tls needs CA.pem"))?;
            let acceptor = tls_acceptor(ca_out)?;
            Ok(benches::serve_local(listener, move |s| {
                let acceptor = acceptor.clone();
                async move {
                    if let Ok(s) = acceptor.accept(s).await {
                        serve(s).await;
                    }
                }
            })?)
        }
        _ => Ok(benches::serve_local(listener, serve)?),
    }
}

/// A CA written to `ca_out`, and an acceptor serving a leaf for 127.0.0.1 and localhost it signed.
fn tls_acceptor(ca_out: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    std::fs::write(ca_out, ca.pem())?;
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&leaf_key, &ca)?;
    let key = rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("leaf key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
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
        if !out.is_empty() && (s.write_all(&out).await.is_err() || s.flush().await.is_err()) {
            return;
        }
    }
}

/// End of the first request head in `b` (no bodies expected).
fn find_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}
