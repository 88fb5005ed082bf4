//! `edgefilter explain --key KEY`: every check in order with pass/fail, the reason and the fix.
//!
//! Runs the same check functions as the proxy's decision chain against a one-key cache loaded
//! from the store, then runs `decide` itself for the verdict. Never prints the key.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::load_config;
use crate::auth::decide::{
    self, Decision, Now, Refusal, check_address, check_approved, check_environment, check_expiry,
    check_format, check_not_before, check_revoked, check_scopes, check_user, key_hash,
};
use crate::auth::deny::{RenderCtx, fix, hint, message};
use crate::auth::extract::Extracted;
use crate::auth::loader::KeyLoader;
use crate::auth::rules::{AuthRules, Place, RouteRules};
use crate::auth::{CacheUpdate, KeyEntry, ShardCache};
use crate::store::{self, KeyHash, KeyRef};

/// Arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The key to explain (read from the command line; never printed).
    #[arg(long)]
    key: String,
    /// Client address to check against the key's networks.
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path (selects the route and its scopes).
    #[arg(long)]
    path: Option<String>,
}

struct Report<'r> {
    ctx: RenderCtx<'r>,
    first_failure: bool,
}

impl Report<'_> {
    fn pass(&self, check: &str, why: &str) {
        println!("  PASS  {check:<12} {why}");
    }

    fn skip(&self, check: &str, why: &str) {
        println!("  ----  {check:<12} {why}");
    }

    fn outcome(&mut self, check: &str, r: Result<(), Refusal<'_>>, ok: &str) {
        match r {
            Ok(()) => self.pass(check, ok),
            Err(refusal) => {
                let mark = if self.first_failure {
                    ""
                } else {
                    "  <- the answer"
                };
                self.first_failure = true;
                println!(
                    "  FAIL  {check:<12} {} {}{mark}",
                    refusal.code(),
                    refusal.code().status()
                );
                println!("        {:<12} {}", "", hint(&refusal, &self.ctx));
                if let Some(f) = fix(&refusal, &self.ctx) {
                    println!("        {:<12} fix: {f}", "");
                }
            }
        }
    }
}

/// Runs the command: exit 0 when the request would be allowed, 1 when denied, 2 on usage.
///
/// # Errors
/// Store failures.
pub fn run(config: &Path, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let rules = match AuthRules::from_config(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
    };
    let default_route = RouteRules {
        prefix: "(any)".into(),
        accepted: Box::new([Place::Bearer, Place::XApiKey]),
        scopes: Box::new([]),
    };
    let route = match &args.path {
        Some(p) => match rules.route_for_path(p) {
            Some(i) => &rules.routes[i],
            None => {
                println!(
                    "{} {p}: NO_ROUTE 404 (no [[route]] prefix matches)",
                    args.method
                );
                return Ok(ExitCode::FAILURE);
            }
        },
        None => &default_route,
    };
    let now = Now::system();
    let mut rep = Report {
        ctx: RenderCtx {
            route,
            edge_env: &rules.environment,
            peer: args.ip,
        },
        first_failure: false,
    };
    println!(
        "{} {} from {} at {} (edge environment `{}`, route {})",
        args.method,
        args.path.as_deref().unwrap_or("(no --path)"),
        args.ip,
        store::timefmt::rfc3339(now.secs),
        rules.environment,
        route.prefix
    );
    rep.pass(
        "place",
        &format!("clients send the key as {}", route.accepted_list()),
    );
    let parsed = check_format(&args.key);
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
        return Ok(verdict(&rep, None, &args.key, args.ip, now));
    };
    rep.outcome(
        "environment",
        check_environment(&key, &rules.environment),
        &format!("`{}`", key.env()),
    );
    let st = store::open(&cfg)?;
    let Some(view) = st.find_key(KeyRef::Hash(KeyHash(key_hash(&key))))? else {
        rep.outcome("known", Err(Refusal::Unknown), "");
        rep.skip("...", "later checks need a key the store knows");
        return Ok(verdict(&rep, None, &args.key, args.ip, now));
    };
    let mut loader = KeyLoader::default();
    let entry: Arc<KeyEntry> = loader.entry_for(&view);
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
    rep.outcome("address", check_address(e, args.ip), "allowed");
    if args.path.is_some() {
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
    Ok(verdict(&rep, Some(&cache), &args.key, args.ip, now))
}

/// Runs the real chain for the verdict line.
fn verdict(
    rep: &Report<'_>,
    cache: Option<&ShardCache>,
    key: &str,
    ip: IpAddr,
    now: Now,
) -> ExitCode {
    let empty = ShardCache::new(&[], &[]);
    let cache = cache.unwrap_or(&empty);
    let found = Extracted::Key {
        raw: key,
        place: Place::Bearer,
    };
    match decide::decide(cache, rep.ctx.route, rep.ctx.edge_env, found, ip, now) {
        Decision::Allow(e) => {
            println!(
                "verdict: ALLOW as {} (tenant {}, user {})",
                e.key_id(),
                e.owner().tenant(),
                e.owner().user()
            );
            ExitCode::SUCCESS
        }
        Decision::Deny(r) => {
            println!(
                "verdict: DENY {} {}: {}",
                r.code(),
                r.code().status(),
                message(&r)
            );
            ExitCode::FAILURE
        }
    }
}
