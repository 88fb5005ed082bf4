//! The decision chain, SPEC §5 order: the first failing check answers. Pure: no I/O, no
//! allocation on the allow path. Each check is its own function so `explain` can run them all.

use std::net::IpAddr;

use filter_common::apikey::{self, FormatError, KeyError, ParsedKey};
use sha2::{Digest, Sha256};

use super::cache::{KeyEntry, ShardCache};
use super::credits::Dry;
use super::extract::Extracted;
use super::rules::{Place, RouteRules};
use crate::codes::ErrorCode;
use crate::gate::RateInfo;
use crate::store::credits::clock_offset as credit_clock_offset;
use crate::store::{KeyStatus, UserStatus};

/// The time a decision is made at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix seconds (validity checks).
    pub secs: i64,
    /// Unix nanoseconds (rate limits).
    pub nanos: u64,
}

impl Now {
    /// The system clock.
    #[must_use]
    pub fn system() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// A fixed time (tests, `explain --at`).
    #[must_use]
    pub fn at_secs(secs: i64) -> Self {
        Self {
            secs,
            nanos: u64::try_from(secs).unwrap_or(0) * 1_000_000_000,
        }
    }
}

/// Why a request is refused. Borrowed, allocation-free; [`super::deny`] renders it.
#[derive(Debug, Clone, Copy)]
pub enum Refusal<'a> {
    /// No key anywhere.
    Missing,
    /// The key is only where this route does not accept it.
    WrongPlace(Place),
    /// Not the key format.
    Malformed(FormatError),
    /// Checksum fails.
    Checksum,
    /// The key is for another environment (`key_env`).
    WrongEnvironment {
        /// The key's environment.
        key_env: EnvName,
    },
    /// Not in the cache.
    Unknown,
    /// Revoked, or rotated and past its grace.
    Revoked(&'a KeyEntry),
    /// Before `not_before`.
    NotYetValid(&'a KeyEntry),
    /// After `expires_at`.
    Expired(&'a KeyEntry),
    /// The user is suspended.
    UserSuspended(&'a KeyEntry),
    /// The user is deleted.
    UserDeleted(&'a KeyEntry),
    /// Awaiting approval.
    Pending(&'a KeyEntry),
    /// The client address is outside the key's networks.
    IpNotAllowed(&'a KeyEntry),
    /// The key lacks `scope`.
    ScopeMissing {
        /// The key.
        entry: &'a KeyEntry,
        /// The first scope the route needs that the key lacks.
        scope: &'a str,
    },
    /// The bucket is empty.
    RateLimited {
        /// The key.
        entry: &'a KeyEntry,
        /// `Retry-After` / `RateLimit-*`.
        rate: RateInfo,
    },
    /// The key's credits cannot pay for this route.
    CreditsExhausted {
        /// The key.
        entry: &'a KeyEntry,
        /// What the route costs.
        cost: u64,
        /// Why: spent (and when they refill), or a lease on its way.
        dry: Dry,
        /// The refill clock's time of the decision (unix seconds).
        at: i64,
    },
}

impl Refusal<'_> {
    /// The answer code.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Missing => ErrorCode::MissingKey,
            Self::WrongPlace(_) => ErrorCode::KeyInWrongPlace,
            Self::Malformed(_) => ErrorCode::MalformedKey,
            Self::Checksum => ErrorCode::KeyChecksumMismatch,
            Self::WrongEnvironment { .. } => ErrorCode::WrongEnvironment,
            Self::Unknown => ErrorCode::UnknownKey,
            Self::Revoked(_) => ErrorCode::KeyRevoked,
            Self::NotYetValid(_) => ErrorCode::KeyNotYetValid,
            Self::Expired(_) => ErrorCode::KeyExpired,
            Self::UserSuspended(_) => ErrorCode::UserSuspended,
            Self::UserDeleted(_) => ErrorCode::UserDeleted,
            Self::Pending(_) => ErrorCode::SubscriptionPending,
            Self::IpNotAllowed(_) => ErrorCode::IpNotAllowed,
            Self::ScopeMissing { .. } => ErrorCode::ScopeMissing,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::CreditsExhausted { .. } => ErrorCode::CreditsExhausted,
        }
    }

    /// The key the refusal is about, when known.
    #[must_use]
    pub fn entry(&self) -> Option<&KeyEntry> {
        match *self {
            Self::Revoked(e)
            | Self::NotYetValid(e)
            | Self::Expired(e)
            | Self::UserSuspended(e)
            | Self::UserDeleted(e)
            | Self::Pending(e)
            | Self::IpNotAllowed(e)
            | Self::ScopeMissing { entry: e, .. }
            | Self::RateLimited { entry: e, .. }
            | Self::CreditsExhausted { entry: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// A key's environment (`[a-z]{1,8}`), held inline: a refusal outlives a key decoded on the
/// stack (see [`Extracted::Decoded`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EnvName {
    buf: [u8; apikey::ENV_MAX],
    len: u8,
}

impl EnvName {
    /// The environment of `key`.
    #[must_use]
    pub fn of(key: &ParsedKey<'_>) -> Self {
        let env = key.env().as_bytes();
        let mut buf = [0; apikey::ENV_MAX];
        let len = env.len().min(apikey::ENV_MAX);
        buf[..len].copy_from_slice(&env[..len]);
        Self {
            buf,
            len: u8::try_from(len).unwrap_or(0),
        }
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Display for EnvName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for EnvName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// The outcome: an allowed key borrowed from the cache (`'c`), a refusal that may also
/// borrow from the route's rules (`'r`, which may be shorter-lived than the cache).
#[derive(Debug, Clone, Copy)]
pub enum Decision<'c, 'r> {
    /// Forward, as this key; with what is left of its rate limit, when it has one.
    Allow(&'c KeyEntry, Option<RateInfo>),
    /// Answer with an error.
    Deny(Refusal<'r>),
}

/// Format and checksum (no store lookup).
///
/// # Errors
/// `Malformed` or `Checksum`.
#[inline]
pub fn check_format(raw: &str) -> Result<ParsedKey<'_>, Refusal<'static>> {
    apikey::parse(raw).map_err(|e| match e {
        KeyError::Format(f) => Refusal::Malformed(f),
        KeyError::ChecksumMismatch => Refusal::Checksum,
    })
}

/// The key's environment is the edge's.
///
/// # Errors
/// `WrongEnvironment`.
#[inline]
pub fn check_environment(key: &ParsedKey<'_>, edge_env: &str) -> Result<(), Refusal<'static>> {
    if key.env() == edge_env {
        Ok(())
    } else {
        Err(Refusal::WrongEnvironment {
            key_env: EnvName::of(key),
        })
    }
}

/// SHA-256 of the key, the cache's index.
#[inline]
#[must_use]
pub fn key_hash(key: &ParsedKey<'_>) -> [u8; 32] {
    Sha256::digest(key.secret().as_bytes()).into()
}

/// Looks the key up.
///
/// # Errors
/// `Unknown`.
#[inline]
pub fn lookup<'a>(cache: &'a ShardCache, hash: &[u8; 32]) -> Result<&'a KeyEntry, Refusal<'a>> {
    cache.get(hash).ok_or(Refusal::Unknown)
}

/// Not revoked, and not rotated past its grace.
///
/// # Errors
/// `Revoked`.
pub fn check_revoked(e: &KeyEntry, now: Now) -> Result<(), Refusal<'_>> {
    let past_grace = e.grace_until().is_some_and(|g| now.secs >= g);
    if e.status() == KeyStatus::Revoked || past_grace {
        return Err(Refusal::Revoked(e));
    }
    Ok(())
}

/// Not before `not_before`.
///
/// # Errors
/// `NotYetValid`.
pub fn check_not_before(e: &KeyEntry, now: Now) -> Result<(), Refusal<'_>> {
    if now.secs < e.not_before() {
        return Err(Refusal::NotYetValid(e));
    }
    Ok(())
}

/// Not after `expires_at`.
///
/// # Errors
/// `Expired`.
pub fn check_expiry(e: &KeyEntry, now: Now) -> Result<(), Refusal<'_>> {
    if e.expires_at().is_some_and(|x| now.secs >= x) {
        return Err(Refusal::Expired(e));
    }
    Ok(())
}

/// The key's user is active.
///
/// # Errors
/// `UserSuspended` or `UserDeleted`.
pub fn check_user<'a>(cache: &ShardCache, e: &'a KeyEntry) -> Result<(), Refusal<'a>> {
    match cache.user_status(e.owner().user_id()) {
        UserStatus::Active => Ok(()),
        UserStatus::Suspended => Err(Refusal::UserSuspended(e)),
        UserStatus::Deleted => Err(Refusal::UserDeleted(e)),
    }
}

/// Approved.
///
/// # Errors
/// `Pending`.
pub fn check_approved(e: &KeyEntry) -> Result<(), Refusal<'_>> {
    if e.status() == KeyStatus::Pending {
        return Err(Refusal::Pending(e));
    }
    Ok(())
}

/// The client address is inside the key's networks.
///
/// # Errors
/// `IpNotAllowed`.
pub fn check_address(e: &KeyEntry, peer: IpAddr) -> Result<(), Refusal<'_>> {
    if e.owner().allows(peer) {
        Ok(())
    } else {
        Err(Refusal::IpNotAllowed(e))
    }
}

/// The key has every scope the route needs.
///
/// # Errors
/// `ScopeMissing` naming the first missing scope.
pub fn check_scopes<'r>(e: &'r KeyEntry, route: &'r RouteRules) -> Result<(), Refusal<'r>> {
    match route.scopes.iter().find(|s| !e.owner().has_scope(s)) {
        Some(scope) => Err(Refusal::ScopeMissing { entry: e, scope }),
        None => Ok(()),
    }
}

/// Takes a token from the key's host-wide bucket; what is left, when the key has a limit.
///
/// # Errors
/// `RateLimited`.
pub fn check_rate(e: &KeyEntry, now: Now) -> Result<Option<RateInfo>, Refusal<'_>> {
    match e.owner().limit() {
        Some(limit) => e
            .bucket()
            .take(&limit, now.nanos)
            .map(Some)
            .map_err(|rate| Refusal::RateLimited { entry: e, rate }),
        None => Ok(None),
    }
}

/// Spends the route's cost from the key's credits on this host, when the key is usage-limited.
///
/// # Errors
/// `CreditsExhausted`.
pub fn check_credits<'a>(e: &'a KeyEntry, route: &RouteRules, now: Now) -> Result<(), Refusal<'a>> {
    if let Some(w) = e.wallet() {
        w.take(route.cost)
            .map_err(|dry| Refusal::CreditsExhausted {
                entry: e,
                cost: route.cost,
                dry,
                at: now.secs.saturating_add(credit_clock_offset()),
            })?;
    }
    Ok(())
}

#[inline]
fn chain<'c: 'r, 'r>(
    cache: &'c ShardCache,
    route: &'r RouteRules,
    edge_env: &str,
    found: Extracted<'_>,
    peer: IpAddr,
    now: Now,
) -> Result<(&'c KeyEntry, Option<RateInfo>), Refusal<'r>> {
    let decoded;
    let raw = match found {
        Extracted::Missing => return Err(Refusal::Missing),
        Extracted::WrongPlace(p) => return Err(Refusal::WrongPlace(p)),
        Extracted::Refused(e) => return Err(Refusal::Malformed(e)),
        Extracted::Key { raw, .. } => raw,
        Extracted::Decoded(q) => {
            decoded = q;
            decoded.text().map_err(Refusal::Malformed)?
        }
    };
    let key = check_format(raw)?;
    check_environment(&key, edge_env)?;
    let e = lookup(cache, &key_hash(&key))?;
    check_revoked(e, now)?;
    check_not_before(e, now)?;
    check_expiry(e, now)?;
    check_user(cache, e)?;
    check_approved(e)?;
    check_address(e, peer)?;
    check_scopes(e, route)?;
    let rate = check_rate(e, now)?;
    check_credits(e, route, now)?;
    Ok((e, rate))
}

/// Runs the whole chain for one request.
#[inline]
#[must_use]
pub fn decide<'c: 'r, 'r>(
    cache: &'c ShardCache,
    route: &'r RouteRules,
    edge_env: &str,
    found: Extracted<'_>,
    peer: IpAddr,
    now: Now,
) -> Decision<'c, 'r> {
    match chain(cache, route, edge_env, found, peer, now) {
        Ok((e, rate)) => Decision::Allow(e, rate),
        Err(r) => Decision::Deny(r),
    }
}
