//! TLS to PostgreSQL: parses `store.url` into a connection config and a rustls connector.
//!
//! Edge hosts reach a shared database across the network, so the connection is encrypted and
//! the server verified whenever the URL asks for it, the way libpq's URL parameters say:
//!
//! - `sslmode=disable`: plaintext.
//! - `sslmode=prefer` (the default): TLS when the server offers it, plaintext when it does not.
//! - `sslmode=require`: TLS or no connection.
//!
//! Whenever TLS is used the server's certificate chain **and host name** are verified (libpq's
//! `verify-full`), against the PEM file named by `sslrootcert=/path/ca.pem` when given, else
//! against the system's trust store. A server offering TLS with a certificate that does not
//! verify is an error, never a silent fallback. `sslrootcert` is taken out of the URL here
//! because tokio-postgres does not know it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

use super::PgError;

/// A parsed `store.url`: what to connect to and how to secure it.
#[derive(Clone)]
pub struct PgTarget {
    /// Host, port, user, database, options (`sslrootcert` removed).
    pub config: tokio_postgres::Config,
    /// The TLS connector (used unless `sslmode=disable` or the server declines TLS).
    pub tls: MakeRustlsConnect,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config's Debug redacts the password; the connector holds no secret.
        f.debug_struct("PgTarget")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Parses `url` (`postgres://…`) and builds its TLS connector.
///
/// # Errors
/// [`PgError::Url`] for a URL tokio-postgres refuses; [`PgError::Tls`] for an unreadable or
/// empty `sslrootcert` file. (No system trust store is not an error here: plaintext and
/// TLS-less servers still work, and a TLS server then fails verification with its reason.)
pub fn parse(url: &str) -> Result<PgTarget, PgError> {
    let (rest, root_file) = take_root_cert(url)?;
    let config: tokio_postgres::Config = rest.parse().map_err(PgError::Url)?;
    let roots = match root_file {
        Some(path) => roots_from_file(&path)?,
        // Plaintext only: the connector is never used, so the trust store is not read.
        None if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable => {
            rustls::RootCertStore::empty()
        }
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(PgTarget {
        config,
        tls: MakeRustlsConnect::new(client),
    })
}

/// Checks `url` the way [`parse`] would, without loading the system trust store (for config
/// validation: the URL parses and a named `sslrootcert` holds certificates).
///
/// # Errors
/// As [`parse`].
pub fn check(url: &str) -> Result<(), PgError> {
    let (rest, root_file) = take_root_cert(url)?;
    rest.parse::<tokio_postgres::Config>()
        .map_err(PgError::Url)?;
    if let Some(path) = root_file {
        roots_from_file(&path)?;
    }
    Ok(())
}

/// Splits `sslrootcert=…` out of the URL's query; returns the rest and the decoded path.
fn take_root_cert(url: &str) -> Result<(String, Option<PathBuf>), PgError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut kept = Vec::new();
    let mut root = None;
    for pair in query.split('&') {
        match pair.strip_prefix("sslrootcert=") {
            Some(raw) => {
                let path = crate::percent::decode_utf8(raw)
                    .ok_or_else(|| PgError::Tls("sslrootcert: bad percent-encoding".into()))?;
                if path.is_empty() {
                    return Err(PgError::Tls("sslrootcert is empty".into()));
                }
                root = Some(PathBuf::from(path));
            }
            None => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, root))
}

fn roots_from_file(path: &std::path::Path) -> Result<rustls::RootCertStore, PgError> {
    crate::pem::roots(path)
        .map_err(|why| PgError::Tls(format!("sslrootcert {}: {why}", path.display())))
}

fn system_roots() -> Result<rustls::RootCertStore, PgError> {
    let (roots, added) = crate::pem::system_roots();
    if added == 0 {
        // No trust store: only an explicit sslrootcert can verify a server. Plaintext and
        // servers without TLS still work; a TLS server will fail verification with a clear error.
        tracing::debug!("no system trust store for PostgreSQL TLS; set sslrootcert in store.url");
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_is_taken_out_and_the_rest_kept() {
        let (rest, root) =
            take_root_cert("postgres://u:p@db:5432/k?sslmode=require&sslrootcert=%2Fetc%2Fca.pem")
                .expect("parses");
        assert_eq!(rest, "postgres://u:p@db:5432/k?sslmode=require");
        assert_eq!(root, Some(PathBuf::from("/etc/ca.pem")));
        let (rest, root) = take_root_cert("postgres://db/k?sslrootcert=/ca.pem").expect("parses");
        assert_eq!(
            (rest.as_str(), root),
            ("postgres://db/k", Some("/ca.pem".into()))
        );
        let (rest, root) = take_root_cert("postgres://db/k").expect("parses");
        assert_eq!((rest.as_str(), root), ("postgres://db/k", None));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_it() {
        let e = parse("postgres://db/k?sslrootcert=/nonexistent/ca.pem").expect_err("no file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = parse(&format!("postgres://db/k?sslrootcert={}", empty.display()))
            .expect_err("no cert");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
}
