//! `SIGHUP` and `POST /v1/reload`: re-read the config file and put in force what a running
//! daemon can take ([`crate::config::keys::KEYS`] says which keys those are), log every other
//! changed key as needing a restart, reopen the access log file (logrotate) and re-read the TLS
//! certificate and key. The routes are compiled anew (upstreams resolved, injected credentials
//! read again) with the key checks' rules for them, and reach the shards in one step with the
//! limits and error settings: each request is routed, checked and forwarded by one config, and
//! requests in flight finish on the one they began with. A config that does not load (every
//! check `run` makes, see [`super::RUN_CHECKS`]), or whose routes then fail to compile, changes
//! nothing but the log file and the certificate. Each reload is
//! written to the audit trail (`config.reload`), and its [`Outcome`] is what `POST /v1/reload`
//! answers.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::admin::{ApiError, ReloadHook};
use crate::auth::AuthRules;
use crate::config::keys::{self, OnReload};
use crate::config::{Config, LayerCheck};
use crate::control::ControlPlane;
use crate::obs::access_log::AccessLog;
use crate::proxy::ProxyHandle;
use crate::store::{Action, Actor};

/// What a reload needs: the file, the config running now, and what it reconfigures.
pub(super) struct Reloader {
    pub path: PathBuf,
    pub checks: &'static [LayerCheck],
    pub running: Arc<Config>,
    pub plane: Arc<ControlPlane>,
    pub access_log: Option<Arc<AccessLog>>,
}

/// What one reload did.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// The changed keys now in force.
    pub applied: Vec<&'static str>,
    /// The changed keys that keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
    /// Why the file was refused (each problem with its line); empty when it was taken.
    pub errors: Vec<String>,
    /// The TLS certificate: `None` when the proxy serves no TLS, else whether it was re-read.
    pub tls: Option<Result<(), String>>,
}

impl Outcome {
    /// The answer of `POST /v1/reload`: the body when the config was taken, else a 422
    /// `CONFIG_INVALID` naming every problem (the running config stays in force).
    fn answer(&self, path: &std::path::Path) -> Result<Value, ApiError> {
        let tls = match &self.tls {
            None => json!("not served"),
            Some(Ok(())) => json!("reloaded"),
            Some(Err(e)) => json!(format!("kept the running certificate: {e}")),
        };
        if self.errors.is_empty() {
            return Ok(json!({
                "reloaded": true,
                "config": path.display().to_string(),
                "applied": self.applied,
                "needs_restart": self.needs_restart,
                "tls": tls,
            }));
        }
        Err(ApiError::new(
            422,
            "CONFIG_INVALID",
            format!(
                "{} was not reloaded ({} problem(s)); the running config stays in force.",
                path.display(),
                self.errors.len()
            ),
        )
        .with_hint(self.errors.join("\n")))
    }
}

/// A `POST /v1/reload` waiting for the daemon's main loop to run it.
pub(super) struct ReloadAsk {
    by: Actor,
    reply: oneshot::Sender<Result<Value, ApiError>>,
}

/// The admin API's reload hook: hands each request to the main loop (through `asks`), which
/// runs reloads one at a time, `SIGHUP`'s among them.
pub(super) fn hook(asks: UnboundedSender<ReloadAsk>) -> ReloadHook {
    Arc::new(move |by| {
        let asks = asks.clone();
        Box::pin(async move {
            let gone = || {
                ApiError::new(503, "RELOAD_UNAVAILABLE", "The daemon is stopping.")
                    .with_hint("Reload the daemon that serves after it.")
            };
            let (reply, answer) = oneshot::channel();
            asks.send(ReloadAsk { by, reply }).map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        })
    })
}

/// Compiles `cfg`'s routes and the key checks' rules for them, and publishes both to the
/// shards with the other proxy settings in one step; on an error nothing changes.
fn put_routes_in_force(proxy: &ProxyHandle, cfg: &Config) -> Result<(), String> {
    let rules = AuthRules::from_config(cfg).map_err(|e| e.to_string())?;
    proxy
        .reconfigure(cfg, Some(Arc::new(rules)))
        .map_err(|e| e.to_string())
}

impl Reloader {
    /// `SIGHUP`: one reload, recorded as made by the signal.
    pub fn on_signal(&mut self, proxy: &ProxyHandle) {
        let _ = self.reload(proxy, &Actor::signal("SIGHUP"));
    }

    /// `POST /v1/reload`: one reload, answered.
    pub fn on_request(&mut self, proxy: &ProxyHandle, ask: ReloadAsk) {
        let answer = self.reload(proxy, &ask.by);
        let _ = ask.reply.send(answer);
    }

    /// One reload (see the module docs), recorded in the audit trail as made `by`.
    fn reload(&mut self, proxy: &ProxyHandle, by: &Actor) -> Result<Value, ApiError> {
        if let Some(log) = &self.access_log {
            log.reopen();
        }
        let mut outcome = Outcome::default();
        match Config::load_with(&self.path, self.checks) {
            Ok(new) => self.apply(proxy, &new, &mut outcome),
            Err(e) => {
                tracing::error!("config reload failed, the running config stays in force:\n{e}");
                outcome.errors = e.to_string().lines().map(str::to_owned).collect();
            }
        }
        outcome.tls = self.reload_tls(proxy);
        let answer = outcome.answer(&self.path);
        let object = self.path.display().to_string();
        self.plane
            .audited_change(by, Action::ConfigReload, &object, || answer)
    }

    fn apply(&mut self, proxy: &ProxyHandle, new: &Config, outcome: &mut Outcome) {
        let changed = keys::changed(&self.running, new);
        let (applied, restart): (Vec<&keys::Key>, Vec<&keys::Key>) = changed
            .iter()
            .copied()
            .partition(|k| k.on_reload == OnReload::Applied);
        let next = keys::running_with(&self.running, new);
        // The routes and the gate's rules for them first: what cannot be built (a secret file
        // gone since the checks read it) refuses the whole reload.
        if let Err(e) = put_routes_in_force(proxy, &next) {
            let e = format!("{}: {e}", self.path.display());
            tracing::error!("config reload failed, the running config stays in force:\n{e}");
            outcome.errors = vec![e];
            return;
        }
        for k in &restart {
            tracing::warn!(
                key = k.path,
                "config reload: {} changed and needs a restart; it keeps its running value until then",
                k.path
            );
        }
        for warning in new.warnings() {
            tracing::warn!("config: {warning}");
        }
        self.running = self.plane.reconfigure(next);
        outcome.applied = applied.iter().map(|k| k.path).collect();
        outcome.needs_restart = restart.iter().map(|k| k.path).collect();
        tracing::info!(
            applied = ?outcome.applied,
            needs_restart = ?outcome.needs_restart,
            "config reloaded from {}",
            self.path.display()
        );
    }

    fn reload_tls(&self, proxy: &ProxyHandle) -> Option<Result<(), String>> {
        let tls = self.running.tls.as_ref().filter(|_| proxy.serves_tls())?;
        let (cert, key) = (
            self.running.resolve(&tls.cert),
            self.running.resolve(&tls.key),
        );
        Some(match proxy.reload_tls_from(cert, key) {
            Ok(()) => {
                tracing::info!("TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!("TLS reload failed, keeping the old certificate: {e}");
                Err(e.to_string())
            }
        })
    }
}
