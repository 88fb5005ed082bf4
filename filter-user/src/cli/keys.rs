//! `edgefilter keys create|list|show|revoke|approve|rotate`: changes go through the running
//! daemon's admin API when it is up (returning once every shard applied them), else straight
//! to the store; reads use the store. The output is the same either way, and so is the audit
//! trail: one entry per change, made or refused.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde_json::{Value, json};

use super::audit;
use super::daemon_api::{self, segment};
use super::name_arg::name_arg;
use super::out::{outln, printable};
use super::{EXIT_USAGE, JsonFlag, load_config};
use crate::admin::{AdminClient, CreatedKeyJson, KeyJson, key_state};
use crate::config::parse_duration;
use crate::names::{NameError, Scope, TenantName, UserName};
use crate::store::audit::{key_object, new_key_object};
use crate::store::timefmt::{parse_when, rfc3339};
use crate::store::{self, Action, KeyRef, KeyStore, KeyView, NewKey, RateLimit};

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key; prints it once, with its id.
    Create(CreateArgs),
    /// List keys (never their secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long, value_parser = name_arg::<TenantName>())]
        tenant: Option<TenantName>,
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
    /// Tenant (created if new): 1 to 128 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit.
    #[arg(long, value_parser = name_arg::<TenantName>())]
    tenant: TenantName,
    /// User (created if new), e.g. an e-mail address: the same rule as --tenant.
    #[arg(long, value_parser = name_arg::<UserName>())]
    user: UserName,
    /// Scope granted (repeatable): printable ASCII without space, `"` or `\`.
    #[arg(long = "scope", value_parser = name_arg::<Scope>())]
    scopes: Vec<Scope>,
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

/// The first name of `v` (tenant, user, scopes) that breaks its rule: such a key is stored
/// but never served (docs/keys.md#names).
fn broken_name(v: &KeyView) -> Option<NameError> {
    TenantName::parse(&v.user.tenant)
        .err()
        .or_else(|| UserName::parse(&v.user.name).err())
        .or_else(|| v.key.scopes.iter().find_map(|s| Scope::parse(s).err()))
}

/// Every value of `v` comes from the store, so each is printed through [`printable`].
fn print_view(v: &KeyView, now: i64) {
    let k = &v.key;
    let opt = |x: Option<i64>| x.map_or_else(|| "-".to_owned(), rfc3339);
    outln!("id:          {}", printable(&k.id));
    outln!(
        "tenant/user: {} / {} ({})",
        printable(&v.user.tenant),
        printable(&v.user.name),
        v.user.status.as_str()
    );
    outln!(
        "status:      {} (now: {})",
        k.status.as_str(),
        key_state(v, now)
    );
    outln!("env:         {}", printable(&k.env));
    outln!(
        "scopes:      {}",
        if k.scopes.is_empty() {
            "-".to_owned()
        } else {
            printable(&k.scopes.join(", ")).into_owned()
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
        outln!(
            "rotated to:  {} (old key works until {})",
            printable(to),
            rfc3339(g)
        );
    }
    outln!("created:     {}", rfc3339(k.created_at));
    if let Some(e) = broken_name(v) {
        outln!(
            "not served:  its {e}; revoke it: edgefilter keys revoke {}",
            printable(&k.id)
        );
    }
}

/// Prints a created key; `extra` adds a field to the JSON form.
fn print_created(mut c: CreatedKeyJson, json: bool, extra: Option<(&str, Value)>) {
    if json {
        c.revision = None;
        let mut v = serde_json::to_value(&c).unwrap_or_default();
        if let Some((name, x)) = extra {
            v[name] = x;
        }
        outln!("{v}");
    } else {
        outln!("{}", c.key);
        outln!(
            "id: {}  (the key above is shown only this once; store it now)",
            printable(&c.record.id)
        );
    }
}

fn print_revoked(v: &KeyJson) {
    let at = v.revoked_at.as_deref().unwrap_or_default();
    outln!("{} revoked at {}", printable(&v.id), printable(at));
}

fn print_approved(v: &KeyJson) {
    outln!(
        "{} approved (tenant {}, user {})",
        printable(&v.id),
        printable(&v.tenant),
        printable(&v.user)
    );
}

/// Prints a rotation: the new key and the old one's id and grace end.
fn print_rotated(new: CreatedKeyJson, old_id: &str, until: &str, json: bool) {
    let replaces = json!({"id": old_id, "grace_until": until});
    print_created(new, json, Some(("replaces", replaces)));
    if !json {
        outln!(
            "{} keeps working until {}",
            printable(old_id),
            printable(until)
        );
    }
}

/// Reads an admin API answer (or one of its fields) as `T`.
fn from_api<T: serde::de::DeserializeOwned>(v: &Value) -> anyhow::Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| anyhow::anyhow!("the daemon answered a key in an unexpected shape: {e}"))
}

/// The admin API request for `keys create`.
fn create_body(a: &CreateArgs, new: &NewKey) -> Value {
    let scopes: Vec<&str> = a.scopes.iter().map(Scope::as_str).collect();
    json!({
        "tenant": a.tenant.as_str(), "user": a.user.as_str(), "scopes": scopes,
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
                print_created(from_api(&v)?, a.json.json, None);
            } else {
                let named = new_key_object(&new.tenant, &new.user);
                let object = |_: &dyn KeyStore| named.clone();
                let created = audit::change(
                    &mut *store::open(&cfg)?,
                    Action::KeyCreate,
                    &object,
                    now,
                    |s| s.create_keys(std::slice::from_ref(&new), now),
                )?;
                for c in &created {
                    print_created(CreatedKeyJson::from_created(c, now), a.json.json, None);
                }
            }
        }
        KeysCmd::List { tenant, json } => {
            list(&*store::open(&cfg)?, tenant.as_deref(), json, now)?;
        }
        KeysCmd::Show { id, json } => {
            let Some(v) = store::open(&cfg)?.find_key(KeyRef::from_arg(&id))? else {
                anyhow::bail!("no such key{}", id_suffix(&id));
            };
            if json.json {
                outln!("{}", json!(KeyJson::from_view(&v, now)));
            } else {
                print_view(&v, now);
            }
        }
        KeysCmd::Revoke { id } => match change(api.as_ref(), &id, "revoke", None)? {
            Some(r) => print_revoked(&from_api(&r["key"])?),
            None => {
                let v = direct(&cfg, Action::KeyRevoke, &id, now, |s, key| {
                    s.revoke(key, now)
                })?;
                print_revoked(&KeyJson::from_view(&v, now));
            }
        },
        KeysCmd::Approve { id } => match change(api.as_ref(), &id, "approve", None)? {
            Some(r) => print_approved(&from_api(&r["key"])?),
            None => {
                let v = direct(&cfg, Action::KeyApprove, &id, now, |s, key| {
                    s.approve(key, now)
                })?;
                print_approved(&KeyJson::from_view(&v, now));
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
                    print_rotated(from_api(&r["new"])?, old_id, until, json.json);
                }
                None => {
                    let (old, new) = direct(&cfg, Action::KeyRotate, &id, now, |s, key| {
                        s.rotate(key, grace_d, now)
                    })?;
                    let until = old.key.grace_until.map_or_else(String::new, rfc3339);
                    print_rotated(
                        CreatedKeyJson::from_created(&new, now),
                        &old.key.id,
                        &until,
                        json.json,
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A change to the key `id` names, straight to the store as the local user (recorded in the
/// audit trail by its id, never by the key).
fn direct<T>(
    cfg: &crate::config::Config,
    action: Action,
    id: &str,
    now: i64,
    op: impl FnOnce(&mut dyn KeyStore, KeyRef<'_>) -> store::Result<T>,
) -> anyhow::Result<T> {
    let object = |s: &dyn KeyStore| key_object(s, id);
    let mut st = store::open(cfg)?;
    Ok(audit::change(&mut *st, action, &object, now, |s| {
        op(s, KeyRef::from_arg(id))
    })?)
}

fn list(st: &dyn KeyStore, tenant: Option<&str>, json: JsonFlag, now: i64) -> anyhow::Result<()> {
    let keys = st.list_keys(tenant)?;
    if json.json {
        let arr: Vec<KeyJson> = keys.iter().map(|v| KeyJson::from_view(v, now)).collect();
        outln!("{}", json!(arr));
        return Ok(());
    }
    // Every value comes from the store: printed through `printable`.
    let row = |cols: [&str; 8]| {
        let c = cols.map(printable);
        outln!(
            "{:<17} {:<14} {:<14} {:<14} {:<6} {:<22} {:<21} {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            c[6],
            c[7]
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
            key_state(v, now),
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
        tenant: a.tenant.to_string(),
        user: a.user.to_string(),
        env: a.env.clone().unwrap_or_else(|| default_env.to_owned()),
        scopes: a.scopes.iter().map(ToString::to_string).collect(),
        not_before: when(&a.not_before, "--not-before")?,
        expires_at: when(&a.expires, "--expires")?,
        allow_cidrs: a.allow_cidrs.iter().map(IpNet::trunc).collect(),
        rate,
        pending: a.pending,
    })
}
