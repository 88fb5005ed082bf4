//! `SIGHUP`: re-read the config file and put in force what a running daemon can take
//! ([`crate::config::keys::KEYS`] says which keys those are), log every other changed key as
//! needing a restart, reopen the access log file (logrotate) and re-read the TLS certificate
//! and key. A config that does not load changes nothing but the log file and the certificate.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::keys::{self, OnReload};
use crate::config::{Config, LayerCheck};
use crate::control::ControlPlane;
use crate::obs::access_log::AccessLog;
use crate::proxy::ProxyHandle;

/// What a reload needs: the file, the config running now, and what it reconfigures.
pub(super) struct Reloader {
    pub path: PathBuf,
    pub checks: &'static [LayerCheck],
    pub running: Arc<Config>,
    pub plane: Arc<ControlPlane>,
    pub access_log: Option<Arc<AccessLog>>,
}

impl Reloader {
    /// One reload (see the module docs).
    pub fn reload(&mut self, proxy: &ProxyHandle) {
        if let Some(log) = &self.access_log {
            log.reopen();
        }
        match Config::load_with(&self.path, self.checks) {
            Ok(new) => self.apply(proxy, &new),
            Err(e) => {
                tracing::error!("config reload failed, the running config stays in force:\n{e}");
            }
        }
        self.reload_tls(proxy);
    }

    fn apply(&mut self, proxy: &ProxyHandle, new: &Config) {
        let changed = keys::changed(&self.running, new);
        let (applied, restart): (Vec<&keys::Key>, Vec<&keys::Key>) = changed
            .iter()
            .copied()
            .partition(|k| k.on_reload == OnReload::Applied);
        for k in &restart {
            tracing::warn!(
                key = k.path,
                "config reload: {} changed and needs a restart; it keeps its running value until then",
                k.path
            );
        }
        let next = keys::running_with(&self.running, new);
        proxy.retune(&next);
        self.running = self.plane.reconfigure(next);
        self.reload_tls(proxy);
        let applied: Vec<&str> = applied.iter().map(|k| k.path).collect();
        let restart: Vec<&str> = restart.iter().map(|k| k.path).collect();
        tracing::info!(
            applied = ?applied,
            needs_restart = ?restart,
            "config reloaded from {}",
            self.path.display()
        );
    }

    fn reload_tls(&self, proxy: &ProxyHandle) {
        let Some(tls) = self.running.tls.as_ref().filter(|_| proxy.serves_tls()) else {
            return;
        };
        let (cert, key) = (
            self.running.resolve(&tls.cert),
            self.running.resolve(&tls.key),
        );
        match proxy.reload_tls_from(cert, key) {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(e) => tracing::error!("TLS reload failed, keeping the old certificate: {e}"),
        }
    }
}
