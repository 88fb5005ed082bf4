//! The audit trail's records and rules, written once for every backend: who ([`Actor`]) did
//! what ([`Action`]) to which object, when, on which host, and how it ended ([`OK`] or the
//! error). What a valid entry is lives here too: every text field is bounded and never holds a
//! key (key-shaped text becomes [`A_KEY`]), whoever built it.
//!
//! A backend records a successful change in the change's own transaction, on behalf of the
//! actor set with [`KeyStore::act_as`]; [`audited`] runs one change that way and records a
//! refused one afterwards. Changes outside the store (the XDP allowlist and denylist) are
//! recorded with [`KeyStore::record_audit`].

use std::fmt;
use std::net::IpAddr;
use std::sync::OnceLock;

use filter_common::apikey::{ENV_MAX, PREFIX, is_base62};

use super::model::{KeyRef, UserStatus};
use super::{KeyStore, Result, StoreError};

/// The result of a change that was made.
pub const OK: &str = "ok";

/// What stands in an entry where a full key was given (and no key id could be found for it).
pub const A_KEY: &str = "(a key)";

/// The longest text field an entry keeps, in characters (longer text is cut, with `…`).
pub const MAX_FIELD_CHARS: usize = 200;

/// How many entries a read returns when the caller does not say.
pub const DEFAULT_LIMIT: usize = 1000;

/// The most entries one read returns.
pub const MAX_LIMIT: usize = 100_000;

/// The shortest run of base62 after `ef_<env>_` that counts as (part of) a key: enough to
/// matter, far more than a word that merely starts with `ef_`.
const KEYISH_BODY: usize = 12;

/// What was done. Stored as its [`Action::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `keys create` / `POST /v1/keys`.
    KeyCreate,
    /// `keys revoke`.
    KeyRevoke,
    /// `keys rotate`.
    KeyRotate,
    /// `keys approve`.
    KeyApprove,
    /// `keys credits` (`--set` or `--add`).
    KeyCredits,
    /// `users suspend`.
    UserSuspend,
    /// `users activate`.
    UserActivate,
    /// `users delete`.
    UserDelete,
    /// `allow add`.
    AllowAdd,
    /// `allow remove`.
    AllowRemove,
    /// `deny add`.
    DenyAdd,
    /// `deny remove`.
    DenyRemove,
    /// `POST /v1/reload` or `SIGHUP`: the config file read again (the object is its path).
    ConfigReload,
}

impl Action {
    /// Every action.
    pub const ALL: [Self; 13] = [
        Self::KeyCreate,
        Self::KeyRevoke,
        Self::KeyRotate,
        Self::KeyApprove,
        Self::KeyCredits,
        Self::UserSuspend,
        Self::UserActivate,
        Self::UserDelete,
        Self::AllowAdd,
        Self::AllowRemove,
        Self::DenyAdd,
        Self::DenyRemove,
        Self::ConfigReload,
    ];

    /// The stored and printed name, `object.verb`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreate => "key.create",
            Self::KeyRevoke => "key.revoke",
            Self::KeyRotate => "key.rotate",
            Self::KeyApprove => "key.approve",
            Self::KeyCredits => "key.credits",
            Self::UserSuspend => "user.suspend",
            Self::UserActivate => "user.activate",
            Self::UserDelete => "user.delete",
            Self::AllowAdd => "allow.add",
            Self::AllowRemove => "allow.remove",
            Self::DenyAdd => "deny.add",
            Self::DenyRemove => "deny.remove",
            Self::ConfigReload => "config.reload",
        }
    }

    /// The action that sets a user to `status`.
    #[must_use]
    pub const fn user_status(status: UserStatus) -> Self {
        match status {
            UserStatus::Active => Self::UserActivate,
            UserStatus::Suspended => Self::UserSuspend,
            UserStatus::Deleted => Self::UserDelete,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a change: the admin token's holder and where they called from
/// (`admin@127.0.0.1`), or a local user of the CLI (`cli:alice`, `cli:root (sudo alice)`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Actor(String);

impl Actor {
    /// The holder of the admin token (there is one token).
    pub const ADMIN: &'static str = "admin";

    /// The admin token's holder calling from `peer` (when known). `for_whom` is what the
    /// caller says it acts for (the CLI sends its local user): kept, marked as its claim, when
    /// it is short printable text.
    #[must_use]
    pub fn admin(peer: Option<IpAddr>, for_whom: Option<&str>) -> Self {
        let mut s = String::from(Self::ADMIN);
        if let Some(ip) = peer {
            s.push('@');
            s.push_str(&ip.to_canonical().to_string());
        }
        if let Some(claim) = for_whom.filter(|c| is_plain_claim(c)) {
            s.push_str(" for ");
            s.push_str(claim);
        }
        Self(s)
    }

    /// The daemon's auto-block, banning a source on its own (`autoblock`).
    #[must_use]
    pub fn autoblock() -> Self {
        Self("autoblock".to_owned())
    }

    /// Whoever sent the daemon `signal` (`SIGHUP`): the signal does not say who.
    #[must_use]
    pub fn signal(signal: &str) -> Self {
        Self(format!("signal:{signal}"))
    }

    /// A local user of the CLI: `cli:<user>`, and `cli:root (sudo alice)` under sudo.
    #[must_use]
    pub fn cli(user: &str, sudo_user: Option<&str>) -> Self {
        match sudo_user.filter(|s| !s.is_empty() && *s != user) {
            Some(by) => Self(format!("cli:{user} (sudo {by})")),
            None => Self(format!("cli:{user}")),
        }
    }

    /// The actor as stored.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a claimed actor is short text of the characters an [`Actor::cli`] name uses.
fn is_plain_claim(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" ._-:@()+".contains(&b))
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Store-assigned, increasing (0 for an entry not stored yet).
    pub id: u64,
    /// When (unix seconds).
    pub at: i64,
    /// Who ([`Actor`]).
    pub actor: String,
    /// What ([`Action::as_str`]; a newer build may have written names this one does not know).
    pub action: String,
    /// What it was done to: a key id, a user name, a CIDR or source, `tenant/user` for a
    /// refused create, or [`A_KEY`].
    pub object: String,
    /// [`OK`], or the error that refused it.
    pub result: String,
    /// The host that made the change (fleet mode: which edge).
    pub host: String,
}

impl AuditEntry {
    /// An entry made on this host, its text made valid by [`clean`].
    #[must_use]
    pub fn new(at: i64, actor: &Actor, action: Action, object: &str, result: &str) -> Self {
        Self {
            id: 0,
            at,
            actor: clean(actor.as_str()),
            action: action.as_str().to_owned(),
            object: clean(object),
            result: clean(result),
            host: clean(this_host()),
        }
    }

    /// A change that was made.
    #[must_use]
    pub fn ok(at: i64, actor: &Actor, action: Action, object: &str) -> Self {
        Self::new(at, actor, action, object, OK)
    }

    /// A change that was refused or failed with `error` (whose text must not hold a key; one
    /// that does is masked anyway).
    #[must_use]
    pub fn failed(
        at: i64,
        actor: &Actor,
        action: Action,
        object: &str,
        error: &dyn fmt::Display,
    ) -> Self {
        Self::new(at, actor, action, object, &error.to_string())
    }

    /// Whether the change was made.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.result == OK
    }
}

/// Text as an entry keeps it: anything shaped like a key (`ef_<env>_` and a run of base62)
/// replaced by [`A_KEY`], control characters by `?`, cut to [`MAX_FIELD_CHARS`].
#[must_use]
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_FIELD_CHARS * 2));
    let mut rest = text;
    while let Some(i) = rest.find(PREFIX) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        match keyish_len(tail) {
            Some(n) => {
                out.push_str(A_KEY);
                rest = &tail[n..];
            }
            None => {
                out.push_str(PREFIX);
                rest = &tail[PREFIX.len()..];
            }
        }
    }
    out.push_str(rest);
    let mut kept: String = out
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_FIELD_CHARS + 1)
        .collect();
    if kept.chars().count() > MAX_FIELD_CHARS {
        kept = kept.chars().take(MAX_FIELD_CHARS - 1).collect();
        kept.push('…');
    }
    kept
}

/// The length of the key-shaped text at the start of `s` (which starts with `ef_`), if any.
fn keyish_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = PREFIX.len();
    let env_start = i;
    while i < b.len() && b[i].is_ascii_lowercase() && i - env_start < ENV_MAX {
        i += 1;
    }
    if i == env_start || b.get(i) != Some(&b'_') {
        return None;
    }
    i += 1;
    let body_start = i;
    while i < b.len() && is_base62(b[i]) {
        i += 1;
    }
    (i - body_start >= KEYISH_BODY).then_some(i)
}

/// Whether `e` may be stored: every field set, an `object.verb` action, text as [`clean`]
/// leaves it (bounded, no key, no control character).
///
/// # Errors
/// [`StoreError::BadAuditEntry`] naming the first broken rule.
pub fn check(e: &AuditEntry) -> Result<()> {
    let bad = |what: &'static str| Err(StoreError::BadAuditEntry(what));
    if e.at < 0 {
        return bad("time before 1970");
    }
    let words: Vec<&str> = e.action.split('.').collect();
    if words.len() != 2
        || words
            .iter()
            .any(|w| w.is_empty() || !w.bytes().all(|b| b.is_ascii_lowercase()))
    {
        return bad("action is not `object.verb`");
    }
    let fields: [(&str, Option<&'static str>, &'static str); 4] = [
        (
            &e.actor,
            Some("empty actor"),
            "actor holds a key, a control character or too much text",
        ),
        (
            &e.object,
            Some("empty object"),
            "object holds a key, a control character or too much text",
        ),
        (
            &e.result,
            Some("empty result"),
            "result holds a key, a control character or too much text",
        ),
        (
            &e.host,
            None,
            "host holds a key, a control character or too much text",
        ),
    ];
    for (field, if_empty, if_unclean) in fields {
        if let Some(what) = if_empty.filter(|_| field.is_empty()) {
            return bad(what);
        }
        if clean(field) != field {
            return bad(if_unclean);
        }
    }
    Ok(())
}

/// The object for a key named by `arg` (an id, or the full key): the id as given, the id of
/// the key `arg` is when the store has it, else [`A_KEY`]; never the key.
#[must_use]
pub fn key_object(store: &dyn KeyStore, arg: &str) -> String {
    match KeyRef::from_arg(arg) {
        KeyRef::Id(id) => clean(id),
        key @ KeyRef::Hash(_) => match store.find_key(key) {
            Ok(Some(v)) => v.key.id,
            _ => A_KEY.to_owned(),
        },
    }
}

/// The object of a refused `keys create`: `tenant/user`.
#[must_use]
pub fn new_key_object(tenant: &str, user: &str) -> String {
    format!("{tenant}/{user}")
}

/// The result text for a refused store change: its code and message (never a key: store
/// errors name keys by id only).
#[must_use]
pub fn store_failure(e: &StoreError) -> String {
    format!("{}: {e}", e.code())
}

/// Runs one change on `store` as `by`: a change that is made records its entry in its own
/// transaction (see [`KeyStore::act_as`]); one that is refused is recorded afterwards as
/// `action` on the object `object` names, with the error as the result. A failure to record the
/// refusal is logged; the change's own error is returned either way.
///
/// # Errors
/// Whatever `change` returns.
pub fn audited<T>(
    store: &mut dyn KeyStore,
    by: &Actor,
    action: Action,
    object: &dyn Fn(&dyn KeyStore) -> String,
    now: i64,
    change: impl FnOnce(&mut dyn KeyStore) -> Result<T>,
) -> Result<T> {
    store.act_as(Some(by.clone()));
    let out = change(&mut *store);
    store.act_as(None);
    if let Err(e) = &out {
        let entry = AuditEntry::new(now, by, action, &object(&*store), &store_failure(e));
        match store.record_audit(&entry) {
            Ok(()) => {}
            // A store that cannot take changes has said so loudly already.
            Err(not @ StoreError::Unavailable(_)) => {
                tracing::debug!(error = %not, action = %action, "could not record a refused change in the audit trail");
            }
            Err(not) => {
                tracing::warn!(error = %not, action = %action, "could not record a refused change in the audit trail");
            }
        }
    }
    out
}

/// This machine's host name (once per process), or `""` when it has none.
#[must_use]
pub fn this_host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .map(|h| clean(&h))
            .unwrap_or_default()
    })
}

/// How many entries to read: `asked` (default [`DEFAULT_LIMIT`]) within 1..=[`MAX_LIMIT`].
#[must_use]
pub fn limit(asked: Option<usize>) -> usize {
    asked.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ef_live_0123456789abcdefghijABCDEFGHIJ012345";

    #[test]
    fn keys_never_survive_cleaning() {
        assert_eq!(clean(KEY), A_KEY);
        assert_eq!(
            clean(&format!("no key {KEY}, really")),
            "no key (a key), really"
        );
        assert_eq!(
            clean("ef_live_0123456789ab"),
            A_KEY,
            "a long part is masked"
        );
        for kept in ["ef_", "ef_live_abc", "chef_x", "ef__x", "ef_live"] {
            assert_eq!(clean(kept), kept);
        }
        assert_eq!(clean("a\u{1b}[31mb\n"), "a?[31mb?");
        let long = "x".repeat(MAX_FIELD_CHARS + 5);
        assert_eq!(clean(&long).chars().count(), MAX_FIELD_CHARS);
        assert!(clean(&long).ends_with('…'));
        assert_eq!(clean(&clean(&long)), clean(&long), "cleaning is stable");
    }

    #[test]
    fn entries_are_built_valid_and_checked() {
        let by = Actor::cli("root", Some("alice"));
        assert_eq!(by.as_str(), "cli:root (sudo alice)");
        assert_eq!(Actor::cli("alice", Some("alice")).as_str(), "cli:alice");
        let e = AuditEntry::failed(5, &by, Action::KeyRevoke, KEY, &format!("no {KEY}"));
        assert_eq!(
            (e.object.as_str(), e.result.as_str()),
            (A_KEY, "no (a key)")
        );
        assert!(check(&e).is_ok());
        assert!(!e.is_ok());
        let mut bad = AuditEntry::ok(5, &by, Action::AllowAdd, "10.0.0.0/8");
        assert!(check(&bad).is_ok() && bad.is_ok());
        bad.result = KEY.into();
        assert!(check(&bad).is_err());
        bad.result = OK.into();
        bad.action = "Key Create".into();
        assert!(check(&bad).is_err());
        bad.action = "key.create".into();
        bad.actor = String::new();
        assert!(check(&bad).is_err());
        bad.actor = "x".into();
        bad.at = -1;
        assert!(check(&bad).is_err());
        for a in Action::ALL {
            assert!(check(&AuditEntry::ok(0, &by, a, "o")).is_ok(), "{a}");
        }
    }

    #[test]
    fn admin_actors_name_the_address_and_only_a_plain_claim() {
        let v4 = Some(IpAddr::from([127, 0, 0, 1]));
        assert_eq!(Actor::admin(v4, None).as_str(), "admin@127.0.0.1");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(Actor::admin(Some(mapped), None).as_str(), "admin@10.1.2.3");
        assert_eq!(Actor::admin(None, None).as_str(), "admin");
        assert_eq!(
            Actor::admin(v4, Some("cli:root (sudo alice)")).as_str(),
            "admin@127.0.0.1 for cli:root (sudo alice)"
        );
        for odd in ["", "a\nb", "x\u{1b}", &"y".repeat(65), "a;b"] {
            assert_eq!(Actor::admin(v4, Some(odd)).as_str(), "admin@127.0.0.1");
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None), DEFAULT_LIMIT);
        assert_eq!(limit(Some(0)), 1);
        assert_eq!(limit(Some(usize::MAX)), MAX_LIMIT);
    }
}
