//! PEM files of certificates, and the trust roots TLS clients verify against: one reader for the
//! listener's certificate chain, PostgreSQL's `sslrootcert`, and an upstream's `upstream_ca` and
//! client certificate. Errors are the bare reason; each caller names its file and key.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Every certificate in the PEM file at `path` (at least one).
///
/// # Errors
/// The file cannot be read or parsed, or holds no certificate.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certs)
}

/// The certificates of the PEM file at `path` as trust roots.
///
/// # Errors
/// As [`certificates`], or a certificate is not a usable root.
pub fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certificates(path)? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

/// The system's trust store, and how many of its certificates were usable (0: none found).
#[must_use]
pub fn system_roots() -> (RootCertStore, usize) {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    (roots, added)
}
