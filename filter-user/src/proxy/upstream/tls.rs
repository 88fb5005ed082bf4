//! TLS towards `https://` targets: one rustls `ClientConfig` per route (the ring provider, as the
//! listener), chain and host name always verified against the system roots or the route's
//! `upstream_ca`, SNI from the target's host or `upstream_sni`, an optional client certificate
//! for mTLS. The config's session cache is shared by every shard, so a new connection resumes a
//! session another shard made. A handshake that fails is described for the log in words
//! ([`describe`]): expired, unknown issuer, name mismatch — never a plaintext fallback.

use std::path::Path;
use std::sync::Arc;

use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};

use crate::config::{Config, Route};

/// Builds the route's client config.
///
/// # Errors
/// What is wrong with `upstream_ca` or the client certificate, naming the file.
pub fn client_config(cfg: &Config, route: &Route) -> Result<Arc<ClientConfig>, String> {
    let roots = match &route.upstream_ca {
        Some(path) => roots_from_file(&cfg.resolve(path))?,
        None => system_roots(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let mut config = match (&route.upstream_client_cert, &route.upstream_client_key) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (cfg.resolve(cert), cfg.resolve(key));
            let chain = crate::pem::certificates(&cert)
                .map_err(|why| format!("upstream_client_cert {}: {why}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| format!("upstream_client_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("upstream_client_cert/key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name a target's certificate must hold (and the SNI sent): `upstream_sni`, else its host.
///
/// # Errors
/// The name is neither a DNS name nor an address.
pub fn server_name(sni: Option<&str>, host: &str) -> Result<ServerName<'static>, String> {
    let name = sni.unwrap_or(host);
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("`{name}` is not a DNS name or address to verify"))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    crate::pem::roots(path).map_err(|why| format!("upstream_ca {}: {why}", path.display()))
}

fn system_roots() -> RootCertStore {
    let (roots, added) = crate::pem::system_roots();
    if added == 0 {
        tracing::warn!(
            "no system trust store: https upstreams without upstream_ca will fail verification"
        );
    }
    roots
}

/// What a failed handshake means, in the words an operator looks for.
#[must_use]
pub fn describe(e: &std::io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "the upstream closed the connection during the TLS handshake".into()
            }
            _ => format!("TLS handshake: {e}"),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".into()
            }
            CertificateError::UnknownIssuer => {
                "unknown issuer: the certificate is not signed by a trusted CA (set upstream_ca?)"
                    .into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("name mismatch: {c}")
            }
            CertificateError::Revoked => "certificate revoked".into(),
            CertificateError::BadSignature => {
                "bad signature: not signed by the trusted CA of that name (wrong upstream_ca?)"
                    .into()
            }
            other => format!("bad certificate: {other}"),
        },
        rustls::Error::AlertReceived(alert) => format!(
            "the upstream refused the handshake ({alert:?}; a client certificate it trusts may \
             be needed)"
        ),
        rustls::Error::InvalidMessage(_) => {
            "the upstream does not speak TLS here (plain HTTP on an https:// target?)".into()
        }
        other => format!("TLS handshake: {other}"),
    }
}
