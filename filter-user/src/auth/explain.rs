//! The explain engine: every check of SPEC §5 for one key, in order, with pass/fail, the
//! reason and the fix, then the verdict of the real chain ([`decide`]). It runs the same check
//! functions as the proxy against a one-key cache loaded from the store, and never holds the
//! key. `edgefilter explain` prints it; the admin API's `POST /v1/explain` answers it as JSON.

use std::net::IpAddr;
use std::sync::Arc;

use super::cache::{CacheUpdate, KeyEntry, ShardCache};
use super::decide::{
    self, Decision, Now, Refusal, check_address, check_approved, check_environment, check_expiry,
    check_format, check_not_before, check_revoked, check_scopes, check_user, key_hash,
};
use super::deny::{RenderCtx, fix, hint, message};
use super::extract::Extracted;
use super::loader::{KeyLoader, Refused};
use super::rules::{AuthRules, Place, RouteRules};
use crate::codes::ErrorCode;
use crate::config::Config;
use crate::store::audit::clean;
use crate::store::{self, KeyHash, KeyRef, KeyStore};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// Passed.
    Pass,
    /// Failed with this code; `first` marks the failure that decides the answer.
    Fail {
        /// The answer code.
        code: ErrorCode,
        /// Whether this is the first failure (the one the proxy answers with).
        first: bool,
    },
    /// Not run (an earlier check made it meaningless, or an input is missing).
    Skip,
}

/// One line of an explanation.
#[derive(Debug, Clone)]
pub struct Check {
    /// The check's name (`format`, `checksum`, `expiry`, ...).
    pub name: &'static str,
    /// Its outcome.
    pub mark: Mark,
    /// Why it passed, or the hint when it failed.
    pub detail: String,
    /// The command that fixes a failure.
    pub fix: Option<String>,
}

/// Every check for one key, in SPEC §5 order, and the verdict of the real chain.
/// Never holds the key itself.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// What was checked: method, path, address, time, environment, route.
    pub header: String,
    /// The checks in order.
    pub checks: Vec<Check>,
    /// `Ok(key id)` when the request would be allowed, else the answer code.
    pub verdict: Result<String, ErrorCode>,
    /// The verdict line for people.
    pub verdict_line: String,
    /// The key's public id, when the store knows the key.
    pub key_id: Option<String>,
}

impl Explanation {
    /// The admin API's JSON (`Explain` in docs/openapi.yaml).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let checks: Vec<serde_json::Value> = self
            .checks
            .iter()
            .filter(|c| c.mark != Mark::Skip)
            .map(|c| {
                serde_json::json!({
                    "check": c.name,
                    "passed": c.mark == Mark::Pass,
                    "detail": c.detail,
                    "fix": c.fix,
                })
            })
            .collect();
        serde_json::json!({
            "decision": if self.verdict.is_ok() { "allow" } else { "deny" },
            "code": self.verdict.as_ref().err().map(|c| c.as_str()),
            "key_id": self.key_id,
            "checks": checks,
        })
    }
}

struct Report<'r> {
    ctx: RenderCtx<'r>,
    first_failure: bool,
    checks: Vec<Check>,
}

impl Report<'_> {
    fn pass(&mut self, name: &'static str, why: &str) {
        self.checks.push(Check {
            name,
            mark: Mark::Pass,
            detail: why.to_owned(),
            fix: None,
        });
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.checks.push(Check {
            name,
            mark: Mark::Skip,
            detail: why.to_owned(),
            fix: None,
        });
    }

    /// The key is stored but its row breaks a rule, so the proxy does not serve it
    /// (`UNKNOWN_KEY`): says which rule, by the key's id.
    fn refused_row(&mut self, key_id: &str, why: Refused) {
        let first = !self.first_failure;
        self.first_failure = true;
        let id = clean(key_id);
        self.checks.push(Check {
            name: "known",
            mark: Mark::Fail {
                code: ErrorCode::UnknownKey,
                first,
            },
            detail: format!(
                "{id} is in the store but is not served: {why} (see docs/keys.md#names)"
            ),
            fix: (why != Refused::KeyId).then(|| format!("edgefilter keys revoke {id}")),
        });
    }

    fn outcome(&mut self, name: &'static str, r: Result<(), Refusal<'_>>, ok: &str) {
        match r {
            Ok(()) => self.pass(name, ok),
            Err(refusal) => {
                let first = !self.first_failure;
                self.first_failure = true;
                self.checks.push(Check {
                    name,
                    mark: Mark::Fail {
                        code: refusal.code(),
                        first,
                    },
                    detail: hint(&refusal, &self.ctx),
                    fix: fix(&refusal, &self.ctx),
                });
            }
        }
    }
}

/// Why an explanation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The routes' key rules are invalid.
    #[error(transparent)]
    Rules(#[from] super::rules::RulesError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Runs every check for `key` as a `method` request to `path` from `ip`, with the same check
/// functions as the proxy, then the real chain for the verdict. Used by the CLI and the admin API.
///
/// # Errors
/// [`ExplainError`] when the routes are invalid or the store fails.
pub fn explain(
    cfg: &Config,
    st: &dyn KeyStore,
    key_text: &str,
    ip: IpAddr,
    method: &str,
    path: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let rules = AuthRules::from_config(cfg)?;
    let default_route = RouteRules {
        prefix: "(any)".into(),
        accepted: Box::new([Place::Bearer, Place::XApiKey]),
        scopes: Box::new([]),
    };
    let route = match path {
        Some(p) => match rules.route_for_path(p) {
            Some(i) => &rules.routes[i],
            None => {
                return Ok(Explanation {
                    header: format!("{method} {p}: NO_ROUTE 404 (no [[route]] prefix matches)"),
                    checks: Vec::new(),
                    verdict: Err(ErrorCode::NoRoute),
                    verdict_line: String::new(),
                    key_id: None,
                });
            }
        },
        None => &default_route,
    };
    let now = Now::system();
    let mut rep = Report {
        ctx: RenderCtx {
            route,
            edge_env: &rules.environment,
            peer: ip,
        },
        first_failure: false,
        checks: Vec::new(),
    };
    let header = format!(
        "{} {} from {} at {} (edge environment `{}`, route {})",
        method,
        path.unwrap_or("(no --path)"),
        ip,
        store::timefmt::rfc3339(now.secs),
        rules.environment,
        route.prefix
    );
    rep.pass(
        "place",
        &format!("clients send the key as {}", route.accepted_list()),
    );
    let parsed = check_format(key_text);
    match parsed {
        Err(Refusal::Checksum) => {
            rep.pass("format", "well formed");
            rep.outcome("checksum", Err(Refusal::Checksum), "");
        }
        Err(r) => rep.outcome("format", Err(r), ""),
        Ok(_) => {
            rep.pass("format", "well formed");
            rep.pass("checksum", "matches");
        }
    }
    let Ok(key) = parsed else {
        rep.skip("...", "later checks need a well-formed key");
        return Ok(verdict(rep, header, None, None, key_text, ip, now));
    };
    rep.outcome(
        "environment",
        check_environment(&key, &rules.environment),
        &format!("`{}`", key.env()),
    );
    let Some(view) = st.find_key(KeyRef::Hash(KeyHash(key_hash(&key))))? else {
        rep.outcome("known", Err(Refusal::Unknown), "");
        rep.skip("...", "later checks need a key the store knows");
        return Ok(verdict(rep, header, None, None, key_text, ip, now));
    };
    let mut loader = KeyLoader::default();
    let entry: Arc<KeyEntry> = match loader.entry_for(&view) {
        Ok(e) => e,
        Err(why) => {
            rep.refused_row(&view.key.id, why);
            rep.skip("...", "later checks need a key the proxy serves");
            let id = Some(clean(&view.key.id));
            return Ok(verdict(rep, header, None, id, key_text, ip, now));
        }
    };
    let mut cache = ShardCache::new(std::slice::from_ref(&entry), &[]);
    cache.apply(&CacheUpdate::User {
        user_id: view.user.id,
        status: view.user.status,
    });
    let e = &*entry;
    rep.pass(
        "known",
        &format!(
            "{} of user {} (tenant {})",
            view.key.id, view.user.name, view.user.tenant
        ),
    );
    let grace = view.key.grace_until.map_or_else(
        || "not revoked".to_owned(),
        |g| {
            format!(
                "rotated to {}; this key works until {}",
                view.key.rotated_to.as_deref().unwrap_or("?"),
                store::timefmt::rfc3339(g)
            )
        },
    );
    rep.outcome("revoked", check_revoked(e, now), &grace);
    rep.outcome("not before", check_not_before(e, now), "valid now");
    rep.outcome("expiry", check_expiry(e, now), "not expired");
    rep.outcome("user", check_user(&cache, e), "active");
    rep.outcome("approval", check_approved(e), "approved");
    rep.outcome("address", check_address(e, ip), "allowed");
    if path.is_some() {
        rep.outcome(
            "scopes",
            check_scopes(e, route),
            "has every scope the route needs",
        );
    } else {
        rep.skip(
            "scopes",
            "not checked: pass --path to check a route's scopes",
        );
    }
    match e.owner().limit() {
        Some(l) => rep.pass(
            "rate",
            &format!(
                "{}/s, burst {} (the live budget is the daemon's)",
                l.per_sec(),
                l.burst()
            ),
        ),
        None => rep.pass("rate", "no limit"),
    }
    let id = Some(view.key.id.clone());
    Ok(verdict(rep, header, Some(&cache), id, key_text, ip, now))
}

/// Runs the real chain for the verdict line.
fn verdict(
    rep: Report<'_>,
    header: String,
    cache: Option<&ShardCache>,
    key_id: Option<String>,
    key: &str,
    ip: IpAddr,
    now: Now,
) -> Explanation {
    let empty = ShardCache::new(&[], &[]);
    let cache = cache.unwrap_or(&empty);
    let found = Extracted::Key {
        raw: key,
        place: Place::Bearer,
    };
    let (verdict, verdict_line) =
        match decide::decide(cache, rep.ctx.route, rep.ctx.edge_env, found, ip, now) {
            Decision::Allow(e) => (
                Ok(e.key_id().to_string()),
                format!(
                    "verdict: ALLOW as {} (tenant {}, user {})",
                    e.key_id(),
                    e.owner().tenant(),
                    e.owner().user()
                ),
            ),
            Decision::Deny(r) => (
                Err(r.code()),
                format!(
                    "verdict: DENY {} {}: {}",
                    r.code(),
                    r.code().status(),
                    message(&r)
                ),
            ),
        };
    Explanation {
        header,
        checks: rep.checks,
        verdict,
        verdict_line,
        key_id,
    }
}
