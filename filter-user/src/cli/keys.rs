//! `edgefilter keys create|list|show|revoke|approve|rotate`: changes go through the running
//! daemon's admin API when it is up (returning once every shard applied them), else straight
//! to the store; reads use the store. The output is the same either way.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde_json::{Value, json};

use super::daemon_api::{self, segment};
use super::out::outln;
use super::{EXIT_USAGE, JsonFlag, load_config};
use crate::admin::AdminClient;
use crate::config::parse_duration;
use crate::control::keyjson::cli_key;
use crate::store::timefmt::{parse_when, rfc3339};
use crate::store::{
    self, CreatedKey, KeyRef, KeyStatus, KeyStore, KeyView, NewKey, RateLimit, UserStatus,
};

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key; prints it once, with its id.
    Create(CreateArgs),
    /// List keys (never their secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show one key (by id, or by the full key).
    Show {
        /// `key_…` or the full key.
        id: String,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke a key (by id, or by the full key).
    Revoke {
        /// `key_…` or the full key.
        id: String,
    },
    /// Approve a pending key.
    Approve {
        /// `key_…` or the full key.
        id: String,
    },
    /// Replace a key; the old one keeps working until the grace period ends.
    Rotate {
        /// `key_…` or the full key.
        id: String,
        /// How long the old key keeps working.
        #[arg(long, default_value = "24h")]
        grace: String,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `keys create` arguments.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Tenant (created if new).
    #[arg(long)]
    tenant: String,
    /// User (created if new).
    #[arg(long)]
    user: String,
    /// Scope granted (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Expiry: a duration from now (`90d`) or an RFC 3339 time.
    #[arg(long)]
    expires: Option<String>,
    /// Not valid before: a duration from now or an RFC 3339 time.
    #[arg(long)]
    not_before: Option<String>,
    /// Allowed client network (repeatable); none = any.
    #[arg(long = "allow-cidr")]
    allow_cidrs: Vec<IpNet>,
    /// Rate limit, `N/s`.
    #[arg(long)]
    rate: Option<String>,
    /// Bucket size (default: one second's worth).
    #[arg(long)]
    burst: Option<u32>,
    /// Needs `keys approve` before it works.
    #[arg(long)]
    pending: bool,
    /// Environment (default: `keys.environment`).
    #[arg(long)]
    env: Option<String>,
    /// JSON output.
    #[command(flatten)]
    json: JsonFlag,
}

/// A usage error: printed, exit 2.
fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(EXIT_USAGE)
}

fn parse_rate(s: &str) -> Result<u32, String> {
    let n = s.strip_suffix("/s").unwrap_or(s);
    match n.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("--rate `{s}` must be N/s with N >= 1, e.g. 100/s")),
    }
}

/// What the key amounts to now: revoked, rotated, expired, … or its stored status.
#[must_use]
pub fn effective_state(v: &KeyView, now: i64) -> &'static str {
    let k = &v.key;
    if k.status == KeyStatus::Revoked {
        "revoked"
    } else if k.grace_until.is_some_and(|g| now >= g) {
        "rotated"
    } else if k.expires_at.is_some_and(|e| now >= e) {
        "expired"
    } else if v.user.status != UserStatus::Active {
        v.user.status.as_str()
    } else if k.not_before.is_some_and(|nb| now < nb) {
        "not_yet_valid"
    } else if k.grace_until.is_some() {
        "in_grace"
    } else {
        k.status.as_str()
    }
}

/// The JSON shape of a key (never its secret).
#[must_use]
pub fn view_json(v: &KeyView, now: i64) -> Value {
    let k = &v.key;
    let t = |x: Option<i64>| x.map(rfc3339);
    json!({
        "id": k.id,
        "tenant": v.user.tenant,
        "user": v.user.name,
        "user_status": v.user.status.as_str(),
        "status": k.status.as_str(),
        "state": effective_state(v, now),
        "env": k.env,
        "scopes": k.scopes,
        "not_before": t(k.not_before),
        "expires_at": t(k.expires_at),
        "allow_cidrs": k.allow_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "rate": k.rate.map(|r| json!({"per_sec": r.per_sec, "burst": r.burst})),
        "revoked_at": t(k.revoked_at),
        "grace_until": t(k.grace_until),
        "rotated_to": k.rotated_to,
        "created_at": rfc3339(k.created_at),
    })
}

fn print_view(v: &KeyView, now: i64) {
    let k = &v.key;
    let opt = |x: Option<i64>| x.map_or_else(|| "-".to_owned(), rfc3339);
    outln!("id:          {}", k.id);
    outln!(
        "tenant/user: {} / {} ({})",
        v.user.tenant,
        v.user.name,
        v.user.status.as_str()
    );
    outln!(
        "status:      {} (now: {})",
        k.status.as_str(),
        effective_state(v, now)
    );
    outln!("env:         {}", k.env);
    outln!(
        "scopes:      {}",
        if k.scopes.is_empty() {
            "-".to_owned()
        } else {
            k.scopes.join(", ")
        }
    );
    outln!("not before:  {}", opt(k.not_before));
    outln!("expires:     {}", opt(k.expires_at));
    let cidrs: Vec<String> = k.allow_cidrs.iter().map(ToString::to_string).collect();
    outln!(
        "allow from:  {}",
        if cidrs.is_empty() {
            "any".to_owned()
        } else {
            cidrs.join(", ")
        }
    );
    outln!(
        "rate:        {}",
        k.rate.map_or_else(
            || "unlimited".to_owned(),
            |r| format!("{}/s, burst {}", r.per_sec, r.burst)
        )
    );
    if let Some(r) = k.revoked_at {
        outln!("revoked at:  {}", rfc3339(r));
    }
    if let (Some(g), Some(to)) = (k.grace_until, &k.rotated_to) {
        outln!("rotated to:  {to} (old key works until {})", rfc3339(g));
    }
    outln!("created:     {}", rfc3339(k.created_at));
}

/// `view` in the CLI's JSON shape with the secret added.
fn created_json(c: &CreatedKey, now: i64) -> Value {
    let mut v = view_json(&c.view, now);
    v["key"] = Value::from(c.secret.expose());
    v
}

/// Prints a created key (`v`: the CLI's JSON shape including `key`).
fn print_created(mut v: Value, json: bool, extra: Option<(&str, Value)>) {
    if json {
        if let Some((name, x)) = extra {
            v[name] = x;
        }
        outln!("{v}");
    } else {
        outln!("{}", v["key"].as_str().unwrap_or_default());
        outln!(
            "id: {}  (the key above is shown only this once; store it now)",
            v["id"].as_str().unwrap_or_default()
        );
    }
}

fn print_revoked(v: &Value) {
    let at = v["revoked_at"].as_str().unwrap_or_default();
    outln!("{} revoked at {at}", v["id"].as_str().unwrap_or_default());
}

fn print_approved(v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    outln!(
        "{} approved (tenant {}, user {})",
        s("id"),
        s("tenant"),
        s("user")
    );
}

/// Prints a rotation: the new key (CLI shape with `key`) and the old one's id and grace end.
fn print_rotated(new: Value, old_id: &str, until: &str, json: bool) {
    let replaces = json!({"id": old_id, "grace_until": until});
    print_created(new, json, Some(("replaces", replaces)));
    if !json {
        outln!("{old_id} keeps working until {until}");
    }
}

/// The admin API request for `keys create`.
fn create_body(a: &CreateArgs, new: &NewKey) -> Value {
    json!({
        "tenant": a.tenant, "user": a.user, "scopes": a.scopes,
        "expires": a.expires, "not_before": a.not_before,
        "allowed_cidrs": new.allow_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "rate": new.rate.map(|r| r.per_sec), "burst": new.rate.map(|r| r.burst),
        "pending": a.pending, "env": new.env,
    })
}

/// A key change through the daemon (`Some`) or the store (`None`).
fn change(
    api: Option<&AdminClient>,
    id: &str,
    action: &str,
    body: Option<&Value>,
) -> anyhow::Result<Option<Value>> {
    let Some(c) = api else { return Ok(None) };
    let path = format!("/v1/keys/{}/{action}", segment(id));
    daemon_api::call(c, "POST", &path, body).map(Some)
}

/// Runs the command.
///
/// # Errors
/// Store failures, unknown keys; printed by the dispatcher (exit 1).
pub fn run(config: &Path, cmd: KeysCmd) -> anyhow::Result<ExitCode> {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let now = store::unix_now();
    let api = match &cmd {
        KeysCmd::List { .. } | KeysCmd::Show { .. } => None,
        _ => daemon_api::discover(&cfg),
    };
    match cmd {
        KeysCmd::Create(a) => {
            let new = match new_key(&a, &cfg.keys.environment, now) {
                Ok(n) => n,
                Err(m) => return Ok(usage(&m)),
            };
            if let Some(c) = &api {
                let v = daemon_api::call(c, "POST", "/v1/keys", Some(&create_body(&a, &new)))?;
                print_created(cli_key(&v), a.json.json, None);
            } else {
                let created = store::open(&cfg)?.create_keys(std::slice::from_ref(&new), now)?;
                for c in &created {
                    print_created(created_json(c, now), a.json.json, None);
                }
            }
        }
        KeysCmd::List { tenant, json } => list(&*store::open(&cfg)?, tenant.as_deref(), json, now)?,
        KeysCmd::Show { id, json } => {
            let Some(v) = store::open(&cfg)?.find_key(KeyRef::from_arg(&id))? else {
                anyhow::bail!("no such key{}", id_suffix(&id));
            };
            if json.json {
                outln!("{}", view_json(&v, now));
            } else {
                print_view(&v, now);
            }
        }
        KeysCmd::Revoke { id } => match change(api.as_ref(), &id, "revoke", None)? {
            Some(r) => print_revoked(&cli_key(&r["key"])),
            None => {
                let v = store::open(&cfg)?.revoke(KeyRef::from_arg(&id), now)?;
                print_revoked(&view_json(&v, now));
            }
        },
        KeysCmd::Approve { id } => match change(api.as_ref(), &id, "approve", None)? {
            Some(r) => print_approved(&cli_key(&r["key"])),
            None => {
                let v = store::open(&cfg)?.approve(KeyRef::from_arg(&id), now)?;
                print_approved(&view_json(&v, now));
            }
        },
        KeysCmd::Rotate { id, grace, json } => {
            let grace_d = match parse_duration(&grace) {
                Ok(g) => g,
                Err(m) => return Ok(usage(&format!("--grace: {m}"))),
            };
            let body = json!({ "grace": grace });
            match change(api.as_ref(), &id, "rotate", Some(&body))? {
                Some(r) => {
                    let old = &r["old"];
                    let until = old["grace_until"].as_str().unwrap_or_default();
                    let old_id = old["id"].as_str().unwrap_or_default();
                    print_rotated(cli_key(&r["new"]), old_id, until, json.json);
                }
                None => {
                    let (old, new) =
                        store::open(&cfg)?.rotate(KeyRef::from_arg(&id), grace_d, now)?;
                    let until = old.key.grace_until.map_or_else(String::new, rfc3339);
                    print_rotated(created_json(&new, now), &old.key.id, &until, json.json);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(st: &dyn KeyStore, tenant: Option<&str>, json: JsonFlag, now: i64) -> anyhow::Result<()> {
    let keys = st.list_keys(tenant)?;
    if json.json {
        let arr: Vec<Value> = keys.iter().map(|v| view_json(v, now)).collect();
        outln!("{}", Value::Array(arr));
        return Ok(());
    }
    let row = |cols: [&str; 8]| {
        outln!(
            "{:<17} {:<14} {:<14} {:<14} {:<6} {:<22} {:<21} {}",
            cols[0],
            cols[1],
            cols[2],
            cols[3],
            cols[4],
            cols[5],
            cols[6],
            cols[7]
        );
    };
    row([
        "ID", "TENANT", "USER", "STATE", "ENV", "SCOPES", "EXPIRES", "CREATED",
    ]);
    for v in &keys {
        let scopes = if v.key.scopes.is_empty() {
            "-".to_owned()
        } else {
            v.key.scopes.join(",")
        };
        let expires = v.key.expires_at.map_or_else(|| "never".to_owned(), rfc3339);
        row([
            &v.key.id,
            &v.user.tenant,
            &v.user.name,
            effective_state(v, now),
            &v.key.env,
            &scopes,
            &expires,
            &rfc3339(v.key.created_at),
        ]);
    }
    Ok(())
}

/// ` key_…` for an id; nothing for a full key (never echo it).
fn id_suffix(arg: &str) -> String {
    if store::ids::is_key_id(arg) {
        format!(" {arg}")
    } else {
        " matching the given key".to_owned()
    }
}

fn new_key(a: &CreateArgs, default_env: &str, now: i64) -> Result<NewKey, String> {
    let rate = match &a.rate {
        Some(r) => {
            let per_sec = parse_rate(r)?;
            Some(RateLimit {
                per_sec,
                burst: a.burst.unwrap_or(per_sec).max(1),
            })
        }
        None if a.burst.is_some() => return Err("--burst needs --rate".into()),
        None => None,
    };
    let when = |s: &Option<String>, flag: &str| {
        s.as_deref()
            .map(|s| parse_when(s, now).map_err(|m| format!("{flag}: {m}")))
            .transpose()
    };
    Ok(NewKey {
        tenant: a.tenant.clone(),
        user: a.user.clone(),
        env: a.env.clone().unwrap_or_else(|| default_env.to_owned()),
        scopes: a.scopes.clone(),
        not_before: when(&a.not_before, "--not-before")?,
        expires_at: when(&a.expires, "--expires")?,
        allow_cidrs: a.allow_cidrs.iter().map(IpNet::trunc).collect(),
        rate,
        pending: a.pending,
    })
}
