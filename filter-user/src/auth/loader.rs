//! Turns store records into shared cache entries: loads the whole store once (streaming, so
//! 1M keys never sit in memory twice), interns users and policies so keys share them, and
//! catches up on store changes "since revision R" for a running daemon.

use std::cell::RefCell;
use std::sync::Arc;

use ahash::RandomState;
use hashbrown::{HashMap, HashTable};

use super::cache::{CacheUpdate, KeyEntry, Owner, Policy, UserInfo};
use super::ratelimit::Limit;
use crate::store::{
    ChangeSubject, KeyRecord, KeyRef, KeyStore, KeyView, StoreError, User, UserStatus,
};

/// The store's keys at one revision, ready to index.
#[derive(Default)]
pub struct KeySnapshot {
    /// Every key.
    pub entries: Vec<Arc<KeyEntry>>,
    /// Users that are not active.
    pub inactive: Vec<(i64, UserStatus)>,
    /// The store revision this reflects.
    pub revision: u64,
}

/// Builds entries, sharing owners between keys; remembers the revision it has seen.
pub struct KeyLoader {
    hasher: RandomState,
    policies: HashTable<(u64, Arc<Policy>)>,
    users: HashMap<i64, Arc<UserInfo>, RandomState>,
    /// (user id, policy address) → owner.
    owners: HashMap<(i64, usize), Arc<Owner>, RandomState>,
    tenants: HashMap<Box<str>, Arc<str>, RandomState>,
    revision: u64,
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
            owners: HashMap::with_hasher(RandomState::new()),
            tenants: HashMap::with_hasher(RandomState::new()),
            revision: 0,
        }
    }
}

impl KeyLoader {
    /// Loads every key from `store`.
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
                cell.borrow_mut().user(user);
            },
            &mut |key, user_id| {
                let mut l = cell.borrow_mut();
                match l.users.get(&user_id).cloned() {
                    Some(user) => snap.entries.push(l.entry_with(key, user)),
                    None => missing_user = Some(key.id.clone()),
                }
            },
        )?;
        if let Some(id) = missing_user {
            return Err(StoreError::Corrupt(format!("{id} has no user")));
        }
        snap.entries.shrink_to_fit();
        loader.revision = snap.revision;
        Ok((loader, snap))
    }

    /// The store revision the loader has caught up to.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A shared entry for `view`.
    pub fn entry_for(&mut self, view: &KeyView) -> Arc<KeyEntry> {
        self.entry(&view.key, &view.user)
    }

    /// A shared entry for key `rec` of `user`.
    pub fn entry(&mut self, rec: &KeyRecord, user: &User) -> Arc<KeyEntry> {
        let user = self.user(user);
        self.entry_with(rec, user)
    }

    fn entry_with(&mut self, rec: &KeyRecord, user: Arc<UserInfo>) -> Arc<KeyEntry> {
        let policy = self.policy(rec);
        // The policy's address identifies it while the loader holds it (it always does).
        let key = (user.id, Arc::as_ptr(&policy) as usize);
        let owner = Arc::clone(self.owners.entry(key).or_insert_with(|| {
            Arc::new(Owner {
                user: Arc::clone(&user),
                policy,
            })
        }));
        Arc::new(KeyEntry::new(rec, owner))
    }

    fn policy(&mut self, rec: &KeyRecord) -> Arc<Policy> {
        let limit = rec.rate.map(|r| Limit::new(r.per_sec, r.burst));
        let h = self.hasher.hash_one((&rec.scopes, &rec.allow_cidrs, limit));
        if let Some((_, p)) = self.policies.find(h, |(_, p)| p.matches(rec)) {
            return Arc::clone(p);
        }
        let p = Arc::new(Policy {
            scopes: rec.scopes.iter().map(|s| s.as_str().into()).collect(),
            cidrs: rec.allow_cidrs.clone().into_boxed_slice(),
            limit,
        });
        self.policies
            .insert_unique(h, (h, Arc::clone(&p)), |(h, _)| *h);
        p
    }

    fn user(&mut self, user: &User) -> Arc<UserInfo> {
        if let Some(u) = self.users.get(&user.id) {
            return Arc::clone(u);
        }
        let tenant = Arc::clone(
            self.tenants
                .entry(user.tenant.as_str().into())
                .or_insert_with(|| user.tenant.as_str().into()),
        );
        let u = Arc::new(UserInfo {
            id: user.id,
            name: user.name.as_str().into(),
            tenant,
        });
        self.users.insert(user.id, Arc::clone(&u));
        u
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
                        out.push(CacheUpdate::Upsert(self.entry_for(&view)));
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
