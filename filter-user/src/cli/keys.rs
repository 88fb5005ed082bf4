//! `edgefilter keys create|list|show|revoke|approve|rotate|credits`: changes go through the running
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
use crate::store::{self, Action, KeyRef, KeyStore, KeyView, NewKey, RateLimit, Refill};

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
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Approve a pending key.
    Approve {
        /// `key_…` or the full key.
        id: String,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Change a usage-limited key's remaining credits (`--set N` or `--add N`).
    Credits {
        /// `key_…` or the full key.
        id: String,
        /// Remaining credits become exactly N (what a running daemon holds unspent is void).
        #[arg(
            long,
            value_name = "N",
            required_unless_present = "add",
            conflicts_with = "add"
        )]
        set: Option<u64>,
        /// Remaining credits grow by N.
        #[arg(long, value_name = "N")]
        add: Option<u64>,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
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
    #[arg(long, value_parser = name_arg::<TenantName>(), required_unless_present = "like")]
    tenant: Option<TenantName>,
    /// User (created if new), e.g. an e-mail address: the same rule as --tenant.
    #[arg(long, value_parser = name_arg::<UserName>(), required_unless_present = "like")]
    user: Option<UserName>,
    /// Copy another key's tenant, user, scopes, networks, limit and environment (`key_…` or
    /// the full key); the options given here replace what they name.
    #[arg(long, value_name = "ID")]
    like: Option<String>,
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
    /// Usage-limited: credits to spend (each request costs its route's `cost`).
    #[arg(long)]
    credits: Option<u64>,
    /// With --credits: reset the credits to N every hour, day or month (`N/day`).
    #[arg(long, requires = "credits", value_parser = Refill::parse)]
    refill: Option<Refill>,
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
    outln!("credits:     {}", credits_text(k.credits));
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

/// `95 left (reset to 100 each day; next at …)`, or `unlimited`.
fn credits_text(c: Option<store::Credits>) -> String {
    let Some(c) = c else {
        return "unlimited".to_owned();
    };
    match (c.refill, c.refill_due) {
        (Some(r), Some(due)) => format!(
            "{} left (reset to {} each {}; next at {})",
            c.remaining,
            r.amount,
            r.period.as_str(),
            rfc3339(due)
        ),
        _ => format!("{} left (no refill)", c.remaining),
    }
}

fn print_credits(v: &KeyJson, json: bool) {
    if json {
        outln!("{}", change_json(Action::KeyCredits, v));
        return;
    }
    let left = v
        .credits_remaining
        .map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    outln!("{} credits: {left} left", printable(&v.id));
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

/// The `--json` of a key change: the action (as the audit trail names it), the key's id, its
/// stored status and state after the change, and the whole key (never its secret).
fn change_json(action: Action, v: &KeyJson) -> Value {
    json!({
        "action": action.as_str(), "id": v.id, "status": v.status, "state": v.state, "key": v,
    })
}

fn print_revoked(v: &KeyJson, json: bool) {
    if json {
        outln!("{}", change_json(Action::KeyRevoke, v));
        return;
    }
    let at = v.revoked_at.as_deref().unwrap_or_default();
    outln!("{} revoked at {}", printable(&v.id), printable(at));
}

fn print_approved(v: &KeyJson, json: bool) {
    if json {
        outln!("{}", change_json(Action::KeyApprove, v));
        return;
    }
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

/// The admin API request for `keys create`: what the options give; with `--like` the daemon
/// copies the rest from that key (so a list left empty is sent as "not given").
fn create_body(a: &CreateArgs, checked: &Checked, default_env: &str) -> Value {
    let given = |empty: bool| !empty || a.like.is_none();
    let scopes: Vec<&str> = a.scopes.iter().map(Scope::as_str).collect();
    let cidrs: Vec<String> = a
        .allow_cidrs
        .iter()
        .map(|n| n.trunc().to_string())
        .collect();
    let env = a
        .env
        .clone()
        .or_else(|| a.like.is_none().then(|| default_env.to_owned()));
    json!({
        "tenant": a.tenant.as_deref(), "user": a.user.as_deref(),
        "scopes": given(scopes.is_empty()).then_some(scopes),
        "expires": a.expires, "not_before": a.not_before,
        "allowed_cidrs": given(cidrs.is_empty()).then_some(cidrs),
        "rate": checked.rate, "burst": a.burst,
        "credits": a.credits, "refill": a.refill.map(|r| r.to_string()),
        "pending": a.pending, "env": env, "like": a.like,
    })
}

/// A key change through the daemon (`Some`) or the store (`None`).
fn change_key(
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
            let checked = match Checked::of(&a, now) {
                Ok(c) => c,
                Err(m) => return Ok(usage(&m)),
            };
            if let Some(c) = &api {
                let body = create_body(&a, &checked, &cfg.keys.environment);
                let v = daemon_api::call(c, "POST", "/v1/keys", Some(&body))?;
                print_created(from_api(&v)?, a.json.json, None);
            } else {
                let mut st = store::open(&cfg)?;
                let from = match &a.like {
                    Some(like) => Some(find_like(&mut *st, like, now)?),
                    None => None,
                };
                let new = match new_key(&a, &checked, from.as_ref(), &cfg.keys.environment) {
                    Ok(n) => n,
                    Err(m) => return Ok(usage(&m)),
                };
                let named = new_key_object(&new.tenant, &new.user);
                let object = |_: &dyn KeyStore| named.clone();
                let created = audit::change(&mut *st, Action::KeyCreate, &object, now, |s| {
                    s.create_keys(std::slice::from_ref(&new), now)
                })?;
                for c in &created {
                    print_created(CreatedKeyJson::from_created(c, now), a.json.json, None);
                }
            }
        }
        KeysCmd::List { tenant, json } => {
            list(&*store::open(&cfg)?, tenant.as_deref(), json, now)?;
        }
        KeysCmd::Show { id, json } => {
            let Some(mut v) = store::open(&cfg)?.find_key(KeyRef::from_arg(&id))? else {
                anyhow::bail!("no such key{}", id_suffix(&id));
            };
            // A running daemon holds part of a usage-limited key's credits: it counts them.
            if let Some(c) = v.key.credits.as_mut()
                && let Some(api) = daemon_api::discover(&cfg)
            {
                let path = format!("/v1/keys/{}", segment(&v.key.id));
                let live: KeyJson = from_api(&daemon_api::call(&api, "GET", &path, None)?)?;
                c.remaining = live.credits_remaining.unwrap_or(c.remaining);
            }
            if json.json {
                outln!("{}", json!(KeyJson::from_view(&v, now)));
            } else {
                print_view(&v, now);
            }
        }
        KeysCmd::Credits { id, set, add, json } => {
            let change = match (set, add) {
                (Some(n), None) => store::CreditChange::Set(n),
                (None, Some(n)) => store::CreditChange::Add(n),
                _ => return Ok(usage("give exactly one of --set and --add")),
            };
            let body = match change {
                store::CreditChange::Set(n) => json!({ "set": n }),
                store::CreditChange::Add(n) => json!({ "add": n }),
            };
            match change_key(api.as_ref(), &id, "credits", Some(&body))? {
                Some(r) => print_credits(&from_api(&r["key"])?, json.json),
                None => {
                    let v = direct(&cfg, Action::KeyCredits, &id, now, |s, key| {
                        s.change_credits(key, change, now)
                    })?;
                    print_credits(&KeyJson::from_view(&v, now), json.json);
                }
            }
        }
        KeysCmd::Revoke { id, json } => match change_key(api.as_ref(), &id, "revoke", None)? {
            Some(r) => print_revoked(&from_api(&r["key"])?, json.json),
            None => {
                let v = direct(&cfg, Action::KeyRevoke, &id, now, |s, key| {
                    s.revoke(key, now)
                })?;
                print_revoked(&KeyJson::from_view(&v, now), json.json);
            }
        },
        KeysCmd::Approve { id, json } => match change_key(api.as_ref(), &id, "approve", None)? {
            Some(r) => print_approved(&from_api(&r["key"])?, json.json),
            None => {
                let v = direct(&cfg, Action::KeyApprove, &id, now, |s, key| {
                    s.approve(key, now)
                })?;
                print_approved(&KeyJson::from_view(&v, now), json.json);
            }
        },
        KeysCmd::Rotate { id, grace, json } => {
            let grace_d = match parse_duration(&grace) {
                Ok(g) => g,
                Err(m) => return Ok(usage(&format!("--grace: {m}"))),
            };
            let body = json!({ "grace": grace });
            match change_key(api.as_ref(), &id, "rotate", Some(&body))? {
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
    let header = [
        "ID", "TENANT", "USER", "STATE", "ENV", "SCOPES", "EXPIRES", "CREATED",
    ];
    let rows: Vec<[String; 8]> = keys
        .iter()
        .map(|v| {
            let scopes = if v.key.scopes.is_empty() {
                "-".to_owned()
            } else {
                v.key.scopes.join(",")
            };
            [
                v.key.id.clone(),
                v.user.tenant.clone(),
                v.user.name.clone(),
                key_state(v, now).to_owned(),
                v.key.env.clone(),
                scopes,
                v.key.expires_at.map_or_else(|| "never".to_owned(), rfc3339),
                rfc3339(v.key.created_at),
            ]
        })
        .collect();
    for line in table(header, &rows) {
        outln!("{line}");
    }
    Ok(())
}

/// The widest a `keys list` column grows; a longer value is cut with `…` (`--json` and
/// `keys show` keep it whole).
const MAX_COLUMN: usize = 32;

/// `value` cut to `width` characters, its last one `…` when cut.
fn fit(value: &str, width: usize) -> String {
    if value.chars().count() <= width {
        return value.to_owned();
    }
    let mut cut: String = value.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The lines of a table: each column as wide as its widest cell (at most [`MAX_COLUMN`]),
/// two spaces apart, the last one unpadded. Every cell comes from the store, so each goes
/// through [`printable`] first.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Vec<String> {
    let shown: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.each_ref().map(|c| printable(c).into_owned()))
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &shown {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count().min(MAX_COLUMN));
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let c = fit(c, w);
            if i + 1 == N {
                out.push_str(&c);
            } else {
                let pad = w - c.chars().count();
                out.push_str(&c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out
    };
    std::iter::once(line(header))
        .chain(shown.iter().map(|r| line(r.each_ref().map(String::as_str))))
        .collect()
}

/// ` key_…` for an id; nothing for a full key (never echo it).
fn id_suffix(arg: &str) -> String {
    if store::ids::is_key_id(arg) {
        format!(" {arg}")
    } else {
        " matching the given key".to_owned()
    }
}

/// The options of `keys create` that are checked before anything is asked of the store or the
/// daemon: the rate, and the times (read at `now`).
struct Checked {
    rate: Option<u32>,
    not_before: Option<i64>,
    expires_at: Option<i64>,
}

impl Checked {
    fn of(a: &CreateArgs, now: i64) -> Result<Self, String> {
        let rate = a.rate.as_deref().map(parse_rate).transpose()?;
        if rate.is_none() && a.burst.is_some() && a.like.is_none() {
            return Err("--burst needs --rate".into());
        }
        let when = |s: &Option<String>, flag: &str| {
            s.as_deref()
                .map(|s| parse_when(s, now).map_err(|m| format!("{flag}: {m}")))
                .transpose()
        };
        let not_before = when(&a.not_before, "--not-before")?;
        let expires_at = when(&a.expires, "--expires")?;
        store::timefmt::check_validity(not_before, expires_at, now, ("--expires", "--not-before"))?;
        Ok(Self {
            rate,
            not_before,
            expires_at,
        })
    }
}

/// The key `--like` names (by id or full key, never echoed); a key that is not there is a
/// refused `key.create` in the audit trail.
fn find_like(st: &mut dyn KeyStore, like: &str, now: i64) -> anyhow::Result<KeyView> {
    if let Some(v) = st.find_key(KeyRef::from_arg(like))? {
        return Ok(v);
    }
    let object = |s: &dyn KeyStore| key_object(s, like);
    audit::change(st, Action::KeyCreate, &object, now, |_| {
        Err(store::StoreError::NoSuchKey(format!(
            "to copy (--like){}",
            id_suffix(like)
        )))
    })?;
    anyhow::bail!("no such key to copy (--like){}", id_suffix(like))
}

/// The key to create: the options given, and (with `--like`) what they leave out copied from
/// `from`: tenant, user, scopes, networks, limit and environment.
fn new_key(
    a: &CreateArgs,
    checked: &Checked,
    from: Option<&KeyView>,
    default_env: &str,
) -> Result<NewKey, String> {
    let copied = |f: fn(&KeyView) -> String| from.map(f);
    let tenant = a
        .tenant
        .as_deref()
        .map(str::to_owned)
        .or_else(|| copied(|v| v.user.tenant.clone()))
        .ok_or("--tenant is needed (or --like)")?;
    let user = a
        .user
        .as_deref()
        .map(str::to_owned)
        .or_else(|| copied(|v| v.user.name.clone()))
        .ok_or("--user is needed (or --like)")?;
    let rate = match (checked.rate, a.burst, from.and_then(|v| v.key.rate)) {
        (Some(per_sec), burst, _) => Some(RateLimit {
            per_sec,
            burst: burst.unwrap_or(per_sec).max(1),
        }),
        (None, None, copied) => copied,
        (None, Some(burst), Some(r)) => Some(RateLimit {
            per_sec: r.per_sec,
            burst: burst.max(1),
        }),
        (None, Some(_), None) => return Err("--burst needs --rate".into()),
    };
    let scopes = if a.scopes.is_empty() {
        from.map(|v| v.key.scopes.clone()).unwrap_or_default()
    } else {
        a.scopes.iter().map(ToString::to_string).collect()
    };
    let allow_cidrs = if a.allow_cidrs.is_empty() {
        from.map(|v| v.key.allow_cidrs.clone()).unwrap_or_default()
    } else {
        a.allow_cidrs.iter().map(IpNet::trunc).collect()
    };
    Ok(NewKey {
        tenant,
        user,
        env: a
            .env
            .clone()
            .or_else(|| copied(|v| v.key.env.clone()))
            .unwrap_or_else(|| default_env.to_owned()),
        scopes,
        not_before: checked.not_before,
        expires_at: checked.expires_at,
        allow_cidrs,
        rate,
        credits: a.credits,
        refill: a.refill,
        pending: a.pending,
    })
}
