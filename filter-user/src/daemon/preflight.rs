//! What `edgefilter run` needs of a config beyond its shape, checked before anything starts: the
//! routes compiled exactly as the proxy compiles them (every `${ENV}` set, every `@/path`
//! readable, the injected header sendable, the upstream resolving), at least one route, the TLS
//! certificate and key read and matched as the proxy reads them. Each problem is reported among the others on the line of the value it names
//! ([`crate::config::LayerCheck`]), so `check-config`, `run` and a reload (`SIGHUP`,
//! `POST /v1/reload`) refuse the same configs with the same messages.
//!
//! These read the environment and files of the process that runs them: `check-config` answers
//! for a daemon started with its environment. The other commands (`keys`, `users`, ...) do not
//! run them, so an operator's shell needs no upstream secret. What only the moment of starting
//! can tell (an address in use, a directory the service manager creates, such as the access
//! log's under systemd's `LogsDirectory=`) is left to `run`.

use std::path::Path;

use crate::config::upstream::Upstreams;
use crate::config::{Config, Route, ValueProblem};
use crate::proxy::route::{RouteError, RouteTable};
use crate::proxy::tls::{CertStore, TlsError};

/// An upstream the route table accepts without a lookup, put in place of a route's own to
/// check its injected header when the upstream stopped the first check.
const PROBE_UPSTREAM: &str = "http://127.0.0.1:9";

/// Every route compiles as the proxy compiles it, and there is at least one.
#[must_use]
pub fn routes(cfg: &Config) -> Vec<ValueProblem> {
    if cfg.routes.is_empty() {
        return vec![ValueProblem::at(
            &["route"],
            "no [[route]]: the proxy would answer every request NO_ROUTE; add one with `prefix` \
             and `upstream`",
        )];
    }
    let mut one = cfg.clone();
    let mut build = |r: &Route| {
        one.routes = vec![r.clone()];
        RouteTable::build(&one).err()
    };
    let mut out = Vec::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let Some(e) = build(r) else { continue };
        let upstream_failed = matches!(e, RouteError::Upstream { .. });
        out.push(ValueProblem::in_route(i, route_field(r, &e), e.to_string()));
        // The upstream is checked first: check the injected credential on its own as well.
        if upstream_failed && (r.inject_header.is_some() || r.credentials.is_some()) {
            let probe = Route {
                upstream: Upstreams::One(PROBE_UPSTREAM.to_owned()),
                upstream_ca: None,
                upstream_sni: None,
                upstream_client_cert: None,
                upstream_client_key: None,
                ..r.clone()
            };
            if let Some(e) = build(&probe).filter(|e| !matches!(e, RouteError::Upstream { .. })) {
                out.push(ValueProblem::in_route(i, route_field(r, &e), e.to_string()));
            }
        }
    }
    out
}

/// The `[[route]]` field a route error is about.
fn route_field(r: &Route, e: &RouteError) -> &'static [&'static str] {
    match e {
        RouteError::Upstream { .. } => &["route", "upstream"],
        RouteError::BadPrefix { .. } => &["route", "prefix"],
        RouteError::MissingEnv { .. }
        | RouteError::SecretFile { .. }
        | RouteError::BadHeader { .. }
            if r.inject_header.is_none() =>
        {
            &["route", "credentials"]
        }
        RouteError::MissingEnv { .. }
        | RouteError::SecretFile { .. }
        | RouteError::BadHeader { .. } => &["route", "inject_header"],
    }
}

/// With `listen.https`, the certificate chain and key load and match as the proxy loads them.
#[must_use]
pub fn tls(cfg: &Config) -> Vec<ValueProblem> {
    let Some(t) = cfg.tls.as_ref().filter(|_| !cfg.listen.https.is_empty()) else {
        return Vec::new();
    };
    let (cert, key) = (cfg.resolve(&t.cert), cfg.resolve(&t.key));
    match CertStore::load(cert, key.clone()) {
        Ok(_) => Vec::new(),
        Err(e @ TlsError::Cert { .. }) => {
            let mut out = vec![ValueProblem::at(&["tls", "cert"], e.to_string())];
            // The certificate stopped the check before the key was read: read the key alone.
            if let Err(why) = read_key(&key) {
                out.push(ValueProblem::at(
                    &["tls", "key"],
                    format!("TLS key {}: {why}", key.display()),
                ));
            }
            out
        }
        Err(e @ TlsError::Key { .. }) => vec![ValueProblem::at(&["tls", "key"], e.to_string())],
        Err(e @ TlsError::MissingSection) => {
            vec![ValueProblem::at(&["listen", "https"], e.to_string())]
        }
    }
}

fn read_key(path: &Path) -> Result<(), String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path)
        .map(drop)
        .map_err(|e| e.to_string())
}
