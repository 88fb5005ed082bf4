//! The store's records: tenants' users, keys (hash only, never the secret) and their states.

use std::fmt;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::credits::{Credits, Refill};

/// A user's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserStatus {
    /// Keys work.
    Active,
    /// Keys answer `USER_SUSPENDED` until activated again.
    Suspended,
    /// Keys answer `USER_DELETED`; final.
    Deleted,
}

impl UserStatus {
    /// The stored / printed name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
        }
    }

    /// Parses a stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }
}

/// A key's approval state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// Awaits `keys approve`.
    Pending,
    /// In use.
    Active,
    /// Revoked; final.
    Revoked,
}

impl KeyStatus {
    /// The stored / printed name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }

    /// Parses a stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// A user (unique name across the store) and its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Store row id.
    pub id: i64,
    /// User name.
    pub name: String,
    /// Tenant name.
    pub tenant: String,
    /// State.
    pub status: UserStatus,
}

/// A per-key token bucket: `per_sec` tokens a second, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Refill rate, requests per second.
    pub per_sec: u32,
    /// Bucket size.
    pub burst: u32,
}

/// A key as stored: everything but the secret, of which only the SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public id, `key_` + 12 base62.
    pub id: String,
    /// SHA-256 of the whole key string.
    pub hash: KeyHash,
    /// Environment (`live`, `test`, ...).
    pub env: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Not valid before (unix seconds).
    pub not_before: Option<i64>,
    /// Not valid after (unix seconds).
    pub expires_at: Option<i64>,
    /// Client addresses allowed; empty = any.
    pub allow_cidrs: Vec<IpNet>,
    /// Token bucket, if limited.
    pub rate: Option<RateLimit>,
    /// Credits, for a usage-limited key.
    pub credits: Option<Credits>,
    /// Approval state.
    pub status: KeyStatus,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// For a rotated key: works until then.
    pub grace_until: Option<i64>,
    /// For a rotated key: the id of its replacement.
    pub rotated_to: Option<String>,
    /// Creation time (unix seconds).
    pub created_at: i64,
}

/// A key with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    /// The key.
    pub key: KeyRecord,
    /// Its user (and tenant).
    pub user: User,
}

/// SHA-256 of a key string. `Debug` prints a short prefix only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a key string.
    #[must_use]
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A freshly made key string. Printed once by `keys create`/`rotate`; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a key string.
    #[must_use]
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The key itself: show it to the person who created it, nowhere else.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What `keys create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Tenant (created if new).
    pub tenant: String,
    /// User (created if new; must belong to `tenant`).
    pub user: String,
    /// Environment.
    pub env: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Not valid before.
    pub not_before: Option<i64>,
    /// Not valid after.
    pub expires_at: Option<i64>,
    /// Allowed client CIDRs; empty = any.
    pub allow_cidrs: Vec<IpNet>,
    /// Token bucket.
    pub rate: Option<RateLimit>,
    /// Credits to start with (a usage-limited key).
    pub credits: Option<u64>,
    /// How the credits refill (with `credits`).
    pub refill: Option<Refill>,
    /// Start as `pending` (needs `keys approve`).
    pub pending: bool,
}

impl NewKey {
    /// A key for `user` of `tenant` in environment `env`: no scopes, no validity window, any
    /// address, no rate limit, active. The `with_*` methods set the rest.
    #[must_use]
    pub fn new(tenant: impl Into<String>, user: impl Into<String>, env: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            user: user.into(),
            env: env.into(),
            scopes: Vec::new(),
            not_before: None,
            expires_at: None,
            allow_cidrs: Vec::new(),
            rate: None,
            credits: None,
            refill: None,
            pending: false,
        }
    }

    /// With these scopes.
    #[must_use]
    pub fn with_scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Not valid before `at` (unix seconds).
    #[must_use]
    pub fn with_not_before(mut self, at: i64) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Expiring at `at` (unix seconds).
    #[must_use]
    pub fn with_expiry(mut self, at: i64) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Usable only from these networks.
    #[must_use]
    pub fn with_cidrs(mut self, cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        self.allow_cidrs = cidrs.into_iter().collect();
        self
    }

    /// With a token bucket of `per_sec` requests per second and `burst`.
    #[must_use]
    pub fn with_rate(mut self, per_sec: u32, burst: u32) -> Self {
        self.rate = Some(RateLimit { per_sec, burst });
        self
    }

    /// Usage-limited: `credits` to spend, reset to the refill's amount at each of its periods.
    #[must_use]
    pub fn with_credits(mut self, credits: u64, refill: Option<Refill>) -> Self {
        self.credits = Some(credits);
        self.refill = refill;
        self
    }

    /// Created `pending` (needs `keys approve`).
    #[must_use]
    pub fn pending(mut self) -> Self {
        self.pending = true;
        self
    }
}

/// A created key: its record and, once, its secret.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The stored view.
    pub view: KeyView,
    /// The key string.
    pub secret: Secret,
}

/// How a command names a key: by public id, or by the full key (hashed for lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// `key_…`.
    Id(&'a str),
    /// The full key's hash.
    Hash(KeyHash),
}

impl<'a> KeyRef<'a> {
    /// `key_…` is an id; anything else is taken as the full key and hashed.
    #[must_use]
    pub fn from_arg(arg: &'a str) -> Self {
        if arg.starts_with("key_") {
            Self::Id(arg)
        } else {
            Self::Hash(KeyHash::of(arg))
        }
    }
}

/// What a change touched (the record's current state is read from the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeSubject {
    /// A key (by id).
    Key(String),
    /// A user (by name).
    User(String),
    /// A denylist ban (by source, as [`super::bans::source_text`] writes it).
    Ban(String),
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Store revision this change produced.
    pub revision: u64,
    /// Commit time (unix seconds).
    pub at: i64,
    /// What changed.
    pub subject: ChangeSubject,
}
