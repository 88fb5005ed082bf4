//! Renders a [`Refusal`] into the answer's message and hint, and (for `explain`) the operator
//! command that fixes it. Nothing rendered here ever contains the key.

use std::net::IpAddr;

use super::cache::KeyEntry;
use super::credits::Dry;
use super::decide::Refusal;
use super::rules::RouteRules;
use crate::codes::ErrorCode;
use crate::gate::{Denial, RateInfo};
use crate::store::timefmt::rfc3339;

/// What rendering needs besides the refusal.
#[derive(Debug, Clone, Copy)]
pub struct RenderCtx<'a> {
    /// The route asked for.
    pub route: &'a RouteRules,
    /// The environment this edge serves.
    pub edge_env: &'a str,
    /// The client address seen.
    pub peer: IpAddr,
}

/// The message: the code's default, made specific where that helps.
#[must_use]
pub fn message(r: &Refusal<'_>) -> String {
    match r {
        Refusal::Malformed(f) => format!("The API key is not in the expected format: {f}."),
        Refusal::ScopeMissing { scope, .. } => {
            format!("The API key lacks the scope `{scope}` this route needs.")
        }
        _ => r.code().default_message().to_owned(),
    }
}

/// The hint for the caller.
#[must_use]
pub fn hint(r: &Refusal<'_>, ctx: &RenderCtx<'_>) -> String {
    let places = ctx.route.accepted_list();
    match *r {
        Refusal::Missing => format!("Send your API key as {places}."),
        Refusal::WrongPlace(p) => {
            format!("The key was sent in {p}, which this route does not accept; send it as {places}.")
        }
        Refusal::Malformed(f) => format!("{f}; send the key exactly as it was issued."),
        Refusal::Checksum => "A character was mistyped or lost; copy the key again from where it was issued.".into(),
        Refusal::WrongEnvironment { key_env } => format!(
            "This edge serves `{}` keys; this key is a `{key_env}` key. Use a `{}` key (ef_{}_…).",
            ctx.edge_env, ctx.edge_env, ctx.edge_env
        ),
        Refusal::Unknown => "This key is not known here: copy the key again, or ask your tenant admin to create one (`edgefilter keys create`).".into(),
        Refusal::Revoked(e) => match (e.revoked_at(), e.grace_until()) {
            (Some(at), _) => format!("{} was revoked at {}; a new key is needed.", e.key_id(), rfc3339(at)),
            (None, Some(g)) => format!(
                "{} was rotated; its grace period ended at {}. Use the key that replaced it (`edgefilter keys show {}` names it).",
                e.key_id(), rfc3339(g), e.key_id()
            ),
            (None, None) => format!("{} was revoked; a new key is needed.", e.key_id()),
        },
        Refusal::NotYetValid(e) => format!("{} is valid from {}.", e.key_id(), rfc3339(e.not_before())),
        Refusal::Expired(e) => format!(
            "{} expired at {}; get a new key: `edgefilter keys rotate {}`.",
            e.key_id(),
            e.expires_at().map_or_else(String::new, rfc3339),
            e.key_id()
        ),
        Refusal::UserSuspended(e) => format!(
            "User {} of tenant {} is suspended; contact the tenant admin of {}.",
            e.owner().user(), e.owner().tenant(), e.owner().tenant()
        ),
        Refusal::UserDeleted(e) => format!(
            "User {} of tenant {} has been deleted; contact the tenant admin of {}.",
            e.owner().user(), e.owner().tenant(), e.owner().tenant()
        ),
        Refusal::Pending(e) => format!(
            "{} awaits approval by an admin of tenant {}: `edgefilter keys approve {}`.",
            e.key_id(), e.owner().tenant(), e.key_id()
        ),
        Refusal::IpNotAllowed(e) => format!(
            "This request came from {}, which is outside the {} network(s) {} may be used from.",
            ctx.peer.to_canonical(),
            e.owner().cidrs().len(),
            e.key_id()
        ),
        Refusal::ScopeMissing { entry, scope } => {
            let has: Vec<&str> = entry.owner().scopes().iter().map(|s| &**s).collect();
            format!(
                "This route ({}) needs scope `{scope}`; {} has {}.",
                ctx.route.prefix,
                entry.key_id(),
                if has.is_empty() { "no scopes".to_owned() } else { format!("only: {}", has.join(", ")) }
            )
        }
        Refusal::RateLimited { entry, rate } => format!(
            "{} allows {} requests/s (burst {}); retry after {} s.",
            entry.key_id(),
            rate.limit,
            entry.owner().limit().map_or(0, |l| l.burst()),
            rate.reset_secs
        ),
        Refusal::CreditsExhausted { entry, cost, dry, at } => credits_hint(entry, cost, dry, at),
    }
}

/// The hint of `CREDITS_EXHAUSTED`: when the credits refill, or that they will not.
fn credits_hint(e: &KeyEntry, cost: u64, dry: Dry, at: i64) -> String {
    let id = e.key_id();
    let per = if cost == 1 {
        "a request here costs 1 credit".to_owned()
    } else {
        format!("a request here costs {cost} credits")
    };
    match dry {
        Dry::Fetching => format!(
            "{id} has credits left, but this edge is still fetching its share of them ({per}); retry in a second."
        ),
        Dry::Exhausted {
            refill_due: Some(due),
        } => format!(
            "{id} has spent its credits ({per}); they refill at {} (in {} s).",
            rfc3339(due),
            due.saturating_sub(at).max(1)
        ),
        Dry::Exhausted { refill_due: None } => format!(
            "{id} has spent its credits ({per}) and they do not refill; ask your tenant admin to add credits (`edgefilter keys credits {id} --add N`)."
        ),
    }
}

/// `Retry-After` of `CREDITS_EXHAUSTED`: until the refill, 1 s while a lease is fetched, none
/// when the credits never refill.
fn credits_retry(dry: Dry, at: i64) -> Option<RateInfo> {
    let reset_secs = match dry {
        Dry::Fetching => 1,
        Dry::Exhausted {
            refill_due: Some(due),
        } => u64::try_from(due.saturating_sub(at)).unwrap_or(0).max(1),
        Dry::Exhausted { refill_due: None } => return None,
    };
    Some(RateInfo {
        limit: 0,
        remaining: 0,
        reset_secs,
    })
}

/// The operator command that fixes it, when there is one.
#[must_use]
pub fn fix(r: &Refusal<'_>, ctx: &RenderCtx<'_>) -> Option<String> {
    let id = r.entry().map(|e| e.key_id().to_string());
    let id = id.as_deref().unwrap_or("key_…");
    Some(match *r {
        Refusal::Missing | Refusal::WrongPlace(_) => {
            format!("send the key as {}", ctx.route.accepted_list())
        }
        Refusal::Malformed(_) | Refusal::Checksum => {
            "copy the key again exactly as issued".to_owned()
        }
        Refusal::WrongEnvironment { .. } => format!(
            "edgefilter keys create --env {} --tenant T --user U",
            ctx.edge_env
        ),
        Refusal::Unknown => "edgefilter keys create --tenant T --user U".to_owned(),
        Refusal::Revoked(e) => format!(
            "edgefilter keys create --tenant {} --user {}",
            e.owner().tenant(),
            e.owner().user()
        ),
        Refusal::NotYetValid(e) => format!("wait until {}", rfc3339(e.not_before())),
        Refusal::Expired(_) => format!("edgefilter keys rotate {id}"),
        Refusal::UserSuspended(e) => format!("edgefilter users activate {}", e.owner().user()),
        Refusal::UserDeleted(e) => format!(
            "edgefilter keys create --tenant {} --user NEW_USER (deletion is final)",
            e.owner().tenant()
        ),
        Refusal::Pending(_) => format!("edgefilter keys approve {id}"),
        Refusal::IpNotAllowed(e) => format!(
            "call from {} or create a key that allows this address: edgefilter keys create --tenant {} --user {} --allow-cidr {}",
            e.owner()
                .cidrs()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            e.owner().tenant(),
            e.owner().user(),
            ipnet::IpNet::from(ctx.peer.to_canonical())
        ),
        Refusal::ScopeMissing { entry, scope } => format!(
            "edgefilter keys create --tenant {} --user {} --scope {scope}",
            entry.owner().tenant(),
            entry.owner().user()
        ),
        Refusal::RateLimited { rate, .. } => format!("retry after {} s", rate.reset_secs),
        Refusal::CreditsExhausted { .. } => format!("edgefilter keys credits {id} --add N"),
    })
}

/// The denial the proxy answers with.
#[must_use]
pub fn denial(r: &Refusal<'_>, ctx: &RenderCtx<'_>) -> Denial {
    let code: ErrorCode = r.code();
    Denial {
        code,
        message: message(r),
        hint: Some(hint(r, ctx)),
        key_id: r.entry().map(|e| e.key_id().clone()),
        rate: match r {
            Refusal::RateLimited { rate, .. } => Some(*rate),
            Refusal::CreditsExhausted { dry, at, .. } => credits_retry(*dry, *at),
            _ => None,
        },
    }
}
