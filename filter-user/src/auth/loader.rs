//! Turns store records into shared cache entries: loads the whole store once (streaming, so
//! 1M keys never sit in memory twice), interns users and policies so keys share them, and
//! catches up on store changes "since revision R" for a running daemon.
//!
//! This is where stored text becomes the names the proxy forwards, so every row is checked
//! here ([`crate::names`], [`is_key_id`]) whoever wrote it: a key whose id, scopes, user name or
//! tenant name break their rule (a row written by hand, or by an older version) is
//! [`Refused`]: left out of the cache (it answers `UNKNOWN_KEY`) and logged by its id and the
//! rule, never with the offending text or the key.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use ahash::RandomState;
use hashbrown::{HashMap, HashTable};

use super::cache::{CacheUpdate, KeyEntry, Owner, Policy, UserInfo};
use super::credits::CreditBook;
use super::ratelimit::Limit;
use crate::names::{NameError, Scope, TenantName, UserName};
use crate::store::audit::clean;
use crate::store::ids::is_key_id;
use crate::store::{
    ChangeSubject, KeyRecord, KeyRef, KeyStore, KeyView, StoreError, User, UserStatus,
};

/// How many refused keys a load logs one by one; the rest are counted in one summary line.
const REFUSALS_LOGGED: usize = 20;

/// Why a stored key is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A name of the key (a scope) or of its owner (user or tenant name) breaks its rule.
    Name(NameError),
    /// The key's id is not `key_` and 12 base62 characters.
    KeyId,
}

impl Refused {
    /// The broken rule as a word: [`NameError::rule`], or `key_id`.
    #[must_use]
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Name(e) => e.rule(),
            Self::KeyId => "key_id",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(e) => write!(f, "its {e}"),
            Self::KeyId => f.write_str("its id is not `key_` and 12 base62 characters"),
        }
    }
}

impl From<NameError> for Refused {
    fn from(e: NameError) -> Self {
        Self::Name(e)
    }
}

/// The store's keys at one revision, ready to index.
#[derive(Default)]
pub struct KeySnapshot {
    /// Every key that may be served.
    pub entries: Vec<Arc<KeyEntry>>,
    /// Users that are not active.
    pub inactive: Vec<(i64, UserStatus)>,
    /// The store revision this reflects.
    pub revision: u64,
    /// Keys left out because a row breaks a rule ([`Refused`]).
    pub refused: usize,
}

/// Builds entries, sharing owners between keys; remembers the revision it has seen.
pub struct KeyLoader {
    hasher: RandomState,
    policies: HashTable<(u64, Arc<Policy>)>,
    users: HashMap<i64, Arc<UserInfo>, RandomState>,
    /// Users whose stored names break the rule, with the first one broken.
    refused_users: HashMap<i64, NameError, RandomState>,
    /// (user id, policy address) → owner.
    owners: HashMap<(i64, usize), Arc<Owner>, RandomState>,
    tenants: HashMap<Box<str>, TenantName, RandomState>,
    revision: u64,
    /// Keys refused so far.
    refusals: usize,
    /// The wallets of usage-limited keys, by id.
    credits: Arc<CreditBook>,
}

impl std::fmt::Debug for KeySnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySnapshot")
            .field("entries", &self.entries.len())
            .field("inactive", &self.inactive.len())
            .field("revision", &self.revision)
            .finish()
    }
}

impl std::fmt::Debug for KeyLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLoader")
            .field("users", &self.users.len())
            .field("policies", &self.policies.len())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Default for KeyLoader {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            policies: HashTable::new(),
            users: HashMap::with_hasher(RandomState::new()),
            refused_users: HashMap::with_hasher(RandomState::new()),
            owners: HashMap::with_hasher(RandomState::new()),
            tenants: HashMap::with_hasher(RandomState::new()),
            revision: 0,
            refusals: 0,
            credits: Arc::default(),
        }
    }
}

impl KeyLoader {
    /// Loads every key from `store`; a key whose row breaks a rule is left out and logged
    /// ([`Refused`]).
    ///
    /// # Errors
    /// Store failures.
    pub fn load(store: &dyn KeyStore) -> Result<(Self, KeySnapshot), StoreError> {
        let mut loader = Self::default();
        let mut snap = KeySnapshot::default();
        let mut missing_user = None;
        // Both visitors build into the loader, one after the other.
        let cell = RefCell::new(&mut loader);
        snap.revision = store.for_each_key(
            &mut |user| {
                if user.status != UserStatus::Active {
                    snap.inactive.push((user.id, user.status));
                }
                let mut l = cell.borrow_mut();
                if let Err(e) = l.user(user) {
                    l.refused_users.insert(user.id, e);
                }
            },
            &mut |key, user_id| {
                let mut l = cell.borrow_mut();
                let user = match l.users.get(&user_id).cloned() {
                    Some(user) => Ok(user),
                    None => match l.refused_users.get(&user_id) {
                        Some(e) => Err(Refused::Name(*e)),
                        None => {
                            missing_user = Some(clean(&key.id));
                            return;
                        }
                    },
                };
                match user.and_then(|u| l.entry_with(key, u)) {
                    Ok(e) => snap.entries.push(e),
                    Err(why) => l.refuse(&key.id, user_id, why, true),
                }
            },
        )?;
        if let Some(id) = missing_user {
            return Err(StoreError::Corrupt(format!("{id} has no user")));
        }
        snap.entries.shrink_to_fit();
        snap.refused = loader.refusals;
        if snap.refused > 0 {
            tracing::warn!(
                refused = snap.refused,
                loaded = snap.entries.len(),
                "{} stored key(s) break a name or id rule and are not served (docs/keys.md#names)",
                snap.refused
            );
        }
        loader.revision = snap.revision;
        Ok((loader, snap))
    }

    /// Counts and logs a refused key by its id (cleaned: the id itself may be what is wrong)
    /// and its user's id; never the offending text, never the key. A load logs the first
    /// [`REFUSALS_LOGGED`] and counts the rest; a catch-up logs each.
    fn refuse(&mut self, key_id: &str, user_id: i64, why: Refused, at_load: bool) {
        self.refusals += 1;
        if !at_load || self.refusals <= REFUSALS_LOGGED {
            tracing::warn!(
                key_id = %clean(key_id),
                user_id,
                rule = why.rule(),
                "stored key refused: {why}; it answers UNKNOWN_KEY until it is revoked or its row is fixed"
            );
        }
    }

    /// The store revision the loader has caught up to.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The wallets of the usage-limited keys loaded so far.
    #[must_use]
    pub fn credits(&self) -> &Arc<CreditBook> {
        &self.credits
    }

    /// A shared entry for `view`.
    ///
    /// # Errors
    /// [`Refused`] when the key's id or scopes, or its user's or tenant's name, break their rule.
    pub fn entry_for(&mut self, view: &KeyView) -> Result<Arc<KeyEntry>, Refused> {
        self.entry(&view.key, &view.user)
    }

    /// A shared entry for key `rec` of `user`.
    ///
    /// # Errors
    /// As [`KeyLoader::entry_for`].
    pub fn entry(&mut self, rec: &KeyRecord, user: &User) -> Result<Arc<KeyEntry>, Refused> {
        let user = self.user(user)?;
        self.entry_with(rec, user)
    }

    fn entry_with(
        &mut self,
        rec: &KeyRecord,
        user: Arc<UserInfo>,
    ) -> Result<Arc<KeyEntry>, Refused> {
        if !is_key_id(&rec.id) {
            return Err(Refused::KeyId);
        }
        let policy = self.policy(rec)?;
        // The policy's address identifies it while the loader holds it (it always does).
        let key = (user.id, Arc::as_ptr(&policy) as usize);
        let owner = Arc::clone(self.owners.entry(key).or_insert_with(|| {
            Arc::new(Owner {
                user: Arc::clone(&user),
                policy,
            })
        }));
        let wallet = rec.credits.map(|_| {
            let w = self.credits.wallet(&rec.id);
            // A record read again after a change: its stored credits may have changed too.
            w.store_changed();
            w
        });
        Ok(Arc::new(KeyEntry::with_wallet(rec, owner, wallet)))
    }

    fn policy(&mut self, rec: &KeyRecord) -> Result<Arc<Policy>, NameError> {
        let limit = rec.rate.map(|r| Limit::new(r.per_sec, r.burst));
        let h = self.hasher.hash_one((&rec.scopes, &rec.allow_cidrs, limit));
        if let Some((_, p)) = self.policies.find(h, |(_, p)| p.matches(rec)) {
            return Ok(Arc::clone(p));
        }
        let scopes = rec
            .scopes
            .iter()
            .map(|s| Scope::parse(s))
            .collect::<Result<_, _>>()?;
        let p = Arc::new(Policy {
            scopes,
            cidrs: rec.allow_cidrs.clone().into_boxed_slice(),
            limit,
        });
        self.policies
            .insert_unique(h, (h, Arc::clone(&p)), |(h, _)| *h);
        Ok(p)
    }

    /// The shared, checked form of `user`. A user whose stored names changed since it was
    /// first seen (only a hand edit does that) is checked again, and its owners forgotten.
    fn user(&mut self, user: &User) -> Result<Arc<UserInfo>, NameError> {
        if let Some(u) = self.users.get(&user.id) {
            if *u.name == *user.name && *u.tenant == *user.tenant {
                return Ok(Arc::clone(u));
            }
            self.users.remove(&user.id);
            self.owners.retain(|(id, _), _| *id != user.id);
        }
        let name = UserName::parse(&user.name)?;
        let tenant = match self.tenants.get(user.tenant.as_str()) {
            Some(t) => t.clone(),
            None => {
                let t = TenantName::parse(&user.tenant)?;
                self.tenants.insert(user.tenant.as_str().into(), t.clone());
                t
            }
        };
        self.refused_users.remove(&user.id);
        let u = Arc::new(UserInfo {
            id: user.id,
            name,
            tenant,
        });
        self.users.insert(user.id, Arc::clone(&u));
        Ok(u)
    }

    /// When the store's revision moved past ours, the cache updates that bring a shard up to
    /// it (empty when nothing changed).
    ///
    /// # Errors
    /// Store failures; the loader's revision then stays where it was.
    pub fn reload_if_revision_changed(
        &mut self,
        store: &dyn KeyStore,
    ) -> Result<Vec<CacheUpdate>, StoreError> {
        if store.revision()? == self.revision {
            return Ok(Vec::new());
        }
        let changes = store.changes_since(self.revision)?;
        let mut out = Vec::with_capacity(changes.len());
        let mut last = self.revision;
        for c in changes {
            match &c.subject {
                ChangeSubject::Key(id) => {
                    if let Some(view) = store.find_key(KeyRef::Id(id))? {
                        out.push(CacheUpdate::User {
                            user_id: view.user.id,
                            status: view.user.status,
                        });
                        match self.entry_for(&view) {
                            Ok(e) => out.push(CacheUpdate::Upsert(e)),
                            Err(why) => {
                                self.refuse(&view.key.id, view.user.id, why, false);
                                out.push(CacheUpdate::Remove(view.key.hash));
                            }
                        }
                    }
                }
                ChangeSubject::User(name) => {
                    if let Some(u) = store.find_user(name)? {
                        out.push(CacheUpdate::User {
                            user_id: u.id,
                            status: u.status,
                        });
                    }
                }
                // Bans are the control plane's (the denylist), not the key cache's.
                ChangeSubject::Ban(_) => {}
            }
            last = c.revision;
        }
        self.revision = last;
        Ok(out)
    }
}
