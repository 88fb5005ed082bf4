//! TLS for `listen.https`: rustls with the ring provider, TLS 1.2 and 1.3 only, ALPN `http/1.1`.
//! The certificate lives in an [`ArcSwap`] read lock-free at each handshake, so SIGHUP swaps it
//! without touching open connections. Each shard gets its own `ServerConfig` (own session cache).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `listen.https` is set but `[tls]` is not.
    #[error("listen.https needs a [tls] section with cert and key")]
    MissingSection,
    /// The certificate file is unreadable or holds no certificate.
    #[error("TLS certificate {}: {why}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The key file is unreadable, holds no key, or the key does not match the certificate.
    #[error("TLS key {}: {why}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The current certificate, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    /// Where the certificate and key were last read from (a reload may move them).
    paths: std::sync::Mutex<(PathBuf, PathBuf)>,
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// Loads the certificate chain and key.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault.
    pub fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<Self, TlsError> {
        let ck = load_pair(&cert_path, &key_path)?;
        Ok(Self {
            paths: std::sync::Mutex::new((cert_path, key_path)),
            current: ArcSwap::from_pointee(ck),
        })
    }

    /// Re-reads the files; on error the current certificate stays.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (cert, key) = self.paths().clone();
        self.reload_from(cert, key)
    }

    /// Reads the certificate and key from these files (the next [`Self::reload`] reads them
    /// too); on error the current certificate and files stay. Handshakes never wait for it.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault.
    pub fn reload_from(&self, cert_path: PathBuf, key_path: PathBuf) -> Result<(), TlsError> {
        let ck = load_pair(&cert_path, &key_path)?;
        self.current.store(Arc::new(ck));
        *self.paths() = (cert_path, key_path);
        Ok(())
    }

    fn paths(&self) -> std::sync::MutexGuard<'_, (PathBuf, PathBuf)> {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |why: String| TlsError::Cert {
        path: cert_path.to_path_buf(),
        why,
    };
    let key_err = |why: String| TlsError::Key {
        path: key_path.to_path_buf(),
        why,
    };
    let certs = crate::pem::certificates(cert_path).map_err(cert_err)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_err(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    // `from_der` also refuses a key that does not match the certificate.
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| key_err(e.to_string()))
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

/// A shard's TLS server config over the shared certificate store.
#[must_use]
pub fn server_config(store: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}
