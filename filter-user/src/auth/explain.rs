//! The explain engine: every check of SPEC §5 for one key, in order, with pass/fail, the
//! reason and the fix, then the verdict of the real chain ([`decide`]). It runs the same check
//! functions as the proxy against a one-key cache loaded from the store, and never holds the
//! key. `edgefilter explain` prints it (as text or `--json`); the admin API's `POST /v1/explain`
//! answers the same JSON.
//!
//! Before the key, the request itself goes through what the proxy does before it reads a key:
//! the request line through the proxy's HTTP parser (a method that is not an HTTP token is
//! `BAD_REQUEST` `head_syntax`), the path through the proxy's own path rules
//! (`path`: traversal, encoded NUL, … are `BAD_REQUEST` with the rule), and the
//! route chosen as the proxy chooses it (on the path as the upstream reads it). Routes have no
//! method rules, so the method changes nothing else.
//!
//! Each fix keeps the key's policy: a key is renewed with `keys rotate` (same tenant, user,
//! scopes, networks, limit and lifetime), or, where rotation cannot help, replaced with
//! `keys create --like ID` plus only what must change. A fix names the key by its id, never by
//! the key.

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
use crate::codes::{ErrorCode, Rule};
use crate::config::Config;
use crate::store::audit::clean;
use crate::store::{self, KeyHash, KeyRef, KeyStatus, KeyStore, KeyView, Lease};

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
    /// What fixes a failure, for people (a command, or what to do).
    pub fix: Option<String>,
    /// The fix as one runnable command (shell-quoted), when there is one without placeholders.
    pub command: Option<String>,
    /// The rule a `BAD_REQUEST` broke.
    pub rule: Option<Rule>,
}

/// What was explained: the request as the proxy would see it.
#[derive(Debug, Clone)]
pub struct Asked {
    /// Request method.
    pub method: String,
    /// Request target (path and query), when given.
    pub path: Option<String>,
    /// Client address.
    pub ip: IpAddr,
    /// When (unix seconds).
    pub at: i64,
    /// The environment this edge serves.
    pub environment: String,
    /// The route's prefix, when the path selects one.
    pub route: Option<String>,
}

/// Every check for one key, in SPEC §5 order, and the verdict of the real chain.
/// Never holds the key itself.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// What was checked: method, path, address, time, environment, route.
    pub header: String,
    /// The request explained.
    pub asked: Asked,
    /// The checks in order.
    pub checks: Vec<Check>,
    /// `Ok(key id)` when the request would be allowed, else the answer code.
    pub verdict: Result<String, ErrorCode>,
    /// The rule broken, when the answer is `BAD_REQUEST`.
    pub rule: Option<Rule>,
    /// The verdict line for people.
    pub verdict_line: String,
    /// The key's public id, when the store knows the key.
    pub key_id: Option<String>,
}

impl Explanation {
    /// The JSON of `edgefilter explain --json` and the admin API (`Explain` in
    /// docs/openapi.yaml).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let checks: Vec<serde_json::Value> = self
            .checks
            .iter()
            .map(|c| {
                let (result, code, answer) = match &c.mark {
                    Mark::Pass => ("pass", None, false),
                    Mark::Skip => ("skip", None, false),
                    Mark::Fail { code, first } => ("fail", Some(*code), *first),
                };
                serde_json::json!({
                    "check": c.name,
                    "result": result,
                    "passed": c.mark == Mark::Pass,
                    "code": code.map(ErrorCode::as_str),
                    "status": code.map(ErrorCode::status),
                    "answer": answer,
                    "rule": c.rule.map(Rule::as_str),
                    "detail": c.detail,
                    "fix": c.fix,
                    "command": c.command,
                })
            })
            .collect();
        let code = self.verdict.as_ref().err().copied();
        let a = &self.asked;
        serde_json::json!({
            "decision": if self.verdict.is_ok() { "allow" } else { "deny" },
            "code": code.map(ErrorCode::as_str),
            "status": code.map_or(200, ErrorCode::status),
            "rule": self.rule.map(Rule::as_str),
            "key_id": self.key_id,
            "request": {
                "method": clean(&a.method),
                "path": a.path.as_deref().map(clean),
                "ip": a.ip.to_string(),
                "at": store::timefmt::rfc3339(a.at),
                "environment": a.environment,
                "route": a.route,
            },
            "verdict": self.verdict_line,
            "checks": checks,
        })
    }
}

/// A fix: what to do, and the one command that does it (when it has no placeholder).
struct Fix {
    text: String,
    command: Option<String>,
}

impl Fix {
    /// A fix that is a runnable command.
    fn run(command: String) -> Self {
        Self {
            text: command.clone(),
            command: Some(command),
        }
    }

    /// A runnable command with a note after it.
    fn run_noted(command: String, note: &str) -> Self {
        Self {
            text: format!("{command} ({note})"),
            command: Some(command),
        }
    }

    /// Something to do that is no single command.
    fn say(text: String) -> Self {
        Self {
            text,
            command: None,
        }
    }
}

/// A shell command built one argument at a time, each quoted only when the shell would read it
/// otherwise.
struct Cmd(String);

impl Cmd {
    fn new(words: &str) -> Self {
        Self(format!("edgefilter {words}"))
    }

    fn arg(mut self, a: &str) -> Self {
        self.0.push(' ');
        let plain = !a.is_empty()
            && a.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'.' | b'_' | b'@' | b'+' | b'-' | b':' | b'/' | b'=' | b',' | b'%'
                    )
            });
        if plain {
            self.0.push_str(a);
        } else {
            self.0.push('\'');
            self.0.push_str(&a.replace('\'', r"'\''"));
            self.0.push('\'');
        }
        self
    }

    fn opt(self, flag: &str, value: &str) -> Self {
        self.arg(flag).arg(value)
    }

    fn done(self) -> String {
        self.0
    }
}

/// A duration `parse_duration` reads back, in the largest whole unit.
fn duration_text(secs: i64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// `keys create --like ID` for `v`, with `--expires` for its lifetime when it had one: a new key
/// with the same tenant, user, environment, scopes, networks, limit and lifetime.
fn like(v: &KeyView) -> Cmd {
    let k = &v.key;
    let cmd = Cmd::new("keys create").opt("--like", &k.id);
    match k.expires_at.map(|e| e - k.created_at) {
        Some(life) if life > 0 => cmd.opt("--expires", &duration_text(life)),
        _ => cmd,
    }
}

/// How to get a working key with `v`'s policy when `v` itself cannot work again (expired,
/// revoked): rotate it, or use what replaced it, or create one like it.
fn renew(v: &KeyView) -> Fix {
    let k = &v.key;
    if k.status == KeyStatus::Revoked {
        return Fix::run_noted(
            like(v).done(),
            "a revoked key cannot be rotated; this copies its tenant, user, scopes, networks and limit",
        );
    }
    if let Some(to) = &k.rotated_to {
        let to = clean(to);
        return Fix::say(format!(
            "use {to}, which replaced it (`edgefilter keys show {to}`); if that key is lost too: {}",
            like(v).done()
        ));
    }
    if k.expires_at.is_some_and(|e| e <= k.created_at) {
        return Fix::say(format!(
            "{} --expires DURATION (it expired as it was made, so a rotation would too: choose a lifetime)",
            Cmd::new("keys create").opt("--like", &k.id).done()
        ));
    }
    Fix::run(Cmd::new("keys rotate").arg(&k.id).done())
}

/// The fix for `r` that keeps the key's policy, when the store knows the key (`view`);
/// otherwise the generic one.
fn policy_fix(r: &Refusal<'_>, view: Option<&KeyView>, ctx: &RenderCtx<'_>) -> Option<Fix> {
    let Some(v) = view else {
        return Some(match r {
            Refusal::WrongEnvironment { .. } => Fix::say(format!(
                "ask for a `{env}` key: edgefilter keys create --env {env} --tenant TENANT --user USER",
                env = ctx.edge_env
            )),
            Refusal::Unknown => Fix::say(
                "copy the key again, or ask the tenant admin for a new one: edgefilter keys create --tenant TENANT --user USER"
                    .to_owned(),
            ),
            _ => Fix::say(fix(r, ctx)?),
        });
    };
    let id = clean(&v.key.id);
    Some(match r {
        Refusal::WrongEnvironment { .. } => Fix::run_noted(
            like(v).opt("--env", ctx.edge_env).done(),
            &format!(
                "a key of this edge's environment with {id}'s tenant, user, scopes, networks and limit"
            ),
        ),
        Refusal::Revoked(_) | Refusal::Expired(_) => renew(v),
        Refusal::UserSuspended(_) => Fix::run(Cmd::new("users activate").arg(&v.user.name).done()),
        Refusal::UserDeleted(_) => Fix::say(format!(
            "{} --user NEW_USER (deletion is final: a key for another user of tenant {}, with {id}'s scopes, networks and limit)",
            like(v).done(),
            clean(&v.user.tenant)
        )),
        Refusal::Pending(_) => Fix::run(Cmd::new("keys approve").arg(&v.key.id).done()),
        Refusal::IpNotAllowed(_) => {
            let seen = ipnet::IpNet::from(ctx.peer.to_canonical());
            let mut cmd = like(v);
            for net in &v.key.allow_cidrs {
                cmd = cmd.opt("--allow-cidr", &net.to_string());
            }
            let nets: Vec<String> = v.key.allow_cidrs.iter().map(ToString::to_string).collect();
            let cmd = cmd.opt("--allow-cidr", &seen.to_string()).done();
            Fix {
                text: format!(
                    "call from {}, or create a key like {id} that also allows {}: {cmd} (then revoke {id})",
                    nets.join(", "),
                    ctx.peer.to_canonical()
                ),
                command: Some(cmd),
            }
        }
        Refusal::ScopeMissing { scope, .. } => {
            let mut cmd = like(v);
            for s in &v.key.scopes {
                cmd = cmd.opt("--scope", s);
            }
            let cmd = cmd.opt("--scope", scope).done();
            Fix {
                text: format!(
                    "{cmd} (a key's scopes cannot be changed: this creates one like {id} with `{}` added; then revoke {id})",
                    clean(scope)
                ),
                command: Some(cmd),
            }
        }
        _ => Fix::say(fix(r, ctx)?),
    })
}

struct Report<'r> {
    ctx: RenderCtx<'r>,
    /// The stored key, once found: the fixes keep its policy.
    view: Option<KeyView>,
    first_failure: bool,
    checks: Vec<Check>,
}

/// A check with no fix and no rule.
fn plain(name: &'static str, mark: Mark, detail: String) -> Check {
    Check {
        name,
        mark,
        detail,
        fix: None,
        command: None,
        rule: None,
    }
}

impl Report<'_> {
    fn pass(&mut self, name: &'static str, why: &str) {
        self.checks.push(plain(name, Mark::Pass, why.to_owned()));
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.checks.push(plain(name, Mark::Skip, why.to_owned()));
    }

    fn mark_first(&mut self) -> bool {
        let first = !self.first_failure;
        self.first_failure = true;
        first
    }

    /// The key is stored but its row breaks a rule, so the proxy does not serve it
    /// (`UNKNOWN_KEY`): says which rule, by the key's id.
    fn refused_row(&mut self, key_id: &str, why: Refused) {
        let first = self.mark_first();
        let id = clean(key_id);
        let command = (why != Refused::KeyId).then(|| format!("edgefilter keys revoke {id}"));
        self.checks.push(Check {
            name: "known",
            mark: Mark::Fail {
                code: ErrorCode::UnknownKey,
                first,
            },
            detail: format!(
                "{id} is in the store but is not served: {why} (see docs/keys.md#names)"
            ),
            fix: command.clone(),
            command,
            rule: None,
        });
    }

    fn outcome(&mut self, name: &'static str, r: Result<(), Refusal<'_>>, ok: &str) {
        match r {
            Ok(()) => self.pass(name, ok),
            Err(refusal) => {
                let first = self.mark_first();
                let fix = policy_fix(&refusal, self.view.as_ref(), &self.ctx);
                self.checks.push(Check {
                    name,
                    mark: Mark::Fail {
                        code: refusal.code(),
                        first,
                    },
                    detail: hint(&refusal, &self.ctx),
                    command: fix.as_ref().and_then(|f| f.command.clone()),
                    fix: fix.map(|f| f.text),
                    rule: None,
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

/// Whether the proxy's HTTP parser reads `method target` as exactly that request line.
fn parses(method: &str, target: &str) -> bool {
    let head = format!("{method} {target} HTTP/1.1\r\nHost: edge\r\n\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 4];
    let mut req = httparse::Request::new(&mut headers);
    matches!(
        req.parse(head.as_bytes()),
        Ok(httparse::Status::Complete(_))
    ) && req.method == Some(method)
        && req.path == Some(target)
}

/// The route the proxy takes for `path` (which passed [`crate::path::check`]): the
/// longest prefix, both read as the upstream reads them (decoded, `;parameters` dropped); among
/// equally long ones the first configured, as the proxy's route table does.
fn proxy_route(rules: &AuthRules, path: &str) -> Option<usize> {
    use crate::path::upstream_reading;
    let mut best: Option<(usize, usize)> = None;
    for (i, r) in rules.routes.iter().enumerate() {
        let prefix: Vec<u8> = upstream_reading(&r.prefix).collect();
        let mut read = upstream_reading(path);
        let hit = prefix.iter().all(|&p| read.next() == Some(p));
        if hit && best.is_none_or(|(_, len)| prefix.len() > len) {
            best = Some((i, prefix.len()));
        }
    }
    best.map(|(i, _)| i)
}

/// What the proxy does before it reads the key: the request line, the path rules, the route.
/// The route's index, or the early answer (`BAD_REQUEST` with its rule, or `NO_ROUTE`) as the
/// failed check; `None` without a path.
fn request_checks(
    rules: &AuthRules,
    method: &str,
    target: Option<&str>,
    checks: &mut Vec<Check>,
) -> Result<Option<usize>, (ErrorCode, Option<Rule>)> {
    let bad = |name: &'static str, rule: Rule, detail: String| Check {
        name,
        mark: Mark::Fail {
            code: ErrorCode::BadRequest,
            first: true,
        },
        // The detail is the rule's hint, which says what to send instead.
        detail,
        fix: None,
        command: None,
        rule: Some(rule),
    };
    if !parses(method, "/") {
        checks.push(bad(
            "method",
            Rule::HeadSyntax,
            format!(
                "`{}` is not an HTTP method token: {}",
                clean(method),
                Rule::HeadSyntax.hint()
            ),
        ));
        return Err((ErrorCode::BadRequest, Some(Rule::HeadSyntax)));
    }
    checks.push(plain(
        "method",
        Mark::Pass,
        format!(
            "`{}`; routes have no method rules, so every method takes the same checks",
            clean(method)
        ),
    ));
    let Some(target) = target else {
        checks.push(plain(
            "path",
            Mark::Skip,
            "not checked: pass --path to check the path and choose the route".into(),
        ));
        return Ok(None);
    };
    let shown = clean(target);
    if !parses(method, target) {
        checks.push(bad(
            "path",
            Rule::HeadSyntax,
            format!(
                "`{shown}` is not a request target: {}",
                Rule::HeadSyntax.hint()
            ),
        ));
        return Err((ErrorCode::BadRequest, Some(Rule::HeadSyntax)));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if let Err(rule) = crate::path::check(path, query) {
        checks.push(bad(
            "path",
            rule,
            format!("`{shown}` breaks {}: {}", rule.as_str(), rule.hint()),
        ));
        return Err((ErrorCode::BadRequest, Some(rule)));
    }
    checks.push(plain(
        "path",
        Mark::Pass,
        "origin-form; an upstream reads the same segments the route is chosen on".into(),
    ));
    let Some(i) = proxy_route(rules, path) else {
        checks.push(Check {
            name: "route",
            mark: Mark::Fail {
                code: ErrorCode::NoRoute,
                first: true,
            },
            detail: format!(
                "no [[route]] prefix matches `{}` (read as the upstream reads it: decoded, `;parameters` left out)",
                clean(path)
            ),
            fix: Some(format!(
                "use a path under a configured [[route]] prefix: {}",
                rules
                    .routes
                    .iter()
                    .map(|r| &*r.prefix)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            command: None,
            rule: None,
        });
        return Err((ErrorCode::NoRoute, None));
    };
    let r = &rules.routes[i];
    let needs = if r.scopes.is_empty() {
        "no scopes".to_owned()
    } else {
        format!("scopes {}", r.scopes.join(", "))
    };
    checks.push(plain(
        "route",
        Mark::Pass,
        format!("{} (needs {needs})", r.prefix),
    ));
    Ok(Some(i))
}

/// Runs every check for `key` as a `method` request to `path` (a request target: path and
/// optional query) from `ip`, with the same check functions as the proxy, then the real chain
/// for the verdict. Used by the CLI and the admin API.
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
    explain_held(cfg, st, key_text, ip, method, path, &|_| 0)
}

/// [`explain`] in a daemon: `held` tells the credits of a key (by id) the daemon holds unspent
/// beyond the store's.
///
/// # Errors
/// [`ExplainError`] when the routes are invalid or the store fails.
pub fn explain_held(
    cfg: &Config,
    st: &dyn KeyStore,
    key_text: &str,
    ip: IpAddr,
    method: &str,
    path: Option<&str>,
    held: &dyn Fn(&str) -> u64,
) -> Result<Explanation, ExplainError> {
    let rules = AuthRules::from_config(cfg)?;
    let default_route = RouteRules {
        prefix: "(any)".into(),
        accepted: Box::new([Place::Bearer, Place::XApiKey]),
        scopes: Box::new([]),
        cost: 1,
    };
    let now = Now::system();
    let mut asked = Asked {
        method: method.to_owned(),
        path: path.map(str::to_owned),
        ip,
        at: now.secs,
        environment: rules.environment.to_string(),
        route: None,
    };
    let header = |route: &str| {
        format!(
            "{} {} from {} at {} (edge environment `{}`, route {})",
            clean(method),
            path.map_or_else(|| "(no --path)".to_owned(), clean),
            ip,
            store::timefmt::rfc3339(now.secs),
            rules.environment,
            route
        )
    };
    let mut checks = Vec::new();
    let route = match request_checks(&rules, method, path, &mut checks) {
        Ok(Some(i)) => &rules.routes[i],
        Ok(None) => &default_route,
        Err((code, rule)) => {
            checks.push(plain(
                "...",
                Mark::Skip,
                "the proxy answers before it reads the key".into(),
            ));
            let why = rule.map_or_else(
                || "no [[route]] prefix matches".to_owned(),
                |r| format!("rule {}", r.as_str()),
            );
            return Ok(Explanation {
                header: header("-"),
                asked,
                checks,
                verdict: Err(code),
                rule,
                verdict_line: format!(
                    "verdict: DENY {code} {}: {} ({why})",
                    code.status(),
                    code.default_message()
                ),
                key_id: None,
            });
        }
    };
    if path.is_some() {
        asked.route = Some(route.prefix.to_string());
    }
    let mut rep = Report {
        ctx: RenderCtx {
            route,
            edge_env: &rules.environment,
            peer: ip,
        },
        view: None,
        first_failure: false,
        checks,
    };
    let header = header(&route.prefix);
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
        return Ok(verdict(rep, header, asked, None, None, key_text, now));
    };
    // Looked up before the environment check, so its fix can keep the key's policy.
    let found = st.find_key(KeyRef::Hash(KeyHash(key_hash(&key))))?;
    rep.view.clone_from(&found);
    rep.outcome(
        "environment",
        check_environment(&key, &rules.environment),
        &format!("`{}`", key.env()),
    );
    let Some(view) = found else {
        rep.outcome("known", Err(Refusal::Unknown), "");
        rep.skip("...", "later checks need a key the store knows");
        return Ok(verdict(rep, header, asked, None, None, key_text, now));
    };
    let mut loader = KeyLoader::default();
    let entry: Arc<KeyEntry> = match loader.entry_for(&view) {
        Ok(e) => e,
        Err(why) => {
            rep.refused_row(&view.key.id, why);
            rep.skip("...", "later checks need a key the proxy serves");
            let id = Some(clean(&view.key.id));
            return Ok(verdict(rep, header, asked, None, id, key_text, now));
        }
    };
    // The verdict spends from a wallet of its own holding what is left, never the daemon's.
    if let Some(c) = view.key.credits {
        loader.credits().wallet(&view.key.id).add_lease(&Lease {
            granted: c.remaining.saturating_add(held(&view.key.id)),
            left: 0,
            refill_due: c.refill_due,
        });
    }
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
    credits_row(&mut rep, e, &view, route, now);
    let id = Some(view.key.id.clone());
    Ok(verdict(rep, header, asked, Some(&cache), id, key_text, now))
}

/// The credits check: what is left, what the route costs, when they refill.
fn credits_row(rep: &mut Report<'_>, e: &KeyEntry, view: &KeyView, route: &RouteRules, now: Now) {
    let (Some(c), Some(w)) = (view.key.credits, e.wallet()) else {
        rep.pass("credits", "not usage-limited");
        return;
    };
    let refill = match (c.refill, c.refill_due) {
        (Some(r), Some(due)) => format!(
            "refill to {} each {}, next at {}",
            r.amount,
            r.period.as_str(),
            store::timefmt::rfc3339(due)
        ),
        _ => "no refill".to_owned(),
    };
    let left = w.left().unwrap_or(0);
    let detail = format!("{left} left, this route costs {}; {refill}", route.cost);
    if left >= route.cost {
        rep.pass("credits", &detail);
    } else {
        let r = Refusal::CreditsExhausted {
            entry: e,
            cost: route.cost,
            dry: crate::auth::credits::Dry::Exhausted {
                refill_due: c.refill_due,
            },
            at: now.secs.saturating_add(store::credits::clock_offset()),
        };
        rep.outcome("credits", Err(r), &detail);
    }
}

/// Runs the real chain for the verdict line.
fn verdict(
    rep: Report<'_>,
    header: String,
    asked: Asked,
    cache: Option<&ShardCache>,
    key_id: Option<String>,
    key: &str,
    now: Now,
) -> Explanation {
    let empty = ShardCache::new(&[], &[]);
    let cache = cache.unwrap_or(&empty);
    let found = Extracted::Key {
        raw: key,
        place: Place::Bearer,
    };
    let (verdict, verdict_line) =
        match decide::decide(cache, rep.ctx.route, rep.ctx.edge_env, found, asked.ip, now) {
            Decision::Allow(e, _) => (
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
        asked,
        checks: rep.checks,
        verdict,
        rule: None,
        verdict_line,
        key_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_quote_only_what_the_shell_would_read_otherwise() {
        let c = Cmd::new("keys create")
            .opt("--like", "key_AbC")
            .opt("--scope", "ai:invoke")
            .opt("--scope", "a$b'c")
            .opt("--allow-cidr", "fd00:ef::/64")
            .done();
        assert_eq!(
            c,
            r"edgefilter keys create --like key_AbC --scope ai:invoke --scope 'a$b'\''c' --allow-cidr fd00:ef::/64"
        );
    }

    #[test]
    fn lifetimes_read_back_in_their_largest_unit() {
        assert_eq!(duration_text(90 * 86_400), "90d");
        assert_eq!(duration_text(7_200), "2h");
        assert_eq!(duration_text(120), "2m");
        assert_eq!(duration_text(61), "61s");
    }

    #[test]
    fn bad_methods_and_targets_do_not_parse() {
        assert!(parses("POST", "/v1/x?y=1"));
        assert!(parses("PURGE", "/"));
        assert!(!parses("GE T", "/"));
        assert!(!parses("GET", "/a b"));
        assert!(!parses("GET\r\nX: y", "/"));
        assert!(!parses("", "/"));
    }
}
