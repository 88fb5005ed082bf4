//! The per-shard key index: key hash → `Arc<KeyEntry>`. Entries are immutable (but for their
//! atomic rate bucket) and shared by every shard; each shard owns only its index and its view
//! of which users are inactive, so the hot path takes no lock.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use ahash::RandomState;
use hashbrown::HashTable;
use ipnet::IpNet;
use subtle::ConstantTimeEq;

use super::credits::Wallet;
use super::ratelimit::{Bucket, Limit};
use crate::names::{Scope, TenantName, UserName};
use crate::store::{KeyHash, KeyRecord, KeyStatus, UserStatus};

/// A user as the cache knows it (one per user, shared by all their keys). Its names are
/// valid by type: the proxy writes them into the request it forwards.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UserInfo {
    /// Store id of the user.
    pub id: i64,
    /// User name.
    pub name: UserName,
    /// Tenant name.
    pub tenant: TenantName,
}

/// What a key may do; interned, so keys with the same scopes, networks and limit share one.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Scopes granted.
    pub scopes: Box<[Scope]>,
    /// Allowed client networks; empty = any.
    pub cidrs: Box<[IpNet]>,
    /// Token bucket shape.
    pub limit: Option<Limit>,
}

impl Policy {
    /// Whether this policy is the one `rec` describes.
    #[must_use]
    pub fn matches(&self, rec: &KeyRecord) -> bool {
        self.scopes.len() == rec.scopes.len()
            && self.scopes.iter().zip(&rec.scopes).all(|(a, b)| **a == **b)
            && *self.cidrs == *rec.allow_cidrs
            && self.limit == rec.rate.map(|r| Limit::new(r.per_sec, r.burst))
    }
}

/// A key's user and policy (interned per pair, so an entry holds one pointer for both).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The user.
    pub user: Arc<UserInfo>,
    /// The policy.
    pub policy: Arc<Policy>,
}

impl Owner {
    /// Store id of the user.
    #[must_use]
    pub fn user_id(&self) -> i64 {
        self.user.id
    }

    /// User name.
    #[must_use]
    pub fn user(&self) -> &UserName {
        &self.user.name
    }

    /// Tenant name.
    #[must_use]
    pub fn tenant(&self) -> &TenantName {
        &self.user.tenant
    }

    /// Scopes granted.
    #[must_use]
    pub fn scopes(&self) -> &[Scope] {
        &self.policy.scopes
    }

    /// Allowed client networks; empty = any.
    #[must_use]
    pub fn cidrs(&self) -> &[IpNet] {
        &self.policy.cidrs
    }

    /// Token bucket shape.
    #[must_use]
    pub fn limit(&self) -> Option<Limit> {
        self.policy.limit
    }

    /// Whether `addr` may use keys of this owner.
    #[must_use]
    pub fn allows(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        let cidrs = self.cidrs();
        cidrs.is_empty() || cidrs.iter().any(|n| n.contains(&addr))
    }

    /// Whether the owner's keys carry `scope`.
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().iter().any(|s| s.as_str() == scope)
    }
}

/// Per-key state made on first use (most of a million loaded keys never need it): the shared
/// public id string and the host-wide rate bucket.
#[derive(Debug)]
struct KeyRuntime {
    key_id: Arc<str>,
    bucket: Bucket,
}

/// Unix seconds squeezed into `u32` (until 2106), saturating.
fn secs32(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

/// One key as the edge sees it. Built once per change and shared by all shards.
/// `Debug` shows the public id and state only.
pub struct KeyEntry {
    hash: [u8; 32],
    id: [u8; 12],
    not_before: u32,
    expires_at: u32,
    revoked_at: u32,
    grace_until: u32,
    status: KeyStatus,
    rotated: bool,
    owner: Arc<Owner>,
    /// A usage-limited key's credits on this host (one wallet per key, whatever replaced the
    /// entry).
    wallet: Option<Arc<Wallet>>,
    runtime: OnceLock<Box<KeyRuntime>>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field(
                "id",
                &format_args!("key_{}", String::from_utf8_lossy(&self.id)),
            )
            .field("status", &self.status)
            .field("user", self.owner.user())
            .finish_non_exhaustive()
    }
}

impl KeyEntry {
    /// Builds an entry from a stored record and its (interned) owner.
    #[must_use]
    pub fn new(rec: &KeyRecord, owner: Arc<Owner>) -> Self {
        Self::with_wallet(rec, owner, None)
    }

    /// [`KeyEntry::new`] for a usage-limited key, spending from `wallet`.
    #[must_use]
    pub fn with_wallet(rec: &KeyRecord, owner: Arc<Owner>, wallet: Option<Arc<Wallet>>) -> Self {
        let mut id = [b'0'; 12];
        let tail = rec.id.strip_prefix("key_").unwrap_or(&rec.id).as_bytes();
        let n = tail.len().min(12);
        id[..n].copy_from_slice(&tail[..n]);
        Self {
            hash: rec.hash.0,
            id,
            not_before: rec.not_before.map_or(0, secs32),
            expires_at: rec.expires_at.map_or(u32::MAX, secs32),
            revoked_at: rec.revoked_at.map_or(0, secs32),
            grace_until: rec.grace_until.map_or(0, secs32),
            status: rec.status,
            rotated: rec.rotated_to.is_some(),
            owner,
            wallet,
            runtime: OnceLock::new(),
        }
    }

    /// A usage-limited key's credits on this host.
    #[must_use]
    pub fn wallet(&self) -> Option<&Wallet> {
        self.wallet.as_deref()
    }

    /// SHA-256 of the key.
    #[must_use]
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// Whether this entry's hash equals `hash`, in constant time.
    #[must_use]
    pub fn hash_is(&self, hash: &[u8; 32]) -> bool {
        // XOR-OR the four words (no data-dependent branch), then one constant-time compare.
        let mut acc = 0u64;
        for (a, b) in self.hash.chunks_exact(8).zip(hash.chunks_exact(8)) {
            let a = u64::from_le_bytes(a.try_into().unwrap_or([0; 8]));
            let b = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            acc |= a ^ b;
        }
        acc.ct_eq(&0).into()
    }

    fn runtime(&self) -> &KeyRuntime {
        self.runtime.get_or_init(|| {
            let mut s = String::with_capacity(16);
            s.push_str("key_");
            s.extend(self.id.iter().map(|&b| char::from(b)));
            Box::new(KeyRuntime {
                key_id: Arc::from(s),
                bucket: Bucket::default(),
            })
        })
    }

    /// Carries the rate budget (and id string) of `old`, the record this one replaces, when
    /// `old` was in use. The first shard to apply the change does it; the rest find it done.
    pub fn continue_from(&self, old: &KeyEntry) {
        if let Some(rt) = old.runtime.get() {
            self.runtime.get_or_init(|| {
                Box::new(KeyRuntime {
                    key_id: Arc::clone(&rt.key_id),
                    bucket: Bucket::continuing(&rt.bucket),
                })
            });
        }
    }

    /// The public id (`key_…`), made on first use and then shared.
    pub fn key_id(&self) -> &Arc<str> {
        &self.runtime().key_id
    }

    /// Approval state.
    #[must_use]
    pub fn status(&self) -> KeyStatus {
        self.status
    }

    /// Not valid before (unix seconds, 0 = always).
    #[must_use]
    pub fn not_before(&self) -> i64 {
        i64::from(self.not_before)
    }

    /// Not valid after (unix seconds), if it expires.
    #[must_use]
    pub fn expires_at(&self) -> Option<i64> {
        (self.expires_at != u32::MAX).then_some(i64::from(self.expires_at))
    }

    /// When it was revoked.
    #[must_use]
    pub fn revoked_at(&self) -> Option<i64> {
        (self.status == KeyStatus::Revoked).then_some(i64::from(self.revoked_at))
    }

    /// For a rotated key, the end of its grace period.
    #[must_use]
    pub fn grace_until(&self) -> Option<i64> {
        self.rotated.then_some(i64::from(self.grace_until))
    }

    /// Who owns it and what it may do.
    #[must_use]
    pub fn owner(&self) -> &Arc<Owner> {
        &self.owner
    }

    /// The key's host-wide rate bucket.
    pub fn bucket(&self) -> &Bucket {
        &self.runtime().bucket
    }
}

/// A change for a shard's cache, built once by the control side and sent to every shard.
#[derive(Debug, Clone)]
pub enum CacheUpdate {
    /// Insert or replace a key.
    Upsert(Arc<KeyEntry>),
    /// Forget a key (its stored row can no longer be served, e.g. its names break their rule).
    Remove(KeyHash),
    /// A user's state changed.
    User {
        /// Store id of the user.
        user_id: i64,
        /// New state.
        status: UserStatus,
    },
}

/// One shard's index. Owned by the shard; only the shard writes it.
pub struct ShardCache {
    keys: HashTable<Arc<KeyEntry>>,
    hasher: RandomState,
    /// Users that are not active (few): user id → state.
    inactive: hashbrown::HashMap<i64, UserStatus, RandomState>,
}

impl std::fmt::Debug for ShardCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCache")
            .field("keys", &self.keys.len())
            .field("inactive_users", &self.inactive.len())
            .finish()
    }
}

impl ShardCache {
    /// An index over `entries` with `inactive` users.
    #[must_use]
    pub fn new(entries: &[Arc<KeyEntry>], inactive: &[(i64, UserStatus)]) -> Self {
        let hasher = RandomState::new();
        let mut keys = HashTable::with_capacity(entries.len());
        for e in entries {
            let h = hasher.hash_one(e.hash());
            keys.insert_unique(h, Arc::clone(e), |x| hasher.hash_one(x.hash()));
        }
        let mut cache = Self {
            keys,
            hasher,
            inactive: hashbrown::HashMap::with_hasher(RandomState::new()),
        };
        for &(user_id, status) in inactive {
            cache.apply(&CacheUpdate::User { user_id, status });
        }
        cache
    }

    /// The entry whose hash is `hash`; the full hash is compared in constant time.
    #[inline]
    #[must_use]
    pub fn get(&self, hash: &[u8; 32]) -> Option<&KeyEntry> {
        let h = self.hasher.hash_one(hash);
        self.keys.find(h, |e| e.hash_is(hash)).map(|e| &**e)
    }

    /// The state of the user `user_id` as this shard knows it.
    #[inline]
    #[must_use]
    pub fn user_status(&self, user_id: i64) -> UserStatus {
        if self.inactive.is_empty() {
            return UserStatus::Active;
        }
        self.inactive
            .get(&user_id)
            .copied()
            .unwrap_or(UserStatus::Active)
    }

    /// Number of keys indexed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is indexed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Applies one change.
    pub fn apply(&mut self, update: &CacheUpdate) {
        match update {
            CacheUpdate::Upsert(e) => {
                let hasher = &self.hasher;
                let h = hasher.hash_one(e.hash());
                match self
                    .keys
                    .entry(h, |x| x.hash_is(e.hash()), |x| hasher.hash_one(x.hash()))
                {
                    hashbrown::hash_table::Entry::Occupied(mut o) => {
                        e.continue_from(o.get());
                        *o.get_mut() = Arc::clone(e);
                    }
                    hashbrown::hash_table::Entry::Vacant(v) => {
                        v.insert(Arc::clone(e));
                    }
                }
            }
            CacheUpdate::Remove(hash) => {
                // Hashed as `Upsert` hashes it: the 32 bytes, by reference.
                let bytes: &[u8; 32] = &hash.0;
                let h = self.hasher.hash_one(bytes);
                if let Ok(found) = self.keys.find_entry(h, |x| x.hash_is(bytes)) {
                    found.remove();
                }
            }
            CacheUpdate::User { user_id, status } => {
                if *status == UserStatus::Active {
                    self.inactive.remove(user_id);
                } else {
                    self.inactive.insert(*user_id, *status);
                }
            }
        }
    }
}
